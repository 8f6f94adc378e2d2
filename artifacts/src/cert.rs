//! Certificates that travel in a bundle: PEM only, parsed, summarised, and never a private key.

use sha2::Digest as _;
use time::OffsetDateTime;

/// Why a certificate file was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CertError {
    #[error("{file} holds a private key ({label}); private keys never travel in a bundle")]
    PrivateKey { file: String, label: String },
    #[error("{file} holds no PEM certificate")]
    Empty { file: String },
    #[error("{file}: PEM block {index} is a {label:?}, not a CERTIFICATE")]
    NotACertificate { file: String, index: usize, label: String },
    #[error("{file}: certificate {index} does not parse: {reason}")]
    Parse { file: String, index: usize, reason: String },
}

/// What the manifest records about one certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertSummary {
    pub subject: String,
    pub issuer: String,
    pub not_after: OffsetDateTime,
    /// SHA-256 of the DER encoding, uppercase hex with colons, as `openssl x509 -fingerprint`.
    pub fingerprint: String,
}

/// Parses every PEM block of a certificate file. Refuses private keys of any kind, anything
/// that is not a certificate, and certificates that do not parse.
pub fn parse_certificates(bytes: &[u8], file: &str) -> Result<Vec<CertSummary>, CertError> {
    // Look for key blocks in the raw text first, so that a key is named as such even when it
    // sits in a file whose other blocks would not parse.
    let text = String::from_utf8_lossy(bytes);
    if let Some(label) = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("-----BEGIN ").and_then(|l| l.strip_suffix("-----")))
        .find(|label| label.contains("PRIVATE KEY"))
    {
        return Err(CertError::PrivateKey { file: file.into(), label: label.into() });
    }
    let mut certs = Vec::new();
    for (index, pem) in x509_parser::pem::Pem::iter_from_buffer(bytes).enumerate() {
        let index = index + 1;
        let pem =
            pem.map_err(|e| CertError::Parse { file: file.into(), index, reason: e.to_string() })?;
        if pem.label != "CERTIFICATE" {
            return Err(CertError::NotACertificate { file: file.into(), index, label: pem.label });
        }
        let cert = pem.parse_x509().map_err(|e| CertError::Parse {
            file: file.into(),
            index,
            reason: e.to_string(),
        })?;
        let digest = sha2::Sha256::digest(&pem.contents);
        certs.push(CertSummary {
            subject: cert.subject().to_string(),
            issuer: cert.issuer().to_string(),
            not_after: cert.validity().not_after.to_datetime(),
            fingerprint: digest.iter().map(|b| format!("{b:02X}")).collect::<Vec<_>>().join(":"),
        });
    }
    if certs.is_empty() {
        return Err(CertError::Empty { file: file.into() });
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEMO_CA: &str = include_str!("../../examples/demo/certificates/demo-ca.pem");

    #[test]
    fn summarises_a_certificate() {
        let certs = parse_certificates(DEMO_CA.as_bytes(), "ca.pem").unwrap();
        assert_eq!(certs.len(), 1);
        assert!(certs[0].subject.contains("CN=Ferry demo CA"), "{:?}", certs[0]);
        assert_eq!(certs[0].fingerprint.len(), 32 * 3 - 1);
        assert!(certs[0].not_after.year() >= 2036);
    }

    #[test]
    fn refuses_keys_junk_and_emptiness() {
        let with_key = format!(
            "{DEMO_CA}-----BEGIN EC PRIVATE KEY-----\nMHcC\n-----END EC PRIVATE KEY-----\n"
        );
        let err = parse_certificates(with_key.as_bytes(), "bundle.pem").unwrap_err();
        assert!(
            matches!(err, CertError::PrivateKey { ref label, .. } if label == "EC PRIVATE KEY"),
            "{err}"
        );
        assert!(matches!(parse_certificates(b"hello", "x.pem"), Err(CertError::Empty { .. })));
        let bad = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        assert!(matches!(
            parse_certificates(bad.as_bytes(), "x.pem"),
            Err(CertError::Parse { .. })
        ));
        let csr = "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n";
        assert!(matches!(
            parse_certificates(csr.as_bytes(), "x.pem"),
            Err(CertError::NotACertificate { .. })
        ));
    }
}
