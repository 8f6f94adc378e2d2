//! The appliance's configuration file (TOML). Unknown fields are errors.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::Deserialize;

/// The commented example `ferry-appliance default-config` prints. A test parses it, so it is
/// always a valid configuration.
pub const DEFAULT_CONFIG: &str = r#"# ferry-appliance configuration.

# Where releases, blobs and state live. Back this folder up (see docs).
data_dir = "/var/lib/ferry"

# Public keys (made by `ferry keygen`) whose bundles this appliance accepts. List the old and
# the new key while rotating; remove the old one once every site has a bundle by the new one.
trusted_keys = ["/etc/ferry/ferry.pub"]

# The URL agents use to reach this appliance: it goes into policies (fleet.hosts) and into
# upgrade actions (the download mirror is <public_url>/downloads/).
public_url = "https://ferry.example.internal:8220"

# How long after a bundle's `expires` it is still accepted, in days. 0: not at all.
expiry_tolerance_days = 0

# Releases kept for `rollback` (the active one included). Older ones and their blobs are
# removed after each import.
retain_releases = 3

[server]
# The TLS listener for the agent API and the download mirror.
listen = "0.0.0.0:8220"
# An extra listener serving only /downloads/ (plain HTTP), for clients that cannot do TLS.
# mirror_listen = "0.0.0.0:8080"
# Prometheus metrics (GET /metrics, plain HTTP), for the site's Prometheus or Elastic Agent's
# prometheus input. Requests carry `Authorization: Bearer` with the token in
# data_dir/metrics.token (made at the first start, kept across restarts) or the admin token.
# Loopback unless the scraper runs elsewhere. The admin socket serves /admin/v1/metrics too.
# metrics_listen = "127.0.0.1:9620"

# Agents, the mirror and the PGP key are served over TLS. `tls = false` serves them over plain
# HTTP (public_url must then be http://): enrollment tokens and agents' access keys then cross
# the network in clear text, and agents cannot fetch a PGP key from the appliance, so upgrades
# verify only against keys they already have. For closed test networks and benchmarks only.
# tls = true

# The server certificate and key (PEM). Leave both out for quick-start mode: the appliance then
# makes its own CA and server certificate under data_dir/tls/ and prints the CA path that
# agents need (--certificate-authorities).
# tls_cert = "/etc/ferry/tls/server.pem"
# tls_key = "/etc/ferry/tls/server.key"

# The CA certificates (PEM) agents need to download upgrades from this appliance. An agent's
# downloader takes TLS settings only from the policy's agent.download.ssl, never from the
# --certificate-authorities it enrolled with, so a private CA must travel in every delivered
# policy. Quick-start mode puts its own CA there unless this is false; with your own
# certificate, name its CA file here when the hosts' system trust store lacks it.
# download_ca = "/etc/ferry/tls/ca.pem"

# A check-in with nothing to deliver is held this long (less a random jitter of up to
# checkin_jitter_seconds), then answered empty; agents check in again about a second later.
checkin_long_poll_seconds = 300
checkin_jitter_seconds = 30

# A connection has this long for its TLS handshake and to send each complete request head;
# keep-alive connections idle for longer are closed. Heads over 8 KiB get 431.
header_timeout_seconds = 30

# Connections are capped at the open-file limit (raised to its hard limit at start) less a
# reserve for the database, blobs and the admin socket; one client address may hold half of
# them. A site with more agents behind one NAT address than that raises this:
# max_connections_per_address = 10000

# The admin API (`ferry-appliance tokens|agents|upgrade|...` talk to it) is on the Unix socket
# data_dir/admin.sock (0600), for serve's own user and root; serve mints a new admin token
# (data_dir/admin.token, 0600) at every start. There is nothing to configure.

# `agents list` shows an agent as offline after this long without a check-in.
agent_offline_seconds = 300

# The largest diagnostics bundle an agent may upload, in MiB.
max_upload_mib = 1024

# Per-route request limits: a sustained rate, a burst above it, and a cap on requests in flight
# (0: none). Over a limit the agent gets 429 with Retry-After and retries. Routes: enroll,
# checkin, ack, status, audit_unenroll, upload_begin, upload_chunk, upload_end, pgp_key,
# artifact.
# Defaults suit a fleet of about 20 000 agents; set only what you change, for example:
# [limits.enroll]
# per_second = 200
# burst = 400
# concurrent = 100

# The site's Elasticsearch, where agents send their data. With this section the appliance does
# what Fleet Server does: it creates one API key per agent and Elasticsearch output, with the
# policy's output_permissions, and delivers it in the agent's policy. The credential is a
# service token of the elastic/fleet-server service account, as Fleet Server's, in a file only
# the appliance can read. Without this section policies are delivered as the bundle has them.
# [elasticsearch]
# hosts = ["https://elasticsearch.site.internal:9200"]
# ca_file = "/etc/ferry/elasticsearch-ca.pem"
# service_token_file = "/etc/ferry/elasticsearch-service-token"
# # How often the connection and the credential's privileges are checked.
# check_interval_seconds = 30
# # One request to Elasticsearch may take this long.
# request_timeout_seconds = 10

# On-site secrets (`ferry-appliance secrets set`): the values of the Fleet secrets that policies
# name, which never travel in a bundle. state.db keeps them sealed with a key: by default
# data_dir/secrets.key, made on first use. Back it up with state.db: without it the values are
# lost. To keep the key apart from the data, name another file (32 random bytes or 64 hex
# digits, mode 0600, for example `openssl rand -hex 32 > /etc/ferry/secrets.key`):
# [secrets]
# key_file = "/etc/ferry/secrets.key"

# Where the appliance keeps its state: by default SQLite, data_dir/state.db, for one appliance.
# Several appliances behind one load balancer share a PostgreSQL database instead (see
# docs/high-availability.md); every instance then has the same [store] and [cluster] sections
# but its own data_dir and instance name. The password is read from a file only serve's user
# can read; with ca_file the connection is TLS, verified against that CA, and required.
# [store]
# backend = "postgres"
# url = "postgresql://ferry@db.site.internal:5432/ferry"
# password_file = "/etc/ferry/postgres-password"
# ca_file = "/etc/ferry/postgres-ca.pem"
#
# [cluster]
# # This instance's name, unique in the cluster (default: the host's name).
# instance = "ferry-a"
# # A folder every instance mounts (NFS, say): imported bundles travel to the other instances
# # through it (each verifies them again with its own trusted_keys), and agents' diagnostics
# # uploads are kept there so that any instance can serve them.
# shared_dir = "/srv/ferry-shared"
"#;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Config {
    pub data_dir: PathBuf,
    pub trusted_keys: Vec<PathBuf>,
    pub public_url: String,
    #[serde(default)]
    pub expiry_tolerance_days: u32,
    #[serde(default = "default_retain")]
    pub retain_releases: usize,
    #[serde(default)]
    pub server: ServerConfig,
    /// Overrides of the route table's limits ([`crate::routes::Class`]).
    #[serde(default)]
    pub limits: std::collections::BTreeMap<String, crate::net::limits::LimitOverride>,
    /// The site's Elasticsearch, for per-agent output keys.
    pub elasticsearch: Option<ElasticsearchConfig>,
    #[serde(default)]
    pub secrets: SecretsConfig,
    #[serde(default)]
    pub store: StoreConfig,
    pub cluster: Option<ClusterConfig>,
}

/// `[store]`: which backend keeps the appliance's state (`crate::store`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct StoreConfig {
    #[serde(default)]
    pub backend: Backend,
    /// `postgresql://user@host:port/database` (no password: see `password_file`).
    pub url: Option<String>,
    pub password_file: Option<PathBuf>,
    /// The CA that signed the database server's certificate; set, the connection is TLS.
    pub ca_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Backend {
    #[default]
    Sqlite,
    Postgres,
}

/// `[cluster]`: this instance among several sharing one PostgreSQL store.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ClusterConfig {
    /// Unique in the cluster; the host's name when unset.
    pub instance: Option<String>,
    /// Mounted by every instance: bundles being imported, diagnostics uploads.
    pub shared_dir: PathBuf,
}

/// `[secrets]`: where the key that seals on-site secrets is (`crate::secrets`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SecretsConfig {
    /// A key file of the operator's; unset: `data_dir/secrets.key`, made on first use.
    pub key_file: Option<PathBuf>,
}

/// `[elasticsearch]`: where agents' data goes, and the credential the appliance manages their
/// output keys with. Never in a bundle: it belongs to the site.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ElasticsearchConfig {
    pub hosts: Vec<String>,
    pub ca_file: Option<PathBuf>,
    pub service_token_file: Option<PathBuf>,
    /// Refused by name: see [`ElasticsearchConfig::validate`].
    #[serde(default)]
    api_key_file: Option<toml::Value>,
    #[serde(default = "default_es_check")]
    pub check_interval_seconds: u64,
    #[serde(default = "default_es_timeout")]
    pub request_timeout_seconds: u64,
}

fn default_es_check() -> u64 {
    30
}

fn default_es_timeout() -> u64 {
    10
}

impl ElasticsearchConfig {
    fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(!self.hosts.is_empty(), "elasticsearch.hosts is empty");
        for host in &self.hosts {
            anyhow::ensure!(
                host.starts_with("https://") || host.starts_with("http://"),
                "elasticsearch.hosts: {host:?} must be a URL (https://host:9200)"
            );
        }
        // Elasticsearch makes a key created by an API key a child of it, which may hold no
        // privileges (security/create_api_key in elastic/elasticsearch-specification): such a
        // credential could make only keys that write nothing.
        anyhow::ensure!(
            self.api_key_file.is_none(),
            "elasticsearch.api_key_file: an API key cannot create the agents' keys (Elasticsearch \
             refuses privileges to keys made by an API key); use service_token_file with a \
             service token of elastic/fleet-server"
        );
        anyhow::ensure!(
            self.service_token_file.is_some(),
            "elasticsearch.service_token_file is required (a service token of elastic/fleet-server)"
        );
        anyhow::ensure!(
            self.check_interval_seconds > 0 && self.request_timeout_seconds > 0,
            "elasticsearch.check_interval_seconds and request_timeout_seconds must be at least 1"
        );
        Ok(())
    }
}

fn default_retain() -> usize {
    3
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ServerConfig {
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    #[serde(default = "default_tls")]
    pub tls: bool,
    pub mirror_listen: Option<SocketAddr>,
    /// Plain HTTP serving only `/metrics`, to the metrics or the admin token.
    pub metrics_listen: Option<SocketAddr>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// How long a check-in is held when there is nothing to deliver.
    #[serde(default = "default_long_poll")]
    pub checkin_long_poll_seconds: u64,
    /// Up to this much is taken off each hold, at random, so agents spread out.
    #[serde(default = "default_jitter")]
    pub checkin_jitter_seconds: u64,
    #[serde(default = "default_header_timeout")]
    pub header_timeout_seconds: u64,
    /// Connections one client address may hold on the agent listeners (default: half of all).
    pub max_connections_per_address: Option<usize>,
    /// Gone: the admin API is on `data_dir/admin.sock`. Read only to refuse it by name.
    #[serde(default)]
    admin_listen: Option<toml::Value>,
    #[serde(default = "default_offline")]
    pub agent_offline_seconds: u64,
    #[serde(default = "default_max_upload")]
    pub max_upload_mib: u64,
    /// The CA delivered in policies as `agent.download.ssl.certificate_authorities`: unset or
    /// `true` means the quick-start CA (in quick-start mode), `false` none, a path that file.
    pub download_ca: Option<DownloadCa>,
}

/// `server.download_ca`: on or off, or a PEM file of CA certificates.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub(crate) enum DownloadCa {
    Enabled(bool),
    File(PathBuf),
}

fn default_tls() -> bool {
    true
}

fn default_header_timeout() -> u64 {
    30
}

fn default_offline() -> u64 {
    300
}

fn default_max_upload() -> u64 {
    1024
}

fn default_long_poll() -> u64 {
    300
}

fn default_jitter() -> u64 {
    30
}

fn default_listen() -> SocketAddr {
    "0.0.0.0:8220".parse().expect("valid address")
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            tls: default_tls(),
            mirror_listen: None,
            metrics_listen: None,
            tls_cert: None,
            tls_key: None,
            checkin_long_poll_seconds: default_long_poll(),
            checkin_jitter_seconds: default_jitter(),
            header_timeout_seconds: default_header_timeout(),
            max_connections_per_address: None,
            admin_listen: None,
            agent_offline_seconds: default_offline(),
            max_upload_mib: default_max_upload(),
            download_ca: None,
        }
    }
}

impl Config {
    /// Reads a configuration file. Relative paths in it are resolved against its folder.
    pub(crate) fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| {
            format!(
                "cannot read configuration {} (name another with --config or \
                 FERRY_APPLIANCE_CONFIG; `ferry-appliance default-config` prints one to start from)",
                path.display()
            )
        })?;
        let mut config: Config = toml::from_str(&text)
            .with_context(|| format!("invalid configuration {}", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        config.data_dir = base.join(&config.data_dir);
        for key in &mut config.trusted_keys {
            *key = base.join(&*key);
        }
        for p in [&mut config.server.tls_cert, &mut config.server.tls_key].into_iter().flatten() {
            *p = base.join(&*p);
        }
        if let Some(DownloadCa::File(p)) = &mut config.server.download_ca {
            *p = base.join(&*p);
        }
        if let Some(es) = &mut config.elasticsearch {
            for p in [&mut es.ca_file, &mut es.service_token_file].into_iter().flatten() {
                *p = base.join(&*p);
            }
        }
        if let Some(p) = &mut config.secrets.key_file {
            *p = base.join(&*p);
        }
        for p in [&mut config.store.password_file, &mut config.store.ca_file].into_iter().flatten()
        {
            *p = base.join(&*p);
        }
        if let Some(cluster) = &mut config.cluster {
            cluster.shared_dir = base.join(&cluster.shared_dir);
        }
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            !self.trusted_keys.is_empty(),
            "trusted_keys is empty: no bundle could ever be imported"
        );
        anyhow::ensure!(self.retain_releases >= 1, "retain_releases must be at least 1");
        if self.server.tls {
            anyhow::ensure!(
                self.public_url.starts_with("https://"),
                "public_url {:?} must start with https:// (or set server.tls = false)",
                self.public_url
            );
        } else {
            anyhow::ensure!(
                self.public_url.starts_with("http://"),
                "public_url {:?} must start with http:// when server.tls = false",
                self.public_url
            );
            anyhow::ensure!(
                self.server.tls_cert.is_none(),
                "server.tls_cert is set but server.tls = false"
            );
        }
        anyhow::ensure!(
            self.server.download_ca != Some(DownloadCa::Enabled(true))
                || (self.server.tls && self.server.tls_cert.is_none()),
            "server.download_ca = true means the quick-start CA, but quick-start is off: name \
             your CA's PEM file instead (download_ca = \"/path/ca.pem\")"
        );
        anyhow::ensure!(
            self.server.tls_cert.is_some() == self.server.tls_key.is_some(),
            "set both server.tls_cert and server.tls_key, or neither (quick-start)"
        );
        anyhow::ensure!(
            self.server.admin_listen.is_none(),
            "server.admin_listen is no longer read: the admin API is on the Unix socket \
             data_dir/admin.sock now (for serve's user and root only); remove the line"
        );
        anyhow::ensure!(
            self.server.checkin_long_poll_seconds > 0
                && self.server.checkin_long_poll_seconds < 600,
            "server.checkin_long_poll_seconds must be 1..599: agents give up on a check-in after 10 minutes"
        );
        anyhow::ensure!(
            self.server.header_timeout_seconds > 0,
            "server.header_timeout_seconds must be at least 1"
        );
        crate::routes::limits(&self.limits)?;
        if let Some(es) = &self.elasticsearch {
            es.validate()?;
        }
        match self.store.backend {
            Backend::Sqlite => {
                anyhow::ensure!(
                    self.store.url.is_none()
                        && self.store.password_file.is_none()
                        && self.store.ca_file.is_none(),
                    "store.url, password_file and ca_file are for backend = \"postgres\"; the \
                     default backend, SQLite, keeps its file in data_dir"
                );
                anyhow::ensure!(
                    self.cluster.is_none(),
                    "[cluster] needs store.backend = \"postgres\": instances of a cluster share \
                     their state in PostgreSQL"
                );
            }
            Backend::Postgres => {
                let url = self.store.url.as_deref().unwrap_or_default();
                anyhow::ensure!(
                    url.starts_with("postgresql://") || url.starts_with("postgres://"),
                    "store.url must be a postgresql:// URL when store.backend = \"postgres\""
                );
                let authority = url.split_once("://").map_or("", |(_, rest)| rest);
                let authority = authority.split(['/', '?']).next().unwrap_or_default();
                anyhow::ensure!(
                    !authority.rsplit_once('@').is_some_and(|(user, _)| user.contains(':')),
                    "store.url must not hold the password: put it in store.password_file"
                );
                anyhow::ensure!(
                    self.cluster.is_some(),
                    "store.backend = \"postgres\" needs a [cluster] section with shared_dir \
                     (see docs/high-availability.md)"
                );
            }
        }
        if let Some(cluster) = &self.cluster
            && let Some(name) = &cluster.instance
        {
            crate::store::check_instance_name(name)?;
        }
        Ok(())
    }

    /// Where the store is: this data directory's SQLite file, or the PostgreSQL server of
    /// `[store]` (its password file read now).
    pub(crate) fn store_location(&self) -> anyhow::Result<crate::store::Location> {
        Ok(match self.store.backend {
            Backend::Sqlite => crate::store::Location::Sqlite(self.data_dir.clone()),
            Backend::Postgres => {
                let password = match &self.store.password_file {
                    Some(path) => Some(read_secret_file("store", path)?),
                    None => None,
                };
                crate::store::Location::Postgres(crate::store::postgres::Settings {
                    url: self.store.url.clone().unwrap_or_default(),
                    password,
                    ca_file: self.store.ca_file.clone(),
                    instance: self.instance_name()?,
                })
            }
        })
    }

    /// This instance's name in a cluster: `[cluster] instance`, or the host's name.
    pub(crate) fn instance_name(&self) -> anyhow::Result<String> {
        if let Some(name) = self.cluster.as_ref().and_then(|c| c.instance.clone()) {
            return Ok(name);
        }
        let host = rustix::system::uname().nodename().to_string_lossy().into_owned();
        crate::store::check_instance_name(&host)
            .context("the host's name cannot name this instance: set [cluster] instance")?;
        Ok(host)
    }

    /// The server certificate (PEM) agents are shown: the configured one, or quick-start's;
    /// `None` without TLS.
    pub(crate) fn server_certificate(&self) -> Option<PathBuf> {
        match (&self.server.tls_cert, &self.server.tls_key) {
            _ if !self.server.tls => None,
            (Some(cert), Some(_)) => Some(cert.clone()),
            _ => Some(crate::net::tls::QuickStart::paths(&self.data_dir).server_cert),
        }
    }

    /// The public URL without a trailing slash.
    pub(crate) fn public_base(&self) -> &str {
        self.public_url.trim_end_matches('/')
    }
}

/// The PEM text delivered to agents as `agent.download.ssl.certificate_authorities`, after
/// `server.download_ca` and quick-start mode (`quick_start_ca`: its CA file when on). Only
/// certificates go out: a file holding anything else is refused rather than sent to every
/// agent.
pub(crate) fn download_ca(
    setting: Option<&DownloadCa>,
    quick_start_ca: Option<&Path>,
) -> anyhow::Result<Option<String>> {
    let path = match (setting, quick_start_ca) {
        (Some(DownloadCa::Enabled(false)), _) | (None, None) => return Ok(None),
        (Some(DownloadCa::File(path)), _) => path,
        (None | Some(DownloadCa::Enabled(true)), Some(ca)) => ca,
        (Some(DownloadCa::Enabled(true)), None) => {
            anyhow::bail!("server.download_ca = true needs quick-start mode")
        }
    };
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("server.download_ca: cannot read {}", path.display()))?;
    let mut certificates = 0;
    type Section = (rustls::pki_types::pem::SectionKind, Vec<u8>);
    for item in <Section as rustls::pki_types::pem::PemObject>::pem_slice_iter(text.as_bytes()) {
        let (kind, _) =
            item.with_context(|| format!("server.download_ca: {} is not PEM", path.display()))?;
        anyhow::ensure!(
            kind == rustls::pki_types::pem::SectionKind::Certificate,
            "server.download_ca: {} holds a {kind:?}, not only certificates",
            path.display()
        );
        certificates += 1;
    }
    anyhow::ensure!(
        certificates > 0,
        "server.download_ca: {} holds no certificate",
        path.display()
    );
    Ok(Some(text))
}

/// A credential file: one line, not readable by others; errors start with `what` (the
/// configuration section naming the file).
pub(crate) fn read_secret_file(what: &str, path: &Path) -> anyhow::Result<String> {
    use std::os::unix::fs::PermissionsExt as _;
    let meta = std::fs::metadata(path)
        .with_context(|| format!("{what}: cannot read {}", path.display()))?;
    anyhow::ensure!(
        meta.permissions().mode() & 0o007 == 0,
        "{what}: {} is readable by other users; chmod o-rwx it (it holds a credential)",
        path.display()
    );
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{what}: cannot read {}", path.display()))?;
    let text = text.trim();
    anyhow::ensure!(
        !text.is_empty() && !text.contains(char::is_whitespace),
        "{what}: {} must hold one credential on one line",
        path.display()
    );
    Ok(text.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn download_ca_true_needs_quick_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.toml");
        let base = "data_dir = \"d\"\ntrusted_keys = [\"k.pub\"]\npublic_url = \"https://f:8220\"\n[server]\n";
        for (extra, ok) in [
            ("download_ca = true", true),
            ("download_ca = false", true),
            ("download_ca = \"ca.pem\"\ntls_cert = \"c.pem\"\ntls_key = \"k.pem\"", true),
            ("download_ca = true\ntls_cert = \"c.pem\"\ntls_key = \"k.pem\"", false),
        ] {
            std::fs::write(&path, format!("{base}{extra}\n")).unwrap();
            assert_eq!(Config::load(&path).is_ok(), ok, "{extra}");
        }
        std::fs::write(&path, format!("{base}download_ca = \"ca.pem\"\n")).unwrap();
        let config = Config::load(&path).unwrap();
        assert_eq!(config.server.download_ca, Some(DownloadCa::File(dir.path().join("ca.pem"))));
    }

    #[test]
    fn a_postgres_store_needs_a_cluster_a_url_without_password_and_reads_its_password_file() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.toml");
        let base =
            "data_dir = \"d\"\ntrusted_keys = [\"k.pub\"]\npublic_url = \"https://f:8220\"\n";
        let load = |extra: &str| {
            std::fs::write(&path, format!("{base}{extra}")).unwrap();
            Config::load(&path).map_err(|e| format!("{e:#}"))
        };
        let pg = "[store]\nbackend = \"postgres\"\nurl = \"postgresql://ferry@db:5432/ferry\"\n\
                  password_file = \"pw\"\n";
        let cluster = "[cluster]\ninstance = \"a\"\nshared_dir = \"shared\"\n";
        let err = load(pg).unwrap_err();
        assert!(err.contains("needs a [cluster] section"), "{err}");
        let err = load(cluster).unwrap_err();
        assert!(err.contains("[cluster] needs store.backend"), "{err}");
        let err = load("[store]\nurl = \"postgresql://db/f\"\n").unwrap_err();
        assert!(err.contains("are for backend = \"postgres\""), "{err}");
        let secret_url = pg.replace("ferry@db", "ferry:hunter2@db");
        let err = load(&format!("{secret_url}{cluster}")).unwrap_err();
        assert!(err.contains("must not hold the password") && !err.contains("hunter2"), "{err}");
        let err =
            load(&format!("{pg}[cluster]\ninstance = \"a b\"\nshared_dir = \"s\"\n")).unwrap_err();
        assert!(err.contains("instance name"), "{err}");

        let config = load(&format!("{pg}{cluster}")).unwrap();
        assert_eq!(config.cluster.as_ref().unwrap().shared_dir, dir.path().join("shared"));
        assert_eq!(config.store.password_file, Some(dir.path().join("pw")));
        std::fs::write(dir.path().join("pw"), "s3cret\n").unwrap();
        std::fs::set_permissions(dir.path().join("pw"), PermissionsExt::from_mode(0o644)).unwrap();
        let err = format!("{:#}", config.store_location().unwrap_err());
        assert!(err.contains("readable by other users"), "{err}");
        std::fs::set_permissions(dir.path().join("pw"), PermissionsExt::from_mode(0o600)).unwrap();
        let crate::store::Location::Postgres(settings) = config.store_location().unwrap() else {
            panic!("not postgres")
        };
        assert_eq!(
            (settings.password.as_deref(), settings.instance.as_str()),
            (Some("s3cret"), "a")
        );
        // The commented example, uncommented, is valid too.
        let text = DEFAULT_CONFIG
            .replace("# [store]\n# backend", "[store]\nbackend")
            .replace("# url = \"postgresql", "url = \"postgresql")
            .replace("# [cluster]\n# #", "[cluster]\n#")
            .replace("# instance = ", "instance = ")
            .replace("# shared_dir = ", "shared_dir = ");
        let config: Config = toml::from_str(&text).unwrap();
        config.validate().unwrap();
        assert_eq!(config.cluster.unwrap().instance.as_deref(), Some("ferry-a"));
    }

    #[test]
    fn the_secrets_key_file_is_optional_and_relative_to_the_config() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.toml");
        let base =
            "data_dir = \"d\"\ntrusted_keys = [\"k.pub\"]\npublic_url = \"https://f:8220\"\n";
        std::fs::write(&path, base).unwrap();
        assert_eq!(Config::load(&path).unwrap().secrets.key_file, None);
        std::fs::write(&path, format!("{base}[secrets]\nkey_file = \"keys/s.key\"\n")).unwrap();
        let config = Config::load(&path).unwrap();
        assert_eq!(config.secrets.key_file, Some(dir.path().join("keys/s.key")));
        std::fs::write(&path, format!("{base}[secrets]\nkeyfile = \"s.key\"\n")).unwrap();
        let err = format!("{:#}", Config::load(&path).unwrap_err());
        assert!(err.contains("keyfile"), "{err}");
        // The commented example, uncommented, is valid too.
        let text = DEFAULT_CONFIG.replace("# [secrets]\n# key_file", "[secrets]\nkey_file");
        let config: Config = toml::from_str(&text).unwrap();
        assert_eq!(config.secrets.key_file.as_deref(), Some(Path::new("/etc/ferry/secrets.key")));
    }

    #[test]
    fn the_default_config_is_valid() {
        let config: Config = toml::from_str(DEFAULT_CONFIG).unwrap();
        config.validate().unwrap();
        assert_eq!(config.server.listen.port(), 8220);
        assert_eq!(config.retain_releases, 3);
    }

    #[test]
    fn admin_listen_is_refused_with_the_fix() {
        let text =
            DEFAULT_CONFIG.replace("[server]\n", "[server]\nadmin_listen = \"127.0.0.1:8222\"\n");
        let config: Config = toml::from_str(&text).unwrap();
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("admin.sock") && err.contains("remove the line"), "{err}");
    }

    #[test]
    fn unknown_fields_are_errors() {
        let text = DEFAULT_CONFIG
            .replace("retain_releases = 3", "retain_releases = 3\nretain_relaeses = 4");
        let err = toml::from_str::<Config>(&text).unwrap_err().to_string();
        assert!(err.contains("retain_relaeses"), "{err}");
    }

    #[test]
    fn the_download_ca_is_the_quick_start_one_or_the_operator_s_file() {
        let dir = tempfile::tempdir().unwrap();
        let qs = crate::net::tls::QuickStart::paths(dir.path());
        qs.ensure("https://ferry.site:8220").unwrap();
        let ca = std::fs::read_to_string(&qs.ca_cert).unwrap();
        let quick = Some(qs.ca_cert.as_path());
        assert_eq!(download_ca(None, quick).unwrap().as_deref(), Some(ca.as_str()));
        assert_eq!(download_ca(Some(&DownloadCa::Enabled(true)), quick).unwrap(), Some(ca.clone()));
        assert_eq!(download_ca(Some(&DownloadCa::Enabled(false)), quick).unwrap(), None);
        assert_eq!(download_ca(None, None).unwrap(), None, "an operator certificate: nothing");
        let file = Some(DownloadCa::File(qs.ca_cert.clone()));
        assert_eq!(download_ca(file.as_ref(), None).unwrap(), Some(ca));
        // Never a private key, never nothing, never a missing file.
        for (name, text) in [
            ("key.pem", std::fs::read_to_string(&qs.server_key).unwrap()),
            ("empty.pem", String::new()),
        ] {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            let refused = download_ca(Some(&DownloadCa::File(path)), None).unwrap_err();
            assert!(format!("{refused:#}").contains(name), "{refused:#}");
        }
        assert!(download_ca(Some(&DownloadCa::File(dir.path().join("gone.pem"))), None).is_err());
    }
}
