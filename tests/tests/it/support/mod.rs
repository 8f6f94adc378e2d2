//! Helpers shared by the end-to-end tests that drive the real binaries with simulated agents:
//! a site (fake Elastic mirror, signing key, bundles, appliance configuration), processes whose
//! output lines are collected as they come, and bounded waits.

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferry_tests::{binary, run_ok};
use serde_json::Value;

/// The one JSON line a finished `ferry-sim flood` or `probe` printed.
pub fn json_of(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "{:?}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("{e}: {}", String::from_utf8_lossy(&out.stdout));
    })
}

/// A new simulated agent (`ferry-sim run` pointed at the server by `target`) enrolls, checks
/// in and parks: what floods must leave working.
pub fn a_new_agent_checks_in(target: &dyn Fn(&mut Command)) {
    let mut newcomer = sim();
    newcomer.arg("run");
    target(&mut newcomer);
    newcomer.args(["--agents", "1", "--report-ms", "200"]);
    let newcomer = Lines::spawn(newcomer);
    newcomer.report("a new agent checked in and parked", |v| {
        v["enrolled"] == 1 && v["checkins"].as_u64().unwrap_or(0) >= 1 && v["in_checkin"] == 1
    });
}

pub fn sim() -> Command {
    binary("ferry-sim")
}

/// A site: a fake Elastic mirror, a signing key, and bundle specs.
pub struct Site {
    dir: tempfile::TempDir,
}

impl Site {
    pub fn new() -> Self {
        let site = Self { dir: tempfile::tempdir().unwrap() };
        run_ok(sim().current_dir(site.path()).args([
            "fake-mirror",
            "--out",
            "mirror",
            "--versions",
            "9.1.2,9.2.2,9.3.0",
            "--size",
            "100000",
        ]));
        run_ok(binary("ferry").current_dir(site.path()).args([
            "keygen",
            "--without-password",
            "-q",
        ]));
        site
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Builds `bench-SEQ.ferry` with these agent versions and a policy whose output host is
    /// `ls-SEQ` (so each sequence's policy differs). `expires` overrides the validity.
    pub fn bundle(&self, sequence: u64, versions: &[&str], expires: Option<&str>) -> PathBuf {
        let spec = self.path().join(format!("spec-{sequence}.toml"));
        let policy = self.path().join(format!("policy-{sequence}.yml"));
        std::fs::write(
            &policy,
            format!(
                "id: default-policy\nrevision: {sequence}\noutputs:\n  default: {{type: logstash, hosts: [\"ls-{sequence}:5044\"]}}\ninputs: []\n"
            ),
        )
        .unwrap();
        let validity = match expires {
            Some(e) => format!("expires = \"{e}\""),
            None => "valid_days = 30".into(),
        };
        let versions: Vec<String> = versions.iter().map(|v| format!("\"{v}\"")).collect();
        std::fs::write(
            &spec,
            format!(
                "[bundle]\nname = \"site\"\nsequence = {sequence}\n{validity}\n\n[upstream]\ndir = \"mirror/downloads\"\n\
                 pgp_key = \"mirror/GPG-KEY-ferry-demo\"\n\n[[agent]]\nversions = [{}]\nplatforms = [\"linux-x86_64\"]\n\
                 packages = [\"archive\"]\n\n[[file]]\nsource = \"{}\"\nkind = \"policy\"\n",
                versions.join(", "),
                policy.display()
            ),
        )
        .unwrap();
        let mut build = binary("ferry");
        build.current_dir(self.path()).arg("build").arg(&spec).args(["--out", "dist", "-q"]);
        if expires.is_some() {
            build.args(["--created", "2020-01-01T00:00:00Z"]);
        }
        run_ok(&mut build);
        self.path().join(format!("dist/site-{sequence}.ferry"))
    }

    /// Writes `appliance.toml`: the agent API on 127.0.0.1 at a free port (returned), trusting
    /// the site's key, with `server` settings and further tables appended (`[limits.enroll]`…).
    pub fn configure(&self, server: &str, tables: &str) -> u16 {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        std::fs::write(
            self.path().join("appliance.toml"),
            format!(
                "data_dir = \"data\"\ntrusted_keys = [\"ferry.pub\"]\npublic_url = \"https://127.0.0.1:{port}\"\n\
                 [server]\nlisten = \"127.0.0.1:{port}\"\n{server}\n{tables}"
            ),
        )
        .unwrap();
        port
    }

    /// Starts `serve` and waits until it answers.
    pub fn serve(&self) -> Lines {
        let mut serve = self.appliance();
        serve.arg("serve");
        let server = Lines::spawn(serve);
        server.wait("the admin API", |l| l.starts_with("admin API on"));
        server
    }

    pub fn appliance(&self) -> Command {
        let mut cmd = binary("ferry-appliance");
        cmd.current_dir(self.path()).arg("--config").arg(self.path().join("appliance.toml"));
        cmd
    }

    /// Runs an appliance command that must succeed and returns its stdout.
    pub fn admin(&self, args: &[&str]) -> String {
        String::from_utf8(run_ok(self.appliance().args(args)).stdout).unwrap()
    }
}

/// A process whose stdout lines are collected as they come.
pub struct Lines {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Lines {
    pub fn spawn(mut cmd: Command) -> Self {
        let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let out = child.stdout.take().unwrap();
        let sink = Arc::clone(&lines);
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        Self { child, lines }
    }

    /// The process id, for reading its /proc entries.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits (bounded) for a line satisfying `pred`; returns it.
    pub fn wait(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let end = Instant::now() + Duration::from_secs(120);
        while Instant::now() < end {
            if let Some(l) = self.lines.lock().unwrap().iter().rev().find(|l| pred(l)) {
                return l.clone();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("never saw {what}; last: {:?}", self.lines.lock().unwrap().last());
    }

    /// Waits until the simulator's latest report satisfies `pred`.
    pub fn report(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let end = Instant::now() + Duration::from_secs(120);
        while Instant::now() < end {
            let last = self.lines.lock().unwrap().last().cloned();
            if let Some(v) = last.and_then(|l| serde_json::from_str::<Value>(&l).ok())
                && pred(&v)
            {
                return v;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("agents never reached: {what}; last: {:?}", self.lines.lock().unwrap().last());
    }
}

impl Drop for Lines {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `f` (bounded) until it gives a value.
pub fn eventually<T>(what: &str, f: impl Fn() -> Option<T>) -> T {
    for _ in 0..200 {
        if let Some(v) = f() {
            return v;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("never: {what}");
}

pub fn count(v: &Value, histogram: &str, key: &str) -> u64 {
    v[histogram][key].as_u64().unwrap_or(0)
}
