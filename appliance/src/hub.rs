//! The in-memory side of check-ins: which agents hold a parked long poll, how to wake one when an
//! action is queued for it, and the check-in reports waiting to be written in one batch.
//!
//! A parked check-in costs a map entry and a watch receiver, never database work: reports are
//! written every [`FLUSH_EVERY`], and parked agents are marked as seen every [`TOUCH_EVERY`],
//! each batch in one transaction.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use crate::state::{CheckinUpdate, SqliteState, StateStore as _};

/// How often queued check-in reports are written.
pub const FLUSH_EVERY: Duration = Duration::from_secs(5);
/// How often agents with a parked check-in are marked as seen (Fleet Server: 30 s).
pub const TOUCH_EVERY: Duration = Duration::from_secs(30);

struct Slot {
    wake: watch::Sender<u64>,
    parked: usize,
}

#[derive(Default)]
pub struct Hub {
    slots: Mutex<HashMap<String, Slot>>,
    reports: Mutex<HashMap<String, CheckinUpdate>>,
    /// Acknowledged policy revisions not written yet: agent → (policy, revision).
    policy_acks: Mutex<HashMap<String, (String, u64)>>,
}

/// A parked check-in. Dropping it un-parks the agent.
pub struct Parked<'a> {
    hub: &'a Hub,
    id: String,
    /// Changes when an action is queued for this agent.
    pub woken: watch::Receiver<u64>,
}

impl Drop for Parked<'_> {
    fn drop(&mut self) {
        let mut slots = self.hub.slots.lock().expect("hub lock");
        if let Some(slot) = slots.get_mut(&self.id) {
            slot.parked -= 1;
            if slot.parked == 0 {
                slots.remove(&self.id);
            }
        }
    }
}

impl Hub {
    /// Registers a check-in of `id` as waiting. Park before looking for pending actions: an
    /// action queued after that look is then seen as a wake-up.
    pub fn park(&self, id: &str) -> Parked<'_> {
        let mut slots = self.slots.lock().expect("hub lock");
        let slot = slots
            .entry(id.to_owned())
            .or_insert_with(|| Slot { wake: watch::channel(0).0, parked: 0 });
        slot.parked += 1;
        Parked { hub: self, id: id.to_owned(), woken: slot.wake.subscribe() }
    }

    /// Wakes the parked check-ins of these agents (those not parked find their actions on
    /// their next check-in).
    pub fn wake<'a>(&self, ids: impl IntoIterator<Item = &'a String>) {
        let slots = self.slots.lock().expect("hub lock");
        for id in ids {
            if let Some(slot) = slots.get(id) {
                slot.wake.send_modify(|n| *n += 1);
            }
        }
    }

    /// The number of agents with a parked check-in.
    pub fn parked_count(&self) -> usize {
        self.slots.lock().expect("hub lock").len()
    }

    /// Queues a check-in report; a later report of the same agent replaces it, but never
    /// moves its action cursor back.
    pub fn report(&self, mut update: CheckinUpdate) {
        let mut reports = self.reports.lock().expect("hub lock");
        if let Some(old) = reports.get(&update.agent_id) {
            update.cursor = update.cursor.max(old.cursor);
        }
        reports.insert(update.agent_id.clone(), update);
    }

    /// Takes an agent's queued report, to be written before something that must follow it.
    pub fn take_report(&self, agent_id: &str) -> Option<CheckinUpdate> {
        self.reports.lock().expect("hub lock").remove(agent_id)
    }

    /// Queues an acknowledged policy revision. Losing it in a crash only means the agent gets
    /// the same revision again, which it applies idempotently, so it is written in a batch
    /// rather than one disk sync per ack.
    pub fn policy_acked(&self, agent_id: &str, policy_id: &str, revision: u64) {
        let mut acks = self.policy_acks.lock().expect("hub lock");
        let entry = acks.entry(agent_id.to_owned()).or_insert_with(|| (policy_id.to_owned(), 0));
        if entry.0 != policy_id {
            *entry = (policy_id.to_owned(), 0);
        }
        entry.1 = entry.1.max(revision);
    }

    /// The revision of `policy_id` an agent acknowledged that is not written yet.
    pub fn queued_policy_ack(&self, agent_id: &str, policy_id: &str) -> Option<u64> {
        let acks = self.policy_acks.lock().expect("hub lock");
        acks.get(agent_id).filter(|(p, _)| p == policy_id).map(|(_, r)| *r)
    }

    /// The action cursor of a report not written yet: newer than the stored one.
    pub fn queued_cursor(&self, agent_id: &str) -> Option<i64> {
        self.reports.lock().expect("hub lock").get(agent_id).and_then(|u| u.cursor)
    }

    fn take_reports(&self) -> Vec<CheckinUpdate> {
        std::mem::take(&mut *self.reports.lock().expect("hub lock")).into_values().collect()
    }

    fn parked_ids(&self) -> Vec<String> {
        self.slots.lock().expect("hub lock").keys().cloned().collect()
    }

    /// Writes queued reports and policy acks now (and, when `touch`, marks parked agents as
    /// seen).
    pub fn flush(&self, db: &Mutex<SqliteState>, touch: bool) -> anyhow::Result<()> {
        let reports = self.take_reports();
        let acks: Vec<(String, String, u64)> =
            std::mem::take(&mut *self.policy_acks.lock().expect("hub lock"))
                .into_iter()
                .map(|(agent, (policy, revision))| (agent, policy, revision))
                .collect();
        let parked = if touch { self.parked_ids() } else { Vec::new() };
        if reports.is_empty() && acks.is_empty() && parked.is_empty() {
            return Ok(());
        }
        let mut db = db.lock().expect("state lock");
        if !reports.is_empty() {
            db.record_checkins(&reports)?;
        }
        if !acks.is_empty() {
            db.record_policy_acks(&acks)?;
        }
        if !parked.is_empty() {
            db.touch_agents(&parked, &crate::state::now_rfc3339()?)?;
        }
        Ok(())
    }
}

/// Writes reports every [`FLUSH_EVERY`] and touches parked agents every [`TOUCH_EVERY`], on a
/// blocking thread, until the runtime stops.
pub fn spawn_flusher(hub: Arc<Hub>, db: Arc<Mutex<SqliteState>>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(FLUSH_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let touch_every = (TOUCH_EVERY.as_secs() / FLUSH_EVERY.as_secs()).max(1);
        let mut n: u64 = 0;
        loop {
            tick.tick().await;
            n += 1;
            let (hub, db) = (Arc::clone(&hub), Arc::clone(&db));
            let touch = n.is_multiple_of(touch_every);
            match tokio::task::spawn_blocking(move || hub.flush(&db, touch)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!(error = %format!("{e:#}"), "cannot write check-ins"),
                Err(e) => tracing::error!(error = %e, "check-in writer failed"),
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_wake_after_parking_is_seen_and_slots_go_away() {
        let hub = Hub::default();
        let mut parked = hub.park("a");
        let mut second = hub.park("a");
        hub.wake([&"b".to_owned()]);
        assert!(!parked.woken.has_changed().unwrap());
        hub.wake([&"a".to_owned()]);
        // Both parked check-ins of the agent wake.
        parked.woken.changed().await.unwrap();
        second.woken.changed().await.unwrap();
        assert_eq!(hub.parked_count(), 1);
        drop(parked);
        drop(second);
        assert_eq!(hub.parked_count(), 0);
    }
}
