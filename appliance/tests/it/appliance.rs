//! `ferry-appliance` as an operator and an agent meet it: import, refusals that leave the
//! active release alone, the HTTPS mirror (checked with `sha512sum` and `gpg`), the plain mirror
//! (sendfile: ranges, HEAD, a blob cut under a download), live switching,
//! rollback, fsck, imports killed at every step, and the allocator that returns idle memory.

use crate::support;
use crate::support::{
    Fixture, Server, VERSIONS, archive_bytes, archive_path, assert_ok, raw_status, stderr, stdout,
};
use time::OffsetDateTime;

fn import(f: &Fixture, bundle: &std::path::Path) -> std::process::Output {
    f.run(&[&"import", &bundle])
}

#[test]
fn import_serve_refuse_switch_and_roll_back() {
    let f = Fixture::new();
    let b1 = f.bundle(1, VERSIONS[0], Fixture::later());
    assert_ok(&import(&f, &b1));
    assert_eq!(f.releases(), (Some(1), vec![1]));
    let server = Server::start(&f);
    let v1 = format!("/downloads/{}", archive_path(VERSIONS[0]));
    server.wait_for(&v1, &archive_bytes(VERSIONS[0]));

    // A newer bundle, imported while serving, becomes active without a restart.
    let b2 = f.bundle(2, VERSIONS[1], Fixture::later());
    assert_ok(&import(&f, &b2));
    let v2 = format!("/downloads/{}", archive_path(VERSIONS[1]));
    server.wait_for(&v2, &archive_bytes(VERSIONS[1]));
    assert_eq!(server.get(&v1, &[]).0, 404, "the old release's files are gone from the mirror");

    // Each refusal: exit 1, a message naming the check, and the active release unchanged.
    let (other, _) = ferry_testkit::key_pair("other");
    let expired = OffsetDateTime::now_utc() - time::Duration::days(2);
    let tampered = {
        let b = f.bundle(7, VERSIONS[2], Fixture::later());
        let mut bytes = std::fs::read(&b).unwrap();
        let at = bytes.len() / 2;
        bytes[at] ^= 1;
        std::fs::write(&b, bytes).unwrap();
        b
    };
    let cases = [
        (b2.clone(), "replay"),
        (b1.clone(), "older than the floor"),
        (f.bundle(5, VERSIONS[2], expired), "expired"),
        (f.bundle_with_key(6, VERSIONS[2], Fixture::later(), &other), "not trusted"),
        (tampered, "detached signature check failed"),
    ];
    for (bundle, says) in cases {
        let o = import(&f, &bundle);
        assert_eq!(o.status.code(), Some(1), "{says}: {}", stderr(&o));
        assert!(stderr(&o).contains(says), "expected {says:?} in {}", stderr(&o));
        assert_eq!(f.releases().0, Some(2), "{says}: the active release changed");
        assert_eq!(
            server.get(&v2, &[]).2,
            archive_bytes(VERSIONS[1]),
            "{says}: the mirror changed"
        );
    }
    // One name and sequence is one bundle: different content under a retained sequence is
    // refused even with the override.
    let o = f.run(&[&"import", &f.bundle(2, VERSIONS[2], Fixture::later()), &"--allow-downgrade"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("never reused"), "{}", stderr(&o));
    assert_eq!(f.releases().0, Some(2));

    // The overrides exist and are named for what they remove.
    let o = f.run(&[&"import", &f.bundle(5, VERSIONS[2], expired), &"--allow-expired"]);
    assert_ok(&o);
    assert_eq!(f.releases().0, Some(5));

    // Rollback re-activates 2 and serves its files; the floor stays at 5.
    assert_ok(&f.run(&[&"rollback", &"2"]));
    server.wait_for(&v2, &archive_bytes(VERSIONS[1]));
    let o = import(&f, &f.bundle(4, VERSIONS[2], Fixture::later()));
    assert_eq!(o.status.code(), Some(1), "the floor did not move down: {}", stderr(&o));
    let o = f.run(&[&"releases"]);
    assert!(
        stdout(&o).lines().any(|l| l.starts_with('*') && l.contains("site") && l.contains(" 2 ")),
        "{}",
        stdout(&o)
    );
    // Forward again to a newer retained release: logged as that, not as a rollback.
    let o = f.run(&[&"rollback", &"5"]);
    assert_ok(&o);
    assert!(stderr(&o).contains("activated a newer retained release"), "{}", stderr(&o));
    assert!(!stderr(&o).contains("rolled back"), "{}", stderr(&o));
}

/// The exit code rule for the appliance's own commands: 1 when an input was refused (a bundle
/// missing, unsigned or expired), 2 for a configuration it cannot use. Each message says its
/// cause once, and logs written to a pipe carry no colour codes.
#[test]
fn import_refusals_exit_1_and_configuration_errors_exit_2() {
    let f = Fixture::new();
    let bundle = f.bundle(1, VERSIONS[0], Fixture::later());
    let signature = ferry_manifests::default_signature_path(&bundle);
    std::fs::rename(&signature, f.path("moved.minisig")).unwrap();
    let o = f.run(&[&"import", &bundle, &"--json"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let verdict: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(verdict["check"], "signature-missing", "{verdict}");
    assert!(stderr(&o).contains("minisig does not exist"), "{}", stderr(&o));
    std::fs::rename(f.path("moved.minisig"), &signature).unwrap();
    let o = import(&f, &f.path("none.ferry"));
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("none.ferry does not exist"), "{}", stderr(&o));
    assert!(!stderr(&o).contains("minisig"), "the bundle is what is missing: {}", stderr(&o));

    let expired = f.bundle(2, VERSIONS[0], OffsetDateTime::now_utc() - time::Duration::days(2));
    let o = import(&f, &expired);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    // The refusal is logged (a warning) and is the error; each says the cause once.
    for line in stderr(&o).lines() {
        assert!(line.matches("bundle expired at").count() <= 1, "said twice: {line}");
    }
    let error = stderr(&o).lines().find(|l| l.starts_with("error: ")).unwrap().to_owned();
    assert!(error.contains("bundle expired at"), "{error}");
    let o = f.run(&[&"import", &expired, &"--json"]);
    let verdict: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let said = verdict["error"].as_str().unwrap();
    assert_eq!(said.matches("bundle expired at").count(), 1, "{verdict}");
    // The override is logged (a warning), in plain text when stderr is a pipe.
    let o = f.appliance(&[&"import", &expired, &"--allow-expired"]).env_remove("NO_COLOR").output();
    let o = o.unwrap();
    assert_ok(&o);
    assert!(stderr(&o).contains("--allow-expired overrides"), "{}", stderr(&o));
    assert!(!stderr(&o).contains('\x1b'), "ANSI escape codes in a piped log: {:?}", stderr(&o));

    // No configuration: exit 2, saying how to name one and where to get one.
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_ferry-appliance"))
        .arg("--config")
        .arg(f.path("nowhere.toml"))
        .arg("releases")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--config") && stderr(&o).contains("default-config"));
    assert_eq!(stderr(&o).matches("No such file").count(), 1, "{}", stderr(&o));
}

#[test]
fn the_mirror_serves_elastic_layout_over_tls() {
    let f = Fixture::new();
    assert_ok(&import(&f, &f.bundle(1, VERSIONS[1], Fixture::later())));
    let server = Server::start(&f);
    let path = archive_path(VERSIONS[1]);
    let url = format!("/downloads/{path}");
    server.wait_for(&url, &archive_bytes(VERSIONS[1]));

    // Full body, length, ETag, no Content-Encoding.
    let (status, headers, body) = server.get(&url, &[("Accept-Encoding", "gzip")]);
    assert_eq!(status, 200);
    assert_eq!(body, archive_bytes(VERSIONS[1]));
    assert_eq!(headers["content-length"], "200000");
    assert!(headers.get("content-encoding").is_none());
    let etag = headers["etag"].to_str().unwrap().to_owned();
    assert_eq!(etag.len(), 66);
    assert_eq!(headers["x-content-type-options"], "nosniff");

    // The quick-start CA's revocation list, where its server certificate says it is.
    let (status, headers, crl) = server.get("/tls/ca.crl", &[]);
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "application/pkix-crl");
    assert_eq!(crl, std::fs::read(f.path("data/tls/ca.crl")).unwrap());

    // The sidecar and signature served next to it check out with the stock tools.
    let work = f.path("agent");
    std::fs::create_dir_all(&work).unwrap();
    let name = path.rsplit('/').next().unwrap();
    for suffix in ["", ".sha512", ".asc"] {
        let (status, _, bytes) = server.get(&format!("{url}{suffix}"), &[]);
        assert_eq!(status, 200, "{suffix}");
        std::fs::write(work.join(format!("{name}{suffix}")), bytes).unwrap();
    }
    let o = ferry_manifests::test_tools::tool("sha512sum")
        .arg("-c")
        .arg(format!("{name}.sha512"))
        .current_dir(&work)
        .output()
        .unwrap();
    assert_ok(&o);
    let (status, _, key) = server.get("/api/agents/upgrades/9.2.2/pgp-public-key", &[]);
    assert_eq!(status, 200);
    assert_eq!(key, std::fs::read(f.path("GPG-KEY-test")).unwrap());
    // Agents ask with their target's core version, which need not be in the bundle (a
    // fallback key source): the same key. A path that is no version is a bad request.
    let (status, _, other) = server.get("/api/agents/upgrades/8.14.1/pgp-public-key", &[]);
    assert_eq!((status, &other), (200, &key));
    for bad in ["9.2", "9.2.2-SNAPSHOT", "9.2.x", "9..2"] {
        let (status, _, body) =
            server.get(&format!("/api/agents/upgrades/{bad}/pgp-public-key"), &[]);
        assert_eq!(status, 400, "{bad}: {}", String::from_utf8_lossy(&body));
    }
    let gnupg = f.path("gnupg");
    std::fs::create_dir_all(&gnupg).unwrap();
    std::fs::write(work.join("key.asc"), &key).unwrap();
    let gpg = |args: &[&str]| {
        ferry_manifests::test_tools::tool("gpg")
            .arg("--homedir")
            .arg(&gnupg)
            .arg("--batch")
            .args(args)
            .current_dir(&work)
            .output()
            .unwrap()
    };
    assert_ok(&gpg(&["--import", "key.asc"]));
    assert_ok(&gpg(&["--verify", &format!("{name}.asc"), name]));

    // HEAD, If-None-Match, a range, and what is not there.
    let head = server
        .client()
        .head(format!("{}{url}", server.https.replace("127.0.0.1", "localhost")))
        .call()
        .unwrap();
    assert_eq!(head.status().as_u16(), 200);
    assert_eq!(head.headers()["content-length"], "200000");
    assert_eq!(server.get(&url, &[("If-None-Match", &etag)]).0, 304);
    let (status, headers, body) = server.get(&url, &[("Range", "bytes=100-199")]);
    assert_eq!((status, body.as_slice()), (206, &archive_bytes(VERSIONS[1])[100..200]));
    assert_eq!(headers["content-range"], "bytes 100-199/200000");
    assert_eq!(server.get(&url, &[("Range", "bytes=300000-")]).0, 416);
    assert_eq!(
        server.get("/downloads/beats/elastic-agent/elastic-agent-1.0.0-linux-x86_64.tar.gz", &[]).0,
        404
    );
    assert_eq!(
        server.get("/downloads/policies/p.yml", &[]).0,
        404,
        "only the mirror layout is served"
    );
    assert_eq!(server.get("/api/status", &[]).0, 200);
    assert_eq!(server.get("/api/status", &[]).2, br#"{"name":"fleet-server","status":"HEALTHY"}"#);

    // Traversal, sent byte for byte on the plain mirror listener (same routes as over TLS).
    for target in [
        format!("/downloads/../{path}"),
        "/downloads/../../state.db".to_owned(),
        "/downloads/%2e%2e/state.db".to_owned(),
        format!("/downloads/%2e%2e/downloads/{path}"),
        format!("/downloads//{path}"),
        format!("/downloads/beats\\elastic-agent\\{name}"),
        "/releases/site-1/manifest.json".to_owned(),
    ] {
        assert_eq!(raw_status(&server.http, &target), 404, "{target}");
    }
    assert_eq!(raw_status(&server.http, &url), 200);
    assert_eq!(
        raw_status(&server.http, "/api/agents/upgrades/9.2.2/pgp-public-key"),
        501,
        "PGP key only over TLS"
    );
}

#[test]
fn fsck_finds_a_corrupted_blob() {
    let f = Fixture::new();
    assert_ok(&import(&f, &f.bundle(1, VERSIONS[0], Fixture::later())));
    assert_ok(&f.run(&[&"fsck"]));
    let digest = ferry_manifests::Sha256Digest::of(&archive_bytes(VERSIONS[0])).to_hex();
    let blob = f.path(&format!("data/blobs/sha256/{}/{}", &digest[..2], &digest[2..]));
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&blob, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut bytes = std::fs::read(&blob).unwrap();
    bytes[10] ^= 0xff;
    std::fs::write(&blob, bytes).unwrap();
    let o = f.run(&[&"fsck"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stdout(&o).contains(&format!("DAMAGED site 1 downloads/{}", archive_path(VERSIONS[0]))),
        "{}",
        stdout(&o)
    );
}

#[test]
fn an_import_killed_at_any_step_leaves_one_whole_release_active() {
    let points = [
        ("after-signature", 1),
        ("during-extract", 1),
        ("after-extract", 1),
        ("after-blobs", 1),
        ("after-release-dir", 1),
        ("before-commit", 1),
        ("after-commit", 2),
        ("during-gc", 2),
    ];
    for (point, active_after) in points {
        let f = Fixture::new();
        assert_ok(&import(&f, &f.bundle(1, VERSIONS[0], Fixture::later())));
        let b2 = f.bundle(2, VERSIONS[1], Fixture::later());
        let o = f.appliance(&[&"import", &b2]).env("FERRY_CRASH_AT", point).output().unwrap();
        assert!(!o.status.success(), "{point}: the import was not killed");
        // The next command cleans staging; exactly one complete release is active; fsck is clean.
        assert_eq!(f.releases().0, Some(active_after), "{point}");
        assert_eq!(
            std::fs::read_dir(f.path("data/staging")).unwrap().count(),
            0,
            "{point}: staging not cleaned"
        );
        let o = f.run(&[&"fsck"]);
        assert_ok(&o);
        // The interrupted import can simply be run again (or is a replay if it had committed).
        let o = import(&f, &b2);
        if active_after == 1 {
            assert_ok(&o);
        } else {
            assert_eq!(o.status.code(), Some(1), "{point}");
        }
        assert_eq!(f.releases().0, Some(2), "{point}");
        assert_ok(&f.run(&[&"fsck"]));
    }
}

/// The served binary allocates with jemalloc and its background thread, which gives idle pages
/// back: built into the binary by `.cargo/config.toml` (`JEMALLOC_SYS_WITH_MALLOC_CONF`), so a
/// build that lost the setting would keep a storm's freed memory resident while agents sit
/// parked (docs/benchmarks.md, "jemalloc in the appliance"). jemalloc names that thread.
#[test]
fn the_appliance_returns_idle_memory_from_a_background_thread() {
    let f = Fixture::new();
    assert_ok(&import(&f, &f.bundle(1, VERSIONS[0], Fixture::later())));
    let server = Server::start(&f);
    let names: Vec<String> = std::fs::read_dir(format!("/proc/{}/task", server.pid()))
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.unwrap().path().join("comm")).ok())
        .map(|name| name.trim().to_owned())
        .collect();
    assert!(names.iter().any(|n| n == "jemalloc_bg_thd"), "the server's threads: {names:?}");
}

#[test]
fn default_config_and_gc() {
    let f = Fixture::new();
    let o = f.run(&[&"default-config"]);
    assert_ok(&o);
    assert!(stdout(&o).contains("trusted_keys"));
    f.write_config("");
    std::fs::write(
        f.path("appliance.toml"),
        std::fs::read_to_string(f.path("appliance.toml"))
            .unwrap()
            .replace("retain_releases = 3", "retain_releases = 2"),
    )
    .unwrap();
    for (seq, v) in [(1, VERSIONS[0]), (2, VERSIONS[1]), (3, VERSIONS[2])] {
        assert_ok(&import(&f, &f.bundle(seq, v, Fixture::later())));
    }
    assert_eq!(f.releases(), (Some(3), vec![2, 3]), "retain_releases = 2 keeps two");
    let digest = ferry_manifests::Sha256Digest::of(&archive_bytes(VERSIONS[0])).to_hex();
    assert!(
        !f.path(&format!("data/blobs/sha256/{}/{}", &digest[..2], &digest[2..])).exists(),
        "release 1's archive was collected"
    );
    assert_ok(&f.run(&[&"fsck"]));
    let bad = std::fs::read_to_string(f.path("appliance.toml"))
        .unwrap()
        .replace("retain_releases", "retain_relases");
    std::fs::write(f.path("appliance.toml"), bad).unwrap();
    let o = f.run(&[&"releases"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("retain_relases"), "{}", stderr(&o));
}

#[test]
fn a_download_under_way_finishes_from_the_blob_it_started_on() {
    use std::io::Read as _;
    let f = Fixture::new();
    let config = std::fs::read_to_string(f.path("appliance.toml")).unwrap();
    std::fs::write(
        f.path("appliance.toml"),
        config.replace("retain_releases = 3", "retain_releases = 1"),
    )
    .unwrap();
    let big = 48 << 20; // far more than the loopback socket buffers hold
    assert_ok(&import(&f, &f.bundle_full(1, VERSIONS[0], Fixture::later(), &f.key, big)));
    let server = Server::start(&f);
    let url = format!("/downloads/{}", archive_path(VERSIONS[0]));
    let expected = support::sized_archive(VERSIONS[0], big);
    // Wait until the server serves release 1, then start a download and read only its start.
    for _ in 0..100 {
        if server.get("/api/status", &[]).0 == 200
            && server.get(&format!("{url}.sha512"), &[]).0 == 200
        {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let full = format!("{}{url}", server.https.replace("127.0.0.1", "localhost"));
    let mut response = server.client().get(&full).call().unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let mut reader = response.body_mut().with_config().limit(u64::MAX).reader();
    let mut head = vec![0u8; 4096];
    reader.read_exact(&mut head).unwrap();

    // Release 2 replaces it, and with retain_releases = 1 its blobs are deleted.
    assert_ok(&import(&f, &f.bundle(2, VERSIONS[1], Fixture::later())));
    let digest = ferry_manifests::Sha256Digest::of(&expected).to_hex();
    assert!(!f.path(&format!("data/blobs/sha256/{}/{}", &digest[..2], &digest[2..])).exists());
    server.wait_for(
        &format!("/downloads/{}", archive_path(VERSIONS[1])),
        &archive_bytes(VERSIONS[1]),
    );

    let mut rest = Vec::new();
    reader.read_to_end(&mut rest).unwrap();
    head.extend_from_slice(&rest);
    assert!(head == expected, "the download under way did not finish with the original bytes");
}

/// One response read off a kept-alive connection: status, head (lowercased) and body (as long
/// as its `Content-Length`; none when `head_only`, for HEAD and 304).
fn read_response(
    reader: &mut std::io::BufReader<std::net::TcpStream>,
    head_only: bool,
) -> (u16, String, Vec<u8>) {
    use std::io::{BufRead as _, Read as _};
    let mut head = String::new();
    loop {
        let mut line = String::new();
        assert!(reader.read_line(&mut line).unwrap() > 0, "closed mid-head: {head}");
        if line == "\r\n" {
            break;
        }
        head.push_str(&line.to_ascii_lowercase());
    }
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .map_or(0, |v| v.trim().parse().unwrap());
    let mut body = vec![0u8; if head_only { 0 } else { length }];
    reader.read_exact(&mut body).unwrap();
    (status, head, body)
}

#[test]
fn the_plain_mirror_sends_files_zero_copy_byte_for_byte() {
    use std::io::{Read as _, Write as _};
    // Several sendfile calls' worth (2 MiB each), and not a multiple of anything.
    let len = (5 << 20) + 3;
    let f = Fixture::new();
    assert_ok(&import(&f, &f.bundle_full(1, VERSIONS[0], Fixture::later(), &f.key, len)));
    let server = Server::start(&f);
    let url = format!("/downloads/{}", archive_path(VERSIONS[0]));
    let expected = support::sized_archive(VERSIONS[0], len);
    server.wait_for(&url, &expected);

    // One kept-alive plain connection: whole, ranges, HEAD, a revalidation, then whole again
    // as the last request; each response where it belongs.
    let stream = std::net::TcpStream::connect(server.http.trim_start_matches("http://")).unwrap();
    let mut writer = stream.try_clone().unwrap();
    let mut reader = std::io::BufReader::new(stream);
    let mut ask = |method: &str, extra: &str| {
        write!(writer, "{method} {url} HTTP/1.1\r\nHost: x\r\n{extra}\r\n").unwrap();
    };
    ask("GET", "");
    let (status, head, body) = read_response(&mut reader, false);
    assert_eq!(status, 200, "{head}");
    assert!(head.contains(&format!("content-length: {len}\r\n")), "{head}");
    assert!(body == expected, "the whole file");
    let etag = head.lines().find_map(|l| l.strip_prefix("etag: ")).unwrap().trim().to_owned();
    for (range, start, end) in [
        ("bytes=1000003-3500002", 1_000_003, 3_500_002),
        ("bytes=-10", len - 10, len - 1),
        ("bytes=5242880-", 5 << 20, len - 1),
        ("bytes=0-0", 0, 0),
    ] {
        ask("GET", &format!("Range: {range}\r\n"));
        let (status, head, body) = read_response(&mut reader, false);
        assert_eq!(status, 206, "{range}: {head}");
        assert!(head.contains(&format!("content-range: bytes {start}-{end}/{len}\r\n")), "{head}");
        assert!(body == expected[start..=end], "{range}: the range's bytes");
    }
    ask("HEAD", "");
    let (status, head, _) = read_response(&mut reader, true);
    assert_eq!(status, 200);
    assert!(head.contains(&format!("content-length: {len}\r\n")), "{head}");
    ask("GET", &format!("If-None-Match: {}\r\n", etag.to_ascii_lowercase()));
    assert_eq!(read_response(&mut reader, true).0, 304);
    ask("GET", "Connection: close\r\n");
    let (status, _, body) = read_response(&mut reader, false);
    assert!(status == 200 && body == expected, "the whole file again");
    let mut rest = Vec::new();
    reader.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "nothing after the last response");

    // HTTP/1.0, which closes after the body.
    let mut stream =
        std::net::TcpStream::connect(server.http.trim_start_matches("http://")).unwrap();
    write!(stream, "GET {url} HTTP/1.0\r\n\r\n").unwrap();
    let mut out = Vec::new();
    stream.read_to_end(&mut out).unwrap();
    assert!(out.ends_with(&expected) && out.len() < expected.len() + 1024);

    // Over TLS (the streamed body), the same bytes.
    let (status, _, body) = server.get(&url, &[]);
    assert!(status == 200 && body == expected, "TLS: the whole file");
    let (status, _, body) = server.get(&url, &[("Range", "bytes=1000003-3500002")]);
    assert!(status == 206 && body == expected[1_000_003..=3_500_002], "TLS: the range");
}

#[test]
fn a_blob_truncated_under_a_plain_download_cuts_it_and_closes_the_connection() {
    use std::io::{Read as _, Write as _};
    let len = 48 << 20; // far more than the loopback socket buffers hold unread
    let f = Fixture::new();
    assert_ok(&import(&f, &f.bundle_full(1, VERSIONS[0], Fixture::later(), &f.key, len)));
    let server = Server::start(&f);
    let url = format!("/downloads/{}", archive_path(VERSIONS[0]));
    let expected = support::sized_archive(VERSIONS[0], len);
    // Served once the release verified (its sidecar is a small file to wait on).
    for _ in 0..100 {
        if server.get(&format!("{url}.sha512"), &[]).0 == 200 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }

    // A download under way (a second request waiting behind it), read only at its start.
    let stream = std::net::TcpStream::connect(server.http.trim_start_matches("http://")).unwrap();
    let mut writer = stream.try_clone().unwrap();
    write!(writer, "GET {url} HTTP/1.1\r\nHost: x\r\n\r\nGET {url} HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut reader = std::io::BufReader::new(stream);
    let mut head = String::new();
    loop {
        let mut line = String::new();
        std::io::BufRead::read_line(&mut reader, &mut line).unwrap();
        if line == "\r\n" {
            break;
        }
        head.push_str(&line);
    }
    assert!(head.contains(&format!("content-length: {len}\r\n")), "{head}");
    let mut body = vec![0u8; 64 << 10];
    reader.read_exact(&mut body).unwrap();

    // The blob is cut to 1 MiB under it (a damaged disk, an operator's mistake).
    let digest = ferry_manifests::Sha256Digest::of(&expected).to_hex();
    let blob = f.path(&format!("data/blobs/sha256/{}/{}", &digest[..2], &digest[2..]));
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&blob, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::OpenOptions::new().write(true).open(&blob).unwrap().set_len(1 << 20).unwrap();

    // The response ends short and the connection closes: no second response.
    let mut rest = Vec::new();
    let _ = reader.read_to_end(&mut rest); // a reset is a close too
    body.extend_from_slice(&rest);
    assert!(body.len() < len, "{} of {len} bytes: the response was not cut", body.len());
    assert!(body == expected[..body.len()], "what came is the file's start, nothing else");
    server.wait_for_log("a response broke its framing");
    assert_eq!(raw_status(&server.http, "/downloads/none"), 404, "the server serves on");
}
