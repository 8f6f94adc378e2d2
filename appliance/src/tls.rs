//! TLS for the appliance: rustls server configuration, and quick-start mode, which makes a
//! local CA and a server certificate when none is configured.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Where quick-start mode keeps its files, below the data directory.
pub struct QuickStart {
    pub ca_cert: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
}

impl QuickStart {
    pub fn paths(data_dir: &Path) -> Self {
        let dir = data_dir.join("tls");
        Self {
            ca_cert: dir.join("ca.pem"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server.key"),
        }
    }

    /// Makes the CA and server certificate unless they exist. The server certificate names
    /// `localhost`, `127.0.0.1`, `::1` and the public URL's host. Returns whether it made them.
    pub fn ensure(&self, public_host: &str) -> anyhow::Result<bool> {
        if self.ca_cert.is_file() && self.server_cert.is_file() && self.server_key.is_file() {
            return Ok(false);
        }
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
        };
        let dir = self.ca_cert.parent().expect("tls folder");
        std::fs::create_dir_all(dir)?;
        let ca_key = KeyPair::generate()?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.distinguished_name.push(DnType::CommonName, "Ferry appliance quick-start CA");
        ca_params.distinguished_name.push(DnType::OrganizationName, "Ferry");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        ca_params.not_before = time::OffsetDateTime::now_utc() - time::Duration::days(1);
        ca_params.not_after = ca_params.not_before + time::Duration::days(3650);
        let ca_cert = ca_params.self_signed(&ca_key)?;
        let issuer = Issuer::new(ca_params, ca_key);

        let mut names = vec!["localhost".to_owned(), "127.0.0.1".to_owned(), "::1".to_owned()];
        if !public_host.is_empty() && !names.iter().any(|n| n == public_host) {
            names.push(public_host.to_owned());
        }
        let server_key = KeyPair::generate()?;
        let mut params = CertificateParams::new(names)?;
        params.distinguished_name.push(DnType::CommonName, public_host);
        params.not_before = time::OffsetDateTime::now_utc() - time::Duration::days(1);
        params.not_after = params.not_before + time::Duration::days(825);
        let server_cert = params.signed_by(&server_key, &issuer)?;

        write_private(&self.server_key, server_key.serialize_pem().as_bytes())?;
        std::fs::write(&self.server_cert, format!("{}{}", server_cert.pem(), ca_cert.pem()))?;
        std::fs::write(&self.ca_cert, ca_cert.pem())?;
        Ok(true)
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    Ok(())
}

/// The host part of an `https://host[:port]/…` URL.
pub fn url_host(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or(rest);
    if let Some(v6) = authority.strip_prefix('[') {
        return v6.split(']').next().unwrap_or(v6);
    }
    authority.rsplit_once(':').map_or(authority, |(h, _)| h)
}

/// A rustls server configuration from PEM files: TLS 1.2 and 1.3 only, HTTP/1.1 by ALPN.
pub fn server_config(cert: &Path, key: &Path) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("cannot read certificate {}", cert.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("certificate {} is not PEM", cert.display()))?;
    anyhow::ensure!(!certs.is_empty(), "{} holds no certificate", cert.display());
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("cannot read private key {}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("the TLS certificate and key do not match")?;
    // HTTP/1.1 only: agents speak it as well as HTTP/2, and one lean HTTP implementation
    // (crate::http1) keeps a parked check-in cheap.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_from_urls() {
        assert_eq!(url_host("https://ferry.site:8220"), "ferry.site");
        assert_eq!(url_host("https://10.0.0.5/"), "10.0.0.5");
        assert_eq!(url_host("https://[fd00::1]:8220/x"), "fd00::1");
    }

    #[test]
    fn quick_start_makes_a_usable_configuration_once() {
        let dir = tempfile::tempdir().unwrap();
        let qs = QuickStart::paths(dir.path());
        assert!(qs.ensure("ferry.site").unwrap());
        assert!(!qs.ensure("ferry.site").unwrap(), "existing files are kept");
        server_config(&qs.server_cert, &qs.server_key).unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(std::fs::metadata(&qs.server_key).unwrap().permissions().mode() & 0o777, 0o600);
    }
}
