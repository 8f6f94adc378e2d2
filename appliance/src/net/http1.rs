//! HTTP/1.1 connections, served by our own small loop around the axum router.
//!
//! Why not hyper's server: a parked check-in holds its request for minutes, and hyper keeps a
//! connection's working buffers for as long as a request is in flight (a 16 KiB read buffer,
//! 8 KiB for response heads, several KiB of state), which made up most of what a parked agent
//! cost. Here a connection owns a buffer only while it reads a request head or body; while the
//! router works on the request, the connection holds the socket, a 64-byte probe for the
//! client going away, and the router's future.
//!
//! The parser is `httparse` (the one hyper uses). Framing is strict: a body is delimited by
//! one `Content-Length` or by `Transfer-Encoding: chunked`, never both, and anything ambiguous
//! is a 400 followed by closing the connection.

use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{
    HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Version, header,
};
use http_body_util::BodyExt as _;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

use crate::net::later::Later;
use crate::net::sendfile::{FileRange, ZeroCopy};

/// The largest request head (Fleet Server's `max_header_byte_size`).
pub(crate) const MAX_HEAD: usize = 8 << 10;
/// After refusing a body declared too large, up to this much of it is read and dropped (into a
/// small scratch buffer) so that a client which writes its whole body before reading, as many
/// do, still gets to read the 413. Larger bodies are cut off. (Go's server drains 256 KiB; Go
/// clients read the answer while writing, other clients do not.)
const DRAIN_AFTER_413: usize = 8 << 20;
const MAX_HEADERS: usize = 64;
/// How long a request whose client closed its sending side is still answered (see `serve`):
/// longer than any request but a parked check-in takes under load, far shorter than the five
/// minutes of a long poll.
const HALF_CLOSE_GRACE: Duration = Duration::from_secs(30);
/// The most a body buffer grows by before more of the body has arrived.
const BODY_STEP: usize = 64 << 10;
/// A response body of at most this many bytes (declared) is written together with its head:
/// one TLS record's worth of plaintext.
const INLINE_BODY: usize = 16 << 10;

/// How one connection is served.
#[derive(Clone, Debug)]
pub(crate) struct ConnLimits {
    /// Time allowed for a request head to arrive, idle time between requests included.
    pub header_timeout: Duration,
    /// Time allowed for a declared body to arrive.
    pub body_timeout: Duration,
    /// The largest body read for a request, by method and path: larger ones are refused from
    /// their head (413), before their bytes are read.
    pub body_limit: fn(&Method, &str) -> usize,
    /// True once the server is stopping or draining: every response then closes its
    /// connection, and so does a connection idle between requests, so the client's next request
    /// opens a new one (to the server taking over, after the restart, or to another instance
    /// behind the load balancer) instead of meeting a connection closed under it.
    pub closing: tokio::sync::watch::Receiver<bool>,
}

/// Why a connection ended early; only logged.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("timed out")]
    Timeout,
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    #[error("too large: {0}")]
    TooLarge(&'static str),
    /// A handler's streamed body did not match the `Content-Length` it declared: the response
    /// is cut at what was declared, or short, and the connection closed, so the client sees a
    /// broken response rather than a wrong one or the next response's bytes as this one's.
    #[error("response body of {sent} bytes where {declared} were declared")]
    BodyLength { declared: u64, sent: u64 },
}

/// A parsed request head: what the router needs, owned (no reference into the read buffer,
/// which is freed before the request is handled).
struct Head {
    method: Method,
    target: String,
    version: Version,
    headers: HeaderMap,
}

enum Framing {
    None,
    Length(usize),
    Chunked,
}

/// The address a request came from, in every request's extensions when the connection has
/// one (TCP): what per-address limits count by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ClientAddr(pub std::net::IpAddr);

/// Serves HTTP/1.1 requests on `io` until the client closes, asks to close, or breaks a rule.
/// `peer` (the client's address, when the transport has one) goes into each request as a
/// [`ClientAddr`]. A response marked with a [`FileRange`] goes out with `sendfile(2)` when `io`
/// is plain TCP ([`ZeroCopy`]).
pub(crate) async fn serve<I>(
    mut io: I,
    app: Router,
    limits: ConnLimits,
    peer: Option<std::net::IpAddr>,
) -> Result<(), ConnError>
where
    I: AsyncRead + AsyncWrite + ZeroCopy + Unpin,
{
    // Bytes of the next request that arrived with the previous one (pipelining).
    let mut pending: Vec<u8> = Vec::new();
    let mut closing = limits.closing.clone();
    // A new connection's first request is always read and answered (a health check, an agent
    // that just connected): closing ends connections only between requests.
    let mut first = true;
    loop {
        let next = async {
            if !first && pending.is_empty() {
                match idle(&mut io, &mut pending, &mut closing).await? {
                    Idle::Request => {}
                    Idle::ClientGone => return Ok(None),
                    Idle::Closing => return Ok(Some(None)),
                }
            }
            Ok(read_head(&mut io, std::mem::take(&mut pending)).await?.map(Some))
        };
        let (head, mut buf) = match tokio::time::timeout(limits.header_timeout, next).await {
            Ok(Ok(Some(Some(head)))) => head,
            Ok(Ok(None)) => return Ok(()),
            // Idle while the server closes: a clean end (close_notify over TLS), which clients
            // take as a connection to open anew, not as a failed request.
            Ok(Ok(Some(None))) => {
                io.shutdown().await?;
                return Ok(());
            }
            Ok(Err(e)) => {
                return Err(refuse(&mut io, e, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE).await);
            }
            Err(_) => return Err(ConnError::Timeout),
        };
        let (head, framing) = match check_head(head) {
            Ok(h) => h,
            Err((status, why)) => {
                write_simple(&mut io, status).await?;
                return Err(ConnError::BadRequest(why));
            }
        };
        let close = wants_close(&head);
        let uri: axum::http::Uri =
            head.target.parse().map_err(|_| ConnError::BadRequest("request target"))?;
        let max_body = (limits.body_limit)(&head.method, uri.path());
        if let Framing::Length(n) = framing
            && n > max_body
        {
            // What arrived with the head counts toward the drain.
            let drain = if n <= DRAIN_AFTER_413 { n.saturating_sub(buf.len()) } else { 0 };
            return Err(too_large(&mut io, max_body, drain).await);
        }
        if head
            .headers
            .get(header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
        {
            io.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await?;
        }
        let read = tokio::time::timeout(
            limits.body_timeout,
            read_body(&mut io, &mut buf, &framing, max_body),
        );
        let body = match read.await {
            Ok(Ok(b)) => b,
            Ok(Err(ConnError::TooLarge(_))) => return Err(too_large(&mut io, max_body, 0).await),
            Ok(Err(e)) => return Err(refuse(&mut io, e, StatusCode::PAYLOAD_TOO_LARGE).await),
            Err(_) => return Err(ConnError::Timeout),
        };
        // Whatever follows the body belongs to the next request; the buffer itself goes.
        pending = buf;
        pending.shrink_to_fit();
        let is_head = head.method == Method::HEAD;
        let http10 = head.version == Version::HTTP_10;
        let mut request = Request::new(Body::from(body));
        *request.method_mut() = head.method;
        *request.version_mut() = head.version;
        *request.headers_mut() = head.headers;
        *request.uri_mut() = uri;
        if let Some(peer) = peer {
            request.extensions_mut().insert(ClientAddr(peer));
        }
        // A long poll's answer comes after the router's layers are done with it (`Later`).
        let call = async {
            let response = match tower::ServiceExt::oneshot(app.clone(), request).await {
                Ok(r) => r,
                Err(e) => match e {},
            };
            Later::finish(response).await
        };
        tokio::pin!(call);
        let mut half_closed = false;
        let response = tokio::select! {
            r = &mut call => r,
            gone = watch_client(&mut io, &mut pending) => {
                // The client broke the connection: drop the request, which un-parks a
                // check-in.
                gone?;
                // The client closed its side. Either it went away, or it only half-closed
                // after sending its request (`nc -N`, some scripts) and still reads: a read
                // cannot tell which. The answer is waited for a while and written, then the
                // connection closes; a request still running then (a parked check-in) is
                // dropped, so the departed do not hold their place for a whole long poll.
                half_closed = true;
                match tokio::time::timeout(HALF_CLOSE_GRACE, &mut call).await {
                    Ok(r) => r,
                    Err(_) => return Ok(()),
                }
            }
        };
        first = false;
        let close = close || half_closed || *closing.borrow();
        if write_response(&mut io, response, is_head, close, http10).await? {
            io.shutdown().await?;
            return Ok(());
        }
    }
}

/// How a keep-alive connection's idle time between requests ended.
enum Idle {
    /// The first bytes of the next request arrived (they are in `pending`).
    Request,
    /// The client closed the connection.
    ClientGone,
    /// The server started closing (stopping or draining) first.
    Closing,
}

/// Waits, between requests, for the next request's first bytes or for the server to start
/// closing. Without this, a client holding a keep-alive connection to a draining server would
/// send its next request on it, to the same server, rather than through the load balancer to
/// another.
async fn idle<I: AsyncRead + Unpin>(
    io: &mut I,
    pending: &mut Vec<u8>,
    closing: &mut tokio::sync::watch::Receiver<bool>,
) -> Result<Idle, ConnError> {
    let mut probe = [0u8; 64];
    tokio::select! {
        // Cancel-safe: a read not yet completed has taken nothing from the connection.
        read = io.read(&mut probe) => {
            let n = read?;
            if n == 0 {
                return Ok(Idle::ClientGone);
            }
            pending.extend_from_slice(&probe[..n]);
            Ok(Idle::Request)
        }
        // The guard `wait_for` gives is dropped inside: it must not live across an await.
        closed = async { closing.wait_for(|closing| *closing).await.is_ok() } => {
            if closed {
                return Ok(Idle::Closing);
            }
            // No one can close this connection any more (a test's limits): wait for the client.
            let n = io.read(&mut probe).await?;
            pending.extend_from_slice(&probe[..n]);
            Ok(if n == 0 { Idle::ClientGone } else { Idle::Request })
        }
    }
}

/// Reads one request head, starting with `buf` (bytes already received). `None` when the
/// client closed the connection cleanly between requests. Returns the head and the bytes
/// after it.
async fn read_head<I: AsyncRead + Unpin>(
    io: &mut I,
    mut buf: Vec<u8>,
) -> Result<Option<(Head, Vec<u8>)>, ConnError> {
    loop {
        if !buf.is_empty() {
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut req = httparse::Request::new(&mut headers);
            match req.parse(&buf) {
                Ok(httparse::Status::Complete(len)) => {
                    let head = own_head(&req)?;
                    let rest = buf.split_off(len);
                    return Ok(Some((head, rest)));
                }
                Ok(httparse::Status::Partial) => {}
                Err(_) => return Err(ConnError::BadRequest("malformed request head")),
            }
        }
        if buf.len() >= MAX_HEAD {
            return Err(ConnError::TooLarge("request head"));
        }
        // Grow in small steps: most heads are a few hundred bytes.
        let start = buf.len();
        buf.resize((start + 1024).min(MAX_HEAD), 0);
        let n = io.read(&mut buf[start..]).await?;
        buf.truncate(start + n);
        if n == 0 {
            return if start == 0 {
                Ok(None)
            } else {
                Err(ConnError::BadRequest("connection closed mid-head"))
            };
        }
    }
}

fn own_head(req: &httparse::Request<'_, '_>) -> Result<Head, ConnError> {
    let method = Method::from_bytes(req.method.unwrap_or("").as_bytes())
        .map_err(|_| ConnError::BadRequest("method"))?;
    let target = req.path.unwrap_or("");
    if !target.starts_with('/') {
        return Err(ConnError::BadRequest("request target must be a path"));
    }
    let version = match req.version {
        Some(1) => Version::HTTP_11,
        Some(0) => Version::HTTP_10,
        _ => return Err(ConnError::BadRequest("HTTP version")),
    };
    let mut headers = HeaderMap::with_capacity(req.headers.len());
    for h in req.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|_| ConnError::BadRequest("header name"))?;
        let value =
            HeaderValue::from_bytes(h.value).map_err(|_| ConnError::BadRequest("header value"))?;
        headers.append(name, value);
    }
    Ok(Head { method, target: target.to_owned(), version, headers })
}

/// The body's framing, refusing what request smuggling is made of: both framings, several
/// lengths, codings other than chunked.
fn check_head(head: Head) -> Result<(Head, Framing), (StatusCode, &'static str)> {
    let bad = |why| Err((StatusCode::BAD_REQUEST, why));
    let lengths: Vec<&HeaderValue> = head.headers.get_all(header::CONTENT_LENGTH).iter().collect();
    let codings: Vec<&HeaderValue> =
        head.headers.get_all(header::TRANSFER_ENCODING).iter().collect();
    let framing = match (lengths.as_slice(), codings.as_slice()) {
        ([], []) => Framing::None,
        ([len], []) => {
            let text = len.to_str().unwrap_or("");
            if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) || text.len() > 12 {
                return bad("Content-Length");
            }
            Framing::Length(text.parse().map_err(|_| (StatusCode::BAD_REQUEST, "Content-Length"))?)
        }
        ([], [te]) if te.as_bytes().eq_ignore_ascii_case(b"chunked") => {
            if head.version != Version::HTTP_11 {
                return bad("chunked body in HTTP/1.0");
            }
            Framing::Chunked
        }
        ([], _) => return Err((StatusCode::NOT_IMPLEMENTED, "transfer coding")),
        _ => return bad("ambiguous body framing"),
    };
    Ok((head, framing))
}

fn wants_close(head: &Head) -> bool {
    let connection = |token: &[u8]| {
        head.headers.get_all(header::CONNECTION).iter().any(|v| {
            v.as_bytes().split(|b| *b == b',').any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
        })
    };
    match head.version {
        Version::HTTP_10 => !connection(b"keep-alive"),
        _ => connection(b"close"),
    }
}

/// Reads the body; `buf` holds bytes already received and is left holding what follows it.
async fn read_body<I: AsyncRead + Unpin>(
    io: &mut I,
    buf: &mut Vec<u8>,
    framing: &Framing,
    max: usize,
) -> Result<Bytes, ConnError> {
    match *framing {
        Framing::None => Ok(Bytes::new()),
        Framing::Length(n) => Ok(take(io, buf, n).await?.into()),
        Framing::Chunked => {
            let mut body = Vec::new();
            loop {
                let line = take_line(io, buf).await?;
                let size_text = line.split(|b| *b == b';').next().unwrap_or(&[]).trim_ascii();
                let size = std::str::from_utf8(size_text)
                    .ok()
                    .filter(|t| !t.is_empty() && t.len() <= 8)
                    .and_then(|t| usize::from_str_radix(t, 16).ok())
                    .ok_or(ConnError::BadRequest("chunk size"))?;
                if size == 0 {
                    // Trailers are read and dropped up to the empty line.
                    while !take_line(io, buf).await?.is_empty() {}
                    return Ok(body.into());
                }
                if body.len() + size > max {
                    return Err(ConnError::TooLarge("chunked body"));
                }
                body.extend_from_slice(&take(io, buf, size).await?);
                if !take_line(io, buf).await?.is_empty() {
                    return Err(ConnError::BadRequest("chunk not followed by CRLF"));
                }
            }
        }
    }
}

/// Takes exactly `n` bytes: first from `buf`, then from the connection.
async fn take<I: AsyncRead + Unpin>(
    io: &mut I,
    buf: &mut Vec<u8>,
    n: usize,
) -> Result<Vec<u8>, ConnError> {
    if buf.len() >= n {
        let rest = buf.split_off(n);
        return Ok(std::mem::replace(buf, rest));
    }
    // Grown as bytes arrive, not to `n` at once: a client declaring a large body and sending
    // it slowly must not make the server hold the whole declared size meanwhile.
    let mut out = std::mem::take(buf);
    while out.len() < n {
        let missing = n - out.len();
        if out.len() == out.capacity() {
            // Exact: doubling would leave a body holding up to twice its size.
            out.reserve_exact(missing.min(BODY_STEP));
        }
        // Never past the body: what follows belongs to the next request's head.
        if (&mut *io).take(missing as u64).read_buf(&mut out).await? == 0 {
            return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
        }
    }
    Ok(out)
}

/// Takes one CRLF-terminated line (without the CRLF), at most 4 KiB.
async fn take_line<I: AsyncRead + Unpin>(
    io: &mut I,
    buf: &mut Vec<u8>,
) -> Result<Vec<u8>, ConnError> {
    loop {
        if let Some(end) = buf.windows(2).position(|w| w == b"\r\n") {
            let mut line = take(io, buf, end + 2).await?;
            line.truncate(end);
            return Ok(line);
        }
        if buf.len() > 4096 {
            return Err(ConnError::BadRequest("line too long"));
        }
        let start = buf.len();
        buf.resize(start + 512, 0);
        let n = io.read(&mut buf[start..]).await?;
        buf.truncate(start + n);
        if n == 0 {
            return Err(ConnError::BadRequest("connection closed mid-body"));
        }
    }
}

/// Waits while the router works; returns when the client closed (or broke) the connection.
/// Bytes that arrive meanwhile (a pipelined request) are kept for later, up to a head's size.
async fn watch_client<I: AsyncRead + Unpin>(
    io: &mut I,
    pending: &mut Vec<u8>,
) -> Result<(), ConnError> {
    let mut probe = [0u8; 64];
    loop {
        let n = io.read(&mut probe).await?;
        if n == 0 {
            return Ok(());
        }
        if pending.len() + n > MAX_HEAD {
            return Err(ConnError::BadRequest("too much pipelined data"));
        }
        pending.extend_from_slice(&probe[..n]);
    }
}

/// Answers a request that cannot be served (400, or `too_large` for a [`ConnError::TooLarge`])
/// before the connection is closed; i/o errors and timeouts get no answer.
async fn refuse<I: AsyncWrite + Unpin>(
    io: &mut I,
    error: ConnError,
    too_large: StatusCode,
) -> ConnError {
    let status = match &error {
        ConnError::BadRequest(_) => StatusCode::BAD_REQUEST,
        ConnError::TooLarge(_) => too_large,
        ConnError::Io(_) | ConnError::Timeout | ConnError::BodyLength { .. } => return error,
    };
    match write_simple(io, status).await {
        Ok(()) => error,
        Err(e) => e,
    }
}

/// Answers 413 with Fleet Server's error body (the same as the routes' own refusals), reads and
/// drops up to `drain` more bytes for at most two seconds, and ends the connection.
async fn too_large<I: AsyncRead + AsyncWrite + Unpin>(
    io: &mut I,
    max: usize,
    drain: usize,
) -> ConnError {
    let body = serde_json::json!({ "statusCode": 413, "error": "ErrPayloadSizeTooLarge",
        "message": format!("the request body is larger than {max} bytes") })
    .to_string();
    let text = format!(
        "HTTP/1.1 413 Payload Too Large\r\ncontent-type: application/json; charset=utf-8\r\n\
         x-content-type-options: nosniff\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    if let Err(e) = io.write_all(text.as_bytes()).await {
        return e.into();
    }
    let _ = io.flush().await;
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        // On the heap: an array here would sit in every connection's task, parked or not,
        // since a future is as large as its largest state (16 KiB of the 18 a parked
        // connection's task took, measured with `size_of_val` on `serve`'s future).
        let mut scratch = vec![0u8; 16 << 10];
        let mut left = drain;
        while left > 0 {
            match io.read(&mut scratch[..left.min(16 << 10)]).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left -= n,
            }
        }
    })
    .await;
    ConnError::TooLarge("body over the route's cap")
}

fn reason(status: StatusCode) -> &'static str {
    status.canonical_reason().unwrap_or("")
}

/// A response without a body, for refusals made before there is a request to route.
async fn write_simple<I: AsyncWrite + Unpin>(
    io: &mut I,
    status: StatusCode,
) -> Result<(), ConnError> {
    let text = format!(
        "HTTP/1.1 {} {}\r\ncontent-length: 0\r\nx-content-type-options: nosniff\r\nconnection: close\r\n\r\n",
        status.as_u16(),
        reason(status)
    );
    io.write_all(text.as_bytes()).await?;
    io.flush().await?;
    Ok(())
}

/// Writes a response (its body as declared: `Content-Length`, chunked, or for an HTTP/1.0 client
/// of a body of unknown length, up to the end of the connection); returns whether the
/// connection closes after it. A body that is a [`FileRange`] of its declared length goes from
/// the file to the socket with `sendfile(2)` when the connection is plain TCP.
async fn write_response<I: AsyncWrite + ZeroCopy + Unpin>(
    io: &mut I,
    response: Response<Body>,
    is_head: bool,
    close: bool,
    http10: bool,
) -> Result<bool, ConnError> {
    use std::fmt::Write as _;
    let (mut parts, mut body) = response.into_parts();
    let file = parts.extensions.remove::<FileRange>();
    let length = match parts.headers.get(header::CONTENT_LENGTH) {
        Some(v) => v.to_str().ok().and_then(|t| t.parse::<u64>().ok()),
        None => http_body::Body::size_hint(&body).exact(),
    };
    let no_body = is_head
        || parts.status.is_informational()
        || parts.status == StatusCode::NO_CONTENT
        || parts.status == StatusCode::NOT_MODIFIED;
    let mut head = String::with_capacity(256);
    let _ = write!(head, "HTTP/1.1 {} {}\r\n", parts.status.as_u16(), reason(parts.status));
    let mut head = head.into_bytes();
    for (name, value) in &parts.headers {
        if name == header::CONNECTION || name == header::TRANSFER_ENCODING {
            continue;
        }
        // Values are written as their bytes: one that is not ASCII (obs-text) is the
        // handler's to send, not ours to blank.
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    // An HTTP/1.0 client cannot read chunked encoding: a body of unknown length goes to it
    // delimited by the end of the connection instead.
    let close_delimited = length.is_none() && !no_body && http10;
    let close = close || close_delimited;
    let chunked = length.is_none() && !no_body && !http10;
    if let (Some(n), None) = (length, parts.headers.get(header::CONTENT_LENGTH))
        && !(no_body && n == 0 && parts.status == StatusCode::NOT_MODIFIED)
    {
        head.extend_from_slice(format!("content-length: {n}\r\n").as_bytes());
    }
    if chunked {
        head.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    if close {
        head.extend_from_slice(b"connection: close\r\n");
    }
    head.extend_from_slice(b"\r\n");
    // Zero copy: only a body of exactly its declared length (not chunked, not cut at the end of
    // the connection), and only when nothing transforms the bytes on their way to the socket.
    let zero_copy = file.filter(|f| !no_body && length == Some(f.len()) && io.socket().is_some());
    // A small body goes out with its head, in one write: one TLS record and one segment
    // instead of two, so one syscall here and one wake-up of the client (Go's server does the
    // same through its 4 KiB buffer). Every API answer is such a body; at a policy change each
    // agent gets two of them within a second.
    if zero_copy.is_none() && !no_body && length.is_some_and(|n| n <= INLINE_BODY as u64) {
        let declared = length.unwrap_or_default();
        let start = head.len();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| std::io::Error::other(e.to_string()))?;
            if let Ok(data) = frame.into_data() {
                head.extend_from_slice(&data);
            }
            if (head.len() - start) as u64 > declared {
                break;
            }
        }
        let sent = (head.len() - start) as u64;
        head.truncate(start + usize::try_from(sent.min(declared)).unwrap_or(usize::MAX));
        io.write_all(&head).await?;
        io.flush().await?;
        return match sent == declared {
            true => Ok(close),
            false => Err(ConnError::BodyLength { declared, sent }),
        };
    }
    io.write_all(&head).await?;
    drop(head);
    if let Some(file) = zero_copy {
        // The head goes first: whatever the transport holds back is on the socket before the
        // file's bytes are.
        io.flush().await?;
        if let Some(socket) = io.socket() {
            drop(body);
            let sent = crate::net::sendfile::send(socket, &file).await?;
            if sent != file.len() {
                // Truncated under us: cut, and the connection closes (as for a streamed body).
                return Err(ConnError::BodyLength { declared: file.len(), sent });
            }
            return Ok(close);
        }
    }
    if !no_body {
        let mut sent: u64 = 0;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| std::io::Error::other(e.to_string()))?;
            let Ok(data) = frame.into_data() else { continue };
            if data.is_empty() {
                continue;
            }
            if chunked {
                io.write_all(format!("{:x}\r\n", data.len()).as_bytes()).await?;
                io.write_all(&data).await?;
                io.write_all(b"\r\n").await?;
                continue;
            }
            let room = length.map_or(u64::MAX, |n| n - sent);
            let take = data.len().min(usize::try_from(room).unwrap_or(usize::MAX));
            io.write_all(&data[..take]).await?;
            sent += take as u64;
            if take < data.len() {
                io.flush().await?;
                return Err(ConnError::BodyLength {
                    declared: length.unwrap_or_default(),
                    sent: sent + (data.len() - take) as u64,
                });
            }
        }
        if chunked {
            io.write_all(b"0\r\n\r\n").await?;
        } else if let Some(declared) = length.filter(|n| *n != sent) {
            io.flush().await?;
            return Err(ConnError::BodyLength { declared, sent });
        }
    }
    io.flush().await?;
    Ok(close)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::{get, post};

    fn app() -> Router {
        Router::new()
            .route("/echo", post(|body: Bytes| async move { body }))
            .route("/hello", get(|| async { "hello" }))
            .route("/stream", get(|| async { streamed(b"streamed", None) }))
            .route("/short", get(|| async { streamed(b"short", Some(10)) }))
            .route("/long", get(|| async { streamed(b"too long", Some(2)) }))
            .route(
                "/latin1",
                get(|| async {
                    let value = axum::http::HeaderValue::from_bytes(b"caf\xe9").unwrap();
                    ([(header::HeaderName::from_static("x-name"), value)], "ok")
                }),
            )
            .route(
                "/later",
                get(|| async {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    "later"
                }),
            )
            .route(
                "/slow",
                get(|| async {
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                    "late"
                }),
            )
    }

    /// A body whose length the server learns only by reading it, with a declared length.
    fn streamed(bytes: &'static [u8], declared: Option<u64>) -> axum::response::Response {
        let stream = tokio_util::io::ReaderStream::new(std::io::Cursor::new(bytes));
        let mut response = axum::response::IntoResponse::into_response(Body::from_stream(stream));
        if let Some(n) = declared {
            response.headers_mut().insert(header::CONTENT_LENGTH, n.into());
        }
        response
    }

    fn limits() -> ConnLimits {
        ConnLimits {
            header_timeout: Duration::from_secs(5),
            body_timeout: Duration::from_secs(5),
            body_limit: |_, path| if path == "/echo" { 16 } else { 0 },
            closing: tokio::sync::watch::channel(false).1,
        }
    }

    /// Sends `input` and returns everything the server wrote until it closed the connection.
    /// With `leave`, the client closes its side right after sending (it went away).
    async fn talk(input: &[u8], leave: bool) -> (String, Result<(), ConnError>) {
        talk_to(app(), input, leave).await
    }

    async fn talk_to(app: Router, input: &[u8], leave: bool) -> (String, Result<(), ConnError>) {
        let (mut client, server) = tokio::io::duplex(1 << 20);
        let task = tokio::spawn(serve(server, app, limits(), None));
        client.write_all(input).await.unwrap();
        if leave {
            client.shutdown().await.unwrap();
        }
        let mut out = Vec::new();
        client.read_to_end(&mut out).await.unwrap();
        (String::from_utf8_lossy(&out).into_owned(), task.await.unwrap())
    }

    async fn exchange(input: &[u8]) -> (String, Result<(), ConnError>) {
        talk(input, false).await
    }

    #[tokio::test]
    async fn an_answer_given_later_is_awaited_and_keeps_the_layers_headers() {
        let app = Router::new()
            .route(
                "/poll",
                get(|| async {
                    Later::response(async {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        axum::response::IntoResponse::into_response("answered")
                    })
                }),
            )
            .layer(axum::middleware::map_response(crate::net::nosniff));
        let (out, end) = talk_to(app, b"GET /poll HTTP/1.1\r\nHost: x\r\n\r\n", true).await;
        end.unwrap();
        assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
        assert!(out.contains("\r\nx-content-type-options: nosniff\r\n"), "{out}");
        assert!(out.ends_with("\r\n\r\nanswered"), "{out}");
    }

    #[tokio::test]
    async fn keep_alive_pipelining_and_both_framings() {
        let (out, end) = exchange(
            b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n\
              POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello\
              POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n2\r\nde\r\n0\r\nT: 1\r\n\r\n\
              HEAD /hello HTTP/1.1\r\nHost: x\r\n\r\n\
              GET /hello HTTP/1.1\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(end.is_ok(), "{end:?}");
        assert_eq!(out.matches("HTTP/1.1 200 OK").count(), 5, "{out}");
        assert!(out.contains("content-length: 5\r\n\r\nhello"), "{out}");
        assert!(out.contains("\r\n\r\nabcde"), "{out}");
        assert!(out.contains("content-length: 5\r\n\r\nHTTP/1.1"), "HEAD has no body: {out}");
    }

    #[tokio::test]
    async fn ambiguous_or_oversized_requests_are_refused_and_the_connection_closed() {
        for (input, status) in [
            (&b"POST /echo HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\nabc"[..], "400"),
            (b"POST /echo HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd", "400"),
            (b"POST /echo HTTP/1.1\r\nContent-Length: +3\r\n\r\nabc", "400"),
            (b"POST /echo HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", "501"),
            (b"POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "400"),
            (b"POST /echo HTTP/1.1\r\nContent-Length: 99999999999\r\n\r\n", "413"),
            // Over the route's cap, by length and by chunks; refused from the head, unread.
            (b"POST /echo?x=1 HTTP/1.1\r\nContent-Length: 17\r\n\r\n", "413"),
            (b"POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n10\r\n0123456789abcdef\r\n1\r\nx\r\n0\r\n\r\n", "413"),
            (b"POST /hello HTTP/1.1\r\nContent-Length: 1\r\n\r\nx", "413"),
            (b"GET http://evil/ HTTP/1.1\r\n\r\n", ""),
            (b"GARBAGE\r\n\r\n", ""),
        ] {
            let (out, end) = exchange(input).await;
            assert!(end.is_err(), "{}", String::from_utf8_lossy(input));
            if !status.is_empty() {
                assert!(out.starts_with(&format!("HTTP/1.1 {status}")), "{out}");
                assert!(out.contains("connection: close"), "{out}");
            }
            if status == "413" {
                assert!(out.contains(r#""error":"ErrPayloadSizeTooLarge""#), "{out}");
            }
        }
        let big = format!("GET /hello HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(MAX_HEAD));
        assert!(exchange(big.as_bytes()).await.1.is_err());
    }

    /// Gives one byte per read and remembers the largest buffer it was offered.
    struct Trickle {
        data: Vec<u8>,
        at: usize,
        largest_offer: usize,
    }

    impl AsyncRead for Trickle {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            self.largest_offer = self.largest_offer.max(buf.remaining());
            if let Some(&b) = self.data.get(self.at) {
                buf.put_slice(&[b]);
                self.at += 1;
            }
            std::task::Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn a_body_is_buffered_as_it_arrives_not_as_declared() {
        let declared = 8 << 20;
        let mut slow = Trickle { data: b"abcNEXT".to_vec(), at: 0, largest_offer: 0 };
        let mut buf = b"xy".to_vec();
        // Only 5 of the declared bytes exist: the read ends early, having held little.
        let end = take(&mut slow, &mut buf, declared).await;
        assert!(matches!(end, Err(ConnError::Io(_))), "{end:?}");
        assert!(slow.largest_offer <= 2 * BODY_STEP, "{}", slow.largest_offer);
        // A complete body leaves what follows it unread.
        let mut slow = Trickle { data: b"cdeNEXT".to_vec(), at: 0, largest_offer: 0 };
        let mut buf = b"ab".to_vec();
        let mut out = take(&mut slow, &mut buf, 5).await.unwrap();
        out.extend_from_slice(&buf);
        let mut rest = Vec::new();
        slow.read_to_end(&mut rest).await.unwrap();
        out.extend_from_slice(&rest);
        assert_eq!(out, b"abcdeNEXT");
    }

    // Paused time: the grace passes as soon as every task waits.
    #[tokio::test(start_paused = true)]
    async fn a_client_that_leaves_drops_its_request() {
        // /slow never answers; closing the client must end the connection anyway, after the
        // grace a half-closed client is given.
        let started = tokio::time::Instant::now();
        let (out, end) = talk(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n", true).await;
        assert!(end.is_ok() && out.is_empty(), "{out} {end:?}");
        assert_eq!(started.elapsed().as_secs(), HALF_CLOSE_GRACE.as_secs());
    }

    #[tokio::test]
    async fn a_half_closed_client_still_gets_its_answer() {
        // Sent, then the sending side closed (as `nc -N` does) while the answer is being made:
        // the answer comes, then the connection closes, though the request asked to keep it.
        let (out, end) = talk(b"GET /later HTTP/1.1\r\nHost: x\r\n\r\n", true).await;
        assert!(end.is_ok(), "{end:?}");
        assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
        assert!(out.to_ascii_lowercase().contains("connection: close\r\n"), "{out}");
        assert!(out.ends_with("\r\n\r\nlater"), "{out}");
        // An answer ready before the close was seen is written as any other.
        let (out, end) =
            talk(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc", true).await;
        assert!(end.is_ok() && out.ends_with("\r\n\r\nabc"), "{out} {end:?}");
    }

    #[tokio::test]
    async fn a_stopping_server_closes_each_connection_after_its_response() {
        let (tx, closing) = tokio::sync::watch::channel(true);
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let task = tokio::spawn(serve(server, app(), ConnLimits { closing, ..limits() }, None));
        client.write_all(b"GET /hello HTTP/1.1\r\n\r\nGET /hello HTTP/1.1\r\n\r\n").await.unwrap();
        let mut out = Vec::new();
        client.read_to_end(&mut out).await.unwrap();
        let out = String::from_utf8_lossy(&out);
        assert_eq!(out.matches("200 OK").count(), 1, "{out}");
        assert!(out.contains("connection: close"));
        assert!(task.await.unwrap().is_ok());
        drop(tx);
    }

    #[tokio::test]
    async fn an_idle_connection_is_closed_when_the_server_starts_closing_but_a_new_one_is_answered()
    {
        let (tx, closing) = tokio::sync::watch::channel(false);
        let limits = ConnLimits { closing, ..limits() };
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let task = tokio::spawn(serve(server, app(), limits.clone(), None));
        client.write_all(b"GET /hello HTTP/1.1\r\n\r\n").await.unwrap();
        let mut answer = vec![0u8; 1024];
        let n = client.read(&mut answer).await.unwrap();
        let answer = String::from_utf8_lossy(&answer[..n]).into_owned();
        assert!(answer.ends_with("\r\n\r\nhello") && !answer.contains("close"), "{answer}");
        // Idle, kept alive; then the server drains: the connection ends without a request.
        tx.send_replace(true);
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty(), "{}", String::from_utf8_lossy(&rest));
        assert!(task.await.unwrap().is_ok());
        // A connection made while closing still gets its first request answered, then closes.
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let task = tokio::spawn(serve(server, app(), limits, None));
        client.write_all(b"GET /hello HTTP/1.1\r\n\r\n").await.unwrap();
        let mut out = Vec::new();
        client.read_to_end(&mut out).await.unwrap();
        let out = String::from_utf8_lossy(&out);
        assert!(out.contains("connection: close\r\n") && out.ends_with("hello"), "{out}");
        assert!(task.await.unwrap().is_ok());
    }

    #[tokio::test]
    async fn http_1_0_closes_and_connection_close_is_honoured() {
        let (out, _) = exchange(b"GET /hello HTTP/1.0\r\n\r\nGET /hello HTTP/1.1\r\n\r\n").await;
        assert_eq!(out.matches("200 OK").count(), 1, "{out}");
        let (out, _) = exchange(
            b"GET /hello HTTP/1.1\r\nConnection: close\r\n\r\nGET /hello HTTP/1.1\r\n\r\n",
        )
        .await;
        assert_eq!(out.matches("200 OK").count(), 1, "{out}");
        assert!(out.contains("connection: close"));
    }

    #[tokio::test]
    async fn an_http_1_0_client_never_gets_chunked_encoding() {
        // Keep-alive asked for, but a body of unknown length can only end with the connection.
        let (out, end) = exchange(
            b"GET /stream HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /hello HTTP/1.0\r\n\r\n",
        )
        .await;
        assert!(end.is_ok(), "{end:?}");
        assert!(!out.contains("chunked"), "{out}");
        assert!(out.contains("connection: close\r\n\r\nstreamed"), "{out}");
        assert_eq!(out.matches("200 OK").count(), 1, "the connection ended with the body: {out}");
        // HTTP/1.1 still gets it chunked, and keeps the connection.
        let (out, _) = exchange(
            b"GET /stream HTTP/1.1\r\n\r\nGET /hello HTTP/1.1\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(out.contains("transfer-encoding: chunked"), "{out}");
        assert_eq!(out.matches("200 OK").count(), 2, "{out}");
    }

    #[tokio::test]
    async fn a_body_that_breaks_its_content_length_ends_the_connection() {
        for (path, declared, sent, body) in [("/short", 10, 5, "short"), ("/long", 2, 8, "to")] {
            let request = format!("GET {path} HTTP/1.1\r\n\r\nGET /hello HTTP/1.1\r\n\r\n");
            let (out, end) = exchange(request.as_bytes()).await;
            assert!(
                matches!(end, Err(ConnError::BodyLength { declared: d, sent: s }) if d == declared && s == sent),
                "{path}: {end:?}"
            );
            assert!(
                out.ends_with(&format!("content-length: {declared}\r\n\r\n{body}")),
                "{path}: {out}"
            );
            assert_eq!(out.matches("200 OK").count(), 1, "{path}: nothing after it: {out}");
        }
    }

    /// The server's side of a connection, counting the writes made to it.
    struct Counted {
        io: tokio::io::DuplexStream,
        writes: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    }

    impl ZeroCopy for Counted {}

    impl AsyncRead for Counted {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::pin::Pin::new(&mut self.io).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for Counted {
        fn poll_write(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            self.writes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            std::pin::Pin::new(&mut self.io).poll_write(cx, buf)
        }
        fn poll_flush(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::pin::Pin::new(&mut self.io).poll_flush(cx)
        }
        fn poll_shutdown(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
        }
    }

    static BIG: [u8; INLINE_BODY + 1] = [b'x'; INLINE_BODY + 1];

    #[tokio::test]
    async fn a_small_answer_is_one_write_and_a_large_one_is_framed_alike() {
        let app = app()
            .route("/big", get(|| async { streamed(&BIG, Some(BIG.len() as u64)) }))
            .route("/big-short", get(|| async { streamed(&BIG, Some(BIG.len() as u64 + 9)) }));
        // The large bodies come in 4 KiB frames, each its own write after the head's.
        for (path, one, end) in
            [("/hello", true, None), ("/big", false, None), ("/big-short", false, Some(9))]
        {
            let (mut client, server) = tokio::io::duplex(1 << 20);
            let counted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
            let server = Counted { io: server, writes: std::sync::Arc::clone(&counted) };
            let task = tokio::spawn(serve(server, app.clone(), limits(), None));
            let request = format!("GET {path} HTTP/1.1\r\nConnection: close\r\n\r\n");
            client.write_all(request.as_bytes()).await.unwrap();
            let mut out = Vec::new();
            client.read_to_end(&mut out).await.unwrap();
            let result = task.await.unwrap();
            let writes = counted.load(std::sync::atomic::Ordering::Relaxed);
            assert_eq!(writes == 1, one, "{path}: {writes} writes");
            match end {
                None => assert!(result.is_ok(), "{path}: {result:?}"),
                Some(missing) => assert!(
                    matches!(result, Err(ConnError::BodyLength { declared, sent })
                        if declared == sent + missing),
                    "{path}: {result:?}"
                ),
            }
            let body = &out[out.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4..];
            let expected: &[u8] = if path == "/hello" { b"hello" } else { &BIG };
            assert_eq!(body, expected, "{path}");
        }
    }

    /// `len` bytes of the file at `path` from `offset`, declared as `declared` bytes, with a
    /// decoy streamed body (`-` repeated) in place of the file's: what a client reads says
    /// whether the loop sent the file (`sendfile(2)`) or the streamed body.
    fn decoy_file_response(
        path: &std::path::Path,
        offset: u64,
        len: u64,
        declared: u64,
    ) -> axum::response::Response {
        let file = std::fs::File::open(path).unwrap();
        let head = Response::builder().header(header::CONTENT_LENGTH, declared);
        let (parts, _) = FileRange::new(file, offset, len).response(head).unwrap().into_parts();
        Response::from_parts(parts, Body::from(vec![b'-'; usize::try_from(declared).unwrap()]))
    }

    const FILE_LEN: u64 = (5 << 20) + 7;

    /// The routes of the file tests, over a file of `FILE_LEN` bytes at `path`.
    fn file_app(path: &std::path::Path) -> Router {
        let route = |offset: u64, len: u64, declared: u64| {
            let path = path.to_owned();
            get(move || async move { decoy_file_response(&path, offset, len, declared) })
        };
        app()
            .route("/file", route(0, FILE_LEN, FILE_LEN))
            .route("/part", route(1_000_003, 2_500_000, 2_500_000))
            // The file holds 10 bytes fewer than the range: as if truncated under us.
            .route("/truncated", route(0, FILE_LEN + 10, FILE_LEN + 10))
            // A range whose length is not the declared one (a layer replaced the body).
            .route("/mismatch", route(0, FILE_LEN, 100))
    }

    /// Sends `input` over a real loopback TCP connection and returns everything the server
    /// wrote until it closed the connection, and how the connection ended.
    async fn over_tcp(app: Router, input: &[u8]) -> (Vec<u8>, Result<(), ConnError>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            serve(stream, app, limits(), None).await
        });
        let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
        client.write_all(input).await.unwrap();
        let mut out = Vec::new();
        // A cut response may end in a reset rather than a clean close: what arrived counts.
        let _ = client.read_to_end(&mut out).await;
        (out, server.await.unwrap())
    }

    /// Splits `out` after the first response head that ends with `content-length: LEN`.
    fn after_head(out: &[u8], len: u64) -> &[u8] {
        let marker = format!("content-length: {len}\r\n");
        let head_end = out.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        let head = String::from_utf8_lossy(&out[..head_end]);
        assert!(head.contains(&marker), "{head}");
        &out[head_end..]
    }

    #[tokio::test]
    async fn a_file_body_goes_by_sendfile_on_plain_tcp() {
        let bytes = crate::net::sendfile::tests::pattern(usize::try_from(FILE_LEN).unwrap());
        let mut tmp = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut tmp, &bytes).unwrap();
        // Whole, then a range, then HEAD, then another response, on one kept-alive connection:
        // the file's bytes, not the decoy's, and each response where it belongs.
        let (out, end) = over_tcp(
            file_app(tmp.path()),
            b"GET /file HTTP/1.1\r\n\r\nGET /part HTTP/1.1\r\n\r\nHEAD /file HTTP/1.1\r\n\r\n\
              GET /hello HTTP/1.1\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(end.is_ok(), "{end:?}");
        let rest = after_head(&out, FILE_LEN);
        let (whole, rest) = rest.split_at(bytes.len());
        assert!(whole == bytes.as_slice(), "the file's bytes, by sendfile");
        let rest = after_head(rest, 2_500_000);
        let (part, rest) = rest.split_at(2_500_000);
        assert!(part == &bytes[1_000_003..3_500_003], "the range's bytes, by sendfile");
        let rest = after_head(rest, FILE_LEN);
        assert!(rest.starts_with(b"HTTP/1.1 200 OK\r\n"), "HEAD has no body");
        assert!(rest.ends_with(b"\r\n\r\nhello"), "{}", String::from_utf8_lossy(rest));
        // Over a transport that is not a plain socket (here a pipe; TLS alike), the streamed
        // body goes.
        let (out, end) = talk_to(
            file_app(tmp.path()),
            b"GET /file HTTP/1.1\r\nConnection: close\r\n\r\n",
            false,
        )
        .await;
        assert!(end.is_ok(), "{end:?}");
        let decoy = vec![b'-'; bytes.len()];
        assert!(
            out.ends_with(&format!(
                "content-length: {FILE_LEN}\r\nconnection: close\r\n\r\n{}",
                String::from_utf8_lossy(&decoy)
            )),
            "the streamed body"
        );
        // A range whose length is not the declared one is not sent from the file.
        let (out, end) =
            over_tcp(file_app(tmp.path()), b"GET /mismatch HTTP/1.1\r\nConnection: close\r\n\r\n")
                .await;
        assert!(end.is_ok(), "{end:?}");
        assert!(after_head(&out, 100) == [b'-'; 100], "{}", String::from_utf8_lossy(&out));
    }

    #[tokio::test]
    async fn a_file_that_ends_before_its_range_cuts_the_response_and_the_connection() {
        let bytes = crate::net::sendfile::tests::pattern(usize::try_from(FILE_LEN).unwrap());
        let mut tmp = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut tmp, &bytes).unwrap();
        let (out, end) = over_tcp(
            file_app(tmp.path()),
            b"GET /truncated HTTP/1.1\r\n\r\nGET /hello HTTP/1.1\r\n\r\n",
        )
        .await;
        assert!(
            matches!(end, Err(ConnError::BodyLength { declared, sent }) if declared == FILE_LEN + 10 && sent == FILE_LEN),
            "{end:?}"
        );
        // What the file held, then nothing: not the next response.
        assert!(after_head(&out, FILE_LEN + 10) == bytes.as_slice());
    }

    #[tokio::test]
    async fn header_values_are_sent_as_their_bytes() {
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let task = tokio::spawn(serve(server, app(), limits(), None));
        client.write_all(b"GET /latin1 HTTP/1.1\r\nConnection: close\r\n\r\n").await.unwrap();
        let mut out = Vec::new();
        client.read_to_end(&mut out).await.unwrap();
        task.await.unwrap().unwrap();
        assert!(
            out.windows(14).any(|w| w == b"x-name: caf\xe9\r\n"),
            "{}",
            String::from_utf8_lossy(&out)
        );
    }

    /// Every connection's task is as large as `serve`'s future, parked or not: a buffer held
    /// across an `.await` on the stack of any path (a refusal's drain took 16 KiB) is paid
    /// by every agent. 2.3 KiB when this test was written.
    #[test]
    fn a_connection_task_stays_small() {
        let (_client, server) = tokio::io::duplex(16);
        let task = serve(server, app(), limits(), None);
        let size = std::mem::size_of_val(&task);
        assert!(size <= 4 << 10, "serve's future takes {size} bytes per connection");
    }
}
