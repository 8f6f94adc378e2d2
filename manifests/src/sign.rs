//! minisign keys and signatures: deterministic signing, verification against a set of trusted
//! keys, and the trusted comments that bind a signature to one bundle.
//!
//! Files are in minisign's own formats, so the stock `minisign` tool reads every key and
//! signature written here. Signing is done with RFC 8032 (deterministic) Ed25519 rather than the
//! `minisign` crate's hedged signing, because a hedged signature changes on every run and a
//! bundle must be byte-for-byte reproducible. Verification uses the independent
//! `minisign-verify` crate.

use std::collections::BTreeMap;
use std::fmt;
use std::io::{self, Write};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use blake2::Digest as _;
use ed25519_dalek::Signer as _;

use crate::manifest::Sha256Digest;
use crate::name::BundleName;

const UNTRUSTED_PREFIX: &str = "untrusted comment: ";
const TRUSTED_PREFIX: &str = "trusted comment: ";
/// minisign's algorithm tag for signatures over the BLAKE2b-512 hash of the data.
const ALG_PREHASHED: &[u8; 2] = b"ED";
/// minisign's algorithm tag for keys.
const ALG_KEY: &[u8; 2] = b"Ed";

/// A minisign key id: eight random bytes chosen at key generation. It picks a key from a set; it
/// proves nothing by itself.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KeyId(pub [u8; 8]);

impl fmt::Display for KeyId {
    /// minisign prints the id as a little-endian u64 in uppercase hex; so do we.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016X}", u64::from_le_bytes(self.0))
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

/// Problems with key files and passwords.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    #[error("{what} is not a minisign {expected}: {reason}")]
    Malformed { what: String, expected: &'static str, reason: String },
    #[error("cannot decrypt the secret key (wrong password?): {0}")]
    Decrypt(String),
    #[error("the secret key is password-protected and no password was given")]
    PasswordRequired,
    #[error("the secret key is inconsistent: its public half does not match its seed")]
    Inconsistent,
    #[error("key generation failed: {0}")]
    Generate(String),
    #[error("cannot read key file {path}: {source}")]
    Read { path: std::path::PathBuf, source: io::Error },
}

/// A newly generated key pair in minisign's file formats.
pub struct GeneratedKey {
    pub key_id: KeyId,
    /// Contents for the secret key file (scrypt-encrypted unless generated without a password).
    pub secret_key_file: String,
    /// Contents for the public key file.
    pub public_key_file: String,
}

/// Generates a key pair. With `password`, the secret key is encrypted the way `minisign -G`
/// does it (scrypt, about a second and 1 GiB of memory to open); without, like `minisign -G -W`.
pub fn generate_key(password: Option<&str>) -> Result<GeneratedKey, KeyError> {
    let generate = |e: minisign::PError| KeyError::Generate(e.to_string());
    let pair = match password {
        Some(p) => minisign::KeyPair::generate_encrypted_keypair(Some(p.to_owned())),
        None => minisign::KeyPair::generate_unencrypted_keypair(),
    }
    .map_err(generate)?;
    let mut key_id = [0u8; 8];
    key_id.copy_from_slice(pair.pk.keynum());
    let key_id = KeyId(key_id);
    let public_key_file = pair.pk.to_box().map_err(generate)?.into_string();
    let secret_key_file = pair
        .sk
        .to_box(Some(&format!("ferry secret key {key_id}")))
        .map_err(generate)?
        .into_string();
    Ok(GeneratedKey { key_id, secret_key_file, public_key_file })
}

/// A secret key, decrypted and ready to sign.
pub struct SigningKey {
    key_id: KeyId,
    key: ed25519_dalek::SigningKey,
}

impl SigningKey {
    /// Whether the secret key file `text` needs a password. `what` names the file in errors.
    pub fn is_encrypted(text: &str, what: &str) -> Result<bool, KeyError> {
        let bytes = decode_key_line(text, what, "secret key")?;
        // Layout: signature algorithm (2), KDF algorithm (2): "Sc" for scrypt, zeros for none.
        match &bytes[2..4] {
            b"Sc" => Ok(true),
            [0, 0] => Ok(false),
            other => Err(KeyError::Malformed {
                what: what.to_owned(),
                expected: "secret key",
                reason: format!("unknown key derivation {other:?}"),
            }),
        }
    }

    /// Reads a minisign secret key file's text, decrypting it with `password` when it is
    /// encrypted. `what` names the file in errors.
    pub fn from_text(text: &str, what: &str, password: Option<&str>) -> Result<Self, KeyError> {
        let sk_box =
            minisign::SecretKeyBox::from_string(text).map_err(|e| KeyError::Malformed {
                what: what.to_owned(),
                expected: "secret key",
                reason: e.to_string(),
            })?;
        let sk = if Self::is_encrypted(text, what)? {
            let password = password.ok_or(KeyError::PasswordRequired)?;
            sk_box.into_secret_key(Some(password.to_owned()))
        } else {
            sk_box.into_unencrypted_secret_key()
        }
        .map_err(|e| KeyError::Decrypt(e.to_string()))?;
        // The decrypted serialisation is: algorithms and KDF parameters (54 bytes), key id (8),
        // then libsodium's 64-byte secret key (seed ‖ public key), then a checksum.
        let raw = sk.to_bytes();
        if raw.len() < 126 {
            return Err(KeyError::Inconsistent);
        }
        let mut key_id = [0u8; 8];
        key_id.copy_from_slice(&raw[54..62]);
        let mut seed = [0u8; 32];
        seed.copy_from_slice(&raw[62..94]);
        let key = ed25519_dalek::SigningKey::from_bytes(&seed);
        if key.verifying_key().as_bytes() != &raw[94..126] {
            return Err(KeyError::Inconsistent);
        }
        Ok(Self { key_id: KeyId(key_id), key })
    }

    pub fn key_id(&self) -> KeyId {
        self.key_id
    }

    /// The matching public key.
    pub fn public_key(&self) -> PublicKey {
        let mut raw = Vec::with_capacity(42);
        raw.extend_from_slice(ALG_KEY);
        raw.extend_from_slice(&self.key_id.0);
        raw.extend_from_slice(self.key.verifying_key().as_bytes());
        let text = format!(
            "{UNTRUSTED_PREFIX}minisign public key {}\n{}\n",
            self.key_id,
            BASE64.encode(&raw)
        );
        PublicKey::from_text(&text, "derived public key").expect("derived public key is valid")
    }

    /// Signs `data` (pre-hashed, like `minisign -S`), returning the `.minisig` file text.
    pub fn sign(&self, data: &[u8], trusted_comment: &str) -> String {
        let mut hasher = Prehasher::new();
        hasher.update(data);
        self.sign_prehashed(hasher, trusted_comment)
    }

    /// Finishes a streaming signature: `hasher` has seen every byte of the signed data.
    pub fn sign_prehashed(&self, hasher: Prehasher, trusted_comment: &str) -> String {
        assert!(!trusted_comment.contains(['\r', '\n']), "trusted comments are a single line");
        let digest = hasher.0.finalize();
        let signature = self.key.sign(&digest).to_bytes();
        let mut line = Vec::with_capacity(74);
        line.extend_from_slice(ALG_PREHASHED);
        line.extend_from_slice(&self.key_id.0);
        line.extend_from_slice(&signature);
        let mut global = Vec::with_capacity(64 + trusted_comment.len());
        global.extend_from_slice(&signature);
        global.extend_from_slice(trusted_comment.as_bytes());
        let global_signature = self.key.sign(&global).to_bytes();
        format!(
            "{UNTRUSTED_PREFIX}signature from ferry secret key {}\n{}\n{TRUSTED_PREFIX}{}\n{}\n",
            self.key_id,
            BASE64.encode(&line),
            trusted_comment,
            BASE64.encode(global_signature)
        )
    }
}

/// BLAKE2b-512 over the signed data, as minisign's pre-hashed mode wants it. Feed it while
/// writing, then hand it to [`SigningKey::sign_prehashed`].
pub struct Prehasher(blake2::Blake2b512);

impl Prehasher {
    pub fn new() -> Self {
        Self(blake2::Blake2b512::new())
    }

    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}

impl Default for Prehasher {
    fn default() -> Self {
        Self::new()
    }
}

/// A writer that feeds a [`Prehasher`] with everything that passes through it.
pub struct PrehashWriter<W> {
    inner: W,
    hasher: Prehasher,
    written: u64,
}

impl<W: Write> PrehashWriter<W> {
    pub fn new(inner: W) -> Self {
        Self { inner, hasher: Prehasher::new(), written: 0 }
    }

    /// The inner writer, the hash of all bytes written, and their count.
    pub fn into_parts(self) -> (W, Prehasher, u64) {
        (self.inner, self.hasher, self.written)
    }
}

impl<W: Write> Write for PrehashWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A trusted public key.
#[derive(Clone)]
pub struct PublicKey {
    key_id: KeyId,
    key: minisign_verify::PublicKey,
    text: String,
}

impl PublicKey {
    /// Parses a minisign public key file (or its bare base64 line). `what` names it in errors.
    pub fn from_text(text: &str, what: &str) -> Result<Self, KeyError> {
        let malformed = |reason: String| KeyError::Malformed {
            what: what.to_owned(),
            expected: "public key",
            reason,
        };
        let line = text
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty() && !l.starts_with(UNTRUSTED_PREFIX))
            .ok_or_else(|| malformed("no key line".into()))?;
        let raw = BASE64.decode(line).map_err(|e| malformed(format!("bad base64: {e}")))?;
        if raw.len() != 42 || &raw[..2] != ALG_KEY {
            return Err(malformed("not an Ed25519 key of 42 bytes".into()));
        }
        let key =
            minisign_verify::PublicKey::from_base64(line).map_err(|e| malformed(e.to_string()))?;
        let mut key_id = [0u8; 8];
        key_id.copy_from_slice(&raw[2..10]);
        let key_id = KeyId(key_id);
        let text = format!("{UNTRUSTED_PREFIX}minisign public key {key_id}\n{line}\n");
        Ok(Self { key_id, key, text })
    }

    pub fn key_id(&self) -> KeyId {
        self.key_id
    }

    /// The key as a minisign public key file.
    pub fn to_text(&self) -> &str {
        &self.text
    }

    pub(crate) fn inner(&self) -> &minisign_verify::PublicKey {
        &self.key
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.key_id)
    }
}

/// The keys a reader trusts, by key id. Several may be trusted at once during a key rotation.
#[derive(Debug, Clone, Default)]
pub struct TrustedKeys(BTreeMap<KeyId, PublicKey>);

impl TrustedKeys {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn insert(&mut self, key: PublicKey) {
        self.0.insert(key.key_id(), key);
    }

    pub fn get(&self, id: KeyId) -> Option<&PublicKey> {
        self.0.get(&id)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn ids(&self) -> impl Iterator<Item = KeyId> + '_ {
        self.0.keys().copied()
    }
}

impl TrustedKeys {
    /// Reads minisign public key files into a trusted set.
    pub fn load(paths: &[std::path::PathBuf]) -> Result<Self, KeyError> {
        let mut keys = Self::new();
        for path in paths {
            let text = std::fs::read_to_string(path)
                .map_err(|source| KeyError::Read { path: path.clone(), source })?;
            keys.insert(PublicKey::from_text(&text, &path.display().to_string())?);
        }
        Ok(keys)
    }
}

impl From<PublicKey> for TrustedKeys {
    fn from(key: PublicKey) -> Self {
        let mut keys = Self::new();
        keys.insert(key);
        keys
    }
}

/// A parsed `.minisig` file, not yet verified.
#[derive(Clone)]
pub struct SignatureFile {
    key_id: KeyId,
    signature: minisign_verify::Signature,
}

impl SignatureFile {
    /// Parses a minisign signature. Only pre-hashed (`ED`) signatures are accepted: legacy ones
    /// would need the whole input in memory.
    pub fn parse(text: &str) -> Result<Self, String> {
        let line = text.lines().nth(1).ok_or_else(|| "fewer than four lines".to_owned())?.trim();
        let raw = BASE64.decode(line).map_err(|e| format!("bad base64: {e}"))?;
        if raw.len() != 74 {
            return Err(format!("signature line holds {} bytes, expected 74", raw.len()));
        }
        if &raw[..2] != ALG_PREHASHED {
            return Err("not a pre-hashed (ED) signature; legacy signatures are refused".into());
        }
        let signature = minisign_verify::Signature::decode(text).map_err(|e| e.to_string())?;
        let mut key_id = [0u8; 8];
        key_id.copy_from_slice(&raw[2..10]);
        Ok(Self { key_id: KeyId(key_id), signature })
    }

    pub fn key_id(&self) -> KeyId {
        self.key_id
    }

    /// The trusted comment. Only meaningful once the signature has been verified.
    pub fn trusted_comment(&self) -> &str {
        self.signature.trusted_comment()
    }

    /// Verifies the signature over `data` with `key`.
    pub fn verify(&self, key: &PublicKey, data: &[u8]) -> Result<(), String> {
        key.inner().verify(data, &self.signature, false).map_err(|e| e.to_string())
    }

    /// Starts a streaming verification with `key`.
    pub fn verifier<'a>(&'a self, key: &'a PublicKey) -> Result<StreamVerifier<'a>, String> {
        key.inner().verify_stream(&self.signature).map(StreamVerifier).map_err(|e| e.to_string())
    }
}

/// Verifies a signature over data fed to it piece by piece.
pub struct StreamVerifier<'a>(minisign_verify::StreamVerifier<'a>);

impl StreamVerifier<'_> {
    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    pub fn finalize(mut self) -> Result<(), String> {
        self.0.finalize().map_err(|e| e.to_string())
    }
}

/// The facts the detached signature's trusted comment carries, so that `minisign -V` shows them
/// and the signature cannot be moved to another bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleComment {
    pub name: BundleName,
    pub sequence: u64,
    pub manifest_sha256: Sha256Digest,
}

/// The facts the inner manifest signature's trusted comment carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestComment {
    pub name: BundleName,
    pub sequence: u64,
}

/// The facts a parts index's signature carries (`docs/bundle-format.md`, "Parts and parity"):
/// which bundle the index cuts up, so `minisign -V` shows it and the index cannot pass for
/// another bundle's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartsComment {
    pub name: BundleName,
    pub sequence: u64,
    pub bundle_sha256: Sha256Digest,
}

const BUNDLE_TAG: &str = "ferry-bundle";
const MANIFEST_TAG: &str = "ferry-manifest";
const PARTS_TAG: &str = "ferry-parts";

impl fmt::Display for BundleComment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{BUNDLE_TAG} format=1 name={} sequence={} manifest-sha256={}",
            self.name, self.sequence, self.manifest_sha256
        )
    }
}

impl fmt::Display for ManifestComment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{MANIFEST_TAG} format=1 name={} sequence={}", self.name, self.sequence)
    }
}

impl fmt::Display for PartsComment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{PARTS_TAG} format=1 name={} sequence={} bundle-sha256={}",
            self.name, self.sequence, self.bundle_sha256
        )
    }
}

/// Splits `TAG k1=v1 k2=v2 …`, requiring exactly the keys given, in order.
fn comment_fields<'a>(text: &'a str, tag: &str, keys: &[&str]) -> Result<Vec<&'a str>, String> {
    let mut words = text.split(' ');
    if words.next() != Some(tag) {
        return Err(format!("does not start with {tag:?}"));
    }
    let mut values = Vec::with_capacity(keys.len());
    for key in keys {
        let word = words.next().ok_or_else(|| format!("lacks {key}="))?;
        let value = word
            .strip_prefix(key)
            .and_then(|rest| rest.strip_prefix('='))
            .ok_or_else(|| format!("expected {key}=…, found {word:?}"))?;
        values.push(value);
    }
    if let Some(extra) = words.next() {
        return Err(format!("unexpected {extra:?}"));
    }
    Ok(values)
}

fn parse_common(format: &str, name: &str, sequence: &str) -> Result<(BundleName, u64), String> {
    if format != "1" {
        return Err(format!("format={format}, expected 1"));
    }
    let name = BundleName::new(name).map_err(|e| format!("name: {e}"))?;
    let sequence =
        sequence.parse().map_err(|_| format!("sequence {sequence:?} is not a number"))?;
    Ok((name, sequence))
}

impl std::str::FromStr for BundleComment {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        let v =
            comment_fields(text, BUNDLE_TAG, &["format", "name", "sequence", "manifest-sha256"])?;
        let (name, sequence) = parse_common(v[0], v[1], v[2])?;
        let manifest_sha256 =
            Sha256Digest::from_hex(v[3]).ok_or_else(|| format!("manifest-sha256 {:?}", v[3]))?;
        Ok(Self { name, sequence, manifest_sha256 })
    }
}

impl std::str::FromStr for ManifestComment {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        let v = comment_fields(text, MANIFEST_TAG, &["format", "name", "sequence"])?;
        let (name, sequence) = parse_common(v[0], v[1], v[2])?;
        Ok(Self { name, sequence })
    }
}

impl std::str::FromStr for PartsComment {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        let v = comment_fields(text, PARTS_TAG, &["format", "name", "sequence", "bundle-sha256"])?;
        let (name, sequence) = parse_common(v[0], v[1], v[2])?;
        let bundle_sha256 =
            Sha256Digest::from_hex(v[3]).ok_or_else(|| format!("bundle-sha256 {:?}", v[3]))?;
        Ok(Self { name, sequence, bundle_sha256 })
    }
}

fn decode_key_line(text: &str, what: &str, expected: &'static str) -> Result<Vec<u8>, KeyError> {
    let malformed =
        |reason: String| KeyError::Malformed { what: what.to_owned(), expected, reason };
    let line = text.lines().nth(1).ok_or_else(|| malformed("fewer than two lines".into()))?;
    let bytes = BASE64.decode(line.trim()).map_err(|e| malformed(format!("bad base64: {e}")))?;
    if bytes.len() < 4 {
        return Err(malformed("too short".into()));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SigningKey {
        let generated = generate_key(None).unwrap();
        SigningKey::from_text(&generated.secret_key_file, "test", None).unwrap()
    }

    #[test]
    fn sign_and_verify() {
        let key = key();
        let public = key.public_key();
        assert_eq!(public.key_id(), key.key_id());
        let sig = key.sign(b"hello", "t=1");
        assert_eq!(key.sign(b"hello", "t=1"), sig, "signing is deterministic");
        let parsed = SignatureFile::parse(&sig).unwrap();
        assert_eq!(parsed.key_id(), key.key_id());
        assert_eq!(parsed.trusted_comment(), "t=1");
        parsed.verify(&public, b"hello").unwrap();
        assert!(parsed.verify(&public, b"hellO").is_err());
        let tampered = sig.replace("t=1", "t=2");
        SignatureFile::parse(&tampered).unwrap().verify(&public, b"hello").unwrap_err();
        let other = self::key().public_key();
        assert!(parsed.verify(&other, b"hello").is_err());
    }

    #[test]
    fn encrypted_keys_need_their_password() {
        let generated = generate_key(Some("pw")).unwrap();
        let text = &generated.secret_key_file;
        assert!(SigningKey::is_encrypted(text, "k").unwrap());
        assert!(matches!(SigningKey::from_text(text, "k", None), Err(KeyError::PasswordRequired)));
        assert!(matches!(
            SigningKey::from_text(text, "k", Some("wrong")),
            Err(KeyError::Decrypt(_))
        ));
        let key = SigningKey::from_text(text, "k", Some("pw")).unwrap();
        assert_eq!(key.key_id(), generated.key_id);
        let public = PublicKey::from_text(&generated.public_key_file, "pub").unwrap();
        assert_eq!(public.key_id(), generated.key_id);
    }

    #[test]
    fn comments_round_trip_and_refuse_junk() {
        let c = BundleComment {
            name: BundleName::new("site").unwrap(),
            sequence: 9,
            manifest_sha256: Sha256Digest::of(b"m"),
        };
        assert_eq!(c.to_string().parse::<BundleComment>().unwrap(), c);
        assert!("ferry-bundle format=1 name=site sequence=9".parse::<BundleComment>().is_err());
        assert!("timestamp:1 file:x".parse::<BundleComment>().is_err());
        let m = ManifestComment { name: c.name.clone(), sequence: 9 };
        assert_eq!(m.to_string().parse::<ManifestComment>().unwrap(), m);
        assert!("ferry-manifest format=2 name=site sequence=9".parse::<ManifestComment>().is_err());
        let p = PartsComment {
            name: c.name.clone(),
            sequence: 9,
            bundle_sha256: Sha256Digest::of(b"b"),
        };
        assert_eq!(p.to_string().parse::<PartsComment>().unwrap(), p);
        assert!(
            c.to_string().parse::<PartsComment>().is_err(),
            "a bundle's comment is not a parts index's"
        );
    }
}
