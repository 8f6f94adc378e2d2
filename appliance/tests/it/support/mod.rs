//! Test support: bundles with Elastic-style artifacts (signed with a throwaway minisign key and a
//! throwaway PGP key), an appliance configuration, helpers to run the real binary, and a client
//! that speaks to the agent API as a stock Elastic Agent does.

pub mod agent;
pub mod schema;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

use ferry_manifests::{
    ArtifactFacts, Compression, Kind, Metadata, PgpKeyFacts, PolicyFacts, SidecarFormat, SigningKey,
};
use ferry_testkit::{Lines, eventually, json_stdout, key_pair, payload, sidecars};
pub use ferry_testkit::{assert_ok, stderr, stdout};
use time::OffsetDateTime;

pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub key: SigningKey,
    pub pgp: ferry_artifacts::pgp::SigningKey,
    /// Each archive's `.asc`, made once: a PGP signature carries the second it was made, and
    /// one Elastic artifact has one signature, so two bundles of the same version must carry
    /// the same bytes (a delta against one takes the other's from the blob store).
    signatures: std::sync::Mutex<std::collections::HashMap<(String, usize), String>>,
}

pub const VERSIONS: [&str; 3] = ["9.1.0", "9.2.2", "9.3.0"];

pub fn archive_path(version: &str) -> String {
    format!("beats/elastic-agent/elastic-agent-{version}-linux-x86_64.tar.gz")
}

/// Bytes standing in for an agent archive.
pub fn archive_bytes(version: &str) -> Vec<u8> {
    sized_archive(version, 200_000)
}

/// Like [`archive_bytes`], `len` bytes long.
pub fn sized_archive(version: &str, len: usize) -> Vec<u8> {
    ferry_testkit::noise(version, len)
}

/// Policy `q` of [`Fixture::bundle`], the same in every bundle.
const POLICY_Q: &str =
    "id: q\nrevision: 1\noutputs: {d: {type: logstash, hosts: [ls:5044]}}\ninputs: []\n";

/// How long the server may take to start, follow an import or log what a test waits for: each
/// takes well under a second on an idle machine.
const PATIENCE: Duration = Duration::from_secs(10);

impl Fixture {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (key, public_key_file) = key_pair("test");
        std::fs::write(dir.path().join("trusted.pub"), public_key_file).unwrap();
        let pgp =
            ferry_artifacts::pgp::SigningKey::generate("Elastic test <t@example.invalid>").unwrap();
        std::fs::write(dir.path().join("GPG-KEY-test"), pgp.public_armored()).unwrap();
        let fixture = Self { dir, key, pgp, signatures: Default::default() };
        fixture.write_config("");
        fixture
    }

    /// Appends lines to the configuration file (they land in its `[server]` table unless they
    /// open another).
    pub fn append_config(&self, text: &str) {
        let config = std::fs::read_to_string(self.path("appliance.toml")).unwrap();
        std::fs::write(self.path("appliance.toml"), format!("{config}{text}\n")).unwrap();
    }

    /// `tokens create --policy POLICY --json` (the server must be running): (id, token).
    pub fn token(&self, policy: &str) -> (String, String) {
        let v = self.run_json(&[&"tokens", &"create", &"--policy", &policy, &"--json"]);
        (v["id"].as_str().unwrap().to_owned(), v["token"].as_str().unwrap().to_owned())
    }

    /// Runs a command that must succeed and parses its JSON output.
    #[track_caller]
    pub fn run_json(&self, args: &[&dyn AsRef<std::ffi::OsStr>]) -> serde_json::Value {
        json_stdout(&self.run(args))
    }

    pub fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    /// Makes `keys` (public key files in the fixture's folder) the only trusted keys.
    pub fn trust(&self, keys: &[&str]) {
        let config = std::fs::read_to_string(self.path("appliance.toml")).unwrap();
        let line = config.lines().find(|l| l.starts_with("trusted_keys = ")).unwrap();
        let list: Vec<String> = keys.iter().map(|k| format!("{k:?}")).collect();
        let config = config.replace(line, &format!("trusted_keys = [{}]", list.join(", ")));
        std::fs::write(self.path("appliance.toml"), config).unwrap();
    }

    /// A second signing key, its public key written to `FILE` in the fixture's folder (not yet
    /// trusted: see [`Fixture::trust`]).
    pub fn other_key(&self, file: &str) -> SigningKey {
        let (key, public_key_file) = key_pair(file);
        std::fs::write(self.path(file), public_key_file).unwrap();
        key
    }

    pub fn write_config(&self, extra: &str) {
        let config = format!(
            "data_dir = \"data\"\ntrusted_keys = [\"trusted.pub\"]\npublic_url = \"https://localhost:8220\"\n\
             retain_releases = 3\n{extra}[server]\nlisten = \"127.0.0.1:0\"\nmirror_listen = \"127.0.0.1:0\"\n"
        );
        std::fs::write(self.path("appliance.toml"), config).unwrap();
    }

    /// Builds `site-SEQUENCE.ferry` carrying agent `version` (archive, .sha512, .asc), the PGP key
    /// and a policy. Returns the bundle path.
    pub fn bundle(&self, sequence: u64, version: &str, expires: OffsetDateTime) -> PathBuf {
        self.bundle_with_key(sequence, version, expires, &self.key)
    }

    pub fn bundle_with_key(
        &self,
        sequence: u64,
        version: &str,
        expires: OffsetDateTime,
        key: &SigningKey,
    ) -> PathBuf {
        self.bundle_full(sequence, version, expires, key, 200_000)
    }

    pub fn bundle_full(
        &self,
        sequence: u64,
        version: &str,
        expires: OffsetDateTime,
        key: &SigningKey,
        archive_len: usize,
    ) -> PathBuf {
        let p = Self::policy_p(sequence);
        let policies: &[(&str, &str)] = &[("p", &p), ("q", POLICY_Q)];
        self.bundle_parts(sequence, version, expires, key, archive_len, policies, None)
    }

    /// What [`Fixture::bundle`] makes, as a delta against `base`, in `bundles-delta/`.
    pub fn delta(&self, sequence: u64, version: &str, base: ferry_manifests::DeltaBase) -> PathBuf {
        let p = Self::policy_p(sequence);
        let policies: &[(&str, &str)] = &[("p", &p), ("q", POLICY_Q)];
        let key = &self.key;
        self.bundle_parts(sequence, version, Self::later(), key, 200_000, policies, Some(base))
    }

    /// Policy `p` of [`Fixture::bundle`]: its revision is the bundle's sequence.
    fn policy_p(sequence: u64) -> String {
        format!(
            "id: p\nrevision: {sequence}\noutputs: {{d: {{type: elasticsearch}}}}\ninputs: []\n"
        )
    }

    /// A bundle of sequence `sequence` whose policies are `policies` (id, document text).
    pub fn bundle_with_policies(&self, sequence: u64, policies: &[(&str, &str)]) -> PathBuf {
        self.bundle_parts(sequence, "9.1.2", Self::later(), &self.key, 200_000, policies, None)
    }

    #[allow(clippy::too_many_arguments)]
    fn bundle_parts(
        &self,
        sequence: u64,
        version: &str,
        expires: OffsetDateTime,
        key: &SigningKey,
        archive_len: usize,
        policies: &[(&str, &str)],
        base: Option<ferry_manifests::DeltaBase>,
    ) -> PathBuf {
        let src = self.path(&format!("src-{sequence}-{version}"));
        std::fs::create_dir_all(&src).unwrap();
        let archive = sized_archive(version, archive_len);
        let path = archive_path(version);
        let name = path.rsplit('/').next().unwrap();
        let write = |file: &str, bytes: &[u8]| {
            let p = src.join(file);
            std::fs::write(&p, bytes).unwrap();
            p
        };
        let mut sidecars = sidecars(&self.pgp, name, &archive);
        sidecars.asc = (self.signatures.lock().unwrap())
            .entry((version.to_owned(), archive_len))
            .or_insert(sidecars.asc)
            .clone();
        let signer = ferry_artifacts::Keyring::from_armored(&self.pgp.public_armored(), "test key")
            .unwrap()
            .fingerprints();
        let artifact = Metadata::artifact(ArtifactFacts {
            product: "elastic-agent".into(),
            version: version.into(),
            platform: "linux-x86_64".into(),
            package: "archive".into(),
            fips: false,
            sha512: sidecars.digest.to_hex(),
            pgp_signer: signer[0].clone(),
        });
        let mut pgp_key = Metadata::default();
        pgp_key.set_pgp_key(&PgpKeyFacts { fingerprints: signer, signs_artifacts: true });
        let policy = |id: &str, revision| {
            let mut m = Metadata::default();
            m.set_policy(PolicyFacts { id: id.into(), revision, name: None });
            m
        };
        let mut files = vec![
            payload(
                &format!("downloads/{path}"),
                write("archive", &archive),
                Kind::AgentArtifact,
                artifact,
            ),
            payload(
                &format!("downloads/{path}.sha512"),
                write("sha512", sidecars.sha512.as_bytes()),
                Kind::ArtifactSidecar,
                Metadata::sidecar(&path, SidecarFormat::Sha512),
            ),
            payload(
                &format!("downloads/{path}.asc"),
                write("asc", sidecars.asc.as_bytes()),
                Kind::ArtifactSidecar,
                Metadata::sidecar(&path, SidecarFormat::PgpSignature),
            ),
            payload("pgp/GPG-KEY-test", self.path("GPG-KEY-test"), Kind::PgpKey, pgp_key),
        ];
        for (id, text) in policies {
            let file = format!("{id}.yml");
            let revision = ferry_artifacts::Policy::parse(text.as_bytes(), &file).unwrap().revision;
            let source = write(&file, text.as_bytes());
            files.push(payload(
                &format!("policies/{file}"),
                source,
                Kind::Policy,
                policy(id, revision),
            ));
        }
        let created = OffsetDateTime::now_utc().replace_nanosecond(0).unwrap().min(expires);
        let compression = Compression::Zstd { level: 3, workers: 1 };
        let mut spec =
            ferry_testkit::spec(sequence, created - time::Duration::days(1), expires, compression);
        let out = if base.is_some() { "bundles-delta" } else { "bundles" };
        spec.base = base;
        ferry_testkit::write_bundle(&self.path(out), &spec, files, key).bundle_path
    }

    pub fn later() -> OffsetDateTime {
        OffsetDateTime::now_utc() + time::Duration::days(30)
    }

    pub fn appliance(&self, args: &[&dyn AsRef<std::ffi::OsStr>]) -> Command {
        let mut cmd = ferry_testkit::command(env!("CARGO_BIN_EXE_ferry-appliance"));
        cmd.arg("--config").arg(self.path("appliance.toml"));
        for a in args {
            cmd.arg(a);
        }
        cmd
    }

    pub fn run(&self, args: &[&dyn AsRef<std::ffi::OsStr>]) -> Output {
        self.appliance(args).output().unwrap()
    }

    /// `releases --json`: (active sequence, all sequences).
    pub fn releases(&self) -> (Option<u64>, Vec<u64>) {
        let list = self.run_json(&[&"releases", &"--json"]);
        let list = list.as_array().unwrap();
        let active =
            list.iter().find(|r| r["active"] == true).map(|r| r["sequence"].as_u64().unwrap());
        (active, list.iter().map(|r| r["sequence"].as_u64().unwrap()).collect())
    }
}

/// Every file under `dir` but staging's, with its content's digest: what a refusal must leave
/// as it was.
pub fn snapshot(dir: &std::path::Path) -> BTreeMap<PathBuf, String> {
    fn walk(root: &std::path::Path, path: &std::path::Path, out: &mut BTreeMap<PathBuf, String>) {
        for entry in std::fs::read_dir(path).unwrap() {
            let entry = entry.unwrap();
            let rel = entry.path().strip_prefix(root).unwrap().to_owned();
            if entry.file_type().unwrap().is_dir() {
                if rel != std::path::Path::new("staging") {
                    walk(root, &entry.path(), out);
                }
                continue;
            }
            // SQLite's side files come and go with each open; the database itself must not change.
            // The audit log records the refused attempt itself: that is its job.
            let name = rel.to_string_lossy();
            if name.ends_with("-wal") || name.ends_with("-shm") || name.starts_with("audit.") {
                continue;
            }
            let bytes = std::fs::read(entry.path()).unwrap();
            out.insert(rel, ferry_manifests::Sha256Digest::of(&bytes).to_hex());
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// An HTTPS client that trusts only the certificates in `pem` (none: it trusts nothing).
pub fn client_trusting(pem: &[u8]) -> ureq::Agent {
    let certs: Vec<_> = ureq::tls::parse_pem(pem)
        .filter_map(|i| match i.unwrap() {
            ureq::tls::PemItem::Certificate(c) => Some(c),
            _ => None,
        })
        .collect();
    let tls = ureq::tls::TlsConfig::builder()
        .root_certs(ureq::tls::RootCerts::new_with_certs(&certs))
        .build();
    ureq::Agent::config_builder().tls_config(tls).http_status_as_error(false).build().into()
}

/// Where agents reach an appliance: the agent API's URL and the CA of its certificate. A
/// [`Server`] is one (through `Deref`); so is a load balancer in front of servers that share a
/// certificate, which agents cannot tell from a server.
pub struct Endpoint {
    pub https: String,
    pub ca: PathBuf,
}

/// A running `ferry-appliance serve`, killed on drop.
pub struct Server {
    process: Lines,
    pub http: String,
    endpoint: Endpoint,
}

impl std::ops::Deref for Server {
    type Target = Endpoint;

    fn deref(&self) -> &Endpoint {
        &self.endpoint
    }
}

impl Server {
    pub fn start(fixture: &Fixture) -> Self {
        Self::start_with(fixture, &[&"serve"])
    }

    /// Starts `ferry-appliance ARGS` (a form of `serve`) and waits until it serves.
    pub fn start_with(fixture: &Fixture, args: &[&dyn AsRef<std::ffi::OsStr>]) -> Self {
        Self::start_command(fixture.appliance(args))
    }

    /// Starts `serve` as a shell started with `umask 022` would, as an operator's shell does.
    pub fn start_at_umask_022(fixture: &Fixture) -> Self {
        let serve = fixture.appliance(&[&"serve"]);
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "umask 022 && exec \"$0\" \"$@\""])
            .arg(serve.get_program())
            .args(serve.get_args());
        Self::start_command(cmd)
    }

    /// Starts `cmd` (a form of `serve`) and waits until it has printed where it serves. The
    /// CA is the quick-start one it printed before that; a server given a certificate of the
    /// test's (`server.tls_cert`) prints none, and its [`Endpoint::ca`] is empty.
    pub fn start_command(cmd: Command) -> Self {
        let process = Lines::spawn(cmd, PATIENCE);
        let https = process.wait("the agent API's address", |l| l.starts_with("serving https://"));
        let https = https.strip_prefix("serving ").unwrap().split_whitespace().next().unwrap();
        let http =
            process.wait("the mirror's address", |l| l.starts_with("serving the mirror on "));
        let ca = process.printed().0.lines().find_map(|l| {
            l.split_once("--certificate-authorities=").map(|(_, path)| PathBuf::from(path.trim()))
        });
        Self {
            http: http.strip_prefix("serving the mirror on ").unwrap().trim().to_owned(),
            endpoint: Endpoint { https: https.to_owned(), ca: ca.unwrap_or_default() },
            process,
        }
    }

    /// Waits (bounded) until the server has logged a line containing `text`; returns the logs.
    pub fn wait_for_log(&self, text: &str) -> String {
        self.process.wait_stderr(text)
    }

    /// Everything the server has printed so far: (stdout, stderr).
    pub fn printed(&self) -> (String, String) {
        self.process.printed()
    }

    /// Asks the server to stop (SIGTERM), as systemd does, and waits until it has.
    pub fn terminate(&self) -> std::process::ExitStatus {
        self.process.terminate()
    }

    /// Waits until the server exits by itself (after a takeover).
    pub fn wait_exit(&self) -> std::process::ExitStatus {
        self.process.wait_exit()
    }

    /// The server's process id, for reading its /proc entries.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Kills the server as a power cut would (SIGKILL), and waits until it is gone.
    pub fn kill(&self) {
        self.process.kill();
    }
}

impl Endpoint {
    /// An HTTPS client that trusts only the appliance's CA.
    pub fn client(&self) -> ureq::Agent {
        client_trusting(&std::fs::read(&self.ca).unwrap())
    }

    /// GET over TLS: status, headers, body.
    pub fn get(
        &self,
        path: &str,
        headers: &[(&str, &str)],
    ) -> (u16, ureq::http::HeaderMap, Vec<u8>) {
        let url = format!("{}{path}", self.https.replace("127.0.0.1", "localhost"));
        let mut req = self.client().get(&url);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let mut resp = req.call().unwrap();
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.body_mut().with_config().limit(64 << 20).read_to_vec().unwrap();
        (status, headers, body)
    }

    /// Waits (bounded) until `path` serves `want`; the server follows imports by polling.
    pub fn wait_for(&self, path: &str, want: &[u8]) {
        let what = format!("{path} serving the expected bytes");
        eventually(&what, PATIENCE, || (self.get(path, &[]).2 == want).then_some(()));
    }
}

/// A TLS connection to `https` (an `https://host:port` URL) for the name `localhost`, trusting
/// only the certificates in `ca`: for tests that watch one connection (kept alive, closed).
pub fn tls_stream(
    https: &str,
    ca: &std::path::Path,
) -> rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream> {
    let tcp = std::net::TcpStream::connect(https.trim_start_matches("https://")).unwrap();
    tls_over(tcp, ca)
}

/// TLS over the connected `tcp`, for the name `localhost`, trusting only the certificates in
/// `ca` (for tests that choose how the TCP connection is made).
pub fn tls_over(
    tcp: std::net::TcpStream,
    ca: &std::path::Path,
) -> rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream> {
    use std::sync::Arc;
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(ca).unwrap();
    for cert in rustls::pki_types::pem::PemObject::pem_slice_iter(&pem) {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tls =
        rustls::ClientConnection::new(Arc::new(config), "localhost".try_into().unwrap()).unwrap();
    rustls::StreamOwned::new(tls, tcp)
}

/// Sends `head` (request line and headers, without the blank line) to the admin socket
/// `data/admin.sock` with `Connection: close`, as any local program could; returns the status
/// and the body.
pub fn admin_raw(fixture: &Fixture, head: &str) -> (u16, serde_json::Value) {
    use std::io::{Read as _, Write as _};
    let mut stream =
        std::os::unix::net::UnixStream::connect(fixture.path("data/admin.sock")).unwrap();
    write!(stream, "{head}\r\nConnection: close\r\n\r\n").unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).unwrap();
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or_default();
    (status, serde_json::from_str(body).unwrap_or(serde_json::Value::Null))
}

/// The admin token `serve` wrote at its start.
pub fn admin_token(fixture: &Fixture) -> String {
    std::fs::read_to_string(fixture.path("data/admin.token")).unwrap().trim().to_owned()
}

/// Sends raw bytes as one HTTP/1.1 request and returns the status code.
pub fn raw_status(base: &str, request_target: &str) -> u16 {
    use std::io::{Read as _, Write as _};
    let addr = base.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    write!(stream, "GET {request_target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let head = String::from_utf8_lossy(&response[..response.len().min(64)]).into_owned();
    head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0)
}
