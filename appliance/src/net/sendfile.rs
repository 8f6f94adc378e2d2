//! Zero-copy file bodies: a response that is a byte range of a file says so with a
//! [`FileRange`] in its extensions, next to an ordinary streamed body, and the HTTP loop sends
//! the range with `sendfile(2)` when its connection is plain TCP ([`ZeroCopy`]).
//!
//! Why: the mirror serves agent archives of several hundred MiB to whole upgrade waves. Read
//! into memory and written to the socket, each byte crosses user space twice; on plain HTTP
//! that cost 0.44–0.56 CPU s/GB at 8–64 downloads where nginx, with `sendfile on`, spent
//! 0.08–0.09 (docs/benchmarks.md, 2026-11-29). With `sendfile(2)` the kernel moves page-cache
//! pages to the socket itself. TLS cannot do this: rustls encrypts in user space, and this
//! kernel has no kTLS, so a TLS connection keeps the streamed body (as nginx does over TLS).
//! Measured (2026-12-05, 512 MiB file, 1/8/64 downloads, docs/benchmarks.md "Download
//! mirror"): plain HTTP went from 0.20/0.26/0.31 CPU s/GB (copied, this HTTP loop) to
//! 0.19/0.10/0.08, against nginx's 0.25/0.10/0.11 in the same run.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::{Body, Bytes};
use axum::http::Response;
use axum::http::response::Builder;
use http_body::{Frame, SizeHint};
use tokio::io::Interest;
use tokio::net::TcpStream;

/// The largest piece of a file the streamed body reads into memory at once. 1 MiB rather
/// than 256 KiB cut the copying path's CPU per GB from 0.63 to 0.44 s (plain) and from 0.90 to
/// 0.73 s (TLS) at 8 connections (docs/benchmarks.md).
const READ_CHUNK: usize = 1 << 20;

/// The most one `sendfile(2)` call is asked for: nginx's default `sendfile_max_chunk` (2m).
/// A call returns as soon as the socket buffer is full anyway; the cap bounds how long one
/// call can hold a worker thread when the file is not in the page cache (the read blocks) and
/// how much one fast client sends before the task's budget makes it yield.
const SENDFILE_CHUNK: usize = 2 << 20;

/// "This response's body is `len` bytes of `file` from `offset`": put in a response's
/// extensions by [`FileRange::response`], next to a streamed body of the same bytes. The HTTP
/// loop sends the range with `sendfile(2)` on plain TCP and the streamed body everywhere else,
/// and only when the response's `Content-Length` is `len`: a layer that replaced the body
/// with one of another length cannot have its response sent from the file.
#[derive(Clone, Debug)]
pub(crate) struct FileRange {
    file: Arc<std::fs::File>,
    offset: u64,
    len: u64,
}

impl FileRange {
    pub(crate) fn new(file: std::fs::File, offset: u64, len: u64) -> Self {
        Self { file: Arc::new(file), offset, len }
    }

    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    /// `head` (status and headers, `Content-Length` among them) with this range as its body:
    /// streamed from the file for any connection, and marked for `sendfile(2)`.
    pub(crate) fn response(self, head: Builder) -> Result<Response<Body>, axum::http::Error> {
        let body = Body::new(Streamed::Waiting {
            file: Arc::clone(&self.file),
            offset: self.offset,
            len: self.len,
        });
        head.extension(self).body(body)
    }
}

/// The streamed form of a [`FileRange`], for connections that cannot take it by `sendfile(2)`:
/// what the mirror has always sent, tokio's `File` read 1 MiB at a time through
/// `ReaderStream`, so TLS downloads are unchanged. It is set up only when first polled, so a
/// response sent with `sendfile(2)` costs no second descriptor and no seek.
///
/// (Reading with `pread` on a blocking thread straight into each frame's buffer saves a copy
/// on paper, but measured worse over TLS: 0.69 against 0.39 CPU s/GB at 8 downloads, one run
/// each on a busy machine. Likely why: each 1 MiB buffer was allocated on a blocking thread
/// and freed on a worker, so malloc handed out fresh pages to fault in; not pursued.)
enum Streamed {
    Waiting { file: Arc<std::fs::File>, offset: u64, len: u64 },
    Reading(Body),
}

impl http_body::Body for Streamed {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = &mut *self;
        if let Streamed::Waiting { .. } = this {
            let Streamed::Waiting { file, offset, len } =
                std::mem::replace(this, Streamed::Reading(Body::empty()))
            else {
                return Poll::Ready(None);
            };
            // The marker is gone by now (the HTTP loop took it from the response), so the file
            // is usually this body's alone; otherwise its descriptor is duplicated.
            let start =
                Arc::try_unwrap(file).or_else(|shared| shared.try_clone()).and_then(|mut file| {
                    // An offset change, no disk access: fine on a worker thread.
                    io::Seek::seek(&mut file, io::SeekFrom::Start(offset))?;
                    Ok(file)
                });
            let file = match start {
                Ok(file) => file,
                Err(e) => return Poll::Ready(Some(Err(axum::Error::new(e)))),
            };
            let reader = tokio::io::AsyncReadExt::take(tokio::fs::File::from_std(file), len);
            let stream = tokio_util::io::ReaderStream::with_capacity(reader, READ_CHUNK);
            *this = Streamed::Reading(Body::from_stream(stream));
        }
        match this {
            Streamed::Reading(body) => {
                let frame = Pin::new(body).poll_frame(cx);
                if let Poll::Ready(Some(Ok(data))) = &frame
                    && let Some(bytes) = data.data_ref()
                {
                    crate::metrics::COUNTERS.mirror_sent(bytes.len() as u64);
                }
                frame
            }
            Streamed::Waiting { .. } => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Streamed::Waiting { len, .. } => *len == 0,
            Streamed::Reading(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Streamed::Waiting { len, .. } => SizeHint::with_exact(*len),
            Streamed::Reading(body) => body.size_hint(),
        }
    }
}

/// Whether a connection's transport can take a file with `sendfile(2)`: only when the bytes
/// written go to a TCP socket unchanged. TLS transforms them in user space (no kTLS on this
/// kernel), so it keeps the default; so do Unix sockets (the admin API, which sends no files)
/// and the in-memory pipes of tests.
pub(crate) trait ZeroCopy {
    /// The socket a file body may be sent to directly.
    fn socket(&self) -> Option<&TcpStream> {
        None
    }
}

impl ZeroCopy for TcpStream {
    fn socket(&self) -> Option<&TcpStream> {
        Some(self)
    }
}

impl<IO> ZeroCopy for tokio_rustls::server::TlsStream<IO> {}

impl ZeroCopy for tokio::net::UnixStream {}

#[cfg(test)]
impl ZeroCopy for tokio::io::DuplexStream {}

/// Sends `range` to `socket` with `sendfile(2)`, waiting for the socket to take more as the
/// connection's other writes do. Returns the bytes sent: fewer than [`FileRange::len`] when the
/// file ended early (truncated under us), which the caller treats as a body that broke its
/// `Content-Length`.
pub(crate) async fn send(socket: &TcpStream, range: &FileRange) -> io::Result<u64> {
    let mut offset = range.offset;
    let end = range.offset.saturating_add(range.len);
    // Corked while the range goes, as nginx's `tcp_nopush`: the connection is `TCP_NODELAY`
    // (for the API's small answers), and without the cork each call pushed out whatever
    // partial segment it ended on. One download over loopback cost 0.21-0.28 CPU s/GB
    // uncorked and 0.075-0.088 corked, against nginx's 0.087-0.090 (docs/benchmarks.md,
    // "Download mirror"). Uncorking sends what is left at once; a cork left on would hold the
    // last segment back for 200 ms.
    let _ = rustix::net::sockopt::set_tcp_cork(socket, true);
    while offset < end {
        let count = usize::try_from(end - offset).map_or(SENDFILE_CHUNK, |n| n.min(SENDFILE_CHUNK));
        // `async_io` waits for writability, retries on EAGAIN (clearing the readiness), and
        // charges the task's budget, so a client that always keeps up still lets the worker
        // run other tasks. `sendfile` moves `offset` past what it sent; the file's own offset
        // is untouched.
        let sent = socket
            .async_io(Interest::WRITABLE, || {
                Ok(rustix::fs::sendfile(socket, &*range.file, Some(&mut offset), count)?)
            })
            .await;
        match sent {
            // The file ends before the range does.
            Ok(0) => break,
            Ok(n) => crate::metrics::COUNTERS.mirror_sent(n as u64),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            // The connection closes: nothing is left to hold back.
            Err(e) => return Err(e),
        }
    }
    rustix::net::sockopt::set_tcp_cork(socket, false)?;
    Ok(offset - range.offset)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use http_body_util::BodyExt as _;

    /// Bytes that show a shifted or repeated piece: no two 4-byte windows alike for a while.
    pub(crate) fn pattern(len: usize) -> Vec<u8> {
        (0..len as u64).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect()
    }

    async fn streamed(file: std::fs::File, offset: u64, len: u64) -> (Vec<u8>, Option<u64>) {
        let head = Response::builder().header("content-length", len);
        let response = FileRange::new(file, offset, len).response(head).unwrap();
        assert_eq!(response.extensions().get::<FileRange>().map(FileRange::len), Some(len));
        let body = response.into_body();
        let hint = http_body::Body::size_hint(&body).exact();
        (body.collect().await.unwrap().to_bytes().to_vec(), hint)
    }

    #[tokio::test]
    async fn a_range_goes_whole_and_leaves_the_socket_uncorked() {
        let bytes = pattern((5 << 20) + 7);
        let mut tmp = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut tmp, &bytes).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            tokio::io::AsyncReadExt::read_to_end(&mut { client }, &mut got).await.unwrap();
            got
        });
        let range = FileRange::new(std::fs::File::open(tmp.path()).unwrap(), 3, 5 << 20);
        assert_eq!(send(&server, &range).await.unwrap(), 5 << 20);
        // Uncorked: a next answer on this connection is not held back.
        assert!(!rustix::net::sockopt::tcp_cork(&server).unwrap());
        drop(server);
        assert!(reader.await.unwrap() == bytes[3..3 + (5 << 20)], "the range's bytes");
    }

    #[tokio::test]
    async fn the_streamed_body_is_the_range_and_ends_with_the_file() {
        let bytes = pattern((3 << 20) + 5);
        let mut tmp = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut tmp, &bytes).unwrap();
        let open = || std::fs::File::open(tmp.path()).unwrap();
        // Whole, in several reads.
        assert_eq!(streamed(open(), 0, bytes.len() as u64).await, (bytes.clone(), Some(3145733)));
        // A range that starts and ends mid-chunk.
        let (start, len) = (1_000_003, 2_100_001);
        let (got, _) = streamed(open(), start as u64, len as u64).await;
        assert!(got == bytes[start..start + len], "the range's bytes");
        // Past the end of the file (truncated under us): what there is, then the end.
        let (got, _) = streamed(open(), 3 << 20, 100).await;
        assert_eq!(got, bytes[3 << 20..]);
    }
}
