//! TLS for the appliance's listeners: the rustls server configuration, and quick-start mode,
//! which makes a local CA and a server certificate when none is configured.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Where quick-start mode keeps its files, below the data directory.
pub(crate) struct QuickStart {
    pub ca_cert: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    /// The CA's certificate revocation list (DER), served at [`CRL_PATH`].
    pub crl: PathBuf,
}

/// Where `serve` publishes the quick-start CA's revocation list; the server certificate names
/// it as its CRL distribution point, so a client that checks revocation can.
pub(crate) const CRL_PATH: &str = "/tls/ca.crl";

impl QuickStart {
    pub(crate) fn paths(data_dir: &Path) -> Self {
        let dir = data_dir.join("tls");
        Self {
            ca_cert: dir.join("ca.pem"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server.key"),
            crl: dir.join("ca.crl"),
        }
    }

    /// Makes the CA, its (empty) revocation list and the server certificate unless they exist.
    /// The server certificate names `localhost`, `127.0.0.1`, `::1` and the public URL's host,
    /// and the CRL's place below the public URL; the CA may vouch for those names only (see
    /// [`ca_params`]). Returns whether it made them.
    pub(crate) fn ensure(&self, public_url: &str) -> anyhow::Result<bool> {
        if self.ca_cert.is_file() && self.server_cert.is_file() && self.server_key.is_file() {
            return Ok(false);
        }
        use rcgen::{
            CertificateParams, CertificateRevocationListParams, CrlDistributionPoint, DnType,
            ExtendedKeyUsagePurpose, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose, SerialNumber,
        };
        let public_host = url_host(public_url);
        let names = server_names(public_host);
        let dir = self.ca_cert.parent().expect("tls folder");
        std::fs::create_dir_all(dir)?;
        let ca_key = KeyPair::generate()?;
        let ca_params = ca_params(&names)?;
        let ca_cert = ca_params.self_signed(&ca_key)?;
        let ca_expires = ca_params.not_after;
        let issuer = Issuer::new(ca_params, ca_key);
        // The CA issues one certificate and revokes none; its list says so, signed, for as long
        // as the CA lives. A new quick-start (delete data_dir/tls) makes a new CA altogether.
        let crl = CertificateRevocationListParams {
            this_update: time::OffsetDateTime::now_utc() - time::Duration::days(1),
            next_update: ca_expires,
            crl_number: SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: Vec::new(),
            key_identifier_method: KeyIdMethod::Sha256,
        }
        .signed_by(&issuer)?;

        let server_key = KeyPair::generate()?;
        let mut params = CertificateParams::new(names)?;
        params.distinguished_name.push(DnType::CommonName, public_host);
        // Limited to serving TLS, so the key is no use as a client or signing certificate.
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.not_before = time::OffsetDateTime::now_utc() - time::Duration::days(1);
        params.not_after = params.not_before + time::Duration::days(825);
        params.crl_distribution_points = vec![CrlDistributionPoint {
            uris: vec![format!("{}{CRL_PATH}", public_url.trim_end_matches('/'))],
        }];
        let server_cert = params.signed_by(&server_key, &issuer)?;

        write_private(&self.server_key, server_key.serialize_pem().as_bytes())?;
        std::fs::write(&self.server_cert, format!("{}{}", server_cert.pem(), ca_cert.pem()))?;
        std::fs::write(&self.crl, crl.der())?;
        std::fs::write(&self.ca_cert, ca_cert.pem())?;
        Ok(true)
    }
}

/// The names the quick-start server certificate carries: `localhost`, `127.0.0.1`, `::1` and
/// the public URL's host.
fn server_names(public_host: &str) -> Vec<String> {
    let mut names = vec!["localhost".to_owned(), "127.0.0.1".to_owned(), "::1".to_owned()];
    if !public_host.is_empty() && !names.iter().any(|n| n == public_host) {
        names.push(public_host.to_owned());
    }
    names
}

/// The quick-start CA: it signs one server certificate (path length 0), and a critical
/// NameConstraints extension (RFC 5280 §4.2.1.10) permits only `names` (each IP address as a
/// /32 or /128, each DNS name with the names below it, as the RFC defines dNSName subtrees).
/// An agent told to trust it (`--certificate-authorities`) then trusts it for this appliance
/// and nothing else, whoever gets hold of its key.
fn ca_params(names: &[String]) -> anyhow::Result<rcgen::CertificateParams> {
    use rcgen::{
        BasicConstraints, CertificateParams, CidrSubnet, DnType, GeneralSubtree, IsCa,
        KeyUsagePurpose, NameConstraints,
    };
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(DnType::CommonName, "Ferry appliance quick-start CA");
    params.distinguished_name.push(DnType::OrganizationName, "Ferry");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_before = time::OffsetDateTime::now_utc() - time::Duration::days(1);
    params.not_after = params.not_before + time::Duration::days(3650);
    let permitted = names
        .iter()
        .map(|name| match name.parse::<std::net::IpAddr>() {
            Ok(ip) => {
                let bits = if ip.is_ipv4() { 32 } else { 128 };
                GeneralSubtree::IpAddress(CidrSubnet::from_addr_prefix(ip, bits))
            }
            Err(_) => GeneralSubtree::DnsName(name.clone()),
        })
        .collect();
    params.name_constraints =
        Some(NameConstraints { permitted_subtrees: permitted, excluded_subtrees: Vec::new() });
    Ok(params)
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
pub(crate) fn url_host(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or(rest);
    if let Some(v6) = authority.strip_prefix('[') {
        return v6.split(']').next().unwrap_or(v6);
    }
    authority.rsplit_once(':').map_or(authority, |(h, _)| h)
}

/// A rustls server configuration from PEM files: TLS 1.2 and 1.3 only, rustls' forward-secret
/// AEAD suites chosen in the server's order, HTTP/1.1 by ALPN. `scripts/tls-audit.sh` checks
/// what a scanner sees (docs/tls-audit.md).
pub(crate) fn server_config(cert: &Path, key: &Path) -> anyhow::Result<Arc<rustls::ServerConfig>> {
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
    // Every suite on offer is strong, but our order puts AES-256-GCM first, and a client's
    // order is not ours to audit: testssl.sh rates a server without an order HIGH.
    config.ignore_client_order = true;
    // HTTP/1.1 only: agents speak it as well as HTTP/2, and one lean HTTP implementation
    // (crate::net::http1) keeps a parked check-in cheap.
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
        assert!(qs.ensure("https://ferry.site:8220").unwrap());
        assert!(!qs.ensure("https://ferry.site:8220").unwrap(), "existing files are kept");
        server_config(&qs.server_cert, &qs.server_key).unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(std::fs::metadata(&qs.server_key).unwrap().permissions().mode() & 0o777, 0o600);
        let leaf = CertificateDer::pem_file_iter(&qs.server_cert).unwrap().next().unwrap().unwrap();
        // The DER of OID 1.3.6.1.5.5.7.3.1, id-kp-serverAuth: no X.509 parser needed for one.
        let server_auth = [0x06, 0x08, 0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x01];
        assert!(leaf.windows(server_auth.len()).any(|w| w == server_auth));
    }

    use rustls::{CipherSuite, ProtocolVersion};

    fn quick_start_config() -> (tempfile::TempDir, QuickStart, Arc<rustls::ServerConfig>) {
        let dir = tempfile::tempdir().unwrap();
        let qs = QuickStart::paths(dir.path());
        qs.ensure("https://localhost:8220").unwrap();
        let config = server_config(&qs.server_cert, &qs.server_key).unwrap();
        (dir, qs, config)
    }

    /// A full handshake in memory with a rustls client limited to `versions` and offering
    /// `suites` in that order; returns what was negotiated.
    fn handshake(
        versions: &[&'static rustls::SupportedProtocolVersion],
        suites: &[CipherSuite],
    ) -> Result<(ProtocolVersion, CipherSuite), rustls::Error> {
        let (_dir, qs, server_config) = quick_start_config();
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(&qs.ca_cert).unwrap() {
            roots.add(cert.unwrap()).unwrap();
        }
        let mut provider = rustls::crypto::ring::default_provider();
        provider.cipher_suites = suites
            .iter()
            .map(|s| *provider.cipher_suites.iter().find(|c| c.suite() == *s).unwrap())
            .collect();
        let client_config = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
            .with_protocol_versions(versions)?
            .with_root_certificates(roots)
            .with_no_client_auth();
        connect(client_config, server_config)
    }

    /// Runs a handshake in memory; returns what the server negotiated.
    fn connect(
        client_config: rustls::ClientConfig,
        server_config: Arc<rustls::ServerConfig>,
    ) -> Result<(ProtocolVersion, CipherSuite), rustls::Error> {
        let mut client = rustls::ClientConnection::new(
            Arc::new(client_config),
            "localhost".try_into().unwrap(),
        )?;
        let mut server = rustls::ServerConnection::new(server_config)?;
        let mut wire = Vec::new();
        while client.is_handshaking() || server.is_handshaking() {
            client.write_tls(&mut wire).unwrap();
            server.read_tls(&mut wire.as_slice()).unwrap();
            wire.clear();
            let server_state = server.process_new_packets();
            server.write_tls(&mut wire).unwrap();
            client.read_tls(&mut wire.as_slice()).unwrap();
            wire.clear();
            server_state?;
            client.process_new_packets()?;
        }
        Ok((server.protocol_version().unwrap(), server.negotiated_cipher_suite().unwrap().suite()))
    }

    /// A client that trusts `ca` and checks the server certificate against `crl`.
    fn revocation_checking_client(ca: &Path, crl: &Path) -> rustls::ClientConfig {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(ca).unwrap() {
            roots.add(cert.unwrap()).unwrap();
        }
        let crl =
            rustls::pki_types::CertificateRevocationListDer::from(std::fs::read(crl).unwrap());
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::clone(&provider),
        )
        .with_crls([crl])
        .build()
        .unwrap();
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth()
    }

    #[test]
    fn the_quick_start_ca_publishes_a_crl_that_clients_can_check() {
        let (_dir, qs, server_config) = quick_start_config();
        let leaf = CertificateDer::pem_file_iter(&qs.server_cert).unwrap().next().unwrap().unwrap();
        let url = format!("https://localhost:8220{CRL_PATH}");
        assert!(leaf.windows(url.len()).any(|w| w == url.as_bytes()), "no CRL distribution point");
        let client = revocation_checking_client(&qs.ca_cert, &qs.crl);
        connect(client, Arc::clone(&server_config)).expect("the CRL verifies and revokes nothing");
        // Control: another CA's list says nothing about this certificate, and the client refuses.
        let (_other_dir, other, _) = quick_start_config();
        let client = revocation_checking_client(&qs.ca_cert, &other.crl);
        assert!(connect(client, server_config).is_err());
    }

    /// The CA carries a critical NameConstraints extension: a certificate it signs for another
    /// name (or address) fails verification, one for the appliance's names passes.
    #[test]
    fn the_quick_start_ca_vouches_only_for_the_appliance() {
        use rustls::client::danger::ServerCertVerifier as _;
        let (_dir, qs, _) = quick_start_config();
        let ca_der = CertificateDer::pem_file_iter(&qs.ca_cert).unwrap().next().unwrap().unwrap();
        // OID 2.5.29.30 (nameConstraints), then critical = TRUE.
        let marker = [0x06, 0x03, 0x55, 0x1d, 0x1e, 0x01, 0x01, 0xff];
        assert!(ca_der.windows(marker.len()).any(|w| w == marker), "critical NameConstraints");

        // A CA made the same way, whose key the test holds, signs a rogue certificate.
        let names = server_names("fleet.example.internal");
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let ca_params = ca_params(&names).unwrap();
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let leaf = |name: &str| {
            let key = rcgen::KeyPair::generate().unwrap();
            let params = rcgen::CertificateParams::new(vec![name.to_owned()]).unwrap();
            params.signed_by(&key, &issuer).unwrap().der().clone()
        };
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.der().clone()).unwrap();
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .unwrap();
        let verify = |name: &str, cert_name: &str| {
            verifier.verify_server_cert(
                &leaf(cert_name),
                &[],
                &rustls::pki_types::ServerName::try_from(name.to_owned()).unwrap(),
                &[],
                rustls::pki_types::UnixTime::now(),
            )
        };
        for good in ["fleet.example.internal", "localhost", "127.0.0.1", "::1"] {
            assert!(verify(good, good).is_ok(), "{good}: {:?}", verify(good, good));
        }
        for rogue in ["login.example.com", "example.internal", "10.0.0.1", "127.0.0.2"] {
            let err = verify(rogue, rogue).unwrap_err().to_string();
            assert!(
                err.to_lowercase().contains("name constraint") || err.contains("NameConstraint"),
                "{rogue}: {err}"
            );
        }
    }

    #[test]
    fn the_server_chooses_the_suite_not_the_client() {
        use CipherSuite::*;
        let tls13 =
            [TLS13_AES_128_GCM_SHA256, TLS13_CHACHA20_POLY1305_SHA256, TLS13_AES_256_GCM_SHA384];
        assert_eq!(
            handshake(&[&rustls::version::TLS13], &tls13).unwrap(),
            (ProtocolVersion::TLSv1_3, TLS13_AES_256_GCM_SHA384)
        );
        let tls12 = [
            TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
            TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
            TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        ];
        assert_eq!(
            handshake(&[&rustls::version::TLS12], &tls12).unwrap(),
            (ProtocolVersion::TLSv1_2, TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384)
        );
    }

    /// A raw TLS 1.2-style ClientHello (rustls cannot send old protocols or weak suites)
    /// with the given version and suites, and the extensions an ECDSA server needs.
    fn client_hello(version: u16, suites: &[u16]) -> Vec<u8> {
        let ext = |kind: u16, data: &[u8]| {
            [&kind.to_be_bytes()[..], &(data.len() as u16).to_be_bytes(), data].concat()
        };
        let extensions = [
            ext(0x000a, &[0, 4, 0x00, 0x1d, 0x00, 0x17]), // groups: x25519, secp256r1
            ext(0x000b, &[1, 0]),                         // point formats: uncompressed
            ext(0x000d, &[0, 4, 0x04, 0x03, 0x08, 0x04]), // ecdsa_p256_sha256, rsa_pss_sha256
        ]
        .concat();
        let suites: Vec<u8> = suites.iter().flat_map(|s| s.to_be_bytes()).collect();
        let body = [
            &version.to_be_bytes()[..],
            &[7; 32],
            &[0],
            &(suites.len() as u16).to_be_bytes(),
            &suites,
            &[1, 0],
            &(extensions.len() as u16).to_be_bytes(),
            &extensions,
        ]
        .concat();
        let handshake = [&[1u8][..], &(body.len() as u32).to_be_bytes()[1..], &body].concat();
        [&[0x16u8, 0x03, 0x01][..], &(handshake.len() as u16).to_be_bytes(), &handshake].concat()
    }

    fn server_accepts(hello: &[u8]) -> bool {
        let (_dir, _qs, config) = quick_start_config();
        let mut server = rustls::ServerConnection::new(config).unwrap();
        server.read_tls(&mut &hello[..]).unwrap();
        server.process_new_packets().is_ok()
    }

    #[test]
    fn old_protocols_and_weak_suites_are_refused() {
        const ECDHE_ECDSA_AES128_GCM: u16 = 0xc02b;
        assert!(server_accepts(&client_hello(0x0303, &[ECDHE_ECDSA_AES128_GCM])), "control");
        for version in [0x0300, 0x0301, 0x0302] {
            assert!(!server_accepts(&client_hello(version, &[0xc009, 0xc00a, 0x002f])));
        }
        // CBC, static RSA key exchange (no forward secrecy), RC4, 3DES, NULL, export, anonymous.
        for weak in [
            0xc009, 0xc023, 0xc013, 0x002f, 0x009c, 0x003d, 0xc007, 0x000a, 0x0000, 0x0003, 0xc018,
            0x0034,
        ] {
            assert!(!server_accepts(&client_hello(0x0303, &[weak])), "suite {weak:#06x}");
        }
    }
}
