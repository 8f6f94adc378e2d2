//! Agent-facing credentials: enrollment tokens and per-agent access keys, both in Fleet's
//! `base64(id:secret)` shape, sent as `Authorization: ApiKey <encoded>`. Only the SHA-256 of a
//! secret is ever stored; the secrets are 32 random bytes, so a plain hash is as strong as a
//! slow one would be.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use rand::RngCore as _;
use sha2::Digest as _;

/// Why an `Authorization` header was refused, with the status and Fleet error code an agent
/// expects for it (fleet-protocol.md §2.3, §2.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CredentialError {
    #[error("no Authorization header")]
    NoHeader,
    #[error("the Authorization header is not `ApiKey <token>`, or appears more than once")]
    MalformedHeader,
    #[error("the token is not standard base64 of UTF-8 text")]
    InvalidToken,
    #[error("the decoded token is not `id:secret`")]
    MalformedToken,
}

impl CredentialError {
    /// The HTTP status and `error` string Fleet Server uses for this case.
    pub fn status_and_code(self) -> (u16, &'static str) {
        match self {
            CredentialError::NoHeader => (401, "ErrNoAuthHeader"),
            CredentialError::MalformedHeader => (400, "ErrMalformedHeader"),
            CredentialError::InvalidToken => (401, "ErrInvalidToken"),
            CredentialError::MalformedToken => (400, "ErrMalformedToken"),
        }
    }
}

/// A key id: the public half of a credential, used to look the credential up.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KeyName(String);

impl KeyName {
    /// Accepts what Fleet key ids look like: 1 to 64 of `A-Z a-z 0-9 _ -`.
    pub fn new(id: &str) -> Option<Self> {
        let ok = !id.is_empty()
            && id.len() <= 64
            && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        ok.then(|| Self(id.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for KeyName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The SHA-256 of a secret, as stored.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct SecretHash(pub [u8; 32]);

impl SecretHash {
    pub fn of(secret: &str) -> Self {
        Self(sha2::Sha256::digest(secret.as_bytes()).into())
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    pub fn from_hex(text: &str) -> Option<Self> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(text, &mut out).ok()?;
        Some(Self(out))
    }
}

impl fmt::Debug for SecretHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretHash(…)")
    }
}

/// A credential presented by a client or minted by the appliance. The secret is never logged.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey {
    id: KeyName,
    secret: String,
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ApiKey({}:…)", self.id)
    }
}

impl ApiKey {
    /// A new random credential: a 20-character hex id (never starting with `-`, so it is safe
    /// on a command line) and a 43-character secret.
    pub fn mint() -> Self {
        let mut id = [0u8; 10];
        let mut secret = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut id);
        rand::rngs::OsRng.fill_bytes(&mut secret);
        Self {
            id: KeyName::new(&hex::encode(id)).expect("hex is a valid key name"),
            secret: URL_SAFE_NO_PAD.encode(secret),
        }
    }

    pub fn id(&self) -> &KeyName {
        &self.id
    }

    /// What the client sends after `ApiKey `: `base64(id:secret)`.
    pub fn encoded(&self) -> String {
        STANDARD.encode(format!("{}:{}", self.id, self.secret))
    }

    pub fn secret_hash(&self) -> SecretHash {
        SecretHash::of(&self.secret)
    }

    /// Whether this credential's secret is the one whose hash is stored.
    pub fn matches(&self, stored: &SecretHash) -> bool {
        // Both sides are hashes of 32-byte random secrets: comparing them leaks nothing usable.
        self.secret_hash() == *stored
    }

    /// Parses the values of every `Authorization` header of a request.
    pub fn from_headers<'a>(
        values: impl IntoIterator<Item = &'a [u8]>,
    ) -> Result<Self, CredentialError> {
        let mut values = values.into_iter();
        let value = values.next().ok_or(CredentialError::NoHeader)?;
        if values.next().is_some() {
            return Err(CredentialError::MalformedHeader);
        }
        let value = std::str::from_utf8(value).map_err(|_| CredentialError::MalformedHeader)?;
        let encoded =
            value.trim_end().strip_prefix("ApiKey ").ok_or(CredentialError::MalformedHeader)?;
        Self::decode(encoded)
    }

    /// Parses `base64(id:secret)`.
    pub fn decode(encoded: &str) -> Result<Self, CredentialError> {
        let bytes = STANDARD.decode(encoded).map_err(|_| CredentialError::InvalidToken)?;
        let text = String::from_utf8(bytes).map_err(|_| CredentialError::InvalidToken)?;
        let mut parts = text.split(':');
        let (Some(id), Some(secret), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(CredentialError::MalformedToken);
        };
        let id = KeyName::new(id).ok_or(CredentialError::MalformedToken)?;
        if secret.is_empty() {
            return Err(CredentialError::MalformedToken);
        }
        Ok(Self { id, secret: secret.to_owned() })
    }
}

/// Fleet's replace-token hash parameters: PBKDF2-HMAC-SHA512, 210 000 rounds, 64-byte salt,
/// 32-byte key. Replace tokens are chosen by people, so unlike our own secrets they get a slow
/// hash.
const REPLACE_ROUNDS: u32 = 210_000;

/// Hashes a replace token as `$pbkdf2-sha512$<rounds>$<salt>$<key>` (base64 without padding).
pub fn hash_replace_token(token: &str) -> String {
    let mut salt = [0u8; 64];
    rand::rngs::OsRng.fill_bytes(&mut salt);
    let key = pbkdf2_sha512(token, &salt, REPLACE_ROUNDS);
    let b64 = base64::engine::general_purpose::STANDARD_NO_PAD;
    format!("$pbkdf2-sha512${REPLACE_ROUNDS}${}${}", b64.encode(salt), b64.encode(key))
}

/// Where replace tokens are hashed and checked: one thread of its own, fed by a queue of 8.
/// Each check is 210,000 rounds of HMAC-SHA512 (tens of milliseconds of one core); run on
/// tokio's blocking pool, 16 guesses at once took all of its threads and every database call
/// waited behind them (admin calls 0.8 ms → 2 s, acks 5 ms → 1.8 s). Here they take one core
/// at most and no thread anything else needs, and a full queue is refused at once (the caller
/// answers 429) instead of growing.
pub static REPLACE_HASHING: std::sync::LazyLock<SlowWork> =
    std::sync::LazyLock::new(|| SlowWork::new(1, 8));

type Job = Box<dyn FnOnce() + Send>;

/// A small pool of dedicated threads with a bounded queue, for CPU-heavy work.
pub struct SlowWork {
    queue: std::sync::mpsc::SyncSender<Job>,
}

impl SlowWork {
    pub fn new(threads: usize, queue: usize) -> Self {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Job>(queue);
        let rx = std::sync::Arc::new(std::sync::Mutex::new(rx));
        for i in 0..threads {
            let rx = std::sync::Arc::clone(&rx);
            std::thread::Builder::new()
                .name(format!("slow-work-{i}"))
                .spawn(move || {
                    loop {
                        let job = rx.lock().expect("queue lock").recv();
                        match job {
                            Ok(job) => job(),
                            Err(_) => break,
                        }
                    }
                })
                .expect("a thread for slow work");
        }
        Self { queue: tx }
    }

    /// Queues `f`; None at once when the queue is full. The receiver gets its result.
    pub fn submit<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Option<tokio::sync::oneshot::Receiver<T>> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = tx.send(f());
        });
        self.queue.try_send(job).ok().map(|()| rx)
    }

    /// Runs `f` on the pool and waits for it; None at once when the queue is full.
    pub async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Option<T> {
        self.submit(f)?.await.ok()
    }
}

/// Whether `token` is the one `stored` (from [`hash_replace_token`]) was made from.
pub fn replace_token_matches(token: &str, stored: &str) -> bool {
    let b64 = base64::engine::general_purpose::STANDARD_NO_PAD;
    let parts: Vec<&str> = stored.split('$').collect();
    let ["", "pbkdf2-sha512", rounds, salt, key] = parts[..] else { return false };
    let (Ok(rounds), Ok(salt), Ok(key)) = (rounds.parse(), b64.decode(salt), b64.decode(key))
    else {
        return false;
    };
    same_secret(&key, &pbkdf2_sha512(token, &salt, rounds))
}

/// Compares two secrets in full whatever their first difference, so the time taken says
/// nothing about where they differ.
pub fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn pbkdf2_sha512(token: &str, salt: &[u8], rounds: u32) -> [u8; 32] {
    let mut key = [0u8; 32];
    pbkdf2::pbkdf2_hmac::<sha2::Sha512>(token.as_bytes(), salt, rounds, &mut key);
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(value: &str) -> Result<ApiKey, CredentialError> {
        ApiKey::from_headers([value.as_bytes()])
    }

    #[test]
    fn minted_keys_round_trip_and_match_only_themselves() {
        let key = ApiKey::mint();
        assert_eq!(key.id().as_str().len(), 20);
        let parsed = header(&format!("ApiKey {}  ", key.encoded())).unwrap();
        assert_eq!(parsed, key);
        assert!(parsed.matches(&key.secret_hash()));
        assert!(!ApiKey::mint().matches(&key.secret_hash()));
        assert_ne!(ApiKey::mint().id(), key.id());
        let stored = key.secret_hash().to_hex();
        assert!(key.matches(&SecretHash::from_hex(&stored).unwrap()));
        assert!(!format!("{key:?}").contains(&key.secret), "the secret never reaches logs");
    }

    #[test]
    fn replace_tokens_hash_slowly_and_match_only_themselves() {
        let stored = hash_replace_token("correct horse");
        assert!(stored.starts_with("$pbkdf2-sha512$210000$"));
        assert!(replace_token_matches("correct horse", &stored));
        assert!(!replace_token_matches("correct hors", &stored));
        assert!(!replace_token_matches("correct horse", "$pbkdf2-sha512$1$AA$AA"));
        assert!(!replace_token_matches("x", "garbage"));
        assert_ne!(stored, hash_replace_token("correct horse"), "salted");
    }

    #[test]
    fn slow_work_refuses_at_once_when_its_queue_is_full() {
        let pool = SlowWork::new(1, 2);
        let (release, wait) = std::sync::mpsc::channel::<()>();
        let (started, running) = std::sync::mpsc::channel();
        let busy = pool
            .submit(move || {
                started.send(()).unwrap();
                wait.recv().unwrap();
                1
            })
            .unwrap();
        running.recv().unwrap();
        // The thread is busy: two jobs queue, the third is refused without waiting.
        let queued: Vec<_> = (2..4).map(|n| pool.submit(move || n).unwrap()).collect();
        assert!(pool.submit(|| 0).is_none());
        release.send(()).unwrap();
        assert_eq!(busy.blocking_recv().unwrap(), 1);
        for (n, q) in (2..4).zip(queued) {
            assert_eq!(q.blocking_recv().unwrap(), n);
        }
    }

    #[test]
    fn header_errors_map_to_fleet_statuses() {
        let good = ApiKey::mint().encoded();
        assert_eq!(ApiKey::from_headers(std::iter::empty()), Err(CredentialError::NoHeader));
        assert_eq!(
            ApiKey::from_headers([
                format!("ApiKey {good}").as_bytes(),
                format!("ApiKey {good}").as_bytes()
            ]),
            Err(CredentialError::MalformedHeader)
        );
        assert_eq!(header(&format!("Bearer {good}")), Err(CredentialError::MalformedHeader));
        assert_eq!(header(&format!("apikey {good}")), Err(CredentialError::MalformedHeader));
        assert_eq!(header("ApiKey !!!"), Err(CredentialError::InvalidToken));
        assert_eq!(
            header(&format!("ApiKey {}", STANDARD.encode([0xff, 0xfe]))),
            Err(CredentialError::InvalidToken)
        );
        for bad in ["nocolon", "a:b:c", ":secret", "id:", "sp ace:x"] {
            assert_eq!(
                header(&format!("ApiKey {}", STANDARD.encode(bad))),
                Err(CredentialError::MalformedToken),
                "{bad}"
            );
        }
        assert_eq!(CredentialError::NoHeader.status_and_code(), (401, "ErrNoAuthHeader"));
        assert_eq!(CredentialError::MalformedToken.status_and_code(), (400, "ErrMalformedToken"));
    }
}
