//! Key files on disk: generating them safely and opening secret keys with a password.

use std::fs::{self, OpenOptions};
use std::io::{IsTerminal as _, Write as _};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use ferry_manifests::{KeyId, SigningKey};

/// The environment variable a secret key's password may come from in automation.
pub const PASSWORD_ENV: &str = "FERRY_KEY_PASSWORD";

/// Where a password comes from, in order of preference.
#[derive(Debug, Clone, Default)]
pub struct PasswordSource {
    /// A file whose first line is the password.
    pub file: Option<PathBuf>,
}

impl PasswordSource {
    /// The password from `--password-file`, then `FERRY_KEY_PASSWORD`, then a terminal prompt
    /// (asked twice when `confirm`). Fails rather than hang when there is no terminal.
    pub fn get(&self, prompt: &str, confirm: bool) -> anyhow::Result<String> {
        if let Some(file) = &self.file {
            let text = fs::read_to_string(file)
                .with_context(|| format!("cannot read password file {}", file.display()))?;
            let password = text.lines().next().unwrap_or_default().to_owned();
            if password.is_empty() {
                bail!("password file {} is empty", file.display());
            }
            return Ok(password);
        }
        if let Ok(password) = std::env::var(PASSWORD_ENV) {
            return Ok(password);
        }
        if !std::io::stdin().is_terminal() {
            bail!(
                "a password is needed and there is no terminal to ask on: use --password-file, \
                 {PASSWORD_ENV}, or a key made with --without-password"
            );
        }
        let password = rpassword::prompt_password(prompt).context("cannot read password")?;
        if password.is_empty() {
            bail!("the password is empty");
        }
        if confirm && rpassword::prompt_password("Password (again): ")? != password {
            bail!("the passwords do not match");
        }
        Ok(password)
    }
}

/// What `keygen` wrote.
pub struct KeygenOutcome {
    pub key_id: KeyId,
    pub encrypted: bool,
}

/// Writes a new key pair. Refuses to replace either file unless `force`; the secret key file is
/// readable by its owner only.
pub fn keygen(
    secret: &Path,
    public: &Path,
    password: Option<&str>,
    force: bool,
) -> anyhow::Result<KeygenOutcome> {
    if !force {
        for path in [secret, public] {
            if fs::symlink_metadata(path).is_ok() {
                bail!("{} already exists; pass --force to replace it", path.display());
            }
        }
    }
    let generated = ferry_manifests::generate_key(password)?;
    write_new(secret, generated.secret_key_file.as_bytes(), 0o600, force)?;
    write_new(public, generated.public_key_file.as_bytes(), 0o644, force)?;
    Ok(KeygenOutcome { key_id: generated.key_id, encrypted: password.is_some() })
}

fn write_new(path: &Path, bytes: &[u8], mode: u32, force: bool) -> anyhow::Result<()> {
    if force {
        match fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(e).with_context(|| format!("cannot replace {}", path.display()));
            }
            _ => {}
        }
    }
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Opens a secret key file, asking for its password only if it is encrypted.
pub fn load_secret(path: &Path, password: &PasswordSource) -> anyhow::Result<SigningKey> {
    let text = fs::read_to_string(path)
        .with_context(|| format!("cannot read secret key {}", path.display()))?;
    let what = path.display().to_string();
    let password = if SigningKey::is_encrypted(&text, &what)? {
        Some(password.get(&format!("Password for {what}: "), false)?)
    } else {
        None
    };
    SigningKey::from_text(&text, &what, password.as_deref())
        .with_context(|| format!("cannot open secret key {what}"))
}
