//! A test client that behaves as fleet-protocol.md says a stock Elastic Agent does: its
//! headers (User-Agent, Elastic-Api-Version, the JSON Content-Type on every request, a bare `?`
//! at the end of each URL), gzip check-in bodies, and an `ack_token` it keeps and sends back.

use std::io::Write as _;
use std::sync::Mutex;

use serde_json::{Value, json};

use super::Server;

/// A response: status, headers, and the body as JSON (`Null` when it is not JSON).
pub struct Reply {
    pub status: u16,
    pub headers: ureq::http::HeaderMap,
    pub body: Value,
    pub raw: Vec<u8>,
}

impl std::fmt::Debug for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status, String::from_utf8_lossy(&self.raw))
    }
}

impl Reply {
    /// Asserts a Fleet error: the status, `statusCode`, `error`, and the JSON content type.
    #[track_caller]
    pub fn assert_error(&self, status: u16, code: &str) {
        assert_eq!(self.status, status, "{self:?}");
        assert_eq!(self.body["error"], code, "{self:?}");
        super::schema::check(&self.body, super::schema::ERROR);
        assert_eq!(self.body["statusCode"], status, "{self:?}");
        assert_eq!(self.headers["content-type"], "application/json; charset=utf-8");
    }
}

/// One request with the agent's default headers; `headers` override them (an empty value
/// removes one).
pub fn request(
    server: &Server,
    method: &str,
    path: &str,
    key: Option<&str>,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Reply {
    let url = format!("{}{path}?", server.https.replace("127.0.0.1", "localhost"));
    let auth = key.map(|k| format!("ApiKey {k}"));
    let mut all: Vec<(&str, &str)> = vec![
        ("User-Agent", "Elastic Agent v9.1.2"),
        ("Elastic-Api-Version", "2023-06-01"),
        ("Content-Type", "application/json"),
        ("Accept", "application/json"),
        ("kbn-xsrf", "1"),
        ("X-Request-ID", "5a0e8d3c-1111-4222-8333-444455556666"),
    ];
    if let Some(auth) = &auth {
        all.push(("Authorization", auth));
    }
    for (k, v) in headers {
        all.retain(|(dk, _)| !dk.eq_ignore_ascii_case(k));
        all.push((k, v));
    }
    let client = server.client();
    let all: Vec<(&str, &str)> = all.into_iter().filter(|(_, v)| !v.is_empty()).collect();
    let mut resp = if method == "GET" {
        let mut req = client.get(&url);
        for (k, v) in all {
            req = req.header(k, v);
        }
        req.call().unwrap()
    } else {
        let mut req = if method == "PUT" { client.put(&url) } else { client.post(&url) };
        for (k, v) in all {
            req = req.header(k, v);
        }
        req.send(body).unwrap()
    };
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let raw = resp.body_mut().with_config().limit(64 << 20).read_to_vec().unwrap();
    let body = serde_json::from_slice(&raw).unwrap_or(Value::Null);
    Reply { status, headers, body, raw }
}

/// A GET with the agent's headers.
pub fn get(server: &Server, path: &str, key: Option<&str>) -> Reply {
    request(server, "GET", path, key, &[], b"")
}

/// What an agent sends when it enrolls.
pub fn enroll_body(id: &str, hostname: &str, replace_token: &str) -> Value {
    json!({
        "type": "PERMANENT",
        "id": id,
        "replace_token": replace_token,
        "metadata": {
            "local": { "elastic": { "agent": { "id": "placeholder", "version": "9.1.2", "upgradeable": true } },
                       "host": { "hostname": hostname, "architecture": "x86_64" },
                       "os": { "platform": "ubuntu" } },
            "user_provided": {},
            "tags": ["linux", "dmz", "linux"]
        }
    })
}

pub struct Agent<'a> {
    pub server: &'a Server,
    pub id: String,
    pub key: String,
    version: Mutex<String>,
    ack_token: Mutex<String>,
}

impl<'a> Agent<'a> {
    /// Enrolls a 9.1.2 agent; panics unless the server says 200.
    pub fn enroll(server: &'a Server, token: &str) -> Self {
        let reply = request(
            server,
            "POST",
            "/api/fleet/agents/enroll",
            Some(token),
            &[],
            enroll_body("", "web-01", "").to_string().as_bytes(),
        );
        assert_eq!(reply.status, 200, "{reply:?}");
        super::schema::check(&reply.body, super::schema::ENROLL_RESPONSE);
        Self::from_reply(server, &reply)
    }

    pub fn from_reply(server: &'a Server, reply: &Reply) -> Self {
        Self {
            server,
            id: reply.body["item"]["id"].as_str().unwrap().to_owned(),
            key: reply.body["item"]["access_api_key"].as_str().unwrap().to_owned(),
            version: Mutex::new("9.1.2".into()),
            ack_token: Mutex::new(String::new()),
        }
    }

    /// The same agent (key, version, ack token) talking to another server process, as after a
    /// restart of the appliance.
    pub fn on<'b>(&self, server: &'b Server) -> Agent<'b> {
        Agent {
            server,
            id: self.id.clone(),
            key: self.key.clone(),
            version: Mutex::new(self.version.lock().unwrap().clone()),
            ack_token: Mutex::new(self.ack_token()),
        }
    }

    /// The version this agent runs (and names in its User-Agent).
    pub fn set_version(&self, version: &str) {
        *self.version.lock().unwrap() = version.to_owned();
    }

    pub fn ack_token(&self) -> String {
        self.ack_token.lock().unwrap().clone()
    }

    pub fn forget_ack_token(&self) {
        self.ack_token.lock().unwrap().clear();
    }

    /// A request to `path` with this agent's key and User-Agent.
    pub fn send(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Reply {
        let ua = format!("Elastic Agent v{}", self.version.lock().unwrap());
        let mut all = vec![("User-Agent", ua.as_str())];
        all.extend_from_slice(headers);
        request(self.server, method, path, Some(&self.key), &all, body)
    }

    /// A check-in: gzip body, the kept `ack_token` added; a non-empty token in the answer is
    /// kept, an empty one ignored, as agents do. Successful answers are checked against the
    /// check-in schema.
    pub fn checkin(&self, mut body: Value) -> Reply {
        let token = self.ack_token();
        if !token.is_empty() && body.get("ack_token").is_none() {
            body["ack_token"] = json!(token);
        }
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(body.to_string().as_bytes()).unwrap();
        let reply = self.send(
            "POST",
            &format!("/api/fleet/agents/{}/checkin", self.id),
            &[("Content-Encoding", "gzip")],
            &gz.finish().unwrap(),
        );
        if reply.status == 200 {
            super::schema::check(&reply.body, super::schema::CHECKIN_RESPONSE);
            let token = reply.body["ack_token"].as_str().unwrap_or_default();
            if !token.is_empty() {
                *self.ack_token.lock().unwrap() = token.to_owned();
            }
        }
        reply
    }

    /// A plain `online` check-in.
    pub fn checkin_online(&self) -> Reply {
        self.checkin(json!({ "status": "online", "message": "Running" }))
    }

    /// Acks these actions (no error), in one batch.
    pub fn ack(&self, action_ids: &[&str]) -> Reply {
        let events: Vec<Value> = action_ids.iter().map(|id| self.ack_event(id)).collect();
        self.ack_events(&events)
    }

    pub fn ack_event(&self, action_id: &str) -> Value {
        json!({"type": "ACTION_RESULT", "subtype": "ACKNOWLEDGED", "agent_id": self.id,
               "action_id": action_id, "message": "acknowledged",
               "timestamp": "2026-11-29T12:00:00.123456789Z"})
    }

    pub fn ack_events(&self, events: &[Value]) -> Reply {
        let reply = self.send(
            "POST",
            &format!("/api/fleet/agents/{}/acks", self.id),
            &[],
            json!({ "events": events }).to_string().as_bytes(),
        );
        if reply.body.get("action").is_some() {
            super::schema::check(&reply.body, super::schema::ACK_RESPONSE);
        }
        reply
    }
}
