//! A real HAProxy (Debian's `haproxy`) in front of test backends: the load balancer a site puts
//! before several appliances, run in the foreground as a child of the test (`haproxy -db -f
//! CFG`), listening on a free loopback port, its configuration written to a temporary folder,
//! killed on drop. Its runtime API (a stats socket in the same folder) tells tests how HAProxy
//! sees each backend (`UP`, `DOWN`) and how many connections it sent to each.
//!
//! Tests that need it skip when HAProxy is not installed, saying so on one line, unless
//! `FERRY_REQUIRE_HAPROXY=1` (CI sets it after installing the package): then they fail.

use std::io::{Read as _, Write as _};
use std::net::SocketAddr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use crate::Lines;

/// The variable that turns a missing HAProxy from a skipped test into a failed one.
pub const REQUIRE: &str = "FERRY_REQUIRE_HAPROXY";

/// The backend every configuration made here defines; its servers are `s0`, `s1`, …
pub const BACKEND: &str = "ferry";

/// How long HAProxy may take to start, and a backend to be seen `UP` or `DOWN`: the checks run
/// every [`CHECK_INTERVAL`], so a change shows within a second on an idle machine.
const PATIENCE: Duration = Duration::from_secs(20);

/// Health checks this often, two failures marking a server down and one success up: tests wait
/// for changes of state, so they should come fast.
const CHECK_INTERVAL: &str = "200ms";

/// How HAProxy passes connections to the backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `mode tcp`: TLS passes through to the backends, which all serve the same certificate;
    /// the health check speaks TLS to them without verifying it (`check-ssl verify none`).
    TlsPassthrough,
    /// `mode http`: plain HTTP, for backends with `server.tls = false`.
    Http,
}

/// The `haproxy` program: on `PATH`, or in the `sbin` folders Debian installs it in, which a
/// user's `PATH` often lacks.
pub fn program() -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/usr/local/sbin".into()])
        .map(|dir| dir.join("haproxy"))
        .find(|file| {
            std::fs::metadata(file)
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// The `haproxy` program, or `None` after saying on stderr that the calling test is skipped.
/// Panics instead when [`REQUIRE`] is `1`.
pub fn installed() -> Option<PathBuf> {
    found_or_skipped(program(), std::env::var(REQUIRE).as_deref() == Ok("1"))
}

fn found_or_skipped(found: Option<PathBuf>, required: bool) -> Option<PathBuf> {
    if found.is_none() {
        assert!(!required, "{REQUIRE}=1 but HAProxy is not installed: apt-get install haproxy");
        // Past the test harness's capture (which hides what a passing test prints), as the
        // PostgreSQL harness says it: whoever runs the tests sees why this one checked nothing.
        let _ = writeln!(
            std::io::stderr(),
            "skipping: HAProxy not installed (apt-get install haproxy; {REQUIRE}=1 fails)"
        );
    }
    found
}

/// `haproxy -c -f CONFIG`: HAProxy's own check of a configuration file, which reads it whole
/// (and resolves its names) without binding anything. `None` when HAProxy is not installed (see
/// [`installed`]).
pub fn check_config(config: &Path) -> Option<Output> {
    let program = installed()?;
    Some(Command::new(program).arg("-c").arg("-f").arg(config).output().expect("haproxy runs"))
}

/// One backend server as HAProxy's `show stat` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerStat {
    /// `s0`, `s1`, … in the order the backends were given.
    pub name: String,
    /// `UP`, `DOWN`, `MAINT`, `DRAIN`, or a state in transition (`UP 1/2`: one failed check).
    pub status: String,
    /// Connections open to it now.
    pub current_sessions: u64,
    /// Connections HAProxy has sent it since it started.
    pub total_sessions: u64,
    /// The last health check's result (`L7OK`, `L7STS` for a status other than 200, `L4CON`).
    pub check: String,
}

/// A running HAProxy, killed on drop (with its temporary folder).
pub struct Haproxy {
    process: Lines,
    dir: tempfile::TempDir,
    config: String,
    address: SocketAddr,
    mode: Mode,
}

impl Haproxy {
    /// Starts HAProxy in front of `backends` (each the `host:port` a backend listens on), or
    /// returns `None` when it is not installed (see [`installed`]). Returns once HAProxy accepts
    /// connections; the backends' health is checked from then on (see [`Haproxy::wait_for`]).
    pub fn start(mode: Mode, backends: &[SocketAddr]) -> Option<Self> {
        Self::start_with(mode, |address, socket| config(mode, address, socket, backends))
    }

    /// Starts HAProxy with the configuration `make` writes for the frontend's address and the
    /// runtime API's socket path (a site's configuration, adapted): it must define the backend
    /// [`BACKEND`], whose servers [`Haproxy::servers`] lists, and bind the address and the
    /// socket given. `mode` says only what [`Haproxy::url`] gives.
    pub fn start_with(mode: Mode, make: impl Fn(SocketAddr, &Path) -> String) -> Option<Self> {
        let program = installed()?;
        // The free port is found by binding and letting go; another process may take it in
        // between, which HAProxy reports as a failed bind: then try another.
        let mut last = String::new();
        for _ in 0..3 {
            let dir = tempfile::tempdir().expect("a temporary folder");
            let address = free_port();
            let socket = dir.path().join("haproxy.sock");
            let config = make(address, &socket);
            let file = dir.path().join("haproxy.cfg");
            std::fs::write(&file, &config).expect("the configuration is written");
            let mut cmd = Command::new(&program);
            cmd.arg("-db").arg("-f").arg(&file);
            let process = Lines::spawn(cmd, PATIENCE);
            let haproxy = Self { process, dir, config, address, mode };
            match haproxy.ready() {
                Ok(()) => return Some(haproxy),
                Err(why) => last = why,
            }
        }
        panic!("HAProxy did not start: {last}");
    }

    /// Waits until HAProxy answers on its runtime API and accepts connections; the error says
    /// what it printed when it exited instead.
    fn ready(&self) -> Result<(), String> {
        let end = Instant::now() + PATIENCE;
        loop {
            if !self.process.alive() {
                let (out, err) = self.process.printed();
                return Err(format!("it exited:\n{out}{err}\n{}", self.config));
            }
            let listening = std::net::TcpStream::connect(self.address).is_ok();
            if listening && self.try_runtime("show info").is_ok() {
                return Ok(());
            }
            assert!(Instant::now() < end, "HAProxy never started within {PATIENCE:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Where clients connect.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// The URL clients use: `https://127.0.0.1:PORT` (TLS passes through) or `http://…`.
    pub fn url(&self) -> String {
        let scheme = match self.mode {
            Mode::TlsPassthrough => "https",
            Mode::Http => "http",
        };
        format!("{scheme}://{}", self.address)
    }

    /// The configuration HAProxy runs with.
    pub fn config(&self) -> &str {
        &self.config
    }

    /// The folder of the configuration file and the runtime API's socket.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Everything HAProxy has printed so far (its warnings and alerts: servers going up and
    /// down): (stdout, stderr).
    pub fn printed(&self) -> (String, String) {
        self.process.printed()
    }

    /// Sends one command to HAProxy's runtime API (`show stat`, `show servers state`,
    /// `set server ferry/s0 state maint`, …) and returns its answer.
    pub fn runtime(&self, command: &str) -> String {
        self.try_runtime(command).unwrap_or_else(|e| panic!("runtime API {command:?}: {e}"))
    }

    fn try_runtime(&self, command: &str) -> std::io::Result<String> {
        let mut stream = UnixStream::connect(self.dir.path().join("haproxy.sock"))?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        // Without `prompt`, HAProxy answers one command and closes the connection.
        stream.write_all(format!("{command}\n").as_bytes())?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer)?;
        Ok(answer)
    }

    /// The backend's servers as `show stat` reports them, in the order they were given.
    pub fn servers(&self) -> Vec<ServerStat> {
        parse_stat(&self.runtime("show stat"))
    }

    /// Waits until HAProxy sees server `index` (in the configuration's order: the backends as
    /// given to [`Haproxy::start`]) as `status` (`UP`, `DOWN`); returns its line. Panics after a
    /// while, with every server's line.
    pub fn wait_for(&self, index: usize, status: &str) -> ServerStat {
        let end = Instant::now() + PATIENCE;
        loop {
            let servers = self.servers();
            if let Some(s) = servers.get(index).filter(|s| s.status == status) {
                return s.clone();
            }
            assert!(
                Instant::now() < end,
                "HAProxy never saw server {index} {status} within {PATIENCE:?}: {servers:?}\n{}",
                self.printed().1
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// A loopback address no one listened on a moment ago.
fn free_port() -> SocketAddr {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("a loopback port");
    probe.local_addr().expect("its address")
}

/// The configuration: one frontend on `address`, one backend of `backends` with health checks
/// on Fleet's `/api/status`, timeouts fit for five-minute long polls, and the runtime API on
/// `socket`. The site's configuration (appliance/packaging/haproxy/ferry.cfg) follows the same
/// lines, with slower checks.
fn config(mode: Mode, address: SocketAddr, socket: &Path, backends: &[SocketAddr]) -> String {
    let (mode_name, check) = match mode {
        Mode::TlsPassthrough => ("tcp", " check-ssl verify none"),
        Mode::Http => ("http", ""),
    };
    let servers: String = backends
        .iter()
        .enumerate()
        .map(|(i, backend)| format!("    server s{i} {backend} check{check}\n"))
        .collect();
    format!(
        "# HAProxy for a Ferry test (ferry-testkit), in front of {n} backend(s).\n\
         global\n\
         \x20   # The runtime API: tests read each server's state and connection counts from it.\n\
         \x20   stats socket {socket} mode 600 level admin\n\
         \n\
         defaults\n\
         \x20   mode {mode_name}\n\
         \x20   timeout connect 2s\n\
         \x20   # A check-in is held up to five minutes: the proxy must not cut it first.\n\
         \x20   timeout client 6m\n\
         \x20   timeout server 6m\n\
         \x20   timeout tunnel 6m\n\
         \x20   timeout check 2s\n\
         \x20   # A connection refused by a server is tried again, on another server.\n\
         \x20   option redispatch\n\
         \x20   retries 2\n\
         \n\
         frontend agents\n\
         \x20   bind {address}\n\
         \x20   default_backend {BACKEND}\n\
         \n\
         backend {BACKEND}\n\
         \x20   # Long-lived connections: the server holding the fewest gets the next one.\n\
         \x20   balance leastconn\n\
         \x20   # A server is in rotation while its /api/status answers 200 (HEALTHY).\n\
         \x20   option httpchk GET /api/status\n\
         \x20   http-check expect status 200\n\
         \x20   default-server inter {CHECK_INTERVAL} fall 2 rise 1\n\
         {servers}",
        n = backends.len(),
        socket = socket.display(),
    )
}

/// The servers of [`BACKEND`] in `show stat`'s CSV (`# pxname,svname,…` then one line each
/// for the frontend, the servers and the backend itself).
fn parse_stat(csv: &str) -> Vec<ServerStat> {
    let mut lines = csv.lines();
    let header: Vec<&str> =
        lines.next().unwrap_or("").trim_start_matches("# ").split(',').collect();
    let column = |name: &str| {
        header.iter().position(|h| *h == name).unwrap_or_else(|| panic!("no {name} in {csv}"))
    };
    let (px, sv, scur, stot, status, check) = (
        column("pxname"),
        column("svname"),
        column("scur"),
        column("stot"),
        column("status"),
        column("check_status"),
    );
    lines
        .map(|line| line.split(',').collect::<Vec<_>>())
        .filter(|f| f.len() > px.max(sv) && f[px] == BACKEND && f[sv] != "BACKEND")
        .map(|f| ServerStat {
            name: f[sv].to_owned(),
            status: f[status].to_owned(),
            current_sessions: f[scur].parse().unwrap_or(0),
            total_sessions: f[stot].parse().unwrap_or(0),
            check: f[check].to_owned(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::net::{TcpListener, TcpStream};
    use std::sync::atomic::{AtomicU16, Ordering};
    use std::sync::{Arc, Mutex};

    use super::*;

    /// A backend answering every request on a connection of its own with `status` and its
    /// name, over TLS when given a configuration; counts the connections it accepted.
    struct Backend {
        address: SocketAddr,
        status: Arc<AtomicU16>,
        accepted: Arc<Mutex<u64>>,
    }

    impl Backend {
        fn start(name: &'static str, tls: Option<Arc<rustls::ServerConfig>>) -> Self {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let address = listener.local_addr().unwrap();
            let status = Arc::new(AtomicU16::new(200));
            let accepted = Arc::new(Mutex::new(0));
            let (answer, count) = (Arc::clone(&status), Arc::clone(&accepted));
            std::thread::spawn(move || {
                for tcp in listener.incoming().map_while(Result::ok) {
                    *count.lock().unwrap() += 1;
                    let status = answer.load(Ordering::SeqCst);
                    let tls = tls.clone();
                    std::thread::spawn(move || match tls {
                        Some(config) => {
                            let conn = rustls::ServerConnection::new(config).unwrap();
                            answer_one(rustls::StreamOwned::new(conn, tcp), status, name);
                        }
                        None => answer_one(tcp, status, name),
                    });
                }
            });
            Self { address, status, accepted }
        }
    }

    /// Reads a request head and answers it, closing the connection.
    fn answer_one(mut stream: impl std::io::Read + std::io::Write, status: u16, name: &str) {
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            match stream.read(&mut byte) {
                Ok(1) => head.push(byte[0]),
                _ => return,
            }
        }
        let _ = write!(
            stream,
            "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{name}",
            name.len()
        );
        let _ = stream.flush();
    }

    /// A GET of `/` through `stream`: the body.
    fn get(mut stream: impl std::io::Read + std::io::Write) -> String {
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut out = Vec::new();
        let _ = stream.read_to_end(&mut out);
        let out = String::from_utf8_lossy(&out).into_owned();
        out.split_once("\r\n\r\n").map(|(_, body)| body.to_owned()).unwrap_or(out)
    }

    #[test]
    fn two_http_backends_are_checked_and_a_request_reaches_one() {
        let (a, b) = (Backend::start("a", None), Backend::start("b", None));
        let Some(proxy) = Haproxy::start(Mode::Http, &[a.address, b.address]) else { return };
        proxy.wait_for(0, "UP");
        proxy.wait_for(1, "UP");
        let body = get(TcpStream::connect(proxy.address()).unwrap());
        assert!(body == "a" || body == "b", "{body}");
        // A backend whose status turns 503 is taken out: requests go to the other.
        a.status.store(503, Ordering::SeqCst);
        proxy.wait_for(0, "DOWN");
        for _ in 0..4 {
            assert_eq!(get(TcpStream::connect(proxy.address()).unwrap()), "b");
        }
        let servers = proxy.servers();
        assert_eq!(servers.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(), ["s0", "s1"]);
        assert_eq!(servers[0].check, "L7STS", "{servers:?}");
        assert!(servers[1].total_sessions >= 4, "{servers:?}");
        assert!(proxy.url().starts_with("http://127.0.0.1:"));
    }

    #[test]
    fn tls_passes_through_to_the_backends_which_are_checked_over_tls() {
        let key = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![key.cert.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(key.signing_key.serialize_der().into()),
            )
            .unwrap();
        let server = Arc::new(server);
        let (a, b) =
            (Backend::start("a", Some(Arc::clone(&server))), Backend::start("b", Some(server)));
        let Some(proxy) = Haproxy::start(Mode::TlsPassthrough, &[a.address, b.address]) else {
            return;
        };
        proxy.wait_for(0, "UP");
        proxy.wait_for(1, "UP");
        assert!(proxy.url().starts_with("https://127.0.0.1:"));
        // The client's handshake is with a backend: it sees the backends' certificate.
        let mut roots = rustls::RootCertStore::empty();
        roots.add(key.cert.der().clone()).unwrap();
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let conn = rustls::ClientConnection::new(Arc::new(client), "localhost".try_into().unwrap())
            .unwrap();
        let tcp = TcpStream::connect(proxy.address()).unwrap();
        let body = get(rustls::StreamOwned::new(conn, tcp));
        assert!(body == "a" || body == "b", "{body}");
        // Health checks and the request: each backend was connected to.
        assert!(*a.accepted.lock().unwrap() > 0 && *b.accepted.lock().unwrap() > 0);
        let state = proxy.runtime("show servers state");
        assert!(state.contains(" s0 ") && state.contains(" s1 "), "{state}");
    }

    #[test]
    fn a_missing_haproxy_skips_unless_required() {
        assert_eq!(found_or_skipped(None, false), None);
        let found = Some(PathBuf::from("/usr/sbin/haproxy"));
        assert_eq!(found_or_skipped(found.clone(), true), found);
        let required = std::panic::catch_unwind(|| found_or_skipped(None, true)).unwrap_err();
        let message = required.downcast_ref::<String>().unwrap();
        assert!(message.contains("FERRY_REQUIRE_HAPROXY=1") && message.contains("apt-get"));
    }

    #[test]
    fn show_stat_is_read_by_column_name() {
        let csv = "# pxname,svname,qcur,scur,stot,status,check_status,\n\
                   agents,FRONTEND,,1,9,OPEN,,\n\
                   ferry,s0,0,1,7,UP,L7OK,\n\
                   ferry,s1,0,0,2,DOWN 1/2,L7STS,\n\
                   ferry,BACKEND,0,1,9,UP,,\n";
        let servers = parse_stat(csv);
        assert_eq!(servers.len(), 2);
        assert_eq!(
            servers[1],
            ServerStat {
                name: "s1".into(),
                status: "DOWN 1/2".into(),
                current_sessions: 0,
                total_sessions: 2,
                check: "L7STS".into(),
            }
        );
    }
}
