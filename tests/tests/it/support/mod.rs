//! Helpers shared by the end-to-end tests that drive the real binaries with simulated agents:
//! a site (fake Elastic mirror, signing key, bundles, appliance configuration), and how long a
//! journey waits for its processes.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

pub use ferry_testkit::{Lines, binary, json_stdout, run_ok};
use serde_json::Value;

/// How long a journey waits for a process to print what it expects: two thousand simulated
/// agents enrolling at 500 a second, parking and acknowledging take tens of seconds on 2 cores.
pub const PATIENCE: Duration = Duration::from_secs(120);

/// How long a journey polls the appliance for a state its agents have already reported.
const SETTLE: Duration = Duration::from_secs(20);

/// The repository's root folder.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_owned()
}

/// A new simulated agent (`ferry-sim run` pointed at the server by `target`) enrolls, checks
/// in and parks: what floods must leave working.
pub fn a_new_agent_checks_in(target: &dyn Fn(&mut Command)) {
    let mut newcomer = sim();
    newcomer.arg("run");
    target(&mut newcomer);
    newcomer.args(["--agents", "1", "--report-ms", "200"]);
    let newcomer = Lines::spawn(newcomer, PATIENCE);
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
        let server = Lines::spawn(serve, PATIENCE);
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

/// Polls `f` (bounded) until it gives a value.
pub fn eventually<T>(what: &str, f: impl Fn() -> Option<T>) -> T {
    ferry_testkit::eventually(what, SETTLE, f)
}

pub fn count(v: &Value, histogram: &str, key: &str) -> u64 {
    v[histogram][key].as_u64().unwrap_or(0)
}
