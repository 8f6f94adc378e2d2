//! The CLI's admin commands: each is one request to the running server's admin API, found
//! through `data_dir/admin.url` and authenticated with `data_dir/admin.token`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use serde_json::{Value, json};

use crate::admin::{PREFIX, TOKEN_FILE, URL_FILE};
use crate::cli::{
    ActionsCommand, AgentsCommand, DiagnosticsCommand, Expiry, ReassignArgs, SettingsArgs, Targets,
    TokensCommand, UnenrollArgs, UpgradeArgs,
};
use crate::config::Config;

/// The admin API refused a request as invalid input: an unknown policy, agent, action or
/// upload, a version the active release does not carry. The CLI exits 1 for it, as for any
/// refused input; an unreachable server or a rejected admin token is exit 2.
#[derive(Debug, thiserror::Error)]
#[error("the appliance refused: {0}")]
pub struct AdminRefusal(pub String);

/// The error for an admin API answer that is not a success: an [`AdminRefusal`] for a 4xx
/// about the request itself, a plain error for authentication, overload and server trouble.
fn answer_error(status: u16, body: &str) -> anyhow::Error {
    let message = serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| v.get("message")?.as_str().map(str::to_owned))
        .unwrap_or_else(|| body.trim().to_owned());
    match status {
        401 | 403 => anyhow::anyhow!(
            "the admin API did not accept the admin token: {message} (HTTP {status}); run this \
             as the user `serve` runs as, with the same configuration"
        ),
        400..=499 if status != 429 => AdminRefusal(format!("{message} (HTTP {status})")).into(),
        _ => anyhow::anyhow!("the appliance could not answer: {message} (HTTP {status})"),
    }
}

struct Client {
    base: String,
    token: String,
    agent: ureq::Agent,
}

impl Client {
    fn new(config: &Config) -> anyhow::Result<Self> {
        let read = |name: &str| -> anyhow::Result<String> {
            let path = config.data_dir.join(name);
            Ok(std::fs::read_to_string(&path)
                .with_context(|| {
                    format!(
                        "cannot read {}: is `ferry-appliance serve` running with this configuration?",
                        path.display()
                    )
                })?
                .trim()
                .to_owned())
        };
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(std::time::Duration::from_secs(120)))
            .build()
            .into();
        Ok(Self { base: read(URL_FILE)?, token: read(TOKEN_FILE)?, agent })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{PREFIX}{path}", self.base)
    }

    /// Sends a request and returns the JSON answer, or the server's error message.
    fn call(&self, method: &str, path: &str, body: Option<&Value>) -> anyhow::Result<Value> {
        let url = self.url(path);
        let auth = format!("Bearer {}", self.token);
        let response = match (method, body) {
            ("GET", _) => self.agent.get(&url).header("Authorization", &auth).call(),
            (_, Some(body)) => self
                .agent
                .post(&url)
                .header("Authorization", &auth)
                .header("Content-Type", "application/json")
                .send(body.to_string()),
            (_, None) => self.agent.post(&url).header("Authorization", &auth).send_empty(),
        };
        let mut response = response.with_context(|| {
            format!(
                "cannot reach the admin API at {}: is `ferry-appliance serve` running?",
                self.base
            )
        })?;
        let status = response.status();
        let text = response.body_mut().read_to_string()?;
        if !status.is_success() {
            return Err(answer_error(status.as_u16(), &text));
        }
        Ok(serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }
}

fn print_json(value: &Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) if s.is_empty() => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn table(headers: &[&str], rows: impl Iterator<Item = Vec<String>>) {
    print!("{}", ferry_manifests::terminal::table(headers, rows));
}

pub fn tokens(config: &Config, command: TokensCommand) -> anyhow::Result<ExitCode> {
    let client = Client::new(config)?;
    match command {
        TokensCommand::Create { policy, name, json } => {
            let out = client.call(
                "POST",
                "/tokens",
                Some(&json!({ "policy_id": policy, "name": name })),
            )?;
            if json.json {
                print_json(&out)?;
            } else {
                println!("{}", text(&out["token"]));
                eprintln!(
                    "token {} enrolls agents into policy {policy}; it is shown only now",
                    text(&out["id"])
                );
            }
        }
        TokensCommand::List(json) => {
            let out = client.call("GET", "/tokens", None)?;
            if json.json {
                return print_json(&out).map(|()| ExitCode::SUCCESS);
            }
            let rows = out.as_array().cloned().unwrap_or_default().into_iter().map(|t| {
                let state = if t["revoked"] == true { "revoked" } else { "active" };
                vec![
                    text(&t["id"]),
                    text(&t["policy_id"]),
                    text(&t["created"]),
                    state.to_owned(),
                    text(&t["name"]),
                ]
            });
            table(&["ID", "POLICY", "CREATED", "STATE", "NAME"], rows);
        }
        TokensCommand::Revoke { id, json } => {
            let out = client.call("POST", &format!("/tokens/{id}/revoke"), None)?;
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
fn upgrade_cell(a: &Value) -> String {
    let state = a["upgrade_state"].as_str().unwrap_or("");
    if state.is_empty() {
        return "-".into();
    }
    let state = state.strip_prefix("UPG_").unwrap_or(state).to_ascii_lowercase();
    let percent = a["upgrade_details"]["metadata"]["download_percent"].as_f64();
    match (a["upgrade_target"].as_str(), percent) {
        (Some(t), Some(p)) if state == "downloading" => format!("{state} {t} {p:.0}%"),
        (Some(t), _) => format!("{state} {t}"),
        (None, _) => state,
    }
}

pub fn agents(config: &Config, command: AgentsCommand) -> anyhow::Result<ExitCode> {
    let client = Client::new(config)?;
    match command {
        AgentsCommand::List { policy, json } => {
            let path = match &policy {
                Some(p) => format!("/agents?policy={p}"),
                None => "/agents".into(),
            };
            let out = client.call("GET", &path, None)?;
            if json.json {
                return print_json(&out).map(|()| ExitCode::SUCCESS);
            }
            let rows = out.as_array().cloned().unwrap_or_default().into_iter().map(|a| {
                vec![
                    text(&a["id"]),
                    text(&a["hostname"]),
                    text(&a["status"]),
                    text(&a["version"]),
                    format!("{} rev {}", text(&a["policy_id"]), a["policy_revision"]),
                    text(&a["last_checkin"]),
                    upgrade_cell(&a),
                ]
            });
            table(
                &["ID", "HOSTNAME", "STATUS", "VERSION", "POLICY", "LAST CHECK-IN", "UPGRADE"],
                rows,
            );
        }
        AgentsCommand::Show { id, json } => {
            let a = client.call("GET", &format!("/agents/{id}"), None)?;
            if json.json {
                return print_json(&a).map(|()| ExitCode::SUCCESS);
            }
            for (label, value) in [
                ("id", text(&a["id"])),
                ("hostname", text(&a["hostname"])),
                ("status", text(&a["status"])),
                ("reported", format!("{} {}", text(&a["last_status"]), text(&a["last_message"]))),
                ("version", text(&a["version"])),
                ("policy", format!("{} revision {}", text(&a["policy_id"]), a["policy_revision"])),
                ("enrolled", text(&a["enrolled_at"])),
                ("last check-in", text(&a["last_checkin"])),
                ("upgrade", upgrade_cell(&a)),
                ("upgraded at", text(&a["upgraded_at"])),
                ("unenrolled at", text(&a["unenrolled_at"])),
                ("tags", text(&a["tags"])),
            ] {
                println!("{label:14} {value}");
            }
            let components = a["components"].as_array().cloned().unwrap_or_default();
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

/// Creates one action and prints what was queued.
fn act(
    client: &Client,
    mut request: Value,
    targets: Option<&Targets>,
    expiry: &Expiry,
    json: bool,
) -> anyhow::Result<ExitCode> {
    if let Some(t) = targets {
        request["agents"] = json!(t.agents);
        request["policy"] = json!(t.policy);
    }
    request["expires_in_seconds"] = json!(expiry.expires_in_days.saturating_mul(86_400));
    let out = client.call("POST", "/actions", Some(&request))?;
    if json {
        return print_json(&out).map(|()| ExitCode::SUCCESS);
    }
    let agents = out["agents"].as_array().map_or(0, Vec::len);
    println!("{} {} queued for {agents} agent(s)", text(&out["type"]), text(&out["action_id"]));
    for note in out["notes"].as_array().cloned().unwrap_or_default() {
        eprintln!("{}", text(&note));
    }
    Ok(ExitCode::SUCCESS)
}

pub fn upgrade(config: &Config, args: &UpgradeArgs) -> anyhow::Result<ExitCode> {
    let client = Client::new(config)?;
    let request =
        json!({ "type": "UPGRADE", "version": args.version, "start_time": args.start_time });
    act(&client, request, Some(&args.targets), &args.expiry, args.json.json)
}

pub fn unenroll(config: &Config, args: &UnenrollArgs) -> anyhow::Result<ExitCode> {
    let client = Client::new(config)?;
    if args.revoke {
        for id in &args.agents {
            client.call("POST", &format!("/agents/{id}/revoke"), None)?;
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
    act(&client, json!({ "type": "UNENROLL" }), Some(&targets), &args.expiry, args.json.json)
}

pub fn reassign(config: &Config, args: &ReassignArgs) -> anyhow::Result<ExitCode> {
    let client = Client::new(config)?;
    let targets = Targets { agents: args.agents.clone(), policy: None };
    let request = json!({ "type": "POLICY_REASSIGN", "policy_id": args.policy });
    act(&client, request, Some(&targets), &args.expiry, args.json.json)
}

pub fn settings(config: &Config, args: &SettingsArgs) -> anyhow::Result<ExitCode> {
    let client = Client::new(config)?;
    let request = json!({ "type": "SETTINGS", "log_level": args.log_level });
    act(&client, request, Some(&args.targets), &args.expiry, args.json.json)
}

pub fn diagnostics(config: &Config, command: DiagnosticsCommand) -> anyhow::Result<ExitCode> {
    let client = Client::new(config)?;
    match command {
        DiagnosticsCommand::Request { targets, metrics, expiry, json } => {
            let request = json!({ "type": "REQUEST_DIAGNOSTICS", "additional_metrics": metrics });
            act(&client, request, Some(&targets), &expiry, json.json)
        }
        DiagnosticsCommand::List(json) => {
            let out = client.call("GET", "/uploads", None)?;
            if json.json {
                return print_json(&out).map(|()| ExitCode::SUCCESS);
            }
            let rows = out.as_array().cloned().unwrap_or_default().into_iter().map(|u| {
                vec![
                    text(&u["id"]),
                    text(&u["agent_id"]),
                    text(&u["status"]),
                    text(&u["size"]),
                    text(&u["created"]),
                    text(&u["name"]),
                ]
            });
            table(&["UPLOAD", "AGENT", "STATUS", "SIZE", "CREATED", "FILE"], rows);
            Ok(ExitCode::SUCCESS)
        }
        DiagnosticsCommand::Get { upload_id, output, json } => {
            let list = client.call("GET", "/uploads", None)?;
            let upload = list
                .as_array()
                .and_then(|l| l.iter().find(|u| u["id"] == upload_id.as_str()).cloned())
                .ok_or_else(|| {
                    AdminRefusal(format!("no upload {upload_id} (see `diagnostics list`)"))
                })?;
            // The agent chose the file name: keep only its last component.
            let name = text(&upload["name"]);
            let name = name
                .rsplit(['/', '\\'])
                .next()
                .filter(|n| !n.is_empty() && *n != ".." && *n != ".");
            let output = output.unwrap_or_else(|| PathBuf::from(name.unwrap_or("diagnostics.zip")));
            let mut response = client
                .agent
                .get(&client.url(&format!("/uploads/{upload_id}/file")))
                .header("Authorization", &format!("Bearer {}", client.token))
                .call()?;
            let status = response.status();
            if !status.is_success() {
                let body = response.body_mut().read_to_string().unwrap_or_default();
                return Err(answer_error(status.as_u16(), &body));
            }
            let tmp = output.with_extension("part");
            let mut file = std::fs::File::create(&tmp)
                .with_context(|| format!("cannot create {}", tmp.display()))?;
            let mut reader = response.body_mut().with_config().limit(u64::MAX).reader();
            let mut hasher =
                HashingWriter { inner: &mut file, sha: <sha2::Sha256 as sha2::Digest>::new() };
            let bytes = std::io::copy(&mut reader, &mut hasher)?;
            let sha = hex::encode(sha2::Digest::finalize(hasher.sha));
            anyhow::ensure!(
                Some(sha.as_str()) == upload["sha256"].as_str(),
                "the download's SHA-256 {sha} is not the upload's {}; {} removed",
                text(&upload["sha256"]),
                tmp.display()
            );
            file.sync_all()?;
            std::fs::rename(&tmp, &output)?;
            if json.json {
                print_json(&json!({
                    "upload_id": upload_id,
                    "agent_id": upload["agent_id"],
                    "path": output,
                    "bytes": bytes,
                    "sha256": sha,
                }))?;
            } else {
                println!("{} ({bytes} bytes, sha256 {sha})", output.display());
            }
            Ok(ExitCode::SUCCESS)
        }
    }
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

pub fn actions(config: &Config, command: ActionsCommand) -> anyhow::Result<ExitCode> {
    let client = Client::new(config)?;
    match command {
        ActionsCommand::Show { action_id, json } => {
            let out = client.call("GET", &format!("/actions/{action_id}"), None)?;
            if json.json {
                return print_json(&out).map(|()| ExitCode::SUCCESS);
            }
            let rows = out["agents"].as_array().cloned().unwrap_or_default().into_iter().map(|a| {
                let state = if a["acknowledged"] == true { "acknowledged" } else { "pending" };
                vec![text(&a["agent_id"]), state.to_owned(), text(&a["error"])]
            });
            table(&["AGENT", "STATE", "ERROR"], rows);
            Ok(ExitCode::SUCCESS)
        }
        ActionsCommand::Cancel { action_id, json } => {
            let request = json!({ "type": "CANCEL", "target_id": action_id });
            act(&client, request, None, &Expiry { expires_in_days: 30 }, json.json)
        }
    }
}

/// `status`: the running server's view, through the admin API; when no server answers, the data
/// directory's (with this configuration's keys). Exits 1 unless a server runs and serves its
/// active release (`/api/status` answers `HEALTHY`), so it can serve as a health check.
pub fn status(
    config: &Config,
    keys: &ferry_manifests::TrustedKeys,
    as_json: bool,
) -> anyhow::Result<ExitCode> {
    let running = match Client::new(config) {
        Ok(client) => match client.call("GET", "/status", None) {
            Ok(report) => Some(report),
            // The admin.url of a server that has stopped: nothing listens there now.
            Err(e) if e.chain().any(|cause| cause.is::<ureq::Error>()) => None,
            Err(e) => return Err(e),
        },
        // No admin.url or admin.token: no server ever ran on this data directory.
        Err(_) => None,
    };
    let report = match running {
        Some(report) => report,
        None => stopped_status(config, keys)?,
    };
    if as_json {
        print_json(&report)?;
    } else {
        let release = |v: &Value| match v {
            Value::Null => "none".to_owned(),
            v => format!("{} {}", text(&v["name"]), v["sequence"]),
        };
        let server = match report["status"].as_str() {
            Some(status) => format!("running; /api/status answers {status}"),
            None => "stopped (start it with `ferry-appliance serve`)".to_owned(),
        };
        let active = match (&report["active"], report["loaded"] == true) {
            (Value::Null, _) => "none".to_owned(),
            (a, true) => format!("{}, verified", release(a)),
            (a, false) => format!("{}, does not verify ({})", release(a), text(&report["check"])),
        };
        let by_status: Vec<String> = report["agents"]["by_status"]
            .as_object()
            .map(|m| m.iter().map(|(status, n)| format!("{status} {n}")).collect())
            .unwrap_or_default();
        println!("server  {server}");
        println!("active  {active}");
        if report["server"] == "running" {
            let served = if report["served"] == true {
                release(&report["active"])
            } else {
                "nothing".to_owned()
            };
            println!("served  {served}");
        }
        let total = &report["agents"]["total"];
        if by_status.is_empty() {
            println!("agents  {total}");
        } else {
            println!("agents  {total} ({})", by_status.join(", "));
        }
        if let Some(message) = report["message"].as_str() {
            println!("{message}");
        }
    }
    Ok(if report["status"] == "HEALTHY" { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// The report of `status` when no server runs: what `serve` would load, from the data directory.
fn stopped_status(config: &Config, keys: &ferry_manifests::TrustedKeys) -> anyhow::Result<Value> {
    use crate::state::StateStore as _;
    let db = config.data_dir.join("state.db");
    let (pointer, views) = if db.exists() {
        let state = crate::state::SqliteState::open(&db)?;
        (state.active()?, state.agent_views(None)?)
    } else {
        (None, Vec::new())
    };
    let active = crate::release::Active::load(&config.data_dir, pointer, keys);
    let offline_after = std::time::Duration::from_secs(config.server.agent_offline_seconds);
    let agents = crate::admin::count_agents(&views, &crate::state::now_rfc3339()?, offline_after);
    Ok(crate::admin::status_report(false, &active, &agents))
}
