//! Throwaway PostgreSQL servers for the tests of the appliance's PostgreSQL store: the
//! installed `initdb` and `postgres` run a cluster in a temporary folder, on a free loopback
//! port, trusting every local connection as superuser `postgres`.
//!
//! One cluster per test process is shared by all its tests ([`shared`]), each test in a
//! database of its own ([`fresh_database`], dropped with its guard). A test that stops or
//! restarts its server, or needs TLS, starts a cluster of its own ([`Cluster::start`],
//! [`Cluster::start_tls`]), stopped and removed when dropped.
//!
//! A static is never dropped, so every cluster also has a watchdog, a small `sh` loop outside
//! the test process's process group: when the test process is gone (ended, panicked, killed,
//! Ctrl-C), it stops the server and removes its folder. No `postgres` outlives `cargo test`.
//!
//! Without PostgreSQL installed, every function here gives `None`, and the test passes without
//! checking anything; the test process says so once on stderr, `skipping: PostgreSQL not
//! installed (apt-get install postgresql)`. With `FERRY_REQUIRE_POSTGRES=1` (CI), they panic
//! instead.

use std::fs::File;
use std::io::Write as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The superuser `initdb` makes (`-U`), which every connection uses (trust authentication).
pub const SUPERUSER: &str = "postgres";

/// How long a server may take to accept connections after it starts.
const READY_WITHIN: Duration = Duration::from_secs(60);

/// The PostgreSQL programs found on this machine, and who runs them.
#[derive(Debug, Clone)]
struct Install {
    /// The folder of `initdb` and `postgres`.
    bin: PathBuf,
    /// `(uid, gid)` of `nobody` when the tests run as root: `initdb` and `postgres` refuse to
    /// run as root.
    owner: Option<(u32, u32)>,
}

/// The variable that turns a missing PostgreSQL from a skipped test into a failed one.
pub const REQUIRE: &str = "FERRY_REQUIRE_POSTGRES";

/// The installation, found once per process; `None` (after saying so) when there is none.
/// Panics instead when [`REQUIRE`] is `1`.
fn install() -> Option<&'static Install> {
    static INSTALL: OnceLock<Option<Install>> = OnceLock::new();
    let required = std::env::var(REQUIRE).as_deref() == Ok("1");
    let found = INSTALL.get_or_init(|| {
        let found = find_bin().map(|bin| {
            let owner = rustix::process::geteuid().is_root().then(nobody);
            Install { bin, owner }
        });
        if found.is_none() && !required {
            // Once per test process, and past the test harness's capture (which hides what a
            // passing test prints): whoever runs the tests sees why these checked nothing.
            let _ = writeln!(
                std::io::stderr(),
                "skipping: PostgreSQL not installed (apt-get install postgresql; {REQUIRE}=1 fails)"
            );
        }
        found
    });
    found_or_refused(found.as_ref(), required)
}

/// `found`; a panic saying what to install when there is nothing and it is `required`.
fn found_or_refused<T>(found: Option<T>, required: bool) -> Option<T> {
    assert!(
        found.is_some() || !required,
        "{REQUIRE}=1 but PostgreSQL is not installed: no initdb and postgres on PATH nor in \
         /usr/lib/postgresql/*/bin (apt-get install postgresql)"
    );
    found
}

/// The folder holding both `initdb` and `postgres`: on `PATH` (through symbolic links), else
/// the highest version under `/usr/lib/postgresql` (Debian's layout, not on `PATH`).
fn find_bin() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .filter_map(|dir| std::fs::canonicalize(dir.join("initdb")).ok())
        .filter_map(|initdb| initdb.parent().map(Path::to_path_buf))
        .find(|dir| complete(dir));
    on_path.or_else(|| highest_version(Path::new("/usr/lib/postgresql")))
}

/// Whether `dir` holds both programs a cluster needs.
fn complete(dir: &Path) -> bool {
    ["initdb", "postgres"].iter().all(|p| dir.join(p).is_file())
}

/// `root/VERSION/bin` of the highest VERSION (compared as numbers: 13 is above 9.6) that holds
/// both programs.
fn highest_version(root: &Path) -> Option<PathBuf> {
    let mut versions: Vec<(Vec<u64>, PathBuf)> = std::fs::read_dir(root)
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            let version: Vec<u64> =
                name.split('.').map(str::parse).collect::<Result<_, _>>().ok()?;
            Some((version, entry.path().join("bin")))
        })
        .filter(|(_, bin)| complete(bin))
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

/// `nobody`'s uid and gid, from `/etc/passwd` (65534, Debian's, if it is not listed).
fn nobody() -> (u32, u32) {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.len() > 3 && f[0] == "nobody")
        .and_then(|f| Some((f[2].parse().ok()?, f[3].parse().ok()?)))
        .unwrap_or((65534, 65534))
}

/// The cluster every test of this process shares; started at the first call.
pub fn shared() -> Option<&'static Cluster> {
    static SHARED: OnceLock<Cluster> = OnceLock::new();
    install()?;
    Some(SHARED.get_or_init(|| Cluster::start_with(false).expect("installed")))
}

/// A new, empty database on the [`shared`] cluster, dropped (`WITH (FORCE)`) with the guard.
pub fn fresh_database() -> Option<Database<'static>> {
    Some(shared()?.database())
}

/// A running PostgreSQL server and its folder (data, socket, log, certificates).
pub struct Cluster {
    install: Install,
    dir: PathBuf,
    port: u16,
    /// The test CA's certificate (PEM), when the server speaks TLS.
    ca_pem: Option<String>,
    /// The `postgres` process; `None` while stopped.
    server: Mutex<Option<Child>>,
}

/// A database of a [`Cluster`], dropped with this guard (the connections left to it closed).
pub struct Database<'a> {
    cluster: &'a Cluster,
    name: String,
}

impl Database<'_> {
    /// `postgresql://postgres@127.0.0.1:PORT/NAME`.
    pub fn url(&self) -> String {
        self.cluster.url(&self.name)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// A plain connection to this database (no TLS), as superuser.
    pub fn connect(&self) -> postgres::Client {
        self.cluster.connect(&self.name)
    }
}

impl Drop for Database<'_> {
    fn drop(&mut self) {
        // A server a test stopped cannot drop it, and its folder goes anyway.
        if let Ok(mut admin) = self.cluster.try_connect("postgres") {
            let _ = admin.batch_execute(&format!("DROP DATABASE {} WITH (FORCE)", self.name));
        }
    }
}

impl Cluster {
    /// A cluster of this test's own (one it may stop or restart), stopped and removed when
    /// dropped.
    pub fn start() -> Option<Cluster> {
        install()?;
        Some(Self::start_with(false).expect("installed"))
    }

    /// A cluster of this test's own that requires nothing but accepts TLS (`ssl=on`), with a
    /// server certificate for `localhost` and `127.0.0.1` signed by a fresh test CA: see
    /// [`Cluster::ca_pem`].
    pub fn start_tls() -> Option<Cluster> {
        install()?;
        Some(Self::start_with(true).expect("installed"))
    }

    fn start_with(tls: bool) -> Option<Cluster> {
        static CLUSTERS: AtomicUsize = AtomicUsize::new(0);
        let install = install()?.clone();
        let n = CLUSTERS.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("ferry-pg-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).expect("cluster folder");
        watchdog(&dir);
        let cluster_owner = |path: &Path| {
            if let Some((uid, gid)) = install.owner {
                std::os::unix::fs::chown(path, Some(uid), Some(gid)).expect("chown to nobody");
            }
        };
        cluster_owner(&dir);
        initdb(&install, &dir);
        let ca_pem = tls.then(|| {
            let (ca_pem, cert_pem, key_pem) = server_certificate();
            for (file, pem) in [("server.crt", &cert_pem), ("server.key", &key_pem)] {
                let path = dir.join(file);
                std::fs::write(&path, pem).expect("certificate file");
                // PostgreSQL refuses a key others may read.
                std::fs::set_permissions(
                    &path,
                    std::os::unix::fs::PermissionsExt::from_mode(0o600),
                )
                .expect("key mode");
                cluster_owner(&path);
            }
            ca_pem
        });
        let mut cluster = Cluster { install, dir, port: 0, ca_pem, server: Mutex::new(None) };
        // A port free a moment ago may be taken by the time the server binds it: a few tries.
        for _ in 0..5 {
            cluster.port = free_port();
            if cluster.spawn() {
                return Some(cluster);
            }
        }
        panic!("PostgreSQL did not start: {}", cluster.log());
    }

    /// The TCP port the server listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The test CA that signed the server's certificate (PEM), for a TLS cluster.
    pub fn ca_pem(&self) -> Option<&str> {
        self.ca_pem.as_deref()
    }

    /// `postgresql://postgres@127.0.0.1:PORT/DATABASE`.
    pub fn url(&self, database: &str) -> String {
        format!("postgresql://{SUPERUSER}@127.0.0.1:{}/{database}", self.port)
    }

    /// A new, empty database, dropped with the guard.
    pub fn database(&self) -> Database<'_> {
        static DATABASES: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "ferry_test_{}_{}",
            std::process::id(),
            DATABASES.fetch_add(1, Ordering::Relaxed)
        );
        self.connect("postgres")
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .unwrap_or_else(|e| panic!("CREATE DATABASE {name}: {}", chain(&e)));
        Database { cluster: self, name }
    }

    /// A plain connection (no TLS) to `database`, as superuser.
    pub fn connect(&self, database: &str) -> postgres::Client {
        self.try_connect(database)
            .unwrap_or_else(|e| panic!("connecting to {}: {}", self.url(database), chain(&e)))
    }

    fn try_connect(&self, database: &str) -> Result<postgres::Client, postgres::Error> {
        postgres::Config::new()
            .host("127.0.0.1")
            .port(self.port)
            .user(SUPERUSER)
            .dbname(database)
            .connect_timeout(Duration::from_secs(5))
            .connect(postgres::NoTls)
    }

    /// Stops the server (a fast shutdown: open connections are closed) and waits until it is
    /// gone. [`Cluster::restart`] starts it again.
    pub fn stop(&self) {
        let mut server = self.server.lock().unwrap();
        if let Some(mut child) = server.take() {
            let pid = rustix::process::Pid::from_child(&child);
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::INT);
            let _ = child.wait();
        }
    }

    /// Stops the server and starts it again on the same port, as a database restart (or a
    /// failover to the same address) does to the appliance: every open connection breaks.
    pub fn restart(&self) {
        self.stop();
        assert!(self.spawn(), "PostgreSQL did not start again: {}", self.log());
    }

    /// Starts `postgres` on `self.port`; false when it could not (the port was taken).
    fn spawn(&self) -> bool {
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.dir.join("log"))
            .expect("server log");
        let mut command = run_as(&self.install, &self.install.bin.join("postgres"), &self.dir);
        command
            .args(["-D", "data", "-p", &self.port.to_string()])
            .args(["-c", "listen_addresses=127.0.0.1"])
            .arg("-c")
            .arg(format!("unix_socket_directories={}", self.dir.display()))
            // Throwaway data: no flushing to disk.
            .args(["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"])
            .args(["-c", "max_connections=200", "-c", "shared_buffers=32MB"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("server log"))
            .stderr(log);
        if self.ca_pem.is_some() {
            command.args([
                "-c",
                "ssl=on",
                "-c",
                "ssl_cert_file=../server.crt",
                "-c",
                "ssl_key_file=../server.key",
            ]);
        }
        let mut child = command.spawn().expect("postgres starts");
        let end = Instant::now() + READY_WITHIN;
        loop {
            if self.try_connect("postgres").is_ok() {
                *self.server.lock().unwrap() = Some(child);
                return true;
            }
            if child.try_wait().expect("postgres status").is_some() {
                return false;
            }
            if Instant::now() > end {
                let _ = rustix::process::kill_process(
                    rustix::process::Pid::from_child(&child),
                    rustix::process::Signal::QUIT,
                );
                let _ = child.wait();
                panic!("PostgreSQL not ready within {READY_WITHIN:?}: {}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The server's log so far.
    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A command running `program` in `dir`, as `nobody` when the tests run as root, in a process
/// group of its own (a Ctrl-C meant for `cargo test` reaches the test, whose watchdog then
/// stops the server, rather than the server alone).
fn run_as(install: &Install, program: &Path, dir: &Path) -> Command {
    let mut command = Command::new(program);
    command.current_dir(dir).env("LC_ALL", "C.UTF-8").process_group(0);
    if let Some((uid, gid)) = install.owner {
        command.uid(uid).gid(gid);
    }
    command
}

/// Makes the cluster's data folder, `dir/data`.
fn initdb(install: &Install, dir: &Path) {
    // First a locale that sorts text unlike bytes (ICU's en-US puts "db" before "Zeta"), so
    // that a query relying on an order the schema's `COLLATE "C"` does not give fails its test
    // here; then, where PostgreSQL was built without ICU (or is older than 15), plain C.
    let locales: [&[&str]; 2] =
        [&["--locale=C.UTF-8", "--locale-provider=icu", "--icu-locale=en-US"], &["--locale=C"]];
    let mut failures = String::new();
    for locale in locales {
        let _ = std::fs::remove_dir_all(dir.join("data"));
        let out = run_as(install, &install.bin.join("initdb"), dir)
            .args(["-D", "data", "-U", SUPERUSER, "--auth=trust", "-E", "UTF8", "--no-sync"])
            .args(locale)
            .output()
            .expect("initdb starts");
        if out.status.success() {
            return;
        }
        failures.push_str(&String::from_utf8_lossy(&out.stdout));
        failures.push_str(&String::from_utf8_lossy(&out.stderr));
    }
    panic!("initdb failed: {failures}");
}

/// Starts the watchdog of the cluster in `dir`: once this process is gone, it stops the
/// server (SIGQUIT, an immediate shutdown: the data is thrown away) and removes the folder. The
/// loop runs in the background of a shell that exits at once (and is waited for), so the loop
/// belongs to init rather than to this process: nothing is left to reap.
fn watchdog(dir: &Path) {
    const SCRIPT: &str = r#"(
        while kill -0 "$1" 2>/dev/null; do sleep 0.2; done
        pid=$(head -n 1 "$2/data/postmaster.pid" 2>/dev/null)
        if [ -n "$pid" ]; then
            kill -QUIT "$pid" 2>/dev/null
            i=0
            while kill -0 "$pid" 2>/dev/null && [ "$i" -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
        fi
        rm -rf "$2"
    ) </dev/null >/dev/null 2>&1 &"#;
    let started = ferry_manifests::test_tools::tool("sh")
        .args(["-c", SCRIPT, "ferry-pg-watchdog"])
        .arg(std::process::id().to_string())
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .status()
        .expect("the cluster's watchdog starts");
    assert!(started.success(), "the cluster's watchdog did not start: {started}");
}

/// A loopback port nothing listens on now.
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    listener.local_addr().expect("its address").port()
}

/// A fresh test CA, and a server certificate and key it signs for `localhost` and `127.0.0.1`:
/// `(ca, certificate, key)`, PEM.
fn server_certificate() -> (String, String, String) {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.distinguished_name.push(DnType::CommonName, "ferry-testkit PostgreSQL CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_pem = ca_params.self_signed(&ca_key).expect("CA certificate").pem();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().expect("server key");
    // `CertificateParams::new` makes an IP SAN of a name that parses as an address.
    let mut params = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
        .expect("server params");
    params.distinguished_name.push(DnType::CommonName, "localhost");
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = params.signed_by(&key, &issuer).expect("server certificate");
    (ca_pem, cert.pem(), key.serialize_pem())
}

/// A fresh CA's certificate (PEM) that signed nothing: what a client trusting the wrong CA
/// holds.
pub fn unrelated_ca_pem() -> String {
    server_certificate().0
}

/// `e` and its causes (`postgres` shows only its kind and keeps the server's message as its
/// source).
fn chain(e: &postgres::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_postgresql_skips_unless_required() {
        assert_eq!(found_or_refused(None::<PathBuf>, false), None);
        let found = Some(PathBuf::from("/usr/lib/postgresql/15/bin"));
        assert_eq!(found_or_refused(found.clone(), true), found);
        let required = std::panic::catch_unwind(|| found_or_refused(None::<PathBuf>, true));
        let panic = required.unwrap_err();
        let message = panic.downcast_ref::<String>().unwrap();
        assert!(message.contains("FERRY_REQUIRE_POSTGRES=1") && message.contains("apt-get"));
    }

    #[test]
    fn the_highest_complete_version_is_used() {
        let root = std::env::temp_dir().join(format!("ferry-pg-versions-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        for (version, programs) in [
            ("9.6", &["initdb", "postgres"][..]),
            ("13", &["initdb", "postgres"]),
            ("16", &["initdb"]),
        ] {
            let bin = root.join(version).join("bin");
            std::fs::create_dir_all(&bin).unwrap();
            for p in programs {
                std::fs::write(bin.join(p), "").unwrap();
            }
        }
        std::fs::create_dir_all(root.join("common")).unwrap();
        let found = highest_version(&root);
        std::fs::remove_dir_all(&root).unwrap();
        assert_eq!(found, Some(root.join("13").join("bin")), "16 lacks postgres; 13 is above 9.6");
    }

    #[test]
    fn a_database_lives_as_long_as_its_guard() {
        let Some(cluster) = shared() else { return };
        let exists = |name: &str| -> bool {
            cluster
                .connect("postgres")
                .query_one("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)", &[&name])
                .unwrap()
                .get(0)
        };
        let db = fresh_database().unwrap();
        let name = db.name().to_owned();
        // A connection left open does not keep it.
        let mut open = db.connect();
        open.batch_execute("CREATE TABLE t (x bigint)").unwrap();
        assert!(exists(&name), "{}", db.url());
        drop(db);
        assert!(!exists(&name));
    }
}
