//! The probe: enroll, ack and status calls made one at a time from the probe's own
//! connections, timed from outside whatever load the appliance carries.

use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::body::Bytes;
use serde_json::json;

use super::ProbeArgs;
use super::conn::{Conn, Endpoint, Failure};
use super::stats::Latencies;

const TIMEOUT: Duration = Duration::from_secs(30);

pub async fn run(args: ProbeArgs) -> anyhow::Result<()> {
    let endpoint = Arc::new(Endpoint::parse(&args.target.url)?);
    let tls = super::tls_for(&args.target)?;
    let source = super::sources(args.target.sources.max(1)).pop();
    let mut conn = Conn::new(Arc::clone(&endpoint), tls.clone(), source);
    let ua = "Elastic Agent v9.1.2";
    let enroll_auth = format!("ApiKey {}", args.target.token);
    let headers = |auth: &str| -> Vec<(&'static str, String)> {
        vec![
            ("user-agent", ua.to_owned()),
            ("authorization", auth.to_owned()),
            ("elastic-api-version", "2023-06-01".to_owned()),
            ("content-type", "application/json".to_owned()),
        ]
    };
    let enroll_body = super::enroll_body("9.1.2", "ferry-sim-probe");
    let send = async |conn: &mut Conn, method: &str, path: &str, auth: &str, body: &str| {
        let h = headers(auth);
        let h: Vec<(&str, &str)> = h.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let r = conn.request(method, path, &h, Bytes::from(body.to_owned()), TIMEOUT).await?;
        if r.status != 200 {
            return Err(Failure::Status(r.status));
        }
        serde_json::from_slice::<serde_json::Value>(&r.body)
            .map_err(|e| Failure::Protocol(e.to_string()))
    };
    // The probe's own agent, whose acks are timed.
    let me = send(&mut conn, "POST", "/api/fleet/agents/enroll?", &enroll_auth, &enroll_body)
        .await
        .map_err(|f| anyhow::anyhow!("the probe cannot enroll: {f:?}"))?;
    let id = me["item"]["id"].as_str().unwrap_or_default().to_owned();
    let key_auth = format!("ApiKey {}", me["item"]["access_api_key"].as_str().unwrap_or_default());
    let ack =
        json!({"events": [{"type": "ACTION_RESULT", "subtype": "ACKNOWLEDGED", "agent_id": id,
        "action_id": "policy:probe:0", "message": "probe", "timestamp": "2026-01-01T00:00:00Z"}]})
        .to_string();

    let (mut enroll, mut acks, mut status) =
        (Latencies::default(), Latencies::default(), Latencies::default());
    let mut errors = std::collections::BTreeMap::<String, u64>::new();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / args.rate.max(0.1)));
    let end = Instant::now() + Duration::from_secs_f64(args.duration);
    while Instant::now() < end {
        tick.tick().await;
        for (kind, lat) in [("status", &mut status), ("ack", &mut acks), ("enroll", &mut enroll)] {
            let started = Instant::now();
            let result = match kind {
                "status" => send(&mut conn, "GET", "/api/status?", &key_auth, "").await,
                "ack" => {
                    send(
                        &mut conn,
                        "POST",
                        &format!("/api/fleet/agents/{id}/acks?"),
                        &key_auth,
                        &ack,
                    )
                    .await
                }
                _ => {
                    send(&mut conn, "POST", "/api/fleet/agents/enroll?", &enroll_auth, &enroll_body)
                        .await
                }
            };
            match result {
                Ok(_) => lat.record(started),
                Err(f) => *errors.entry(format!("{kind}:{}", f.kind())).or_default() += 1,
            }
        }
    }
    println!(
        "{}",
        json!({ "status": status.summary(), "ack": acks.summary(), "enroll": enroll.summary(), "errors": errors })
    );
    Ok(())
}
