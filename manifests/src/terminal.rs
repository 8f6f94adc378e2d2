//! What both command-line programs need on a terminal: progress bars, logging to stderr, and
//! tables and text that nothing they print (an agent's hostname, a bundle's file name) can turn
//! into terminal commands or extra rows. Behind the `terminal` feature, so the format library
//! itself stays free of UI code.

/// Sets up `tracing` on stderr: `warn` by default, `info` with `-v`, `debug` with `-vv`;
/// `RUST_LOG` overrides. Colour only when stderr is a terminal and `NO_COLOR` is unset: logs
/// written to a file, a pipe or journald must stay plain text.
pub fn init_logging(verbose: u8) {
    use std::io::IsTerminal as _;
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal() && !no_color)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default)),
        )
        .init();
}

/// An error and its causes on one line, joined by ": ", as anyhow's `{:#}` prints them, but
/// leaving out a cause whose text the line already holds. Many errors (ours and libraries')
/// write their cause into their own message and also return it as `source()`; printed whole,
/// the chain would say "No such file or directory (os error 2)" twice.
pub fn error_line(error: &(dyn std::error::Error + 'static)) -> String {
    let mut line = error.to_string();
    let mut cause = error.source();
    while let Some(next) = cause {
        let text = next.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        cause = next.source();
    }
    line
}

/// Shows each phase as a byte-counting bar on stderr, when stderr is a terminal and not `quiet`.
pub struct TerminalBar {
    bar: std::sync::Mutex<Option<indicatif::ProgressBar>>,
    enabled: bool,
}

impl TerminalBar {
    pub fn new(quiet: bool) -> Self {
        use std::io::IsTerminal as _;
        Self {
            bar: std::sync::Mutex::new(None),
            enabled: !quiet && std::io::stderr().is_terminal(),
        }
    }
}

impl crate::Progress for TerminalBar {
    fn start(&self, phase: &str, total: u64) {
        if !self.enabled {
            return;
        }
        let bar = indicatif::ProgressBar::with_draw_target(
            Some(total),
            indicatif::ProgressDrawTarget::stderr(),
        );
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{msg:>20} [{bar:30}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} eta {eta}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        bar.set_message(phase.to_owned());
        *self.bar.lock().expect("progress lock") = Some(bar);
    }

    fn advance(&self, bytes: u64) {
        if let Some(bar) = &*self.bar.lock().expect("progress lock") {
            bar.inc(bytes);
        }
    }

    fn finish(&self) {
        if let Some(bar) = self.bar.lock().expect("progress lock").take() {
            bar.finish_and_clear();
        }
    }
}

/// The most characters a table cell shows (after [`escape`]); longer ones end in `…`. Above the
/// longest path in a bundle's manifest (about 80), far below what would push a table's other
/// columns off the screen: a hostname an agent sends may be any length.
pub const CELL_MAX: usize = 128;

/// Whether `c` must not reach a terminal as itself: C0 controls (ESC starts colour, cursor and
/// title sequences; a newline starts a forged row), DEL, C1 controls (U+0080–U+009F, CSI and
/// OSC among them), the Unicode line and paragraph separators, and the bidirectional overrides
/// and isolates (U+202A–U+202E, U+2066–U+2069) that make text display in another order.
fn unsafe_char(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// `text` made safe to print: each character of `unsafe_char` replaced by a visible escape
/// (`\n`, `\r`, `\t`, `\x1b`, `\u{202e}`), and the result cut to `max` characters, the last
/// being `…` when anything was cut. For text that someone else chose (an agent, a bundle);
/// `--json` output needs none of this, JSON escapes it already.
pub fn escape(text: &str, max: usize) -> String {
    let piece = |c: char| match c {
        '\n' => "\\n".to_owned(),
        '\r' => "\\r".to_owned(),
        '\t' => "\\t".to_owned(),
        c if u32::from(c) < 0x80 && unsafe_char(c) => format!("\\x{:02x}", u32::from(c)),
        c if unsafe_char(c) => format!("\\u{{{:x}}}", u32::from(c)),
        c => c.to_string(),
    };
    let mut out = String::with_capacity(text.len().min(max.saturating_mul(4)));
    let mut shown = 0;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        let p = piece(c);
        let len = p.chars().count();
        // The last piece may take the last column; any other keeps one for the `…`.
        let room = if chars.peek().is_none() { max } else { max.saturating_sub(1) };
        if shown + len > room {
            out.push('…');
            return out;
        }
        out.push_str(&p);
        shown += len;
    }
    out
}

/// A plain-text table with columns sized to their widest cell, one line per row; a column
/// headed SIZE is right-aligned. What the CLIs print for people (`--json` is for programs).
/// Every cell goes through [`escape`] (at most [`CELL_MAX`] characters), so a cell can neither
/// start a line nor send the terminal a command.
pub fn table(headers: &[&str], rows: impl Iterator<Item = Vec<String>>) -> String {
    let rows: Vec<Vec<String>> =
        rows.map(|row| row.iter().map(|c| escape(c, CELL_MAX)).collect()).collect();
    let widths: Vec<usize> = headers
        .iter()
        .enumerate()
        .map(|(i, h)| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0).max(h.len()))
        .collect();
    let line = |cells: &[String]| {
        let text: Vec<String> = cells
            .iter()
            .zip(&widths)
            .zip(headers)
            .map(|((c, w), h)| if *h == "SIZE" { format!("{c:>w$}") } else { format!("{c:w$}") })
            .collect();
        format!("{}\n", text.join("  ").trim_end())
    };
    let mut out = line(&headers.iter().map(|h| (*h).to_owned()).collect::<Vec<_>>());
    for row in &rows {
        out.push_str(&line(row));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_makes_controls_visible_and_bounds_length() {
        let forged = "evil\x1b[31mRED\x1b[0m\nfake-agent-id  trusted-host  online";
        assert_eq!(
            escape(forged, 200),
            "evil\\x1b[31mRED\\x1b[0m\\nfake-agent-id  trusted-host  online"
        );
        // OSC (set the window title) in its 7-bit and C1 forms, DEL, a NUL, separators and bidi.
        assert_eq!(escape("\x1b]0;owned\x07", 99), "\\x1b]0;owned\\x07");
        assert_eq!(escape("a\u{9d}0;t\u{9c}b", 99), "a\\u{9d}0;t\\u{9c}b");
        assert_eq!(escape("\x7f\0\r\t", 99), "\\x7f\\x00\\r\\t");
        assert_eq!(escape("x\u{2028}y\u{2029}", 99), "x\\u{2028}y\\u{2029}");
        assert_eq!(
            escape("exe.\u{202e}fdp\u{2066}\u{2069}", 99),
            "exe.\\u{202e}fdp\\u{2066}\\u{2069}"
        );
        // Ordinary text, accents and CJK included, is left alone.
        assert_eq!(escape("web-01.example é 東京", 99), "web-01.example é 東京");
        // Cut to the bound, `…` last; an escape is never cut in half.
        assert_eq!(escape("abcdef", 6), "abcdef");
        assert_eq!(escape("abcdefg", 6), "abcde…");
        assert_eq!(escape("abc\x1bdef", 6), "abc…");
        assert_eq!(escape(&"x".repeat(10_000), CELL_MAX).chars().count(), CELL_MAX);
    }

    #[test]
    fn a_table_cell_cannot_add_a_row_or_reach_the_terminal() {
        let rows = vec![
            vec![
                "id-1".to_owned(),
                "evil\x1b[31mRED\x1b[0m\nfake-agent-id  trusted-host".to_owned(),
            ],
            vec!["id-2".to_owned(), "\u{9b}2J".to_owned()],
            vec!["id-3".to_owned(), "y".repeat(1000)],
        ];
        let out = table(&["ID", "HOSTNAME"], rows.into_iter());
        assert_eq!(out.lines().count(), 4, "{out}");
        assert!(!out.chars().any(|c| c != '\n' && unsafe_char(c)), "{out:?}");
        assert!(out.lines().all(|l| l.chars().count() <= 4 + 2 + CELL_MAX), "{out}");
    }

    /// An error that writes its cause into its message and returns it as its source too.
    #[derive(Debug, thiserror::Error)]
    #[error("cannot read {path}: {source}")]
    struct Doubled {
        path: &'static str,
        source: std::io::Error,
    }

    #[test]
    fn error_line_names_each_cause_once() {
        let io = std::io::Error::from(std::io::ErrorKind::NotFound);
        let doubled = Doubled { path: "x.minisig", source: io };
        let line = error_line(&doubled);
        assert_eq!(line, format!("cannot read x.minisig: {}", std::io::ErrorKind::NotFound));
        // A cause the message does not hold is still printed.
        #[derive(Debug, thiserror::Error)]
        #[error("import refused")]
        struct Outer(#[source] Doubled);
        let io = std::io::Error::from(std::io::ErrorKind::NotFound);
        let outer = Outer(Doubled { path: "b", source: io });
        assert_eq!(
            error_line(&outer),
            format!("import refused: cannot read b: {}", std::io::ErrorKind::NotFound)
        );
    }
}
