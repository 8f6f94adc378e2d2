//! `ferry-sim flood`: hostile clients against a Fleet server for a while, counting what the
//! server really answered. Each kind runs its own tasks:
//!
//! - `slowloris`: connections that send a request head a byte at a time and never finish it;
//! - `slow-body`: connections that send a whole head declaring a large body, then trickle it;
//! - `oversize`: heads over 8 KiB and bodies over their caps (declared, chunked, gzip bombs);
//! - `keys`: a keep-alive flood of check-ins and acks with forged or misused access keys;
//! - `disconnect`: enrolled agents that open a check-in, let it park, and drop the connection.
//!
//! And a compromised agent's attacks of issue 22 (it holds an enrollment token or a key):
//!
//! - `replace-token`: enrollments naming the flood's own active agent with wrong
//!   `replace_token`s, each of which costs the server a PBKDF2 check;
//! - `bogus-token`: enrollments with enrollment tokens nobody issued, from several addresses;
//! - `hold-fds`: bare TCP connections opened and held without a byte sent, to use up the
//!   server's file descriptors;
//! - `parked-per-key`: one agent's key opening many check-ins at once, each left to park;
//! - `bulky-checkin`: gzipped check-ins of ~20 KiB whose `local_metadata`, `message` and
//!   `components` inflate to 18 MiB, within the check-in's 20 MiB cap.
//!
//! Hostile clients connect from 127.2.x.y (`--sources` of them), apart from the simulated
//! fleet's and the probe's 127.1.x.y, as an attacker's hosts are not the agents'.
//!
//! Nothing here retries to make numbers look better: a connection that broke before an answer
//! is counted as an error, an answer is counted by its status.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::IpAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper::body::Bytes;
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWriteExt as _};

use super::FloodArgs;
use super::conn::{self, Conn, Endpoint, Failure, Stream};

const UA: &str = "Elastic Agent v9.1.2";
/// The server's largest request head; oversized heads go well past it.
const SERVER_MAX_HEAD: usize = 8 << 10;
/// The check-in's cap on the wire (`CHECKIN_WIRE_LIMIT`) and after gunzip.
const CHECKIN_WIRE_CAP: usize = 1 << 20;
const CHECKIN_INFLATED_CAP: usize = 20 << 20;
/// How long an answer may take before the attempt counts as a timeout.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum Kind {
    /// Request heads sent a byte at a time, never finished.
    Slowloris,
    /// Whole check-in heads declaring 1 MiB, then the body a byte at a time.
    SlowBody,
    /// Heads and bodies over their caps (declared, chunked, gzip bombs).
    Oversize,
    /// Check-ins and acks with forged or misused access keys.
    Keys,
    /// Enrolled agents dropping parked check-ins.
    Disconnect,
    /// Enrollments naming an active agent with wrong replace tokens.
    ReplaceToken,
    /// Enrollments with enrollment tokens nobody issued.
    BogusToken,
    /// Bare TCP connections held without a byte sent.
    HoldFds,
    /// Many parked check-ins of one agent key.
    ParkedPerKey,
    /// Gzipped check-ins of ~20 KiB inflating to 18 MiB of stored fields.
    BulkyCheckin,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Slowloris => "slowloris",
            Kind::SlowBody => "slow-body",
            Kind::Oversize => "oversize",
            Kind::Keys => "keys",
            Kind::Disconnect => "disconnect",
            Kind::ReplaceToken => "replace-token",
            Kind::BogusToken => "bogus-token",
            Kind::HoldFds => "hold-fds",
            Kind::ParkedPerKey => "parked-per-key",
            Kind::BulkyCheckin => "bulky-checkin",
        }
    }
}

/// Tallies per variant of one flood kind, by variant name.
type Variants = Vec<(&'static str, Arc<Tally>)>;

/// What one kind (or one variant of it) did and what came back.
#[derive(Default)]
struct Tally {
    attempts: AtomicU64,
    status: Mutex<BTreeMap<u16, u64>>,
    errors: Mutex<BTreeMap<String, u64>>,
    /// Outcomes that are neither a status nor an error (a slowloris connection the server
    /// closed, a check-in dropped while parked).
    outcomes: Mutex<BTreeMap<&'static str, u64>>,
    /// Connections or requests open without an answer now, and the most at once.
    open: AtomicI64,
    open_peak: AtomicI64,
}

impl Tally {
    fn attempt(&self) {
        self.attempts.fetch_add(1, Relaxed);
    }

    fn status(&self, status: u16) {
        *self.status.lock().expect("tally lock").entry(status).or_default() += 1;
    }

    fn error(&self, failure: &Failure) {
        let kind = match failure {
            Failure::Protocol(why) => format!("protocol:{why}"),
            f => f.kind(),
        };
        *self.errors.lock().expect("tally lock").entry(kind).or_default() += 1;
    }

    fn outcome(&self, what: &'static str) {
        *self.outcomes.lock().expect("tally lock").entry(what).or_default() += 1;
    }

    fn opened(&self) {
        let now = self.open.fetch_add(1, Relaxed) + 1;
        self.open_peak.fetch_max(now, Relaxed);
    }

    fn closed(&self) {
        self.open.fetch_sub(1, Relaxed);
    }

    fn record(&self, result: Result<u16, Failure>) {
        match result {
            Ok(s) => self.status(s),
            Err(f) => self.error(&f),
        }
    }

    fn json(&self, seconds: f64) -> Value {
        let attempts = self.attempts.load(Relaxed);
        let status: BTreeMap<String, u64> = self
            .status
            .lock()
            .expect("tally lock")
            .iter()
            .map(|(k, v)| (k.to_string(), *v))
            .collect();
        let mut v = json!({
            "attempts": attempts,
            "status": status,
            "errors": *self.errors.lock().expect("tally lock"),
            "outcomes": *self.outcomes.lock().expect("tally lock"),
            "rate_per_s": (attempts as f64 / seconds.max(0.001) * 10.0).round() / 10.0,
        });
        let peak = self.open_peak.load(Relaxed);
        if peak > 0 {
            v["open_peak"] = json!(peak);
        }
        v
    }
}

/// What every flood task shares.
struct Flood {
    endpoint: Arc<Endpoint>,
    tls: Option<Arc<rustls::ClientConfig>>,
    sources: Vec<IpAddr>,
    next_source: AtomicUsize,
    token: String,
    end: Instant,
}

impl Flood {
    fn source(&self) -> Option<IpAddr> {
        (!self.sources.is_empty())
            .then(|| self.sources[self.next_source.fetch_add(1, Relaxed) % self.sources.len()])
    }

    async fn open(&self) -> Result<Stream, Failure> {
        conn::open(&self.endpoint, self.tls.as_ref(), self.source()).await
    }

    /// One attempt: `request` sent whole on a new connection, which is returned to read the
    /// answer from. A connection that cannot be opened is counted (and the next attempt waits a
    /// second), one that breaks while sending is counted as a transport failure.
    async fn send_on_new(&self, tally: &Tally, request: &[u8]) -> Option<Stream> {
        tally.attempt();
        let mut stream = match self.open().await {
            Ok(s) => s,
            Err(f) => {
                tally.error(&f);
                tokio::time::sleep(Duration::from_secs(1)).await;
                return None;
            }
        };
        if stream.write_all(request).await.and(stream.flush().await).is_err() {
            tally.error(&Failure::Transport);
            return None;
        }
        Some(stream)
    }

    fn conn(&self) -> Conn {
        Conn::new(Arc::clone(&self.endpoint), self.tls.clone(), self.source())
    }

    fn running(&self) -> bool {
        Instant::now() < self.end
    }

    fn path(&self, path: &str) -> String {
        format!("{}{path}", self.endpoint.prefix)
    }

    /// A request head with the headers an agent sends, ending with the blank line.
    fn head(&self, method: &str, path: &str, auth: &str, extra: &[(&str, &str)]) -> Vec<u8> {
        let mut head = format!(
            "{method} {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: {UA}\r\nAuthorization: ApiKey {auth}\r\n\
             Elastic-Api-Version: 2023-06-01\r\nContent-Type: application/json\r\n",
            self.path(path),
            self.endpoint.host
        );
        for (k, v) in extra {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        head.into_bytes()
    }
}

/// An enrolled agent's id and access key (base64 `id:secret`).
#[derive(Clone)]
struct Enrolled {
    id: String,
    key: String,
}

fn agent_headers(auth: &str) -> Vec<(&'static str, String)> {
    vec![
        ("user-agent", UA.to_owned()),
        ("authorization", format!("ApiKey {auth}")),
        ("elastic-api-version", "2023-06-01".to_owned()),
        ("content-type", "application/json".to_owned()),
    ]
}

async fn send(
    conn: &mut Conn,
    method: &str,
    path: &str,
    auth: &str,
    body: Bytes,
) -> Result<conn::Response, Failure> {
    let h = agent_headers(auth);
    let h: Vec<(&str, &str)> = h.iter().map(|(k, v)| (*k, v.as_str())).collect();
    conn.request(method, path, &h, body, ANSWER_TIMEOUT).await
}

/// An enrollment body of host `name`, naming the agent id and replace token when given (as
/// elastic-agent's `EnrollRequest`, internal/pkg/fleetapi/enroll_cmd.go: `id`,
/// `replace_token`).
fn enroll_body(name: &str, id: Option<&str>, replace_token: Option<&str>) -> String {
    let mut body: Value =
        serde_json::from_str(&super::enroll_body("9.1.2", name)).expect("ferry-wire renders JSON");
    if let Some(id) = id {
        body["id"] = json!(id);
    }
    if let Some(token) = replace_token {
        body["replace_token"] = json!(token);
    }
    body.to_string()
}

/// Enrolls one agent, retrying (with a pause) on refusals such as 429 until `give_up`.
async fn enroll(flood: &Flood, name: &str, give_up: Instant) -> Result<Enrolled, Failure> {
    enroll_with(flood, enroll_body(name, None, None), give_up).await
}

async fn enroll_with(flood: &Flood, body: String, give_up: Instant) -> Result<Enrolled, Failure> {
    let mut conn = flood.conn();
    loop {
        let r =
            send(&mut conn, "POST", "/api/fleet/agents/enroll?", &flood.token, body.clone().into())
                .await;
        let failure = match r {
            Ok(r) if r.status == 200 => {
                let v: Value = serde_json::from_slice(&r.body)
                    .map_err(|e| Failure::Protocol(e.to_string()))?;
                let field = |k: &str| v["item"][k].as_str().unwrap_or_default().to_owned();
                return Ok(Enrolled { id: field("id"), key: field("access_api_key") });
            }
            Ok(r) => Failure::Status(r.status),
            Err(f) => f,
        };
        if Instant::now() > give_up {
            return Err(failure);
        }
        tokio::time::sleep(Duration::from_millis(200 + rand::random::<u64>() % 800)).await;
    }
}

pub async fn run(args: FloodArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let flood = Arc::new(Flood {
        endpoint: Arc::new(Endpoint::parse(&args.target.url)?),
        tls: super::tls_for(&args.target)?,
        sources: super::sources_in(2, args.target.sources),
        next_source: AtomicUsize::new(0),
        token: args.target.token.clone(),
        end: started + Duration::from_secs_f64(args.seconds),
    });
    let mut kinds = args.kinds.clone();
    kinds.sort();
    kinds.dedup();
    // Oversized check-ins, misused keys and many check-ins of one key need a real agent's
    // key: without one, the server refuses them as unknown before it looks at their size or
    // their path. It enrolls with an id and a replace token of its own, as an agent installed
    // with `--replace-token` does, so that wrong replace tokens can name it.
    let helper =
        if kinds.iter().any(|k| {
            matches!(k, Kind::Oversize | Kind::Keys | Kind::ReplaceToken | Kind::ParkedPerKey)
        }) {
            let give_up = Instant::now() + Duration::from_secs(30);
            let body = enroll_body("ferry-sim-flood", Some(&random_uuid()), Some(&random_hex(16)));
            Some(enroll_with(&flood, body, give_up).await.map_err(|f| {
                anyhow::anyhow!("the flood's helper agent cannot enroll: {}", f.kind())
            })?)
        } else {
            None
        };
    let mut tallies: Vec<(Kind, Arc<Tally>, Variants)> = Vec::new();
    let mut tasks = tokio::task::JoinSet::new();
    for kind in kinds {
        let tally = Arc::new(Tally::default());
        let mut variants = Vec::new();
        match kind {
            Kind::Slowloris => {
                let interval = Duration::from_millis(args.slowloris_interval_ms.max(1));
                for _ in 0..args.slowloris {
                    tasks.spawn(slowloris(Arc::clone(&flood), Arc::clone(&tally), interval));
                }
            }
            Kind::SlowBody => {
                let interval = Duration::from_millis(args.slowloris_interval_ms.max(1));
                for _ in 0..args.slow_body {
                    tasks.spawn(slow_body(Arc::clone(&flood), Arc::clone(&tally), interval));
                }
            }
            Kind::Oversize => {
                let helper = helper.clone().expect("enrolled above");
                for name in &args.oversize_variants {
                    anyhow::ensure!(
                        OVERSIZE.iter().any(|v| v.name() == name),
                        "--oversize-variants: no variant {name}"
                    );
                }
                variants = OVERSIZE
                    .iter()
                    .filter(|v| {
                        args.oversize_variants.is_empty()
                            || args.oversize_variants.iter().any(|n| n == v.name())
                    })
                    .map(|v| (v.name(), Arc::new(Tally::default())))
                    .collect();
                let shared = Arc::new(variants.clone());
                for n in 0..args.oversize_connections {
                    tasks.spawn(oversize(
                        Arc::clone(&flood),
                        Arc::clone(&tally),
                        Arc::clone(&shared),
                        helper.clone(),
                        n,
                    ));
                }
            }
            Kind::Keys => {
                let helper = helper.clone().expect("enrolled above");
                variants =
                    KEY_ABUSE.iter().map(|v| (v.name(), Arc::new(Tally::default()))).collect();
                let shared = Arc::new(variants.clone());
                let connections = args.key_connections.max(1);
                let every = share(args.key_rate, connections);
                for n in 0..connections {
                    tasks.spawn(keys(
                        Arc::clone(&flood),
                        Arc::clone(&tally),
                        Arc::clone(&shared),
                        helper.clone(),
                        every,
                        n,
                    ));
                }
            }
            Kind::Disconnect => {
                let after = Duration::from_millis(args.disconnect_after_ms);
                for n in 0..args.disconnect_agents {
                    tasks.spawn(disconnect(Arc::clone(&flood), Arc::clone(&tally), after, n));
                }
            }
            Kind::ReplaceToken | Kind::BogusToken => {
                let (forgery, rate, connections) = match kind {
                    Kind::ReplaceToken => {
                        let id = helper.as_ref().expect("enrolled above").id.clone();
                        (Forgery::ReplaceToken(id), args.replace_rate, args.replace_connections)
                    }
                    _ => (Forgery::BogusToken, args.bogus_rate, args.bogus_connections),
                };
                let forgery = Arc::new(forgery);
                let every = share(rate, connections.max(1));
                for _ in 0..connections.max(1) {
                    tasks.spawn(enrollments(
                        Arc::clone(&flood),
                        Arc::clone(&tally),
                        Arc::clone(&forgery),
                        every,
                    ));
                }
            }
            Kind::HoldFds => {
                for n in 0..args.hold_fds {
                    tasks.spawn(hold_fd(Arc::clone(&flood), Arc::clone(&tally), n));
                }
            }
            Kind::ParkedPerKey => {
                let helper = helper.clone().expect("enrolled above");
                tasks.spawn(parked_per_key(
                    Arc::clone(&flood),
                    Arc::clone(&tally),
                    helper,
                    args.parked_per_key,
                ));
            }
            Kind::BulkyCheckin => {
                let body = bulky_body();
                for n in 0..args.bulky_agents {
                    tasks.spawn(bulky(Arc::clone(&flood), Arc::clone(&tally), body.clone(), n));
                }
            }
        }
        tallies.push((kind, tally, variants));
    }
    // Tasks stop starting attempts at the end; one already under way may finish (bounded).
    let grace = flood.end + ANSWER_TIMEOUT + Duration::from_secs(5);
    while tokio::time::timeout_at(grace.into(), tasks.join_next()).await.ok().flatten().is_some() {}
    let unfinished = tasks.len();
    tasks.abort_all();
    let seconds = args.seconds;
    let mut report = serde_json::Map::new();
    for (kind, tally, variants) in &tallies {
        let mut v = tally.json(seconds);
        if !variants.is_empty() {
            v["variants"] =
                variants.iter().map(|(n, t)| (n.to_string(), t.json(seconds))).collect();
        }
        report.insert(kind.name().to_owned(), v);
    }
    println!(
        "{}",
        json!({ "seconds": seconds, "elapsed_s": (started.elapsed().as_secs_f64() * 10.0).round() / 10.0,
                "unfinished_tasks": unfinished, "kinds": report })
    );
    Ok(())
}

/// One slowloris connection after another: a head sent a byte at a time, never finished.
/// The server should cut it off after its header timeout (without an answer) or at the head
/// size cap (431); a connection still open at the end was held for the whole flood.
async fn slowloris(flood: Arc<Flood>, tally: Arc<Tally>, interval: Duration) {
    let prefix = flood.head("POST", "/api/fleet/agents/enroll?", "slow", &[]);
    // Everything but the blank line that would end the head, then a header value forever.
    let prefix = prefix[..prefix.len() - 2].to_vec();
    let prefix = [prefix, b"X-Slow: ".to_vec()].concat();
    trickle(&flood, &tally, &prefix, interval, b'a').await;
}

/// A head declaring a check-in body of exactly the route's cap (so the server must wait for
/// it), then the body a byte at a time.
async fn slow_body(flood: Arc<Flood>, tally: Arc<Tally>, interval: Duration) {
    let length = CHECKIN_WIRE_CAP.to_string();
    let head = flood.head(
        "POST",
        "/api/fleet/agents/00000000-0000-4000-8000-000000000000/checkin?",
        "c2xvdzpib2R5",
        &[("Content-Length", &length)],
    );
    // The head goes at once; only the body trickles.
    trickle(&flood, &tally, &head, interval, b' ').await;
}

/// Sends `first` (a byte per `interval` unless it ends with a blank line, then all at once),
/// then `filler` a byte per `interval`, on one connection after another until the end.
async fn trickle(flood: &Flood, tally: &Tally, first: &[u8], interval: Duration, filler: u8) {
    let whole_first = first.ends_with(b"\r\n\r\n");
    while flood.running() {
        tally.attempt();
        let mut stream = match flood.open().await {
            Ok(s) => s,
            Err(f) => {
                tally.error(&f);
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        let mut sent = 0usize;
        if whole_first {
            if stream.write_all(first).await.and(stream.flush().await).is_err() {
                tally.outcome("closed_by_server");
                continue;
            }
            sent = first.len();
        }
        let mut answer = Vec::new();
        let mut probe = [0u8; 512];
        let mut tick = tokio::time::interval(interval);
        let ended = loop {
            tokio::select! {
                _ = tick.tick() => {
                    if !flood.running() {
                        break "held_to_end";
                    }
                    let byte = first.get(sent).copied().unwrap_or(filler);
                    if stream.write_all(&[byte]).await.and(stream.flush().await).is_err() {
                        break "closed_by_server";
                    }
                    sent += 1;
                }
                n = stream.read(&mut probe) => match n {
                    Ok(0) | Err(_) => break "closed_by_server",
                    Ok(n) => answer.extend_from_slice(&probe[..n]),
                },
            }
        };
        if let Some(status) = status_of(&answer) {
            tally.status(status);
        } else if ended == "closed_by_server" && !answer.is_empty() {
            tally.error(&Failure::Protocol("unparsable answer".into()));
        }
        tally.outcome(ended);
    }
}

/// The status code of a response that starts with `HTTP/1.x NNN`.
fn status_of(answer: &[u8]) -> Option<u16> {
    let line = answer.split(|b| *b == b'\n').next()?;
    let text = std::str::from_utf8(line).ok()?;
    let mut parts = text.split_ascii_whitespace();
    parts.next().filter(|v| v.starts_with("HTTP/1."))?;
    parts.next()?.parse().ok()
}

/// Reads one response (head, then a body by Content-Length or chunked) and returns its status
/// and body. A connection that ends before a whole head is an error.
async fn read_response<R: AsyncRead + Unpin>(io: &mut R) -> Result<(u16, Vec<u8>), Failure> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > 64 << 10 {
            return Err(Failure::Protocol("response head too long".into()));
        }
        match io.read(&mut chunk).await {
            Ok(0) if buf.is_empty() => return Err(Failure::Protocol("closed".into())),
            Ok(0) => return Err(Failure::Protocol("closed mid-head".into())),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                return Err(Failure::Protocol("reset".into()));
            }
            Err(_) => return Err(Failure::Transport),
        }
    };
    let status = status_of(&buf).ok_or_else(|| Failure::Protocol("status line".into()))?;
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let mut body = buf.split_off(head_end);
    let header = |name: &str| {
        head.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(':')))
            .map(str::trim)
    };
    if let Some(len) = header("content-length").and_then(|l| l.parse::<usize>().ok()) {
        while body.len() < len {
            read_more(io, &mut body).await?;
        }
        body.truncate(len);
    } else if header("transfer-encoding") == Some("chunked") {
        // Only the end matters here: the chunks are kept undecoded.
        while !body.ends_with(b"0\r\n\r\n") {
            if body.len() > 32 << 20 {
                return Err(Failure::Protocol("response body too long".into()));
            }
            read_more(io, &mut body).await?;
        }
    }
    Ok((status, body))
}

async fn read_more<R: AsyncRead + Unpin>(io: &mut R, body: &mut Vec<u8>) -> Result<(), Failure> {
    let mut chunk = [0u8; 4096];
    match io.read(&mut chunk).await {
        Ok(0) => Err(Failure::Protocol("closed mid-body".into())),
        Ok(n) => {
            body.extend_from_slice(&chunk[..n]);
            Ok(())
        }
        Err(_) => Err(Failure::Transport),
    }
}

/// Ways to send too much, each expected to be refused with 413 or 431.
#[derive(Clone, Copy)]
enum Oversize {
    /// A 16 KiB header (431).
    Head,
    /// A check-in declaring 32 MiB: refused from the head alone, nothing of the body sent.
    DeclaredHuge,
    /// A check-in of 2 MiB with Content-Length, over the route's 1 MiB cap.
    CheckinLength,
    /// The same, chunked.
    CheckinChunked,
    /// A gzip check-in of 20 KiB that inflates past the 20 MiB cap.
    GzipBomb,
}

const OVERSIZE: &[Oversize] = &[
    Oversize::Head,
    Oversize::DeclaredHuge,
    Oversize::CheckinLength,
    Oversize::CheckinChunked,
    Oversize::GzipBomb,
];

impl Oversize {
    fn name(self) -> &'static str {
        match self {
            Oversize::Head => "head-16k",
            Oversize::DeclaredHuge => "declared-32m",
            Oversize::CheckinLength => "checkin-2m-length",
            Oversize::CheckinChunked => "checkin-2m-chunked",
            Oversize::GzipBomb => "gzip-bomb",
        }
    }
}

/// What to write after the head.
enum Body {
    None,
    Bytes(Bytes),
    /// `total` bytes of filler in chunks of 64 KiB.
    Chunked(usize),
}

fn gzip_bomb() -> Bytes {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    let zeros = vec![b' '; 1 << 20];
    for _ in 0..(CHECKIN_INFLATED_CAP >> 20) + 1 {
        gz.write_all(&zeros).expect("in memory");
    }
    gz.finish().expect("in memory").into()
}

/// Oversized requests one after another on a new connection each (the server closes after
/// refusing), cycling through the variants.
async fn oversize(
    flood: Arc<Flood>,
    tally: Arc<Tally>,
    variants: Arc<Vec<(&'static str, Arc<Tally>)>>,
    helper: Enrolled,
    n: usize,
) {
    let checkin = format!("/api/fleet/agents/{}/checkin?", helper.id);
    let big = Bytes::from(vec![b' '; 2 * CHECKIN_WIRE_CAP]);
    let bomb = gzip_bomb();
    let mut i = n;
    while flood.running() {
        let (name, vt) = &variants[i % variants.len()];
        let variant = *OVERSIZE.iter().find(|v| v.name() == *name).expect("a known variant");
        i += 1;
        let key = helper.key.as_str();
        let (head, body) = match variant {
            Oversize::Head => {
                let filler = "a".repeat(2 * SERVER_MAX_HEAD);
                (flood.head("GET", "/api/status?", key, &[("X-Big", &filler)]), Body::None)
            }
            Oversize::DeclaredHuge => {
                let len = (32usize << 20).to_string();
                (flood.head("POST", &checkin, key, &[("Content-Length", &len)]), Body::None)
            }
            Oversize::CheckinLength => {
                let len = big.len().to_string();
                (
                    flood.head("POST", &checkin, key, &[("Content-Length", &len)]),
                    Body::Bytes(big.clone()),
                )
            }
            Oversize::CheckinChunked => (
                flood.head("POST", &checkin, key, &[("Transfer-Encoding", "chunked")]),
                Body::Chunked(2 * CHECKIN_WIRE_CAP),
            ),
            Oversize::GzipBomb => {
                let len = bomb.len().to_string();
                (
                    flood.head(
                        "POST",
                        &checkin,
                        key,
                        &[("Content-Length", &len), ("Content-Encoding", "gzip")],
                    ),
                    Body::Bytes(bomb.clone()),
                )
            }
        };
        tally.attempt();
        vt.attempt();
        let result = match flood.open().await {
            Ok(stream) => exchange(stream, head, body).await,
            Err(f) => Err(f),
        };
        tally.record(result.clone());
        vt.record(result);
    }
}

/// Writes a request while reading the answer, so a server that refuses before the body is
/// all sent is still heard; returns the status.
async fn exchange(stream: Stream, head: Vec<u8>, body: Body) -> Result<u16, Failure> {
    let (mut r, mut w) = tokio::io::split(stream);
    let write = async move {
        w.write_all(&head).await?;
        match body {
            Body::None => {}
            Body::Bytes(b) => w.write_all(&b).await?,
            Body::Chunked(total) => {
                let piece = vec![b' '; 64 << 10];
                let mut sent = 0;
                while sent < total {
                    let n = piece.len().min(total - sent);
                    w.write_all(format!("{n:x}\r\n").as_bytes()).await?;
                    w.write_all(&piece[..n]).await?;
                    w.write_all(b"\r\n").await?;
                    sent += n;
                }
                w.write_all(b"0\r\n\r\n").await?;
            }
        }
        w.flush().await?;
        // Kept open: a half-closed connection could read as the client leaving.
        std::future::pending::<()>().await;
        Ok::<_, std::io::Error>(w)
    };
    let read = tokio::time::timeout(ANSWER_TIMEOUT, read_response(&mut r));
    tokio::pin!(read);
    tokio::select! {
        answer = &mut read => answer.map_err(|_| Failure::Timeout)?.map(|(s, _)| s),
        // The write failed (the server closed): its answer may still be there to read.
        _ = write => read.await.map_err(|_| Failure::Timeout)?.map(|(s, _)| s),
    }
}

/// Forged and misused access keys, each expected to get 401 or 403.
#[derive(Clone, Copy)]
enum KeyAbuse {
    /// A well-formed key nobody issued, on a random agent's check-in.
    UnknownCheckin,
    /// The same on acks.
    UnknownAck,
    /// A real agent's key id with a wrong secret.
    WrongSecret,
    /// A real agent's valid key on another agent's acks (403).
    OtherAgent,
    /// Not base64 at all.
    Malformed,
}

const KEY_ABUSE: &[KeyAbuse] = &[
    KeyAbuse::UnknownCheckin,
    KeyAbuse::UnknownAck,
    KeyAbuse::WrongSecret,
    KeyAbuse::OtherAgent,
    KeyAbuse::Malformed,
];

impl KeyAbuse {
    fn name(self) -> &'static str {
        match self {
            KeyAbuse::UnknownCheckin => "unknown-key-checkin",
            KeyAbuse::UnknownAck => "unknown-key-ack",
            KeyAbuse::WrongSecret => "wrong-secret-checkin",
            KeyAbuse::OtherAgent => "other-agent-ack",
            KeyAbuse::Malformed => "malformed-key-ack",
        }
    }
}

/// Standard base64 with padding, as Fleet keys are encoded.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for group in bytes.chunks(3) {
        let b = [group[0], *group.get(1).unwrap_or(&0), *group.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= group.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn random_hex(bytes: usize) -> String {
    hex::encode((0..bytes).map(|_| rand::random::<u8>()).collect::<Vec<_>>())
}

fn random_uuid() -> String {
    let h = random_hex(16);
    format!("{}-{}-4{}-8{}-{}", &h[..8], &h[8..12], &h[13..16], &h[17..20], &h[20..])
}

/// The id half of a key (`base64(id:secret)`), decoded.
fn key_id(key: &str) -> Option<String> {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut bits = 0u32;
    let mut nbits = 0;
    let mut out = Vec::new();
    for c in key.bytes().take_while(|c| *c != b'=') {
        bits = (bits << 6) | ALPHABET.iter().position(|a| *a == c)? as u32;
        nbits += 6;
        if nbits >= 8 {
            nbits -= 8;
            out.push((bits >> nbits) as u8);
        }
    }
    let text = String::from_utf8(out).ok()?;
    text.split_once(':').map(|(id, _)| id.to_owned())
}

/// A keep-alive connection sending forged and misused keys at its share of the rate.
async fn keys(
    flood: Arc<Flood>,
    tally: Arc<Tally>,
    variants: Arc<Vec<(&'static str, Arc<Tally>)>>,
    helper: Enrolled,
    every: Duration,
    n: usize,
) {
    let helper_key_id = key_id(&helper.key).unwrap_or_default();
    let checkin = Bytes::from(json!({"status": "online", "message": "flood"}).to_string());
    let mut conn = flood.conn();
    let mut tick = pace(every);
    let mut i = n;
    while flood.running() {
        tick.tick().await;
        let variant = KEY_ABUSE[i % KEY_ABUSE.len()];
        let vt = &variants[i % KEY_ABUSE.len()].1;
        i += 1;
        let forged = || base64(format!("{}:{}", random_hex(10), random_hex(21)).as_bytes());
        let ack = |agent: &str| {
            Bytes::from(
                json!({"events": [{"type": "ACTION_RESULT", "subtype": "ACKNOWLEDGED",
                    "agent_id": agent, "action_id": "policy:flood:1", "message": "flood"}]})
                .to_string(),
            )
        };
        let (path, key, body) = match variant {
            KeyAbuse::UnknownCheckin => {
                (format!("/api/fleet/agents/{}/checkin?", random_uuid()), forged(), checkin.clone())
            }
            KeyAbuse::UnknownAck => {
                let agent = random_uuid();
                (format!("/api/fleet/agents/{agent}/acks?"), forged(), ack(&agent))
            }
            KeyAbuse::WrongSecret => (
                format!("/api/fleet/agents/{}/checkin?", helper.id),
                base64(format!("{helper_key_id}:{}", random_hex(21)).as_bytes()),
                checkin.clone(),
            ),
            KeyAbuse::OtherAgent => {
                let agent = random_uuid();
                (format!("/api/fleet/agents/{agent}/acks?"), helper.key.clone(), ack(&agent))
            }
            KeyAbuse::Malformed => {
                let agent = random_uuid();
                (format!("/api/fleet/agents/{agent}/acks?"), "!!not-base64!!".into(), ack(&agent))
            }
        };
        tally.attempt();
        vt.attempt();
        let result = send(&mut conn, "POST", &path, &key, body).await.map(|r| r.status);
        tally.record(result.clone());
        vt.record(result);
    }
}

/// An agent that enrolls, then again and again opens a check-in on a new connection, lets it
/// park, and drops the connection after about `after`.
async fn disconnect(flood: Arc<Flood>, tally: Arc<Tally>, after: Duration, n: usize) {
    // Spread the enrollments so they do not all meet the enrollment limit at once.
    tokio::time::sleep(Duration::from_millis(50 * n as u64)).await;
    let give_up = flood.end;
    let me = match enroll(&flood, &format!("ferry-sim-flood-{n:04}"), give_up).await {
        Ok(me) => me,
        Err(f) => {
            tally.error(&f);
            return;
        }
    };
    tally.outcome("enrolled");
    // What it runs once the first answer delivered a policy (a 9.2+ agent says so in each
    // check-in), so that later check-ins have nothing to receive and park.
    let mut running: Option<(String, u64)> = None;
    while flood.running() {
        let request = checkin_request(&flood, &me, running.as_ref());
        let Some(mut stream) = flood.send_on_new(&tally, &request).await else { continue };
        let hold = after.mul_f64(0.5 + rand::random::<f64>());
        match tokio::time::timeout(hold, read_response(&mut stream)).await {
            // Parked: the point of this kind is to leave now.
            Err(_) => {
                drop(stream);
                tally.outcome("dropped_while_parked");
            }
            Ok(Ok((status, body))) => {
                tally.status(status);
                if status == 200 {
                    running = delivered_policy(&body).or(running);
                } else {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
            Ok(Err(f)) => {
                tally.error(&f);
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// A whole check-in request of `me` (head and body): one that reports running `policy` (id and
/// revision, as a 9.2+ agent says in each check-in) has nothing to receive and parks.
fn checkin_request(flood: &Flood, me: &Enrolled, policy: Option<&(String, u64)>) -> Vec<u8> {
    let mut body = json!({"status": "online", "message": "flood"});
    if let Some((policy, revision)) = policy {
        body["agent_policy_id"] = json!(policy);
        body["policy_revision_idx"] = json!(revision);
    }
    let body = body.to_string();
    let len = body.len().to_string();
    let path = format!("/api/fleet/agents/{}/checkin?", me.id);
    let mut request = flood.head("POST", &path, &me.key, &[("Content-Length", &len)]);
    request.extend_from_slice(body.as_bytes());
    request
}

/// The time between one connection's requests for its share of `rate` per second.
fn share(rate: f64, connections: usize) -> Duration {
    Duration::from_secs_f64(connections as f64 / rate.max(0.1))
}

/// A ticker every `every`: a server slower than the rate lowers the achieved rate; it is never
/// made up in bursts.
fn pace(every: Duration) -> tokio::time::Interval {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    tick
}

/// What a flood of enrollments forges.
enum Forgery {
    /// The valid enrollment token, naming this active agent's id with a wrong replace token
    /// (expected: 403 `AgentNotReplaceable`, or 429 once the server limits the guesses).
    ReplaceToken(String),
    /// An enrollment token nobody issued (expected: 401, or 429).
    BogusToken,
}

/// A keep-alive connection sending forged enrollments at its share of the rate.
async fn enrollments(flood: Arc<Flood>, tally: Arc<Tally>, forgery: Arc<Forgery>, every: Duration) {
    let mut conn = flood.conn();
    let mut tick = pace(every);
    let plain = Bytes::from(enroll_body("ferry-sim-flood-enroll", None, None));
    while flood.running() {
        tick.tick().await;
        let (token, body) = match &*forgery {
            Forgery::ReplaceToken(id) => (
                flood.token.clone(),
                Bytes::from(enroll_body("ferry-sim-flood", Some(id), Some(&random_hex(16)))),
            ),
            Forgery::BogusToken => {
                (base64(format!("{}:{}", random_hex(10), random_hex(21)).as_bytes()), plain.clone())
            }
        };
        tally.attempt();
        let result = send(&mut conn, "POST", "/api/fleet/agents/enroll?", &token, body).await;
        tally.record(result.map(|r| r.status));
    }
}

/// One bare TCP connection after another, opened and held without a byte sent until the
/// server closes it or the flood ends; a second's pause after each close, so that a server
/// refusing at once is not met with a busy loop.
async fn hold_fd(flood: Arc<Flood>, tally: Arc<Tally>, n: usize) {
    // Opened over about a second (5 000 at 0.2 ms), not all in one burst at the backlog.
    tokio::time::sleep(Duration::from_micros(200 * n as u64)).await;
    while flood.running() {
        tally.attempt();
        let mut stream = match conn::open_tcp(&flood.endpoint, flood.source()).await {
            Ok(s) => s,
            Err(f) => {
                tally.error(&f);
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        tally.opened();
        let mut answer = Vec::new();
        let ended = tokio::select! {
            _ = tokio::time::sleep_until(flood.end.into()) => "held_to_end",
            _ = stream.read_to_end(&mut answer) => "closed_by_server",
        };
        tally.closed();
        if let Some(status) = status_of(&answer) {
            tally.status(status);
        }
        tally.outcome(ended);
        if ended == "closed_by_server" {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

/// `count` check-ins of one agent key, each on its own connection and opened 20 ms after the
/// one before, each reporting the policy it runs so that it parks. An answered one is counted
/// by status and opened again a second later; one still parked at the end is `held_to_end`.
async fn parked_per_key(flood: Arc<Flood>, tally: Arc<Tally>, me: Enrolled, count: usize) {
    // The first check-in delivers the policy; the agent then reports running it.
    let mut conn = flood.conn();
    let first = Bytes::from(json!({"status": "online", "message": "flood"}).to_string());
    let path = format!("/api/fleet/agents/{}/checkin?", me.id);
    let policy = match send(&mut conn, "POST", &path, &me.key, first).await {
        Ok(r) if r.status == 200 => delivered_policy(&r.body),
        Ok(r) => {
            tally.error(&Failure::Status(r.status));
            return;
        }
        Err(f) => {
            tally.error(&f);
            return;
        }
    };
    let request = Arc::new(checkin_request(&flood, &me, policy.as_ref()));
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..count {
        let (flood, tally, request) =
            (Arc::clone(&flood), Arc::clone(&tally), Arc::clone(&request));
        tasks.spawn(async move {
            tokio::time::sleep(Duration::from_millis(20 * n as u64)).await;
            while flood.running() {
                let Some(mut stream) = flood.send_on_new(&tally, &request).await else {
                    continue;
                };
                tally.opened();
                let answer =
                    tokio::time::timeout_at(flood.end.into(), read_response(&mut stream)).await;
                tally.closed();
                match answer {
                    Err(_) => tally.outcome("held_to_end"),
                    Ok(answer) => tally.record(answer.map(|(status, _)| status)),
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
    }
    while tasks.join_next().await.is_some() {}
}

/// Each stored field of a bulky check-in: three of them make 18 MiB, under the check-in's
/// 20 MiB inflated cap, so only a cap on what is stored refuses them.
const BULKY_FIELD: usize = 6 << 20;

/// A check-in whose `message`, `local_metadata` and one component's `message` hold 6 MiB
/// each, gzipped (about 18 KiB).
fn bulky_body() -> Bytes {
    let pad = "x".repeat(BULKY_FIELD);
    let body = json!({
        "status": "online",
        "message": pad,
        "local_metadata": {
            "elastic": {"agent": {"version": "9.1.2", "snapshot": false}},
            "host": {"hostname": "ferry-sim-bulky"},
            "padding": pad,
        },
        "components": [{"id": "filestream-default", "type": "filestream", "status": "HEALTHY",
            "message": pad, "units": []}],
    });
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    serde_json::to_writer(&mut gz, &body).expect("in memory");
    gz.finish().expect("in memory").into()
}

/// An agent that enrolls, then sends a bulky check-in once a second on a keep-alive
/// connection. It never reports a policy as running, so each check-in is answered at once (with
/// the policy) rather than parked.
async fn bulky(flood: Arc<Flood>, tally: Arc<Tally>, body: Bytes, n: usize) {
    let me = match enroll(&flood, &format!("ferry-sim-bulky-{n:04}"), flood.end).await {
        Ok(me) => me,
        Err(f) => {
            tally.error(&f);
            return;
        }
    };
    tally.outcome("enrolled");
    let path = format!("/api/fleet/agents/{}/checkin?", me.id);
    let auth = format!("ApiKey {}", me.key);
    let headers = [
        ("user-agent", UA),
        ("authorization", auth.as_str()),
        ("elastic-api-version", "2023-06-01"),
        ("content-type", "application/json"),
        ("content-encoding", "gzip"),
    ];
    let mut conn = flood.conn();
    let mut tick = pace(Duration::from_secs(1));
    while flood.running() {
        tick.tick().await;
        tally.attempt();
        let result = conn.request("POST", &path, &headers, body.clone(), ANSWER_TIMEOUT).await;
        tally.record(result.map(|r| r.status));
    }
}

/// The policy id and revision of a `POLICY_CHANGE` in a check-in response.
fn delivered_policy(body: &[u8]) -> Option<(String, u64)> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let id = v["actions"].as_array()?.iter().find(|a| a["type"] == "POLICY_CHANGE")?["id"]
        .as_str()?
        .to_owned();
    let mut parts = id.strip_prefix("policy:")?.rsplitn(2, ':');
    let revision = parts.next()?.parse().ok()?;
    Some((parts.next()?.to_owned(), revision))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips_key_ids() {
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
        let key = base64(b"0123abcd:s3cr3t");
        assert_eq!(key_id(&key).as_deref(), Some("0123abcd"));
        assert_eq!(key_id("!!"), None);
    }

    #[test]
    fn statuses_and_policies() {
        assert_eq!(status_of(b"HTTP/1.1 431 Request Header Fields Too Large\r\n"), Some(431));
        assert_eq!(status_of(b"garbage"), None);
        let body = br#"{"actions":[{"id":"policy:default-policy:3","type":"POLICY_CHANGE"}]}"#;
        assert_eq!(delivered_policy(body), Some(("default-policy".into(), 3)));
    }

    #[test]
    fn bulky_check_ins_are_small_on_the_wire_and_under_the_inflated_cap() {
        use std::io::Read as _;
        let body = bulky_body();
        assert!(body.len() < 64 << 10, "{} bytes gzipped", body.len());
        let mut inflated = Vec::new();
        flate2::read::GzDecoder::new(&body[..]).read_to_end(&mut inflated).unwrap();
        assert!(inflated.len() > 3 * BULKY_FIELD && inflated.len() < CHECKIN_INFLATED_CAP);
        let v: Value = serde_json::from_slice(&inflated).unwrap();
        assert_eq!(v["components"][0]["message"].as_str().unwrap().len(), BULKY_FIELD);
    }

    #[test]
    fn enrollments_name_an_id_and_a_replace_token_as_elastic_agent_does() {
        let v: Value = serde_json::from_str(&enroll_body("h", Some("id-1"), Some("t"))).unwrap();
        assert_eq!((v["id"].as_str(), v["replace_token"].as_str()), (Some("id-1"), Some("t")));
        assert_eq!(v["type"], "PERMANENT");
        let v: Value = serde_json::from_str(&enroll_body("h", None, None)).unwrap();
        // elastic-agent's field has no `omitempty`: an agent without one sends "".
        assert_eq!(v["replace_token"].as_str().unwrap_or_default(), "");
    }

    #[tokio::test]
    async fn responses_by_length_and_chunked() {
        let mut input: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhiHTTP/1.1";
        assert_eq!(read_response(&mut input).await.unwrap(), (200, b"hi".to_vec()));
        let mut input: &[u8] =
            b"HTTP/1.1 413 Payload Too Large\r\ntransfer-encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n";
        assert_eq!(read_response(&mut input).await.unwrap().0, 413);
        let mut input: &[u8] = b"";
        assert!(read_response(&mut input).await.is_err());
    }
}
