//! The parts index, `NAME-SEQ.ferry.parts`: a text file that GNU `sha256sum -c` reads as it is
//! (its facts are `#` comment lines, which coreutils skips, even with `--strict`) and that this
//! strict parser reads without ever looking at a part.
//!
//! The parser accepts exactly one spelling of each index (fixed line order, no spare spaces,
//! numbers without leading zeros, lowercase hex), so what it accepts re-serialises to the same
//! bytes, and a person or a second implementation reads the same facts from it.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use super::{Layout, LayoutError, MAX_INDEX_SIZE, PARTS_FORMAT};
use crate::manifest::Sha256Digest;
use crate::name::BundleName;
use crate::sign::{BundleComment, SignatureFile};

const MAGIC: &str = "# ferry-parts format=";
const MINISIG: &str = "# minisig: ";
const PART: &str = "# part: ";
/// The largest bundle signature the index carries (the reader's limit for `.minisig` files).
const MAX_SIGNATURE: usize = 16 << 10;

/// One part as the index describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    /// 0-based: data parts first, then parity parts.
    pub index: usize,
    /// `NAME-SEQ.ferry.partNNN`.
    pub file_name: String,
    pub size: u64,
    pub sha256: Sha256Digest,
    pub parity: bool,
}

/// A parsed (or about to be written) parts index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartsIndex {
    pub name: BundleName,
    pub sequence: u64,
    pub bundle_sha256: Sha256Digest,
    /// The bundle's detached signature (`.ferry.minisig`), four lines, each ending in `\n`.
    pub bundle_signature: String,
    pub layout: Layout,
    pub parts: Vec<Part>,
}

/// Why an index was refused. Each variant is its own check; messages give the line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IndexError {
    #[error("the parts index is {size} bytes, the limit is {max}")]
    TooLarge { size: u64, max: u64 },
    #[error("the parts index is not UTF-8 text with one \\n after every line: {reason}")]
    NotText { reason: String },
    #[error("the parts index is format {found}; this reader knows format {PARTS_FORMAT}")]
    Format { found: String },
    #[error("parts index line {line}: expected {expected}, found {found:?}")]
    Line { line: usize, expected: String, found: String },
    #[error("parts index line {line}: {field} appears twice")]
    Duplicate { line: usize, field: String },
    #[error("parts index line {line}: {field} {value:?} is invalid: {reason}")]
    Field { line: usize, field: &'static str, value: String, reason: String },
    #[error("the parts index's layout is impossible: {0}")]
    Layout(#[from] LayoutError),
    #[error(
        "the parts index says data-parts={declared}, but bundle-size and part-size make {computed}"
    )]
    DataParts { declared: usize, computed: usize },
    #[error("the parts index says stripe={declared}, but the layout's rule gives {computed}")]
    Stripe { declared: u64, computed: u64 },
    #[error("the parts index declares {declared} parts but lists {listed}")]
    Count { declared: usize, listed: usize },
    #[error("parts index line {line}: part {number} must be named {expected}, found {found:?}")]
    PartName { line: usize, number: usize, expected: String, found: String },
    #[error("parts index line {line}: {part} is listed twice")]
    DuplicatePart { line: usize, part: String },
    #[error("parts index line {line}: {part} is {declared} bytes, the layout makes it {expected}")]
    PartSize { line: usize, part: String, declared: u64, expected: u64 },
    #[error("parts index line {line}: {part} must be a {expected} part")]
    PartKind { line: usize, part: String, expected: &'static str },
}

impl IndexError {
    /// A short, stable name of the check that failed, for machine output.
    pub fn check(&self) -> &'static str {
        use IndexError::*;
        match self {
            TooLarge { .. } => "index-size",
            NotText { .. } => "index-text",
            Format { .. } => "index-format",
            Line { .. } => "index-line",
            Duplicate { .. } => "index-duplicate",
            Field { .. } => "index-field",
            Layout(_) | DataParts { .. } | Stripe { .. } => "index-layout",
            Count { .. } => "index-count",
            PartName { .. } => "index-part-name",
            DuplicatePart { .. } => "index-duplicate",
            PartSize { .. } => "index-part-size",
            PartKind { .. } => "index-part-kind",
        }
    }
}

/// Where an index's signature is: `INDEX.minisig`.
pub fn parts_signature_path(index: &Path) -> PathBuf {
    crate::read::default_signature_path(index)
}

/// A number as the index spells it: digits, no sign, no leading zero.
fn number(line: usize, field: &'static str, value: &str) -> Result<u64, IndexError> {
    let bad = |reason: &str| IndexError::Field {
        line,
        field,
        value: value.to_owned(),
        reason: reason.to_owned(),
    };
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad("not a decimal number"));
    }
    if value.len() > 1 && value.starts_with('0') {
        return Err(bad("leading zero"));
    }
    value.parse().map_err(|_| bad("too large"))
}

fn digest(line: usize, field: &'static str, value: &str) -> Result<Sha256Digest, IndexError> {
    Sha256Digest::from_hex(value).ok_or_else(|| IndexError::Field {
        line,
        field,
        value: value.to_owned(),
        reason: "not 64 lowercase hex digits".into(),
    })
}

/// Reads the index's lines in order, each as a 1-based line number and its text.
struct Lines<'a> {
    lines: std::iter::Peekable<std::iter::Enumerate<std::str::Split<'a, char>>>,
}

impl<'a> Lines<'a> {
    fn peek(&mut self) -> Option<&'a str> {
        self.lines.peek().map(|(_, l)| *l)
    }

    fn next(&mut self, expected: &str) -> Result<(usize, &'a str), IndexError> {
        match self.lines.next() {
            Some((i, line)) => Ok((i + 1, line)),
            None => Err(IndexError::Line {
                line: 0,
                expected: expected.to_owned(),
                found: "the end of the index".into(),
            }),
        }
    }

    /// The next line, which must be `# KEY: VALUE`; returns VALUE.
    fn field(
        &mut self,
        key: &'static str,
        previous: Option<&str>,
    ) -> Result<(usize, &'a str), IndexError> {
        let expected = format!("\"# {key}: …\"");
        let (line, text) = self.next(&expected)?;
        let prefix = format!("# {key}: ");
        match text.strip_prefix(&prefix) {
            Some(value) => Ok((line, value)),
            None => {
                if let Some(previous) = previous
                    && text.starts_with(&format!("# {previous}: "))
                {
                    return Err(IndexError::Duplicate { line, field: previous.to_owned() });
                }
                Err(IndexError::Line { line, expected, found: text.to_owned() })
            }
        }
    }
}

impl PartsIndex {
    /// The bundle file's name, `NAME-SEQ.ferry`.
    pub fn bundle_file(&self) -> String {
        format!("{}-{}.ferry", self.name, self.sequence)
    }

    /// The index file's name, `NAME-SEQ.ferry.parts`.
    pub fn file_name(&self) -> String {
        format!("{}.parts", self.bundle_file())
    }

    pub fn data_parts(&self) -> &[Part] {
        &self.parts[..self.layout.data_parts]
    }

    /// The trusted comment its signature must carry.
    pub fn comment(&self) -> crate::sign::PartsComment {
        crate::sign::PartsComment {
            name: self.name.clone(),
            sequence: self.sequence,
            bundle_sha256: self.bundle_sha256,
        }
    }

    /// The index's text (the writer's only spelling, which [`PartsIndex::parse`] accepts).
    pub fn to_text(&self) -> String {
        let l = &self.layout;
        let mut out = String::with_capacity(512 + 160 * self.parts.len());
        let _ = writeln!(out, "{MAGIC}{PARTS_FORMAT}");
        let _ = writeln!(out, "# name: {}", self.name);
        let _ = writeln!(out, "# sequence: {}", self.sequence);
        let _ = writeln!(out, "# bundle: {}", self.bundle_file());
        let _ = writeln!(out, "# bundle-size: {}", l.bundle_size);
        let _ = writeln!(out, "# bundle-sha256: {}", self.bundle_sha256);
        let _ = writeln!(out, "# part-size: {}", l.part_size);
        let _ = writeln!(out, "# data-parts: {}", l.data_parts);
        let _ = writeln!(out, "# parity-parts: {}", l.parity_parts);
        let _ = writeln!(out, "# stripe: {}", l.stripe);
        for line in self.bundle_signature.lines() {
            let _ = writeln!(out, "{MINISIG}{line}");
        }
        for p in &self.parts {
            let kind = if p.parity { "parity" } else { "data" };
            let _ = writeln!(out, "{PART}{} size={} {kind}", p.file_name, p.size);
        }
        // sha256sum's own line format: digest, two spaces (text mode), file name.
        for p in &self.parts {
            let _ = writeln!(out, "{}  {}", p.sha256, p.file_name);
        }
        out
    }

    /// Parses an index. Checks every rule of the format (see `docs/bundle-format.md`), and that
    /// the bundle signature it carries is a well-formed minisign signature whose trusted comment
    /// names the same bundle; it does not verify any signature (the index's own is verified
    /// before this is called, the bundle's over the rebuilt bundle).
    pub fn parse(bytes: &[u8]) -> Result<Self, IndexError> {
        if bytes.len() as u64 > MAX_INDEX_SIZE {
            return Err(IndexError::TooLarge { size: bytes.len() as u64, max: MAX_INDEX_SIZE });
        }
        let text = std::str::from_utf8(bytes)
            .map_err(|e| IndexError::NotText { reason: e.to_string() })?;
        let Some(body) = text.strip_suffix('\n') else {
            return Err(IndexError::NotText { reason: "the last line lacks its \\n".into() });
        };
        // Control characters are one byte or, like U+0085, two: name the character, not a byte.
        if let Some((at, c)) = text.char_indices().find(|&(_, c)| c.is_control() && c != '\n') {
            return Err(IndexError::NotText {
                reason: format!("control character {c:?} at byte {at}"),
            });
        }
        let mut lines = Lines { lines: body.split('\n').enumerate().peekable() };

        let (line, first) = lines.next("the magic line")?;
        let Some(format) = first.strip_prefix(MAGIC) else {
            return Err(IndexError::Line {
                line,
                expected: format!("\"{MAGIC}{PARTS_FORMAT}\""),
                found: first.to_owned(),
            });
        };
        if format != PARTS_FORMAT.to_string() {
            return Err(IndexError::Format { found: format.to_owned() });
        }
        let (line, value) = lines.field("name", None)?;
        let name = BundleName::new(value).map_err(|e| IndexError::Field {
            line,
            field: "name",
            value: value.to_owned(),
            reason: e.to_string(),
        })?;
        let (line, value) = lines.field("sequence", Some("name"))?;
        let sequence = number(line, "sequence", value)?;
        if sequence == 0 {
            return Err(IndexError::Field {
                line,
                field: "sequence",
                value: value.to_owned(),
                reason: "sequences start at 1".into(),
            });
        }
        let bundle_file = format!("{name}-{sequence}.ferry");
        let (line, value) = lines.field("bundle", Some("sequence"))?;
        if value != bundle_file {
            return Err(IndexError::Field {
                line,
                field: "bundle",
                value: value.to_owned(),
                reason: format!("name and sequence make it {bundle_file}"),
            });
        }
        let (line, value) = lines.field("bundle-size", Some("bundle"))?;
        let bundle_size = number(line, "bundle-size", value)?;
        let (line, value) = lines.field("bundle-sha256", Some("bundle-size"))?;
        let bundle_sha256 = digest(line, "bundle-sha256", value)?;
        let (line, value) = lines.field("part-size", Some("bundle-sha256"))?;
        let part_size = number(line, "part-size", value)?;
        let (line, value) = lines.field("data-parts", Some("part-size"))?;
        let data_parts = number(line, "data-parts", value)?;
        let (line, value) = lines.field("parity-parts", Some("data-parts"))?;
        let parity_parts = number(line, "parity-parts", value)?;
        let (line, value) = lines.field("stripe", Some("parity-parts"))?;
        let stripe = number(line, "stripe", value)?;

        // The layout follows from three numbers; the others must agree with it. Checked before
        // the part lines, so their count is bounded by MAX_PARTS.
        let parity = usize::try_from(parity_parts).unwrap_or(usize::MAX);
        let layout = Layout::new(bundle_size, part_size, parity)?;
        if data_parts != layout.data_parts as u64 {
            return Err(IndexError::DataParts {
                declared: usize::try_from(data_parts).unwrap_or(usize::MAX),
                computed: layout.data_parts,
            });
        }
        if stripe != layout.stripe {
            return Err(IndexError::Stripe { declared: stripe, computed: layout.stripe });
        }

        let mut signature = String::new();
        for i in 0..4 {
            let (line, text) = lines.next("\"# minisig: …\"")?;
            let Some(sig_line) = text.strip_prefix(MINISIG) else {
                return Err(IndexError::Line {
                    line,
                    expected: format!("4 \"{MINISIG}…\" lines (the bundle's .minisig), found {i}"),
                    found: text.to_owned(),
                });
            };
            signature.push_str(sig_line);
            signature.push('\n');
        }
        if let Some(extra) = lines.peek().filter(|l| l.starts_with(MINISIG)) {
            return Err(IndexError::Line {
                line: 15,
                expected: "exactly 4 \"# minisig: …\" lines".into(),
                found: extra.to_owned(),
            });
        }
        let bad_signature = |reason: String| IndexError::Field {
            line: 11,
            field: "minisig",
            value: signature.lines().nth(2).unwrap_or_default().to_owned(),
            reason,
        };
        if signature.len() > MAX_SIGNATURE {
            return Err(bad_signature(format!("longer than {MAX_SIGNATURE} bytes")));
        }
        let parsed = SignatureFile::parse(&signature).map_err(bad_signature)?;
        if !signature.starts_with("untrusted comment: ")
            || signature.lines().nth(2).is_none_or(|l| !l.starts_with("trusted comment: "))
        {
            return Err(bad_signature("not minisign's four-line layout".into()));
        }
        let comment: BundleComment = parsed.trusted_comment().parse().map_err(bad_signature)?;
        if comment.name != name || comment.sequence != sequence {
            return Err(bad_signature(format!(
                "it is the signature of {} sequence {}, not of {name} sequence {sequence}",
                comment.name, comment.sequence
            )));
        }

        let width = layout.name_width();
        let mut parts = Vec::with_capacity(layout.total_parts());
        while lines.peek().is_some_and(|l| l.starts_with(PART)) {
            let (line, text) = lines.next("a part line")?;
            let rest = &text[PART.len()..];
            let number = parts.len() + 1;
            let fields: Vec<&str> = rest.split(' ').collect();
            let [file_name, size, kind] = fields[..] else {
                return Err(IndexError::Line {
                    line,
                    expected: "\"# part: NAME size=BYTES data|parity\"".into(),
                    found: text.to_owned(),
                });
            };
            if parts.iter().any(|p: &Part| p.file_name == file_name) {
                return Err(IndexError::DuplicatePart { line, part: file_name.to_owned() });
            }
            if number > layout.total_parts() {
                return Err(IndexError::Count { declared: layout.total_parts(), listed: number });
            }
            let expected = format!("{bundle_file}.part{number:0width$}");
            if file_name != expected {
                return Err(IndexError::PartName {
                    line,
                    number,
                    expected,
                    found: file_name.to_owned(),
                });
            }
            let Some(size_text) = size.strip_prefix("size=") else {
                return Err(IndexError::Line {
                    line,
                    expected: "size=BYTES".into(),
                    found: size.to_owned(),
                });
            };
            let size = self::number(line, "size", size_text)?;
            let i = number - 1;
            let is_parity = match kind {
                "data" => false,
                "parity" => true,
                other => {
                    return Err(IndexError::Line {
                        line,
                        expected: "data or parity".into(),
                        found: other.to_owned(),
                    });
                }
            };
            if is_parity != (i >= layout.data_parts) {
                let expected = if is_parity { "data" } else { "parity" };
                return Err(IndexError::PartKind { line, part: file_name.to_owned(), expected });
            }
            if size != layout.part_len(i) {
                return Err(IndexError::PartSize {
                    line,
                    part: file_name.to_owned(),
                    declared: size,
                    expected: layout.part_len(i),
                });
            }
            parts.push(Part {
                index: i,
                file_name: file_name.to_owned(),
                size,
                sha256: Sha256Digest([0; 32]),
                parity: is_parity,
            });
        }
        if parts.len() != layout.total_parts() {
            return Err(IndexError::Count { declared: layout.total_parts(), listed: parts.len() });
        }
        for part in &mut parts {
            let (line, text) = lines.next("a sha256sum line")?;
            let expected_line = format!("DIGEST  {}", part.file_name);
            let Some((hex, file_name)) = text.split_once("  ") else {
                return Err(IndexError::Line {
                    line,
                    expected: expected_line,
                    found: text.to_owned(),
                });
            };
            if file_name != part.file_name {
                return Err(IndexError::PartName {
                    line,
                    number: part.index + 1,
                    expected: part.file_name.clone(),
                    found: file_name.to_owned(),
                });
            }
            part.sha256 = digest(line, "sha256", hex)?;
        }
        if let Some((line, text)) = lines.lines.next() {
            return Err(IndexError::Line {
                line: line + 1,
                expected: "the end of the index".into(),
                found: text.to_owned(),
            });
        }
        Ok(Self { name, sequence, bundle_sha256, bundle_signature: signature, layout, parts })
    }

    /// The short, plain note for the people who carry the parts (`NAME-SEQ.ferry.transfer.txt`).
    pub fn transfer_text(&self) -> String {
        let l = &self.layout;
        let index = self.file_name();
        let total: u64 = self.parts.iter().map(|p| p.size).sum::<u64>();
        let mut out = String::new();
        let _ = writeln!(
            out,
            "Ferry bundle {} sequence {}, in {} parts",
            self.name,
            self.sequence,
            l.total_parts()
        );
        let _ = writeln!(out);
        let _ =
            writeln!(out, "Carry every file below across the gap (on as many media as you like):");
        let _ = writeln!(out);
        let width = self.parts.first().map_or(0, |p| p.file_name.len()).max(index.len() + 8);
        for p in &self.parts {
            let kind = if p.parity { "parity" } else { "data" };
            let _ = writeln!(
                out,
                "  {:width$}  {:>14} bytes  {kind:6}  sha256 {}",
                p.file_name, p.size, p.sha256
            );
        }
        let _ = writeln!(out, "  {index:width$}  (the signed list of parts)");
        let _ = writeln!(out, "  {:width$}  (its signature)", format!("{index}.minisig"));
        let _ = writeln!(out);
        let _ = writeln!(out, "Total: {total} bytes in parts, plus the index and its signature.");
        if l.parity_parts == 0 {
            let _ = writeln!(out, "No parity: every part must arrive intact.");
        } else {
            let _ = writeln!(
                out,
                "Parity: any {} of the {} parts may be lost or damaged; the appliance rebuilds them.",
                l.parity_parts,
                l.total_parts()
            );
        }
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "On arrival, in the folder holding the parts (each medium on its own is fine):"
        );
        let _ = writeln!(out, "  sha256sum -c --ignore-missing {index}");
        let _ = writeln!(out, "  minisign -Vm {index} -p ferry.pub");
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "Then: ferry-appliance import {index} --parts-dir DIR (once per medium is fine)."
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sign::{BundleComment, SigningKey, generate_key};

    fn key() -> SigningKey {
        SigningKey::from_text(&generate_key(None).unwrap().secret_key_file, "k", None).unwrap()
    }

    /// An index for a bundle of `size` bytes (its signature made by `key`; the parts' digests are
    /// made up: the parser never sees the parts).
    pub(crate) fn index(key: &SigningKey, size: u64, part_size: u64, parity: usize) -> PartsIndex {
        let name = BundleName::new("site").unwrap();
        let comment = BundleComment {
            name: name.clone(),
            sequence: 7,
            manifest_sha256: Sha256Digest::of(b"m"),
        };
        let layout = Layout::new(size, part_size, parity).unwrap();
        let parts = (0..layout.total_parts())
            .map(|i| Part {
                index: i,
                file_name: layout.part_name("site-7.ferry", i),
                size: layout.part_len(i),
                sha256: Sha256Digest::of(&i.to_le_bytes()),
                parity: i >= layout.data_parts,
            })
            .collect();
        PartsIndex {
            name,
            sequence: 7,
            bundle_sha256: Sha256Digest::of(b"bundle"),
            bundle_signature: key.sign(b"bundle", &comment.to_string()),
            layout,
            parts,
        }
    }

    fn refused(text: &str) -> IndexError {
        PartsIndex::parse(text.as_bytes()).expect_err("refused")
    }

    #[test]
    fn round_trips_and_reads_as_sha256sum_lines() {
        let index = index(&key(), 10_000, 4096, 2);
        let text = index.to_text();
        assert_eq!(PartsIndex::parse(text.as_bytes()).unwrap(), index);
        let hashes: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(hashes.len(), 5);
        assert!(hashes[0].ends_with("  site-7.ferry.part001"), "{}", hashes[0]);
        assert!(text.contains("# part: site-7.ferry.part005 size=4096 parity\n"), "{text}");
        assert!(index.transfer_text().contains("sha256sum -c --ignore-missing site-7.ferry.parts"));
    }

    #[test]
    fn past_999_parts_names_take_four_digits() {
        let index = index(&key(), 1200 * 1024, 1024, 2);
        let text = index.to_text();
        assert!(text.contains("# part: site-7.ferry.part0001 size=1024 data\n"));
        assert!(text.contains("  site-7.ferry.part1202\n"));
        assert_eq!(PartsIndex::parse(text.as_bytes()).unwrap(), index);
        let three = text.replace(".part0001 ", ".part001 ");
        assert_eq!(PartsIndex::parse(three.as_bytes()).unwrap_err().check(), "index-part-name");
    }

    #[test]
    fn refuses_every_inconsistency_with_its_check() {
        let text = index(&key(), 10_000, 4096, 2).to_text();
        let cases: Vec<(String, &str)> = vec![
            (text.replace("format=1", "format=2"), "index-format"),
            (text.replace("# sequence: 7\n", "# sequence: 07\n"), "index-field"),
            (text.replace("# name: site\n", "# name: site\n# name: site\n"), "index-duplicate"),
            (text.replace("# data-parts: 3", "# data-parts: 4"), "index-layout"),
            (text.replace("# stripe: 4096", "# stripe: 2048"), "index-layout"),
            (text.replace("# bundle-size: 10000", "# bundle-size: 10001"), "index-part-size"),
            (text.replace("part003 size=1808 data", "part003 size=1808 parity"), "index-part-kind"),
            (text.replace("ferry.part002 size", "ferry.part02 size"), "index-part-name"),
            (text.replace("ferry.part002 size", "ferry.part001 size"), "index-duplicate"),
            (text.replace("# part: site-7.ferry.part005 size=4096 parity\n", ""), "index-count"),
            (
                text.replace("  site-7.ferry.part002\n", "  site-7.ferry.part003\n"),
                "index-part-name",
            ),
            (format!("{text}# extra\n"), "index-line"),
            (format!("{text}\n"), "index-line"),
            (text.replace("\n# bundle:", "\n# comment: hi\n# bundle:"), "index-line"),
            (text.replace('\n', "\r\n"), "index-text"),
            (text.trim_end().to_owned(), "index-text"),
            // A two-byte control character (the fuzzer's first find: it was sliced mid-character).
            (text.replace("# name: site", "# name: s\u{85}ite"), "index-text"),
            (text.replace("# parity-parts: 2", "# parity-parts: 70000"), "index-layout"),
            (text.replace("# part-size: 4096", "# part-size: 100"), "index-layout"),
            (text.replace("sequence=7", "sequence=8"), "index-field"),
            ("x".repeat(2 << 20), "index-size"),
        ];
        for (bad, check) in cases {
            let error = refused(&bad);
            assert_eq!(error.check(), check, "{error}");
        }
    }
}
