//! `oversize`: heads over 8 KiB and bodies over their caps (declared, chunked, gzip bombs), each
//! on a new connection.

use std::io::Write as _;
use std::sync::Arc;

use hyper::body::Bytes;
use tokio::io::AsyncWriteExt as _;

use super::response::read_response;
use super::{ANSWER_TIMEOUT, CHECKIN_INFLATED_CAP, CHECKIN_WIRE_CAP, Enrolled, Failure, Flood};
use super::{Stream, Tally, Variants};

/// The server's largest request head; oversized heads go well past it.
const SERVER_MAX_HEAD: usize = 8 << 10;

/// Ways to send too much, each expected to be refused with 413 or 431.
#[derive(Clone, Copy)]
pub(super) enum Oversize {
    /// A 16 KiB header (431).
    Head,
    /// A check-in declaring 32 MiB: refused from the head alone, nothing of the body sent.
    DeclaredHuge,
    /// A check-in of 2 MiB with Content-Length, over the route's 1 MiB cap.
    CheckinLength,
    /// The same, chunked.
    CheckinChunked,
    /// A gzip check-in of 20 KiB that inflates past the 20 MiB cap.
    GzipBomb,
}

pub(super) const VARIANTS: &[Oversize] = &[
    Oversize::Head,
    Oversize::DeclaredHuge,
    Oversize::CheckinLength,
    Oversize::CheckinChunked,
    Oversize::GzipBomb,
];

impl Oversize {
    pub(super) fn name(self) -> &'static str {
        match self {
            Oversize::Head => "head-16k",
            Oversize::DeclaredHuge => "declared-32m",
            Oversize::CheckinLength => "checkin-2m-length",
            Oversize::CheckinChunked => "checkin-2m-chunked",
            Oversize::GzipBomb => "gzip-bomb",
        }
    }
}

/// What to write after the head.
enum Body {
    None,
    Bytes(Bytes),
    /// `total` bytes of filler in chunks of 64 KiB.
    Chunked(usize),
}

fn gzip_bomb() -> Bytes {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    let zeros = vec![b' '; 1 << 20];
    for _ in 0..(CHECKIN_INFLATED_CAP >> 20) + 1 {
        gz.write_all(&zeros).expect("in memory");
    }
    gz.finish().expect("in memory").into()
}

/// Oversized requests one after another on a new connection each (the server closes after
/// refusing), cycling through the variants.
pub(super) async fn task(
    flood: Arc<Flood>,
    tally: Arc<Tally>,
    variants: Arc<Variants>,
    helper: Enrolled,
    n: usize,
) {
    let checkin = format!("/api/fleet/agents/{}/checkin?", helper.id);
    let big = Bytes::from(vec![b' '; 2 * CHECKIN_WIRE_CAP]);
    let bomb = gzip_bomb();
    let mut i = n;
    while flood.running() {
        let (name, vt) = &variants[i % variants.len()];
        let variant = *VARIANTS.iter().find(|v| v.name() == *name).expect("a known variant");
        i += 1;
        let key = helper.key.as_str();
        let (head, body) = match variant {
            Oversize::Head => {
                let filler = "a".repeat(2 * SERVER_MAX_HEAD);
                (flood.head("GET", "/api/status?", key, &[("X-Big", &filler)]), Body::None)
            }
            Oversize::DeclaredHuge => {
                let len = (32usize << 20).to_string();
                (flood.head("POST", &checkin, key, &[("Content-Length", &len)]), Body::None)
            }
            Oversize::CheckinLength => {
                let len = big.len().to_string();
                (
                    flood.head("POST", &checkin, key, &[("Content-Length", &len)]),
                    Body::Bytes(big.clone()),
                )
            }
            Oversize::CheckinChunked => (
                flood.head("POST", &checkin, key, &[("Transfer-Encoding", "chunked")]),
                Body::Chunked(2 * CHECKIN_WIRE_CAP),
            ),
            Oversize::GzipBomb => {
                let len = bomb.len().to_string();
                (
                    flood.head(
                        "POST",
                        &checkin,
                        key,
                        &[("Content-Length", &len), ("Content-Encoding", "gzip")],
                    ),
                    Body::Bytes(bomb.clone()),
                )
            }
        };
        tally.attempt();
        vt.attempt();
        let result = match flood.open().await {
            Ok(stream) => exchange(stream, head, body).await,
            Err(f) => Err(f),
        };
        tally.record(result.clone());
        vt.record(result);
    }
}

/// Writes a request while reading the answer, so a server that refuses before the body is
/// all sent is still heard; returns the status.
async fn exchange(stream: Stream, head: Vec<u8>, body: Body) -> Result<u16, Failure> {
    let (mut r, mut w) = tokio::io::split(stream);
    let write = async move {
        w.write_all(&head).await?;
        match body {
            Body::None => {}
            Body::Bytes(b) => w.write_all(&b).await?,
            Body::Chunked(total) => {
                let piece = vec![b' '; 64 << 10];
                let mut sent = 0;
                while sent < total {
                    let n = piece.len().min(total - sent);
                    w.write_all(format!("{n:x}\r\n").as_bytes()).await?;
                    w.write_all(&piece[..n]).await?;
                    w.write_all(b"\r\n").await?;
                    sent += n;
                }
                w.write_all(b"0\r\n\r\n").await?;
            }
        }
        w.flush().await?;
        // Kept open: a half-closed connection could read as the client leaving.
        std::future::pending::<()>().await;
        Ok::<_, std::io::Error>(w)
    };
    let read = tokio::time::timeout(ANSWER_TIMEOUT, read_response(&mut r));
    tokio::pin!(read);
    tokio::select! {
        answer = &mut read => answer.map_err(|_| Failure::Timeout)?.map(|(s, _)| s),
        // The write failed (the server closed): its answer may still be there to read.
        _ = write => read.await.map_err(|_| Failure::Timeout)?.map(|(s, _)| s),
    }
}
