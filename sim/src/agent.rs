//! One simulated Elastic Agent: enroll, long-poll check-ins with the kept `ack_token`, acks,
//! upgrades downloaded and verified from the mirror (reporting `upgrade_details` meanwhile),
//! diagnostics uploads, and unenrollment. Every request it sends to the Fleet API is the
//! `ferry-wire` corpus sample of its version, as elastic-agent's Go code marshals it; its
//! downloads trust only the CA the policy gives in `agent.download.ssl`, as the agent's
//! downloader does.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use ferry_wire::{Kind, Vars};
use hyper::body::Bytes;
use serde_json::{Value, json};
use sha2::Digest as _;

use super::conn::{Conn, Endpoint, Failure, Response};
use super::stats::Stats;

/// The agent's HTTP client timeout (a long poll must end before it).
const CLIENT_TIMEOUT: Duration = Duration::from_secs(600);
const SHORT_TIMEOUT: Duration = Duration::from_secs(60);

/// What every simulated agent shares.
pub struct Fleet {
    pub api: Arc<Endpoint>,
    pub tls: Option<Arc<rustls::ClientConfig>>,
    pub token: String,
    pub version: String,
    pub platform: String,
    pub sources: Vec<IpAddr>,
    pub stats: Arc<Stats>,
    /// Error backoff after a failed check-in (real agents: 60 s, doubling to 10 min).
    pub backoff_init: Duration,
    pub backoff_max: Duration,
    /// Backoff between enrollment attempts (real agents: 5 s, doubling to 10 min; see
    /// [`EnrollBackoff`]).
    pub enroll_backoff_init: Duration,
    pub enroll_backoff_max: Duration,
    /// How long an agent takes to apply a new policy before it acks it, at least and at most
    /// (see [`Agent::pause`]).
    pub apply: (Duration, Duration),
    /// A PGP key to verify upgrades with when the appliance cannot serve one (plain HTTP).
    pub pgp_key: Option<ferry_artifacts::Keyring>,
    /// Where each agent's id and key are kept (`--state`), one file per agent.
    pub state: Option<std::path::PathBuf>,
}

impl Fleet {
    fn state_file(&self, n: usize) -> Option<std::path::PathBuf> {
        self.state.as_ref().map(|dir| dir.join(hostname(n)))
    }

    /// Agent `n`'s id and key from an earlier run.
    fn saved(&self, n: usize) -> Option<(String, String)> {
        let text = std::fs::read_to_string(self.state_file(n)?).ok()?;
        let (id, key) = text.trim().split_once(' ')?;
        Some((id.to_owned(), key.to_owned()))
    }

    fn save(&self, n: usize, id: &str, key: &str) {
        if let Some(path) = self.state_file(n) {
            // A lost file only means this agent enrolls again next run.
            let _ = std::fs::write(path, format!("{id} {key}\n"));
        }
    }
}

/// What the policy says about downloads: the CA certificates (PEM) of
/// `agent.download.ssl.certificate_authorities`, the only ones the downloader trusts.
#[derive(Default, Clone)]
struct DownloadTls {
    ca: String,
}

struct Upgrade {
    action_id: String,
    target: String,
    task: tokio::task::JoinHandle<Result<(), Failure>>,
    /// The task's outcome, once a check-in saw it finish.
    outcome: Option<Result<(), Failure>>,
}

struct Agent {
    n: usize,
    fleet: Arc<Fleet>,
    conn: Conn,
    source: Option<IpAddr>,
    id: String,
    key: String,
    version: String,
    ack_token: String,
    revision: u64,
    /// The id of the policy last received, for the check-ins of agents that report it.
    policy_id: String,
    download: DownloadTls,
    upgrade: Option<Upgrade>,
    /// `upgrade_details` (Go's JSON) to send on the next check-in (`UPG_WATCHING` after a
    /// restart).
    details: Option<String>,
    /// Acks the server did not take, sent again before the next check-in (as real agents keep
    /// them in their action queue).
    unsent: Vec<Ack>,
    /// The ack of the policy being applied, and when it is applied.
    applying: Option<(Ack, tokio::time::Instant)>,
    /// Stored actions (all but policies) this agent has received: one seen again is counted as
    /// redelivered and not run twice.
    done: std::collections::HashSet<String>,
}

/// One acknowledgement: the action, its type (agents name it in the message), and its data.
#[derive(Clone)]
struct Ack {
    action_id: String,
    kind: String,
    data: Option<Value>,
}

impl Ack {
    fn new(action_id: &str, kind: &str, data: Option<Value>) -> Ack {
        Ack { action_id: action_id.to_owned(), kind: kind.to_owned(), data }
    }
}

/// Sends a corpus request on `conn`.
async fn send(
    conn: &mut Conn,
    request: &ferry_wire::Request,
    timeout: Duration,
) -> Result<Response, Failure> {
    let headers: Vec<(&str, &str)> =
        request.headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    conn.request(request.method, &request.path, &headers, request.body.clone().into(), timeout)
        .await
}

fn hostname(n: usize) -> String {
    format!("sim-{n:05}")
}

fn expect_ok(r: &Response) -> Result<Value, Failure> {
    if r.status != 200 {
        return Err(Failure::Status(r.status));
    }
    if r.body.is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_slice(&r.body).map_err(|e| Failure::Protocol(e.to_string()))
}

/// Equal jitter: half the delay fixed, half random.
fn jittered(d: Duration) -> Duration {
    d / 2 + d.mul_f64(rand::random::<f64>() / 2.0)
}

/// The waits between a real agent's enrollment attempts, as Elastic Agent computes them
/// (`pkg/backoff/equal_jitter.go`, with `EnrollBackoffInit` 5 s and `EnrollBackoffMax` 10 min
/// from `pkg/fleetapi/backoff.go`; `internal/pkg/agent/application/enroll/enroll.go` retries
/// after 429, connection refused and 5xx alike, never reading Retry-After). With the defaults
/// the waits are 5-10 s, 10-20 s, 20-40 s, 40-80 s...: an agent refused three times at a
/// storm's start enrolls after a minute at best.
pub(crate) struct EnrollBackoff {
    duration: Duration,
    next_rand: Duration,
    max: Duration,
}

impl EnrollBackoff {
    pub(crate) fn new(init: Duration, max: Duration) -> Self {
        Self { duration: init * 2, next_rand: random_below(init), max }
    }

    /// The next wait, and the state for the one after.
    pub(crate) fn next_wait(&mut self) -> Duration {
        let wait = self.duration / 2 + self.next_rand;
        self.next_rand = random_below(self.duration);
        self.duration = (self.duration * 2).min(self.max);
        wait
    }
}

/// Uniform in `[0, d)`, as Go's `rand.N`.
fn random_below(d: Duration) -> Duration {
    d.mul_f64(rand::random::<f64>())
}

/// Runs agent number `n` until it is unenrolled or its key stops working.
pub async fn run(fleet: Arc<Fleet>, n: usize) {
    let source = (!fleet.sources.is_empty()).then(|| fleet.sources[n % fleet.sources.len()]);
    let mut conn = Conn::new(Arc::clone(&fleet.api), fleet.tls.clone(), source);
    let mut backoff = EnrollBackoff::new(fleet.enroll_backoff_init, fleet.enroll_backoff_max);
    // Counted as enrolled either way: the appliance knows it.
    let (id, key) = match fleet.saved(n) {
        Some(saved) => saved,
        None => loop {
            match enroll(&fleet, &mut conn, n).await {
                Ok((id, key)) => {
                    fleet.save(n, &id, &key);
                    break (id, key);
                }
                Err(f) => {
                    fleet.stats.error(&f);
                    tokio::time::sleep(backoff.next_wait()).await;
                }
            }
        },
    };
    fleet.stats.enrolled.fetch_add(1, Relaxed);
    fleet.stats.version(None, &fleet.version);
    let version = fleet.version.clone();
    let mut agent = Agent {
        n,
        fleet,
        conn,
        source,
        id,
        key,
        version,
        ack_token: String::new(),
        revision: 0,
        policy_id: String::new(),
        download: DownloadTls::default(),
        upgrade: None,
        details: None,
        unsent: Vec::new(),
        applying: None,
        done: std::collections::HashSet::new(),
    };
    agent.run().await;
}

async fn enroll(fleet: &Fleet, conn: &mut Conn, n: usize) -> Result<(String, String), Failure> {
    let host = hostname(n);
    let request = ferry_wire::for_agent(Kind::Enroll, &fleet.version).render(
        &Vars::new()
            .set("version", &fleet.version)
            .set("enrollment_token", &fleet.token)
            .set("hostname", host),
    );
    let v = expect_ok(&send(conn, &request, SHORT_TIMEOUT).await?)?;
    let field = |k: &str| {
        v["item"][k]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| Failure::Protocol(format!("no item.{k}")))
    };
    Ok((field("id")?, field("access_api_key")?))
}

/// The headers every agent request carries (fleet-protocol.md §2.2).
fn agent_headers<'a>(ua: &'a str, auth: &'a str) -> Vec<(&'static str, &'a str)> {
    vec![
        ("user-agent", ua),
        ("authorization", auth),
        ("elastic-api-version", "2023-06-01"),
        ("content-type", "application/json"),
        ("accept", "application/json"),
        ("kbn-xsrf", "1"),
    ]
}

impl Agent {
    async fn run(&mut self) {
        let mut backoff = self.fleet.backoff_init;
        loop {
            let step = match self.checkin().await {
                Ok(Step::Continue) => self.pause().await.map(|()| Step::Continue),
                other => other,
            };
            match step {
                Ok(Step::Continue) => backoff = self.fleet.backoff_init,
                Ok(Step::Stop) => {
                    self.fleet.stats.stopped.fetch_add(1, Relaxed);
                    return;
                }
                Err(f) => {
                    self.fleet.stats.error(&f);
                    if f == Failure::Status(401) {
                        // The key is dead: real agents slow to hourly check-ins; the
                        // simulator stops this agent.
                        self.fleet.stats.stopped.fetch_add(1, Relaxed);
                        return;
                    }
                    tokio::time::sleep(jittered(backoff)).await;
                    backoff = (backoff * 2).min(self.fleet.backoff_max);
                }
            }
        }
    }

    /// The wait after a successful check-in, during which a new policy is applied and acked.
    ///
    /// Elastic Agent's gateway waits 1 s plus up to 500 ms after each check-in returns
    /// (`fleet_gateway.go`: `PeriodicJitter` of `Duration` 1 s, `Jitter` 500 ms). A policy's
    /// ack does not follow the check-in but the coordinator applying it, on its own goroutine
    /// (`coordinator.go`: `processConfigChange`, then `policyChange.Ack`), so the acks of a
    /// fleet spread over how long each host takes. Elastic's code fixes no such time: the
    /// simulator draws it from `--apply-ms`. One that would come after the next check-in is
    /// sent before it (a real agent would send it on a second connection).
    async fn pause(&mut self) -> Result<(), Failure> {
        let next =
            tokio::time::Instant::now() + Duration::from_millis(1000 + rand::random::<u64>() % 500);
        if let Some((_, applied)) = &self.applying {
            tokio::time::sleep_until((*applied).min(next)).await;
            self.ack_applied().await?;
        }
        tokio::time::sleep_until(next).await;
        Ok(())
    }

    /// Acks the policy being applied, if any, now.
    async fn ack_applied(&mut self) -> Result<(), Failure> {
        match self.applying.take() {
            Some((ack, _)) => self.ack(ack).await,
            None => Ok(()),
        }
    }

    fn ua(&self) -> String {
        format!("Elastic Agent v{}", self.version)
    }

    fn auth(&self) -> String {
        format!("ApiKey {}", self.key)
    }

    /// What this agent's corpus samples need to know about it.
    fn vars(&self) -> Vars {
        let host = hostname(self.n);
        Vars::new()
            .set("version", &self.version)
            .set("agent_id", &self.id)
            .set("access_key", &self.key)
            .set("hostname", host)
            .set("ack_token", &self.ack_token)
    }

    /// Sends a corpus request to the Fleet API; anything but 200 is a failure.
    async fn post(&mut self, request: &ferry_wire::Request) -> Result<Value, Failure> {
        expect_ok(&send(&mut self.conn, request, SHORT_TIMEOUT).await?)
    }

    /// `upgrade_details` as this agent's version writes them, if it reports any (8.12+).
    fn upgrade_details(&mut self) -> Option<String> {
        if let Some(u) = &self.upgrade {
            let progress = ferry_wire::download_progress(&self.version, 0.5, 1.0e6);
            return Some(ferry_wire::upgrade_details(
                &u.target,
                "UPG_DOWNLOADING",
                &u.action_id,
                &progress,
            ));
        }
        self.details.take()
    }

    async fn checkin(&mut self) -> Result<Step, Failure> {
        // A policy's ack a failure kept from its pause goes before the next check-in.
        self.ack_applied().await?;
        self.resend_acks().await?;
        let mut vars = self.vars();
        if let Some(details) = self.upgrade_details() {
            vars.put("upgrade_details", details);
        }
        if self.revision > 0 {
            vars.put("policy_id", self.policy_id.clone());
            vars.put("policy_revision", self.revision.to_string());
        }
        let request = ferry_wire::for_agent(Kind::Checkin, &self.version).render(&vars);
        let stats = Arc::clone(&self.fleet.stats);
        stats.in_checkin.fetch_add(1, Relaxed);
        let request = send(&mut self.conn, &request, CLIENT_TIMEOUT);
        let outcome = match self.upgrade.as_mut() {
            // A finished upgrade re-executes the agent: its parked check-in is dropped.
            Some(u) => tokio::select! {
                r = request => Some(r),
                done = &mut u.task => {
                    u.outcome = Some(done.unwrap_or(Err(Failure::Protocol("upgrade task panicked".into()))));
                    None
                }
            },
            None => Some(request.await),
        };
        stats.in_checkin.fetch_sub(1, Relaxed);
        stats.checkins.fetch_add(1, Relaxed);
        let Some(response) = outcome else {
            self.conn.reset();
            self.finish_upgrade().await?;
            return Ok(Step::Continue);
        };
        let v = expect_ok(&response?)?;
        if let Some(token) = v["ack_token"].as_str().filter(|t| !t.is_empty()) {
            self.ack_token = token.to_owned();
        }
        for action in v["actions"].as_array().cloned().unwrap_or_default() {
            if self.handle(&action).await? == Step::Stop {
                return Ok(Step::Stop);
            }
        }
        if self.upgrade.as_ref().is_some_and(|u| u.task.is_finished()) {
            self.finish_upgrade().await?;
        }
        Ok(Step::Continue)
    }

    /// Acknowledges an action. A refused ack is counted and kept for a retry before the next
    /// check-in, as real agents queue it and carry on (a dead key still stops the agent).
    async fn ack(&mut self, ack: Ack) -> Result<(), Failure> {
        match self.send_ack(&ack).await {
            Err(f) if f != Failure::Status(401) => {
                self.fleet.stats.error(&f);
                self.unsent.push(ack);
                Ok(())
            }
            other => other,
        }
    }

    /// Sends the acks a failure kept back, oldest first; stops at the first that fails again.
    async fn resend_acks(&mut self) -> Result<(), Failure> {
        while let Some(ack) = self.unsent.first().cloned() {
            self.send_ack(&ack).await?;
            self.unsent.remove(0);
        }
        Ok(())
    }

    async fn send_ack(&mut self, ack: &Ack) -> Result<(), Failure> {
        let mut vars = self.vars().set("action_id", &ack.action_id).set("action_type", &ack.kind);
        if let Some(data) = &ack.data {
            vars.put("data", data.to_string());
        }
        let request = ferry_wire::for_agent(Kind::Ack, &self.version).render(&vars);
        let v = self.post(&request).await?;
        if v["action"] != "acks" {
            return Err(Failure::Protocol(format!("ack answer {v}")));
        }
        self.fleet.stats.acks.fetch_add(1, Relaxed);
        Ok(())
    }

    async fn handle(&mut self, action: &Value) -> Result<Step, Failure> {
        let id = action["id"].as_str().unwrap_or_default().to_owned();
        let kind = action["type"].as_str().unwrap_or_default();
        // A policy comes again whenever the server is unsure which revision runs; any other
        // action must come once.
        if kind != "POLICY_CHANGE" && !self.done.insert(id.clone()) {
            self.fleet.stats.redelivered.fetch_add(1, Relaxed);
            return Ok(Step::Continue);
        }
        match kind {
            "POLICY_CHANGE" => {
                let policy = &action["data"]["policy"];
                let revision = policy["revision"].as_u64().unwrap_or(0);
                self.fleet.stats.revision(self.revision, revision);
                self.revision = revision;
                policy["id"].as_str().unwrap_or_default().clone_into(&mut self.policy_id);
                // The downloader's TLS comes from the policy alone (elastic-agent
                // internal/pkg/agent/application/upgrade/artifact/config.go).
                let cas = policy["agent"]["download"]["ssl"]["certificate_authorities"]
                    .as_array()
                    .map(|cas| cas.iter().filter_map(Value::as_str).collect::<Vec<_>>().join("\n"));
                self.download = DownloadTls { ca: cas.unwrap_or_default() };
                // A policy still being applied is acked first: the coordinator takes them in
                // turn.
                self.ack_applied().await?;
                let (least, most) = self.fleet.apply;
                let took = least + (most.saturating_sub(least)).mul_f64(rand::random::<f64>());
                let applied = tokio::time::Instant::now() + took;
                self.applying = Some((Ack::new(&id, kind, None), applied));
            }
            "UPGRADE" => {
                let target = action["data"]["version"].as_str().unwrap_or_default().to_owned();
                let source = action["data"]["source_uri"].as_str().unwrap_or_default().to_owned();
                let fleet = Arc::clone(&self.fleet);
                let (t, src, tls) = (target.clone(), self.source, self.download.clone());
                let task = tokio::spawn(async move {
                    download_and_verify(&fleet, &source, &t, src, &tls).await
                });
                self.upgrade = Some(Upgrade { action_id: id, target, task, outcome: None });
            }
            "UNENROLL" => {
                self.ack(Ack::new(&id, kind, None)).await?;
                self.fleet.stats.unenrolled.fetch_add(1, Relaxed);
                return Ok(Step::Stop);
            }
            "REQUEST_DIAGNOSTICS" => {
                let upload_id = self.upload_diagnostics(&id).await?;
                self.ack(Ack::new(&id, kind, Some(json!({"upload_id": upload_id})))).await?;
            }
            // The agent core never acks CANCEL.
            "CANCEL" => {}
            _ => self.ack(Ack::new(&id, kind, None)).await?,
        }
        Ok(Step::Continue)
    }

    /// The download finished: on success the "new" agent acks and watches; on failure it
    /// reports UPG_FAILED (and, like real agents, acks without an error).
    async fn finish_upgrade(&mut self) -> Result<(), Failure> {
        let Some(u) = self.upgrade.take() else { return Ok(()) };
        let outcome = match u.outcome {
            Some(outcome) => outcome,
            None => u.task.await.unwrap_or(Err(Failure::Protocol("upgrade task panicked".into()))),
        };
        match outcome {
            Ok(()) => {
                self.fleet.stats.version(Some(&self.version), &u.target);
                self.version.clone_from(&u.target);
                self.fleet.stats.upgraded.fetch_add(1, Relaxed);
                self.details = Some(ferry_wire::upgrade_details(&u.target, "UPG_WATCHING", "", ""));
            }
            Err(f) => {
                self.fleet.stats.error(&f);
                let failed = format!(
                    r#""failed_state":"UPG_DOWNLOADING","error_msg":"{}""#,
                    ferry_wire::go_escape(&f.kind())
                );
                self.details =
                    Some(ferry_wire::upgrade_details(&u.target, "UPG_FAILED", "", &failed));
            }
        }
        self.ack(Ack::new(&u.action_id, "UPGRADE", None)).await
    }

    async fn upload_diagnostics(&mut self, action_id: &str) -> Result<String, Failure> {
        let file: Vec<u8> = (0..64 << 10).map(|i: u32| (i % 251) as u8).collect();
        let vars = self.vars().set("action_id", action_id).set("size", file.len().to_string());
        let begin = ferry_wire::for_agent(Kind::UploadBegin, &self.version).render(&vars);
        let v = self.post(&begin).await?;
        let upload_id = v["upload_id"]
            .as_str()
            .ok_or_else(|| Failure::Protocol("no upload_id".into()))?
            .to_owned();
        let chunk_size = v["chunk_size"].as_u64().unwrap_or(4 << 20) as usize;
        let mut transit = sha2::Sha256::new();
        for (n, chunk) in file.chunks(chunk_size).enumerate() {
            let digest = sha2::Sha256::digest(chunk);
            transit.update(digest);
            let (ua, auth, sha) = (self.ua(), self.auth(), hex::encode(digest));
            // Chunks carry the client's usual headers, JSON content type included
            // (internal/pkg/fleetapi/uploader/uploader.go).
            let mut headers = agent_headers(&ua, &auth);
            headers.push(("x-chunk-sha2", &sha));
            let path = format!("/api/fleet/uploads/{upload_id}/{n}?");
            let r = self
                .conn
                .request("PUT", &path, &headers, Bytes::copy_from_slice(chunk), SHORT_TIMEOUT)
                .await?;
            expect_ok(&r)?;
        }
        let vars = self
            .vars()
            .set("upload_id", &upload_id)
            .set("transit_sha256", hex::encode(transit.finalize()));
        let finish = ferry_wire::for_agent(Kind::UploadFinish, &self.version).render(&vars);
        self.post(&finish).await?;
        self.fleet.stats.uploads.fetch_add(1, Relaxed);
        Ok(upload_id)
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Step {
    Continue,
    Stop,
}

/// Downloads the archive, `.sha512` and `.asc` of `version` from `source_uri` as the agent
/// does, checks the digest and the PGP signature (with the key from the appliance's PGP
/// endpoint over TLS, else the configured one). Every download, the key's included, trusts
/// only the policy's `agent.download.ssl` CA: an agent never uses its enrollment CA for them.
async fn download_and_verify(
    fleet: &Fleet,
    source_uri: &str,
    version: &str,
    source: Option<IpAddr>,
    download: &DownloadTls,
) -> Result<(), Failure> {
    let tls = crate::conn::client_tls_pem(download.ca.as_bytes())
        .map_err(|e| Failure::Protocol(format!("agent.download.ssl: {e}")))?;
    let endpoint = Endpoint::parse(source_uri).map_err(|e| Failure::Protocol(e.to_string()))?;
    let mut conn = Conn::new(Arc::new(endpoint), Some(Arc::clone(&tls)), source);
    let name = format!("elastic-agent-{version}-{}.tar.gz", fleet.platform);
    let ua = format!("Beat elastic-agent v{}", fleet.version);
    let headers = [("user-agent", ua.as_str()), ("accept-encoding", "gzip")];
    let timeout = Duration::from_secs(600);
    let mut get = async |path: String| -> Result<Bytes, Failure> {
        let r = conn.request("GET", &path, &headers, Bytes::new(), timeout).await?;
        if r.status != 200 {
            return Err(Failure::Status(r.status));
        }
        Ok(r.body)
    };
    let archive = get(format!("/beats/elastic-agent/{name}")).await?;
    let sidecar = get(format!("/beats/elastic-agent/{name}.sha512")).await?;
    let asc = get(format!("/beats/elastic-agent/{name}.asc")).await?;
    let digest = ferry_artifacts::Sha512Digest::of_reader(&archive[..])
        .map_err(|e| Failure::Protocol(e.to_string()))?;
    let sidecar = String::from_utf8_lossy(&sidecar);
    ferry_artifacts::check_sidecar(&sidecar, "sha512", &name, &digest)
        .map_err(|e| Failure::Protocol(e.to_string()))?;
    let served_key;
    let keyring = if fleet.api.tls {
        // The key of the target's X.Y.Z from the Fleet URL, fetched by the download client
        // (elastic-agent upgrade/step_download.go, fleetUpgradeFallbackPGPFormat).
        let core = version.split(['-', '+']).next().unwrap_or(version);
        let mut api = Conn::new(Arc::clone(&fleet.api), Some(tls), source);
        let r = api
            .request(
                "GET",
                &format!("/api/agents/upgrades/{core}/pgp-public-key"),
                &headers,
                Bytes::new(),
                timeout,
            )
            .await?;
        if r.status != 200 {
            return Err(Failure::Status(r.status));
        }
        served_key =
            ferry_artifacts::Keyring::from_armored(&String::from_utf8_lossy(&r.body), "served key")
                .map_err(|e| Failure::Protocol(e.to_string()))?;
        &served_key
    } else {
        fleet
            .pgp_key
            .as_ref()
            .ok_or_else(|| Failure::Protocol("no PGP key to verify with (--pgp-key)".into()))?
    };
    keyring
        .verify(&String::from_utf8_lossy(&asc), "asc", &name, &archive[..])
        .map_err(|e| Failure::Protocol(e.to_string()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enrollment_waits_follow_elastic_agents_equal_jitter() {
        let s = Duration::from_secs;
        for _ in 0..200 {
            let mut b = EnrollBackoff::new(s(5), s(600));
            // 5-10, 10-20, 20-40, 40-80, ... then at most 300 + 600 once capped.
            for (low, high) in [(5, 10), (10, 20), (20, 40), (40, 80), (80, 160), (160, 320)] {
                let wait = b.next_wait();
                assert!(wait >= s(low) && wait < s(high), "{wait:?} outside {low}-{high} s");
            }
            for _ in 0..5 {
                let wait = b.next_wait();
                assert!(wait >= s(300) && wait < s(900), "{wait:?}");
            }
        }
    }
}
