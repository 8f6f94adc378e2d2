//! What both command-line programs need on a terminal: progress bars and logging to stderr.
//! Behind the `terminal` feature, so the format library itself stays free of UI code.

/// Sets up `tracing` on stderr: `warn` by default, `info` with `-v`, `debug` with `-vv`;
/// `RUST_LOG` overrides.
pub fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default)),
        )
        .init();
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
