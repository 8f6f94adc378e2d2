//! The site's Elasticsearch (`[elasticsearch]`): its health, checked at start and then
//! periodically, and agents' output keys, made, delivered and invalidated there as Fleet Server
//! does (fleet-server internal/pkg/policy/policy_output.go makes them at policy delivery,
//! internal/pkg/api/handleAck.go invalidates retired ones on the policy's ack and all of an
//! agent's on its unenrollment).
//!
//! Keys are made by a worker, a few calls at a time, never by the check-in that needs one: a
//! check-in whose policy waits for a key stays parked (the agent keeps running its current
//! policy, and never sees an error for it) and is woken when the key exists. Each creation is
//! recorded before Elasticsearch is asked; a row left `creating` by a crash or a lost answer is
//! reconciled before anything else is made for that output: the keys that creation made (found
//! by the mark it wrote in their metadata) are invalidated, so an agent never has two.

mod client;
pub(crate) mod slots;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio::sync::mpsc;

pub(crate) use client::EsError;
use client::{Client, KeyMetadata};
use slots::KeySlot;

use crate::config::ElasticsearchConfig;
use crate::fleet::hub::Hub;
use crate::store::{Db, KeyState, OutputKeyRecord, StoreError};

/// Calls to Elasticsearch in flight at once: enough to make 500 keys in a few seconds at
/// 50 ms a call, few enough not to flood a small cluster after an outage.
const CONCURRENT_CALLS: usize = 8;
/// When a lost answer's creation is reconciled, or a creation that met another for the same
/// output tried again: long enough for Elasticsearch's periodic refresh (1 s) to make a key
/// created without waiting for it (as Fleet Server creates them) visible to the query.
const PASSING_RETRY: Duration = Duration::from_secs(2);
/// The longest wait before calls are tried again after a failure: "all keys within 10 s of
/// recovery" needs the next try within 5 s of it.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// How the site's Elasticsearch looks from here, as `status` and `health` show it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct Health {
    pub state: State,
    /// What is wrong, and what to do; empty when `ok`.
    pub message: String,
    /// Whom the credential authenticates as.
    pub principal: Option<String>,
    pub checked_at: Option<String>,
    /// Agents whose policy waits for an output key.
    pub agents_waiting_for_keys: usize,
}

#[derive(Clone)]
enum Job {
    Create {
        agent: String,
        output: String,
        roles: Arc<RawValue>,
        sha256: String,
        policy: String,
        revision: u64,
    },
    Acked {
        agent: String,
        policy: String,
        revision: u64,
    },
    Sweep,
}

/// The verdict on the site's Elasticsearch, named in `status --json` as in snake case.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub(crate) enum State {
    /// Not checked yet.
    Starting,
    Ok,
    Unreachable,
    Tls,
    Unauthorized,
    MissingPrivilege,
    Error,
}

impl State {
    /// Checked, and in trouble: `/api/status` says DEGRADED.
    pub(crate) fn troubled(self) -> bool {
        !matches!(self, State::Ok | State::Starting)
    }

    /// The state an error puts Elasticsearch in.
    fn of(e: &EsError) -> Self {
        match e {
            EsError::Unreachable { .. } | EsError::Lost { .. } => State::Unreachable,
            EsError::Tls { .. } => State::Tls,
            EsError::Unauthorized { .. } => State::Unauthorized,
            EsError::Forbidden { .. } => State::MissingPrivilege,
            EsError::Status { .. } | EsError::Malformed(_) => State::Error,
        }
    }
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let json = serde_json::to_value(self).map_err(|_| std::fmt::Error)?;
        f.write_str(json.as_str().unwrap_or_default())
    }
}

/// What an agent's keys are for a policy (see [`Elastic::keys_for`]).
pub(crate) enum Keys<'k> {
    /// Every slot's key, in slot order; `stale`: the agent holds keys of outputs the policy no
    /// longer needs one for, to retire with this delivery.
    Ready { keys: Vec<&'k str>, stale: bool },
    /// A key is being made; the agent's check-in is woken when it exists.
    Waiting,
}

struct Inner {
    health: Health,
    /// (agent, output) pairs whose key is asked for and not made yet, with the permissions
    /// hash wanted now: a job for another hash (a policy fixed since) is dropped as stale.
    waiting: HashMap<(String, String), String>,
    /// A sweep is queued: more asks add nothing (an unenrollment of 200 agents is one sweep).
    sweep_queued: bool,
    /// Messages of failures that stop one key and not the others (a policy's role descriptors
    /// Elasticsearch refuses), logged once each rather than once per agent and retry.
    logged: HashSet<String>,
    /// Agents with retiring keys: only their policy acks need a look at the store.
    retiring: HashSet<String>,
    failures: u32,
    paused_until: Option<Instant>,
}

/// The appliance's side of the site's Elasticsearch.
pub(crate) struct Elastic {
    client: Client,
    db: Db,
    hub: Arc<Hub>,
    interval: Duration,
    request_timeout: Duration,
    inner: Mutex<Inner>,
    jobs: mpsc::UnboundedSender<Job>,
}

impl Elastic {
    /// Reads the credential and the CA (errors here stop `serve`: the configuration is wrong),
    /// checks the connection once (its trouble is reported, not fatal: agents keep checking
    /// in), reconciles what a previous run left, and starts the worker and the health checks.
    pub(crate) async fn start(
        config: &ElasticsearchConfig,
        db: Db,
        hub: Arc<Hub>,
    ) -> anyhow::Result<Arc<Self>> {
        let client = Client::new(config)?;
        let (jobs, rx) = mpsc::unbounded_channel();
        let retiring = {
            let db = Arc::clone(&db);
            tokio::task::spawn_blocking(move || {
                let rows = db.lock().expect("state lock").output_keys_in(&[KeyState::Retiring])?;
                Ok::<_, StoreError>(rows.into_iter().map(|k| k.agent_id).collect())
            })
            .await??
        };
        let me = Arc::new(Self {
            client,
            db,
            hub,
            interval: Duration::from_secs(config.check_interval_seconds),
            request_timeout: Duration::from_secs(config.request_timeout_seconds),
            inner: Mutex::new(Inner {
                health: Health {
                    state: State::Starting,
                    message: "not checked yet".into(),
                    principal: None,
                    checked_at: None,
                    agents_waiting_for_keys: 0,
                },
                waiting: HashMap::new(),
                sweep_queued: false,
                logged: HashSet::new(),
                retiring,
                failures: 0,
                paused_until: None,
            }),
            jobs,
        });
        let first = Arc::clone(&me);
        own_thread(move || first.check()).await;
        // In the background: a creation for an output reconciles that output's leftover
        // first anyway, so nothing waits for this.
        tokio::spawn(Arc::clone(&me).reconcile_leftovers());
        Arc::clone(&me).run_worker(rx);
        Arc::clone(&me).run_checks();
        Ok(me)
    }

    /// `elasticsearch.request_timeout_seconds`.
    pub(crate) fn request_timeout(&self) -> Duration {
        self.request_timeout
    }

    /// True when Elasticsearch was checked and is in trouble.
    pub(crate) fn degraded(&self) -> bool {
        self.inner.lock().expect("elastic lock").health.state.troubled()
    }

    pub(crate) fn health(&self) -> Health {
        let inner = self.inner.lock().expect("elastic lock");
        let mut health = inner.health.clone();
        health.agents_waiting_for_keys =
            inner.waiting.keys().map(|(a, _)| a).collect::<HashSet<_>>().len();
        health
    }

    /// The keys agent `agent` needs for `slots`, given its stored key rows, in slot order; or
    /// [`Keys::Waiting`] when one is missing or made for other permissions, after asking the
    /// worker for it (the agent's parked check-in is woken once it exists). `revision` of
    /// `policy` is what the keys are for: a key it replaces retires once the agent
    /// acknowledges it.
    pub(crate) fn keys_for<'k>(
        &self,
        agent: &str,
        slots: &[KeySlot],
        keys: &'k [OutputKeyRecord],
        (policy, revision): (&str, u64),
    ) -> Keys<'k> {
        let mut found = Vec::with_capacity(slots.len());
        let mut missing = false;
        for slot in slots {
            let current = keys.iter().find(|k| {
                k.state == KeyState::Active
                    && k.output == slot.output
                    && k.permissions_sha256 == slot.sha256
            });
            match current.and_then(|k| k.api_key.as_deref()) {
                Some(key) => found.push(key),
                None => {
                    missing = true;
                    self.ask(Job::Create {
                        agent: agent.to_owned(),
                        output: slot.output.clone(),
                        roles: Arc::clone(&slot.roles),
                        sha256: slot.sha256.clone(),
                        policy: policy.to_owned(),
                        revision,
                    });
                }
            }
        }
        if missing {
            return Keys::Waiting;
        }
        // Keys of outputs the policy no longer has (or no longer needs a key for).
        let stale = keys
            .iter()
            .any(|k| k.state == KeyState::Active && !slots.iter().any(|s| s.output == k.output));
        Keys::Ready { keys: found, stale }
    }

    /// The key (`pair`, `sha256`) is made or no longer wanted.
    fn done_waiting(&self, pair: &(String, String), sha256: &str) {
        let mut inner = self.inner.lock().expect("elastic lock");
        if inner.waiting.get(pair).is_some_and(|wanted| wanted == sha256) {
            inner.waiting.remove(pair);
        }
    }

    /// The `.fleet-artifacts` document of artifact `identifier` whose decoded content hashes to
    /// `decoded_sha256` (Elastic Defend's user artifacts, which Kibana writes there), or `None`.
    /// The search runs on a thread of its own, as every call here does, and the answer comes
    /// within `deadline` whatever Elasticsearch does: an agent waits for it. Trouble that says
    /// Elasticsearch is down or refuses the credential is reported as the key worker's is, so
    /// `status` and `/api/status` show it.
    /// `hold` is dropped when the search's thread ends, which may be after the deadline: a
    /// caller bounding the threads with it bounds the threads running.
    pub(crate) async fn find_artifact(
        self: &Arc<Self>,
        identifier: &str,
        decoded_sha256: &str,
        deadline: Duration,
        hold: impl Send + 'static,
    ) -> Result<Option<Box<RawValue>>, EsError> {
        let (me, id, sha) = (Arc::clone(self), identifier.to_owned(), decoded_sha256.to_owned());
        let search = own_thread(move || {
            let found = me.client.find_artifact(&id, &sha, deadline);
            drop(hold);
            found
        });
        // The client's own timeout ends the call first (and gives `hold` back); this one is
        // for a call that outlives it, such as one host after another timing out.
        let found = match tokio::time::timeout(deadline + Duration::from_secs(1), search).await {
            Ok(Some(found)) => found,
            Ok(None) => Err(EsError::Malformed("the search's thread failed".into())),
            Err(_) => Err(EsError::Unreachable {
                host: self.client.hosts().join(", "),
                detail: format!("no answer within {deadline:?}"),
            }),
        };
        match &found {
            Ok(_) => self.answered(),
            Err(e) => {
                let failure = Failure::Es(e.clone());
                if failure.is_global() {
                    self.failed(&failure);
                }
            }
        }
        found
    }

    /// Agent `agent` has keys retiring: its policy acks are looked at from now on.
    pub(crate) fn retiring(&self, agent: &str) {
        self.inner.lock().expect("elastic lock").retiring.insert(agent.to_owned());
    }

    /// An agent acknowledged `revision` of `policy`: the keys it retired go.
    pub(crate) fn policy_acked(&self, agent: &str, policy: &str, revision: u64) {
        if self.inner.lock().expect("elastic lock").retiring.contains(agent) {
            let (agent, policy) = (agent.to_owned(), policy.to_owned());
            self.ask(Job::Acked { agent, policy, revision });
        }
    }

    /// Invalidates what is marked for it (an agent was unenrolled, revoked or replaced).
    pub(crate) fn sweep(&self) {
        self.ask(Job::Sweep);
    }

    fn ask(&self, job: Job) {
        {
            let mut inner = self.inner.lock().expect("elastic lock");
            let new = match &job {
                Job::Create { agent, output, sha256, .. } => {
                    let wanted =
                        inner.waiting.insert((agent.clone(), output.clone()), sha256.clone());
                    wanted.as_ref() != Some(sha256)
                }
                Job::Sweep => !std::mem::replace(&mut inner.sweep_queued, true),
                Job::Acked { .. } => true,
            };
            if !new {
                return;
            }
        }
        // The receiver lives as long as the server.
        let _ = self.jobs.send(job);
    }

    /// Runs jobs, [`CONCURRENT_CALLS`] at a time; a failed one is tried again after a backoff
    /// that every job waits out (Elasticsearch down is down for all of them).
    fn run_worker(self: Arc<Self>, mut rx: mpsc::UnboundedReceiver<Job>) {
        let permits = Arc::new(tokio::sync::Semaphore::new(CONCURRENT_CALLS));
        tokio::spawn(async move {
            while let Some(job) = rx.recv().await {
                loop {
                    let until = self.inner.lock().expect("elastic lock").paused_until;
                    match until {
                        Some(t) if t > Instant::now() => tokio::time::sleep_until(t.into()).await,
                        _ => break,
                    }
                }
                let Ok(permit) = Arc::clone(&permits).acquire_owned().await else { return };
                let me = Arc::clone(&self);
                tokio::spawn(async move {
                    let (worker, retry) = (Arc::clone(&me), job.clone());
                    let done = own_thread(move || worker.run(&job)).await;
                    drop(permit);
                    match done {
                        Some(Ok(())) => {}
                        Some(Err(e)) if e.is_global() => {
                            me.failed(&e);
                            // Tried again once the pause is over (the loop above waits it).
                            let _ = me.jobs.send(retry);
                        }
                        Some(Err(e)) => {
                            // This job's own trouble: the others go on. A lost answer is tried
                            // again soon (reconciling first); a refusal at the next check.
                            me.failed_alone(&e);
                            let delay = if e.is_passing() { PASSING_RETRY } else { me.interval };
                            tokio::time::sleep(delay).await;
                            let _ = me.jobs.send(retry);
                        }
                        None => {
                            tracing::error!("output key worker failed");
                            if let Job::Create { agent, output, sha256, .. } = &retry {
                                me.done_waiting(&(agent.clone(), output.clone()), sha256);
                            }
                        }
                    }
                });
            }
        });
    }

    /// Checks the connection every `interval`, and sweeps what waits for invalidation.
    fn run_checks(self: Arc<Self>) {
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(self.interval).await;
                let me = Arc::clone(&self);
                own_thread(move || me.check()).await;
                self.sweep();
            }
        });
    }

    /// Rows a previous run left: keys being made when it stopped are reconciled (by their
    /// intent, so a creation running meanwhile is never touched), and what waited for
    /// invalidation is swept.
    async fn reconcile_leftovers(self: Arc<Self>) {
        let me = Arc::clone(&self);
        let done = own_thread(move || -> Result<(), Failure> {
            let rows = me.store(|s| s.output_keys_in(&[KeyState::Creating]))?;
            for row in rows {
                me.reconcile(&row)?;
            }
            me.invalidate_due()
        })
        .await;
        match done {
            Some(Ok(())) => {}
            Some(Err(e)) => {
                self.failed(&e);
                self.sweep();
                // Creating rows left are reconciled by the next creation for their output.
            }
            None => tracing::error!("output key reconciliation failed"),
        }
    }

    fn store<T>(
        &self,
        f: impl FnOnce(&mut dyn crate::store::Store) -> Result<T, StoreError>,
    ) -> Result<T, Failure> {
        Ok(f(&mut **self.db.lock().expect("state lock"))?)
    }

    fn run(&self, job: &Job) -> Result<(), Failure> {
        match job {
            Job::Create { agent, output, roles, sha256, policy, revision } => {
                let pair = (agent.clone(), output.clone());
                if self.inner.lock().expect("elastic lock").waiting.get(&pair) != Some(sha256) {
                    // A newer policy wants other permissions; its own job makes that key.
                    return Ok(());
                }
                let made = self.create(agent, output, roles, sha256, (policy, *revision));
                if made.is_ok() {
                    self.done_waiting(&pair, sha256);
                    self.hub.wake([agent]);
                }
                made
            }
            Job::Acked { agent, policy, revision } => {
                let rows = self.store(|s| s.output_keys(agent))?;
                let due: Vec<i64> = rows
                    .iter()
                    .filter(|k| k.retired_by(policy, *revision))
                    .map(|k| k.row)
                    .collect();
                if !due.is_empty() {
                    self.store(|s| s.drop_output_keys(&due))?;
                }
                if !rows.iter().any(|k| k.state == KeyState::Retiring && !due.contains(&k.row)) {
                    self.inner.lock().expect("elastic lock").retiring.remove(agent);
                }
                let rows = self.store(|s| s.output_keys(agent))?;
                self.invalidate(rows.into_iter().filter(|k| k.state == KeyState::Invalidating))
            }
            Job::Sweep => {
                self.inner.lock().expect("elastic lock").sweep_queued = false;
                self.invalidate_due()
            }
        }
    }

    /// Makes agent `agent`'s key for `output` unless it exists; a creation left unfinished
    /// for it is reconciled first.
    fn create(
        &self,
        agent: &str,
        output: &str,
        roles: &RawValue,
        sha256: &str,
        retire_at: (&str, u64),
    ) -> Result<(), Failure> {
        let rows = self.store(|s| s.output_keys(agent))?;
        let exists = rows.iter().any(|k| {
            k.state == KeyState::Active && k.output == output && k.permissions_sha256 == sha256
        });
        if exists {
            return Ok(());
        }
        if let Some(left) =
            rows.iter().find(|k| k.state == KeyState::Creating && k.output == output)
        {
            self.reconcile(left)?;
        }
        let at = crate::clock::now_rfc3339();
        let intent = format!("{:032x}", rand::random::<u128>());
        let begun =
            self.store(|s| s.begin_output_key(agent, output, sha256, &intent, retire_at, &at));
        let row = match begun {
            Ok(row) => row,
            // Unenrolled or revoked meanwhile: nothing to make.
            Err(Failure::Store(StoreError::NotFound { .. })) => return Ok(()),
            Err(e) => return Err(e),
        };
        // The key this one replaces (if any) retires on the ack of `revision`.
        if rows.iter().any(|k| k.state == KeyState::Active && k.output == output) {
            self.retiring(agent);
        }
        let name = format!("{agent}:{output}");
        let metadata = KeyMetadata::output(agent, output, &intent);
        let created = self.client.create_api_key(&name, roles, &metadata)?;
        self.answered();
        let key = format!("{}:{}", created.id, created.api_key);
        if self.store(|s| s.finish_output_key(row, &created.id, &key))? {
            tracing::info!(agent, output, key_id = %created.id, "output key created");
        } else {
            // The agent went while the key was made (its row marked, or already swept by a
            // reconciliation that could not see this key yet): invalidated here, by id.
            self.client.invalidate(std::slice::from_ref(&created.id))?;
            self.store(|s| s.forget_output_key(row))?;
        }
        Ok(())
    }

    /// A row whose creation's outcome is unknown: the valid keys Elasticsearch holds from that
    /// creation (found by its intent in their metadata; their secret never came) are
    /// invalidated, then the row goes. Only that creation's keys: never another's made
    /// meanwhile for the same output.
    fn reconcile(&self, left: &OutputKeyRecord) -> Result<(), Failure> {
        let found = self.client.intended_keys(&left.agent_id, &left.output, &left.intent)?;
        self.answered();
        let strays: Vec<String> = found.into_iter().map(|k| k.id).collect();
        if !strays.is_empty() {
            self.client.invalidate(&strays)?;
            tracing::warn!(
                agent = %left.agent_id, output = %left.output, keys = ?strays,
                "invalidated output keys made before a crash or a lost answer"
            );
        }
        self.store(|s| s.forget_output_key(left.row))
    }

    /// Invalidates what is marked for it, and retiring keys whose agent runs (or has gone
    /// past) the revision they retire at (an agent >= 9.2 may say so only in its check-ins).
    fn invalidate_due(&self) -> Result<(), Failure> {
        let rows = self.store(|s| {
            let mut rows = s.output_keys_in(&[KeyState::Invalidating])?;
            for k in s.output_keys_in(&[KeyState::Retiring])? {
                let Some(agent) = s.agent(&k.agent_id)? else { continue };
                if k.retired_by(&agent.policy_id, s.agent_policy_revision(&k.agent_id)?) {
                    rows.push(k);
                }
            }
            Ok(rows)
        })?;
        self.invalidate(rows.into_iter())
    }

    /// Invalidates these keys on Elasticsearch (100 ids a call) and forgets their rows; a row
    /// without a key id (dropped while its key was being made) is reconciled by metadata.
    fn invalidate(&self, rows: impl Iterator<Item = OutputKeyRecord>) -> Result<(), Failure> {
        let mut by_id: HashMap<String, i64> = HashMap::new();
        for row in rows {
            match &row.key_id {
                Some(id) => {
                    by_id.insert(id.clone(), row.row);
                }
                None => self.reconcile(&row)?,
            }
        }
        let ids: Vec<String> = by_id.keys().cloned().collect();
        for chunk in ids.chunks(100) {
            let done = self.client.invalidate(chunk)?;
            self.answered();
            // Without errors, an id Elasticsearch lists neither way was never made or is gone
            // already; with errors, only the listed ones are done and the rest wait for the
            // next sweep.
            let listed: HashSet<&String> = done
                .invalidated_api_keys
                .iter()
                .chain(&done.previously_invalidated_api_keys)
                .collect();
            for id in chunk.iter().filter(|id| done.error_count == 0 || listed.contains(id)) {
                let row = by_id[id];
                self.store(|s| s.forget_output_key(row))?;
            }
            tracing::info!(
                invalidated = done.invalidated_api_keys.len(),
                before = done.previously_invalidated_api_keys.len(),
                errors = done.error_count,
                "output keys invalidated"
            );
        }
        Ok(())
    }

    /// Checks that Elasticsearch answers, takes the credential, and lets it manage its own
    /// API keys; the verdict becomes `health`, logged when it changes.
    fn check(&self) {
        let verdict = self.client.authenticate().and_then(|who| {
            let privileges = self.client.has_privileges(&["manage_own_api_key"])?;
            Ok((who.username, privileges))
        });
        let now = crate::clock::now_rfc3339();
        let mut inner = self.inner.lock().expect("elastic lock");
        let before = inner.health.state;
        let (state, message, principal) = match verdict {
            Ok((who, p)) if p.has_all_requested => (State::Ok, String::new(), Some(who)),
            Ok((who, p)) => (
                State::MissingPrivilege,
                format!(
                    "{who} may not manage its own API keys (cluster privileges: {:?}); use a \
                     service token of the elastic/fleet-server service account",
                    p.cluster
                ),
                Some(who),
            ),
            Err(e) => (State::of(&e), e.to_string(), None),
        };
        if state == State::Ok {
            inner.failures = 0;
            inner.paused_until = None;
        }
        if state != before || (state != State::Ok && inner.health.message != message) {
            match state {
                State::Ok => tracing::info!(principal = ?principal, "Elasticsearch reachable"),
                _ => tracing::warn!(%state, "Elasticsearch: {message}"),
            }
        }
        inner.health =
            Health { state, message, principal, checked_at: Some(now), agents_waiting_for_keys: 0 };
    }

    /// A key call went through: Elasticsearch answers again (trouble the periodic check
    /// found, such as a missing privilege, stays until the next check says otherwise).
    fn answered(&self) {
        let mut inner = self.inner.lock().expect("elastic lock");
        inner.failures = 0;
        inner.paused_until = None;
        if matches!(inner.health.state, State::Unreachable | State::Error) {
            tracing::info!("Elasticsearch reachable again");
            inner.health.state = State::Ok;
            inner.health.message.clear();
        }
    }

    /// A failure of one job that says nothing of Elasticsearch as a whole, logged once per
    /// message.
    fn failed_alone(&self, e: &Failure) {
        if e.is_passing() {
            tracing::warn!("output key: {e}; tried again");
            return;
        }
        let message = e.to_string();
        if self.inner.lock().expect("elastic lock").logged.insert(message.clone()) {
            tracing::warn!("output key not made (tried again every check): {message}");
        }
    }

    /// Pauses every call for a backoff (1, 2, 4, then 5 s) and reports the trouble.
    fn failed(&self, e: &Failure) {
        let mut inner = self.inner.lock().expect("elastic lock");
        // Calls in flight together fail together: one more step of backoff per round.
        if inner.paused_until.is_some_and(|t| t > Instant::now()) {
            return;
        }
        inner.failures = inner.failures.saturating_add(1);
        let backoff = match inner.failures {
            1 => Duration::from_secs(1),
            2 => Duration::from_secs(2),
            3 => Duration::from_secs(4),
            _ => MAX_BACKOFF,
        };
        inner.paused_until = Some(Instant::now() + backoff);
        if let Failure::Es(es) = e {
            let state = State::of(es);
            if inner.health.state != state {
                tracing::warn!(%state, "Elasticsearch: {es}");
            }
            inner.health.state = state;
            inner.health.message = es.to_string();
        } else {
            tracing::error!(error = %e, "output keys: state database");
        }
    }
}

/// Runs `f` on a thread of its own and waits for it (`None` if it panicked). A call to
/// Elasticsearch may block for its whole timeout: on tokio's blocking threads, eight of them
/// hung by an unanswering Elasticsearch would be eight fewer for the store's callers, which
/// every check-in needs.
async fn own_thread<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let spawned =
        std::thread::Builder::new().name("elasticsearch".into()).spawn(move || drop(tx.send(f())));
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start a thread for Elasticsearch");
        return None;
    }
    rx.await.ok()
}

/// Why a job failed: Elasticsearch or the store.
#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error(transparent)]
    Es(#[from] EsError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Failure {
    /// Whether every call should wait: Elasticsearch is down, overloaded, or refuses the
    /// credential. A request it refuses on its merits (a 400 for a policy's role descriptors)
    /// concerns that request only.
    fn is_global(&self) -> bool {
        match self {
            Failure::Es(EsError::Status { status, .. }) => *status == 429 || *status >= 500,
            Failure::Es(EsError::Malformed(_) | EsError::Lost { .. }) => false,
            Failure::Store(StoreError::Conflict { .. }) => false,
            Failure::Es(_) | Failure::Store(_) => true,
        }
    }

    /// Whether trying again in a second is likely to work: an answer lost on the way (the
    /// retry reconciles first), or a creation for the same output another task is finishing.
    fn is_passing(&self) -> bool {
        matches!(
            self,
            Failure::Es(EsError::Lost { .. }) | Failure::Store(StoreError::Conflict { .. })
        )
    }
}
