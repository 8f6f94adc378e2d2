//! Elastic Agent's requests to Fleet Server, shaped byte for byte as its Go code marshals them.
//!
//! The appliance's tests and `ferry-sim` speak to the appliance only through these samples, so
//! that what they send is what a stock agent sends: Go's field order, `null` for nil slices and
//! maps (`"tags":null`), `omitempty` honoured, Go's time layouts, gzip only where the agent
//! gzips. Each sample is a file in `corpus/`: `#` comment lines naming the Go struct and the
//! elastic-agent tag it follows, then `era:` (the versions that send this shape: the first
//! version, then any further ranges `FROM..UNTIL` for a change backported to an older line,
//! such as 8.19.19's ack types), `expect:` (the status Fleet Server answers), an optional
//! `variant:` (a shape sent only in one situation, never chosen by version), the request line,
//! headers, a blank line and the body.
//!
//! Templates hold `{{name}}` placeholders: inside a JSON string the value is escaped as Go's
//! encoder does, outside one it is inserted raw (a number, an object). `{{?name}}` marks an
//! `omitempty` member: when the value is missing or empty, the whole `"key":…` member is left
//! out, as Go leaves it out.

use std::io::Write as _;
use std::sync::OnceLock;

/// What a request is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Enroll,
    Checkin,
    Ack,
    AuditUnenroll,
    UploadBegin,
    UploadFinish,
}

impl Kind {
    fn from_file_name(name: &str) -> Kind {
        [
            ("enroll-", Kind::Enroll),
            ("checkin-", Kind::Checkin),
            ("ack-", Kind::Ack),
            ("audit-unenroll-", Kind::AuditUnenroll),
            ("upload-begin-", Kind::UploadBegin),
            ("upload-finish-", Kind::UploadFinish),
        ]
        .into_iter()
        .find(|(prefix, _)| name.starts_with(prefix))
        .map(|(_, kind)| kind)
        .unwrap_or_else(|| panic!("corpus file {name}: no request kind in its name"))
    }
}

macro_rules! corpus_files {
    ($($name:literal),* $(,)?) => {
        &[$(($name, include_str!(concat!("../corpus/", $name, ".http")))),*]
    };
}

/// Every file of `corpus/`, by name. A test checks that none is missing from this list.
const FILES: &[(&str, &str)] = corpus_files![
    "enroll-8.6",
    "enroll-8.12",
    "enroll-8.14-build",
    "enroll-8.17",
    "enroll-9.0",
    "enroll-9.2-migrate",
    "enroll-9.6",
    "checkin-8.6",
    "checkin-8.12",
    "checkin-9.0",
    "checkin-9.0-degraded",
    "checkin-9.3",
    "checkin-9.3.5",
    "checkin-9.4",
    "checkin-9.4.2",
    "ack-8.6",
    "ack-8.7",
    "ack-9.5",
    "audit-unenroll-8.16",
    "audit-unenroll-9.2",
    "upload-begin-8.7",
    "upload-finish-8.7",
];

/// One request shape of one era of the agent.
#[derive(Debug)]
pub struct Sample {
    /// The file name without `.http`.
    pub name: &'static str,
    pub kind: Kind,
    /// The first agent version that sends this shape.
    pub era: semver::Version,
    /// The versions that send it: from the first on (until the next sample of the kind takes
    /// over), and ranges `[from, until)` of older lines that got the change later.
    ranges: Vec<(semver::Version, Option<semver::Version>)>,
    /// Set for shapes sent only in one situation (a migration, say).
    pub variant: Option<&'static str>,
    /// The comment naming the struct and tag the sample follows.
    pub source: String,
    /// The status Fleet Server answers.
    pub expect: u16,
    pub method: &'static str,
    pub path: &'static str,
    pub headers: Vec<(&'static str, &'static str)>,
    pub body: &'static str,
}

/// A sample made concrete: what goes on the wire.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: &'static str,
    pub path: String,
    pub headers: Vec<(&'static str, String)>,
    /// The body as sent (gzipped when a `Content-Encoding: gzip` header says so).
    pub body: Vec<u8>,
    /// The JSON before any compression.
    pub json: String,
}

impl Request {
    /// The value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// Values for a sample's placeholders.
#[derive(Debug, Clone, Default)]
pub struct Vars(Vec<(&'static str, String)>);

impl Vars {
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets `name`; an empty value leaves an `omitempty` member out.
    pub fn set(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.put(name, value);
        self
    }

    pub fn put(&mut self, name: &'static str, value: impl Into<String>) {
        let value = value.into();
        match self.0.iter_mut().find(|(k, _)| *k == name) {
            Some(slot) => slot.1 = value,
            None => self.0.push((name, value)),
        }
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| *k == name).map(|(_, v)| v.as_str())
    }
}

/// Every sample, parsed once.
pub fn corpus() -> &'static [Sample] {
    static CORPUS: OnceLock<Vec<Sample>> = OnceLock::new();
    CORPUS.get_or_init(|| FILES.iter().map(|(name, text)| parse(name, text)).collect())
}

/// The sample a stock agent of `version` sends for `kind`: of the samples whose versions
/// include it, the one whose range starts latest (build metadata and pre-release ignored),
/// variants excluded. Versions older than every sample get the oldest.
pub fn for_agent(kind: Kind, version: &str) -> &'static Sample {
    let version = core_version(version);
    let of_kind = || corpus().iter().filter(|s| s.kind == kind && s.variant.is_none());
    of_kind()
        .filter_map(|s| {
            s.ranges
                .iter()
                .filter(|(from, until)| {
                    *from <= version && until.as_ref().is_none_or(|u| version < *u)
                })
                .map(|(from, _)| (from, s))
                .max_by(|a, b| a.0.cmp(b.0))
        })
        .max_by(|a, b| a.0.cmp(b.0))
        .map(|(_, s)| s)
        .unwrap_or_else(|| {
            of_kind().min_by(|a, b| a.era.cmp(&b.era)).expect("samples of each kind")
        })
}

/// The sample of `kind` for one situation, such as `migrate`.
pub fn variant(kind: Kind, name: &str) -> &'static Sample {
    corpus()
        .iter()
        .find(|s| s.kind == kind && s.variant == Some(name))
        .unwrap_or_else(|| panic!("no {kind:?} sample for {name}"))
}

/// `X.Y.Z` of a version an agent reports, without pre-release or build metadata.
fn core_version(version: &str) -> semver::Version {
    let v = semver::Version::parse(version.trim_start_matches('v'))
        .unwrap_or_else(|e| panic!("agent version {version:?}: {e}"));
    semver::Version::new(v.major, v.minor, v.patch)
}

fn parse(name: &'static str, text: &'static str) -> Sample {
    let bad = |what: &str| -> ! { panic!("corpus file {name}.http: {what}") };
    let (head, body) = text.split_once("\n\n").unwrap_or_else(|| bad("no blank line"));
    let mut source = Vec::new();
    let (mut era, mut expect, mut variant) = (None, None, None);
    let mut lines = head.lines();
    let request_line = loop {
        let line = lines.next().unwrap_or_else(|| bad("no request line"));
        let Some(comment) = line.strip_prefix('#') else { break line };
        let comment = comment.trim();
        if let Some(v) = comment.strip_prefix("era:") {
            let version =
                |v: &str| semver::Version::parse(v.trim()).unwrap_or_else(|_| bad("bad era"));
            let ranges: Vec<_> = v
                .split(',')
                .map(|r| match r.split_once("..") {
                    Some((from, until)) => (version(from), Some(version(until))),
                    None => (version(r), None),
                })
                .collect();
            era = Some(ranges);
        } else if let Some(v) = comment.strip_prefix("expect:") {
            expect = Some(v.trim().parse().unwrap_or_else(|_| bad("bad expect")));
        } else if let Some(v) = comment.strip_prefix("variant:") {
            variant = Some(v.trim());
        } else {
            source.push(comment);
        }
    };
    let (method, path) = request_line.split_once(' ').unwrap_or_else(|| bad("bad request line"));
    let headers = lines
        .map(|l| {
            let (k, v) = l.split_once(": ").unwrap_or_else(|| bad("bad header line"));
            (k, v)
        })
        .collect();
    Sample {
        name,
        kind: Kind::from_file_name(name),
        era: era.as_ref().and_then(|r| r.first()).unwrap_or_else(|| bad("no era")).0.clone(),
        ranges: era.unwrap_or_default(),
        variant,
        source: source.join(" "),
        expect: expect.unwrap_or_else(|| bad("no expect")),
        method,
        path,
        headers,
        body: body.trim_end_matches('\n'),
    }
}

impl Sample {
    /// The first version of each range of versions that send this shape.
    pub fn first_versions(&self) -> impl Iterator<Item = &semver::Version> {
        self.ranges.iter().map(|(from, _)| from)
    }

    /// The request with `vars` filled in. Panics on a placeholder without a value (outside an
    /// `omitempty` member): a caller's mistake, not the server's.
    pub fn render(&self, vars: &Vars) -> Request {
        let vars = &derived(vars);
        let json = fill(self.body, vars, self.name);
        // A header whose optional value is absent is not sent at all.
        let headers: Vec<(&'static str, String)> = self
            .headers
            .iter()
            .map(|(k, v)| (*k, v, fill(v, vars, self.name)))
            .filter(|(_, template, value)| !(value.is_empty() && template.contains("{{?")))
            .map(|(k, _, value)| (k, value))
            .collect();
        let gzip =
            headers.iter().any(|(k, v)| k.eq_ignore_ascii_case("content-encoding") && v == "gzip");
        let body = if gzip { gzip_bytes(json.as_bytes()) } else { json.clone().into_bytes() };
        Request { method: self.method, path: fill(self.path, vars, self.name), headers, body, json }
    }
}

/// `vars` with what follows from the agent's `version` added, unless the caller set it:
/// - `api_version`, the `Elastic-Api-Version` header, sent from 8.10.3
///   (internal/pkg/fleetapi/client/client.go);
/// - `agent_meta_tail`, the members `elastic.agent` of the local metadata gained after
///   `log_level` (info/agent_metadata.go): `complete` (8.10), `unprivileged` (8.14; the
///   `unprivileged` value, false by default), `fips` (8.19.0 and 9.0);
/// - `host_name`, `host.name`: `hostname`, lower-cased from 8.16;
/// - `host_memory`, `host.memory` in bytes, sent from 9.6 (pkg/ecsmeta/ecsmeta.go).
fn derived(vars: &Vars) -> Vars {
    let mut all = vars.clone();
    let Some(version) = vars.get("version") else { return all };
    let v = core_version(version);
    let since = |major, minor, patch| v >= semver::Version::new(major, minor, patch);
    let mut put = |name: &'static str, value: String| {
        if vars.get(name).is_none() {
            all.put(name, value);
        }
    };
    put("api_version", if since(8, 10, 3) { "2023-06-01".into() } else { String::new() });
    let mut tail = String::new();
    if since(8, 10, 0) {
        tail.push_str(r#","complete":false"#);
    }
    if since(8, 14, 0) {
        let unprivileged = vars.get("unprivileged").unwrap_or("false");
        tail.push_str(&format!(r#","unprivileged":{unprivileged}"#));
    }
    if since(8, 19, 0) {
        tail.push_str(r#","fips":false"#);
    }
    put("agent_meta_tail", tail);
    if let Some(hostname) = vars.get("hostname") {
        let name = if since(8, 16, 0) { hostname.to_lowercase() } else { hostname.to_owned() };
        put("host_name", name);
    }
    put("host_memory", if since(9, 6, 0) { "16505856000".into() } else { String::new() });
    all
}

/// Several events of an acks sample in one request, as the agent batches the acks of one
/// check-in's actions: each `vars` renders one event.
pub fn ack_batch(sample: &Sample, vars: &[Vars]) -> Request {
    assert_eq!(sample.kind, Kind::Ack, "{} is not an acks sample", sample.name);
    let rendered: Vec<Request> = vars.iter().map(|v| sample.render(v)).collect();
    let events: Vec<&str> = rendered
        .iter()
        .map(|r| {
            r.json
                .strip_prefix(r#"{"events":["#)
                .and_then(|e| e.strip_suffix("]}"))
                .expect("an acks sample is one events array")
        })
        .collect();
    let json = format!(r#"{{"events":[{}]}}"#, events.join(","));
    let mut request = rendered.into_iter().next().expect("at least one event");
    request.json = json;
    request.body = request.json.clone().into_bytes();
    request
}

/// Go's `compress/gzip` at its default level, as the agent compresses check-ins.
fn gzip_bytes(bytes: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(bytes).expect("in memory");
    gz.finish().expect("in memory")
}

/// A string as Go's `encoding/json` writes it, without the quotes: serde's escapes plus
/// `<`, `>` and `&` as `\u003c`, `\u003e`, `\u0026` (Go escapes them for HTML safety).
pub fn go_escape(s: &str) -> String {
    let quoted = serde_json::to_string(s).expect("a string serialises");
    quoted[1..quoted.len() - 1]
        .replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026")
}

fn fill(template: &str, vars: &Vars, file: &str) -> String {
    let mut out = String::with_capacity(template.len() + 256);
    let mut rest = template;
    while let Some(open) = rest.find("{{") {
        let close = open + rest[open..].find("}}").unwrap_or_else(|| panic!("{file}: open {{{{"));
        let (optional, name) = match &rest[open + 2..close] {
            n if n.starts_with('?') => (true, &n[1..]),
            n => (false, n),
        };
        out.push_str(&rest[..open]);
        let quoted = out.ends_with('"') && rest[close + 2..].starts_with('"');
        // Empty is absent only for an `omitempty` member, as Go drops only those.
        let value = vars.get(name).filter(|v| !(optional && v.is_empty()));
        let mut after = close + 2;
        match value {
            Some(v) if quoted => out.push_str(&go_escape(v)),
            Some(v) => out.push_str(v),
            // Outside a JSON member (a header's value), an absent value is just nothing.
            None if optional && !out.trim_end_matches('"').ends_with("\":") => {}
            None if optional => {
                // Take the member `"key":` back out, and one comma with it.
                let value_start = if quoted { out.len() - 1 } else { out.len() };
                let key_colon = &out[..value_start - 2];
                let key_start = key_colon.rfind('"').expect("a key starts with a quote");
                out.truncate(key_start);
                if quoted {
                    after += 1;
                }
                if rest[after..].starts_with(',') {
                    after += 1;
                } else if out.ends_with(',') {
                    out.pop();
                }
            }
            None => panic!("{file}: no value for {{{{{name}}}}}"),
        }
        rest = &rest[after..];
    }
    out.push_str(rest);
    out
}

/// `upgrade_details` as `details.Details` marshals it (elastic-agent
/// internal/pkg/agent/application/upgrade/details/details.go): target_version, state,
/// action_id (omitempty), then metadata, a struct Go always writes (`{}` when empty), whose
/// members are all omitempty. `metadata` is the members' text, already in Go's order.
pub fn upgrade_details(target: &str, state: &str, action_id: &str, metadata: &str) -> String {
    let action = if action_id.is_empty() {
        String::new()
    } else {
        format!(r#","action_id":"{}""#, go_escape(action_id))
    };
    format!(
        r#"{{"target_version":"{}","state":"{}"{action},"metadata":{{{metadata}}}}}"#,
        go_escape(target),
        go_escape(state)
    )
}

/// The `download_percent` and `download_rate` members of upgrade metadata as an agent of
/// `version` writes them, each left out when 0 (`omitempty` on a float). 8.12 to 8.14 marshal
/// the rate as a string, go-units' `HumanSizeWithPrecision(rate, 10)` plus "ps"
/// (elastic-agent-libs v0.7.3 to v0.9.11, upgrade/details/details.go), such as "123.456kBps",
/// or "+Inf bps"; from 8.15 (libs v0.9.15) it is a number of bytes per second.
pub fn download_progress(version: &str, percent: f64, bytes_per_second: f64) -> String {
    let v = core_version(version);
    let string_rate = (v.major, v.minor) >= (8, 12) && (v.major, v.minor) < (8, 15);
    let rate = match bytes_per_second {
        0.0 => None,
        r if string_rate && r == f64::INFINITY => Some("\"+Inf bps\"".to_owned()),
        r if string_rate => Some(format!("\"{}ps\"", human_size(r))),
        r => Some(go_float(r)),
    };
    let members = [
        (percent != 0.0).then(|| format!(r#""download_percent":{}"#, go_float(percent))),
        rate.map(|r| format!(r#""download_rate":{r}"#)),
    ];
    members.into_iter().flatten().collect::<Vec<_>>().join(",")
}

/// go-units' `HumanSizeWithPrecision(size, 10)`: decimal units and Go's `%.10g`.
fn human_size(mut size: f64) -> String {
    const UNITS: [&str; 9] = ["B", "kB", "MB", "GB", "TB", "PB", "EB", "ZB", "YB"];
    let mut unit = 0;
    while size >= 1000.0 && unit < UNITS.len() - 1 {
        size /= 1000.0;
        unit += 1;
    }
    format!("{}{}", go_g(size, 10), UNITS[unit])
}

/// Go's `%.{precision}g` for a finite number: that many significant digits, exponent form when
/// the exponent is below -4 or at least the precision, trailing zeros dropped.
fn go_g(x: f64, precision: usize) -> String {
    if x == 0.0 {
        return "0".into();
    }
    if !x.is_finite() {
        return if x.is_nan() {
            "NaN"
        } else if x > 0.0 {
            "+Inf"
        } else {
            "-Inf"
        }
        .into();
    }
    let sci = format!("{x:.*e}", precision - 1); // rounded to `precision` significant digits
    let (mantissa, exp) = sci.split_once('e').expect("exponent form");
    let exp: i32 = exp.parse().expect("an exponent");
    let trim = |s: &str| {
        if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_owned()
        } else {
            s.to_owned()
        }
    };
    if exp < -4 || exp >= precision as i32 {
        let sign = if exp < 0 { '-' } else { '+' };
        return format!("{}e{sign}{:02}", trim(mantissa), exp.abs());
    }
    let decimals = (precision as i32 - 1 - exp).max(0) as usize;
    trim(&format!("{x:.decimals$}"))
}

/// A float64 as Go's `encoding/json` writes it: the shortest form, with an exponent (`1e-07`)
/// below 1e-6 and from 1e21.
fn go_float(x: f64) -> String {
    let a = x.abs();
    if a != 0.0 && !(1e-6..1e21).contains(&a) {
        let sci = format!("{x:e}");
        let (mantissa, exp) = sci.split_once('e').expect("exponent form");
        let exp: i32 = exp.parse().expect("an exponent");
        let sign = if exp < 0 { '-' } else { '+' };
        return format!("{mantissa}e{sign}{:02}", exp.abs());
    }
    format!("{x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent_vars() -> Vars {
        Vars::new()
            .set("version", "9.2.0")
            .set("hostname", "Web-01")
            .set("enrollment_token", "dG9rZW46c2VjcmV0")
            .set("access_key", "a2V5OnNlY3JldA==")
            .set("agent_id", "0b7a4e0c-1f5d-4c3b-9e0a-2b1f0c9d8e7f")
            .set("replace_token", "r")
            .set("action_id", "policy:p:1")
            .set("action_type", "POLICY_CHANGE")
            .set("upload_id", "u")
            .set("size", "10")
            .set("transit_sha256", "00")
    }

    #[test]
    fn every_corpus_file_is_listed_and_parses() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
        let mut on_disk: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().trim_end_matches(".http").to_owned())
            .collect();
        on_disk.sort();
        let mut listed: Vec<&str> = FILES.iter().map(|(n, _)| *n).collect();
        listed.sort_unstable();
        assert_eq!(on_disk, listed);
        for sample in corpus() {
            assert!(!sample.source.is_empty(), "{} names no source", sample.name);
            let request = sample.render(&agent_vars());
            let _: serde_json::Value = serde_json::from_str(&request.json)
                .unwrap_or_else(|e| panic!("{}: {e}\n{}", sample.name, request.json));
        }
    }

    #[test]
    fn eras_follow_the_version() {
        assert_eq!(for_agent(Kind::Enroll, "8.6.2").name, "enroll-8.6");
        assert_eq!(for_agent(Kind::Enroll, "7.17.0").name, "enroll-8.6");
        assert_eq!(for_agent(Kind::Enroll, "8.14.1+build202406201002").name, "enroll-8.14-build");
        assert_eq!(for_agent(Kind::Enroll, "9.2.1").name, "enroll-9.0");
        assert_eq!(for_agent(Kind::Enroll, "8.19.3").name, "enroll-9.0");
        assert_eq!(for_agent(Kind::Enroll, "8.18.9").name, "enroll-8.17");
        assert_eq!(for_agent(Kind::Checkin, "9.2.4").name, "checkin-9.0");
        assert_eq!(for_agent(Kind::Checkin, "9.3.4").name, "checkin-9.3");
        assert_eq!(for_agent(Kind::Checkin, "9.3.9").name, "checkin-9.3.5");
        assert_eq!(for_agent(Kind::Checkin, "9.4.1").name, "checkin-9.4");
        assert_eq!(for_agent(Kind::Checkin, "9.4.2").name, "checkin-9.4.2");
        assert_eq!(for_agent(Kind::Checkin, "8.19.17").name, "checkin-9.3");
        assert_eq!(for_agent(Kind::Checkin, "8.19.16").name, "checkin-8.12");
        // Generated ack types, backported: 8.19.19, 9.3.8 and 9.4.4 have them, 9.0 to 9.3.7 not.
        assert_eq!(for_agent(Kind::Ack, "9.6.0-SNAPSHOT").name, "ack-9.5");
        for (version, sample) in [
            ("8.19.19", "ack-9.5"),
            ("8.19.18", "ack-8.7"),
            ("9.0.0", "ack-8.7"),
            ("9.3.7", "ack-8.7"),
            ("9.3.8", "ack-9.5"),
            ("9.4.3", "ack-8.7"),
            ("9.4.4", "ack-9.5"),
        ] {
            assert_eq!(for_agent(Kind::Ack, version).name, sample, "{version}");
        }
        assert_eq!(variant(Kind::Enroll, "migrate").name, "enroll-9.2-migrate");
    }

    #[test]
    fn nil_and_omitempty_as_go_writes_them() {
        let enroll = for_agent(Kind::Enroll, "9.2.0").render(&agent_vars());
        assert!(enroll.json.ends_with(r#""user_provided":{},"tags":null}}"#), "{}", enroll.json);
        assert!(enroll.json.starts_with(r#"{"type":"PERMANENT","id":"","replace_token":"","#));
        let migrate = variant(Kind::Enroll, "migrate").render(&agent_vars());
        assert!(migrate.json.ends_with(r#""user_provided":null,"tags":null}}"#));

        // No ack token, no details: both members are left out, commas and all.
        let checkin = for_agent(Kind::Checkin, "9.6.0").render(&agent_vars());
        assert_eq!(
            for_agent(Kind::Checkin, "9.3.0").render(&agent_vars()).header("content-encoding"),
            None
        );
        assert!(checkin.json.starts_with(r#"{"status":"online","local_metadata":"#));
        assert!(checkin.json.ends_with(r#"}]}],"upgrade":{}}"#), "{}", checkin.json);
        assert_eq!(checkin.header("content-encoding"), Some("gzip"));
        let mut inflated = String::new();
        std::io::Read::read_to_string(
            &mut flate2::read::GzDecoder::new(&checkin.body[..]),
            &mut inflated,
        )
        .unwrap();
        assert_eq!(inflated, checkin.json);

        let vars = agent_vars()
            .set("ack_token", "a<b")
            .set("policy_id", "p")
            .set("policy_revision", "7")
            .set("upgrade_details", upgrade_details("9.6.1", "UPG_WATCHING", "", ""));
        let checkin = for_agent(Kind::Checkin, "9.6.0").render(&vars);
        assert!(checkin.json.starts_with(r#"{"status":"online","ack_token":"a\u003cb","#));
        assert!(checkin.json.ends_with(
            r#""upgrade_details":{"target_version":"9.6.1","state":"UPG_WATCHING","metadata":{}},"agent_policy_id":"p","policy_revision_idx":7,"upgrade":{}}"#
        ));
        let ack = for_agent(Kind::Ack, "8.6.0").render(&agent_vars());
        assert!(ack.json.ends_with(r#"of type 'POLICY_CHANGE' acknowledged."}]}"#), "{}", ack.json);
        let ack = for_agent(Kind::Ack, "9.5.0").render(&agent_vars().set("error", "boom"));
        assert!(ack.json.contains(
            r#""agent_id":"0b7a4e0c-1f5d-4c3b-9e0a-2b1f0c9d8e7f","error":"boom","message""#
        ));
    }

    #[test]
    fn what_follows_from_the_version() {
        let enroll = |version: &str| {
            for_agent(Kind::Enroll, version).render(&agent_vars().set("version", version))
        };
        let old = enroll("8.10.2");
        assert_eq!(old.header("elastic-api-version"), None, "sent from 8.10.3");
        assert!(old.json.contains(r#""log_level":"info","complete":false}"#), "{}", old.json);
        assert!(old.json.contains(r#""hostname":"Web-01","name":"Web-01""#));
        assert_eq!(enroll("8.10.3").header("elastic-api-version"), Some("2023-06-01"));
        let v816 = enroll("8.16.0").json;
        assert!(v816.contains(r#""complete":false,"unprivileged":false}"#), "{v816}");
        assert!(v816.contains(r#""hostname":"Web-01","name":"web-01""#), "{v816}");
        let v95 = enroll("9.5.2").json;
        assert!(v95.contains(r#""unprivileged":false,"fips":false}"#), "{v95}");
        assert!(!v95.contains("memory"), "{v95}");
        assert!(enroll("9.6.0").json.contains(r#","memory":16505856000},"os""#));
        let checkin =
            for_agent(Kind::Checkin, "9.6.0").render(&agent_vars().set("version", "9.6.0"));
        assert!(checkin.json.contains(r#","memory":16505856000},"os""#));
    }

    #[test]
    #[should_panic(expected = "no value for {{agent_id}}")]
    fn a_missing_value_is_the_caller_s_mistake() {
        for_agent(Kind::Checkin, "9.0.0").render(&Vars::new().set("version", "9.0.0"));
    }

    #[test]
    fn download_rates_as_each_era_writes_them() {
        // go-units HumanSizeWithPrecision(x, 10) + "ps".
        for (rate, text) in [
            (1_500_000.0, "1.5MBps"),
            (12_000.0, "12kBps"),
            (999.0, "999Bps"),
            (123_456.0, "123.456kBps"),
            (0.5, "0.5Bps"),
            (1_234_567_890_123.0, "1.23456789TBps"), // ten significant digits
            (1.0 / 3.0, "0.3333333333Bps"),
        ] {
            assert_eq!(human_size(rate) + "ps", text, "{rate}");
        }
        assert_eq!(go_g(12_345_678_901.0, 10), "1.23456789e+10");
        assert_eq!(go_g(0.000_012_3, 2), "1.2e-05");
        assert_eq!(
            download_progress("8.14.3", 0.42, 123_456.0),
            r#""download_percent":0.42,"download_rate":"123.456kBps""#
        );
        assert!(download_progress("8.13.0", 0.1, f64::INFINITY).ends_with(r#""+Inf bps""#));
        assert_eq!(
            download_progress("8.15.0", 0.42, 123_456.0),
            r#""download_percent":0.42,"download_rate":123456"#
        );
        // omitempty: a 0 is left out; Go's float forms.
        assert_eq!(download_progress("9.4.3", 0.0, 1.5e6), r#""download_rate":1500000"#);
        assert_eq!(download_progress("9.4.3", 2e-9, 0.0), r#""download_percent":2e-09"#);
        assert_eq!(go_float(1e21), "1e+21");
        assert_eq!(download_progress("8.12.0", 0.0, 0.0), "");
    }
}
