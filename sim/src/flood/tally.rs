//! What a flood kind (or one variant of it) attempted and what came back, by status, error
//! and outcome, as the JSON of the flood's report.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};

use crate::conn::Failure;

/// Tallies per variant of one flood kind, by variant name.
pub(super) type Variants = Vec<(&'static str, Arc<Tally>)>;

/// What one kind (or one variant of it) did and what came back.
#[derive(Default)]
pub(super) struct Tally {
    attempts: AtomicU64,
    status: Mutex<BTreeMap<u16, u64>>,
    errors: Mutex<BTreeMap<String, u64>>,
    /// Outcomes that are neither a status nor an error (a slowloris connection the server
    /// closed, a check-in dropped while parked).
    outcomes: Mutex<BTreeMap<&'static str, u64>>,
    /// Connections or requests open without an answer now, and the most at once.
    open: AtomicI64,
    open_peak: AtomicI64,
}

impl Tally {
    pub(super) fn attempt(&self) {
        self.attempts.fetch_add(1, Relaxed);
    }

    pub(super) fn status(&self, status: u16) {
        *self.status.lock().expect("tally lock").entry(status).or_default() += 1;
    }

    pub(super) fn error(&self, failure: &Failure) {
        let kind = match failure {
            Failure::Protocol(why) => format!("protocol:{why}"),
            f => f.kind(),
        };
        *self.errors.lock().expect("tally lock").entry(kind).or_default() += 1;
    }

    pub(super) fn outcome(&self, what: &'static str) {
        *self.outcomes.lock().expect("tally lock").entry(what).or_default() += 1;
    }

    pub(super) fn opened(&self) {
        let now = self.open.fetch_add(1, Relaxed) + 1;
        self.open_peak.fetch_max(now, Relaxed);
    }

    pub(super) fn closed(&self) {
        self.open.fetch_sub(1, Relaxed);
    }

    pub(super) fn record(&self, result: Result<u16, Failure>) {
        match result {
            Ok(s) => self.status(s),
            Err(f) => self.error(&f),
        }
    }

    pub(super) fn json(&self, seconds: f64) -> Value {
        let attempts = self.attempts.load(Relaxed);
        let status: BTreeMap<String, u64> = self
            .status
            .lock()
            .expect("tally lock")
            .iter()
            .map(|(k, v)| (k.to_string(), *v))
            .collect();
        let mut v = json!({
            "attempts": attempts,
            "status": status,
            "errors": *self.errors.lock().expect("tally lock"),
            "outcomes": *self.outcomes.lock().expect("tally lock"),
            "rate_per_s": (attempts as f64 / seconds.max(0.001) * 10.0).round() / 10.0,
        });
        let peak = self.open_peak.load(Relaxed);
        if peak > 0 {
            v["open_peak"] = json!(peak);
        }
        v
    }
}
