//! A test double of Elasticsearch's security API and of the `.fleet-artifacts` index: a real
//! HTTP(S) server on loopback, run by the test that starts it, answering the API-key calls the
//! appliance makes (create, invalidate, get, query, update, bulk update, authenticate,
//! has_privileges), Kibana's writes of Elastic Defend's user artifacts and Fleet Server's
//! searches of them (`artifacts.rs`) as
//! Elasticsearch does, strict about what it accepts (each request is held to the types of
//! Elastic's specification, `spec.rs`; what does not conform is answered 400 and listed in
//! [`ElasticDouble::violations`]), and able to fail the ways the real one fails ([`Fault`]).
//!
//! The double runs on its own multi-threaded tokio runtime, so blocking tests and async tests
//! (on a runtime of their own) can both use it.

mod api;
mod artifacts;
mod query;
mod spec;
#[cfg(test)]
mod tests;

pub use artifacts::KibanaArtifact;

use http_body_util::{BodyExt as _, Full};
use hyper::body::{Bytes, Incoming};
use hyper::header::{ALLOW, AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;
use tokio_rustls::TlsAcceptor;

/// The service account whose token [`ElasticDouble::service_token`] is, and the owner of the
/// keys created with it.
pub const SERVICE_ACCOUNT: &str = "elastic/fleet-server";
/// The user that owns the admin API key, and so the keys created with it.
pub const ADMIN_USER: &str = "ferry-admin";

/// How to start the double.
#[derive(Debug, Clone, Copy)]
pub struct DoubleOptions {
    /// Serve HTTPS with a certificate from a fresh CA ([`ElasticDouble::ca_pem`]).
    pub tls: bool,
    /// Added before every answer (see [`ElasticDouble::set_latency`]).
    pub latency: Duration,
}

impl Default for DoubleOptions {
    fn default() -> Self {
        DoubleOptions { tls: true, latency: Duration::ZERO }
    }
}

/// A way for the double to fail. It applies to every `/_security` call and every search of
/// `.fleet-artifacts` while set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    None,
    /// Every security call answers this status with an Elasticsearch-shaped error body (401
    /// with `WWW-Authenticate`, 403 `security_exception`, 429
    /// `es_rejected_execution_exception`, 503 `unavailable_shards_exception`, ...).
    Status(u16),
    /// The request is read in full and never answered; the connection stays open.
    Hang,
    /// The next N `create_api_key` calls that create a key (a refused one does not count)
    /// create it, then close the connection without an answer; then the fault clears.
    LoseCreateResponse(usize),
    /// Connections are accepted and closed at once with a reset, before TLS.
    CloseConnections,
}

/// An API key the double created.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyRecord {
    pub id: String,
    pub name: String,
    /// The secret.
    pub api_key: String,
    /// As the request gave it (`{}` when it gave none).
    pub role_descriptors: serde_json::Value,
    /// As the request gave it (`{}` when it gave none).
    pub metadata: serde_json::Value,
    pub invalidated: bool,
    /// Milliseconds since the epoch.
    pub creation: i64,
    /// The principal that created it: [`SERVICE_ACCOUNT`] or [`ADMIN_USER`].
    pub owner: String,
}

/// One request the double received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRecord {
    pub method: String,
    /// The path with its query string.
    pub path: String,
    /// The status answered; 0 when none was (a `Hang`, or a create whose answer was lost).
    pub status: u16,
}

/// A key with what Elasticsearch keeps beside the public record.
#[derive(Debug, Clone)]
pub(crate) struct StoredKey {
    pub record: KeyRecord,
    /// Milliseconds since the epoch.
    pub expiration: Option<i64>,
    pub invalidation: Option<i64>,
    pub realm: String,
    pub realm_type: String,
}

impl StoredKey {
    /// Authenticates: not invalidated, not expired.
    pub(crate) fn active(&self, now: i64) -> bool {
        !self.record.invalidated && self.expiration.is_none_or(|at| at > now)
    }
}

/// Everything the double knows, behind one lock.
pub(crate) struct State {
    pub keys: Vec<StoredKey>,
    pub fault: Fault,
    pub latency: Duration,
    pub missing_privilege: bool,
    pub violations: Vec<String>,
    pub requests: Vec<RequestRecord>,
    pub service_token: String,
    pub admin_id: String,
    pub admin_secret: String,
    /// `.fleet-artifacts`: `None` until its first document makes the index, then the
    /// documents by `_id` in the order they were indexed.
    pub artifacts: Option<Vec<(String, serde_json::Value)>>,
}

type Shared = Arc<Mutex<State>>;

fn lock(state: &Shared) -> MutexGuard<'_, State> {
    // A test that panicked while the lock was held must not hide the state from the next.
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The accept loop while the double listens.
struct Listening {
    stop: tokio::sync::oneshot::Sender<()>,
    stopped: std::sync::mpsc::Receiver<()>,
}

/// The running double; dropping it stops the server.
pub struct ElasticDouble {
    runtime: Option<Runtime>,
    state: Shared,
    port: u16,
    tls: Option<TlsAcceptor>,
    ca_pem: String,
    listening: Mutex<Option<Listening>>,
}

impl ElasticDouble {
    /// Binds 127.0.0.1 on a free port and serves until dropped.
    pub fn start(options: DoubleOptions) -> ElasticDouble {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("elastic-double")
            .enable_all()
            .build()
            .expect("the double's runtime");
        let (tls, ca_pem) = if options.tls {
            let (acceptor, pem) = tls_acceptor();
            (Some(acceptor), pem)
        } else {
            (None, String::new())
        };
        let service_secret = api::random_b64(16);
        // A service token is base64 of a 4-byte header (version and type) and
        // "namespace/service/token-name:secret", as `elasticsearch-service-tokens` prints.
        let mut token = vec![0u8, 1, 0, 1];
        token.extend_from_slice(
            format!("{SERVICE_ACCOUNT}/{}:{service_secret}", api::TOKEN_NAME).as_bytes(),
        );
        let state = State {
            keys: Vec::new(),
            fault: Fault::None,
            latency: options.latency,
            missing_privilege: false,
            violations: Vec::new(),
            requests: Vec::new(),
            service_token: {
                use base64::Engine as _;
                base64::engine::general_purpose::STANDARD_NO_PAD.encode(token)
            },
            admin_id: api::random_b64(15),
            admin_secret: api::random_b64(16),
            artifacts: None,
        };
        let listener = bind(&runtime, 0).expect("bind 127.0.0.1:0");
        let port = listener.local_addr().expect("bound address").port();
        let double = ElasticDouble {
            runtime: Some(runtime),
            state: Arc::new(Mutex::new(state)),
            port,
            tls,
            ca_pem,
            listening: Mutex::new(None),
        };
        double.listen(listener);
        double
    }

    fn runtime(&self) -> &Runtime {
        self.runtime.as_ref().expect("running until dropped")
    }

    fn listen(&self, listener: TcpListener) {
        let (stop, stop_rx) = tokio::sync::oneshot::channel();
        let (stopped_tx, stopped) = std::sync::mpsc::channel();
        let state = self.state.clone();
        let tls = self.tls.clone();
        self.runtime().spawn(async move {
            accept_loop(listener, state, tls, stop_rx).await;
            let _ = stopped_tx.send(());
        });
        *self.listening.lock().unwrap_or_else(PoisonError::into_inner) =
            Some(Listening { stop, stopped });
    }

    /// `https://127.0.0.1:PORT`, or `http://` without TLS.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// The PEM of the CA that signed the server certificate (for `127.0.0.1` and
    /// `localhost`); empty without TLS.
    pub fn ca_pem(&self) -> String {
        self.ca_pem.clone()
    }

    pub fn write_ca(&self, path: &Path) {
        std::fs::write(path, &self.ca_pem)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    }

    /// A service token of `elastic/fleet-server`, sent as `Authorization: Bearer <token>`.
    pub fn service_token(&self) -> String {
        lock(&self.state).service_token.clone()
    }

    /// `base64("id:key")` of an API key owned by [`ADMIN_USER`], sent as
    /// `Authorization: ApiKey <value>`. As in Elasticsearch, a key created with it must have
    /// role descriptors that grant nothing, and it cannot update keys.
    pub fn admin_api_key(&self) -> String {
        use base64::Engine as _;
        let s = lock(&self.state);
        base64::engine::general_purpose::STANDARD
            .encode(format!("{}:{}", s.admin_id, s.admin_secret))
    }

    /// Replaces the current fault; `Fault::None` clears it.
    pub fn set_fault(&self, fault: Fault) {
        lock(&self.state).fault = fault;
    }

    /// Added before every answer.
    pub fn set_latency(&self, latency: Duration) {
        lock(&self.state).latency = latency;
    }

    /// Withdraws (`true`) or restores `manage_own_api_key`: `_has_privileges` then reports it
    /// false, and every API-key call (create, get, query, invalidate, update) answers 403
    /// `security_exception`.
    pub fn set_missing_privilege(&self, missing: bool) {
        lock(&self.state).missing_privilege = missing;
    }

    /// Every key ever created, in creation order.
    pub fn keys(&self) -> Vec<KeyRecord> {
        lock(&self.state).keys.iter().map(|k| k.record.clone()).collect()
    }

    /// The keys not invalidated.
    pub fn valid_keys(&self) -> Vec<KeyRecord> {
        self.keys().into_iter().filter(|k| !k.invalidated).collect()
    }

    /// The key an agent holding `api_key` ("id:key", not base64) would authenticate as: it
    /// exists, the secret matches, and it is neither invalidated nor expired.
    pub fn authenticate(&self, api_key: &str) -> Option<KeyRecord> {
        let (id, secret) = api_key.split_once(':')?;
        let now = api::now_ms();
        lock(&self.state)
            .keys
            .iter()
            .find(|k| k.record.id == id && k.record.api_key == secret && k.active(now))
            .map(|k| k.record.clone())
    }

    /// Every request that did not conform to the spec (or that Elasticsearch would refuse
    /// for how it was made), as "METHOD /path?query: what was wrong".
    pub fn violations(&self) -> Vec<String> {
        lock(&self.state).violations.clone()
    }

    /// Every request received, in order.
    pub fn requests(&self) -> Vec<RequestRecord> {
        lock(&self.state).requests.clone()
    }

    /// Closes the listener and every open connection: connecting is refused until
    /// [`resume_listening`](Self::resume_listening).
    pub fn stop_listening(&self) {
        let listening = self.listening.lock().unwrap_or_else(PoisonError::into_inner).take();
        if let Some(Listening { stop, stopped }) = listening {
            let _ = stop.send(());
            // Wait until the socket is closed, so a connect right after this call is refused.
            let _ = stopped.recv_timeout(Duration::from_secs(10));
        }
    }

    /// Listens again on the same port.
    pub fn resume_listening(&self) {
        if self.listening.lock().unwrap_or_else(PoisonError::into_inner).is_some() {
            return;
        }
        let mut tries = 0;
        let listener = loop {
            match bind(self.runtime(), self.port) {
                Ok(listener) => break listener,
                Err(e) if tries < 50 => {
                    tries += 1;
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => panic!("cannot listen on 127.0.0.1:{} again: {e}", self.port),
            }
        };
        self.listen(listener);
    }
}

impl Drop for ElasticDouble {
    fn drop(&mut self) {
        // Not `Runtime::drop`: that blocks, and panics inside an async test's runtime.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

fn bind(runtime: &Runtime, port: u16) -> std::io::Result<TcpListener> {
    let _context = runtime.enter();
    let socket = tokio::net::TcpSocket::new_v4()?;
    // The same port again after `stop_listening`, whatever connections linger in TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket.bind(SocketAddr::from(([127, 0, 0, 1], port)))?;
    socket.listen(1024)
}

/// A fresh CA and a server certificate it signs for `localhost` and `127.0.0.1`.
fn tls_acceptor() -> (TlsAcceptor, String) {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };
    use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.distinguished_name.push(DnType::CommonName, "ferry-testkit Elasticsearch double CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca_params.self_signed(&ca_key).expect("CA certificate");
    let ca_pem = ca_cert.pem();
    let issuer = Issuer::new(ca_params, ca_key);
    let server_key = KeyPair::generate().expect("server key");
    // `CertificateParams::new` makes an IP SAN of a name that parses as an address.
    let mut params = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
        .expect("server params");
    params.distinguished_name.push(DnType::CommonName, "localhost");
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = params.signed_by(&server_key, &issuer).expect("server certificate");
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(server_key.serialize_der()));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(vec![cert.der().clone()], key)
        .expect("server TLS config");
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    (TlsAcceptor::from(Arc::new(config)), ca_pem)
}

async fn accept_loop(
    listener: TcpListener,
    state: Shared,
    tls: Option<TlsAcceptor>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    // The connections live in this set, so stopping closes them with the listener.
    let mut connections = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                if lock(&state).fault == Fault::CloseConnections {
                    // Linger 0: the close is a reset, not an orderly end of stream.
                    let _ = stream.set_zero_linger();
                    drop(stream);
                    continue;
                }
                connections.spawn(serve_connection(stream, state.clone(), tls.clone()));
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    connections.shutdown().await;
}

async fn serve_connection(stream: TcpStream, state: Shared, tls: Option<TlsAcceptor>) {
    let _ = stream.set_nodelay(true);
    let service = hyper::service::service_fn(move |req| answer(state.clone(), req));
    let http = hyper::server::conn::http1::Builder::new();
    match tls {
        Some(acceptor) => {
            if let Ok(stream) = acceptor.accept(stream).await {
                let _ = http.serve_connection(TokioIo::new(stream), service).await;
            }
        }
        None => {
            let _ = http.serve_connection(TokioIo::new(stream), service).await;
        }
    }
}

/// The service's error: hyper closes the connection without an answer.
#[derive(Debug)]
struct Unanswered;

impl std::fmt::Display for Unanswered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection dropped without an answer")
    }
}

impl std::error::Error for Unanswered {}

async fn answer(
    state: Shared,
    req: hyper::Request<Incoming>,
) -> Result<hyper::Response<Full<Bytes>>, Unanswered> {
    let method = req.method().as_str().to_owned();
    let target = req
        .uri()
        .path_and_query()
        .map_or_else(|| req.uri().path().to_owned(), |p| p.as_str().to_owned());
    let header = |name| {
        req.headers()
            .get(name)
            .and_then(|v: &hyper::header::HeaderValue| v.to_str().ok())
            .map(str::to_owned)
    };
    let (authorization, content_type) = (header(AUTHORIZATION), header(CONTENT_TYPE));
    let body = req.into_body().collect().await.map_err(|_| Unanswered)?.to_bytes();
    let record = |status: u16| {
        lock(&state).requests.push(RequestRecord {
            method: method.clone(),
            path: target.clone(),
            status,
        });
    };
    let (fault, latency) = {
        let s = lock(&state);
        (s.fault.clone(), s.latency)
    };
    // Faults are Elasticsearch's trouble as the appliance meets it: its security calls and its
    // artifact searches (not Kibana's writes, which set a test up).
    if target.starts_with("/_security") || target.starts_with("/.fleet-artifacts/_search") {
        match fault {
            Fault::Hang => {
                record(0);
                // Until the client gives up, the listener stops or the double is dropped.
                match std::future::pending::<std::convert::Infallible>().await {}
            }
            Fault::Status(status) => {
                tokio::time::sleep(latency).await;
                record(status);
                return Ok(response(&api::fault_answer(status)));
            }
            _ => {}
        }
    }
    let (answer, lose) = {
        let mut s = lock(&state);
        let request = api::Request {
            method: &method,
            target: &target,
            authorization: authorization.as_deref(),
            content_type: content_type.as_deref(),
            body: &body,
        };
        let answer = api::dispatch(&mut s, &request);
        let lose = answer.created && s.lose_after_create();
        (answer, lose)
    };
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    if lose {
        record(0);
        return Err(Unanswered);
    }
    record(answer.status);
    Ok(response(&answer))
}

fn response(answer: &api::Answer) -> hyper::Response<Full<Bytes>> {
    let mut builder = hyper::Response::builder()
        .status(answer.status)
        .header(CONTENT_TYPE, "application/json")
        // Elasticsearch 8's clients refuse a server that does not say it is Elasticsearch.
        .header("X-elastic-product", "Elasticsearch");
    if answer.challenge {
        for challenge in api::CHALLENGES {
            builder = builder.header(WWW_AUTHENTICATE, *challenge);
        }
    }
    if let Some(allow) = &answer.allow {
        builder = builder.header(ALLOW, allow.as_str());
    }
    builder.body(Full::new(Bytes::from(answer.body.to_string()))).expect("a valid response")
}
