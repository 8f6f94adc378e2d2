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

mod bogus_token;
mod bulky_checkin;
mod disconnect;
mod hold_fds;
mod keys;
mod oversize;
mod parked_per_key;
mod replace_token;
mod response;
mod slow_body;
mod slowloris;
mod tally;

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

use hyper::body::Bytes;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt as _;

use crate::FloodArgs;
use crate::conn::{self, Conn, Endpoint, Failure, Stream};
use tally::{Tally, Variants};

const UA: &str = "Elastic Agent v9.1.2";
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
        serde_json::from_str(&crate::enroll_body("9.1.2", name)).expect("ferry-wire renders JSON");
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
        tls: crate::tls_for(&args.target)?,
        sources: crate::sources_in(2, args.target.sources),
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
                    tasks.spawn(slowloris::task(Arc::clone(&flood), Arc::clone(&tally), interval));
                }
            }
            Kind::SlowBody => {
                let interval = Duration::from_millis(args.slowloris_interval_ms.max(1));
                for _ in 0..args.slow_body {
                    tasks.spawn(slow_body::task(Arc::clone(&flood), Arc::clone(&tally), interval));
                }
            }
            Kind::Oversize => {
                let helper = helper.clone().expect("enrolled above");
                for name in &args.oversize_variants {
                    anyhow::ensure!(
                        oversize::VARIANTS.iter().any(|v| v.name() == name),
                        "--oversize-variants: no variant {name}"
                    );
                }
                variants = oversize::VARIANTS
                    .iter()
                    .filter(|v| {
                        args.oversize_variants.is_empty()
                            || args.oversize_variants.iter().any(|n| n == v.name())
                    })
                    .map(|v| (v.name(), Arc::new(Tally::default())))
                    .collect();
                let shared = Arc::new(variants.clone());
                for n in 0..args.oversize_connections {
                    tasks.spawn(oversize::task(
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
                    keys::VARIANTS.iter().map(|v| (v.name(), Arc::new(Tally::default()))).collect();
                let shared = Arc::new(variants.clone());
                let connections = args.key_connections.max(1);
                let every = share(args.key_rate, connections);
                for n in 0..connections {
                    tasks.spawn(keys::task(
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
                    tasks.spawn(disconnect::task(Arc::clone(&flood), Arc::clone(&tally), after, n));
                }
            }
            Kind::ReplaceToken => {
                let id = &helper.as_ref().expect("enrolled above").id;
                let connections = args.replace_connections.max(1);
                let every = share(args.replace_rate, connections);
                for _ in 0..connections {
                    tasks.spawn(replace_token::task(
                        Arc::clone(&flood),
                        Arc::clone(&tally),
                        id.clone(),
                        every,
                    ));
                }
            }
            Kind::BogusToken => {
                let connections = args.bogus_connections.max(1);
                let every = share(args.bogus_rate, connections);
                for _ in 0..connections {
                    tasks.spawn(bogus_token::task(Arc::clone(&flood), Arc::clone(&tally), every));
                }
            }
            Kind::HoldFds => {
                for n in 0..args.hold_fds {
                    tasks.spawn(hold_fds::task(Arc::clone(&flood), Arc::clone(&tally), n));
                }
            }
            Kind::ParkedPerKey => {
                let helper = helper.clone().expect("enrolled above");
                tasks.spawn(parked_per_key::task(
                    Arc::clone(&flood),
                    Arc::clone(&tally),
                    helper,
                    args.parked_per_key,
                ));
            }
            Kind::BulkyCheckin => {
                let body = bulky_checkin::body();
                for n in 0..args.bulky_agents {
                    tasks.spawn(bulky_checkin::task(
                        Arc::clone(&flood),
                        Arc::clone(&tally),
                        body.clone(),
                        n,
                    ));
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

/// A keep-alive connection sending forged enrollments at its share of the rate; `forge` gives
/// each one's enrollment token and body.
async fn enrollments(
    flood: &Flood,
    tally: &Tally,
    every: Duration,
    forge: impl Fn() -> (String, Bytes),
) {
    let mut conn = flood.conn();
    let mut tick = pace(every);
    while flood.running() {
        tick.tick().await;
        let (token, body) = forge();
        tally.attempt();
        let result = send(&mut conn, "POST", "/api/fleet/agents/enroll?", &token, body).await;
        tally.record(result.map(|r| r.status));
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
    fn statuses_and_policies() {
        assert_eq!(
            response::status_of(b"HTTP/1.1 431 Request Header Fields Too Large\r\n"),
            Some(431)
        );
        assert_eq!(response::status_of(b"garbage"), None);
        let body = br#"{"actions":[{"id":"policy:default-policy:3","type":"POLICY_CHANGE"}]}"#;
        assert_eq!(delivered_policy(body), Some(("default-policy".into(), 3)));
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
}
