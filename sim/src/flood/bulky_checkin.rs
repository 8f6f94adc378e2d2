//! `bulky-checkin`: gzipped check-ins of ~20 KiB whose `local_metadata`, `message` and
//! `components` inflate to 18 MiB, within the check-in's 20 MiB cap.

use std::sync::Arc;
use std::time::Duration;

use hyper::body::Bytes;
use serde_json::json;

use super::{ANSWER_TIMEOUT, Flood, Tally, UA, enroll, pace};

/// Each stored field of a bulky check-in: three of them make 18 MiB, under the check-in's
/// 20 MiB inflated cap, so only a cap on what is stored refuses them.
const BULKY_FIELD: usize = 6 << 20;

/// A check-in whose `message`, `local_metadata` and one component's `message` hold 6 MiB
/// each, gzipped (about 18 KiB).
pub(super) fn body() -> Bytes {
    let pad = "x".repeat(BULKY_FIELD);
    let body = json!({
        "status": "online",
        "message": pad,
        "local_metadata": {
            "elastic": {"agent": {"version": "9.1.2", "snapshot": false}},
            "host": {"hostname": "ferry-sim-bulky"},
            "padding": pad,
        },
        "components": [{"id": "filestream-default", "type": "filestream", "status": "HEALTHY",
            "message": pad, "units": []}],
    });
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    serde_json::to_writer(&mut gz, &body).expect("in memory");
    gz.finish().expect("in memory").into()
}

/// An agent that enrolls, then sends a bulky check-in once a second on a keep-alive
/// connection. It never reports a policy as running, so each check-in is answered at once (with
/// the policy) rather than parked.
pub(super) async fn task(flood: Arc<Flood>, tally: Arc<Tally>, body: Bytes, n: usize) {
    let me = match enroll(&flood, &format!("ferry-sim-bulky-{n:04}"), flood.end).await {
        Ok(me) => me,
        Err(f) => {
            tally.error(&f);
            return;
        }
    };
    tally.outcome("enrolled");
    let path = format!("/api/fleet/agents/{}/checkin?", me.id);
    let auth = format!("ApiKey {}", me.key);
    let headers = [
        ("user-agent", UA),
        ("authorization", auth.as_str()),
        ("elastic-api-version", "2023-06-01"),
        ("content-type", "application/json"),
        ("content-encoding", "gzip"),
    ];
    let mut conn = flood.conn();
    let mut tick = pace(Duration::from_secs(1));
    while flood.running() {
        tick.tick().await;
        tally.attempt();
        let result = conn.request("POST", &path, &headers, body.clone(), ANSWER_TIMEOUT).await;
        tally.record(result.map(|r| r.status));
    }
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;
    use crate::flood::CHECKIN_INFLATED_CAP;

    #[test]
    fn bulky_check_ins_are_small_on_the_wire_and_under_the_inflated_cap() {
        use std::io::Read as _;
        let body = body();
        assert!(body.len() < 64 << 10, "{} bytes gzipped", body.len());
        let mut inflated = Vec::new();
        flate2::read::GzDecoder::new(&body[..]).read_to_end(&mut inflated).unwrap();
        assert!(inflated.len() > 3 * BULKY_FIELD && inflated.len() < CHECKIN_INFLATED_CAP);
        let v: Value = serde_json::from_slice(&inflated).unwrap();
        assert_eq!(v["components"][0]["message"].as_str().unwrap().len(), BULKY_FIELD);
    }
}
