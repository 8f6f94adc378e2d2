//! `slow-body`: connections that send a whole head declaring a large body, then trickle it.

use std::sync::Arc;
use std::time::Duration;

use super::slowloris::trickle;
use super::{CHECKIN_WIRE_CAP, Flood, Tally};

/// A head declaring a check-in body of exactly the route's cap (so the server must wait for
/// it), then the body a byte at a time.
pub(super) async fn task(flood: Arc<Flood>, tally: Arc<Tally>, interval: Duration) {
    let length = CHECKIN_WIRE_CAP.to_string();
    let head = flood.head(
        "POST",
        "/api/fleet/agents/00000000-0000-4000-8000-000000000000/checkin?",
        "c2xvdzpib2R5",
        &[("Content-Length", &length)],
    );
    // The head goes at once; only the body trickles.
    trickle(&flood, &tally, &head, interval, b' ').await;
}
