//! `bogus-token`: enrollments with enrollment tokens nobody issued, from several addresses
//! (expected: 401, or 429).

use std::sync::Arc;
use std::time::Duration;

use hyper::body::Bytes;

use super::{Flood, Tally, base64, enroll_body, enrollments, random_hex};

/// A keep-alive connection sending, at its share of the rate, a plain enrollment with a new
/// well-formed enrollment token each time.
pub(super) async fn task(flood: Arc<Flood>, tally: Arc<Tally>, every: Duration) {
    let plain = Bytes::from(enroll_body("ferry-sim-flood-enroll", None, None));
    enrollments(&flood, &tally, every, || {
        (base64(format!("{}:{}", random_hex(10), random_hex(21)).as_bytes()), plain.clone())
    })
    .await;
}
