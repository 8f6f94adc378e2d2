//! `slowloris`: connections that send a request head a byte at a time and never finish it; and
//! the trickle both it and `slow-body` send.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::response::status_of;
use super::{Failure, Flood, Tally};

/// One slowloris connection after another: a head sent a byte at a time, never finished.
/// The server should cut it off after its header timeout (without an answer) or at the head
/// size cap (431); a connection still open at the end was held for the whole flood.
pub(super) async fn task(flood: Arc<Flood>, tally: Arc<Tally>, interval: Duration) {
    let prefix = flood.head("POST", "/api/fleet/agents/enroll?", "slow", &[]);
    // Everything but the blank line that would end the head, then a header value forever.
    let prefix = prefix[..prefix.len() - 2].to_vec();
    let prefix = [prefix, b"X-Slow: ".to_vec()].concat();
    trickle(&flood, &tally, &prefix, interval, b'a').await;
}

/// Sends `first` (a byte per `interval` unless it ends with a blank line, then all at once),
/// then `filler` a byte per `interval`, on one connection after another until the end.
pub(super) async fn trickle(
    flood: &Flood,
    tally: &Tally,
    first: &[u8],
    interval: Duration,
    filler: u8,
) {
    let whole_first = first.ends_with(b"\r\n\r\n");
    while flood.running() {
        tally.attempt();
        let mut stream = match flood.open().await {
            Ok(s) => s,
            Err(f) => {
                tally.error(&f);
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        let mut sent = 0usize;
        if whole_first {
            if stream.write_all(first).await.and(stream.flush().await).is_err() {
                tally.outcome("closed_by_server");
                continue;
            }
            sent = first.len();
        }
        let mut answer = Vec::new();
        let mut probe = [0u8; 512];
        let mut tick = tokio::time::interval(interval);
        let ended = loop {
            tokio::select! {
                _ = tick.tick() => {
                    if !flood.running() {
                        break "held_to_end";
                    }
                    let byte = first.get(sent).copied().unwrap_or(filler);
                    if stream.write_all(&[byte]).await.and(stream.flush().await).is_err() {
                        break "closed_by_server";
                    }
                    sent += 1;
                }
                n = stream.read(&mut probe) => match n {
                    Ok(0) | Err(_) => break "closed_by_server",
                    Ok(n) => answer.extend_from_slice(&probe[..n]),
                },
            }
        };
        if let Some(status) = status_of(&answer) {
            tally.status(status);
        } else if ended == "closed_by_server" && !answer.is_empty() {
            tally.error(&Failure::Protocol("unparsable answer".into()));
        }
        tally.outcome(ended);
    }
}
