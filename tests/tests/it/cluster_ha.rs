//! High availability with the real binaries: two `ferry-appliance` instances sharing a real
//! PostgreSQL behind a real HAProxy (TLS passed through), and two thousand agents of the real
//! `ferry-sim` reaching them only through HAProxy's address.
//!
//! - An action queued on instance a reaches the agents parked on b (woken through LISTEN/NOTIFY,
//!   not by the end of their two-minute long poll); the time from queueing to every agent's
//!   acknowledgement is printed.
//! - b killed (SIGKILL) under load: its agents come back through HAProxy to a, no action they
//!   acknowledged is delivered again past their `ack_token`, and an action queued while they
//!   are away reaches every one.
//! - PostgreSQL restarted under load: the instances reconnect, agents see at most a delay, and an
//!   action queued after the restart reaches everyone.
//!
//! These live here rather than in the appliance's tests because they run `ferry-sim`, another
//! package's binary. Timings are printed, never asserted (docs/ARCHITECTURE.md: no timing
//! assertions in tests), but for [`WOKEN_WITHIN`], far above what a wake-up takes and far below
//! the long poll, so that a long poll's end cannot pass for a wake-up.
//!
//! Without PostgreSQL or HAProxy installed, each test says so on one line and passes; with
//! `FERRY_REQUIRE_POSTGRES=1` and `FERRY_REQUIRE_HAPROXY=1` (CI) it fails instead.
//!
//! The agents wait [`BACKOFF`] seconds (then up to twice that) after a failed check-in, instead
//! of a real agent's 60 s doubling to 10 min, so a failover takes seconds rather than a minute;
//! `FERRY_HA_BACKOFF=60` runs them with the real back-off, to measure what a site sees.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ferry_testkit::haproxy::{Haproxy, Mode};
use serde_json::Value;

use crate::support::{Lines, PATIENCE, Site, binary, count, json_stdout, run_ok, sim};

const AGENTS: u64 = 2000;

/// How often the simulator reports: the resolution of every time measured here.
const REPORT_MS: u64 = 50;

/// Seconds an agent waits after its first failed check-in (then twice that at most), unless
/// `FERRY_HA_BACKOFF` says otherwise. Real agents wait 60 s: the failover test would then take
/// a minute and more, waiting only for the agents' own timers. Each wait is jittered to between
/// half of it and all of it, so an agent of the killed instance whose check-in failed is away
/// for at least 5 s, time enough to queue an action before any comes back even on a loaded
/// machine (where a command can take a couple of seconds).
const BACKOFF: f64 = 10.0;

/// An action that reached parked agents within this was a wake-up: without one, a check-in is
/// held 120 s (`SERVER`).
const WOKEN_WITHIN: u64 = 30_000;

/// Every instance's `[server]`: check-ins held two minutes (so only a wake-up answers one within
/// the test's bounds), every agent's connection from HAProxy's one address accepted, and
/// enrollment raised so the fleet enrolls at the simulator's pace.
const SERVER: &str = "checkin_long_poll_seconds = 120\ncheckin_jitter_seconds = 0\n\
                      max_connections_per_address = 10000";
const LIMITS: &str = "[limits.enroll]\nper_second = 2000\nburst = 2000\nconcurrent = 2000\n";

fn epoch_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

fn backoff() -> f64 {
    std::env::var("FERRY_HA_BACKOFF").ok().and_then(|b| b.parse().ok()).unwrap_or(BACKOFF)
}

/// One instance: `NAME.toml` and `data-NAME/` in the site's folder, listening on `port`.
struct Node {
    name: &'static str,
    config: PathBuf,
    data: PathBuf,
}

impl Node {
    fn new(site: &Site, name: &'static str, port: u16, db_url: &str, public_url: &str) -> Self {
        let config = site.path().join(format!("{name}.toml"));
        std::fs::write(
            &config,
            format!(
                "data_dir = \"data-{name}\"\ntrusted_keys = [\"ferry.pub\"]\n\
                 public_url = \"{public_url}\"\n\
                 [store]\nbackend = \"postgres\"\nurl = \"{db_url}\"\n\
                 [cluster]\ninstance = \"{name}\"\nshared_dir = \"shared\"\n\
                 [server]\nlisten = \"127.0.0.1:{port}\"\n{SERVER}\n{LIMITS}"
            ),
        )
        .unwrap();
        Self { name, config, data: site.path().join(format!("data-{name}")) }
    }

    fn command(&self) -> Command {
        let mut cmd = binary("ferry-appliance");
        cmd.current_dir(self.config.parent().unwrap()).arg("--config").arg(&self.config);
        cmd
    }

    fn admin(&self, args: &[&str]) -> String {
        String::from_utf8(run_ok(self.command().args(args)).stdout).unwrap()
    }

    fn json(&self, args: &[&str]) -> Value {
        json_stdout(&self.command().args(args).output().unwrap())
    }

    /// Starts `serve` and waits until it answers.
    fn serve(&self) -> Lines {
        let mut serve = self.command();
        serve.arg("serve");
        let server = Lines::spawn(serve, PATIENCE);
        server.wait("the admin API", |l| l.starts_with("admin API on"));
        server
    }

    /// Queues a SETTINGS action for every agent of the policy through this instance; returns
    /// its id and when (milliseconds since the epoch) it was asked for.
    fn settings(&self, level: &str) -> (String, u64) {
        let asked = epoch_ms();
        let v =
            self.json(&["settings", "--log-level", level, "--policy", "default-policy", "--json"]);
        (v["action_id"].as_str().unwrap().to_owned(), asked)
    }

    /// How many agents have acknowledged `action`, and how many it targets.
    fn acked(&self, action: &str) -> (usize, usize) {
        let v = self.json(&["actions", "show", action, "--json"]);
        let agents = v["agents"].as_array().unwrap();
        (agents.iter().filter(|a| a["acknowledged"] == true).count(), agents.len())
    }

    /// `cluster --json`, which exits 1 while an instance is lost (killed, not stopped).
    fn cluster(&self) -> Value {
        let o = self.command().args(["cluster", "--json"]).output().unwrap();
        assert!(matches!(o.status.code(), Some(0 | 1)), "{o:?}");
        serde_json::from_slice(&o.stdout).unwrap()
    }

    /// Each live instance's parked check-ins, as its last heartbeat said.
    fn parked(&self) -> Vec<(String, u64)> {
        let v = self.cluster();
        v["instances"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|i| i["live"] == true)
            .map(|i| (i["name"].as_str().unwrap().to_owned(), i["parked"].as_u64().unwrap()))
            .collect()
    }
}

/// Two instances behind HAProxy, serving release 1 of a site whose policy is `default-policy`,
/// with an enrollment token for it; two thousand simulated agents enrolled through HAProxy,
/// parked on both instances.
struct Ha {
    /// Its folder holds the instances' configurations, data and shared folder.
    _site: Site,
    a: Node,
    b: Node,
    servers: [Option<Lines>; 2],
    proxy: Haproxy,
    agents: Lines,
    /// Held until everything above is gone: see [`ONE_AT_A_TIME`].
    _turn: std::sync::MutexGuard<'static, ()>,
}

/// One such cluster at a time in this test process: two fleets of two thousand agents
/// enrolling at once on two cores spend their time in retries (HAProxy gives up connecting to
/// a saturated instance after 2 s), and each one's figures would measure the other too.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

impl Ha {
    /// `None` (after saying so) when HAProxy is not installed.
    fn start(db_url: &str) -> Option<Self> {
        ferry_testkit::haproxy::installed()?;
        // A test that failed holding it poisoned it; the next one may go on.
        let turn = ONE_AT_A_TIME.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let site = Site::new();
        // HAProxy first, so that the instances' public URL is its address: the one agents get.
        let ports = [0, 1].map(|_| {
            std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
        });
        let backends = ports.map(|p| SocketAddr::from(([127, 0, 0, 1], p)));
        let proxy = Haproxy::start(Mode::TlsPassthrough, &backends)?;
        let a = Node::new(&site, "a", ports[0], db_url, &proxy.url());
        let b = Node::new(&site, "b", ports[1], db_url, &proxy.url());

        // Imported on a before either serves; b catches up from the shared folder at its start.
        a.admin(&["import", site.bundle(1, &["9.1.2"], None).to_str().unwrap()]);
        let server_a = a.serve();
        // One certificate for the public name on every instance: b is given a's quick-start one.
        let tls = a.data.join("tls");
        std::fs::create_dir_all(b.data.join("tls")).unwrap();
        for entry in std::fs::read_dir(&tls).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), b.data.join("tls").join(entry.file_name())).unwrap();
        }
        let server_b = b.serve();
        proxy.wait_for(0, "UP");
        proxy.wait_for(1, "UP");
        let token = a.admin(&["tokens", "create", "--policy", "default-policy"]).trim().to_owned();

        let backoff = backoff();
        let mut run = sim();
        run.args(["run", "--url", &proxy.url(), "--ca"])
            .arg(tls.join("ca.pem"))
            .args(["--token", &token, "--agents", &AGENTS.to_string(), "--ramp", "500"])
            .args(["--report-ms", &REPORT_MS.to_string()])
            .args([
                "--backoff",
                &backoff.to_string(),
                "--backoff-max",
                &(2.0 * backoff).to_string(),
            ]);
        let agents = Lines::spawn(run, PATIENCE);
        let started = Instant::now();
        agents.report("every agent parked on revision 1", |v| {
            count(v, "revisions", "1") == AGENTS && v["in_checkin"] == AGENTS
        });
        eprintln!("{AGENTS} agents enrolled and parked through HAProxy in {:?}", started.elapsed());
        let ha = Self {
            _site: site,
            a,
            b,
            servers: [Some(server_a), Some(server_b)],
            proxy,
            agents,
            _turn: turn,
        };
        let parked = ha.parked_on_both();
        eprintln!("parked per instance (heartbeats): {parked:?}");
        Some(ha)
    }

    /// Waits until the heartbeats show every agent parked, some on each instance; returns the
    /// counts.
    fn parked_on_both(&self) -> Vec<(String, u64)> {
        crate::support::eventually("agents parked on both instances", || {
            let parked = self.a.parked();
            let total: u64 = parked.iter().map(|(_, n)| n).sum();
            (parked.len() == 2 && total == AGENTS && parked.iter().all(|(_, n)| *n > 0))
                .then_some(parked)
        })
    }

    /// The simulator's report lines so far.
    fn reports(&self) -> Vec<Value> {
        self.agents.printed().0.lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
    }

    /// The first report line from `since` (epoch ms) on that satisfies `pred`, once there is one.
    fn first_report(&self, what: &str, since: u64, pred: impl Fn(&Value) -> bool) -> Value {
        ferry_testkit::eventually(what, PATIENCE, || {
            assert!(self.agents.alive(), "ferry-sim exited: {:?}", self.agents.printed().1);
            self.reports().into_iter().find(|v| v["epoch_ms"].as_u64().unwrap() >= since && pred(v))
        })
    }

    /// Checks that the simulator counted exactly one acknowledgement per agent of its policy and
    /// of each of `actions` actions for every agent (and `extra` more): a policy delivered again
    /// (an instance that did not know the agent had taken it) is acknowledged again, and an
    /// action delivered again is counted as `redelivered`.
    #[track_caller]
    fn each_taken_once(&self, report: &Value, actions: u64, extra: u64) {
        assert_eq!(report["redelivered"], 0, "actions delivered past an ack_token: {report}");
        assert_eq!(
            report["acks"].as_u64().unwrap(),
            AGENTS * (1 + actions) + extra,
            "a policy delivered again, or an acknowledgement counted twice: {report}"
        );
    }

    /// Waits until `node` shows every agent's acknowledgement of `action`.
    fn everyone_acked(&self, node: &Node, action: &str) {
        crate::support::eventually(&format!("every agent acknowledges {action}"), || {
            let (done, of) = node.acked(action);
            (done == AGENTS as usize && of == AGENTS as usize).then_some(())
        });
    }
}

impl Drop for Ha {
    fn drop(&mut self) {
        // The agents first, so no instance's stop waits on them; then the instances.
        self.agents.kill();
        for server in self.servers.iter_mut().flatten() {
            server.kill();
        }
    }
}

/// When an action reached the agents, from the simulator's reports: milliseconds from its
/// queueing to the first check-in answered, to every targeted agent's check-in answered, and to
/// every one's acknowledgement counted.
#[derive(Debug)]
struct Reached {
    first_answer_ms: u64,
    all_answered_ms: u64,
    all_acked_ms: u64,
}

impl std::fmt::Display for Reached {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "first check-in answered after {} ms, all answered after {} ms, all acknowledged \
             after {} ms",
            self.first_answer_ms, self.all_answered_ms, self.all_acked_ms
        )
    }
}

impl Ha {
    /// Waits until every agent is parked and nothing moves: the acks counted stay the same for
    /// half a second. Returns the last report.
    fn settled(&self) -> Value {
        let end = Instant::now() + PATIENCE;
        let mut last = self.agents.report("every agent parked", |v| v["in_checkin"] == AGENTS);
        loop {
            std::thread::sleep(Duration::from_millis(500));
            let now = self.agents.report("every agent parked", |v| v["in_checkin"] == AGENTS);
            if now["acks"] == last["acks"] && now["checkins"] == last["checkins"] {
                return now;
            }
            assert!(Instant::now() < end, "the fleet never settled: {now}");
            last = now;
        }
    }

    /// Queues a SETTINGS action through `node` for `target` (`--policy default-policy`, or an
    /// agent's id: `n` agents in all) on a settled fleet, and waits until the simulator has
    /// counted each targeted agent's check-in answered and acknowledgement.
    fn fan_out(&self, node: &Node, level: &str, target: &[&str], n: u64) -> (String, Reached) {
        let before = self.settled();
        let (checkins, acks) =
            (before["checkins"].as_u64().unwrap(), before["acks"].as_u64().unwrap());
        let asked = epoch_ms();
        let mut args = vec!["settings", "--log-level", level, "--json"];
        args.extend_from_slice(target);
        let action = node.json(&args)["action_id"].as_str().unwrap().to_owned();
        let at = |what: &str, pred: &dyn Fn(&Value) -> bool| {
            let line = self.first_report(&format!("{what} ({action})"), asked, pred);
            line["epoch_ms"].as_u64().unwrap().saturating_sub(asked)
        };
        let count = |v: &Value, k: &str| v[k].as_u64().unwrap();
        let reached = Reached {
            first_answer_ms: at("a check-in answered", &|v| count(v, "checkins") > checkins),
            all_answered_ms: at("every check-in answered", &|v| {
                count(v, "checkins") >= checkins + n
            }),
            all_acked_ms: at("every acknowledgement", &|v| count(v, "acks") >= acks + n),
        };
        (action, reached)
    }
}

#[test]
fn an_action_queued_on_one_instance_reaches_agents_parked_on_the_other() {
    let Some(db) = ferry_testkit::postgres::fresh_database() else { return };
    let Some(ha) = Ha::start(&db.url()) else { return };
    let errors = ha.settled()["errors"].clone();

    // One agent parked on b at a time, its action queued on a: the wake-up alone, through
    // PostgreSQL's NOTIFY, without the fan-out's load.
    let listed = ha.a.json(&["agents", "list", "--json"]);
    let on_b: Vec<String> = listed
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["instance"] == "b")
        .map(|l| l["id"].as_str().unwrap().to_owned())
        .take(5)
        .collect();
    assert_eq!(on_b.len(), 5, "agents parked on b: {listed}");
    for id in &on_b {
        let (action, reached) = ha.fan_out(&ha.a, "debug", &[id], 1);
        eprintln!("one agent parked on b, its action queued on a: {reached}");
        assert!(reached.all_answered_ms < WOKEN_WITHIN, "not woken: {reached}");
        let shown = ha.b.json(&["actions", "show", &action, "--json"]);
        assert_eq!(shown["agents"][0]["acknowledged"], true, "{shown}");
    }

    // Every agent, about half of them parked on b, queued on a; then the other way round.
    for (from, to, level) in [(&ha.a, &ha.b, "info"), (&ha.b, &ha.a, "warning")] {
        let (action, reached) = ha.fan_out(from, level, &["--policy", "default-policy"], AGENTS);
        eprintln!("{AGENTS} agents on both instances, queued on {}: {reached}", from.name);
        assert!(reached.all_answered_ms < WOKEN_WITHIN, "not woken: {reached}");
        ha.everyone_acked(to, &action);
    }

    let report = ha.settled();
    ha.each_taken_once(&report, 2, on_b.len() as u64);
    assert_eq!(report["stopped"], 0, "{report}");
    assert_eq!(report["errors"], errors, "requests failed during the fan-outs: {report}");
    // Each agent's record names the instance its check-ins reach: both are named.
    let listed = ha.a.json(&["agents", "list", "--json"]);
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len() as u64, AGENTS);
    for name in ["a", "b"] {
        assert!(listed.iter().any(|l| l["instance"] == name), "no agent on {name}");
    }
}

#[test]
fn agents_of_a_killed_instance_come_back_through_haproxy_and_miss_nothing() {
    let Some(db) = ferry_testkit::postgres::fresh_database() else { return };
    let Some(mut ha) = Ha::start(&db.url()) else { return };
    // An action every agent has acknowledged: none may see it again after the failover.
    let (before, _) = ha.fan_out(&ha.a, "debug", &["--policy", "default-policy"], AGENTS);
    ha.everyone_acked(&ha.a, &before);
    // Every policy acknowledgement written (b writes them in batches, every 5 s): a crash may
    // lose one still queued, and its agent would rightly get its policy again.
    let listed = crate::support::eventually("every agent's policy acknowledgement written", || {
        let listed = ha.a.json(&["agents", "list", "--json"]);
        let listed = listed.as_array().unwrap().clone();
        listed.iter().all(|a| a["policy_revision"] == 1).then_some(listed)
    });
    let on_b: std::collections::HashSet<&str> =
        listed.iter().filter(|a| a["instance"] == "b").map(|a| a["id"].as_str().unwrap()).collect();
    let settled = ha.settled();
    let parked = ha.parked_on_both();
    eprintln!("before the kill: parked {parked:?}, HAProxy {:?}", ha.proxy.servers());
    let acks = settled["acks"].as_u64().unwrap();

    // Another, queued through b and cut off by the kill: b dies (SIGKILL) as the first
    // acknowledgements come in, as its own agents' fan-out begins (it wakes them first), with
    // check-ins parked, answers and acknowledgements in flight. Those it had answered come back
    // at once (their next request opens a new connection); those still parked see their
    // check-in fail and wait out their back-off.
    let (cut, asked) = ha.b.settings("info");
    ha.first_report("the first acknowledgements", asked, |v| v["acks"].as_u64().unwrap() > acks);
    let killed = epoch_ms();
    ha.servers[1].take().unwrap().kill();
    // Queued while b's agents are away: each whose request failed waits at least half its
    // back-off before trying again, so HAProxy holds fewer connections to a than there are
    // agents.
    let (during, _) = ha.a.settings("warning");
    let queued = epoch_ms() - killed;
    let sessions = ha.proxy.servers();
    let shown = ha.a.json(&["actions", "show", &cut, "--json"]);
    let acked_on_b = shown["agents"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["acknowledged"] == true && on_b.contains(a["agent_id"].as_str().unwrap()))
        .count();
    eprintln!(
        "b killed with about {acked_on_b} of its {} agents' acknowledgements of its action \
         recorded; an action queued {queued} ms after the kill; HAProxy then: {sessions:?}",
        on_b.len()
    );
    assert!(sessions[0].current_sessions < AGENTS, "b's agents were back already: {sessions:?}");

    // Every agent back on a: each has a check-in in flight again, which only a can hold, after
    // acknowledging both actions.
    let back = ha.first_report("every agent back and parked", killed, |v| {
        v["in_checkin"] == AGENTS && v["acks"].as_u64().unwrap() >= acks + 2 * AGENTS
    });
    eprintln!(
        "every agent acknowledged both actions and parked again {} ms after the kill: {back}",
        back["epoch_ms"].as_u64().unwrap() - killed,
    );
    for action in [&before, &cut, &during] {
        ha.everyone_acked(&ha.a, action);
    }
    let b = ha.proxy.wait_for(1, "DOWN");
    assert_eq!(b.current_sessions, 0, "{b:?}");
    assert!(ha.proxy.servers()[0].current_sessions >= AGENTS, "{:?}", ha.proxy.servers());
    crate::support::eventually("every agent parked on a", || {
        let parked = ha.a.parked();
        parked.iter().any(|(name, n)| name == "a" && *n == AGENTS).then_some(())
    });

    let report = ha.settled();
    eprintln!("settled: {report}");
    ha.each_taken_once(&report, 3, 0);
    assert_eq!(report["stopped"], 0, "agents lost their keys: {report}");
    assert_eq!(report["enrolled"], AGENTS, "{report}");
}

#[test]
fn postgresql_restarted_under_load_costs_agents_a_delay_at_most() {
    let Some(pg) = ferry_testkit::postgres::Cluster::start() else { return };
    let db = pg.database();
    let Some(ha) = Ha::start(&db.url()) else { return };
    let settled = ha.settled();
    let acks = settled["acks"].as_u64().unwrap();
    let seen = |ha: &Ha| -> Vec<String> {
        let v = ha.a.cluster();
        v["instances"].as_array().unwrap().iter().map(|i| i["seen_at"].to_string()).collect()
    };
    let seen_before = seen(&ha);

    // Restarted as an action's first acknowledgements come in: requests in flight fail, parked
    // check-ins stay, and every connection of both instances breaks.
    let (during, asked) = ha.a.settings("info");
    ha.first_report("the first acknowledgements", asked, |v| v["acks"].as_u64().unwrap() > acks);
    let restarted = Instant::now();
    let restarted_ms = epoch_ms();
    pg.restart();
    eprintln!("PostgreSQL stopped and started again in {:?}", restarted.elapsed());
    // Both instances are back in the cluster: each has written a heartbeat since.
    crate::support::eventually("a heartbeat of each instance after the restart", || {
        let now = seen(&ha);
        (now.len() == 2 && now.iter().zip(&seen_before).all(|(n, b)| n != b)).then_some(())
    });
    let everyone = ha.first_report("every agent acknowledged and parked", restarted_ms, |v| {
        v["in_checkin"] == AGENTS && v["acks"].as_u64().unwrap() >= acks + AGENTS
    });
    eprintln!(
        "every agent acknowledged the action in flight and parked again {} ms after the restart \
         began: {everyone}",
        everyone["epoch_ms"].as_u64().unwrap() - restarted_ms
    );
    ha.everyone_acked(&ha.b, &during);

    let (after, reached) = ha.fan_out(&ha.a, "debug", &["--policy", "default-policy"], AGENTS);
    eprintln!("queued on a after the restart: {reached}");
    ha.everyone_acked(&ha.b, &after);

    let report = ha.settled();
    eprintln!("before the restart: {settled}\nsettled: {report}");
    ha.each_taken_once(&report, 2, 0);
    assert_eq!(report["stopped"], 0, "{report}");
    assert_eq!(report["enrolled"], AGENTS, "{report}");
}
