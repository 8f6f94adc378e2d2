//! Elastic's PGP signatures: armored detached `.asc` files checked against a trusted keyring.

use std::io::Read;

use pgp::composed::{
    ArmorOptions, Deserializable as _, DetachedSignature, KeyType, SecretKeyParamsBuilder,
    SignedPublicKey, SignedSecretKey,
};
use pgp::crypto::hash::HashAlgorithm;
use pgp::types::{KeyDetails as _, Password};

/// Why a PGP check failed. Messages name the file and the key.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PgpError {
    #[error("{what} is not a usable armored OpenPGP public key: {reason}")]
    Keyring { what: String, reason: String },
    #[error("{signature} is not an armored detached OpenPGP signature: {reason}")]
    MalformedSignature { signature: String, reason: String },
    #[error(
        "{signature} was made by key {issuer}, which is not in the trusted keyring ({trusted})"
    )]
    UnknownSigner { signature: String, issuer: String, trusted: String },
    #[error("{signature} does not verify {file} with key {key}: {reason}")]
    BadSignature { signature: String, file: String, key: String, reason: String },
    #[error("cannot read {file}: {source}")]
    Io { file: String, source: std::io::Error },
    #[error("cannot make a PGP key or signature: {0}")]
    Sign(String),
}

/// The PGP public keys trusted to sign artifacts (normally Elastic's `GPG-KEY-elasticsearch`).
#[derive(Debug, Clone)]
pub struct Keyring {
    keys: Vec<SignedPublicKey>,
    armored: String,
}

impl Keyring {
    /// Parses one or more armored public keys and checks their self-signatures. `what` names
    /// the source in errors.
    pub fn from_armored(text: &str, what: &str) -> Result<Self, PgpError> {
        let err = |reason: String| PgpError::Keyring { what: what.into(), reason };
        let (keys, _) = SignedPublicKey::from_string_many(text).map_err(|e| err(e.to_string()))?;
        let keys = keys.collect::<Result<Vec<_>, _>>().map_err(|e| err(e.to_string()))?;
        if keys.is_empty() {
            return Err(err("no key found".into()));
        }
        for key in &keys {
            key.verify_bindings().map_err(|e| err(format!("key {}: {e}", fingerprint(key))))?;
        }
        Ok(Self { keys, armored: text.to_owned() })
    }

    /// The keyring's text, as read: what goes into a bundle and what the appliance serves.
    pub fn armored(&self) -> &str {
        &self.armored
    }

    /// Fingerprints of the primary keys, uppercase hex.
    pub fn fingerprints(&self) -> Vec<String> {
        self.keys.iter().map(fingerprint).collect()
    }

    /// Verifies the armored detached signature `signature_text` (named `signature` in errors)
    /// over the bytes of `data` (named `file`). Returns the fingerprint of the key that made it.
    pub fn verify(
        &self,
        signature_text: &str,
        signature: &str,
        file: &str,
        data: impl Read,
    ) -> Result<String, PgpError> {
        // The pgp crate reads its input 8 KiB at a time: a 1 MiB buffer makes the 868 MiB of
        // scripts/bench-packages.sh 900 read calls instead of 114 000.
        let data = std::io::BufReader::with_capacity(1 << 20, data);
        let (sig, _) = DetachedSignature::from_string(signature_text).map_err(|e| {
            PgpError::MalformedSignature { signature: signature.into(), reason: e.to_string() }
        })?;
        let issuers: Vec<String> = sig
            .signature
            .issuer_key_id()
            .iter()
            .map(|id| hex::encode_upper(id.as_ref()))
            .chain(
                sig.signature
                    .issuer_fingerprint()
                    .iter()
                    .map(|fp| hex::encode_upper(fp.as_bytes())),
            )
            .collect();
        let matches = |details: &dyn pgp::types::KeyDetails| {
            let id = hex::encode_upper(details.legacy_key_id().as_ref());
            let fp = hex::encode_upper(details.fingerprint().as_bytes());
            issuers.iter().any(|i| *i == id || *i == fp)
        };
        for key in &self.keys {
            let verify = |result: pgp::errors::Result<()>| {
                result.map(|()| fingerprint(key)).map_err(|e| PgpError::BadSignature {
                    signature: signature.into(),
                    file: file.into(),
                    key: fingerprint(key),
                    reason: e.to_string(),
                })
            };
            if matches(&key.primary_key) {
                return verify(sig.signature.verify(key, data));
            }
            if let Some(sub) = key.public_subkeys.iter().find(|s| matches(&s.key)) {
                return verify(sig.signature.verify(sub, data));
            }
        }
        Err(PgpError::UnknownSigner {
            signature: signature.into(),
            issuer: if issuers.is_empty() { "(none named)".into() } else { issuers.join("/") },
            trusted: self.fingerprints().join(", "),
        })
    }
}

fn fingerprint(key: &SignedPublicKey) -> String {
    hex::encode_upper(key.primary_key.fingerprint().as_bytes())
}

/// A PGP signing key made by Ferry itself: for demos and tests that need archives signed the way
/// Elastic signs its own.
pub struct SigningKey {
    key: SignedSecretKey,
}

impl SigningKey {
    /// A new RSA-2048 signing key (the kind Elastic uses) for `user_id`.
    pub fn generate(user_id: &str) -> Result<Self, PgpError> {
        let params = SecretKeyParamsBuilder::default()
            .key_type(KeyType::Rsa(2048))
            .can_certify(true)
            .can_sign(true)
            .primary_user_id(user_id.into())
            .build()
            .map_err(|e| PgpError::Sign(e.to_string()))?;
        let key = params.generate(rand::thread_rng()).map_err(|e| PgpError::Sign(e.to_string()))?;
        Ok(Self { key })
    }

    /// The public key, armored.
    pub fn public_armored(&self) -> String {
        self.key
            .to_public_key()
            .to_armored_string(ArmorOptions::default())
            .expect("a public key always armors")
    }

    /// An armored detached signature over `data`, as Elastic's `.asc` files are.
    pub fn sign(&self, data: impl Read) -> Result<String, PgpError> {
        let sig = DetachedSignature::sign_binary_data(
            rand::thread_rng(),
            &self.key.primary_key,
            &Password::empty(),
            HashAlgorithm::Sha512,
            data,
        )
        .map_err(|e| PgpError::Sign(e.to_string()))?;
        sig.to_armored_string(ArmorOptions::default()).map_err(|e| PgpError::Sign(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_verify_and_refuse() {
        let key = SigningKey::generate("Test <test@example.invalid>").unwrap();
        let ring = Keyring::from_armored(&key.public_armored(), "test key").unwrap();
        let sig = key.sign(&b"archive bytes"[..]).unwrap();
        let fp = ring.verify(&sig, "a.asc", "a", &b"archive bytes"[..]).unwrap();
        assert_eq!(ring.fingerprints(), [fp]);

        let err = ring.verify(&sig, "a.asc", "a", &b"archive bytez"[..]).unwrap_err();
        assert!(matches!(err, PgpError::BadSignature { .. }), "{err}");

        let other = SigningKey::generate("Other <other@example.invalid>").unwrap();
        let foreign = other.sign(&b"archive bytes"[..]).unwrap();
        let err = ring.verify(&foreign, "a.asc", "a", &b"archive bytes"[..]).unwrap_err();
        assert!(matches!(err, PgpError::UnknownSigner { .. }), "{err}");

        let err = ring.verify("not armor", "a.asc", "a", &b""[..]).unwrap_err();
        assert!(matches!(err, PgpError::MalformedSignature { .. }), "{err}");
        assert!(Keyring::from_armored("nothing", "k").is_err());
    }
}
