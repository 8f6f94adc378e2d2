//! What the simulated fleet has done so far, printed as one JSON line at a time: counters,
//! errors by kind, and how many agents hold each policy revision and each version.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde_json::json;

use super::conn::Failure;

#[derive(Default)]
pub struct Stats {
    pub enrolled: AtomicU64,
    /// Check-ins in flight (parked, for a healthy server).
    pub in_checkin: AtomicI64,
    pub checkins: AtomicU64,
    pub acks: AtomicU64,
    /// Actions other than policies that reached an agent which had already received them.
    pub redelivered: AtomicU64,
    pub upgraded: AtomicU64,
    pub unenrolled: AtomicU64,
    pub uploads: AtomicU64,
    /// Agents that gave up (unenrolled, or their key refused).
    pub stopped: AtomicU64,
    errors: Mutex<BTreeMap<String, u64>>,
    revisions: Mutex<BTreeMap<u64, u64>>,
    versions: Mutex<BTreeMap<String, u64>>,
}

impl Stats {
    pub fn error(&self, failure: &Failure) {
        *self.errors.lock().expect("stats lock").entry(failure.kind()).or_default() += 1;
    }

    /// An agent moved from policy revision `old` to `new` (0: none yet).
    pub fn revision(&self, old: u64, new: u64) {
        move_count(&self.revisions, old, new);
    }

    /// An agent moved from version `old` (`None`: it just enrolled) to `new`.
    pub fn version(&self, old: Option<&str>, new: &str) {
        let mut v = self.versions.lock().expect("stats lock");
        if let Some(old) = old
            && let Some(n) = v.get_mut(old)
        {
            *n -= 1;
            if *n == 0 {
                v.remove(old);
            }
        }
        *v.entry(new.to_owned()).or_default() += 1;
    }

    /// One report line: wall-clock milliseconds since the epoch (to line up with other
    /// programs' timestamps), milliseconds since `start`, and every counter.
    pub fn line(&self, start: Instant) -> serde_json::Value {
        let epoch_ms =
            SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0);
        json!({
            "epoch_ms": epoch_ms as u64,
            "elapsed_ms": start.elapsed().as_millis() as u64,
            "enrolled": self.enrolled.load(Relaxed),
            "in_checkin": self.in_checkin.load(Relaxed),
            "checkins": self.checkins.load(Relaxed),
            "acks": self.acks.load(Relaxed),
            "redelivered": self.redelivered.load(Relaxed),
            "upgraded": self.upgraded.load(Relaxed),
            "unenrolled": self.unenrolled.load(Relaxed),
            "uploads": self.uploads.load(Relaxed),
            "stopped": self.stopped.load(Relaxed),
            "errors": *self.errors.lock().expect("stats lock"),
            "revisions": self.revisions.lock().expect("stats lock").iter().map(|(k, v)| (k.to_string(), *v)).collect::<BTreeMap<_, _>>(),
            "versions": *self.versions.lock().expect("stats lock"),
        })
    }
}

fn move_count(map: &Mutex<BTreeMap<u64, u64>>, old: u64, new: u64) {
    let mut m = map.lock().expect("stats lock");
    if old != 0
        && let Some(n) = m.get_mut(&old)
    {
        *n -= 1;
        if *n == 0 {
            m.remove(&old);
        }
    }
    *m.entry(new).or_default() += 1;
}

/// Latency samples of one call type.
#[derive(Default)]
pub struct Latencies {
    samples: Vec<f64>,
}

impl Latencies {
    pub fn record(&mut self, started: Instant) {
        self.samples.push(started.elapsed().as_secs_f64() * 1000.0);
    }

    /// `{n, p50_ms, p99_ms, max_ms}`.
    pub fn summary(&mut self) -> serde_json::Value {
        self.samples.sort_by(f64::total_cmp);
        let at = |q: f64| -> f64 {
            if self.samples.is_empty() {
                return 0.0;
            }
            let i = ((self.samples.len() as f64 - 1.0) * q).round() as usize;
            (self.samples[i] * 100.0).round() / 100.0
        };
        json!({ "n": self.samples.len(), "p50_ms": at(0.5), "p99_ms": at(0.99), "max_ms": at(1.0) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_move_agents_between_buckets() {
        let s = Stats::default();
        s.revision(0, 1);
        s.revision(0, 1);
        s.revision(1, 2);
        s.version(None, "9.1.2");
        s.version(Some("9.1.2"), "9.2.2");
        let line = s.line(Instant::now());
        assert_eq!(line["revisions"], json!({"1": 1, "2": 1}));
        assert_eq!(line["versions"], json!({"9.2.2": 1}));
    }

    #[test]
    fn percentiles() {
        let mut l = Latencies { samples: (1..=100).map(f64::from).collect() };
        let s = l.summary();
        assert_eq!(
            (s["p50_ms"].as_f64(), s["p99_ms"].as_f64(), s["max_ms"].as_f64()),
            (Some(51.0), Some(99.0), Some(100.0))
        );
    }
}
