//! The probe: enroll, ack and status calls (and the admin API's status, when given where it
//! listens) made one at a time from the probe's own connections, timed from outside whatever
//! load the appliance carries.

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
    let mut enroll_conn = Conn::new(Arc::clone(&endpoint), tls.clone(), source);
    let admin = admin_target(&args)?;
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
    // Said once the probe is ready, so that a benchmark can start a flood only then: a flood
    // that stops the server accepting would otherwise hold up this enrollment, not the
    // measured calls.
    eprintln!("ferry-sim probe: enrolled");
    tokio::time::sleep(Duration::from_secs_f64(args.delay)).await;
    let ack =
        json!({"events": [{"type": "ACTION_RESULT", "subtype": "ACKNOWLEDGED", "agent_id": id,
        "action_id": "policy:probe:0", "message": "probe", "timestamp": "2026-01-01T00:00:00Z"}]})
        .to_string();

    let (mut enroll, mut acks, mut status, mut admin_status) =
        (Latencies::default(), Latencies::default(), Latencies::default(), Latencies::default());
    let mut errors = std::collections::BTreeMap::<String, u64>::new();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / args.rate.max(0.1)));
    let end = Instant::now() + Duration::from_secs_f64(args.duration);
    while Instant::now() < end {
        tick.tick().await;
        let mut calls = vec![("status", &mut status), ("ack", &mut acks), ("enroll", &mut enroll)];
        if admin.is_some() {
            calls.push(("admin", &mut admin_status));
        }
        if args.fresh_enroll {
            enroll_conn.reset();
        }
        for (kind, lat) in calls {
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
                "enroll" => {
                    let conn = if args.fresh_enroll { &mut enroll_conn } else { &mut conn };
                    send(conn, "POST", "/api/fleet/agents/enroll?", &enroll_auth, &enroll_body)
                        .await
                }
                _ => admin_call(admin.as_ref().expect("pushed only when set")).await,
            };
            match result {
                Ok(_) => lat.record(started),
                Err(f) => *errors.entry(format!("{kind}:{}", f.kind())).or_default() += 1,
            }
        }
    }
    let mut report = json!({ "status": status.summary(), "ack": acks.summary(),
        "enroll": enroll.summary(), "errors": errors });
    if admin.is_some() {
        report["admin"] = admin_status.summary();
    }
    println!("{report}");
    Ok(())
}

/// Where the admin API listens and the `Authorization` value it takes.
fn admin_target(args: &ProbeArgs) -> anyhow::Result<Option<(Arc<Endpoint>, String)>> {
    let endpoint = match (&args.admin_socket, &args.admin_url) {
        (Some(path), _) => Endpoint::unix(path),
        (None, Some(url)) => Endpoint::parse(url.trim())?,
        (None, None) => return Ok(None),
    };
    let file = args.admin_token_file.as_ref().expect("clap requires it with either");
    let token = std::fs::read_to_string(file)
        .map_err(|e| anyhow::anyhow!("--admin-token-file {}: {e}", file.display()))?;
    Ok(Some((Arc::new(endpoint), format!("Bearer {}", token.trim()))))
}

/// `GET /admin/v1/status` on a new connection, as each CLI command makes one: a server that
/// stopped accepting connections fails here even when the probe's agent connection lives on.
async fn admin_call(
    (endpoint, auth): &(Arc<Endpoint>, String),
) -> Result<serde_json::Value, Failure> {
    let mut conn = Conn::new(Arc::clone(endpoint), None, None);
    let r = conn
        .request("GET", "/admin/v1/status", &[("authorization", auth)], Bytes::new(), TIMEOUT)
        .await?;
    if r.status != 200 {
        return Err(Failure::Status(r.status));
    }
    serde_json::from_slice(&r.body).map_err(|e| Failure::Protocol(e.to_string()))
}
