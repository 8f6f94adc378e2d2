//! The audit log: what was done to this appliance, by whom, when and how it ended, as
//! append-only JSON lines in `data_dir/audit.log`, each line holding the SHA-256 of the line
//! before it, so that a line removed, edited or moved breaks the chain where it happened.
//!
//! ```text
//! DATA/audit.log        the current file, one record per line, mode 0600
//! DATA/audit.log.1 … 8  older files, rotated at 64 MiB; the chain runs on across them
//! DATA/audit.head       the last record's sequence number and hash (a truncated tail shows)
//! DATA/audit.lock       held while a record is appended (the server and commands both write)
//! ```
//!
//! A chain shows edits by someone who does not rewrite every later line and the head; anyone
//! who can write the data directory can do that too. What makes it evidence is a copy elsewhere:
//! ship the lines to the site's SIEM as they are written (they are plain JSON lines).
//!
//! Never secrets and never key material: records carry ids, names, counts, checks and outcomes;
//! the admin token appears only as the first 16 hex digits of its SHA-256.

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead as _, Read as _, Seek as _, SeekFrom, Write as _};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use ferry_manifests::Sha256Digest;
use serde::{Deserialize, Serialize};
use serde_json::Value;

const LOG: &str = "audit.log";
const HEAD: &str = "audit.head";
const LOCK: &str = "audit.lock";
/// A file is rotated once it reaches this size: about 200 000 records.
const ROTATE_AT: u64 = 64 << 20;
/// Rotated files kept (`audit.log.1` newest … `audit.log.8` oldest): half a gigabyte in all.
const KEEP: usize = 8;
/// The longest line written; `details` larger than this are replaced by a note saying so.
const MAX_LINE: usize = 16 << 10;
/// What the first record's `prev` holds.
const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Who did it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub(crate) enum Actor {
    /// A command run on the appliance's host (`import`, `rollback`, `gc` …) by this OS user.
    Local { uid: u32, user: Option<String> },
    /// A call of the admin API (the CLI's `tokens`, `upgrade`, `secrets` …): the OS user on the
    /// other end of the socket and which admin token it presented (SHA-256, first 16 digits).
    Admin { uid: u32, user: Option<String>, token: String },
    /// The server itself (it starts, stops, catches up with its cluster).
    Server,
}

impl Actor {
    /// The user running this process.
    pub(crate) fn local() -> Self {
        let uid = rustix::process::geteuid().as_raw();
        Actor::Local { uid, user: user_name(uid) }
    }

    /// An admin API caller.
    pub(crate) fn admin(uid: u32, admin_token: &str) -> Self {
        let token = Sha256Digest::of(admin_token.as_bytes()).to_hex()[..16].to_owned();
        Actor::Admin { uid, user: user_name(uid), token }
    }

    /// Who, in words: `ferry (1000)`, `ferry (1000) via admin 3f2a…`, `server`.
    pub(crate) fn describe(&self) -> String {
        let who = |uid: &u32, user: &Option<String>| match user {
            Some(name) => format!("{name} ({uid})"),
            None => format!("uid {uid}"),
        };
        match self {
            Actor::Local { uid, user } => who(uid, user),
            Actor::Admin { uid, user, token } => format!("{} via admin {token}", who(uid, user)),
            Actor::Server => "server".into(),
        }
    }
}

/// How it ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Outcome {
    Ok,
    /// A verifier or a rule said no (a bundle, a rollback, a request).
    Refused,
    /// It could not be done (an I/O error, a database down).
    Failed,
}

/// One line of the log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Record {
    pub seq: u64,
    /// RFC 3339, UTC.
    pub time: String,
    pub actor: Actor,
    /// What was done: `import`, `rollback`, `gc`, `tokens.create`, `secrets.set` …
    pub event: String,
    pub outcome: Outcome,
    /// What it was done to and with (names, sequences, ids, overrides, the refusing check).
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub details: Value,
    /// SHA-256 of the previous line's bytes (without its newline); zeros for the first.
    pub prev: String,
}

/// The last record written, as `audit.head` keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Head {
    seq: u64,
    sha256: String,
}

/// The audit log of one data directory.
#[derive(Debug, Clone)]
pub(crate) struct AuditLog {
    dir: PathBuf,
}

impl AuditLog {
    pub(crate) fn new(data_dir: &Path) -> Self {
        Self { dir: data_dir.to_owned() }
    }

    /// The data directory it is kept in.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn rotated(&self, n: usize) -> PathBuf {
        self.dir.join(format!("{LOG}.{n}"))
    }

    /// Appends one record. Concurrent writers (the server, commands) take turns on
    /// `audit.lock`; the line is synced before the head moves.
    pub(crate) fn append(
        &self,
        actor: Actor,
        event: &str,
        outcome: Outcome,
        details: Value,
    ) -> anyhow::Result<Record> {
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(self.path(LOCK))
            .with_context(|| format!("cannot open {}", self.path(LOCK).display()))?;
        lock.lock()?;
        let (seq, prev) =
            self.last()?.map_or((1, GENESIS.to_owned()), |(seq, hash)| (seq + 1, hash));
        let log = self.path(LOG);
        if fs::metadata(&log).is_ok_and(|m| m.len() >= ROTATE_AT) {
            self.rotate()?;
        }
        let mut record = Record {
            seq,
            time: crate::clock::now_rfc3339(),
            actor,
            event: event.to_owned(),
            outcome,
            details,
            prev,
        };
        let mut line = serde_json::to_vec(&record)?;
        if line.len() > MAX_LINE {
            record.details =
                serde_json::json!({ "omitted": format!("{} bytes of details", line.len()) });
            line = serde_json::to_vec(&record)?;
        }
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&log)
            .with_context(|| format!("cannot open {}", log.display()))?;
        let mut with_newline = line.clone();
        with_newline.push(b'\n');
        file.write_all(&with_newline)?;
        file.sync_data()?;
        let head = Head { seq, sha256: Sha256Digest::of(&line).to_hex() };
        let tmp = self.path(&format!("{HEAD}.tmp"));
        fs::write(&tmp, serde_json::to_vec(&head)?)?;
        fs::rename(&tmp, self.path(HEAD))?;
        Ok(record)
    }

    /// Records an event, logging instead of failing when the log cannot be written: what was
    /// done is done, and the server must not stop answering for it. The warning names it.
    pub(crate) fn record(&self, actor: Actor, event: &str, outcome: Outcome, details: Value) {
        if let Err(e) = self.append(actor, event, outcome, details) {
            tracing::warn!(error = %format!("{e:#}"), event, "cannot write the audit log");
        }
    }

    /// The last record's sequence number and the hash of its line, from the newest file that
    /// has one.
    fn last(&self) -> anyhow::Result<Option<(u64, String)>> {
        for path in std::iter::once(self.path(LOG)).chain((1..=KEEP).map(|n| self.rotated(n))) {
            if let Some(line) = last_line(&path)? {
                let record: Record = serde_json::from_slice(&line).with_context(|| {
                    format!("the last line of {} is not an audit record", path.display())
                })?;
                return Ok(Some((record.seq, Sha256Digest::of(&line).to_hex())));
            }
        }
        Ok(None)
    }

    /// `audit.log` → `audit.log.1` → … → `audit.log.KEEP`, the oldest dropped.
    fn rotate(&self) -> anyhow::Result<()> {
        let _ = fs::remove_file(self.rotated(KEEP));
        for n in (1..KEEP).rev() {
            if self.rotated(n).exists() {
                fs::rename(self.rotated(n), self.rotated(n + 1))?;
            }
        }
        fs::rename(self.path(LOG), self.rotated(1))?;
        Ok(())
    }

    /// The files of the log, oldest first.
    fn files(&self) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> =
            (1..=KEEP).rev().map(|n| self.rotated(n)).filter(|p| p.exists()).collect();
        if self.path(LOG).exists() {
            files.push(self.path(LOG));
        }
        files
    }

    /// Every record, oldest first, with where it was read.
    pub(crate) fn read(&self) -> anyhow::Result<Vec<Record>> {
        let mut records = Vec::new();
        for path in self.files() {
            let file = File::open(&path)?;
            for (n, line) in std::io::BufReader::new(file).split(b'\n').enumerate() {
                let line = line?;
                let record = serde_json::from_slice(&line).with_context(|| {
                    format!("{} line {}: not an audit record", path.display(), n + 1)
                })?;
                records.push(record);
            }
        }
        Ok(records)
    }

    /// The last `n` records, newest first, read from the ends of the newest files: what the
    /// dashboard shows, without parsing up to half a gigabyte of older lines at each page.
    /// Lines that are not records are skipped, as [`AuditLog::read_new`] skips them.
    pub(crate) fn recent(&self, n: usize) -> anyhow::Result<Vec<Record>> {
        let mut records = Vec::with_capacity(n);
        for path in self.files().into_iter().rev() {
            let mut file =
                File::open(&path).with_context(|| format!("cannot open {}", path.display()))?;
            let mut end = file.metadata()?.len();
            // What precedes the first newline of the block read last: part of a line that
            // starts in the block before it.
            let mut carry: Vec<u8> = Vec::new();
            while end > 0 && records.len() < n {
                let start = end.saturating_sub(64 << 10);
                let mut block = vec![0u8; (end - start) as usize];
                file.seek(SeekFrom::Start(start))?;
                file.read_exact(&mut block)?;
                block.extend_from_slice(&carry);
                let mut lines: Vec<&[u8]> = block.split(|b| *b == b'\n').collect();
                // The first piece may be cut (unless the file starts here): kept for the next block.
                carry = if start > 0 { lines.remove(0).to_vec() } else { Vec::new() };
                for line in lines.iter().rev().filter(|l| !l.is_empty()) {
                    if let Ok(record) = serde_json::from_slice(line) {
                        records.push(record);
                        if records.len() == n {
                            break;
                        }
                    }
                }
                end = start;
            }
            if records.len() == n {
                break;
            }
        }
        Ok(records)
    }

    /// Hands `each` the records appended since `tail` last read, and moves `tail` past them:
    /// what `/metrics` counts, without reading the whole log at every scrape. A rotation in
    /// between is followed (the file read before is `audit.log.1` now, same inode), so no
    /// record is missed or counted twice; lines that are not records are skipped (telling
    /// them is `audit verify`'s work), and a last line still being written waits for the next
    /// call.
    pub(crate) fn read_new(
        &self,
        tail: &mut Tail,
        mut each: impl FnMut(Record),
    ) -> anyhow::Result<()> {
        use std::os::unix::fs::MetadataExt as _;
        let id = |path: &Path| fs::metadata(path).ok().map(|m| (m.dev(), m.ino()));
        let Some(current) = id(&self.path(LOG)) else { return Ok(()) };
        if tail.file != Some(current) {
            if tail.file.is_some() && id(&self.rotated(1)) == tail.file {
                read_lines_from(&self.rotated(1), &mut tail.offset, &mut each)?;
            }
            *tail = Tail { file: Some(current), offset: 0 };
        }
        read_lines_from(&self.path(LOG), &mut tail.offset, &mut each)
    }

    /// Walks the chain: every line an audit record, sequence numbers one after another, each
    /// `prev` the hash of the line before, the last one the head. Returns how many records
    /// verified, and the first break when there is one.
    pub(crate) fn verify(&self) -> anyhow::Result<Verdict> {
        let mut verdict = Verdict { records: 0, first_seq: None, last_seq: None, problem: None };
        let mut expected: Option<(u64, String)> = None;
        for path in self.files() {
            let file = File::open(&path)?;
            for (n, line) in std::io::BufReader::new(file).split(b'\n').enumerate() {
                let line = line?;
                let at = format!("{} line {}", path.display(), n + 1);
                let broken = |reason: String| Some(Break { at: at.clone(), reason });
                let record: Record = match serde_json::from_slice(&line) {
                    Ok(record) => record,
                    Err(e) => {
                        verdict.problem = broken(format!("not an audit record: {e}"));
                        return Ok(verdict);
                    }
                };
                let problem = match &expected {
                    None if record.seq == 1 && record.prev != GENESIS => {
                        Some("the first record's prev is not zeros".to_owned())
                    }
                    None => None,
                    Some((seq, _)) if record.seq != seq + 1 => Some(format!(
                        "sequence {} follows {seq}: {}",
                        record.seq,
                        if record.seq > seq + 1 { "records are missing" } else { "out of order" }
                    )),
                    Some((_, hash)) if &record.prev != hash => Some(format!(
                        "seq {}: prev does not match the line before (that line was edited, or \
                         this one moved)",
                        record.seq
                    )),
                    Some(_) => None,
                };
                if let Some(reason) = problem {
                    verdict.problem = broken(reason);
                    return Ok(verdict);
                }
                verdict.first_seq.get_or_insert(record.seq);
                verdict.last_seq = Some(record.seq);
                verdict.records += 1;
                expected = Some((record.seq, Sha256Digest::of(&line).to_hex()));
            }
        }
        let head = match fs::read(self.path(HEAD)) {
            Ok(bytes) => {
                Some(serde_json::from_slice::<Head>(&bytes).context("audit.head is damaged")?)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(e.into()),
        };
        let at = || self.path(LOG).display().to_string();
        verdict.problem = match (head, expected) {
            (None, None) => None,
            (None, Some(_)) => Some(Break { at: at(), reason: "audit.head is missing".into() }),
            (Some(head), None) => Some(Break {
                at: at(),
                reason: format!("the log is empty but its head says seq {}", head.seq),
            }),
            (Some(head), Some((seq, _))) if head.seq != seq => Some(Break {
                at: at(),
                reason: format!(
                    "the log ends at seq {seq} but its head says {}: truncated",
                    head.seq
                ),
            }),
            (Some(head), Some((seq, hash))) if head.sha256 != hash => Some(Break {
                at: at(),
                reason: format!(
                    "seq {seq}, the last line, differs from what its head recorded: edited"
                ),
            }),
            (Some(_), Some(_)) => None,
        };
        Ok(verdict)
    }
}

/// What `audit verify` found.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Verdict {
    pub records: u64,
    /// The oldest kept record (older files may have been rotated away).
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    pub problem: Option<Break>,
}

/// The first place the chain breaks.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Break {
    /// File and line number.
    pub at: String,
    pub reason: String,
}

/// The last complete line of `path`, without its newline; `None` for an empty or missing file.
/// Where [`AuditLog::read_new`] stopped: the file (device and inode) and the offset past the
/// last whole line read from it.
#[derive(Debug, Default)]
pub(crate) struct Tail {
    file: Option<(u64, u64)>,
    offset: u64,
}

/// The whole lines of `path` from `offset` on, each parsed into a record; `offset` ends past the
/// last newline read.
fn read_lines_from(
    path: &Path,
    offset: &mut u64,
    each: &mut impl FnMut(Record),
) -> anyhow::Result<()> {
    let mut file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    file.seek(SeekFrom::Start(*offset))?;
    let mut reader = std::io::BufReader::new(file);
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = reader.read_until(b'\n', &mut line)?;
        if n == 0 || line.last() != Some(&b'\n') {
            return Ok(());
        }
        *offset += n as u64;
        if let Ok(record) = serde_json::from_slice(&line[..n - 1]) {
            each(record);
        }
    }
}

fn last_line(path: &Path) -> anyhow::Result<Option<Vec<u8>>> {
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let len = file.metadata()?.len();
    // A line is at most MAX_LINE bytes, so the last one lies within the last MAX_LINE + 1.
    let from = len.saturating_sub(MAX_LINE as u64 + 1);
    file.seek(SeekFrom::Start(from))?;
    let mut tail = Vec::new();
    file.read_to_end(&mut tail)?;
    if tail.last() == Some(&b'\n') {
        tail.pop();
    }
    if tail.is_empty() {
        return Ok(None);
    }
    let start = tail.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    Ok(Some(tail[start..].to_vec()))
}

/// The name `/etc/passwd` gives `uid`, if any (no NSS: the appliance needs no libc lookups).
fn user_name(uid: u32) -> Option<String> {
    let passwd = fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        let name = fields.next()?;
        (fields.nth(1)?.parse::<u32>().ok()? == uid).then(|| name.to_owned())
    })
}

/// Records a command run on this host, with its outcome from `result`: a refusal (a verifier's or
/// rule's named check, added to the details with the error) or a failure.
pub(crate) fn local<T>(data_dir: &Path, event: &str, details: Value, result: &anyhow::Result<T>) {
    match result {
        Ok(_) => AuditLog::new(data_dir).record(Actor::local(), event, Outcome::Ok, details),
        Err(error) => local_error(data_dir, event, details, error),
    }
}

/// Records a command run on this host that ended in `error`: refused when a verifier or rule
/// named its check, failed otherwise.
pub(crate) fn local_error(data_dir: &Path, event: &str, mut details: Value, error: &anyhow::Error) {
    details["error"] = Value::from(ferry_manifests::terminal::error_line(error.as_ref()));
    let outcome = match crate::refusal_check(error) {
        Some(check) => {
            details["check"] = Value::from(check);
            Outcome::Refused
        }
        None => Outcome::Failed,
    };
    AuditLog::new(data_dir).record(Actor::local(), event, outcome, details);
}

/// `ferry-appliance audit show|verify`.
pub(crate) fn command(
    config: &crate::config::Config,
    command: crate::cli::AuditCommand,
) -> anyhow::Result<std::process::ExitCode> {
    use crate::cli::AuditCommand;
    let log = AuditLog::new(&config.data_dir);
    match command {
        AuditCommand::Show { since, json } => {
            let since = match since {
                Some(text) => Some(
                    time::OffsetDateTime::parse(
                        &text,
                        &time::format_description::well_known::Rfc3339,
                    )
                    .with_context(|| format!("--since {text:?} is not an RFC 3339 time"))?,
                ),
                None => None,
            };
            let records: Vec<Record> = log
                .read()?
                .into_iter()
                .filter(|r| {
                    since.is_none_or(|since| {
                        time::OffsetDateTime::parse(
                            &r.time,
                            &time::format_description::well_known::Rfc3339,
                        )
                        .is_ok_and(|t| t >= since)
                    })
                })
                .collect();
            if json {
                for record in &records {
                    println!("{}", serde_json::to_string(record)?);
                }
            } else if records.is_empty() {
                println!("no audit records{}", if since.is_some() { " since then" } else { "" });
            } else {
                let headers = ["SEQ", "TIME", "WHO", "EVENT", "OUTCOME", "DETAILS"];
                print!("{}", ferry_manifests::terminal::table(&headers, records.iter().map(row)));
            }
            Ok(std::process::ExitCode::SUCCESS)
        }
        AuditCommand::Verify(args) => {
            let verdict = log.verify()?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&verdict)?);
            } else {
                let range = match (verdict.first_seq, verdict.last_seq) {
                    (Some(first), Some(last)) => format!(", seq {first} to {last}"),
                    _ => String::new(),
                };
                match &verdict.problem {
                    None => println!("OK: {} record(s) chained{range}", verdict.records),
                    Some(b) => println!(
                        "BROKEN at {}: {} ({} record(s) verified before it{range})",
                        b.at, b.reason, verdict.records
                    ),
                }
            }
            Ok(std::process::ExitCode::from(if verdict.problem.is_some() { 1 } else { 0 }))
        }
    }
}

/// For `audit show`: one record as a table row.
fn row(record: &Record) -> Vec<String> {
    vec![
        record.seq.to_string(),
        record.time.clone(),
        record.actor.describe(),
        record.event.clone(),
        serde_json::to_value(record.outcome).expect("serialises").as_str().unwrap_or("").to_owned(),
        if record.details.is_null() { String::new() } else { record.details.to_string() },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn log_with(n: u64) -> (tempfile::TempDir, AuditLog) {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::new(dir.path());
        for i in 1..=n {
            log.append(Actor::local(), "import", Outcome::Ok, json!({ "sequence": i })).unwrap();
        }
        (dir, log)
    }

    fn lines(dir: &Path) -> Vec<String> {
        fs::read_to_string(dir.join(LOG)).unwrap().lines().map(str::to_owned).collect()
    }

    fn write_lines(dir: &Path, lines: &[String]) {
        fs::write(dir.join(LOG), lines.iter().map(|l| format!("{l}\n")).collect::<String>())
            .unwrap();
    }

    #[test]
    fn records_chain_and_verify() {
        let (dir, log) = log_with(5);
        let v = log.verify().unwrap();
        assert!(v.problem.is_none(), "{v:?}");
        assert_eq!((v.records, v.first_seq, v.last_seq), (5, Some(1), Some(5)));
        let records = log.read().unwrap();
        assert_eq!(records[0].prev, GENESIS);
        assert_eq!(records[1].prev, Sha256Digest::of(lines(dir.path())[0].as_bytes()).to_hex());
        assert_eq!(records[4].details["sequence"], 5);
    }

    #[test]
    fn a_deleted_an_edited_a_reordered_and_a_truncated_line_are_each_found() {
        type Damage = fn(&mut Vec<String>);
        let cases: [(&str, Damage, &str); 5] = [
            ("deleted", |l| drop(l.remove(2)), "line 3"),
            ("edited", |l| l[1] = l[1].replace("\"sequence\":2", "\"sequence\":9"), "line 3"),
            ("reordered", |l| l.swap(1, 2), "line 2"),
            ("truncated", |l| drop(l.pop()), "truncated"),
            ("last edited", |l| l[4] = l[4].replace("\"sequence\":5", "\"sequence\":6"), "edited"),
        ];
        for (what, damage, says) in cases {
            let (dir, log) = log_with(5);
            let mut l = lines(dir.path());
            damage(&mut l);
            write_lines(dir.path(), &l);
            let problem =
                log.verify().unwrap().problem.unwrap_or_else(|| panic!("{what} not found"));
            let text = format!("{}: {}", problem.at, problem.reason);
            assert!(text.contains(says), "{what}: {text}");
        }
    }

    #[test]
    fn a_tail_reads_each_record_once_across_a_rotation() {
        let (dir, log) = log_with(3);
        let mut tail = Tail::default();
        let mut seen = Vec::new();
        log.read_new(&mut tail, |r| seen.push(r.seq)).unwrap();
        log.read_new(&mut tail, |r| seen.push(r.seq)).unwrap();
        assert_eq!(seen, [1, 2, 3]);
        // A line half written waits for its end; after a rotation the rest of the old file is
        // read, then the new one.
        log.record(Actor::Server, "e", Outcome::Ok, Value::Null);
        let line = br#"{"seq":5,"time":"t","actor":{"kind":"server"},"event":"e","outcome":"ok","prev":"0"}"#;
        let mut f = OpenOptions::new().append(true).open(dir.path().join(LOG)).unwrap();
        f.write_all(&line[..10]).unwrap();
        log.read_new(&mut tail, |r| seen.push(r.seq)).unwrap();
        assert_eq!(seen, [1, 2, 3, 4]);
        f.write_all(&line[10..]).unwrap();
        f.write_all(b"\n").unwrap();
        log.rotate().unwrap();
        log.record(Actor::Server, "e", Outcome::Refused, Value::Null);
        log.read_new(&mut tail, |r| seen.push(r.seq)).unwrap();
        assert_eq!(seen, [1, 2, 3, 4, 5, 6]);
    }

    #[test]
    fn the_most_recent_records_come_newest_first_across_files_and_blocks() {
        // Lines of about 1 KiB: the 64 KiB blocks cut some of them in two.
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::new(dir.path());
        for i in 1..=150u64 {
            let details = json!({ "sequence": i, "pad": "x".repeat(1000) });
            log.append(Actor::Server, "e", Outcome::Ok, details).unwrap();
            if i == 100 {
                log.rotate().unwrap();
            }
        }
        let seqs = |n| log.recent(n).unwrap().iter().map(|r| r.seq).collect::<Vec<_>>();
        assert_eq!(seqs(3), [150, 149, 148]);
        assert_eq!(seqs(70), (81..=150).rev().collect::<Vec<_>>());
        assert_eq!(seqs(500), (1..=150).rev().collect::<Vec<_>>());
    }

    #[test]
    fn rotation_keeps_the_chain() {
        let (dir, log) = log_with(3);
        log.rotate().unwrap();
        log.append(Actor::Server, "serve.start", Outcome::Ok, Value::Null).unwrap();
        assert!(dir.path().join("audit.log.1").exists());
        let v = log.verify().unwrap();
        assert!(v.problem.is_none(), "{v:?}");
        assert_eq!((v.records, v.last_seq), (4, Some(4)));
        // The oldest file rotated away: the chain is checked from what is kept.
        fs::remove_file(dir.path().join("audit.log.1")).unwrap();
        let v = log.verify().unwrap();
        assert!(v.problem.is_none(), "{v:?}");
        assert_eq!(v.first_seq, Some(4));
    }

    #[test]
    fn oversized_details_are_replaced_by_a_note() {
        let (_dir, log) = log_with(0);
        let big = "x".repeat(MAX_LINE);
        let r = log.append(Actor::Server, "x", Outcome::Failed, json!({ "big": big })).unwrap();
        assert!(r.details["omitted"].as_str().unwrap().ends_with("bytes of details"));
        assert!(log.verify().unwrap().problem.is_none());
    }
}
