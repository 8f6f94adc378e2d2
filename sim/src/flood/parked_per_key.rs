//! `parked-per-key`: one agent's key opening many check-ins at once, each left to park.

use std::sync::Arc;
use std::time::Duration;

use hyper::body::Bytes;
use serde_json::json;

use super::response::read_response;
use super::{Enrolled, Failure, Flood, Tally, checkin_request, delivered_policy, send};

/// `count` check-ins of one agent key, each on its own connection and opened 20 ms after the
/// one before, each reporting the policy it runs so that it parks. An answered one is counted
/// by status and opened again a second later; one still parked at the end is `held_to_end`.
pub(super) async fn task(flood: Arc<Flood>, tally: Arc<Tally>, me: Enrolled, count: usize) {
    // The first check-in delivers the policy; the agent then reports running it.
    let mut conn = flood.conn();
    let first = Bytes::from(json!({"status": "online", "message": "flood"}).to_string());
    let path = format!("/api/fleet/agents/{}/checkin?", me.id);
    let policy = match send(&mut conn, "POST", &path, &me.key, first).await {
        Ok(r) if r.status == 200 => delivered_policy(&r.body),
        Ok(r) => {
            tally.error(&Failure::Status(r.status));
            return;
        }
        Err(f) => {
            tally.error(&f);
            return;
        }
    };
    let request = Arc::new(checkin_request(&flood, &me, policy.as_ref()));
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..count {
        let (flood, tally, request) =
            (Arc::clone(&flood), Arc::clone(&tally), Arc::clone(&request));
        tasks.spawn(async move {
            tokio::time::sleep(Duration::from_millis(20 * n as u64)).await;
            while flood.running() {
                let Some(mut stream) = flood.send_on_new(&tally, &request).await else {
                    continue;
                };
                tally.opened();
                let answer =
                    tokio::time::timeout_at(flood.end.into(), read_response(&mut stream)).await;
                tally.closed();
                match answer {
                    Err(_) => tally.outcome("held_to_end"),
                    Ok(answer) => tally.record(answer.map(|(status, _)| status)),
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
    }
    while tasks.join_next().await.is_some() {}
}
