//! The HAProxy configuration shipped for sites (`appliance/packaging/haproxy/ferry.cfg`), held
//! to what its comments say: HAProxy accepts it, and its TLS-terminating alternative; run in
//! front of appliances with its own timings, it keeps in rotation an instance whose
//! Elasticsearch is out of reach (`DEGRADED`: every instance shares it), takes out one that is
//! drained or not there, and puts a drained one back once it is undone.

use std::net::SocketAddr;
use std::path::Path;

use ferry_testkit::elastic::{DoubleOptions, ElasticDouble};
use ferry_testkit::haproxy::{self, Haproxy, Mode};

use crate::support::{Endpoint, Fixture, Server, VERSIONS, assert_ok};

/// The file as shipped.
const SITE: &str = include_str!("../../packaging/haproxy/ferry.cfg");

/// The instances' addresses in the file, documentation addresses a site replaces.
const PLACEHOLDERS: [&str; 3] = ["192.0.2.11:8220", "192.0.2.12:8220", "192.0.2.13:8220"];

/// `text` with each `(from, to)` replaced; every `from` must be there, so a change to the file
/// that a test relies on fails here rather than passing unnoticed.
#[track_caller]
fn replaced(text: &str, replacements: &[(&str, String)]) -> String {
    let mut text = text.to_owned();
    for (from, to) in replacements {
        assert!(text.contains(from), "{from:?} is no longer in ferry.cfg");
        text = text.replace(from, to);
    }
    text
}

/// The site's file with `instances` in place of the placeholders.
fn with_instances(config: &str, instances: [SocketAddr; 3]) -> String {
    let pairs: Vec<(&str, String)> =
        PLACEHOLDERS.iter().zip(instances).map(|(p, i)| (*p, i.to_string())).collect();
    replaced(config, &pairs)
}

/// `haproxy -c` on `config`, written to `dir`; panics with HAProxy's words unless it passes.
/// `false` when HAProxy is not installed (the test is skipped).
fn passes_check(config: &str, dir: &Path) -> bool {
    let file = dir.join("haproxy.cfg");
    std::fs::write(&file, config).unwrap();
    let Some(out) = haproxy::check_config(&file) else { return false };
    let said =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "haproxy -c refused it:\n{said}\n{config}");
    true
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

#[test]
fn haproxy_accepts_the_site_configuration_and_its_tls_terminating_alternative() {
    let dir = tempfile::tempdir().unwrap();
    let site = with_instances(SITE, [loopback(18221), loopback(18222), loopback(18223)]);
    if !passes_check(&site, dir.path()) {
        return;
    }

    // The alternative in the comments, made live: its frontend and backend in place of the
    // passthrough ones, with a certificate and a CA where it names them.
    let key = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let (crt, ca) = (dir.path().join("fleet.pem"), dir.path().join("instances-ca.pem"));
    std::fs::write(&crt, key.cert.pem() + &key.signing_key.serialize_pem()).unwrap();
    std::fs::write(&ca, key.cert.pem()).unwrap();
    let start = site.find("\nfrontend fleet\n").expect("the passthrough frontend");
    let alternative = site.find("# frontend fleet\n").expect("the alternative's frontend");
    let end = alternative
        + site[alternative..].find("\n#\n# (In HTTP mode").expect("the end of the alternative");
    let uncommented: String = site[alternative..end]
        .lines()
        .map(|l| l.strip_prefix("# ").or_else(|| l.strip_prefix('#')).unwrap())
        .map(|l| format!("{l}\n"))
        .collect();
    let terminating = replaced(
        &format!("{}\n{uncommented}", &site[..start]),
        &[
            ("/etc/haproxy/fleet.pem", crt.display().to_string()),
            ("/etc/haproxy/instances-ca.pem", ca.display().to_string()),
        ],
    );
    assert!(terminating.contains("mode http") && terminating.contains("ssl crt"), "{terminating}");
    passes_check(&terminating, dir.path());
}

/// The site's file as a test runs it: as the test's user (no chroot, no user switch, and
/// connections within the file descriptors it may have), its runtime API and frontend where the
/// harness says, logs on stderr.
fn runnable(instances: [SocketAddr; 3], address: SocketAddr, socket: &Path) -> String {
    replaced(
        &with_instances(SITE, instances),
        &[
            ("    log /dev/log local0\n", "    log stderr format raw local0\n".to_owned()),
            ("    chroot /var/lib/haproxy\n", String::new()),
            ("    user haproxy\n", String::new()),
            ("    group haproxy\n", String::new()),
            (
                "    stats socket /run/haproxy/admin.sock mode 660 level admin\n",
                format!("    stats socket {} mode 600 level admin\n", socket.display()),
            ),
            ("    bind :8220\n", format!("    bind {address}\n")),
            (
                "    maxconn 50000\n    default_backend",
                "    maxconn 1000\n    default_backend".to_owned(),
            ),
            ("    maxconn 50000\n\ndefaults", "    maxconn 1000\n\ndefaults".to_owned()),
        ],
    )
}

#[test]
fn the_site_configuration_keeps_a_degraded_instance_and_takes_a_drained_one_out() {
    // A: its Elasticsearch is out of reach, so /api/status says 503 DEGRADED.
    let double = ElasticDouble::start(DoubleOptions::default());
    let f_a = Fixture::new();
    double.write_ca(&f_a.path("es-ca.pem"));
    std::fs::write(f_a.path("es-token"), double.service_token()).unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(f_a.path("es-token"), std::fs::Permissions::from_mode(0o600)).unwrap();
    f_a.append_config(&format!(
        "[elasticsearch]\nhosts = [\"{}\"]\nca_file = \"es-ca.pem\"\n\
         service_token_file = \"es-token\"\nrequest_timeout_seconds = 2\n",
        double.url()
    ));
    assert_ok(&f_a.run(&[&"import", &f_a.bundle(1, VERSIONS[0], Fixture::later())]));
    double.stop_listening();
    let a = Server::start(&f_a);
    assert_eq!(a.get("/api/status", &[]).0, 503);
    // B: healthy, with A's certificate, as every instance has public_url's.
    let f_b = Fixture::new();
    let tls = f_a.path("data/tls");
    f_b.append_config(&format!(
        "tls_cert = {:?}\ntls_key = {:?}",
        tls.join("server.pem"),
        tls.join("server.key")
    ));
    assert_ok(&f_b.run(&[&"import", &f_b.bundle(1, VERSIONS[0], Fixture::later())]));
    let b = Server::start(&f_b);
    // C: nothing listens there.
    let c = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let address = |s: &Server| s.https.trim_start_matches("https://").parse().unwrap();
    let instances = [address(&a), address(&b), c];
    let Some(proxy) =
        Haproxy::start_with(Mode::TlsPassthrough, |at, socket| runnable(instances, at, socket))
    else {
        return;
    };
    let body = a.get("/api/status", &[]).2;
    assert!(String::from_utf8_lossy(&body).contains("\"DEGRADED\""));
    proxy.wait_for(2, "DOWN");
    let servers = proxy.servers();
    assert_eq!((servers[0].status.as_str(), servers[1].status.as_str()), ("UP", "UP"));
    assert_eq!(servers[0].check, "L7OK", "DEGRADED passes the check: {servers:?}");
    // Both are in rotation: new connections reach one and the other.
    let fleet = Endpoint { https: proxy.url(), ca: a.ca.clone() };
    let seen: std::collections::BTreeSet<String> = (0..6)
        .map(|_| {
            let body: serde_json::Value =
                serde_json::from_slice(&fleet.get("/api/status", &[]).2).unwrap();
            body["status"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(seen, ["DEGRADED".to_owned(), "HEALTHY".to_owned()].into());

    // Drained, A is taken out after two failed checks two seconds apart.
    assert_ok(&f_a.run(&[&"drain"]));
    proxy.wait_for(0, "DOWN");
    assert!(proxy.servers()[1].status == "UP");
    // Undone, it is back after two good ones.
    assert_ok(&f_a.run(&[&"drain", &"--undo"]));
    proxy.wait_for(0, "UP");
}
