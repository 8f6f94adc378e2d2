//! On-site secrets at rest: [`SecretBox`] seals values with XChaCha20-Poly1305, bound to their id.
//!
//! Policies name Fleet secrets by id; their values never travel in a bundle, the operator sets
//! them on the appliance (`ferry-appliance secrets set`). The state database keeps only what
//! [`SecretBox::seal`] made of them, so a copy of `state.db` (a backup, a support case) tells
//! nothing without the key, which lives in another file: `data_dir/secrets.key`, made on first
//! use, or the file `[secrets] key_file` names (on another disk, a token-backed mount).
//!
//! A sealed value is `nonce ‖ ciphertext ‖ tag`: a random 24-byte nonce per value (XChaCha's
//! nonces are long enough that random ones never collide, so there is no counter to keep
//! across restarts and takeovers), and the secret's id as associated data, so a sealed value
//! copied to another id's row does not open.

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use chacha20poly1305::aead::{Aead as _, Payload};
use chacha20poly1305::{KeyInit as _, XChaCha20Poly1305, XNonce};
use rand::RngCore as _;

/// The key's file in the data directory, unless the configuration names another.
pub(crate) const KEY_FILE: &str = "secrets.key";
/// The longest id: Kibana's are UUIDs; this leaves room for any scheme, and a row stays small.
pub(crate) const MAX_ID: usize = 256;
/// The largest value: a PEM private key with its chain fits many times over, and a delivered
/// policy carrying several stays a reasonable size.
pub(crate) const MAX_VALUE: usize = 64 << 10;

const KEY_LEN: usize = 32;
const NONCE_LEN: usize = 24;
/// Poly1305's tag.
const TAG_LEN: usize = 16;
/// Prefixed to the id in the associated data, so a value sealed here cannot pass for anything
/// else sealed under the same key, should the key ever serve another purpose.
const AAD_CONTEXT: &[u8] = b"ferry-appliance secret v1\0";

/// Why a secret id or value is refused, or a sealed value does not open. Never carries a value.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SecretError {
    #[error(
        "secret id {0} is refused: an id is 1 to {MAX_ID} bytes without `}}` or control \
         characters (it must fit in $co.elastic.secret{{ID}})"
    )]
    BadId(String),
    #[error("a secret's value cannot be empty")]
    EmptyValue,
    #[error("a secret's value is at most {MAX_VALUE} bytes (64 KiB); this one is {0} bytes")]
    ValueTooLong(usize),
    #[error(
        "secret {id} does not open with the key in {}: the key is not the one it was sealed \
         with (state.db restored or copied without its key file?) or the stored value is \
         damaged; restore the matching key file, or set the secret again",
        key_file.display()
    )]
    Unopenable { id: String, key_file: PathBuf },
}

/// Checks that `id` can name a secret: 1 to [`MAX_ID`] bytes, no `}` (which would end
/// `$co.elastic.secret{ID}` early) and no control characters (which nothing prints safely).
pub(crate) fn check_id(id: &str) -> Result<(), SecretError> {
    if id.is_empty() || id.len() > MAX_ID || id.chars().any(|c| c == '}' || c.is_control()) {
        // Escaped and cut: the id may be long, or hold what a terminal would act on.
        return Err(SecretError::BadId(format!(
            "\"{}\"",
            ferry_manifests::terminal::escape(id, 80)
        )));
    }
    Ok(())
}

/// Checks that `value` can be a secret's value: not empty, at most [`MAX_VALUE`] bytes.
pub(crate) fn check_value(value: &str) -> Result<(), SecretError> {
    match value.len() {
        0 => Err(SecretError::EmptyValue),
        n if n > MAX_VALUE => Err(SecretError::ValueTooLong(n)),
        _ => Ok(()),
    }
}

/// Seals and opens secret values with the appliance's key.
pub(crate) struct SecretBox {
    cipher: XChaCha20Poly1305,
    /// Named in errors, so the operator knows which file to restore.
    key_file: PathBuf,
}

impl std::fmt::Debug for SecretBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("SecretBox").field("key_file", &self.key_file).finish_non_exhaustive()
    }
}

impl SecretBox {
    /// The box of the key in `key_file` if the configuration names one, otherwise of
    /// `data_dir/secrets.key`, which is made when missing, unless the store already holds
    /// `stored` sealed values: they were sealed under the lost key, and a new one would make
    /// them unreadable without a word (a restore that forgot the key file).
    pub(crate) fn open_or_create(
        data_dir: &Path,
        key_file: Option<&Path>,
        stored: usize,
    ) -> anyhow::Result<Self> {
        let path = match key_file {
            Some(path) => path.to_owned(),
            None => {
                let path = data_dir.join(KEY_FILE);
                if std::fs::symlink_metadata(&path).is_err() {
                    anyhow::ensure!(
                        stored == 0,
                        "the state database holds {stored} sealed secret(s) but their key {} is \
                         missing: restore it from the backup it was taken with (without it the \
                         values are lost; `secrets remove` each one and set it again)",
                        path.display()
                    );
                    create_key(&path)?;
                }
                path
            }
        };
        let key = read_key(&path)?;
        Ok(Self { cipher: XChaCha20Poly1305::new(&key.into()), key_file: path })
    }

    /// The file the key was read from.
    pub(crate) fn key_file(&self) -> &Path {
        &self.key_file
    }

    /// `value` sealed for secret `id`: `nonce ‖ ciphertext ‖ tag`.
    pub(crate) fn seal(&self, id: &str, value: &str) -> Result<Vec<u8>, SecretError> {
        check_id(id)?;
        check_value(value)?;
        let mut nonce = [0u8; NONCE_LEN];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let aad = aad(id);
        let sealed = self
            .cipher
            .encrypt(&XNonce::from(nonce), Payload { msg: value.as_bytes(), aad: &aad })
            // Only a plaintext of 256 GiB fails; a checked value is at most 64 KiB.
            .expect("XChaCha20-Poly1305 seals any value under 64 KiB");
        let mut out = Vec::with_capacity(NONCE_LEN + sealed.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    /// The value `sealed` holds for secret `id`; [`SecretError::Unopenable`] when it was sealed
    /// under another key or for another id, or is damaged.
    pub(crate) fn open(&self, id: &str, sealed: &[u8]) -> Result<String, SecretError> {
        let unopenable = || SecretError::Unopenable {
            id: ferry_manifests::terminal::escape(id, 80),
            key_file: self.key_file.clone(),
        };
        if sealed.len() < NONCE_LEN + TAG_LEN {
            return Err(unopenable());
        }
        let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
        let nonce = XNonce::try_from(nonce).map_err(|_| unopenable())?;
        let aad = aad(id);
        let plain = self
            .cipher
            .decrypt(&nonce, Payload { msg: ciphertext, aad: &aad })
            .map_err(|_| unopenable())?;
        // Sealed from a `&str`: anything else was not sealed here.
        String::from_utf8(plain).map_err(|_| unopenable())
    }
}

fn aad(id: &str) -> Vec<u8> {
    [AAD_CONTEXT, id.as_bytes()].concat()
}

/// Reads a key file: 32 bytes, raw or as 64 hex digits (a trailing newline allowed, as
/// `openssl rand -hex 32 > FILE` writes it), a regular file no other user can read or write.
fn read_key(path: &Path) -> anyhow::Result<[u8; KEY_LEN]> {
    use std::os::unix::fs::PermissionsExt as _;
    let file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => anyhow::bail!(
            "the secrets key file {} does not exist: name an existing file in [secrets] \
             key_file (32 random bytes, or 64 hex digits, mode 0600: `openssl rand -hex 32`), \
             or leave key_file out to keep the key in the data directory",
            path.display()
        ),
        Err(e) => {
            return Err(anyhow::Error::new(e)
                .context(format!("cannot open the secrets key file {}", path.display())));
        }
    };
    // Checked on the file opened, not the path, so what is checked is what is read.
    let meta = file.metadata().with_context(|| format!("cannot stat {}", path.display()))?;
    anyhow::ensure!(
        meta.is_file(),
        "the secrets key file {} is not a regular file",
        path.display()
    );
    let mode = meta.permissions().mode() & 0o777;
    anyhow::ensure!(
        mode & 0o077 == 0,
        "the secrets key file {} is open to other users (mode {mode:o}): anyone who can read it \
         and state.db can read every secret; run `chmod 600 {}`",
        path.display(),
        path.display()
    );
    // More than a hex key and its newline is not a key: read no further.
    let mut bytes = Vec::with_capacity(2 * KEY_LEN + 2);
    file.take(2 * KEY_LEN as u64 + 3)
        .read_to_end(&mut bytes)
        .with_context(|| format!("cannot read the secrets key file {}", path.display()))?;
    parse_key(&bytes).ok_or_else(|| {
        anyhow::anyhow!(
            "the secrets key file {} is not a key: it must hold exactly 32 bytes, or 64 hex \
             digits (it holds {}{} bytes)",
            path.display(),
            if bytes.len() > 2 * KEY_LEN + 2 { "more than " } else { "" },
            bytes.len().min(2 * KEY_LEN + 2)
        )
    })
}

/// 32 raw bytes, or 64 hex digits and optional trailing ASCII whitespace.
fn parse_key(bytes: &[u8]) -> Option<[u8; KEY_LEN]> {
    if let Ok(raw) = <[u8; KEY_LEN]>::try_from(bytes) {
        return Some(raw);
    }
    let text = bytes.trim_ascii_end();
    if text.len() != 2 * KEY_LEN {
        return None;
    }
    let mut key = [0u8; KEY_LEN];
    hex::decode_to_slice(text, &mut key).ok()?;
    Some(key)
}

/// Makes a new random key at `path` (mode 0600) unless one appears there meanwhile: written
/// whole to a temporary file, then renamed into place without replacing, so two processes
/// starting at once agree on one key and nobody ever reads half of one.
fn create_key(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!("{KEY_FILE}.{}.tmp", std::process::id()));
    // Left by a process with our pid that died between the two steps.
    let _ = std::fs::remove_file(&tmp);
    let mut key = [0u8; KEY_LEN];
    rand::rngs::OsRng.fill_bytes(&mut key);
    let written = (|| -> std::io::Result<()> {
        let mut f =
            std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
        f.write_all(&key)?;
        f.sync_all()
    })();
    key.fill(0);
    written.with_context(|| format!("cannot write {}", tmp.display()))?;
    let placed = rename_noreplace(&tmp, path);
    let _ = std::fs::remove_file(&tmp);
    match placed {
        Ok(()) => {
            // The rename itself must survive a power cut: a key lost after values were sealed
            // with it loses them.
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .with_context(|| format!("cannot sync {}", dir.display()))?;
            tracing::info!(key = %path.display(), "made a new key for on-site secrets");
            Ok(())
        }
        // Another process made one first: that one is the key.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(anyhow::Error::new(e).context(format!("cannot create {}", path.display()))),
    }
}

/// Moves `from` to `to` unless `to` exists (`AlreadyExists` then). A file system without
/// `RENAME_NOREPLACE` gets a hard link instead, which fails the same way; the caller removes
/// `from`.
fn rename_noreplace(from: &Path, to: &Path) -> std::io::Result<()> {
    use rustix::fs::{CWD, RenameFlags, renameat_with};
    use rustix::io::Errno;
    match renameat_with(CWD, from, CWD, to, RenameFlags::NOREPLACE) {
        Ok(()) => Ok(()),
        Err(Errno::INVAL | Errno::NOSYS | Errno::OPNOTSUPP) => std::fs::hard_link(from, to),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    fn fresh() -> (tempfile::TempDir, SecretBox) {
        let dir = tempfile::tempdir().unwrap();
        let sb = SecretBox::open_or_create(dir.path(), None, 0).unwrap();
        (dir, sb)
    }

    fn key_file(dir: &Path, name: &str, bytes: &[u8], mode: u32) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    #[test]
    fn a_sealed_value_opens_for_its_id_only() {
        let (_dir, sb) = fresh();
        let pem = "-----BEGIN PRIVATE KEY-----\nMIIE…\n-----END PRIVATE KEY-----\n";
        let sealed = sb.seal("tls-key", pem).unwrap();
        assert_eq!(sealed.len(), NONCE_LEN + pem.len() + TAG_LEN);
        assert!(!sealed.windows(5).any(|w| w == b"BEGIN"), "not in clear");
        assert_eq!(sb.open("tls-key", &sealed).unwrap(), pem);
        // Sealed twice, two nonces: equal values do not look equal at rest.
        assert_ne!(sb.seal("tls-key", pem).unwrap(), sealed);
        let e = sb.open("other-id", &sealed).unwrap_err();
        assert!(matches!(&e, SecretError::Unopenable { id, .. } if id == "other-id"), "{e}");
        assert!(e.to_string().contains(&sb.key_file().display().to_string()), "{e}");
        assert!(!e.to_string().contains("PRIVATE"), "{e}");
    }

    #[test]
    fn a_wrong_key_or_a_changed_byte_does_not_open() {
        let (_dir, sb) = fresh();
        let (_other_dir, other) = fresh();
        let sealed = sb.seal("db-password", "hunter2").unwrap();
        assert!(matches!(other.open("db-password", &sealed), Err(SecretError::Unopenable { .. })));
        for i in 0..sealed.len() {
            let mut tampered = sealed.clone();
            tampered[i] ^= 0x01;
            assert!(sb.open("db-password", &tampered).is_err(), "byte {i}");
        }
        for cut in [0, NONCE_LEN, NONCE_LEN + TAG_LEN, sealed.len() - 1] {
            assert!(sb.open("db-password", &sealed[..cut]).is_err(), "cut at {cut}");
        }
        let mut longer = sealed.clone();
        longer.push(0);
        assert!(sb.open("db-password", &longer).is_err());
    }

    #[test]
    fn ids_and_values_are_checked() {
        let (_dir, sb) = fresh();
        for good in ["a", "9f0a-uuid", &"x".repeat(MAX_ID), "with space/and{brace", "ünï"] {
            assert!(check_id(good).is_ok(), "{good}");
        }
        for bad in ["", "a}b", "tab\there", "nl\n", "\u{7f}", "\u{85}", &"x".repeat(MAX_ID + 1)] {
            let e = sb.seal(bad, "v").unwrap_err();
            assert!(matches!(e, SecretError::BadId(_)), "{bad:?}");
            assert!(!e.to_string().contains('\n') && !e.to_string().contains('\t'), "{e}");
        }
        assert!(matches!(sb.seal("a", ""), Err(SecretError::EmptyValue)));
        assert!(sb.seal("a", &"v".repeat(MAX_VALUE)).is_ok());
        let e = sb.seal("a", &"v".repeat(MAX_VALUE + 1)).unwrap_err();
        assert!(matches!(e, SecretError::ValueTooLong(n) if n == MAX_VALUE + 1));
    }

    #[test]
    fn the_data_dir_key_is_made_once_private_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let first = SecretBox::open_or_create(dir.path(), None, 0).unwrap();
        let path = dir.path().join(KEY_FILE);
        assert_eq!(first.key_file(), path);
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!((meta.len(), meta.permissions().mode() & 0o777), (32, 0o600));
        let sealed = first.seal("id", "value").unwrap();
        // Opened again (a restart; stored values now exist): the same key.
        let again = SecretBox::open_or_create(dir.path(), None, 1).unwrap();
        assert_eq!(again.open("id", &sealed).unwrap(), "value");
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(leftovers, [KEY_FILE], "no temporary file left");
    }

    #[test]
    fn a_missing_key_is_not_made_anew_over_stored_values() {
        let dir = tempfile::tempdir().unwrap();
        let e = SecretBox::open_or_create(dir.path(), None, 3).unwrap_err().to_string();
        assert!(e.contains("3 sealed secret(s)") && e.contains(KEY_FILE), "{e}");
        assert!(!dir.path().join(KEY_FILE).exists());
    }

    #[test]
    fn racing_creators_agree_on_one_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(KEY_FILE);
        std::fs::write(&path, [7u8; 32]).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        // The loser of the race finds the winner's key in place and keeps it.
        create_key(&path).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), [7u8; 32]);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_named_key_file_is_raw_or_hex() {
        let dir = tempfile::tempdir().unwrap();
        let raw = key_file(dir.path(), "raw", &[0xab; 32], 0o600);
        let hex = key_file(dir.path(), "hex", format!("{}\n", "ab".repeat(32)).as_bytes(), 0o400);
        let a = SecretBox::open_or_create(dir.path(), Some(&raw), 5).unwrap();
        let b = SecretBox::open_or_create(dir.path(), Some(&hex), 5).unwrap();
        assert_eq!(b.open("id", &a.seal("id", "same key").unwrap()).unwrap(), "same key");
        assert!(!dir.path().join(KEY_FILE).exists(), "a named key makes none in the data dir");
    }

    #[test]
    fn bad_key_files_are_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let refused = |path: &Path| {
            let e = SecretBox::open_or_create(dir.path(), Some(path), 0).unwrap_err();
            let message = format!("{e:#}");
            assert!(message.contains(&path.display().to_string()), "{message}");
            message
        };
        let missing = refused(&dir.path().join("missing"));
        assert!(missing.contains("does not exist"), "{missing}");
        for (name, bytes) in [
            ("short", vec![1u8; 31]),
            ("long", vec![1u8; 33]),
            ("empty", vec![]),
            ("bad-hex", format!("{}\n", "zz".repeat(32)).into_bytes()),
            ("short-hex", "ab".repeat(31).into_bytes()),
            ("huge", vec![b'a'; 4096]),
        ] {
            let message = refused(&key_file(dir.path(), name, &bytes, 0o600));
            assert!(message.contains("is not a key"), "{name}: {message}");
        }
        for mode in [0o640, 0o604, 0o620, 0o644] {
            let message = refused(&key_file(dir.path(), "open", &[1u8; 32], mode));
            assert!(message.contains("open to other users") && message.contains("chmod 600"));
        }
        let message = refused(dir.path());
        assert!(message.contains("not a regular file"), "{message}");
    }

    #[test]
    fn an_opened_data_dir_key_is_checked_too() {
        let dir = tempfile::tempdir().unwrap();
        drop(SecretBox::open_or_create(dir.path(), None, 0).unwrap());
        let path = dir.path().join(KEY_FILE);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = SecretBox::open_or_create(dir.path(), None, 0).unwrap_err().to_string();
        assert!(e.contains("open to other users"), "{e}");
    }
}
