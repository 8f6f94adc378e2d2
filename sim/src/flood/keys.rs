//! `keys`: a keep-alive flood of check-ins and acks with forged or misused access keys.

use std::sync::Arc;
use std::time::Duration;

use hyper::body::Bytes;
use serde_json::json;

use super::{Enrolled, Flood, Tally, Variants, base64, pace, random_hex, random_uuid, send};

/// Forged and misused access keys, each expected to get 401 or 403.
#[derive(Clone, Copy)]
pub(super) enum KeyAbuse {
    /// A well-formed key nobody issued, on a random agent's check-in.
    UnknownCheckin,
    /// The same on acks.
    UnknownAck,
    /// A real agent's key id with a wrong secret.
    WrongSecret,
    /// A real agent's valid key on another agent's acks (403).
    OtherAgent,
    /// Not base64 at all.
    Malformed,
}

pub(super) const VARIANTS: &[KeyAbuse] = &[
    KeyAbuse::UnknownCheckin,
    KeyAbuse::UnknownAck,
    KeyAbuse::WrongSecret,
    KeyAbuse::OtherAgent,
    KeyAbuse::Malformed,
];

impl KeyAbuse {
    pub(super) fn name(self) -> &'static str {
        match self {
            KeyAbuse::UnknownCheckin => "unknown-key-checkin",
            KeyAbuse::UnknownAck => "unknown-key-ack",
            KeyAbuse::WrongSecret => "wrong-secret-checkin",
            KeyAbuse::OtherAgent => "other-agent-ack",
            KeyAbuse::Malformed => "malformed-key-ack",
        }
    }
}

/// The id half of a key (`base64(id:secret)`), decoded.
fn key_id(key: &str) -> Option<String> {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut bits = 0u32;
    let mut nbits = 0;
    let mut out = Vec::new();
    for c in key.bytes().take_while(|c| *c != b'=') {
        bits = (bits << 6) | ALPHABET.iter().position(|a| *a == c)? as u32;
        nbits += 6;
        if nbits >= 8 {
            nbits -= 8;
            out.push((bits >> nbits) as u8);
        }
    }
    let text = String::from_utf8(out).ok()?;
    text.split_once(':').map(|(id, _)| id.to_owned())
}

/// A keep-alive connection sending forged and misused keys at its share of the rate.
pub(super) async fn task(
    flood: Arc<Flood>,
    tally: Arc<Tally>,
    variants: Arc<Variants>,
    helper: Enrolled,
    every: Duration,
    n: usize,
) {
    let helper_key_id = key_id(&helper.key).unwrap_or_default();
    let checkin = Bytes::from(json!({"status": "online", "message": "flood"}).to_string());
    let mut conn = flood.conn();
    let mut tick = pace(every);
    let mut i = n;
    while flood.running() {
        tick.tick().await;
        let variant = VARIANTS[i % VARIANTS.len()];
        let vt = &variants[i % VARIANTS.len()].1;
        i += 1;
        let forged = || base64(format!("{}:{}", random_hex(10), random_hex(21)).as_bytes());
        let ack = |agent: &str| {
            Bytes::from(
                json!({"events": [{"type": "ACTION_RESULT", "subtype": "ACKNOWLEDGED",
                    "agent_id": agent, "action_id": "policy:flood:1", "message": "flood"}]})
                .to_string(),
            )
        };
        let (path, key, body) = match variant {
            KeyAbuse::UnknownCheckin => {
                (format!("/api/fleet/agents/{}/checkin?", random_uuid()), forged(), checkin.clone())
            }
            KeyAbuse::UnknownAck => {
                let agent = random_uuid();
                (format!("/api/fleet/agents/{agent}/acks?"), forged(), ack(&agent))
            }
            KeyAbuse::WrongSecret => (
                format!("/api/fleet/agents/{}/checkin?", helper.id),
                base64(format!("{helper_key_id}:{}", random_hex(21)).as_bytes()),
                checkin.clone(),
            ),
            KeyAbuse::OtherAgent => {
                let agent = random_uuid();
                (format!("/api/fleet/agents/{agent}/acks?"), helper.key.clone(), ack(&agent))
            }
            KeyAbuse::Malformed => {
                let agent = random_uuid();
                (format!("/api/fleet/agents/{agent}/acks?"), "!!not-base64!!".into(), ack(&agent))
            }
        };
        tally.attempt();
        vt.attempt();
        let result = send(&mut conn, "POST", &path, &key, body).await.map(|r| r.status);
        tally.record(result.clone());
        vt.record(result);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips_key_ids() {
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
        let key = base64(b"0123abcd:s3cr3t");
        assert_eq!(key_id(&key).as_deref(), Some("0123abcd"));
        assert_eq!(key_id("!!"), None);
    }
}
