//! Several appliances as one: instances behind a load balancer share one PostgreSQL store, tell
//! each other what changed, and import a bundle together.
//!
//! - **Liveness**: every instance writes a heartbeat ([`HEARTBEAT`]) with its state, active
//!   release and parked check-ins; `cluster` lists them.
//! - **Wake-ups**: a write another instance must act on notifies it in the same transaction
//!   (`store::postgres::channel`); one thread per instance listens and wakes the agents parked
//!   here for a new action or a revocation, reloads the on-site secrets, or stages an import.
//!   A parked check-in never reads the database. After the listening connection is lost, every
//!   parked agent is woken once: what was notified meanwhile is not known.
//! - **One import for the cluster** ([`import`]): the importing instance verifies and stages
//!   the bundle, copies it into `shared_dir/bundles/` and records the import; every live
//!   instance verifies that copy again with its own trusted keys and stages it, or refuses it
//!   and says why. Only when every live instance holds it does the release become active, for
//!   all at once (the one active pointer in the store); one refusal, or an instance that does
//!   not answer in time, and it becomes active nowhere. An instance that was away catches up
//!   from the shared copy before it serves the release ([`Cluster::catch_up`]), and before it
//!   accepts agents at start.
//!
//! The shared folder is not trusted: every instance verifies what it reads there as an import
//! would (signature, manifest, every entry's hash), and catching up also checks the manifest's
//! digest against the one the store records.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use ferry_manifests::{Progress, TrustedKeys};

use crate::config::Config;
use crate::release::{BundleInput, DataDir, ImportOptions, Staged};
use crate::store::{Beat, ClusterImport, ClusterStore, Location, ReleaseRecord, channel};

/// How often an instance says it is alive.
pub(crate) const HEARTBEAT: Duration = Duration::from_secs(5);

/// This instance in its cluster.
#[derive(Debug, Clone)]
pub(crate) struct Cluster {
    name: String,
    location: Location,
    pub shared_dir: PathBuf,
    pub data_dir: PathBuf,
}

impl Cluster {
    /// The cluster `config` puts this instance in, if any.
    pub(crate) fn of(config: &Config) -> anyhow::Result<Option<Self>> {
        let Some(cluster) = &config.cluster else { return Ok(None) };
        Ok(Some(Self {
            name: config.instance_name()?,
            location: config.store_location()?,
            shared_dir: cluster.shared_dir.clone(),
            data_dir: config.data_dir.clone(),
        }))
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// A new connection to the cluster's store.
    pub(crate) fn store(&self) -> anyhow::Result<Box<dyn ClusterStore>> {
        crate::store::open_cluster(&self.location)?
            .context("[cluster] needs store.backend = \"postgres\"")
    }

    fn bundle_path(&self, file: &str) -> PathBuf {
        self.shared_dir.join("bundles").join(file)
    }

    /// Makes sure this instance holds release `name` `sequence`, which the store records (it is
    /// active, or to be): unpacks it from the shared copy when it does not. The data
    /// directory's lock is taken; a command holding it makes this fail, to be tried again.
    pub(crate) fn catch_up(
        &self,
        keys: &TrustedKeys,
        name: &str,
        sequence: u64,
    ) -> anyhow::Result<()> {
        if crate::release::holds(&self.data_dir, name, sequence) {
            return Ok(());
        }
        let mut data = DataDir::open(&self.data_dir, &self.location)?;
        let stored = data
            .releases()?
            .into_iter()
            .find(|r| r.name == name && r.sequence == sequence)
            .with_context(|| format!("release {name} {sequence} is not recorded in the store"))?;
        let file = format!("{name}-{sequence}.ferry");
        tracing::warn!(release = %file, "this instance lacks a release the cluster uses: catching up from the shared folder");
        let options = ImportOptions { catch_up: true, allow_expired: true, ..Default::default() };
        let result = stage_shared(self, &mut data, keys, &file, options, &stored.manifest_sha256);
        let db = data.cluster.as_mut().expect("a cluster's data directory");
        let at = crate::clock::now_rfc3339();
        match &result {
            Ok(()) => db.record_holding(name, sequence, Ok(()), &at)?,
            Err(e) => db.record_holding(name, sequence, Err(&format!("{e:#}")), &at)?,
        }
        result.with_context(|| format!("cannot catch up with release {name} {sequence}"))
    }

    /// Stages every import underway that this instance has not answered yet, recording its
    /// verdict.
    fn stage_pending(&self, db: &mut dyn ClusterStore, keys: &TrustedKeys) -> anyhow::Result<()> {
        let answered: std::collections::HashSet<(String, u64)> = db
            .holdings()?
            .into_iter()
            .filter(|h| h.instance == self.name())
            .map(|h| (h.name, h.sequence))
            .collect();
        let todo: Vec<ClusterImport> = db
            .pending_imports()?
            .into_iter()
            .filter(|i| !answered.contains(&(i.name.clone(), i.sequence)))
            .collect();
        for import in &todo {
            let mut data = DataDir::open(&self.data_dir, &self.location)?;
            let options = ImportOptions {
                allow_downgrade: import.allow_downgrade,
                allow_expired: import.allow_expired,
                ..Default::default()
            };
            let verdict = stage_shared(
                self,
                &mut data,
                keys,
                &import.bundle_file,
                options,
                &import.manifest_sha256,
            );
            let at = crate::clock::now_rfc3339();
            match &verdict {
                Ok(()) => {
                    tracing::info!(bundle = %import.name, sequence = import.sequence, by = %import.started_by, "staged a cluster import");
                    db.record_holding(&import.name, import.sequence, Ok(()), &at)?;
                }
                Err(e) => {
                    let reason = format!("{e:#}");
                    tracing::warn!(bundle = %import.name, sequence = import.sequence, by = %import.started_by, "refused a cluster import: {reason}");
                    db.record_holding(&import.name, import.sequence, Err(&reason), &at)?;
                }
            }
        }
        Ok(())
    }
}

/// Verifies and stages `file` from the shared folder into `data`, and checks that its manifest
/// is the one the importing instance verified (`manifest_sha256`).
fn stage_shared(
    cluster: &Cluster,
    data: &mut DataDir,
    keys: &TrustedKeys,
    file: &str,
    options: ImportOptions,
    manifest_sha256: &str,
) -> anyhow::Result<()> {
    let bundle = cluster.bundle_path(file);
    let signature = ferry_manifests::default_signature_path(&bundle);
    let input = BundleInput::File { bundle: &bundle, signature: &signature };
    anyhow::ensure!(
        bundle.is_file(),
        "{} is missing: is shared_dir mounted on this instance?",
        bundle.display()
    );
    let record = match data.stage(input, keys, options, &ferry_manifests::NoProgress)? {
        Staged::New(record) => record,
        Staged::Retained(record) => record,
    };
    if record.manifest_sha256 != manifest_sha256 {
        data.discard_staged(&record.name, record.sequence)?;
        anyhow::bail!(
            "{}: its manifest (SHA-256 {}) is not the one the cluster imported ({manifest_sha256})",
            bundle.display(),
            record.manifest_sha256
        );
    }
    Ok(())
}

/// Refuses (naming them) when a live instance does not hold release `name` `sequence`: making
/// it active would leave that instance with nothing it can serve.
pub(crate) fn held_everywhere(
    db: &mut dyn ClusterStore,
    name: &str,
    sequence: u64,
) -> anyhow::Result<()> {
    let holders: std::collections::HashSet<String> = db
        .holdings()?
        .into_iter()
        .filter(|h| h.name == name && h.sequence == sequence && h.state == "staged")
        .map(|h| h.instance)
        .collect();
    let lacking: Vec<String> = db
        .instances()?
        .into_iter()
        .filter(|i| i.live && !holders.contains(&i.name))
        .map(|i| i.name)
        .collect();
    anyhow::ensure!(
        lacking.is_empty(),
        "release {name} {sequence} is not held by live instance(s) {}: import its bundle again \
         so that every instance stages it",
        lacking.join(", ")
    );
    Ok(())
}

/// Imports a bundle into the cluster (see the module documentation); returns the release once
/// it is active on every instance. Waits at most `options.cluster_wait` for the other live
/// instances to stage it, saying on stderr whom it waits for.
pub(crate) fn import(
    cluster: &Cluster,
    data: &mut DataDir,
    bundle: &Path,
    signature: &Path,
    keys: &TrustedKeys,
    options: ImportOptions,
    progress: &dyn Progress,
) -> anyhow::Result<ReleaseRecord> {
    let record =
        match data.stage(BundleInput::File { bundle, signature }, keys, options, progress)? {
            Staged::Retained(record) => {
                data.reactivate(&record)?;
                return Ok(record);
            }
            Staged::New(record) => record,
        };
    let (name, sequence) = (record.name.clone(), record.sequence);
    let file = format!("{name}-{sequence}.ferry");
    let shared = || -> anyhow::Result<()> {
        let dir = cluster.shared_dir.join("bundles");
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {} (is shared_dir mounted?)", dir.display()))?;
        copy_synced(bundle, &cluster.bundle_path(&file))?;
        copy_synced(
            signature,
            &ferry_manifests::default_signature_path(&cluster.bundle_path(&file)),
        )
    };
    if let Err(e) = shared() {
        data.discard_staged(&name, sequence)?;
        return Err(e);
    }
    let now = crate::clock::now_rfc3339();
    let db = data.cluster.as_mut().expect("a cluster's data directory");
    db.begin_import(
        &ClusterImport {
            name: name.clone(),
            sequence,
            bundle_file: file,
            manifest_sha256: record.manifest_sha256.clone(),
            allow_downgrade: options.allow_downgrade,
            allow_expired: options.allow_expired,
            started_by: cluster.name().to_owned(),
            started_at: now.clone(),
            state: "staging".into(),
            reason: None,
        },
        &now,
    )?;
    let outcome = await_stagers(&mut **db, cluster.name(), &name, sequence, options.cluster_wait);
    if let Err(reason) = &outcome {
        db.end_import(&name, sequence, Err(reason))?;
        data.discard_staged(&name, sequence)?;
        anyhow::bail!("bundle {name} sequence {sequence} is active nowhere: {reason}");
    }
    data.activate_staged(&record, options.retain, keys)?;
    let db = data.cluster.as_mut().expect("a cluster's data directory");
    db.end_import(&name, sequence, Ok(()))?;
    if let Err(e) = prune_shared(cluster, &mut **db) {
        tracing::warn!(error = %format!("{e:#}"), "cannot remove bundles no release needs from the shared folder");
    }
    Ok(record)
}

/// Waits until every live instance staged release `name` `sequence` (`Ok`), one refused it or
/// `wait` passed (`Err` with why).
fn await_stagers(
    db: &mut dyn ClusterStore,
    me: &str,
    name: &str,
    sequence: u64,
    wait: Duration,
) -> Result<(), String> {
    let deadline = Instant::now() + wait;
    let mut said = Vec::new();
    loop {
        let mut step = || -> anyhow::Result<(Vec<String>, Vec<String>)> {
            let holdings: Vec<_> = db
                .holdings()?
                .into_iter()
                .filter(|h| h.name == name && h.sequence == sequence)
                .collect();
            let refused = holdings
                .iter()
                .filter(|h| h.state == "refused")
                .map(|h| {
                    format!(
                        "instance {} refused it: {}",
                        h.instance,
                        h.reason.as_deref().unwrap_or("")
                    )
                })
                .collect();
            let waiting = db
                .instances()?
                .into_iter()
                .filter(|i| {
                    i.live
                        && i.name != me
                        && !holdings.iter().any(|h| h.instance == i.name && h.state == "staged")
                })
                .map(|i| i.name)
                .collect();
            Ok((refused, waiting))
        };
        let (refused, waiting) = step().map_err(|e| format!("{e:#}"))?;
        if !refused.is_empty() {
            return Err(refused.join("; "));
        }
        if waiting.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "instance(s) {} did not stage it within {} s (see their logs; `ferry-appliance \
                 cluster` shows who is live)",
                waiting.join(", "),
                wait.as_secs()
            ));
        }
        if waiting != said {
            eprintln!("waiting for instance(s) {} to verify and stage it…", waiting.join(", "));
            said = waiting;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Removes from the shared folder the bundles of releases neither recorded nor being imported.
fn prune_shared(cluster: &Cluster, db: &mut dyn ClusterStore) -> anyhow::Result<()> {
    let mut keep: std::collections::HashSet<String> =
        db.releases()?.iter().map(|r| format!("{}-{}.ferry", r.name, r.sequence)).collect();
    keep.extend(db.pending_imports()?.into_iter().map(|i| i.bundle_file));
    for entry in std::fs::read_dir(cluster.shared_dir.join("bundles"))? {
        let path = entry?.path();
        let file = path.file_name().unwrap_or_default().to_string_lossy().into_owned();
        let bundle = file.strip_suffix(".minisig").unwrap_or(&file);
        if !keep.contains(bundle) {
            std::fs::remove_file(&path)?;
        }
    }
    db.prune_holdings()?;
    Ok(())
}

/// Copies `from` to `to` durably: through a temporary file, synced, then renamed.
fn copy_synced(from: &Path, to: &Path) -> anyhow::Result<()> {
    let tmp = to.with_extension(format!("tmp{}", std::process::id()));
    std::fs::copy(from, &tmp)
        .with_context(|| format!("cannot copy {} to {}", from.display(), tmp.display()))?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, to)?;
    if let Some(dir) = to.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// What `serve` shares with the cluster's threads.
pub(crate) struct Serving {
    pub app: Arc<crate::app::AppState>,
    pub hub: Arc<crate::fleet::hub::Hub>,
    pub keys: TrustedKeys,
    pub started_at: String,
}

/// A running instance's side of the cluster: its heartbeat, the stager and the listener.
pub(crate) struct Membership {
    cluster: Arc<Cluster>,
    serving: Arc<Serving>,
}

impl Membership {
    /// Starts the heartbeat and stager thread and the listening thread.
    pub(crate) fn start(cluster: Arc<Cluster>, serving: Arc<Serving>) -> anyhow::Result<Self> {
        let (kick, kicked) = mpsc::channel::<()>();
        let (c, s) = (Arc::clone(&cluster), Arc::clone(&serving));
        std::thread::Builder::new()
            .name("cluster-beat".into())
            .spawn(move || beat_and_stage(&c, &s, &kicked))?;
        let (c, s) = (Arc::clone(&cluster), Arc::clone(&serving));
        std::thread::Builder::new()
            .name("cluster-listen".into())
            .spawn(move || listen(&c, &s, &kick))?;
        Ok(Self { cluster, serving })
    }

    /// Says this instance stopped, so that imports stop waiting for it at once.
    pub(crate) fn leave(&self) {
        let left = self.cluster.store().and_then(|mut db| beat(&mut *db, &self.serving, "stopped"));
        if let Err(e) = left {
            tracing::warn!(error = %format!("{e:#}"), "cannot tell the cluster this instance stops");
        }
    }
}

fn beat(db: &mut dyn ClusterStore, serving: &Serving, state: &str) -> anyhow::Result<()> {
    let active = serving.app.active();
    let pointer = active.pointer();
    db.heartbeat(&Beat {
        started_at: &serving.started_at,
        version: env!("CARGO_PKG_VERSION"),
        state,
        active: pointer,
        parked: serving.hub.parked_count() as u64,
    })?;
    Ok(())
}

/// Every [`HEARTBEAT`], or when the listener says an import started: a heartbeat, then staging
/// what is pending.
fn beat_and_stage(cluster: &Cluster, serving: &Serving, kicked: &mpsc::Receiver<()>) {
    // One connection for the thread's life; the store opens it again when it is lost.
    let mut db = None;
    loop {
        if db.is_none() {
            db = cluster
                .store()
                .inspect_err(
                    |e| tracing::warn!(error = %format!("{e:#}"), "cluster heartbeat failed"),
                )
                .ok();
        }
        if let Some(db) = db.as_deref_mut() {
            let state = if serving.hub.draining() { "draining" } else { "serving" };
            if let Err(e) = beat(db, serving, state) {
                tracing::warn!(error = %format!("{e:#}"), "cluster heartbeat failed");
            }
            if let Err(e) = cluster.stage_pending(db, &serving.keys) {
                tracing::warn!(error = %format!("{e:#}"), "cannot stage the cluster's imports now; trying again");
            }
        }
        match kicked.recv_timeout(HEARTBEAT) {
            Ok(()) | Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        }
        // Several notifications of one import come together.
        while kicked.try_recv().is_ok() {}
    }
}

/// Listens for the other instances' notifications, for ever, reconnecting after a failure.
fn listen(cluster: &Cluster, serving: &Serving, kick: &mpsc::Sender<()>) {
    let mut first = true;
    loop {
        match listen_once(cluster, serving, kick, &mut first) {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "lost the cluster's notifications; reconnecting");
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    }
}

fn listen_once(
    cluster: &Cluster,
    serving: &Serving,
    kick: &mpsc::Sender<()>,
    first: &mut bool,
) -> anyhow::Result<()> {
    let mut db = cluster.store()?;
    db.listen(&[channel::ACTIONS, channel::AGENTS, channel::SECRETS, channel::IMPORTS])?;
    if !std::mem::take(first) {
        // Whatever was notified while not listening is lost: every parked agent looks again.
        serving.hub.wake_all();
        reload_secrets(&mut *db, serving)?;
        let _ = kick.send(());
    }
    loop {
        for (channel, payload) in db.notifications(Duration::from_secs(1))? {
            match channel.as_str() {
                channel::ACTIONS => {
                    let seq: i64 = payload.parse().context("an action notification's seq")?;
                    serving.hub.wake(&db.action_agents(seq)?);
                }
                channel::AGENTS => serving.hub.wake([&payload]),
                channel::SECRETS => reload_secrets(&mut *db, serving)?,
                channel::IMPORTS if kick.send(()).is_err() => return Ok(()),
                _ => {}
            }
        }
    }
}

fn reload_secrets(db: &mut dyn ClusterStore, serving: &Serving) -> anyhow::Result<()> {
    serving.app.reload_secrets(db.secret_records()?);
    Ok(())
}

/// `store copy`: a single appliance's SQLite state into the cluster's empty database (see
/// `store::postgres::copy`), then what the other instances need from this one: its releases
/// recorded as held here, its uploads in the shared folder, and a word on the bundles they
/// will catch up from.
pub(crate) fn copy_in(
    config: &Config,
    keys: &TrustedKeys,
    from: Option<&Path>,
    as_json: bool,
) -> anyhow::Result<std::process::ExitCode> {
    let Some(cluster) = Cluster::of(config)? else {
        anyhow::bail!(
            "store copy moves state into a cluster's PostgreSQL: configure [store] backend = \
             \"postgres\" and [cluster] first (see docs/high-availability.md)"
        );
    };
    let sqlite =
        from.map_or_else(|| config.data_dir.join(crate::store::sqlite::FILE), Path::to_owned);
    let mut db = cluster.store()?;
    let copied = crate::store::copy_sqlite(&sqlite, &cluster.location)
        .with_context(|| format!("cannot copy {} (nothing was copied)", sqlite.display()))?;
    let at = crate::clock::now_rfc3339();
    let mut missing = Vec::new();
    for r in db.releases()? {
        if crate::release::holds(&config.data_dir, &r.name, r.sequence)
            && crate::release::load_release_at(&config.data_dir, &r.name, r.sequence, keys).is_ok()
        {
            db.record_holding(&r.name, r.sequence, Ok(()), &at)?;
        }
        let file = format!("{}-{}.ferry", r.name, r.sequence);
        if !cluster.bundle_path(&file).is_file() {
            missing.push(file);
        }
    }
    let uploads = config.data_dir.join("uploads");
    let mut files = 0;
    if uploads.is_dir() {
        files = copy_tree(&uploads, &cluster.shared_dir.join("uploads"))?;
    }
    if as_json {
        let tables: serde_json::Map<String, serde_json::Value> =
            copied.iter().map(|(t, n)| (t.clone(), (*n).into())).collect();
        let doc = serde_json::json!({ "tables": tables, "upload_files": files,
                                      "bundles_missing": missing });
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        for (table, rows) in &copied {
            println!("{table}: {rows} row(s)");
        }
        println!(
            "uploads: {files} file(s) copied to {}",
            cluster.shared_dir.join("uploads").display()
        );
        if !missing.is_empty() {
            println!(
                "other instances catch up from {}: put these bundles and their .minisig there: {}",
                cluster.shared_dir.join("bundles").display(),
                missing.join(", ")
            );
        }
    }
    Ok(std::process::ExitCode::SUCCESS)
}

/// Copies the files under `from` into `to` (created), keeping the tree; returns how many.
fn copy_tree(from: &Path, to: &Path) -> anyhow::Result<usize> {
    std::fs::create_dir_all(to).with_context(|| format!("cannot create {}", to.display()))?;
    let mut files = 0;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            files += copy_tree(&entry.path(), &target)?;
        } else {
            copy_synced(&entry.path(), &target)?;
            files += 1;
        }
    }
    Ok(files)
}
