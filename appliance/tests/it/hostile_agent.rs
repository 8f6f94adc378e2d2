//! What a compromised agent sends the operator's terminal (issue 22, finding 7, and the admin
//! side of finding 3): a host name or message with escape sequences and newlines cannot forge a
//! row or command the terminal, and the agent list stays small, paged and free of the bulky
//! fields an agent fills as it likes.

use crate::support;
use crate::support::agent::{AGENT_VERSION, Agent, enroll_request, send_wire};
use crate::support::{Fixture, Server, VERSIONS, admin_raw, admin_token, assert_ok};
use serde_json::{Value, json};

/// A host name that, printed raw, turns the rest of its row red and adds a row of its own.
const FORGED_HOST: &str = "evil\x1b[31mRED\x1b[0m\nfake-agent-id  trusted-host  online  9.2.2";
/// A message that sets the terminal's title (OSC 0, 7-bit and C1 forms) and reverses text.
const TITLE: &str = "\x1b]0;owned\x07 ok\u{9d}0;owned\u{9c}\u{202e}gnp.exe\r\nfake line";

fn served(f: &Fixture) -> (Server, String) {
    assert_ok(&f.run(&[&"import", &f.bundle(1, VERSIONS[0], Fixture::later())]));
    let server = Server::start(f);
    let (_, token) = f.token("p");
    (server, token)
}

/// Whether `text` holds anything a terminal acts on: C0 (but the newlines that end lines), DEL
/// or C1 controls, line separators, bidi overrides.
fn has_controls(text: &str) -> bool {
    text.chars().any(|c| {
        (c.is_control() && c != '\n')
            || matches!(c, '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    })
}

#[test]
fn an_agents_host_name_and_messages_cannot_forge_rows_or_command_the_terminal() {
    let f = Fixture::new();
    let (server, token) = served(&f);
    let good = Agent::enroll(&server, &token);
    let reply = send_wire(&server, &enroll_request(&token, AGENT_VERSION, FORGED_HOST));
    assert_eq!(reply.status, 200, "{reply:?}");
    let evil = Agent::from_reply(&server, &reply);
    let reply = evil.checkin(json!({
        "status": "online",
        "message": TITLE,
        "components": [{"id": "x\x1b[2J", "type": "filestream", "status": "HEALTHY",
                        "message": TITLE, "units": []}],
    }));
    assert_eq!(reply.status, 200, "{reply:?}");

    let o = f.run(&[&"agents", &"list"]);
    assert_ok(&o);
    let out = support::stdout(&o);
    assert_eq!(out.lines().count(), 3, "a header and one line per agent:\n{out}");
    assert!(!has_controls(&out), "{out:?}");
    assert!(out.lines().any(|l| l.starts_with(&good.id)) && out.contains(&evil.id), "{out}");
    assert!(out.contains(r"evil\x1b[31mRED\x1b[0m\nfake-agent-id"), "{out}");

    let o = f.run(&[&"agents", &"show", &evil.id]);
    assert_ok(&o);
    let out = support::stdout(&o);
    assert!(!has_controls(&out), "{out:?}");
    assert!(
        out.contains(r"\x1b]0;owned\x07 ok\u{9d}0;owned\u{9c}\u{202e}gnp.exe\r\nfake line"),
        "{out}"
    );
    assert!(!out.lines().any(|l| l.starts_with("fake")), "{out}");

    // --json keeps the exact text, as JSON escapes it.
    let list = f.run_json(&[&"agents", &"list", &"--json"]);
    let shown = list.as_array().unwrap().iter().find(|a| a["id"] == evil.id.as_str()).unwrap();
    assert_eq!(shown["hostname"], FORGED_HOST);
    assert_eq!(shown["last_message"], TITLE);
}

/// `GET /agents` leaves out `local_metadata`, `components` and all of `upgrade_details` but the
/// download progress, and pages by `limit` and `after` in enrollment order; `agents show` keeps
/// everything, and `agents list --limit` stops early.
#[test]
fn the_agent_list_is_paged_and_leaves_out_what_agents_fill_as_they_like() {
    let f = Fixture::new();
    let (server, token) = served(&f);
    let agents: Vec<Agent<'_>> = (0..5).map(|_| Agent::enroll(&server, &token)).collect();
    let reply = agents[0].checkin(json!({
        "status": "online",
        "components": [{"id": "c", "type": "t", "status": "HEALTHY", "message": "m".repeat(50_000), "units": []}],
    }));
    assert_eq!(reply.status, 200, "{reply:?}");
    let ids: Vec<&str> = agents.iter().map(|a| a.id.as_str()).collect();

    let list = f.run_json(&[&"agents", &"list", &"--json"]);
    let listed: Vec<&str> =
        list.as_array().unwrap().iter().map(|a| a["id"].as_str().unwrap()).collect();
    let mut sorted = ids.clone();
    sorted.sort_by_key(|id| listed.iter().position(|l| l == id));
    assert_eq!(listed, sorted, "every agent once");
    for a in list.as_array().unwrap() {
        assert!(a.get("local_metadata").is_none() && a.get("components").is_none(), "{a}");
        assert!(a["upgrade_details"].is_null(), "{a}");
    }
    let shown = f.run_json(&[&"agents", &"show", &agents[0].id, &"--json"]);
    assert!(shown["local_metadata"].is_object(), "{shown}");
    assert_eq!(shown["components"][0]["message"].as_str().map(str::len), Some(50_000));

    // Pages of two, each after the last id of the one before, give the same list.
    let auth = format!("Host: localhost\r\nAuthorization: Bearer {}", admin_token(&f));
    let mut paged: Vec<String> = Vec::new();
    loop {
        let after = paged.last().map(|id| format!("&after={id}")).unwrap_or_default();
        let (status, page) =
            admin_raw(&f, &format!("GET /admin/v1/agents?limit=2{after} HTTP/1.1\r\n{auth}"));
        assert_eq!(status, 200, "{page}");
        let page: Vec<String> =
            page.as_array().unwrap().iter().map(|a| a["id"].as_str().unwrap().to_owned()).collect();
        assert!(page.len() <= 2);
        let last = page.len() < 2;
        paged.extend(page);
        if last {
            break;
        }
    }
    assert_eq!(paged, listed);
    let (status, body) =
        admin_raw(&f, &format!("GET /admin/v1/agents?after=nosuch HTTP/1.1\r\n{auth}"));
    assert_eq!((status, &body["error"]), (400, &json!("BadRequest")));
    let first: Value = f.run_json(&[&"agents", &"list", &"--limit", &"3", &"--json"]);
    let first: Vec<&str> =
        first.as_array().unwrap().iter().map(|a| a["id"].as_str().unwrap()).collect();
    assert_eq!(first, listed[..3]);
}
