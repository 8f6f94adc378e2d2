//! A running binary whose stdout and stderr lines are collected as they come, with bounded waits
//! for what it prints, and its end: asked (SIGTERM), awaited, or forced (SIGKILL, also on drop).

use std::io::{BufRead as _, BufReader, Read};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The lines one of the child's streams has printed so far, and whether it has closed.
#[derive(Default)]
struct Collected {
    lines: Vec<String>,
    closed: bool,
}

type Stream = Arc<Mutex<Collected>>;

/// How many of the last lines a failed wait shows: enough for a server's last log records
/// without a simulator's thousands of report lines.
const TAIL: usize = 20;

/// Reads `from` line by line into a [`Stream`] on a thread of its own, so the child never
/// blocks on a full pipe.
fn collect(from: impl Read + Send + 'static) -> Stream {
    let stream = Stream::default();
    let sink = Arc::clone(&stream);
    std::thread::spawn(move || {
        for line in BufReader::new(from).lines().map_while(Result::ok) {
            sink.lock().unwrap().lines.push(line);
        }
        sink.lock().unwrap().closed = true;
    });
    stream
}

/// A child process, killed on drop.
pub struct Lines {
    child: Mutex<Child>,
    stdout: Stream,
    stderr: Stream,
    patience: Duration,
}

impl Lines {
    /// Starts `cmd` with its stdout and stderr collected; a wait gives up after `patience`.
    pub fn spawn(mut cmd: Command, patience: Duration) -> Self {
        let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        let stdout = collect(child.stdout.take().unwrap());
        let stderr = collect(child.stderr.take().unwrap());
        Self { child: Mutex::new(child), stdout, stderr, patience }
    }

    /// The process id, for reading its /proc entries.
    pub fn pid(&self) -> u32 {
        self.child.lock().unwrap().id()
    }

    /// Whether the process is still running.
    pub fn alive(&self) -> bool {
        matches!(self.child.lock().unwrap().try_wait(), Ok(None))
    }

    /// Waits until `found` finds something in `stream`'s lines; panics naming `what` after the
    /// patience, or as soon as the stream closed without it.
    fn wait_in<T>(&self, stream: &Stream, what: &str, found: impl Fn(&[String]) -> Option<T>) -> T {
        let end = Instant::now() + self.patience;
        loop {
            let (closed, tail) = {
                let collected = stream.lock().unwrap();
                if let Some(v) = found(&collected.lines) {
                    return v;
                }
                let tail = &collected.lines[collected.lines.len().saturating_sub(TAIL)..];
                (collected.closed, tail.join("\n"))
            };
            assert!(!closed, "never saw {what}: the process closed its output after:\n{tail}");
            assert!(Instant::now() < end, "never saw {what} in {:?}; last:\n{tail}", self.patience);
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits for a stdout line satisfying `pred`; returns it.
    pub fn wait(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        self.wait_in(&self.stdout, what, |lines| lines.iter().rev().find(|l| pred(l)).cloned())
    }

    /// Waits until the latest stdout line, a JSON report, satisfies `pred`; returns it.
    pub fn report(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        self.wait_in(&self.stdout, what, |lines| {
            let last = serde_json::from_str::<Value>(lines.last()?).ok()?;
            pred(&last).then_some(last)
        })
    }

    /// Waits for a stderr line containing `text`; returns all of stderr so far.
    pub fn wait_stderr(&self, text: &str) -> String {
        self.wait_in(&self.stderr, &format!("{text:?} on stderr"), |lines| {
            lines.iter().any(|l| l.contains(text)).then(|| lines.join("\n") + "\n")
        })
    }

    /// Everything the process has printed so far: (stdout, stderr), each line ending in `\n`.
    pub fn printed(&self) -> (String, String) {
        let all = |stream: &Stream| {
            stream.lock().unwrap().lines.iter().map(|l| format!("{l}\n")).collect::<String>()
        };
        (all(&self.stdout), all(&self.stderr))
    }

    /// Asks the process to stop (SIGTERM), as systemd does, and waits until it has.
    pub fn terminate(&self) -> ExitStatus {
        let mut child = self.child.lock().unwrap();
        let pid = child.id().to_string();
        let kill = ferry_manifests::test_tools::tool("kill").args(["-TERM", &pid]).status();
        assert!(kill.unwrap().success());
        child.wait().unwrap()
    }

    /// Waits until the process exits by itself.
    pub fn wait_exit(&self) -> ExitStatus {
        self.child.lock().unwrap().wait().unwrap()
    }

    /// Kills the process as a power cut would (SIGKILL), and waits until it is gone.
    pub fn kill(&self) {
        let mut child = self.child.lock().unwrap();
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Lines {
    fn drop(&mut self) {
        self.kill();
    }
}
