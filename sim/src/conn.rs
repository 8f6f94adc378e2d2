//! One simulated agent's HTTP connection: HTTP/1.1 keep-alive over TCP (optionally TLS) from a
//! chosen loopback source address, reconnecting when the server closes it; or over a Unix
//! socket, for the appliance's admin API.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;

/// Where requests go: a base URL's address, host name and path prefix.
#[derive(Clone, Debug)]
pub struct Endpoint {
    pub tls: bool,
    pub host: String,
    pub addr: SocketAddr,
    /// The URL's path, without a trailing slash (`""` for the root).
    pub prefix: String,
    /// A Unix socket to connect to instead of `addr` (the appliance's admin API).
    pub unix: Option<PathBuf>,
}

impl Endpoint {
    /// Parses `http[s]://host[:port][/prefix]`; the host must resolve.
    pub fn parse(url: &str) -> anyhow::Result<Self> {
        let (tls, rest) = if let Some(r) = url.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("http://") {
            (false, r)
        } else {
            anyhow::bail!("{url}: not an http:// or https:// URL");
        };
        let (authority, prefix) = rest.split_once('/').map_or((rest, ""), |(a, p)| (a, p));
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) => (h, p.parse().map_err(|_| anyhow::anyhow!("{url}: bad port"))?),
            None => (authority, if tls { 443 } else { 80 }),
        };
        let addr = std::net::ToSocketAddrs::to_socket_addrs(&(host, port))?
            .next()
            .ok_or_else(|| anyhow::anyhow!("{url}: {host} does not resolve"))?;
        let prefix = format!("/{}", prefix.trim_end_matches('/'));
        let prefix = if prefix == "/" { String::new() } else { prefix };
        Ok(Self { tls, host: host.to_owned(), addr, prefix, unix: None })
    }

    /// Plain HTTP over the Unix socket at `path`, as `Host: localhost`.
    pub fn unix(path: &Path) -> Self {
        Self {
            tls: false,
            host: "localhost".into(),
            // Never dialled: `unix` is.
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            prefix: String::new(),
            unix: Some(path.to_owned()),
        }
    }
}

/// What went wrong with a request, by kind (the simulator counts errors by these names).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    Connect,
    Tls,
    /// The connection broke during the request.
    Transport,
    Timeout,
    /// An HTTP status other than the one expected.
    Status(u16),
    /// A response that does not parse or says something impossible.
    Protocol(String),
}

impl Failure {
    pub fn kind(&self) -> String {
        match self {
            Failure::Connect => "connect".into(),
            Failure::Tls => "tls".into(),
            Failure::Transport => "transport".into(),
            Failure::Timeout => "timeout".into(),
            Failure::Status(s) => format!("http-{s}"),
            Failure::Protocol(_) => "protocol".into(),
        }
    }
}

pub struct Response {
    pub status: u16,
    pub body: Bytes,
}

/// A keep-alive connection that reconnects on demand.
pub struct Conn {
    endpoint: Arc<Endpoint>,
    tls: Option<Arc<rustls::ClientConfig>>,
    source: Option<IpAddr>,
    sender: Option<hyper::client::conn::http1::SendRequest<Full<Bytes>>>,
}

impl Conn {
    pub fn new(
        endpoint: Arc<Endpoint>,
        tls: Option<Arc<rustls::ClientConfig>>,
        source: Option<IpAddr>,
    ) -> Self {
        Self { endpoint, tls, source, sender: None }
    }

    async fn connect(&mut self) -> Result<(), Failure> {
        let stream = open(&self.endpoint, self.tls.as_ref(), self.source).await?;
        self.sender = Some(handshake(TokioIo::new(stream)).await?);
        Ok(())
    }

    /// Drops the connection (a restarted agent process opens a new one).
    pub fn reset(&mut self) {
        self.sender = None;
    }

    /// Sends one request, reconnecting first if needed; waits at most `timeout`.
    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
        timeout: Duration,
    ) -> Result<Response, Failure> {
        if self.sender.as_ref().is_none_or(|s| s.is_closed()) {
            self.connect().await?;
        }
        let sender = self.sender.as_mut().expect("connected");
        sender.ready().await.map_err(|_| Failure::Transport)?;
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.endpoint.prefix))
            .header(hyper::header::HOST, &self.endpoint.host);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Full::new(body)).map_err(|e| Failure::Protocol(e.to_string()))?;
        let exchange = async {
            let resp = sender.send_request(req).await.map_err(|_| Failure::Transport)?;
            let status = resp.status().as_u16();
            let body = resp.into_body().collect().await.map_err(|_| Failure::Transport)?.to_bytes();
            Ok(Response { status, body })
        };
        match tokio::time::timeout(timeout, exchange).await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => {
                self.sender = None;
                Err(e)
            }
            Err(_) => {
                self.sender = None;
                Err(Failure::Timeout)
            }
        }
    }
}

/// A byte stream to the server, plain or TLS (boxed so both kinds fit one type).
pub trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}
pub type Stream = Box<dyn Io>;

/// Opens a connection from `source` (if given) to `endpoint`, with the TLS handshake done
/// when the endpoint is `https://`.
pub async fn open(
    endpoint: &Endpoint,
    tls: Option<&Arc<rustls::ClientConfig>>,
    source: Option<IpAddr>,
) -> Result<Stream, Failure> {
    if let Some(path) = &endpoint.unix {
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::UnixStream::connect(path))
            .await
            .map_err(|_| Failure::Timeout)?
            .map_err(|_| Failure::Connect)?;
        return Ok(Box::new(stream));
    }
    let stream = open_tcp(endpoint, source).await?;
    if !endpoint.tls {
        return Ok(Box::new(stream));
    }
    let config = tls.cloned().ok_or(Failure::Tls)?;
    let name =
        rustls::pki_types::ServerName::try_from(endpoint.host.clone()).map_err(|_| Failure::Tls)?;
    let tls = tokio::time::timeout(
        CONNECT_TIMEOUT,
        tokio_rustls::TlsConnector::from(config).connect(name, stream),
    )
    .await
    .map_err(|_| Failure::Timeout)?
    .map_err(|_| Failure::Tls)?;
    Ok(Box::new(tls))
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// A bare TCP connection from `source` (if given) to `endpoint`'s address, no TLS.
pub async fn open_tcp(
    endpoint: &Endpoint,
    source: Option<IpAddr>,
) -> Result<tokio::net::TcpStream, Failure> {
    let socket = match endpoint.addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
    }
    .map_err(|_| Failure::Connect)?;
    if let Some(ip) = source {
        socket.bind(SocketAddr::new(ip, 0)).map_err(|_| Failure::Connect)?;
    }
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, socket.connect(endpoint.addr))
        .await
        .map_err(|_| Failure::Timeout)?
        .map_err(|_| Failure::Connect)?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

async fn handshake<I>(
    io: TokioIo<I>,
) -> Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>, Failure>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, connection) =
        hyper::client::conn::http1::handshake(io).await.map_err(|_| Failure::Transport)?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

/// A rustls client configuration trusting only the certificates in `ca_file` (PEM).
pub fn client_tls(ca_file: &std::path::Path) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    client_tls_pem(&std::fs::read(ca_file)?)
}

/// A rustls client configuration trusting only the certificates in `pem`; none at all when it
/// holds none (the simulator has no system trust store, so nothing else is trusted either).
pub fn client_tls_pem(pem: &[u8]) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem) {
        roots.add(cert?)?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        let e = Endpoint::parse("https://127.0.0.1:8220/downloads/").unwrap();
        assert!(e.tls);
        assert_eq!(
            (e.host.as_str(), e.addr.port(), e.prefix.as_str()),
            ("127.0.0.1", 8220, "/downloads")
        );
        let e = Endpoint::parse("http://localhost:8080").unwrap();
        assert_eq!((e.tls, e.prefix.as_str()), (false, ""));
        assert!(Endpoint::parse("ftp://x").is_err());
    }
}
