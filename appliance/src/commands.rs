//! The subcommands of `ferry-appliance`.

use std::collections::{BTreeMap, BTreeSet};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use ferry_manifests::{TerminalBar, TrustedKeys};
use serde_json::{Value, json};

use crate::audit::{Actor, AuditLog, Outcome};
use crate::cli::{Cli, Command, ImportArgs, RollbackArgs};
use crate::config::{Config, DEFAULT_CONFIG};
use crate::release::{BundleInput, DataDir, ImportOptions};
use crate::store::ReleaseRecord;

pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    if let Command::DefaultConfig = cli.command {
        print!("{DEFAULT_CONFIG}");
        return Ok(ExitCode::SUCCESS);
    }
    // Whatever this process creates (state.db and its WAL, tokens, releases, uploads, a
    // downloaded diagnostics bundle) is for its user alone, whatever umask it was started with.
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    let config = Config::load(&cli.config)?;
    let keys = TrustedKeys::load(&config.trusted_keys)?;
    if matches!(
        cli.command,
        Command::Import(_) | Command::Rollback(_) | Command::Gc | Command::Serve(_)
    ) {
        private_data_dir(&config.data_dir)?;
    }
    match cli.command {
        Command::DefaultConfig => unreachable!("handled above"),
        Command::Import(args) => import(&config, &keys, &args, cli.quiet),
        Command::Releases(args) => releases(&config, &keys, args.json),
        Command::Rollback(args) => rollback(&config, &keys, &args),
        Command::Fsck(args) => fsck(&config, &keys, args.json),
        Command::Holdings(args) => holdings(&config, args.json),
        Command::Gc => {
            let mut data = DataDir::open(&config.data_dir, &config.store_location()?)?;
            let result = data.gc(config.retain_releases, &keys);
            let details = match &result {
                Ok((releases, blobs)) => {
                    json!({ "releases_removed": releases, "blobs_removed": blobs })
                }
                Err(_) => Value::Null,
            };
            crate::audit::local(&config.data_dir, "gc", details, &result);
            let (releases, blobs) = result?;
            let parts = gc_parts(&config)?;
            println!("removed {releases} release(s), {blobs} blob(s) and {parts} parts folder(s)");
            Ok(ExitCode::SUCCESS)
        }
        Command::Serve(args) => serve(config, keys, args.takeover),
        Command::Status(args) => crate::admin::client::status(&config, &keys, args.json, false),
        Command::Health(args) => crate::admin::client::status(&config, &keys, args.json, true),
        Command::Cluster(args) => cluster(&config, args.json),
        Command::Audit(command) => crate::audit::command(&config, command),
        Command::Store(crate::cli::StoreCommand::Copy { from, json }) => {
            crate::cluster::copy_in(&config, &keys, from.as_deref(), json.json)
        }
        Command::Tokens(command) => crate::admin::client::tokens(&config, command),
        Command::Agents(command) => crate::admin::client::agents(&config, command),
        Command::Upgrade(args) => crate::admin::client::upgrade(&config, &args),
        Command::Unenroll(args) => crate::admin::client::unenroll(&config, &args),
        Command::Reassign(args) => crate::admin::client::reassign(&config, &args),
        Command::Settings(args) => crate::admin::client::settings(&config, &args),
        Command::Diagnostics(command) => crate::admin::client::diagnostics(&config, command),
        Command::Actions(command) => crate::admin::client::actions(&config, command),
        Command::Secrets(command) => crate::admin::client::secrets(&config, command),
        Command::Drain(args) => crate::admin::client::drain(&config, &args),
    }
}

/// Creates the data directory (mode 0700) when missing, and refuses one that another local
/// user could write to (group- or world-writable, or owned by someone other than this user or
/// root): they could replace the releases, read the agents' keys, or plant an admin socket.
pub(crate) fn private_data_dir(dir: &std::path::Path) -> anyhow::Result<()> {
    use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create the data directory {}", dir.display()))?;
    let meta = std::fs::metadata(dir).with_context(|| format!("cannot stat {}", dir.display()))?;
    let own = rustix::process::geteuid().as_raw();
    anyhow::ensure!(
        meta.uid() == own || meta.uid() == 0 || own == 0,
        "the data directory {} belongs to uid {}, not to this user (uid {own}) or root: run as its \
         owner (the service user), or `chown` it",
        dir.display(),
        meta.uid()
    );
    anyhow::ensure!(
        meta.mode() & 0o022 == 0,
        "the data directory {} is writable by other users (mode {:o}): they could replace its \
         releases or plant an admin socket; run `chmod 700 {}`",
        dir.display(),
        meta.mode() & 0o7777,
        dir.display()
    );
    Ok(())
}

fn import(
    config: &Config,
    keys: &TrustedKeys,
    args: &ImportArgs,
    quiet: bool,
) -> anyhow::Result<ExitCode> {
    let signature = args
        .signature
        .clone()
        .unwrap_or_else(|| ferry_manifests::default_signature_path(&args.bundle));
    let mut data = DataDir::open(&config.data_dir, &config.store_location()?)?;
    if crate::parts::is_parts_index(&args.bundle) {
        return import_parts(config, keys, args, &mut data, &signature, quiet);
    }
    let input = BundleInput::File { bundle: &args.bundle, signature: &signature };
    let record = import_release(config, keys, args, &mut data, input, quiet);
    report_import(config, keys, args, record)
}

/// `import NAME-SEQ.ferry.parts`: verify the index, gather parts, and once enough are here,
/// import the bundle they make up exactly as a bundle that came whole (`crate::parts` says
/// how).
fn import_parts(
    config: &Config,
    keys: &TrustedKeys,
    args: &ImportArgs,
    data: &mut DataDir,
    signature: &std::path::Path,
    quiet: bool,
) -> anyhow::Result<ExitCode> {
    use crate::parts::{Prepared, after_refusal, prepare, prepare_fast, verified_index, write_out};
    let progress = TerminalBar::new(quiet || args.json);
    let refused = |error: anyhow::Error| {
        let error = error.context(format!("import of {} refused", args.bundle.display()));
        crate::audit::local_error(
            &config.data_dir,
            "import",
            json!({ "file": args.bundle }),
            &error,
        );
        if args.json {
            print_refusal("imported", &error);
        }
        error
    };
    let index = verified_index(&args.bundle, signature, keys).map_err(refused)?;
    let name = std::path::PathBuf::from(format!("{} (from its parts)", index.bundle_file()));
    let cluster = crate::cluster::Cluster::of(config)?.is_some();
    // The quick way first (`prepare_fast`); a cluster writes the bundle out for the other
    // instances, so it takes the careful way, which checks every part before it is used.
    let fast = if cluster {
        None
    } else {
        prepare_fast(&config.data_dir, &args.bundle, &index, &args.parts_dirs).map_err(refused)?
    };
    if let Some((report, reader)) = fast {
        if !args.json {
            print_parts_report(&report);
        }
        let input =
            BundleInput::Read { source: reader, name: &name, signature: &index.bundle_signature };
        match import_release(config, keys, args, data, input, quiet) {
            Err(error) if damaged_parts(&error) => {
                tracing::warn!(error = %format!("{error:#}"), "the parts found do not make up the signed bundle; checking each against the index");
                if !args.json {
                    eprintln!(
                        "the parts found do not make up the signed bundle: checking each one \
                         against the index"
                    );
                }
            }
            record => {
                let code = report_import(config, keys, args, record)?;
                remove_parts_folder(&report.folder)?;
                return Ok(code);
            }
        }
    }
    let prepared = prepare(&config.data_dir, &args.bundle, &index, &args.parts_dirs, &progress)
        .map_err(refused)?;
    let (report, reader) = match prepared {
        Prepared::Incomplete(report) => {
            if args.json {
                let mut v = serde_json::to_value(&report)?;
                v["imported"] = json!(false);
                v["check"] = json!("parts-incomplete");
                v["still_needed"] = json!(report.still_needed());
                println!("{v}");
            } else {
                print_parts_report(&report);
            }
            eprintln!(
                "incomplete: {}; nothing imported, the verified parts are kept in {}: run the \
                 import again with the missing parts (--parts-dir DIR)",
                report.summary(),
                report.folder.display()
            );
            let details =
                json!({ "file": args.bundle, "have": report.have, "missing": report.missing });
            let log = crate::audit::AuditLog::new(&config.data_dir);
            log.record(Actor::local(), "import.parts-incomplete", Outcome::Ok, details);
            return Ok(ExitCode::from(crate::parts::EXIT_INCOMPLETE));
        }
        Prepared::Ready { report, reader } => (report, reader),
    };
    if !args.json {
        print_parts_report(&report);
    }
    let record = if cluster {
        // The other instances read the bundle from the shared folder: it must exist whole.
        let (bundle, signature) =
            write_out(&config.data_dir, &index, *reader, &progress).map_err(refused)?;
        let input = BundleInput::File { bundle: &bundle, signature: &signature };
        import_release(config, keys, args, data, input, quiet)
    } else {
        let input =
            BundleInput::Read { source: reader, name: &name, signature: &index.bundle_signature };
        import_release(config, keys, args, data, input, quiet)
    };
    match report_import(config, keys, args, record) {
        Ok(code) => {
            remove_parts_folder(&report.folder)?;
            Ok(code)
        }
        Err(error) => {
            after_refusal(&report.folder, &index);
            Err(error)
        }
    }
}

/// Whether an import from parts failed as a damaged part makes it fail: the bundle's signature
/// does not verify over the bytes read, or a part could not be read as it was found.
fn damaged_parts(error: &anyhow::Error) -> bool {
    crate::refusal_check(error) == Some("bundle-signature")
        || error.chain().any(|cause| {
            cause.downcast_ref::<ferry_manifests::VerifyError>().is_some_and(|e| e.check() == "io")
        })
}

/// Removes a bundle's parts folder once it is imported (usually gone already: the import removes
/// parts folders at or below the floor).
fn remove_parts_folder(folder: &std::path::Path) -> anyhow::Result<()> {
    match std::fs::remove_dir_all(folder) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("cannot remove {}", folder.display()))
        }
        _ => Ok(()),
    }
}

fn print_parts_report(report: &crate::parts::PartsReport) {
    println!("parts of {} sequence {}: {}", report.name, report.sequence, report.summary());
    for bad in &report.damaged {
        println!("refused {}: {} check: {}", bad.path.display(), bad.check, bad.problem);
    }
    for other in &report.other_bundles {
        println!("ignored {}: a part of another bundle (part-other-bundle)", other.display());
    }
    if !report.rebuilt.is_empty() {
        println!("rebuilt from parity: {}", report.rebuilt.join(", "));
    }
}

/// Verifies and activates the bundle `input` gives (one that came whole, or one read from its
/// parts), on this appliance or its cluster; [`report_import`] reports it.
fn import_release(
    config: &Config,
    keys: &TrustedKeys,
    args: &ImportArgs,
    data: &mut DataDir,
    input: BundleInput<'_>,
    quiet: bool,
) -> anyhow::Result<ReleaseRecord> {
    let options = ImportOptions {
        allow_downgrade: args.allow_downgrade,
        allow_expired: args.allow_expired,
        expiry_tolerance: time::Duration::days(i64::from(config.expiry_tolerance_days)),
        retain: config.retain_releases,
        catch_up: false,
        cluster_wait: Duration::from_secs(args.cluster_wait),
    };
    let progress = TerminalBar::new(quiet || args.json);
    match crate::cluster::Cluster::of(config)? {
        None => data.import(input, keys, options, &progress),
        Some(cluster) => match input {
            BundleInput::File { bundle, signature } => {
                crate::cluster::import(&cluster, data, bundle, signature, keys, options, &progress)
            }
            BundleInput::Read { .. } => {
                Err(anyhow::anyhow!("a cluster imports only bundle files (write the bundle out)"))
            }
        },
    }
    .with_context(|| format!("import of {} refused", args.bundle.display()))
}

/// Records an import's outcome in the audit log and tells the operator; after a success,
/// collects the parts of older bundles and names the secrets the new policies lack.
fn report_import(
    config: &Config,
    keys: &TrustedKeys,
    args: &ImportArgs,
    record: anyhow::Result<ReleaseRecord>,
) -> anyhow::Result<ExitCode> {
    let activated = record.as_ref().ok().map(|r| {
        json!({ "name": r.name, "sequence": r.sequence, "key_id": r.key_id, "manifest_sha256": r.manifest_sha256 })
    });
    let details = json!({
        "file": args.bundle,
        "allow_downgrade": args.allow_downgrade,
        "allow_expired": args.allow_expired,
        "activated": activated,
    });
    crate::audit::local(&config.data_dir, "import", details, &record);
    let record = match record {
        Ok(record) => record,
        Err(error) => {
            if args.json {
                print_refusal("imported", &error);
            }
            return Err(error);
        }
    };
    if args.json {
        println!("{}", serde_json::to_string(&record)?);
    } else {
        println!(
            "active: {} sequence {} ({} files, {} bytes, signed by {})",
            record.name, record.sequence, record.entries, record.payload_bytes, record.key_id
        );
    }
    // Parts of this bundle and of older ones are of no use any more.
    if let Err(e) = gc_parts(config) {
        tracing::warn!(error = %e, "removing the parts of imported bundles failed; run `ferry-appliance gc`");
    }
    // Secrets the new release's policies need that are not set on this appliance: those
    // policies are not delivered until they are (stderr, so `--json` stays one document).
    for (policy, ids) in secrets_not_set(config, keys, &record)? {
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        eprintln!(
            "policy {policy} needs secret(s) not set here: {} (set each with `ferry-appliance \
             secrets set ID`; until then agents keep the policy they run)",
            ids.join(", ")
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Removes the parts folders of bundles at or below their name's floor.
fn gc_parts(config: &Config) -> anyhow::Result<usize> {
    let Some(store) = crate::store::open_existing(&config.store_location()?)? else {
        return Ok(0);
    };
    crate::parts::gc(&config.data_dir, &|name| Ok(store.floor(name)?))
}

/// The secret ids each policy of release `record` needs and the store does not hold.
fn secrets_not_set(
    config: &Config,
    keys: &TrustedKeys,
    record: &ReleaseRecord,
) -> anyhow::Result<BTreeMap<String, BTreeSet<String>>> {
    let pointer = Some((record.name.clone(), record.sequence));
    let crate::release::Active::Ready(release) =
        crate::release::Active::load(&config.data_dir, pointer, keys)
    else {
        return Ok(BTreeMap::new());
    };
    let blobs = ferry_artifacts::BlobStore::open(&config.data_dir.join("blobs"))?;
    let set: BTreeSet<String> = match crate::store::open_existing(&config.store_location()?)? {
        Some(store) => store.secret_records()?.into_iter().map(|r| r.id).collect(),
        None => BTreeSet::new(),
    };
    let mut missing = release.policy_secret_ids(&blobs)?;
    for ids in missing.values_mut() {
        ids.retain(|id| !set.contains(id));
    }
    missing.retain(|_, ids| !ids.is_empty());
    Ok(missing)
}

/// What this appliance holds, for a delta made against it on the connected side.
fn holdings(config: &Config, as_json: bool) -> anyhow::Result<ExitCode> {
    let data = DataDir::open(&config.data_dir, &config.store_location()?)?;
    let held = data.holdings()?;
    if as_json {
        use std::io::Write as _;
        std::io::stdout().write_all(&held.to_bytes())?;
        return Ok(ExitCode::SUCCESS);
    }
    if held.releases.is_empty() {
        println!("no release held: the first bundle this appliance imports must be a full one");
    } else {
        println!("releases held (the active one, *, is the base a delta is made against):");
        let rows = held.releases.iter().map(|r| {
            vec![
                if r.active { "*" } else { " " }.to_owned(),
                r.name.to_string(),
                r.sequence.to_string(),
                r.manifest_sha256.to_hex(),
            ]
        });
        print!(
            "{}",
            ferry_manifests::terminal::table(&["", "NAME", "SEQUENCE", "MANIFEST SHA256"], rows)
        );
    }
    let bytes: u64 = held.blobs.iter().map(|b| b.size).sum();
    println!(
        "
blobs: {} ({bytes} bytes)",
        held.blobs.len()
    );
    println!(
        "
For a delta: carry the output of `ferry-appliance holdings --json > holdings.json` to \
         the connected side and build with `ferry build SPEC --base holdings.json`."
    );
    Ok(ExitCode::SUCCESS)
}

/// A refusal's verdict on stdout for scripts (`{"<done>": false, "check", "error"}`); the message
/// still goes to stderr.
fn print_refusal(done: &str, error: &anyhow::Error) {
    let check = crate::refusal_check(error);
    let message = ferry_manifests::terminal::error_line(error.as_ref());
    println!("{}", json!({ done: false, "check": check, "error": message }));
}

/// What a retained release is now: `active` (the active one, and it verifies), `retained` (it
/// verifies: rollback may re-activate it), `untrusted` (signed by a key no longer in
/// `trusted_keys`) or `damaged` (its stored manifest fails another check). Only the manifest
/// is verified here; `fsck` and `rollback` re-hash the blobs too.
fn release_state(data: &DataDir, keys: &TrustedKeys, r: &ReleaseRecord, active: bool) -> Value {
    let (state, check, problem) = match data.load_release(&r.name, r.sequence, keys) {
        Ok(_) => (if active { "active" } else { "retained" }, None, None),
        Err(e) => {
            let state = if e.is_untrusted() { "untrusted" } else { "damaged" };
            (state, Some(e.check()), Some(e.error.to_string()))
        }
    };
    json!({ "state": state, "check": check, "problem": problem })
}

fn releases(config: &Config, keys: &TrustedKeys, as_json: bool) -> anyhow::Result<ExitCode> {
    let mut data = DataDir::open(&config.data_dir, &config.store_location()?)?;
    let active = data.active_release(keys)?;
    let releases = data.releases()?;
    // In a cluster: which instance holds (or refused) each release.
    let holdings = match &mut data.cluster {
        Some(db) => Some(db.holdings()?),
        None => None,
    };
    let held_by = |r: &ReleaseRecord| -> Vec<&crate::store::Holding> {
        holdings.iter().flatten().filter(|h| h.name == r.name && h.sequence == r.sequence).collect()
    };
    let list: Vec<Value> = releases
        .iter()
        .map(|r| {
            let is_active = active.pointer() == Some((r.name.as_str(), r.sequence));
            let mut v = serde_json::to_value(r).expect("serialisable");
            v["active"] = json!(is_active);
            let state = release_state(&data, keys, r, is_active);
            for field in ["state", "check", "problem"] {
                v[field] = state[field].clone();
            }
            if holdings.is_some() {
                v["instances"] = json!(held_by(r));
            }
            v
        })
        .collect();
    if as_json {
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(ExitCode::SUCCESS);
    }
    if !releases.is_empty() {
        let rows = releases.iter().zip(&list).map(|(r, v)| {
            vec![
                if v["active"] == true { "*" } else { " " }.to_owned(),
                r.name.clone(),
                r.sequence.to_string(),
                r.created.clone(),
                r.expires.clone(),
                r.key_id.clone(),
                r.payload_bytes.to_string(),
                v["state"].as_str().unwrap_or_default().to_owned(),
                held_by(r)
                    .iter()
                    .map(|h| match h.state.as_str() {
                        "staged" => h.instance.clone(),
                        state => format!("{} ({state})", h.instance),
                    })
                    .collect::<Vec<_>>()
                    .join(" "),
            ]
        });
        let mut headers =
            vec!["", "NAME", "SEQUENCE", "CREATED", "EXPIRES", "SIGNER", "SIZE", "STATE"];
        let rows: Vec<Vec<String>> = match holdings {
            Some(_) => {
                headers.push("HELD BY");
                rows.collect()
            }
            None => rows
                .map(|mut row| {
                    row.pop();
                    row
                })
                .collect(),
        };
        print!("{}", ferry_manifests::terminal::table(&headers, rows.into_iter()));
    }
    for (r, v) in releases.iter().zip(&list) {
        if let (false, Some(problem)) = (v["active"] == true, v["problem"].as_str()) {
            let fix = match v["state"].as_str() {
                Some("untrusted") => "`ferry-appliance gc` removes it",
                _ => "see `ferry-appliance fsck`",
            };
            println!(
                "release {} {} cannot be rolled back to: {problem}; {fix}",
                r.name, r.sequence
            );
        }
    }
    // Whatever the list holds, say when there is nothing to serve, in the words `serve`,
    // `status` and the admin API use.
    if let Some(trouble) = active.trouble() {
        println!("{trouble}");
    }
    Ok(ExitCode::SUCCESS)
}

/// `cluster`: the instances sharing this appliance's store, and the imports underway. Exits 1
/// when an instance that served is not live now, or an import was refused.
fn cluster(config: &Config, as_json: bool) -> anyhow::Result<ExitCode> {
    let Some(cluster) = crate::cluster::Cluster::of(config)? else {
        anyhow::bail!(
            "this appliance is not in a cluster: [cluster] and store.backend = \"postgres\" \
             are not configured (see docs/high-availability.md)"
        );
    };
    let mut db = cluster.store()?;
    let instances = db.instances()?;
    let imports = db.pending_imports()?;
    let holdings = db.holdings()?;
    let lost: Vec<&str> = instances
        .iter()
        .filter(|i| !i.live && i.state != "stopped")
        .map(|i| i.name.as_str())
        .collect();
    if as_json {
        let imports: Vec<Value> = imports
            .iter()
            .map(|i| {
                let verdicts: Vec<_> = holdings
                    .iter()
                    .filter(|h| h.name == i.name && h.sequence == i.sequence)
                    .collect();
                json!({ "name": i.name, "sequence": i.sequence, "started_by": i.started_by,
                        "started_at": i.started_at, "instances": verdicts })
            })
            .collect();
        let doc = json!({ "instance": cluster.name(), "instances": instances, "imports": imports });
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        let rows = instances.iter().map(|i| {
            vec![
                if i.name == cluster.name() { "*" } else { " " }.to_owned(),
                i.name.clone(),
                match (i.live, i.state.as_str()) {
                    (true, state) => state.to_owned(),
                    (false, "stopped") => "stopped".to_owned(),
                    (false, _) => "lost".to_owned(),
                },
                i.version.clone(),
                i.active.as_ref().map_or("-".to_owned(), |(n, s)| format!("{n} {s}")),
                i.parked.to_string(),
                format!("{} s ago", i.seconds_since_seen),
            ]
        });
        let headers = ["", "INSTANCE", "STATE", "VERSION", "ACTIVE", "PARKED", "SEEN"];
        print!("{}", ferry_manifests::terminal::table(&headers, rows));
        for i in &imports {
            let verdicts: Vec<String> = holdings
                .iter()
                .filter(|h| h.name == i.name && h.sequence == i.sequence)
                .map(|h| format!("{} {}", h.instance, h.state))
                .collect();
            println!(
                "import underway: {} {} from {} since {} ({})",
                i.name,
                i.sequence,
                i.started_by,
                i.started_at,
                verdicts.join(", ")
            );
        }
        if !lost.is_empty() {
            println!(
                "not heard from for over {} s: {} (stopped without saying so, or cut off from \
                 the database)",
                crate::store::LIVE_SECONDS,
                lost.join(", ")
            );
        }
    }
    Ok(if lost.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

fn rollback(config: &Config, keys: &TrustedKeys, args: &RollbackArgs) -> anyhow::Result<ExitCode> {
    let mut data = DataDir::open(&config.data_dir, &config.store_location()?)?;
    let result = data.rollback(args.sequence, keys);
    let activated =
        result.as_ref().ok().map(|(name, sequence)| json!({ "name": name, "sequence": sequence }));
    let details = json!({ "requested": args.sequence, "activated": activated });
    crate::audit::local(&config.data_dir, "rollback", details, &result);
    let (name, sequence) = match result {
        Ok(done) => done,
        Err(error) => {
            if args.json {
                print_refusal("activated", &error);
            }
            return Err(error);
        }
    };
    if args.json {
        println!("{}", json!({ "activated": true, "name": name, "sequence": sequence }));
    } else {
        println!("active: {name} sequence {sequence}");
    }
    Ok(ExitCode::SUCCESS)
}

fn fsck(config: &Config, keys: &TrustedKeys, as_json: bool) -> anyhow::Result<ExitCode> {
    let data = DataDir::open(&config.data_dir, &config.store_location()?)?;
    let (checked, damage) = data.fsck(keys)?;
    let verdict = if damage.is_empty() { Outcome::Ok } else { Outcome::Refused };
    let details = json!({ "checked": checked, "damaged": damage.len() });
    AuditLog::new(&config.data_dir).record(Actor::local(), "fsck", verdict, details);
    if as_json {
        println!("{}", json!({ "checked": checked, "damaged": damage }));
    } else if damage.is_empty() {
        println!("{checked} files checked, all intact");
    } else {
        for d in &damage {
            println!("DAMAGED {} {}: {}", d.release, d.path, d.problem);
        }
        println!("{checked} files checked, {} damaged", damage.len());
    }
    Ok(if damage.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// The file a `serve --takeover` creates to ask the running `serve` to stop.
const TAKEOVER_FILE: &str = "serve.takeover";

/// The listening socket for `addr`: the one systemd passed when socket-activated, else one
/// that a second `serve` may bind too (`SO_REUSEPORT`): what lets `serve --takeover` replace a
/// running server without refusing a single connection. Unless taking over, the address must
/// be free: a plain bind first makes sure no other process (another appliance on another data
/// directory, say) would silently share the port.
fn listen(
    inherited: &mut crate::net::activation::Inherited,
    addr: std::net::SocketAddr,
    takeover: bool,
) -> anyhow::Result<tokio::net::TcpListener> {
    if let Some(listener) = inherited.take(addr)? {
        tracing::info!(%addr, "listening on the socket systemd passed");
        return Ok(listener);
    }
    if inherited.activated() {
        tracing::warn!(%addr, "socket-activated, but not for this address: bound here, so a restart refuses its connections");
    }
    let socket = || {
        if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()
        } else {
            tokio::net::TcpSocket::new_v6()
        }
    };
    if !takeover && addr.port() != 0 {
        let probe = socket()?;
        probe.set_reuseaddr(true)?;
        probe.bind(addr).with_context(|| format!("cannot listen on {addr}"))?;
    }
    let socket = socket()?;
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    socket.bind(addr).with_context(|| format!("cannot listen on {addr}"))?;
    // A deep backlog: after a restart, every agent reconnects within about a second.
    Ok(socket.listen(4096)?)
}

/// Resolves once another `serve --takeover` asks this one to stop.
async fn takeover_requested(data_dir: std::path::PathBuf) {
    let path = data_dir.join(TAKEOVER_FILE);
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if path.exists() {
            tracing::info!("another serve is taking over");
            return;
        }
    }
}

fn serve(config: Config, keys: TrustedKeys, takeover: bool) -> anyhow::Result<ExitCode> {
    // One serving process per data directory; a takeover waits for the old one to leave.
    let lock_path = config.data_dir.join("serve.lock");
    let lock = std::fs::File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .with_context(|| format!("cannot open {}", lock_path.display()))?;
    let must_wait = match lock.try_lock() {
        Ok(()) => false,
        Err(std::fs::TryLockError::WouldBlock) if takeover => true,
        Err(std::fs::TryLockError::WouldBlock) => anyhow::bail!(
            "another `ferry-appliance serve` is running on {}: stop it first, or start this one \
             with --takeover to replace it without agents noticing",
            config.data_dir.display()
        ),
        Err(std::fs::TryLockError::Error(e)) => return Err(e.into()),
    };
    // The blocking pool runs SQLite calls (serialised by one connection anyway) and file reads.
    // Left at tokio's 512, a burst of check-ins parks hundreds of threads on the database lock,
    // each keeping its stack and malloc arena: most of the memory a parked agent seemed to cost.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .max_blocking_threads(16)
        .enable_all()
        .build()?;
    let mut inherited = crate::net::activation::Inherited::from_env()?;
    runtime.block_on(async move {
        let mut listen = |addr| listen(&mut inherited, addr, must_wait);
        let listeners = Listeners {
            agents: listen(config.server.listen)?,
            mirror: config.server.mirror_listen.map(&mut listen).transpose()?,
            metrics: config.server.metrics_listen.map(&mut listen).transpose()?,
        };
        inherited.finish()?;
        let takeover_path = config.data_dir.join(TAKEOVER_FILE);
        let _lock = if must_wait {
            // Connections meanwhile wait in our listeners' backlog.
            std::fs::write(&takeover_path, std::process::id().to_string())?;
            eprintln!("taking over from the running serve…");
            tokio::time::timeout(
                Duration::from_secs(60),
                tokio::task::spawn_blocking(move || lock.lock().map(|()| lock)),
            )
            .await
            .context("the running serve did not stop within 60 s")???
        } else {
            lock
        };
        let _ = std::fs::remove_file(&takeover_path);
        // Ctrl-C or SIGTERM (systemd's stop): stop accepting, write queued check-in reports.
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let data_dir = config.data_dir.clone();
        let shutdown = async move {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
                () = takeover_requested(data_dir) => {}
            }
            tracing::info!("stopping");
        };
        let audit = crate::audit::AuditLog::new(&config.data_dir);
        let started = json!({ "version": env!("CARGO_PKG_VERSION"), "takeover": must_wait });
        let record = |event: &str, details| {
            audit.record(crate::audit::Actor::Server, event, crate::audit::Outcome::Ok, details);
        };
        record("serve.start", started);
        let served = run_server(&config, keys, listeners, shutdown).await;
        record("serve.stop", json!({ "error": served.as_ref().err().map(|e| format!("{e:#}")) }));
        served
    })?;
    Ok(ExitCode::SUCCESS)
}

/// The already-bound listeners `serve` runs on. The admin socket is not among them: only the
/// process holding `serve.lock` binds it (in [`run_server`]), after a server it takes over from
/// has removed its own.
pub(crate) struct Listeners {
    /// TLS: the agent API, the mirror and the PGP key.
    pub agents: tokio::net::TcpListener,
    /// Plain HTTP: the mirror only.
    pub mirror: Option<tokio::net::TcpListener>,
    /// Plain HTTP: `/metrics` only.
    pub metrics: Option<tokio::net::TcpListener>,
}

/// Serves the appliance on already-bound listeners and the admin socket until `shutdown`
/// resolves, then writes the check-in reports still in memory. The caller holds `serve.lock`.
pub(crate) async fn run_server(
    config: &Config,
    keys: TrustedKeys,
    listeners: Listeners,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    private_data_dir(&config.data_dir)?;
    let blobs = ferry_artifacts::BlobStore::open(&config.data_dir.join("blobs"))?;
    let (mut crl, mut quick_start_ca) = (None, None);
    let tls = if config.server.tls {
        let (cert, key) = match (&config.server.tls_cert, &config.server.tls_key) {
            (Some(c), Some(k)) => (c.clone(), k.clone()),
            _ => {
                let qs = crate::net::tls::QuickStart::paths(&config.data_dir);
                if qs.ensure(&config.public_url)? {
                    tracing::warn!(ca = %qs.ca_cert.display(), "quick-start: made a local CA and server certificate");
                }
                println!(
                    "quick-start TLS: agents need --certificate-authorities={}",
                    qs.ca_cert.display()
                );
                // Quick-start CAs made before the CRL existed have none; their certificate
                // names no distribution point either.
                crl = std::fs::read(&qs.crl).ok();
                quick_start_ca = Some(qs.ca_cert);
                (qs.server_cert, qs.server_key)
            }
        };
        Some(crate::net::tls::server_config(&cert, &key)?)
    } else {
        tracing::warn!("server.tls = false: agents are served over plain HTTP");
        None
    };
    let download_ca =
        crate::config::download_ca(config.server.download_ca.as_ref(), quick_start_ca.as_deref())?;
    let limits = crate::routes::limits(&config.limits)?;
    // One connection for the watcher, the agent API and the admin API; WAL lets imports
    // commit meanwhile. Opened, as every store call is made, on a blocking thread: a server
    // database's client blocks.
    let location = config.store_location()?;
    let (db, secrets, credentials, pointer) = tokio::task::spawn_blocking(move || {
        let store = crate::store::open(&location)?;
        let read = (store.secret_records()?, store.credential_ids()?, store.active()?);
        let db: crate::store::Db = Arc::new(std::sync::Mutex::new(store));
        Ok::<_, crate::store::StoreError>((db, read.0, read.1, read.2))
    })
    .await??;
    let secret_box = crate::secrets::SecretBox::open_or_create(
        &config.data_dir,
        config.secrets.key_file.as_deref(),
        secrets.len(),
    )?;
    tracing::info!(
        secrets = secrets.len(),
        key = %secret_box.key_file().display(),
        "on-site secrets"
    );
    let state = Arc::new(crate::app::AppState::new(blobs, crl, secret_box, secrets));
    // Said at start rather than at the first policy that needs the value: a key file replaced
    // or restored from the wrong backup.
    if let Err(e) = state.secret_values() {
        tracing::warn!("{e}");
    }
    limits.prove(credentials.iter().map(String::as_str));
    let cluster = crate::cluster::Cluster::of(config)?.map(Arc::new);
    if let Some(cluster) = &cluster {
        // An instance that was away catches up before it answers any agent: the release the
        // cluster serves must be here.
        if let Some((name, sequence)) = pointer {
            let (c, k) = (Arc::clone(cluster), keys.clone());
            tokio::task::spawn_blocking(move || c.catch_up(&k, &name, sequence))
                .await?
                .context("this instance cannot serve the cluster's active release")?;
        }
        println!(
            "cluster instance {} (shared folder {})",
            cluster.name(),
            cluster.shared_dir.display()
        );
    }
    crate::app::watch_active(
        Arc::clone(&state),
        Arc::clone(&db),
        config.data_dir.clone(),
        keys.clone(),
        cluster.clone(),
    )
    .await;
    let hub = Arc::new(crate::fleet::hub::Hub::default());
    let membership = match &cluster {
        Some(cluster) => Some(crate::cluster::Membership::start(
            Arc::clone(cluster),
            Arc::new(crate::cluster::Serving {
                app: Arc::clone(&state),
                hub: Arc::clone(&hub),
                keys,
                started_at: crate::clock::now_rfc3339(),
            }),
        )?),
        None => None,
    };
    crate::fleet::hub::spawn_flusher(Arc::clone(&hub), Arc::clone(&db));
    if let Some(es) = &config.elasticsearch {
        let elastic = crate::elastic::Elastic::start(es, Arc::clone(&db), Arc::clone(&hub)).await?;
        let health = elastic.health();
        match health.state {
            crate::elastic::State::Ok => {
                println!("elasticsearch: ok ({})", health.principal.unwrap_or_default());
            }
            state => println!("elasticsearch: {state}: {}", health.message),
        }
        let _ = state.elastic.set(elastic);
    }
    // A cluster keeps uploads in its shared folder: the agent may send each chunk through
    // another instance, and any instance serves the finished file.
    let uploads_dir = match &cluster {
        Some(cluster) => cluster.shared_dir.join("uploads"),
        None => config.data_dir.join("uploads"),
    };
    std::fs::create_dir_all(&uploads_dir)?;
    let agents = Arc::new(crate::fleet::AgentApi {
        state: Arc::clone(&db),
        app: Arc::clone(&state),
        hub: Arc::clone(&hub),
        public_base: config.public_base().to_owned(),
        long_poll: Duration::from_secs(config.server.checkin_long_poll_seconds),
        jitter: Duration::from_secs(config.server.checkin_jitter_seconds),
        uploads_dir: uploads_dir.clone(),
        max_upload_bytes: config.server.max_upload_mib.saturating_mul(1 << 20),
        policies: crate::fleet::PolicyCache::default(),
        download_ca,
        artifacts: crate::fleet::artifacts::Artifacts::default(),
    });
    let admin = Arc::new(crate::admin::Admin {
        state: Arc::clone(&db),
        agents: Arc::clone(&agents),
        app: Arc::clone(&state),
        hub: Arc::clone(&hub),
        public_base: config.public_base().to_owned(),
        uploads_dir,
        token: crate::admin::mint_token(&config.data_dir)?,
        offline_after: Duration::from_secs(config.server.agent_offline_seconds),
        audit: crate::audit::AuditLog::new(&config.data_dir),
        metrics: crate::metrics::Scraper::new(config.server_certificate()),
        listen: listeners.agents.local_addr()?,
        cluster: cluster.clone(),
    });
    // Written by versions that served the admin API on TCP; nothing reads it now.
    let _ = std::fs::remove_file(config.data_dir.join("admin.url"));
    let admin_socket = crate::admin::bind(&config.data_dir)?;
    let connections = crate::net::http1::ConnLimits {
        header_timeout: Duration::from_secs(config.server.header_timeout_seconds),
        body_timeout: Duration::from_secs(60),
        body_limit: crate::routes::body_limit,
        // Stopping or draining: agents' connections close after each response.
        closing: hub.closing(),
    };
    println!(
        "serving {}://{} (public URL {})",
        if tls.is_some() { "https" } else { "http" },
        listeners.agents.local_addr()?,
        config.public_base()
    );
    let caps = crate::net::connections::configure(config.server.max_connections_per_address);
    println!(
        "connections: at most {} ({} per client address; {} open files)",
        caps.cap, caps.per_address, caps.open_files
    );
    let socket_path = config.data_dir.join(crate::admin::SOCKET_FILE);
    println!("admin API on {}", socket_path.display());
    let router = crate::routes::router(Arc::clone(&state), agents, &limits, tls.is_some());
    let main = crate::net::serve(listeners.agents, tls, router, connections.clone(), shutdown);
    // The admin side stops with the agent side, and removes its socket.
    let (stop_admin, stopped) = tokio::sync::oneshot::channel::<()>();
    let metrics = match listeners.metrics {
        Some(m) => {
            println!("serving metrics on http://{}/metrics", m.local_addr()?);
            let token = crate::metrics::token(&config.data_dir)?;
            let router = crate::metrics::router(Arc::clone(&admin), token);
            Some(crate::net::serve(m, None, router, connections.clone(), std::future::pending()))
        }
        None => None,
    };
    let metrics = async {
        match metrics {
            Some(m) => m.await,
            None => std::future::pending().await,
        }
    };
    let admin_server = crate::admin::serve(
        admin_socket,
        socket_path,
        crate::admin::router(admin),
        // The admin side is not drained: only a stop closes its connections.
        crate::net::http1::ConnLimits {
            body_limit: crate::admin::body_limit,
            closing: hub.stopping(),
            ..connections.clone()
        },
        async move {
            let _ = stopped.await;
        },
    );
    let mirror = async {
        match listeners.mirror {
            Some(m) => {
                println!("serving the mirror on http://{}", m.local_addr()?);
                let router = crate::routes::plain_router(state);
                crate::net::serve(m, None, router, connections, std::future::pending()).await
            }
            None => std::future::pending().await,
        }
    };
    let served = async {
        let result = tokio::select! { r = main => r, r = mirror => r, r = metrics => r };
        let _ = stop_admin.send(());
        result
    };
    let (result, admin_result) = tokio::join!(served, admin_server);
    let result = result.and(admin_result);
    // Drain: parked check-ins answer "nothing to do" (bounded wait), then reports are written.
    hub.stop();
    let drained = tokio::time::Instant::now() + Duration::from_secs(10);
    while hub.parked_count() > 0 && tokio::time::Instant::now() < drained {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The last answers are still being written by their connections.
    tokio::time::sleep(Duration::from_millis(300)).await;
    tokio::task::spawn_blocking(move || hub.flush(&db, false)).await??;
    if let Some(membership) = membership {
        tokio::task::spawn_blocking(move || membership.leave()).await?;
    }
    result
}
