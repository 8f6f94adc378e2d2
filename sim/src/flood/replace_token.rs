//! `replace-token`: enrollments naming the flood's own active agent with wrong
//! `replace_token`s, each of which costs the server a PBKDF2 check (expected: 403
//! `AgentNotReplaceable`, or 429 once the server limits the guesses).

use std::sync::Arc;
use std::time::Duration;

use hyper::body::Bytes;

use super::{Flood, Tally, enroll_body, enrollments, random_hex};

/// A keep-alive connection sending, at its share of the rate, the valid enrollment token with
/// an enrollment naming agent `id` and a new wrong replace token each time.
pub(super) async fn task(flood: Arc<Flood>, tally: Arc<Tally>, id: String, every: Duration) {
    enrollments(&flood, &tally, every, || {
        let body = enroll_body("ferry-sim-flood", Some(&id), Some(&random_hex(16)));
        (flood.token.clone(), Bytes::from(body))
    })
    .await;
}
