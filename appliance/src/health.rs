//! `ferry-appliance health` and the checks `status` prints: whether the appliance is fine, and if
//! not, why, in one line. Each check is decided here from the status report (the running
//! server's, or the data directory's) and from what the command reads on this host itself: the
//! listener, the server certificate, the free space of `data_dir`. `/metrics` reads the same
//! certificate and disk figures through [`certificate_expiry`] and [`disk_space`].

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::admin::api::{Server, StatusReport};
use crate::config::Config;

/// A release that expires within this many days is a warning: at most sites building,
/// carrying and importing the next bundle takes days, not hours.
pub(crate) const RELEASE_WARN_DAYS: i64 = 14;
/// A server certificate within this many days of its end is a warning: replacing it means a
/// change request and, with a private CA, a visit to the CA's operator.
pub(crate) const CERTIFICATE_WARN_DAYS: i64 = 30;
/// Below this, `data_dir` is failing: the next import of even a delta may not fit, and SQLite
/// needs room to write its WAL.
pub(crate) const DISK_FAIL_BYTES: u64 = 1 << 30;
/// Below this share of the file system free, a warning: one full bundle of several GiB may not
/// fit.
pub(crate) const DISK_WARN_PERCENT: u64 = 10;

/// How bad a check's finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Level {
    Ok,
    /// Fine now, not for long (a release or a certificate ending soon, the disk filling).
    Warn,
    Fail,
}

/// One finding.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Check {
    /// `server`, `listener`, `release`, `certificate`, `elasticsearch`, `disk`, `database`,
    /// `policies`.
    pub(crate) name: String,
    pub(crate) level: Level,
    pub(crate) message: String,
}

fn check(name: &str, level: Level, message: impl Into<String>) -> Check {
    Check { name: name.to_owned(), level, message: message.into() }
}

/// Every check that applies, in the order the verdict names them.
pub(crate) fn checks(config: &Config, report: &StatusReport, now: OffsetDateTime) -> Vec<Check> {
    let running = report.server == Server::Running;
    let mut out = vec![server(report)];
    if running {
        out.push(listener(report.listen.unwrap_or(config.server.listen)));
    }
    if let Some(error) = &report.database {
        out.push(check("database", Level::Fail, format!("the state store fails: {error}")));
    } else {
        out.push(check("database", Level::Ok, "the state store answers"));
    }
    out.push(release(report, now));
    if let Some(path) = config.server_certificate() {
        // Before the first start, the quick-start certificate does not exist yet: `server`
        // says to start it.
        if running || path.exists() {
            out.push(certificate(&path, now));
        }
    }
    if let Some(es) = &report.elasticsearch {
        out.push(match es.state {
            crate::elastic::State::Ok => check("elasticsearch", Level::Ok, "reachable"),
            state => check("elasticsearch", Level::Fail, format!("{state}: {}", es.message)),
        });
    }
    for (policy, why) in &report.policies_held {
        out.push(check("policies", Level::Fail, format!("policy {policy} not delivered: {why}")));
    }
    out.push(disk(&config.data_dir));
    out
}

/// The one line `health` prints: `healthy`, `healthy, but …` or `UNHEALTHY: …`, naming every
/// check that is not fine (failures first).
pub(crate) fn verdict(checks: &[Check], report: &StatusReport) -> String {
    let worst = checks.iter().map(|c| c.level).max().unwrap_or(Level::Ok);
    let mut bad: Vec<&Check> = checks.iter().filter(|c| c.level != Level::Ok).collect();
    bad.sort_by_key(|c| std::cmp::Reverse(c.level));
    let said = |cs: &[&Check]| cs.iter().map(|c| c.message.as_str()).collect::<Vec<_>>().join("; ");
    match worst {
        Level::Ok => {
            let release = report.active.as_ref().map_or_else(String::new, |a| {
                format!(": serving {} {} to {} agent(s)", a.name, a.sequence, report.agents.total)
            });
            format!("healthy{release}")
        }
        Level::Warn => format!("healthy, but {}", said(&bad)),
        Level::Fail => format!("UNHEALTHY: {}", said(&bad)),
    }
}

fn server(report: &StatusReport) -> Check {
    let status = report.status.as_deref();
    match report.server {
        Server::Stopped => {
            check("server", Level::Fail, "not running: start `ferry-appliance serve`")
        }
        // Wanted, but the instance serves no agent: what a load balancer's check says too.
        Server::Running if report.draining => check(
            "server",
            Level::Fail,
            "draining: /api/status answers 503 until `ferry-appliance drain --undo`",
        ),
        Server::Running if status == Some(crate::fleet::status::HEALTHY) => {
            check("server", Level::Ok, "running; /api/status answers HEALTHY")
        }
        Server::Running => {
            let why =
                report.message.clone().unwrap_or_else(|| "see `ferry-appliance status`".into());
            check(
                "server",
                Level::Fail,
                format!("/api/status answers {}: {why}", status.unwrap_or("nothing")),
            )
        }
    }
}

/// Whether something accepts TCP connections on the agents' listener, reached as an agent on
/// this host would (an unspecified address through loopback).
fn listener(addr: std::net::SocketAddr) -> Check {
    let mut target = addr;
    if addr.ip().is_unspecified() {
        target.set_ip(match addr {
            std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    match std::net::TcpStream::connect_timeout(&target, Duration::from_secs(2)) {
        Ok(_) => check("listener", Level::Ok, format!("{addr} accepts connections")),
        Err(e) => {
            check("listener", Level::Fail, format!("nothing accepts connections on {addr}: {e}"))
        }
    }
}

fn release(report: &StatusReport, now: OffsetDateTime) -> Check {
    let Some(active) = &report.active else {
        return check("release", Level::Fail, "no release is active: import a bundle");
    };
    let named = format!("release {} {}", active.name, active.sequence);
    if !report.loaded {
        let check_name = report.check.as_deref().unwrap_or("unknown");
        return check("release", Level::Fail, format!("{named} does not verify ({check_name})"));
    }
    let Some(expires) = active.expires.as_deref() else {
        return check("release", Level::Ok, named);
    };
    let Ok(at) = OffsetDateTime::parse(expires, &time::format_description::well_known::Rfc3339)
    else {
        return check(
            "release",
            Level::Fail,
            format!("{named} has an unreadable expiry {expires:?}"),
        );
    };
    let days = (at - now).whole_days();
    if at <= now {
        check("release", Level::Fail, format!("{named} expired on {expires}"))
    } else if days < RELEASE_WARN_DAYS {
        check(
            "release",
            Level::Warn,
            format!("{named} expires in {days} day(s) ({expires}): import a newer bundle"),
        )
    } else {
        check("release", Level::Ok, format!("{named} expires in {days} days"))
    }
}

fn certificate(path: &Path, now: OffsetDateTime) -> Check {
    match certificate_expiry(path) {
        Err(e) => check("certificate", Level::Fail, format!("{e:#}")),
        Ok(at) if at <= now => check(
            "certificate",
            Level::Fail,
            format!(
                "the server certificate {} expired on {}",
                path.display(),
                ferry_manifests::rfc3339(at)
            ),
        ),
        Ok(at) => {
            let days = (at - now).whole_days();
            let level = if days < CERTIFICATE_WARN_DAYS { Level::Warn } else { Level::Ok };
            check("certificate", level, format!("the server certificate expires in {days} day(s)"))
        }
    }
}

fn disk(dir: &Path) -> Check {
    match disk_space(dir) {
        Err(e) => check(
            "disk",
            Level::Fail,
            format!("cannot read the free space of {}: {e}", dir.display()),
        ),
        Ok(space) => {
            let gib = |b: u64| b as f64 / f64::from(1u32 << 30);
            let message = format!(
                "{:.1} GiB free of {:.1} GiB in {}",
                gib(space.free),
                gib(space.total),
                dir.display()
            );
            let level = if space.free < DISK_FAIL_BYTES {
                Level::Fail
            } else if space.free.saturating_mul(100) < space.total.saturating_mul(DISK_WARN_PERCENT)
            {
                Level::Warn
            } else {
                Level::Ok
            };
            check("disk", level, message)
        }
    }
}

/// When the first certificate of the PEM file at `path` (the server's own; a chain follows it)
/// stops being valid.
pub(crate) fn certificate_expiry(path: &Path) -> anyhow::Result<OffsetDateTime> {
    use anyhow::Context as _;
    let pem = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let (_, block) = x509_parser::pem::parse_x509_pem(&pem)
        .map_err(|e| anyhow::anyhow!("{} holds no PEM certificate: {e}", path.display()))?;
    let cert = block
        .parse_x509()
        .map_err(|e| anyhow::anyhow!("{} holds no X.509 certificate: {e}", path.display()))?;
    Ok(cert.validity().not_after.to_datetime())
}

/// The size of the file system holding a folder, and what an unprivileged writer may still use.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DiskSpace {
    pub(crate) free: u64,
    pub(crate) total: u64,
}

pub(crate) fn disk_space(dir: &Path) -> std::io::Result<DiskSpace> {
    let stat = rustix::fs::statvfs(dir)?;
    Ok(DiskSpace {
        free: stat.f_bavail.saturating_mul(stat.f_frsize),
        total: stat.f_blocks.saturating_mul(stat.f_frsize),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::api::ActiveRelease;

    fn report(expires: Option<String>) -> StatusReport {
        let mut report =
            crate::admin::status_report(true, &crate::release::Active::None, &Default::default());
        report.status = Some(crate::fleet::status::HEALTHY.to_owned());
        report.active =
            Some(ActiveRelease { name: "site".into(), sequence: 7, expires, content: None });
        (report.loaded, report.served) = (true, true);
        report
    }

    #[test]
    fn a_release_near_its_end_warns_and_one_past_it_fails() {
        let now = OffsetDateTime::now_utc();
        let at = |days: i64| Some(ferry_manifests::rfc3339(now + time::Duration::days(days)));
        assert_eq!(release(&report(at(60)), now).level, Level::Ok);
        let soon = release(&report(at(3)), now);
        assert_eq!(soon.level, Level::Warn);
        assert!(soon.message.contains("release site 7 expires in 3 day(s)"), "{}", soon.message);
        assert_eq!(release(&report(at(-1)), now).level, Level::Fail);
        assert_eq!(release(&report(Some("soon".into())), now).level, Level::Fail);
    }

    #[test]
    fn the_verdict_names_failures_before_warnings() {
        let r = report(None);
        let all = [
            check("disk", Level::Warn, "9 % free"),
            check("server", Level::Ok, "running"),
            check("certificate", Level::Fail, "expired"),
        ];
        assert_eq!(verdict(&all, &r), "UNHEALTHY: expired; 9 % free");
        assert_eq!(verdict(&all[..2], &r), "healthy, but 9 % free");
        assert_eq!(verdict(&all[1..2], &r), "healthy: serving site 7 to 0 agent(s)");
    }

    #[test]
    fn a_certificate_file_is_read_for_its_end() {
        let dir = tempfile::tempdir().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["a.example".into()]).unwrap();
        params.not_after = time::OffsetDateTime::from_unix_timestamp(2_000_000_000).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let path = dir.path().join("c.pem");
        std::fs::write(&path, cert.pem()).unwrap();
        assert_eq!(certificate_expiry(&path).unwrap().unix_timestamp(), 2_000_000_000);
        std::fs::write(&path, "not a certificate").unwrap();
        let e = certificate_expiry(&path).unwrap_err().to_string();
        assert!(e.contains("holds no PEM certificate"), "{e}");
        let soon = certificate(&path, OffsetDateTime::now_utc());
        assert_eq!(soon.level, Level::Fail);
    }
}
