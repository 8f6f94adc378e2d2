//! `disconnect`: enrolled agents that open a check-in, let it park, and drop the connection.

use std::sync::Arc;
use std::time::Duration;

use super::response::read_response;
use super::{Flood, Tally, checkin_request, delivered_policy, enroll};

/// An agent that enrolls, then again and again opens a check-in on a new connection, lets it
/// park, and drops the connection after about `after`.
pub(super) async fn task(flood: Arc<Flood>, tally: Arc<Tally>, after: Duration, n: usize) {
    // Spread the enrollments so they do not all meet the enrollment limit at once.
    tokio::time::sleep(Duration::from_millis(50 * n as u64)).await;
    let give_up = flood.end;
    let me = match enroll(&flood, &format!("ferry-sim-flood-{n:04}"), give_up).await {
        Ok(me) => me,
        Err(f) => {
            tally.error(&f);
            return;
        }
    };
    tally.outcome("enrolled");
    // What it runs once the first answer delivered a policy (a 9.2+ agent says so in each
    // check-in), so that later check-ins have nothing to receive and park.
    let mut running: Option<(String, u64)> = None;
    while flood.running() {
        let request = checkin_request(&flood, &me, running.as_ref());
        let Some(mut stream) = flood.send_on_new(&tally, &request).await else { continue };
        let hold = after.mul_f64(0.5 + rand::random::<f64>());
        match tokio::time::timeout(hold, read_response(&mut stream)).await {
            // Parked: the point of this kind is to leave now.
            Err(_) => {
                drop(stream);
                tally.outcome("dropped_while_parked");
            }
            Ok(Ok((status, body))) => {
                tally.status(status);
                if status == 200 {
                    running = delivered_policy(&body).or(running);
                } else {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
            Ok(Err(f)) => {
                tally.error(&f);
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}
