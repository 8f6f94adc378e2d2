//! A test client that speaks as a stock Elastic Agent: enrollments, check-ins and acks are the
//! `ferry-wire` corpus samples of its version (Go's field order, `"tags":null`, gzip only from
//! 9.4), with an `ack_token` it keeps and sends back. Tests that need another shape send their
//! own body through `checkin` or `ack_events`, or any request through `request`.

use std::collections::HashMap;
use std::io::Write as _;
use std::sync::Mutex;

use ferry_wire::{Kind, Vars};

use serde_json::{Value, json};

use super::Endpoint;

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
    server: &Endpoint,
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
pub fn get(server: &Endpoint, path: &str, key: Option<&str>) -> Reply {
    request(server, "GET", path, key, &[], b"")
}

/// The version test agents run unless a test says otherwise.
pub const AGENT_VERSION: &str = "9.1.2";

/// Sends a corpus request as it is: its own headers, body and path (plus the bare `?`).
pub fn send_wire(server: &Endpoint, request: &ferry_wire::Request) -> Reply {
    // `request` adds the agent's usual headers; the sample's own replace them all.
    let mut headers: Vec<(&str, &str)> =
        request.headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    for default in ["Elastic-Api-Version", "kbn-xsrf", "X-Request-ID", "Accept", "Content-Type"] {
        if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case(default)) {
            headers.push((default, ""));
        }
    }
    let path = request.path.trim_end_matches('?');
    self::request(server, request.method, path, None, &headers, &request.body)
}

/// An enrollment as an agent of `version` sends it (the corpus sample of its era), with the
/// host name given.
pub fn enroll_request(token: &str, version: &str, hostname: &str) -> ferry_wire::Request {
    ferry_wire::for_agent(Kind::Enroll, version).render(
        &Vars::new()
            .set("version", version)
            .set("enrollment_token", token)
            .set("hostname", hostname),
    )
}

/// An enrollment body naming an agent id and a replace token (agents >= 8.19 and 9.0 send
/// both, empty when the install command has none), with tags: the 9.0 sample's shape.
pub fn enroll_body(id: &str, hostname: &str, replace_token: &str) -> Value {
    let mut body: Value =
        serde_json::from_str(&enroll_request("unused", AGENT_VERSION, hostname).json).unwrap();
    body["id"] = json!(id);
    body["replace_token"] = json!(replace_token);
    body["metadata"]["tags"] = json!(["linux", "dmz", "linux"]);
    body
}

pub struct Agent<'a> {
    pub server: &'a Endpoint,
    pub id: String,
    pub key: String,
    version: Mutex<String>,
    ack_token: Mutex<String>,
    /// The type of each action received, for the ack messages agents write.
    actions: Mutex<HashMap<String, String>>,
}

impl<'a> Agent<'a> {
    /// Enrolls an agent of [`AGENT_VERSION`]; panics unless the server says 200.
    pub fn enroll(server: &'a Endpoint, token: &str) -> Self {
        Self::enroll_as(server, token, AGENT_VERSION)
    }

    /// Enrolls an agent of `version` with its era's request; panics unless the server says 200.
    pub fn enroll_as(server: &'a Endpoint, token: &str, version: &str) -> Self {
        let reply = send_wire(server, &enroll_request(token, version, "Web-01"));
        assert_eq!(reply.status, 200, "{reply:?}");
        super::schema::check(&reply.body, super::schema::ENROLL_RESPONSE);
        let agent = Self::from_reply(server, &reply);
        agent.set_version(version);
        agent
    }

    /// An agent enrolled earlier (its id, access key and the ack token it kept), as one whose
    /// appliance moved under it.
    pub fn known(server: &'a Endpoint, id: &str, key: &str, ack_token: &str) -> Self {
        Self {
            server,
            id: id.to_owned(),
            key: key.to_owned(),
            version: Mutex::new(AGENT_VERSION.into()),
            ack_token: Mutex::new(ack_token.to_owned()),
            actions: Mutex::new(HashMap::new()),
        }
    }

    pub fn from_reply(server: &'a Endpoint, reply: &Reply) -> Self {
        Self {
            server,
            id: reply.body["item"]["id"].as_str().unwrap().to_owned(),
            key: reply.body["item"]["access_api_key"].as_str().unwrap().to_owned(),
            version: Mutex::new(AGENT_VERSION.into()),
            ack_token: Mutex::new(String::new()),
            actions: Mutex::new(HashMap::new()),
        }
    }

    pub fn on<'b>(&self, server: &'b Endpoint) -> Agent<'b> {
        Agent {
            server,
            id: self.id.clone(),
            key: self.key.clone(),
            version: Mutex::new(self.version.lock().unwrap().clone()),
            ack_token: Mutex::new(self.ack_token()),
            actions: Mutex::new(self.actions.lock().unwrap().clone()),
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

    pub fn version(&self) -> String {
        self.version.lock().unwrap().clone()
    }

    /// What this agent's corpus samples need to know about it.
    pub fn vars(&self) -> Vars {
        Vars::new()
            .set("version", self.version())
            .set("agent_id", &self.id)
            .set("access_key", &self.key)
            .set("hostname", "Web-01")
            .set("ack_token", self.ack_token())
    }

    /// A check-in with a body of the test's own, gzipped, the kept `ack_token` added.
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
        self.took(reply)
    }

    /// A check-in exactly as an agent of this version sends it, with `vars` added (such as
    /// `upgrade_details`).
    pub fn checkin_wire(&self, extra: &[(&'static str, String)]) -> Reply {
        let mut vars = self.vars();
        for (k, v) in extra {
            vars.put(k, v.clone());
        }
        let request = ferry_wire::for_agent(Kind::Checkin, &self.version()).render(&vars);
        self.took(send_wire(self.server, &request))
    }

    /// A plain check-in exactly as an agent of this version sends it.
    pub fn checkin_online(&self) -> Reply {
        self.checkin_wire(&[])
    }

    /// Successful answers are checked against the check-in schema; a non-empty token in one is
    /// kept and an empty one ignored, as agents do.
    fn took(&self, reply: Reply) -> Reply {
        if reply.status == 200 {
            super::schema::check(&reply.body, super::schema::CHECKIN_RESPONSE);
            let token = reply.body["ack_token"].as_str().unwrap_or_default();
            if !token.is_empty() {
                *self.ack_token.lock().unwrap() = token.to_owned();
            }
            let mut actions = self.actions.lock().unwrap();
            for action in reply.body["actions"].as_array().into_iter().flatten() {
                actions.insert(
                    action["id"].as_str().unwrap_or_default().to_owned(),
                    action["type"].as_str().unwrap_or_default().to_owned(),
                );
            }
        }
        reply
    }

    /// Acks these actions (no error) in one batch, as this agent's version writes acks.
    pub fn ack(&self, action_ids: &[&str]) -> Reply {
        let vars: Vec<Vars> = {
            let actions = self.actions.lock().unwrap();
            action_ids
                .iter()
                .map(|id| {
                    let kind = actions.get(*id).map_or("UNKNOWN", String::as_str);
                    self.vars().set("action_id", *id).set("action_type", kind)
                })
                .collect()
        };
        let sample = ferry_wire::for_agent(Kind::Ack, &self.version());
        let reply = send_wire(self.server, &ferry_wire::ack_batch(sample, &vars));
        Self::check_ack_reply(reply)
    }

    pub fn ack_event(&self, action_id: &str) -> Value {
        json!({"type": "ACTION_RESULT", "subtype": "ACKNOWLEDGED", "agent_id": self.id,
               "action_id": action_id, "message": "acknowledged",
               "timestamp": "2026-11-29T12:00:00.123456789Z"})
    }

    pub fn ack_events(&self, events: &[Value]) -> Reply {
        Self::check_ack_reply(self.send(
            "POST",
            &format!("/api/fleet/agents/{}/acks", self.id),
            &[],
            json!({ "events": events }).to_string().as_bytes(),
        ))
    }

    fn check_ack_reply(reply: Reply) -> Reply {
        if reply.body.get("action").is_some() {
            super::schema::check(&reply.body, super::schema::ACK_RESPONSE);
        }
        reply
    }
}
