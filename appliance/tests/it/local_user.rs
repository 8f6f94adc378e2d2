//! The appliance against an unprivileged local user (issue 22, findings 2 and 9, and the admin
//! API's Host/Origin check): the admin API is a Unix socket in the private data directory that
//! the CLI checks before sending its token, the token changes at every start, and nothing
//! `serve` writes is readable by other users whatever umask it was started with.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

use crate::support;
use crate::support::{Fixture, Server, VERSIONS, admin_raw, admin_token, assert_ok};
use serde_json::json;

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path).unwrap().permissions().mode() & 0o7777
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn served(f: &Fixture) -> Server {
    assert_ok(&f.run(&[&"import", &f.bundle(1, VERSIONS[0], Fixture::later())]));
    Server::start(f)
}

/// Requests on the admin socket: no token or a wrong one is 401; the token of the previous start
/// is 401 after a restart; a browser's request (an Origin, a Host naming another host) is 403
/// even with the token. An old configuration naming `admin_listen` is refused with the fix.
#[test]
fn the_admin_socket_wants_this_starts_token_and_no_browser() {
    let f = Fixture::new();
    let server = served(&f);
    let socket = f.path("data/admin.sock");
    assert!(std::os::unix::fs::FileTypeExt::is_socket(
        &std::fs::symlink_metadata(&socket).unwrap().file_type()
    ));
    assert_eq!((mode(&socket), mode(&f.path("data/admin.token"))), (0o600, 0o600));
    assert!(!f.path("data/admin.url").exists());
    let token = admin_token(&f);
    let get = |headers: &str| admin_raw(&f, &format!("GET /admin/v1/agents HTTP/1.1\r\n{headers}"));
    for auth in ["Host: localhost", "Host: localhost\r\nAuthorization: Bearer wrong"] {
        let (status, body) = get(auth);
        assert_eq!((status, &body["error"]), (401, &json!("Unauthorized")), "{auth}");
    }
    let auth = format!("Authorization: Bearer {token}");
    for host in ["localhost", "localhost:8222", "127.0.0.1", "127.0.0.1:1", "[::1]", "[::1]:8222"] {
        assert_eq!(get(&format!("Host: {host}\r\n{auth}")).0, 200, "{host}");
    }
    for headers in [
        format!("Host: evil.example\r\n{auth}"),
        format!("Host: localhost.evil.example:80\r\n{auth}"),
        format!("Host: 127.0.0.2\r\n{auth}"),
        format!("Host: localhost\r\nOrigin: http://localhost:8222\r\n{auth}"),
        format!("Host: localhost\r\nOrigin: null\r\n{auth}"),
    ] {
        let (status, body) = get(&headers);
        assert_eq!((status, &body["error"]), (403, &json!("Forbidden")), "{headers}");
        assert!(body["message"].as_str().unwrap().contains("admin API"), "{body}");
    }

    // A restart mints a new token: the old one, seen once, is worthless.
    server.terminate();
    assert!(!socket.exists(), "a stopped server leaves no socket");
    let _server = Server::start(&f);
    assert_ne!(admin_token(&f), token);
    assert_eq!(get(&format!("Host: localhost\r\n{auth}")).0, 401);
    assert_ok(&f.run(&[&"agents", &"list"]));

    drop(_server);
    f.append_config("admin_listen = \"127.0.0.1:8222\"");
    let o = f.run(&[&"serve"]);
    assert_eq!(o.status.code(), Some(2));
    let err = support::stderr(&o);
    assert!(err.contains("admin.sock") && err.contains("remove the line"), "{err}");
}

/// Finding 2: while `serve` is down, whatever sits at `data_dir/admin.sock` may not be the
/// server. A symlink to another program's socket, a regular file, or a socket in a data
/// directory other users can write to is refused by the CLI (exit 2, naming it) before the
/// token is sent: the impostor listening receives nothing.
#[test]
fn the_cli_sends_its_token_only_to_the_servers_socket() {
    let f = Fixture::new();
    let data = f.path("data");
    std::fs::create_dir_all(&data).unwrap();
    chmod(&data, 0o700);
    std::fs::write(data.join("admin.token"), "the-admin-token").unwrap();
    // An impostor's socket, outside the data directory (another user's /tmp, say).
    let elsewhere = f.path("impostor.sock");
    let impostor = std::os::unix::net::UnixListener::bind(&elsewhere).unwrap();
    impostor.set_nonblocking(true).unwrap();
    let socket = data.join("admin.sock");
    let refused = |says: &str| {
        let o = f.run(&[&"agents", &"list"]);
        let err = support::stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{err}");
        assert!(err.contains(says) && err.contains("token was not sent"), "{says}: {err}");
    };

    std::os::unix::fs::symlink(&elsewhere, &socket).unwrap();
    refused("is not a socket");
    std::fs::remove_file(&socket).unwrap();
    std::fs::write(&socket, "").unwrap();
    refused("is not a socket");
    std::fs::remove_file(&socket).unwrap();
    // A socket right there, in a data directory group members could write to.
    let planted = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    planted.set_nonblocking(true).unwrap();
    chmod(&data, 0o770);
    refused("chmod 700");
    for listener in [&impostor, &planted] {
        let accepted = listener.accept().map(drop);
        assert_eq!(
            accepted.map_err(|e| e.kind()),
            Err(std::io::ErrorKind::WouldBlock),
            "nobody connected"
        );
    }
    // `status` reports the same refusal rather than "stopped".
    let o = f.run(&[&"status"]);
    assert_eq!(o.status.code(), Some(2), "{}", support::stderr(&o));
}

/// Finding 9: a data directory others can write to is refused, naming the fix; `serve` started
/// at umask 022 (an operator's shell) still leaves every file and folder it makes private.
#[test]
fn the_data_directory_stays_private_whatever_the_umask() {
    let f = Fixture::new();
    let data = f.path("data");
    std::fs::create_dir_all(&data).unwrap();
    chmod(&data, 0o777);
    // gc first: a serve that wrongly accepted the folder would not return.
    for command in [&"gc" as &dyn AsRef<std::ffi::OsStr>, &"serve"] {
        let o = f.run(&[command]);
        let err = support::stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{err}");
        assert!(err.contains("writable by other users") && err.contains("chmod 700"), "{err}");
    }
    std::fs::remove_dir(&data).unwrap();

    // Made by the import, then run at umask 022 with an agent enrolled and checked in.
    assert_ok(&f.run(&[&"import", &f.bundle(1, VERSIONS[0], Fixture::later())]));
    let server = Server::start_at_umask_022(&f);
    let (_, token) = f.token("p");
    let agent = support::agent::Agent::enroll(&server, &token);
    agent.checkin_online();
    let mut open = Vec::new();
    walk(&data, &mut |path| {
        // Blobs are made read-only for everyone (0444, the store keeps them immutable); the
        // 0700 folders above them keep them private.
        let blob = path.starts_with(data.join("blobs")) && path.is_file() && mode(path) == 0o444;
        if mode(path) & 0o077 != 0 && !blob {
            open.push(format!("{} {:o}", path.display(), mode(path)));
        }
    });
    assert!(open.is_empty(), "readable by others: {open:#?}");
    assert_eq!(mode(&data), 0o700);
    drop(server);
}

fn walk(dir: &Path, f: &mut impl FnMut(&Path)) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        f(&path);
        if std::fs::symlink_metadata(&path).unwrap().is_dir() {
            walk(&path, f);
        }
    }
}
