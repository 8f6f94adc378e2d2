//! The probe: enroll, ack and status calls (and the admin API's status, when given where it
//! listens) made one at a time from the probe's own connections, timed from outside whatever
//! load the appliance carries.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
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

    let every = Duration::from_secs_f64(1.0 / args.rate.max(0.1));
    let end = Instant::now() + Duration::from_secs_f64(args.duration);
    let errors = Mutex::new(BTreeMap::<String, u64>::new());
    let ack_path = format!("/api/fleet/agents/{id}/acks?");
    let mut status_conn = Conn::new(Arc::clone(&endpoint), tls.clone(), source);
    // Each kind of call in its own loop on its own connection: one that stalls (an enrollment
    // waiting for a server that no longer accepts) holds up only its own kind.
    let (mut status, mut acks, mut enroll, admin_status) = tokio::join!(
        timed(
            "status",
            async || send(&mut status_conn, "GET", "/api/status?", &key_auth, "").await,
            every,
            end,
            &errors
        ),
        timed(
            "ack",
            async || send(&mut conn, "POST", &ack_path, &key_auth, &ack).await,
            every,
            end,
            &errors
        ),
        timed(
            "enroll",
            async || {
                if args.fresh_enroll {
                    enroll_conn.reset();
                }
                send(
                    &mut enroll_conn,
                    "POST",
                    "/api/fleet/agents/enroll?",
                    &enroll_auth,
                    &enroll_body,
                )
                .await
            },
            every,
            end,
            &errors
        ),
        async {
            match &admin {
                Some(admin) => Some(
                    timed("admin", async || admin_call(admin).await, every, end, &errors).await,
                ),
                None => None,
            }
        },
    );
    let errors = errors.into_inner().expect("errors lock");
    let mut report = json!({ "status": status.summary(), "ack": acks.summary(),
        "enroll": enroll.summary(), "errors": errors });
    if let Some(mut admin_status) = admin_status {
        report["admin"] = admin_status.summary();
    }
    println!("{report}");
    Ok(())
}

/// Makes `call` every `every` until `end`, one at a time, and times the ones that succeed; a
/// failed one is counted in `errors` as `kind:failure`. Ticks missed while a call stalled are
/// skipped, not made up in a burst of calls that would dilute the stall.
async fn timed(
    kind: &str,
    mut call: impl AsyncFnMut() -> Result<serde_json::Value, Failure>,
    every: Duration,
    end: Instant,
    errors: &Mutex<BTreeMap<String, u64>>,
) -> Latencies {
    let mut latencies = Latencies::default();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    while Instant::now() < end {
        tick.tick().await;
        let started = Instant::now();
        match call().await {
            Ok(_) => latencies.record(started),
            Err(f) => {
                *errors
                    .lock()
                    .expect("errors lock")
                    .entry(format!("{kind}:{}", f.kind()))
                    .or_default() += 1;
            }
        }
    }
    latencies
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
