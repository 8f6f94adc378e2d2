//! The CLI's admin commands: each is one request to the running server's admin API, on the
//! Unix socket `data_dir/admin.sock` (checked to be the server's before the token is sent),
//! authenticated with `data_dir/admin.token`. The HTTP/1.1 client is here, by hand: one request
//! per connection, the answer streamed.

use std::io::{BufReader, Read, Write as _};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::admin::api::{
    ActionRequest, ActionStatus, ActionsCreated, ActiveRelease, Agent, AgentsQuery, CreateActions,
    Drain, NewToken, Secret, Server, SetSecret, StatusReport, Token, TokenCreated, Upload,
};
use crate::admin::{PREFIX, SOCKET_FILE, TOKEN_FILE};
use crate::cli::{
    ActionsCommand, AgentsCommand, DiagnosticsCommand, DrainArgs, Expiry, ReassignArgs,
    SecretsCommand, SettingsArgs, Targets, TokensCommand, UnenrollArgs, UpgradeArgs,
};
use crate::config::Config;

/// The admin API refused a request as invalid input: an unknown policy, agent, action or
/// upload, a version the active release does not carry. The CLI exits 1 for it, as for any
/// refused input; an unreachable server or a rejected admin token is exit 2.
#[derive(Debug, thiserror::Error)]
#[error("the appliance refused: {0}")]
pub(crate) struct AdminRefusal(pub String);

/// No server runs on this data directory: no socket, or nothing listening on it (`status`
/// then reports from the data directory).
#[derive(Debug, thiserror::Error)]
#[error("no `ferry-appliance serve` runs on this data directory ({0}): start it first")]
pub(crate) struct ServerDown(String);

/// The error for an admin API answer that is not a success: an [`AdminRefusal`] for a 4xx
/// about the request itself, a plain error for authentication, overload and server trouble.
fn answer_error(status: u16, body: &str) -> anyhow::Error {
    let message = serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| v.get("message")?.as_str().map(str::to_owned))
        .unwrap_or_else(|| body.trim().to_owned());
    let message = ferry_manifests::terminal::escape(&message, 500);
    match status {
        401 | 403 => anyhow::anyhow!(
            "the admin API did not accept the admin token: {message} (HTTP {status}); run this \
             as the user `serve` runs as (or root), with the same configuration"
        ),
        400..=499 if status != 429 => AdminRefusal(format!("{message} (HTTP {status})")).into(),
        _ => anyhow::anyhow!("the appliance could not answer: {message} (HTTP {status})"),
    }
}

/// Checks that `data_dir/admin.sock` is the server's before anything is sent to it: a socket
/// (not a symlink or a file), owned by the data directory's owner or root, in a data directory
/// no other user can write to (so nobody else could have put it there). Returns its path.
fn server_socket(data_dir: &Path) -> anyhow::Result<PathBuf> {
    use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _};
    let dir = match std::fs::metadata(data_dir) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(ServerDown(format!("{} does not exist", data_dir.display())).into());
        }
        Err(e) => {
            return Err(
                anyhow::Error::new(e).context(format!("cannot stat {}", data_dir.display()))
            );
        }
    };
    anyhow::ensure!(
        dir.mode() & 0o022 == 0,
        "the data directory {} is writable by other users (mode {:o}), so its admin socket may \
         not be the server's: the admin token was not sent; run `chmod 700 {}`",
        data_dir.display(),
        dir.mode() & 0o7777,
        data_dir.display()
    );
    let path = data_dir.join(SOCKET_FILE);
    let socket = match std::fs::symlink_metadata(&path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(ServerDown(format!("no {}", path.display())).into());
        }
        Err(e) => {
            return Err(anyhow::Error::new(e).context(format!("cannot stat {}", path.display())));
        }
    };
    anyhow::ensure!(
        socket.file_type().is_socket(),
        "{} is not a socket (a symlink or a file put there by someone): the admin token was not \
         sent; remove it and restart `ferry-appliance serve`",
        path.display()
    );
    anyhow::ensure!(
        super::trusted(socket.uid(), dir.uid()),
        "{} belongs to uid {}, not to the data directory's owner (uid {}) or root: the admin \
         token was not sent",
        path.display(),
        socket.uid(),
        dir.uid()
    );
    Ok(path)
}

/// A response from the admin API: its status, headers, and its body as a reader that ends
/// where the body does (by Content-Length, chunked framing, or the end of the connection).
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Box<dyn Read>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// The answer if it is a success, otherwise the server's error message.
    fn success(self) -> anyhow::Result<Self> {
        if (200..300).contains(&self.status) {
            return Ok(self);
        }
        // An error message is short; more is not read.
        let mut text = String::new();
        self.body
            .take(64 << 10)
            .read_to_string(&mut text)
            .context("reading the admin API's answer")?;
        Err(answer_error(self.status, &text))
    }

    /// The answer as JSON, or the server's error message.
    fn json(self) -> anyhow::Result<Value> {
        // Streamed: a large list or a bulky agent costs its size once, with no cap to exceed.
        serde_json::from_reader(BufReader::new(self.success()?.body))
            .context("the admin API's answer is not JSON")
    }
}

/// The body of a chunked response (RFC 9112 §7.1), trailers skipped.
struct Chunked<R> {
    inner: R,
    left: u64,
    done: bool,
}

impl<R: std::io::BufRead> Read for Chunked<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let bad =
            |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned());
        if self.done || buf.is_empty() {
            return Ok(0);
        }
        if self.left == 0 {
            let mut line = String::new();
            self.inner.read_line(&mut line)?;
            let size = line.split(';').next().unwrap_or("").trim();
            self.left = u64::from_str_radix(size, 16).map_err(|_| bad("bad chunk size"))?;
            if self.left == 0 {
                // Trailers, up to the empty line.
                loop {
                    line.clear();
                    if self.inner.read_line(&mut line)? == 0 || line.trim().is_empty() {
                        break;
                    }
                }
                self.done = true;
                return Ok(0);
            }
        }
        let want = buf.len().min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        self.left -= n as u64;
        if self.left == 0 {
            let mut crlf = [0u8; 2];
            self.inner.read_exact(&mut crlf)?;
            if &crlf != b"\r\n" {
                return Err(bad("chunk not followed by CRLF"));
            }
        }
        Ok(n)
    }
}

/// A body of a declared length: ending early is an error, not a short body.
struct Exact<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Read for Exact<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.left == 0 || buf.is_empty() {
            return Ok(0);
        }
        let want = buf.len().min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("the answer ended {} bytes short", self.left),
            ));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// Sends one request on `stream` (`Connection: close`) and reads the answer's head; the body is
/// left to read from the returned [`Answer`].
fn exchange(
    mut stream: UnixStream,
    method: &str,
    path: &str,
    token: &str,
    body: Option<&[u8]>,
) -> anyhow::Result<Answer> {
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\
         Authorization: Bearer {token}\r\nContent-Length: {}\r\n",
        body.map_or(0, <[u8]>::len)
    );
    if body.is_some() {
        request.push_str("Content-Type: application/json\r\n");
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes())?;
    stream.write_all(body.unwrap_or_default())?;
    // Read until the head is complete; what follows it is the start of the body.
    let mut buf = Vec::with_capacity(4096);
    let (status, headers, head_len) = loop {
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk)?;
        anyhow::ensure!(n > 0, "the admin API closed the connection without answering");
        buf.extend_from_slice(&chunk[..n]);
        anyhow::ensure!(buf.len() <= 64 << 10, "the admin API's answer head is over 64 KiB");
        let mut parsed = [httparse::EMPTY_HEADER; 64];
        let mut response = httparse::Response::new(&mut parsed);
        if let httparse::Status::Complete(len) =
            response.parse(&buf).context("the admin API's answer is not HTTP/1.1")?
        {
            let headers = response
                .headers
                .iter()
                .map(|h| (h.name.to_owned(), String::from_utf8_lossy(h.value).into_owned()))
                .collect::<Vec<_>>();
            break (response.code.unwrap_or(0), headers, len);
        }
    };
    let rest = std::io::Cursor::new(buf.split_off(head_len)).chain(stream);
    let mut answer = Answer { status, headers, body: Box::new(std::io::empty()) };
    let chunked = answer
        .header("transfer-encoding")
        .is_some_and(|t| t.to_ascii_lowercase().contains("chunked"));
    let length = answer.header("content-length").map(str::trim).map(str::parse::<u64>);
    answer.body = match (chunked, length) {
        (true, _) => Box::new(Chunked { inner: BufReader::new(rest), left: 0, done: false }),
        (false, Some(Ok(len))) => Box::new(Exact { inner: rest, left: len }),
        (false, Some(Err(_))) => anyhow::bail!("the admin API sent a bad Content-Length"),
        (false, None) => Box::new(rest),
    };
    Ok(answer)
}

struct Client {
    socket: PathBuf,
    token: String,
}

impl Client {
    fn new(config: &Config) -> anyhow::Result<Self> {
        let socket = server_socket(&config.data_dir)?;
        let path = config.data_dir.join(TOKEN_FILE);
        let token = std::fs::read_to_string(&path)
            .with_context(|| {
                format!(
                    "cannot read {}: run this as the user `serve` runs as, or root",
                    path.display()
                )
            })?
            .trim()
            .to_owned();
        Ok(Self { socket, token })
    }

    /// Connects, checks that the process listening is the data directory's owner or root
    /// (`SO_PEERCRED`, which names the listener however the socket got there), and sends one
    /// request.
    fn send(&self, method: &str, path: &str, body: Option<&[u8]>) -> anyhow::Result<Answer> {
        let stream = match UnixStream::connect(&self.socket) {
            Ok(stream) => stream,
            // A socket left by a server that died: nothing listens there now.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                return Err(
                    ServerDown(format!("nothing listens on {}", self.socket.display())).into()
                );
            }
            Err(e) => {
                return Err(anyhow::Error::new(e)
                    .context(format!("cannot connect to {}", self.socket.display())));
            }
        };
        let server = rustix::net::sockopt::socket_peercred(&stream)
            .context("cannot read the admin server's credentials")?;
        let dir = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(
            self.socket.parent().unwrap_or(Path::new("/")),
        )?);
        anyhow::ensure!(
            super::trusted(server.uid.as_raw(), dir),
            "the process listening on {} runs as uid {}, not as the data directory's owner (uid \
             {dir}) or root: the admin token was not sent",
            self.socket.display(),
            server.uid.as_raw()
        );
        stream.set_read_timeout(Some(std::time::Duration::from_secs(120)))?;
        stream.set_write_timeout(Some(std::time::Duration::from_secs(120)))?;
        exchange(stream, method, &format!("{PREFIX}{path}"), &self.token, body)
            .with_context(|| format!("admin API {method} {path}"))
    }

    /// Sends a request without a body and returns the JSON answer, or the server's error
    /// message.
    fn call(&self, method: &str, path: &str) -> anyhow::Result<Value> {
        self.send(method, path, None)?.json()
    }

    /// Sends `request` as JSON and returns the JSON answer, or the server's error message.
    fn call_with(&self, path: &str, request: &impl Serialize) -> anyhow::Result<Value> {
        let body = serde_json::to_vec(request)?;
        self.send("POST", path, Some(&body))?.json()
    }
}

/// An answer read as its type in [`crate::admin::api`]. `--json` prints the answer as received
/// instead, so what it shows is the server's, whatever this CLI reads of it.
fn typed<T: DeserializeOwned>(answer: &Value) -> anyhow::Result<T> {
    T::deserialize(answer).context("the admin API's answer is not what this CLI reads")
}

fn print_json(value: &Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => dash(Some(s)),
        other => other.to_string(),
    }
}

/// A string as a cell shows it: `-` when absent or empty.
fn dash(s: Option<&str>) -> String {
    match s {
        None | Some("") => "-".into(),
        Some(s) => s.to_owned(),
    }
}

/// A table on stdout; [`ferry_manifests::terminal::table`] escapes and bounds every cell.
fn table(headers: &[&str], rows: impl Iterator<Item = Vec<String>>) {
    print!("{}", ferry_manifests::terminal::table(headers, rows));
}

/// The most characters `agents show` prints of one value an agent sent.
const SHOW_MAX: usize = 1024;

/// A value an agent (or anyone but this CLI) chose, made safe to print outside a table.
fn shown(v: &Value, max: usize) -> String {
    ferry_manifests::terminal::escape(&text(v), max)
}

/// [`shown`], for a string.
fn shown_str(s: Option<&str>, max: usize) -> String {
    ferry_manifests::terminal::escape(&dash(s), max)
}

pub(crate) fn tokens(config: &Config, command: TokensCommand) -> anyhow::Result<ExitCode> {
    let client = Client::new(config)?;
    match command {
        TokensCommand::Create { policy, name, json } => {
            let request = NewToken { policy_id: policy.clone(), name };
            let out = client.call_with("/tokens", &request)?;
            if json.json {
                print_json(&out)?;
            } else {
                let out: TokenCreated = typed(&out)?;
                println!("{}", dash(Some(&out.token)));
                eprintln!(
                    "token {} enrolls agents into policy {policy}; it is shown only now",
                    dash(Some(&out.id))
                );
            }
        }
        TokensCommand::List(json) => {
            let out = client.call("GET", "/tokens")?;
            if json.json {
                return print_json(&out).map(|()| ExitCode::SUCCESS);
            }
            let rows = typed::<Vec<Token>>(&out)?.into_iter().map(|t| {
                let state = if t.revoked { "revoked" } else { "active" };
                vec![
                    dash(Some(&t.id)),
                    dash(Some(&t.policy_id)),
                    dash(Some(&t.created)),
                    state.to_owned(),
                    dash(t.name.as_deref()),
                ]
            });
            table(&["ID", "POLICY", "CREATED", "STATE", "NAME"], rows);
        }
        TokensCommand::Revoke { id, json } => {
            let out = client.call("POST", &format!("/tokens/{id}/revoke"))?;
            if json.json {
                print_json(&out)?;
            } else {
                println!("revoked {id}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// What `agents list` shows of an upgrade: the state, and the target while it is not reached.
fn upgrade_cell(a: &Agent) -> String {
    let state = a.upgrade_state.as_deref().unwrap_or("");
    if state.is_empty() {
        return "-".into();
    }
    let state = state.strip_prefix("UPG_").unwrap_or(state).to_ascii_lowercase();
    let percent = a.upgrade_details["metadata"]["download_percent"].as_f64();
    match (a.upgrade_target.as_deref(), percent) {
        (Some(t), Some(p)) if state == "downloading" => format!("{state} {t} {p:.0}%"),
        (Some(t), _) => format!("{state} {t}"),
        (None, _) => state,
    }
}

pub(crate) fn agents(config: &Config, command: AgentsCommand) -> anyhow::Result<ExitCode> {
    let client = Client::new(config)?;
    match command {
        AgentsCommand::List { policy, limit, json } => {
            let out = Value::Array(list_agents(&client, policy.as_deref(), limit)?);
            if json.json {
                return print_json(&out).map(|()| ExitCode::SUCCESS);
            }
            let agents = typed::<Vec<Agent>>(&out)?;
            // In a cluster, which instance holds each agent's check-ins (the one that wrote its
            // row last); a single appliance has no such column.
            let clustered = agents.iter().any(|a| a.instance.is_some());
            let rows = agents.into_iter().map(|a| {
                let mut row = vec![
                    dash(Some(&a.id)),
                    dash(Some(&a.hostname)),
                    dash(Some(&a.status)),
                    dash(Some(&a.version)),
                    format!("{} rev {}", dash(Some(&a.policy_id)), a.policy_revision),
                    dash(a.last_checkin.as_deref()),
                    upgrade_cell(&a),
                ];
                if clustered {
                    row.push(dash(a.instance.as_deref()));
                }
                row
            });
            let mut headers =
                vec!["ID", "HOSTNAME", "STATUS", "VERSION", "POLICY", "LAST CHECK-IN", "UPGRADE"];
            if clustered {
                headers.push("INSTANCE");
            }
            table(&headers, rows);
        }
        AgentsCommand::Show { id, json } => {
            let a = client.call("GET", &format!("/agents/{id}"))?;
            if json.json {
                return print_json(&a).map(|()| ExitCode::SUCCESS);
            }
            let a: Agent = typed(&a)?;
            let show = |s: Option<&str>| shown_str(s, SHOW_MAX);
            for (label, value) in [
                ("id", show(Some(&a.id))),
                ("hostname", show(Some(&a.hostname))),
                ("status", show(Some(&a.status))),
                (
                    "reported",
                    format!(
                        "{} {}",
                        show(a.last_status.as_deref()),
                        show(a.last_message.as_deref())
                    ),
                ),
                ("version", show(Some(&a.version))),
                ("policy", format!("{} revision {}", show(Some(&a.policy_id)), a.policy_revision)),
                ("enrolled", show(Some(&a.enrolled_at))),
                ("last check-in", show(a.last_checkin.as_deref())),
                ("upgrade", ferry_manifests::terminal::escape(&upgrade_cell(&a), SHOW_MAX)),
                ("upgraded at", show(a.upgraded_at.as_deref())),
                ("unenrolled at", show(a.unenrolled_at.as_deref())),
                ("tags", shown(&a.tags, SHOW_MAX)),
            ] {
                println!("{label:14} {value}");
            }
            if let Some(instance) = &a.instance {
                println!("{:14} {}", "instance", show(Some(instance)));
            }
            let components =
                a.components.as_ref().and_then(Value::as_array).cloned().unwrap_or_default();
            if !components.is_empty() {
                println!();
                let rows = components.iter().map(|c| {
                    vec![text(&c["id"]), text(&c["type"]), text(&c["status"]), text(&c["message"])]
                });
                table(&["COMPONENT", "TYPE", "STATUS", "MESSAGE"], rows);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Every agent (or the first `limit`), a page at a time, in enrollment order.
fn list_agents(
    client: &Client,
    policy: Option<&str>,
    limit: Option<usize>,
) -> anyhow::Result<Vec<Value>> {
    let mut all: Vec<Value> = Vec::new();
    loop {
        let want = limit.map_or(crate::admin::PAGE, |l| (l - all.len()).min(crate::admin::PAGE));
        let query = AgentsQuery {
            policy: policy.map(str::to_owned),
            limit: Some(want),
            after: all.last().map(typed::<Agent>).transpose()?.map(|last| last.id),
        };
        let page = client.call("GET", &format!("/agents?{}", query_string(&query)?))?;
        let page = page.as_array().cloned().unwrap_or_default();
        let full = page.len() == want;
        all.extend(page);
        if !full || limit.is_some_and(|l| all.len() >= l) {
            return Ok(all);
        }
    }
}

/// `query`'s members as a query string, named as the server reads them; absent ones left out.
fn query_string(query: &impl Serialize) -> anyhow::Result<String> {
    let Value::Object(members) = serde_json::to_value(query)? else {
        anyhow::bail!("a query is a struct");
    };
    Ok(members
        .iter()
        .filter(|(_, v)| !v.is_null())
        .map(|(name, v)| {
            format!("{name}={}", query_value(&v.as_str().map_or(v.to_string(), str::to_owned)))
        })
        .collect::<Vec<_>>()
        .join("&"))
}

/// `value` percent-encoded for a query string (everything but RFC 3986's unreserved).
fn query_value(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                char::from(b).to_string()
            }
            b => format!("%{b:02X}"),
        })
        .collect()
}

/// `action` for `targets` (none: a cancel's go to the cancelled action's agents), delivered
/// until `expiry`.
fn create(action: ActionRequest, targets: Option<&Targets>, expiry: &Expiry) -> CreateActions {
    CreateActions {
        action,
        agents: targets.map(|t| t.agents.clone()).unwrap_or_default(),
        policy: targets.and_then(|t| t.policy.clone()),
        expires_in_seconds: Some(expiry.expires_in_days.saturating_mul(86_400)),
        start_time: None,
    }
}

/// Creates one action and prints what was queued.
fn act(client: &Client, request: &CreateActions, json: bool) -> anyhow::Result<ExitCode> {
    let out = client.call_with("/actions", request)?;
    if json {
        return print_json(&out).map(|()| ExitCode::SUCCESS);
    }
    let out: ActionsCreated = typed(&out)?;
    println!(
        "{} {} queued for {} agent(s)",
        out.kind,
        shown_str(Some(&out.action_id), 64),
        out.agents.len()
    );
    for note in &out.notes {
        eprintln!("{}", shown_str(Some(note), SHOW_MAX));
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn upgrade(config: &Config, args: &UpgradeArgs) -> anyhow::Result<ExitCode> {
    let client = Client::new(config)?;
    let action = ActionRequest::Upgrade { version: args.version.clone() };
    let mut request = create(action, Some(&args.targets), &args.expiry);
    request.start_time.clone_from(&args.start_time);
    act(&client, &request, args.json.json)
}

pub(crate) fn unenroll(config: &Config, args: &UnenrollArgs) -> anyhow::Result<ExitCode> {
    let client = Client::new(config)?;
    if args.revoke {
        for id in &args.agents {
            client.call("POST", &format!("/agents/{id}/revoke"))?;
            if !args.json.json {
                println!("revoked {id}: its key no longer works");
            }
        }
        if args.json.json {
            print_json(&json!({ "revoked": args.agents }))?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    let targets = Targets { agents: args.agents.clone(), policy: None };
    let request = create(ActionRequest::Unenroll, Some(&targets), &args.expiry);
    act(&client, &request, args.json.json)
}

pub(crate) fn reassign(config: &Config, args: &ReassignArgs) -> anyhow::Result<ExitCode> {
    let client = Client::new(config)?;
    let targets = Targets { agents: args.agents.clone(), policy: None };
    let action = ActionRequest::PolicyReassign { policy_id: args.policy.clone() };
    act(&client, &create(action, Some(&targets), &args.expiry), args.json.json)
}

pub(crate) fn settings(config: &Config, args: &SettingsArgs) -> anyhow::Result<ExitCode> {
    let client = Client::new(config)?;
    let action = ActionRequest::Settings { log_level: args.log_level.clone() };
    act(&client, &create(action, Some(&args.targets), &args.expiry), args.json.json)
}

pub(crate) fn diagnostics(
    config: &Config,
    command: DiagnosticsCommand,
) -> anyhow::Result<ExitCode> {
    let client = Client::new(config)?;
    match command {
        DiagnosticsCommand::Request { targets, metrics, expiry, json } => {
            let action = ActionRequest::RequestDiagnostics { additional_metrics: metrics };
            act(&client, &create(action, Some(&targets), &expiry), json.json)
        }
        DiagnosticsCommand::List(json) => {
            let out = client.call("GET", "/uploads")?;
            if json.json {
                return print_json(&out).map(|()| ExitCode::SUCCESS);
            }
            let rows = typed::<Vec<Upload>>(&out)?.into_iter().map(|u| {
                vec![
                    dash(Some(&u.id)),
                    dash(Some(&u.agent_id)),
                    dash(Some(&u.status)),
                    u.size.to_string(),
                    dash(Some(&u.created)),
                    dash(Some(&u.name)),
                ]
            });
            table(&["UPLOAD", "AGENT", "STATUS", "SIZE", "CREATED", "FILE"], rows);
            Ok(ExitCode::SUCCESS)
        }
        DiagnosticsCommand::Get { upload_id, output, force, json } => {
            let list: Vec<Upload> = typed(&client.call("GET", "/uploads")?)?;
            let upload = list.into_iter().find(|u| u.id == upload_id).ok_or_else(|| {
                AdminRefusal(format!(
                    "no upload {} (see `diagnostics list`)",
                    ferry_manifests::terminal::escape(&upload_id, 128)
                ))
            })?;
            // The agent's file name is never used as a path (`../../.bashrc`); ours is.
            let (output, replace) = match output {
                Some(path) => (path, force),
                None => {
                    (PathBuf::from(default_name(&dash(Some(&upload.agent_id)), &upload_id)), false)
                }
            };
            refuse_existing(&output, replace)?;
            let answer = client
                .send("GET", &format!("/uploads/{}/file", query_value(&upload_id)), None)?
                .success()?;
            let (bytes, sha) = save(answer.body, &output, replace, upload.sha256.as_deref())?;
            if json.json {
                print_json(&json!({
                    "upload_id": upload_id,
                    "agent_id": upload.agent_id,
                    "path": output,
                    "agent_file_name": upload.name,
                    "bytes": bytes,
                    "sha256": sha,
                }))?;
            } else {
                println!(
                    "{} ({bytes} bytes, sha256 {sha}; the agent named it \"{}\")",
                    output.display(),
                    shown_str(Some(&upload.name), 256)
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The file `diagnostics get` writes without `-o`: `diagnostics-AGENT-UPLOAD.zip`, each id
/// reduced to `[A-Za-z0-9._-]` (64 characters at most), so it is one plain name in the current
/// folder whatever the ids hold.
fn default_name(agent_id: &str, upload_id: &str) -> String {
    let part = |id: &str| -> String {
        id.chars()
            .take(64)
            .map(|c| if c.is_ascii_alphanumeric() || "._-".contains(c) { c } else { '_' })
            .collect()
    };
    format!("diagnostics-{}-{}.zip", part(agent_id), part(upload_id))
}

/// Refuses to write over an existing file (a symlink included) unless `replace` (`--force`).
fn refuse_existing(output: &Path, replace: bool) -> anyhow::Result<()> {
    anyhow::ensure!(
        replace || std::fs::symlink_metadata(output).is_err(),
        "{} exists and was left as it is: name another file with -o (or add --force to replace \
         it)",
        output.display()
    );
    Ok(())
}

/// Streams `body` into `output` through a temporary file beside it (created with `O_EXCL`, so
/// nothing already there is written through), checks its SHA-256 against `want`, then moves it
/// into place: a hard link, which fails rather than replace a file created meanwhile, unless
/// `replace`. Returns the size and the digest.
fn save(
    body: Box<dyn Read>,
    output: &Path,
    replace: bool,
    want: Option<&str>,
) -> anyhow::Result<(u64, String)> {
    let name = output.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = output.with_file_name(format!(".{name}.{}.part", std::process::id()));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .with_context(|| format!("cannot create {}", tmp.display()))?;
    let written = (|| -> anyhow::Result<(u64, String)> {
        let mut hasher =
            HashingWriter { inner: &mut file, sha: <sha2::Sha256 as sha2::Digest>::new() };
        let bytes = std::io::copy(&mut BufReader::with_capacity(1 << 20, body), &mut hasher)
            .context("the download broke off")?;
        let sha = hex::encode(sha2::Digest::finalize(hasher.sha));
        anyhow::ensure!(
            Some(sha.as_str()) == want,
            "the download's SHA-256 {sha} is not the upload's {}",
            want.unwrap_or("-")
        );
        file.sync_all()?;
        if replace {
            std::fs::rename(&tmp, output)
                .with_context(|| format!("cannot write {}", output.display()))?;
        } else {
            std::fs::hard_link(&tmp, output).map_err(|e| match e.kind() {
                std::io::ErrorKind::AlreadyExists => anyhow::anyhow!(
                    "{} appeared during the download and was left as it is: name another file \
                     with -o (or add --force to replace it)",
                    output.display()
                ),
                _ => anyhow::Error::new(e).context(format!("cannot write {}", output.display())),
            })?;
        }
        Ok((bytes, sha))
    })();
    // Gone whatever happened: after the link it is a second name, after a failure a leftover.
    let _ = std::fs::remove_file(&tmp);
    written
}

struct HashingWriter<'a> {
    inner: &'a mut std::fs::File,
    sha: sha2::Sha256,
}

impl std::io::Write for HashingWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        sha2::Digest::update(&mut self.sha, &buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

pub(crate) fn actions(config: &Config, command: ActionsCommand) -> anyhow::Result<ExitCode> {
    let client = Client::new(config)?;
    match command {
        ActionsCommand::Show { action_id, json } => {
            let out = client.call("GET", &format!("/actions/{action_id}"))?;
            if json.json {
                return print_json(&out).map(|()| ExitCode::SUCCESS);
            }
            let rows = typed::<ActionStatus>(&out)?.agents.into_iter().map(|a| {
                let state = if a.acknowledged { "acknowledged" } else { "pending" };
                vec![dash(Some(&a.agent_id)), state.to_owned(), dash(a.error.as_deref())]
            });
            table(&["AGENT", "STATE", "ERROR"], rows);
            Ok(ExitCode::SUCCESS)
        }
        ActionsCommand::Cancel { action_id, json } => {
            let action = ActionRequest::Cancel { target_id: action_id };
            act(&client, &create(action, None, &Expiry { expires_in_days: 30 }), json.json)
        }
    }
}

pub(crate) fn secrets(config: &Config, command: SecretsCommand) -> anyhow::Result<ExitCode> {
    let client = Client::new(config)?;
    match command {
        SecretsCommand::Set { id, file, json } => {
            // Refused before the value is asked for.
            crate::secrets::check_id(&id).map_err(|e| AdminRefusal(e.to_string()))?;
            let value = secret_value(file.as_deref(), &id)?;
            let body = serde_json::to_vec(&SetSecret { value })?;
            let out = client.send("PUT", &format!("/secrets/{}", query_value(&id)), Some(&body))?;
            let out = out.json()?;
            if json.json {
                print_json(&out)?;
            } else {
                let out: Secret = typed(&out)?;
                println!("secret {} set", shown_str(Some(&out.id), 256));
                eprintln!("agents get the new value with their policies at their next check-in");
            }
        }
        SecretsCommand::List(json) => {
            let out = client.call("GET", "/secrets")?;
            if json.json {
                return print_json(&out).map(|()| ExitCode::SUCCESS);
            }
            let rows = typed::<Vec<Secret>>(&out)?.into_iter().map(|s| {
                let used = (!s.used_by.is_empty()).then(|| s.used_by.join(", "));
                vec![dash(Some(&s.id)), dash(Some(&s.set_at)), dash(used.as_deref())]
            });
            table(&["ID", "SET AT", "USED BY"], rows);
        }
        SecretsCommand::Remove { id, json } => {
            let out = client.call("DELETE", &format!("/secrets/{}", query_value(&id)))?;
            if json.json {
                print_json(&out)?;
            } else {
                println!("removed secret {}", shown_str(Some(&id), 256));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A secret's value as `secrets set` reads it: from `file`, or stdin (without echo on a
/// terminal), without one trailing newline; refused when empty, over 64 KiB or not UTF-8.
fn secret_value(file: Option<&Path>, id: &str) -> anyhow::Result<String> {
    use std::io::IsTerminal as _;
    let refused = |what: &str| AdminRefusal(format!("{what}; the secret was not set"));
    let text = match file {
        Some(path) => {
            let f = std::fs::File::open(path)
                .with_context(|| format!("cannot open {}", path.display()))?;
            read_value(f).with_context(|| format!("cannot read {}", path.display()))?
        }
        None if std::io::stdin().is_terminal() => {
            let prompt = format!("value of secret {} (not shown): ", shown_str(Some(id), 256));
            Some(rpassword::prompt_password(prompt).context("cannot read the value")?)
        }
        None => read_value(std::io::stdin().lock()).context("cannot read stdin")?,
    };
    // The value itself is never part of a message.
    let Some(text) = text else {
        return Err(refused(&format!(
            "the value is over {} bytes (64 KiB)",
            crate::secrets::MAX_VALUE
        ))
        .into());
    };
    let value = strip_one_newline(text);
    crate::secrets::check_value(&value).map_err(|e| refused(&e.to_string()))?;
    Ok(value)
}

/// All of `input` as UTF-8; `None` when it is longer than a value may be (a newline more is
/// allowed, as it is removed).
fn read_value(input: impl Read) -> anyhow::Result<Option<String>> {
    let max = crate::secrets::MAX_VALUE + 2;
    let mut bytes = Vec::new();
    input.take(max as u64 + 1).read_to_end(&mut bytes)?;
    if bytes.len() > max {
        return Ok(None);
    }
    let text = String::from_utf8(bytes).map_err(|_| {
        AdminRefusal("the value is not UTF-8 text; the secret was not set".to_owned())
    })?;
    Ok(Some(text))
}

/// `text` without one trailing newline (`\n` or `\r\n`), which `echo` and editors add: a
/// value meant to end in a newline is given with two.
fn strip_one_newline(mut text: String) -> String {
    if text.ends_with('\n') {
        text.pop();
        if text.ends_with('\r') {
            text.pop();
        }
    }
    text
}

/// One line of how old the active release's content is: when its bundle was built, which
/// agent versions it carries, how many integration packages (the newest made when), and each
/// Defend manifest's version and date.
fn content_line(content: &super::api::Content, now: time::OffsetDateTime) -> String {
    let age = |text: &str| {
        let parsed =
            time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339);
        match parsed {
            Ok(at) => {
                // Calendar days in UTC, as the date is shown: yesterday evening is 1 day ago.
                let days = (now.date() - at.to_offset(time::UtcOffset::UTC).date()).whole_days();
                let date = text.split('T').next().unwrap_or(text);
                match days {
                    0 => format!("{date} (today)"),
                    1 => format!("{date} (1 day ago)"),
                    d => format!("{date} ({d} days ago)"),
                }
            }
            Err(_) => text.to_owned(),
        }
    };
    let mut parts = vec![format!("built {}", age(&content.built))];
    if !content.agent_versions.is_empty() {
        parts.push(format!("agents {}", content.agent_versions.join(", ")));
    }
    if content.packages > 0 {
        let newest = content
            .newest_package
            .as_deref()
            .map(|d| format!(", the newest made {}", age(d)))
            .unwrap_or_default();
        parts.push(format!("{} integration package(s){newest}", content.packages));
    }
    for d in &content.defend {
        let version = d.manifest_version.as_deref().map(|v| format!(" {v}")).unwrap_or_default();
        let date = d.date.as_deref().map(|t| format!(" of {}", age(t))).unwrap_or_default();
        parts.push(format!("Defend {} manifest{version}{date}", d.endpoint_version));
    }
    parts.join("; ")
}

/// `status` and `health`: the running server's view, through the admin API; when no server
/// answers, the data directory's (with this configuration's keys); with the checks of
/// [`crate::health`] and their verdict. `health` (`one_line`) prints only the verdict and exits
/// 0, 1 (a check fails) or 2 (warnings); `status` prints the report and exits 1 when a check
/// fails.
pub(crate) fn status(
    config: &Config,
    keys: &ferry_manifests::TrustedKeys,
    as_json: bool,
    one_line: bool,
) -> anyhow::Result<ExitCode> {
    use crate::health::Level;
    let running = match Client::new(config).and_then(|c| c.call("GET", "/status")) {
        Ok(report) => Some(report),
        // No socket, or one nothing listens on (a server that died).
        Err(e) if e.chain().any(|cause| cause.is::<ServerDown>()) => None,
        Err(e) => return Err(e),
    };
    let mut answer = match running {
        Some(report) => report,
        None => serde_json::to_value(stopped_status(config, keys)?)?,
    };
    let report: StatusReport = typed(&answer)?;
    let checks = crate::health::checks(config, &report, time::OffsetDateTime::now_utc());
    let verdict = crate::health::verdict(&checks, &report);
    let worst = checks.iter().map(|c| c.level).max().unwrap_or(Level::Ok);
    if let Some(fields) = answer.as_object_mut() {
        fields.insert("checks".into(), serde_json::to_value(&checks)?);
        fields.insert("verdict".into(), verdict.clone().into());
    }
    if as_json {
        print_json(&answer)?;
    } else if one_line {
        println!("{}", ferry_manifests::terminal::escape(&verdict, 2000));
    } else {
        println!("health  {}", ferry_manifests::terminal::escape(&verdict, 2000));
        let release = |a: &ActiveRelease| format!("{} {}", dash(Some(&a.name)), a.sequence);
        let server = match &report.status {
            Some(status) if report.draining => {
                format!("running, draining; /api/status answers {status}")
            }
            Some(status) => format!("running; /api/status answers {status}"),
            None => "stopped (start it with `ferry-appliance serve`)".to_owned(),
        };
        let active = match (&report.active, report.loaded) {
            (None, _) => "none".to_owned(),
            (Some(a), true) => format!("{}, verified", release(a)),
            (Some(a), false) => {
                format!("{}, does not verify ({})", release(a), dash(report.check.as_deref()))
            }
        };
        let by_status: Vec<String> =
            report.agents.by_status.iter().map(|(status, n)| format!("{status} {n}")).collect();
        println!("server  {server}");
        println!("active  {active}");
        if let Some(content) = report.active.as_ref().and_then(|a| a.content.as_ref()) {
            println!("content {}", content_line(content, time::OffsetDateTime::now_utc()));
        }
        if report.server == Server::Running {
            let served = report.active.as_ref().filter(|_| report.served);
            let served = served.map_or_else(|| "nothing".to_owned(), release);
            println!("served  {served}");
        }
        let total = report.agents.total;
        if by_status.is_empty() {
            println!("agents  {total}");
        } else {
            println!("agents  {total} ({})", by_status.join(", "));
        }
        if let Some(n) = report.agents.reports_trimmed.filter(|n| *n > 0) {
            println!(
                "        {n} check-in report(s) had fields over their caps (see the server's log)"
            );
        }
        if let Some(es) = &report.elasticsearch {
            let who = es.principal.as_deref().map(|p| format!(" as {p}")).unwrap_or_default();
            match es.state {
                crate::elastic::State::Ok => println!("elasticsearch  ok{who}"),
                state => println!(
                    "elasticsearch  {state}: {}",
                    ferry_manifests::terminal::escape(&es.message, 500)
                ),
            }
            if es.agents_waiting_for_keys > 0 {
                println!(
                    "               {} agent(s) wait for output keys",
                    es.agents_waiting_for_keys
                );
            }
        }
        for (policy, why) in &report.policies_held {
            let (policy, why) = (
                ferry_manifests::terminal::escape(policy, 100),
                ferry_manifests::terminal::escape(why, 500),
            );
            println!("policy {policy} not delivered: {why}");
        }
        if let Some(message) = &report.message {
            println!("{message}");
        }
        for c in checks.iter().filter(|c| c.level != Level::Ok) {
            let level = if c.level == Level::Fail { "FAIL" } else { "warn" };
            println!(
                "{level}    {}: {}",
                c.name,
                ferry_manifests::terminal::escape(&c.message, 500)
            );
        }
    }
    Ok(match worst {
        Level::Ok => ExitCode::SUCCESS,
        Level::Fail => ExitCode::from(1),
        Level::Warn if one_line => ExitCode::from(2),
        Level::Warn => ExitCode::SUCCESS,
    })
}

/// `drain` and `drain --undo`: one request, answered once the parked check-ins are.
pub(crate) fn drain(config: &Config, args: &DrainArgs) -> anyhow::Result<ExitCode> {
    let client = Client::new(config)?;
    let out = client.call(if args.undo { "DELETE" } else { "POST" }, "/drain")?;
    if args.json.json {
        return print_json(&out).map(|()| ExitCode::SUCCESS);
    }
    let drain: Drain = typed(&out)?;
    if !drain.draining {
        println!("not draining: /api/status answers {}", drain.status);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "draining: /api/status answers {} (503); {} parked check-in(s) answered",
        drain.status,
        drain.parked_before.saturating_sub(drain.parked)
    );
    if drain.parked > 0 {
        println!("{} check-in(s) still parked after 10 s", drain.parked);
    }
    println!(
        "agents' next requests go to the other instances once the load balancer's health check \
         marks this one down: stop or upgrade it then; `ferry-appliance drain --undo` (or a \
         restart) ends draining"
    );
    Ok(ExitCode::SUCCESS)
}

/// The report of `status` when no server runs: what `serve` would load, from the data directory.
fn stopped_status(
    config: &Config,
    keys: &ferry_manifests::TrustedKeys,
) -> anyhow::Result<StatusReport> {
    let read = crate::store::open_existing(&config.store_location()?).and_then(|store| {
        Ok(match store {
            Some(store) => {
                (store.active()?, store.agent_views(&crate::store::AgentPage::summary())?)
            }
            None => (None, Vec::new()),
        })
    });
    // A store that cannot be read is a finding of `health`, not a reason to say nothing.
    let ((pointer, views), database) = match read {
        Ok(read) => (read, None),
        Err(e) => ((None, Vec::new()), Some(e.to_string())),
    };
    let active = crate::release::Active::load(&config.data_dir, pointer, keys);
    let offline_after = std::time::Duration::from_secs(config.server.agent_offline_seconds);
    let agents = crate::admin::count_agents(&views, &crate::clock::now_rfc3339(), offline_after);
    let mut report = crate::admin::status_report(false, &active, &agents);
    report.database = database;
    Ok(report)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_content_line_gives_ages_in_days() {
        let content = super::super::api::Content {
            built: "2026-11-01T00:00:00Z".into(),
            agent_versions: vec!["9.1.2".into(), "9.2.2".into()],
            packages: 200,
            newest_package: Some("2026-12-05T12:00:00Z".into()),
            defend: vec![super::super::api::DefendManifest {
                endpoint_version: "9.2.2".into(),
                manifest_version: Some("1.0.2431".into()),
                date: Some("2026-12-01T08:30:00Z".into()),
            }],
        };
        let now = time::macros::datetime!(2026-12-06 06:00 UTC);
        assert_eq!(
            super::content_line(&content, now),
            "built 2026-11-01 (35 days ago); agents 9.1.2, 9.2.2; 200 integration package(s), \
             the newest made 2026-12-05 (1 day ago); Defend 9.2.2 manifest 1.0.2431 of \
             2026-12-01 (5 days ago)"
        );
        let bare = super::super::api::Content { built: "2026-12-05T00:00:00Z".into(), ..content };
        let bare = super::super::api::Content {
            packages: 0,
            agent_versions: vec![],
            defend: vec![],
            ..bare
        };
        assert_eq!(super::content_line(&bare, now), "built 2026-12-05 (1 day ago)");
    }

    use super::*;

    #[test]
    fn the_default_file_name_is_one_plain_name() {
        assert_eq!(default_name("a-1", "u.2"), "diagnostics-a-1-u.2.zip");
        assert_eq!(default_name("../../x", "a/b\\c"), "diagnostics-.._.._x-a_b_c.zip");
        assert_eq!(default_name(&"z".repeat(500), "\n").len(), "diagnostics--_.zip".len() + 64);
    }

    #[test]
    fn one_trailing_newline_is_removed_from_a_value() {
        for (given, kept) in [
            ("pw", "pw"),
            ("pw\n", "pw"),
            ("pw\r\n", "pw"),
            ("pw\n\n", "pw\n"),
            ("a\nb\n", "a\nb"),
            ("\n", ""),
            ("pw\r", "pw\r"),
        ] {
            assert_eq!(strip_one_newline(given.to_owned()), kept, "{given:?}");
        }
    }

    #[test]
    fn a_value_is_read_whole_and_bounded() {
        let max = crate::secrets::MAX_VALUE;
        assert_eq!(read_value(&b"pw\n"[..]).unwrap().as_deref(), Some("pw\n"));
        let long = vec![b'v'; max + 2];
        assert_eq!(read_value(&long[..]).unwrap().map(|v| v.len()), Some(max + 2));
        assert_eq!(read_value(&vec![b'v'; max + 3][..]).unwrap(), None);
        let e = read_value(&[0xff, 0xfe][..]).unwrap_err();
        assert!(e.is::<AdminRefusal>(), "{e}");
    }

    #[test]
    fn chunked_bodies_are_decoded_and_cut_ones_are_errors() {
        let body = b"4\r\nWiki\r\n6;x=y\r\npedia \r\n0\r\nTrailer: z\r\n\r\n".to_vec();
        let mut out = String::new();
        Chunked { inner: &body[..], left: 0, done: false }.read_to_string(&mut out).unwrap();
        assert_eq!(out, "Wikipedia ");
        let cut = b"4\r\nWi".to_vec();
        assert!(
            Chunked { inner: &cut[..], left: 0, done: false }.read_to_string(&mut out).is_err()
        );
        assert!(Exact { inner: &b"abc"[..], left: 5 }.read_to_string(&mut out).is_err());
    }
}
