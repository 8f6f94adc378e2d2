//! The in-memory side of check-ins: which agents hold a parked long poll, how to wake one when an
//! action is queued for it, the check-in reports waiting to be written in one batch, and whether
//! the server is winding down (stopping, or draining for a load balancer to take it out).
//!
//! A parked check-in costs a map entry and a watch receiver, never database work: reports are
//! written every [`FLUSH_EVERY`], and parked agents are marked as seen every [`TOUCH_EVERY`],
//! each batch in one transaction.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use crate::store::{CheckinUpdate, Db, PolicyAck, StoreError};

/// How often queued check-in reports are written.
pub(crate) const FLUSH_EVERY: Duration = Duration::from_secs(5);
/// How often agents with a parked check-in are marked as seen (Fleet Server: 30 s).
pub(crate) const TOUCH_EVERY: Duration = Duration::from_secs(30);

struct Slot {
    wake: watch::Sender<u64>,
    /// The ticket of the newest check-in parked for this agent; older ones see it change and
    /// answer at once (an agent has one check-in in flight, so an older one is a connection it
    /// gave up on, or a key holder multiplying its parked requests).
    newest: watch::Sender<u64>,
    parked: usize,
}

#[derive(Default)]
pub(crate) struct Hub {
    /// True once the server is stopping.
    stopping: watch::Sender<bool>,
    /// True while the server drains (`ferry-appliance drain`, until `--undo`).
    draining: watch::Sender<bool>,
    /// True while it is stopping or draining: parked check-ins answer at once, new ones do not
    /// park, and agent connections close after each response (idle ones at once). Changed only
    /// under `winding`, so that a stop and an undone drain at the same moment cannot leave it
    /// false while stopping.
    closing: watch::Sender<bool>,
    winding: Mutex<()>,
    slots: Mutex<HashMap<String, Slot>>,
    reports: Mutex<HashMap<String, CheckinUpdate>>,
    /// Acknowledged policy revisions not written yet, by agent.
    policy_acks: Mutex<HashMap<String, PolicyAck>>,
    /// Check-in reports with fields over their caps.
    pub trimmed: Noted,
    /// Parked check-ins answered because a newer one of the same agent parked.
    pub superseded: Noted,
}

/// How often something an honest agent does not do happened, and which agents did it: each is
/// logged once (a key holder doing it in a loop cannot flood the log), the first 10,000 agents
/// remembered, the count going on.
#[derive(Default)]
pub(crate) struct Noted(Mutex<(u64, std::collections::HashSet<String>)>);

impl Noted {
    /// Counts one more; true the first time for `agent_id`.
    pub(crate) fn note(&self, agent_id: &str) -> bool {
        let mut noted = self.0.lock().expect("noted lock");
        noted.0 += 1;
        noted.1.len() < 10_000 && noted.1.insert(agent_id.to_owned())
    }

    pub(crate) fn count(&self) -> u64 {
        self.0.lock().expect("noted lock").0
    }
}

/// A parked check-in. Dropping it un-parks the agent.
pub(crate) struct Parked {
    hub: Arc<Hub>,
    id: String,
    /// Changes when an action is queued for this agent, or it is revoked.
    pub woken: watch::Receiver<u64>,
    pub newer: Newer,
}

/// Which check-in of an agent is its newest.
pub(crate) struct Newer {
    ticket: u64,
    newest: watch::Receiver<u64>,
}

impl Newer {
    /// Resolves once a newer check-in of the same agent has parked: this one should answer.
    pub(crate) async fn parked(&mut self) {
        let ticket = self.ticket;
        // The sender lives in the slot as long as any check-in of the agent is parked (this
        // one included), so `wait_for` only ends when the newest ticket is another one.
        let _ = self.newest.wait_for(|newest| *newest != ticket).await;
    }
}

impl Drop for Parked {
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
    /// Registers a check-in of `id` as waiting, and tells an older parked check-in of the same
    /// agent to answer ([`Newer::parked`]): one parked check-in per agent, so one key
    /// cannot hold hundreds of connections. Park before looking for pending actions: an action
    /// queued after that look is then seen as a wake-up.
    pub(crate) fn park(self: &Arc<Self>, id: &str) -> Parked {
        let mut slots = self.slots.lock().expect("hub lock");
        let slot = slots.entry(id.to_owned()).or_insert_with(|| Slot {
            wake: watch::channel(0).0,
            newest: watch::channel(0).0,
            parked: 0,
        });
        slot.parked += 1;
        slot.newest.send_modify(|n| *n += 1);
        let ticket = *slot.newest.borrow();
        Parked {
            hub: Arc::clone(self),
            id: id.to_owned(),
            woken: slot.wake.subscribe(),
            newer: Newer { ticket, newest: slot.newest.subscribe() },
        }
    }

    /// Wakes the parked check-ins of these agents (those not parked find their actions on
    /// their next check-in).
    pub(crate) fn wake<'a>(&self, ids: impl IntoIterator<Item = &'a String>) {
        let slots = self.slots.lock().expect("hub lock");
        for id in ids {
            if let Some(slot) = slots.get(id) {
                slot.wake.send_modify(|n| *n += 1);
            }
        }
    }

    /// Wakes every parked check-in (another instance's notifications were lost: each looks
    /// at its actions again).
    pub(crate) fn wake_all(&self) {
        for slot in self.slots.lock().expect("hub lock").values() {
            slot.wake.send_modify(|n| *n += 1);
        }
    }

    /// Answers every parked check-in (and every new one) with "nothing to do", as Fleet
    /// Server drains: agents check in again a second later instead of backing off for a
    /// minute after a broken connection.
    pub(crate) fn stop(&self) {
        self.wind(&self.stopping, true);
    }

    /// Starts (`on`) or ends draining; true when that changed anything. While draining, check-ins
    /// are answered as while stopping, but the server goes on serving: agents' next requests
    /// open new connections, which a load balancer whose health check sees `/api/status`
    /// answer 503 sends to another instance.
    pub(crate) fn drain(&self, on: bool) -> bool {
        self.wind(&self.draining, on)
    }

    /// Whether the server drains now.
    pub(crate) fn draining(&self) -> bool {
        *self.draining.borrow()
    }

    fn wind(&self, flag: &watch::Sender<bool>, on: bool) -> bool {
        let _winding = self.winding.lock().expect("hub lock");
        let changed = flag.send_if_modified(|v| std::mem::replace(v, on) != on);
        let closing = *self.stopping.borrow() || *self.draining.borrow();
        // Only real changes wake the watchers: a parked check-in breaks on any.
        self.closing.send_if_modified(|v| std::mem::replace(v, closing) != closing);
        changed
    }

    /// Changes to true when the server starts stopping (the admin API's connections close
    /// then; draining leaves them alone).
    pub(crate) fn stopping(&self) -> watch::Receiver<bool> {
        self.stopping.subscribe()
    }

    /// True while the server stops or drains: what check-ins and agent connections follow.
    pub(crate) fn closing(&self) -> watch::Receiver<bool> {
        self.closing.subscribe()
    }

    /// The number of agents with a parked check-in.
    pub(crate) fn parked_count(&self) -> usize {
        self.slots.lock().expect("hub lock").len()
    }

    /// Queues a check-in report; a later report of the same agent replaces it, but never
    /// moves its action cursor back.
    pub(crate) fn report(&self, mut update: CheckinUpdate) {
        let mut reports = self.reports.lock().expect("hub lock");
        if let Some(old) = reports.get(&update.agent_id) {
            update.cursor = update.cursor.max(old.cursor);
        }
        reports.insert(update.agent_id.clone(), update);
    }

    /// Takes an agent's queued report, to be written before something that must follow it.
    pub(crate) fn take_report(&self, agent_id: &str) -> Option<CheckinUpdate> {
        self.reports.lock().expect("hub lock").remove(agent_id)
    }

    /// Queues an acknowledged policy revision. Losing it in a crash only means the agent gets
    /// the same revision again, which it applies idempotently, so it is written in a batch
    /// rather than one disk sync per ack.
    pub(crate) fn policy_acked(&self, ack: PolicyAck) {
        let mut acks = self.policy_acks.lock().expect("hub lock");
        match acks.get_mut(&ack.agent_id) {
            Some(queued)
                if queued.policy_id == ack.policy_id
                    && queued.access_key_id == ack.access_key_id =>
            {
                queued.revision = queued.revision.max(ack.revision);
            }
            _ => {
                acks.insert(ack.agent_id.clone(), ack);
            }
        }
    }

    /// The revision of policy `policy_id` that agent `agent_id`, holding access key
    /// `access_key_id`, acknowledged and that is not written yet.
    pub(crate) fn queued_policy_ack(
        &self,
        agent_id: &str,
        policy_id: &str,
        access_key_id: &str,
    ) -> Option<u64> {
        let acks = self.policy_acks.lock().expect("hub lock");
        acks.get(agent_id)
            .filter(|a| a.policy_id == policy_id && a.access_key_id == access_key_id)
            .map(|a| a.revision)
    }

    /// The action cursor of a report not written yet: newer than the stored one.
    pub(crate) fn queued_cursor(&self, agent_id: &str) -> Option<i64> {
        self.reports.lock().expect("hub lock").get(agent_id).and_then(|u| u.cursor)
    }

    fn parked_ids(&self) -> Vec<String> {
        self.slots.lock().expect("hub lock").keys().cloned().collect()
    }

    /// Writes queued reports and policy acks now (and, when `touch`, marks parked agents as
    /// seen). The queues are taken while holding the database, so whoever writes an agent's
    /// report first (this, or [`Hub::take_report`] under the same lock) writes it before
    /// anything that must follow it. What fails to be written is queued again unless newer
    /// news arrived meanwhile.
    pub(crate) fn flush(&self, db: &Db, touch: bool) -> Result<(), StoreError> {
        let mut db = db.lock().expect("state lock");
        let reports: Vec<CheckinUpdate> =
            std::mem::take(&mut *self.reports.lock().expect("hub lock")).into_values().collect();
        let acks: Vec<PolicyAck> = std::mem::take(&mut *self.policy_acks.lock().expect("hub lock"))
            .into_values()
            .collect();
        let parked = if touch { self.parked_ids() } else { Vec::new() };
        let written = (|| -> Result<(), StoreError> {
            if !reports.is_empty() {
                db.record_checkins(&reports, &crate::fleet::upgrade::after_checkin)?;
            }
            if !acks.is_empty() {
                db.record_policy_acks(&acks)?;
            }
            if !parked.is_empty() {
                db.touch_agents(&parked, &crate::clock::now_rfc3339())?;
            }
            Ok(())
        })();
        if written.is_err() {
            let mut queued = self.reports.lock().expect("hub lock");
            for r in reports {
                queued.entry(r.agent_id.clone()).or_insert(r);
            }
            let mut queued = self.policy_acks.lock().expect("hub lock");
            for a in acks {
                queued.entry(a.agent_id.clone()).or_insert(a);
            }
        }
        written
    }
}

/// Writes reports every [`FLUSH_EVERY`] and touches parked agents every [`TOUCH_EVERY`], on a
/// blocking thread, until the runtime stops.
pub(crate) fn spawn_flusher(hub: Arc<Hub>, db: Db) {
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
        let hub = Arc::new(Hub::default());
        let mut parked = hub.park("a");
        hub.wake([&"b".to_owned()]);
        assert!(!parked.woken.has_changed().unwrap());
        hub.wake([&"a".to_owned()]);
        parked.woken.changed().await.unwrap();
        assert_eq!(hub.parked_count(), 1);
        drop(parked);
        assert_eq!(hub.parked_count(), 0);
    }

    #[test]
    fn closing_follows_stopping_and_draining_and_only_a_drain_can_be_undone() {
        let hub = Hub::default();
        let (closing, stopping) = (hub.closing(), hub.stopping());
        assert!(hub.drain(true));
        assert!(!hub.drain(true), "already draining");
        assert!(*closing.borrow() && !*stopping.borrow() && hub.draining());
        assert!(hub.drain(false));
        assert!(!*closing.borrow());
        hub.drain(true);
        hub.stop();
        hub.drain(false);
        assert!(*closing.borrow() && *stopping.borrow(), "stopping still closes");
    }

    #[tokio::test]
    async fn a_newer_check_in_supersedes_the_older_one_of_the_same_agent() {
        use std::pin::pin;
        use std::task::{Context, Waker};
        let pending = |f: std::pin::Pin<&mut dyn std::future::Future<Output = ()>>| {
            f.poll(&mut Context::from_waker(Waker::noop())).is_pending()
        };
        let hub = Arc::new(Hub::default());
        let mut first = hub.park("a");
        let mut other = hub.park("b");
        assert!(pending(pin!(first.newer.parked())), "alone, it is not superseded");
        let mut second = hub.park("a");
        first.newer.parked().await;
        assert!(pending(pin!(second.newer.parked())), "the newest is not superseded");
        assert!(pending(pin!(other.newer.parked())), "another agent's is not");
        // The older one leaving does not disturb the newer.
        drop(first);
        assert!(pending(pin!(second.newer.parked())));
        assert_eq!(hub.parked_count(), 2);
    }
}
