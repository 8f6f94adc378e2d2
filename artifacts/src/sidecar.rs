//! `.sha512` sidecars, read and written the way Elastic Agent checks them.

use std::fmt;
use std::io::Read;

use sha2::Digest as _;

/// A SHA-512 digest, shown as 128 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Sha512Digest(pub [u8; 64]);

impl Sha512Digest {
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Hashes everything `reader` yields.
    pub fn of_reader(mut reader: impl Read) -> std::io::Result<Self> {
        let mut hasher = sha2::Sha512::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = reader.read(&mut buf)?;
            if n == 0 {
                return Ok(Self(hasher.finalize().into()));
            }
            hasher.update(&buf[..n]);
        }
    }
}

impl fmt::Display for Sha512Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Sha512Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha512:{}", self.to_hex())
    }
}

/// Why a sidecar does not vouch for an artifact.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SidecarError {
    #[error(
        "{sidecar} has no line for {file} (lines must be \"<128 lowercase hex> <bare file name>\")"
    )]
    NoLine { sidecar: String, file: String },
    #[error(
        "{sidecar} gives {file} the digest {found:?}, which is not 128 lowercase hex digits (agents compare it as a string)"
    )]
    BadDigest { sidecar: String, file: String, found: String },
    #[error("{file}: sha512 is {actual}, {sidecar} says {expected}")]
    Mismatch { file: String, sidecar: String, expected: String, actual: String },
}

/// Writes the sidecar text for `file_name` the way Elastic publishes it: one line, digest, two
/// spaces, bare file name.
pub fn write_sidecar(digest: &Sha512Digest, file_name: &str) -> String {
    format!("{digest}  {file_name}\n")
}

/// Finds the digest a sidecar gives `file_name`, with the agent's rules: each line splits on
/// whitespace into exactly two fields, the name may carry a leading `*`, must equal the bare file
/// name, and the last matching line wins. The digest must be lowercase hex, because agents
/// compare strings.
pub fn parse_sidecar(
    text: &str,
    sidecar: &str,
    file_name: &str,
) -> Result<Sha512Digest, SidecarError> {
    let found = text
        .lines()
        .rev()
        .find_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            match fields.as_slice() {
                [digest, name] if name.strip_prefix('*').unwrap_or(name) == file_name => {
                    Some(*digest)
                }
                _ => None,
            }
        })
        .ok_or_else(|| SidecarError::NoLine { sidecar: sidecar.into(), file: file_name.into() })?;
    let bad = || SidecarError::BadDigest {
        sidecar: sidecar.into(),
        file: file_name.into(),
        found: found.into(),
    };
    if found.len() != 128
        || !found.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(bad());
    }
    let mut digest = [0u8; 64];
    hex::decode_to_slice(found, &mut digest).map_err(|_| bad())?;
    Ok(Sha512Digest(digest))
}

/// Checks that `actual` is the digest the sidecar gives.
pub fn check_sidecar(
    text: &str,
    sidecar: &str,
    file_name: &str,
    actual: &Sha512Digest,
) -> Result<(), SidecarError> {
    let expected = parse_sidecar(text, sidecar, file_name)?;
    if &expected != actual {
        return Err(SidecarError::Mismatch {
            file: file_name.into(),
            sidecar: sidecar.into(),
            expected: expected.to_hex(),
            actual: actual.to_hex(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const NAME: &str = "elastic-agent-9.2.2-linux-x86_64.tar.gz";

    fn digest(b: &[u8]) -> Sha512Digest {
        Sha512Digest::of_reader(b).unwrap()
    }

    #[test]
    fn round_trip_and_agent_rules() {
        let d = digest(b"archive");
        let text = write_sidecar(&d, NAME);
        assert_eq!(text.len(), 128 + 2 + NAME.len() + 1);
        assert_eq!(parse_sidecar(&text, "x.sha512", NAME).unwrap(), d);
        // Binary-mode marker, other lines ignored, last match wins.
        let other = digest(b"other");
        let text = format!("junk\n{}  *{NAME}\n{other} {NAME}\n", d);
        assert_eq!(parse_sidecar(&text, "s", NAME).unwrap(), other);
        check_sidecar(&text, "s", NAME, &other).unwrap();
    }

    #[test]
    fn refusals_name_what_failed() {
        let d = digest(b"archive");
        let with_dir = format!("{d}  beats/elastic-agent/{NAME}\n");
        assert!(matches!(parse_sidecar(&with_dir, "s", NAME), Err(SidecarError::NoLine { .. })));
        let upper = format!("{}  {NAME}\n", d.to_hex().to_uppercase());
        assert!(matches!(parse_sidecar(&upper, "s", NAME), Err(SidecarError::BadDigest { .. })));
        let three = format!("{d}  {NAME} extra\n");
        assert!(matches!(parse_sidecar(&three, "s", NAME), Err(SidecarError::NoLine { .. })));
        let err =
            check_sidecar(&write_sidecar(&d, NAME), "a.sha512", NAME, &digest(b"x")).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains(NAME) && msg.contains(&d.to_hex()) && msg.contains("a.sha512"),
            "{msg}"
        );
    }
}
