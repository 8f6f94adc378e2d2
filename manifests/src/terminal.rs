//! What both command-line programs need on a terminal: progress bars and logging to stderr.
//! Behind the `terminal` feature, so the format library itself stays free of UI code.

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

/// A plain-text table with columns sized to their widest cell, one line per row; a column
/// headed SIZE is right-aligned. What the CLIs print for people (`--json` is for programs).
pub fn table(headers: &[&str], rows: impl Iterator<Item = Vec<String>>) -> String {
    let rows: Vec<Vec<String>> = rows.collect();
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
