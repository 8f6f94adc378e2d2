//! The subcommands of `ferry`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use ferry_manifests::{
    Compression, Discard, Expiry, Kind, Limits, Manifest, SignedBundle, VerifyError,
};
use serde_json::json;
use time::OffsetDateTime;

use crate::cli::{
    BuildArgs, CacheArgs, Cli, Command, CompressionArg, InspectArgs, KeygenArgs, PlanArgs,
    SplitArgs, VerifyArgs,
};
use crate::defend::{DefendFailure, DefendPlan};
use crate::fetch::{self, Cache, Fetcher, PlannedFile};
use crate::intake::{self, UpstreamPlan};
use crate::keys::{self, PasswordSource};
use crate::registry::{self, RegistryPlan};
use crate::spec::{self, Spec};
use ferry_manifests::TerminalBar as Bar;
use ferry_manifests::terminal::error_line;

/// Runs one command. Output for people and machines goes to stdout; logs go to stderr.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Keygen(args) => keygen(&args),
        Command::Plan(args) => plan(&args),
        Command::Build(args) => build(&args, cli.quiet),
        Command::Verify(args) => verify(&args, cli.quiet),
        Command::Inspect(args) => inspect(&args),
        Command::Split(args) => split(&args, cli.quiet),
    }
}

fn keygen(args: &KeygenArgs) -> anyhow::Result<ExitCode> {
    let password = if args.without_password {
        None
    } else {
        let source = PasswordSource { file: args.password.password_file.clone() };
        Some(source.get("Password for the new secret key: ", true)?)
    };
    let outcome =
        keys::keygen(&args.secret_key, &args.public_key, password.as_deref(), args.force)?;
    if args.json {
        println!(
            "{}",
            json!({
                "key_id": outcome.key_id.to_string(),
                "secret_key": args.secret_key,
                "public_key": args.public_key,
                "encrypted": outcome.encrypted,
            })
        );
    } else {
        println!("key id      {}", outcome.key_id);
        println!(
            "secret key  {}{}",
            args.secret_key.display(),
            if outcome.encrypted { "" } else { " (NOT password-protected)" }
        );
        println!("public key  {}", args.public_key.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// The creation time: the flag, then SOURCE_DATE_EPOCH, then now (whole seconds).
fn created_time(flag: Option<&str>) -> anyhow::Result<OffsetDateTime> {
    if let Some(text) = flag {
        return spec::parse_time(text).context("--created");
    }
    if let Ok(epoch) = std::env::var("SOURCE_DATE_EPOCH") {
        let secs: i64 = epoch
            .trim()
            .parse()
            .with_context(|| format!("SOURCE_DATE_EPOCH={epoch:?} is not a number of seconds"))?;
        return OffsetDateTime::from_unix_timestamp(secs).context("SOURCE_DATE_EPOCH out of range");
    }
    let now = OffsetDateTime::now_utc();
    Ok(now.replace_nanosecond(0).expect("0 ns is valid"))
}

fn compression(args: &BuildArgs) -> anyhow::Result<Compression> {
    Ok(match args.compression {
        CompressionArg::Zstd => {
            let level = args.level.unwrap_or(3);
            if !(1..=19).contains(&level) {
                bail!("--level {level}: zstd levels are 1 to 19");
            }
            let Compression::Zstd { workers, .. } = Compression::default_zstd() else {
                unreachable!("default_zstd is zstd")
            };
            let workers = args.threads.unwrap_or(workers);
            if workers == 0 {
                bail!("--threads must be at least 1");
            }
            Compression::Zstd { level: level as i32, workers }
        }
        CompressionArg::Gzip => {
            let level = args.level.unwrap_or(6);
            if !(1..=9).contains(&level) {
                bail!("--level {level}: gzip levels are 1 to 9");
            }
            Compression::Gzip { level }
        }
    })
}

fn cache_dir(args: &CacheArgs) -> PathBuf {
    args.cache.clone().unwrap_or_else(Cache::default_dir)
}

fn spec_base(spec: &Path) -> &Path {
    match spec.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Lists every file a build needs, and the Fleet secret ids each policy needs on the
/// appliance. A local file that is not there is marked MISSING, and a policy the build would
/// refuse (unreadable, or carrying a secret's value in clear) is named on stderr; either makes
/// the exit code 1, as the build would refuse the spec. Integration entries are resolved with
/// the registry's search, as a build resolves them, and each package's size is asked for.
fn plan(args: &PlanArgs) -> anyhow::Result<ExitCode> {
    let spec_file = Spec::load(&args.spec)?;
    let base = spec_base(&args.spec);
    let ids = spec_file.artifacts()?;
    let upstream = UpstreamPlan::of(&spec_file, base, &cache_dir(&args.cache))?;
    let mut local = spec_file.payload(base)?;
    let (policies, mut refusals) = plan_policies(&local);
    local.extend(upstream.as_ref().map(|u| u.key_entry.clone()));
    let mut rows: Vec<PlannedFile> = local
        .into_iter()
        .map(|p| PlannedFile {
            source: p.source.display().to_string(),
            bundle_path: p.path.to_string(),
            cached: false,
            local: true,
            missing: std::fs::symlink_metadata(&p.source).is_err(),
        })
        .collect();
    if let Some(upstream) = &upstream {
        rows.extend(crate::fetch::plan(&upstream.upstream, &upstream.cache, &ids));
    }
    // Searches that could not be made: exit 2, as a build's network failures.
    let mut unreachable = Vec::new();
    let packages = match RegistryPlan::of(&spec_file, base)? {
        None => Vec::new(),
        Some(registry) => {
            let cache = Cache::open(&cache_dir(&args.cache))?;
            let upstream_key = upstream.as_ref().map(|u| u.key_entry.source.as_path());
            match registry.fetcher(cache, upstream_key) {
                // The key is a local file: missing or unreadable, refused as a build does.
                Err(error) => {
                    refusals.push(error_line(error.as_ref()));
                    Vec::new()
                }
                Ok((fetcher, key_entry)) => {
                    rows.extend(key_entry.map(|k| PlannedFile {
                        source: k.source.display().to_string(),
                        bundle_path: k.path.to_string(),
                        cached: false,
                        local: true,
                        missing: false,
                    }));
                    match registry::select(&fetcher, &spec_file.integrations, &fetch::bars(true)) {
                        Ok(selected) => registry::plan(&fetcher, &selected, &mut rows),
                        Err(errors) => {
                            refusals.extend(errors.refused);
                            unreachable.extend(errors.unreachable.iter().map(ToString::to_string));
                            Vec::new()
                        }
                    }
                }
            }
        }
    };
    let defend = DefendPlan::of(&spec_file, base)?;
    rows.extend(defend.iter().flat_map(DefendPlan::plan));
    rows.sort_by(|a, b| a.bundle_path.cmp(&b.bundle_path));
    let missing = rows.iter().filter(|r| r.missing).count();
    let code = if missing > 0 || !refusals.is_empty() {
        ExitCode::from(1)
    } else if !unreachable.is_empty() {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    };
    for line in refusals.iter().chain(&unreachable) {
        eprintln!("error: {line}");
    }
    if args.json {
        let report = json!({ "files": rows, "policies": policies, "packages": packages });
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(code);
    }
    let to_fetch = rows.iter().filter(|r| !r.local && !r.cached).count();
    let width = rows.iter().map(|r| r.bundle_path.len()).max().unwrap_or(4).max(11);
    println!("{:width$}  {:7}  SOURCE", "BUNDLE PATH", "CACHED");
    for r in &rows {
        let state = match (r.missing, r.local, r.cached) {
            (true, _, _) => "MISSING",
            (false, true, _) => "local",
            (false, false, true) => "yes",
            (false, false, false) => "no",
        };
        println!("{:width$}  {state:7}  {}", r.bundle_path, r.source);
    }
    println!("\n{} files, {} artifacts, {} to download", rows.len(), ids.len(), to_fetch);
    registry::print_plan(&packages);
    if let Some(defend) = &defend {
        println!(
            "plus the Endpoint artifacts the {} Defend manifest(s) list: known only once a build \
             fetches the manifests",
            defend.versions.len()
        );
    }
    print_policy_secrets(&policies);
    if missing > 0 {
        eprintln!("error: {missing} local file(s) missing: a build would refuse the spec");
    }
    if !refusals.is_empty() {
        eprintln!("error: a build would refuse the spec for the reasons above");
    }
    Ok(code)
}

/// The policies of the spec that are there, with the secret ids each needs, and one line for
/// each reason a build would refuse one (unreadable, not a policy, a secret value in clear).
/// A missing file is the files table's to report.
fn plan_policies(
    local: &[ferry_manifests::PayloadSource],
) -> (Vec<intake::PolicySecrets>, Vec<String>) {
    let mut policies = Vec::new();
    let mut refusals = Vec::new();
    for file in local.iter().filter(|f| f.kind == Kind::Policy) {
        if std::fs::symlink_metadata(&file.source).is_err() {
            continue;
        }
        let what = file.source.display().to_string();
        let path = file.path.to_string();
        match intake::PolicyCheck::read(&file.source, &what) {
            Ok(check) => {
                refusals.extend(check.refusals(&what));
                policies.push(intake::PolicySecrets {
                    path,
                    id: Some(check.policy.id),
                    secret_ids: check.secret_ids,
                });
            }
            Err(error) => {
                refusals.push(error_line(error.as_ref()));
                policies.push(intake::PolicySecrets { path, id: None, secret_ids: Vec::new() });
            }
        }
    }
    (policies, refusals)
}

fn build(args: &BuildArgs, quiet: bool) -> anyhow::Result<ExitCode> {
    let spec_file = Spec::load(&args.spec)?;
    let base = spec_base(&args.spec);
    let created = created_time(args.created.as_deref())?;
    let expires = spec_file.expires(created)?;
    if expires <= created {
        bail!("the bundle would expire ({}) before it is created ({})", rfc(expires), rfc(created));
    }
    if expires < OffsetDateTime::now_utc() {
        // Rebuilding an old bundle byte for byte is legitimate; shipping one by mistake is not.
        tracing::warn!(
            created = %rfc(created),
            expires = %rfc(expires),
            "the bundle has already expired: appliances refuse it without --allow-expired \
             (check --created or SOURCE_DATE_EPOCH)"
        );
    }
    // Every local file is checked and every artifact fetched before giving up, so one failed
    // build names everything that is missing or wrong; fetched artifacts stay cached.
    let local = intake::local_files(&spec_file, base, expires)?;
    let (mut payload, policies) = (local.passed, local.policies);
    let mut failures =
        intake::FileErrors { local: local.failed, selection: Vec::new(), fetch: None };
    let ids = spec_file.artifacts()?;
    let bars = fetch::bars(quiet);
    let tune = |fetcher: &mut Fetcher| {
        fetcher.parallel = args.parallel.max(1);
        fetcher.attempts = args.attempts.max(1);
    };
    let mut upstream_key = None;
    if let Some(mut upstream) = UpstreamPlan::of(&spec_file, base, &cache_dir(&args.cache))? {
        upstream_key = Some(upstream.key_entry.source.clone());
        match upstream.keyring() {
            Err(error) => failures.local.push(error_line(error.as_ref())),
            Ok(keyring) => {
                let (mut fetcher, key_entry) = upstream.fetcher(keyring)?;
                tune(&mut fetcher);
                match fetcher.fetch_all(&ids, &bars) {
                    Ok(fetched) => {
                        let downloaded = fetched.iter().filter(|f| !f.from_cache).count();
                        tracing::info!(artifacts = fetched.len(), downloaded, "artifacts verified");
                        payload.extend(intake::artifact_payload(&fetched)?);
                        payload.push(key_entry);
                    }
                    Err(errors) => failures.add_fetch(errors.0),
                }
            }
        }
    }
    if let Some(registry) = RegistryPlan::of(&spec_file, base)? {
        let cache = Cache::open(&cache_dir(&args.cache))?;
        match registry.fetcher(cache, upstream_key.as_deref()) {
            Err(error) => failures.local.push(error_line(error.as_ref())),
            Ok((mut fetcher, key_entry)) => {
                tune(&mut fetcher);
                match registry::select(&fetcher, &spec_file.integrations, &bars) {
                    Err(errors) => {
                        failures.selection.extend(errors.refused);
                        failures.add_fetch(errors.unreachable);
                    }
                    Ok(selected) => match registry::fetch_all(&fetcher, &selected, &bars) {
                        Ok(fetched) => {
                            let downloaded = fetched.iter().filter(|f| !f.from_cache).count();
                            tracing::info!(
                                packages = fetched.len(),
                                downloaded,
                                "packages verified"
                            );
                            payload.extend(registry::payload(&fetched)?);
                            payload.extend(key_entry);
                        }
                        Err(errors) => failures.add_fetch(errors.0),
                    },
                }
            }
        }
    }
    if let Some(defend) = DefendPlan::of(&spec_file, base)? {
        let cache = Cache::open(&cache_dir(&args.cache))?;
        match defend.fetch(cache, args.parallel, args.attempts, quiet) {
            Ok(entries) => payload.extend(entries),
            Err(DefendFailure::Key(error)) => failures.local.push(error_line(error.as_ref())),
            Err(DefendFailure::Fetch(errors)) => failures.add_fetch(errors.0),
        }
    }
    if !failures.is_empty() {
        return Err(failures.into());
    }
    let key = keys::load_secret(
        &args.secret_key,
        &PasswordSource { file: args.password.password_file.clone() },
    )?;
    let base = match &args.base {
        Some(path) => {
            Some(delta_base(path, &spec_file.bundle.name, spec_file.bundle.sequence, &key)?)
        }
        None => None,
    };
    let bundle = ferry_manifests::BundleSpec {
        name: spec_file.bundle.name.clone(),
        sequence: spec_file.bundle.sequence,
        created,
        expires,
        builder: crate::builder_id(),
        compression: compression(args)?,
        base,
    };
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create output folder {}", args.out.display()))?;
    let built = write(args, &bundle, payload, &key, quiet)
        .with_context(|| format!("cannot build bundle from {}", args.spec.display()))?;
    let manifest = &built.manifest;
    if args.json {
        // Without --keep-bundle there is no bundle file: "bundle" and "signature" are null (the
        // signature is in the index), so a script never reads a path that does not exist.
        let (bundle, signature) = built.files.clone().unzip();
        println!(
            "{}",
            json!({
                "parts": built.parts.as_ref().map(split_json),
                "bundle": bundle,
                "signature": signature,
                "name": manifest.name,
                "sequence": manifest.sequence,
                "created": rfc(manifest.created),
                "expires": rfc(manifest.expires),
                "entries": manifest.files.len(),
                "payload_bytes": manifest.total_size(),
                "bundle_bytes": built.bundle_size,
                "manifest_sha256": built.manifest_sha256.to_hex(),
                "key_id": key.key_id().to_string(),
                "policies": policies,
                "base": manifest.base,
                "carried_entries": manifest.carried().count(),
                "carried_bytes": manifest.carried_size(),
            })
        );
    } else {
        let sizes = format!(
            "{} entries, {} bytes of payload in {} bytes",
            manifest.files.len(),
            manifest.total_size(),
            built.bundle_size
        );
        match &built.files {
            Some((bundle, signature)) => {
                println!("wrote {} ({sizes})", bundle.display());
                println!("wrote {} (key {})", signature.display(), key.key_id());
            }
            None => println!(
                "built {} {} as parts only ({sizes}; key {}): its signature is in the index",
                manifest.name,
                manifest.sequence,
                key.key_id()
            ),
        }
        if let Some(line) = delta_line(manifest) {
            println!("{line}");
        }
        if let Some(parts) = &built.parts {
            print_split(parts);
        }
        print_policy_secrets(&policies);
    }
    Ok(ExitCode::SUCCESS)
}

/// What `build` wrote.
struct Built {
    manifest: Manifest,
    manifest_sha256: ferry_manifests::Sha256Digest,
    bundle_size: u64,
    /// The whole bundle and its signature: without --part-size, or with --keep-bundle.
    files: Option<(std::path::PathBuf, std::path::PathBuf)>,
    parts: Option<ferry_manifests::parts::SplitOutput>,
}

/// Writes the bundle as `args` asks: whole; as parts straight from the compressor; or whole,
/// then cut into parts (--keep-bundle), which gives the same parts at twice the writing.
fn write(
    args: &BuildArgs,
    bundle: &ferry_manifests::BundleSpec,
    payload: Vec<ferry_manifests::PayloadSource>,
    key: &ferry_manifests::SigningKey,
    quiet: bool,
) -> anyhow::Result<Built> {
    let progress = Bar::new(quiet);
    let whole = |payload| -> anyhow::Result<Built> {
        let written = ferry_manifests::write_bundle(bundle, payload, key, &args.out, &progress)?;
        Ok(Built {
            files: Some((written.bundle_path, written.signature_path)),
            manifest: written.manifest,
            manifest_sha256: written.manifest_sha256,
            bundle_size: written.bundle_size,
            parts: None,
        })
    };
    let Some(part_size) = args.parts.part_size else {
        return whole(payload);
    };
    let options = ferry_manifests::parts::SplitOptions { part_size, parity: args.parts.parity };
    if args.parts.keep_bundle {
        let mut built = whole(payload)?;
        let (bundle_path, signature_path) = built.files.as_ref().expect("a whole bundle");
        let parts = ferry_manifests::parts::split_bundle(
            bundle_path,
            signature_path,
            key,
            &args.out,
            options,
            &progress,
        )
        .with_context(|| format!("cannot cut {} into parts", bundle_path.display()))?;
        built.parts = Some(parts);
        return Ok(built);
    }
    let written =
        ferry_manifests::write_parts(bundle, payload, key, &args.out, options, &progress)?;
    Ok(Built {
        manifest: written.manifest,
        manifest_sha256: written.manifest_sha256,
        bundle_size: written.bundle_size,
        files: None,
        parts: Some(written.parts),
    })
}

/// What `--base` names: a holdings file (JSON, from `ferry-appliance holdings --json`) or an
/// earlier bundle of the same name, whose manifest must be signed by `key` (only its manifest is
/// read: the delta needs the base's digests, not its payload).
fn delta_base(
    path: &Path,
    name: &ferry_manifests::BundleName,
    sequence: u64,
    key: &ferry_manifests::SigningKey,
) -> anyhow::Result<ferry_manifests::DeltaBase> {
    use std::io::Read as _;
    let mut first = [0u8; 1];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut first))
        .with_context(|| format!("cannot read the base {}", path.display()))?;
    let base = if first[0] == b'{' {
        ferry_manifests::Holdings::read(path)?.delta_base(name)?
    } else {
        let limits = Limits::default();
        let info = ferry_manifests::read_unverified(path, &limits)
            .with_context(|| format!("cannot read the base bundle {}", path.display()))?;
        let keys = ferry_manifests::TrustedKeys::from(key.public_key());
        ferry_manifests::verify_stored_manifest(
            &info.manifest_bytes,
            &info.manifest_signature,
            &keys,
            &limits,
        )
        .with_context(|| {
            format!(
                "the base bundle {}'s manifest does not verify with this signing key ({}); \
                 build against the appliance's holdings file instead",
                path.display(),
                key.key_id()
            )
        })?;
        ferry_manifests::DeltaBase {
            bundle: ferry_manifests::BaseRef {
                name: info.manifest.name.clone(),
                sequence: info.manifest.sequence,
                manifest_sha256: info.manifest_sha256,
            },
            holds: info.manifest.files.iter().map(|f| f.sha256).collect(),
        }
    };
    let found = &base.bundle;
    if &found.name != name || found.sequence >= sequence {
        bail!(
            "the base must be an earlier bundle of the same name: this spec builds {name} {sequence}, \
             the base is {} {}",
            found.name,
            found.sequence
        );
    }
    Ok(base)
}

/// For a delta: what it carries against what the release holds.
fn delta_line(manifest: &Manifest) -> Option<String> {
    let base = manifest.base.as_ref()?;
    let (carried, total) = (manifest.carried_size(), manifest.total_size());
    let share = if total == 0 { 100.0 } else { carried as f64 * 100.0 / total as f64 };
    Some(format!(
        "delta against {} {}: carries {} of {} entries, {carried} of {total} bytes ({share:.2} %); \
         the appliance takes the rest from its blob store",
        base.name,
        base.sequence,
        manifest.carried().count(),
        manifest.files.len(),
    ))
}

/// `split`: cuts a signed bundle into parts; the bundle is only read.
fn split(args: &SplitArgs, quiet: bool) -> anyhow::Result<ExitCode> {
    let signature = args
        .signature
        .clone()
        .unwrap_or_else(|| ferry_manifests::default_signature_path(&args.bundle));
    let out_dir = match &args.out_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create output folder {}", dir.display()))?;
            dir.clone()
        }
        None => spec_base(&args.bundle).to_owned(),
    };
    let key = keys::load_secret(
        &args.secret_key,
        &PasswordSource { file: args.password.password_file.clone() },
    )?;
    let options =
        ferry_manifests::parts::SplitOptions { part_size: args.part_size, parity: args.parity };
    let output = ferry_manifests::parts::split_bundle(
        &args.bundle,
        &signature,
        &key,
        &out_dir,
        options,
        &Bar::new(quiet || args.json),
    )
    .with_context(|| format!("cannot cut {} into parts", args.bundle.display()))?;
    if args.json {
        println!("{}", split_json(&output));
    } else {
        print_split(&output);
    }
    Ok(ExitCode::SUCCESS)
}

fn split_json(output: &ferry_manifests::parts::SplitOutput) -> serde_json::Value {
    let index = &output.index;
    let layout = &index.layout;
    json!({
        "name": index.name,
        "sequence": index.sequence,
        "bundle_bytes": layout.bundle_size,
        "bundle_sha256": index.bundle_sha256.to_hex(),
        "part_size": layout.part_size,
        "data_parts": layout.data_parts,
        "parity_parts": layout.parity_parts,
        "stripe": layout.stripe,
        "index": output.index_path,
        "index_signature": output.signature_path,
        "transfer": output.transfer_path,
        "parts": index.parts.iter().zip(&output.part_paths).map(|(p, path)| json!({
            "path": path,
            "size": p.size,
            "sha256": p.sha256.to_hex(),
            "parity": p.parity,
        })).collect::<Vec<_>>(),
    })
}

/// What to carry, for people: the transfer note itself, and where it was written.
fn print_split(output: &ferry_manifests::parts::SplitOutput) {
    println!(
        "wrote {} parts, {} and its signature",
        output.index.parts.len(),
        output.index_path.display()
    );
    println!("wrote {}\n", output.transfer_path.display());
    print!("{}", output.index.transfer_text());
}

/// The secret ids each policy needs, for people: a table, and what to do with them.
fn print_policy_secrets(policies: &[intake::PolicySecrets]) {
    if policies.is_empty() {
        return;
    }
    print_table(
        "policies",
        &["ID", "PATH", "SECRET IDS"],
        policies.iter().map(|p| {
            let ids =
                if p.secret_ids.is_empty() { "-".to_owned() } else { p.secret_ids.join(", ") };
            vec![p.id.clone().unwrap_or_else(|| "?".into()), p.path.clone(), ids]
        }),
    );
    if policies.iter().any(|p| !p.secret_ids.is_empty()) {
        println!(
            "\nThe appliance delivers a policy only once it has a value for each of its secret \
             ids: set them there with `ferry-appliance secrets set ID`."
        );
    }
}

fn rfc(t: OffsetDateTime) -> String {
    ferry_manifests::rfc3339(t)
}

fn verify(args: &VerifyArgs, quiet: bool) -> anyhow::Result<ExitCode> {
    let keys = ferry_manifests::TrustedKeys::load(&args.public_key)?;
    let signature = args
        .signature
        .clone()
        .unwrap_or_else(|| ferry_manifests::default_signature_path(&args.bundle));
    let progress = Bar::new(quiet || args.json);
    let outcome = (|| -> Result<(Manifest, ferry_manifests::KeyId, bool), VerifyError> {
        let signed =
            SignedBundle::verify(&args.bundle, &signature, &keys, Limits::default(), &progress)?;
        // No grace: `ferry verify` answers whether the bundle is still valid now.
        let (now, grace) = (OffsetDateTime::now_utc(), time::Duration::ZERO);
        let expiry = if args.allow_expired {
            Expiry::AllowExpired { now, grace }
        } else {
            Expiry::Enforce { now, grace }
        };
        let stage = signed.read_manifest(expiry)?;
        let expired = stage.expired().is_some();
        let verified = stage.extract(&mut Discard, &progress)?;
        Ok((verified.manifest, verified.key_id, expired))
    })();
    let bundle = args.bundle.display();
    match outcome {
        Ok((manifest, key_id, expired)) => {
            if args.json {
                println!(
                    "{}",
                    json!({
                        "ok": true,
                        "bundle": args.bundle,
                        "name": manifest.name,
                        "sequence": manifest.sequence,
                        "created": rfc(manifest.created),
                        "expires": rfc(manifest.expires),
                        "expired": expired,
                        "key_id": key_id.to_string(),
                        "entries": manifest.files.len(),
                        "payload_bytes": manifest.total_size(),
                        "base": manifest.base,
                        "carried_bytes": manifest.carried_size(),
                    })
                );
            } else {
                println!(
                    "OK {bundle}: {} sequence {}, signed by key {key_id}, {} entries verified ({} bytes), expires {}{}",
                    manifest.name,
                    manifest.sequence,
                    manifest.carried().count(),
                    manifest.carried_size(),
                    rfc(manifest.expires),
                    if expired { " (EXPIRED, accepted by --allow-expired)" } else { "" }
                );
                if let Some(line) = delta_line(&manifest) {
                    println!("{line}");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(error) if error.is_refusal() => {
            if args.json {
                println!(
                    "{}",
                    json!({
                        "ok": false,
                        "bundle": args.bundle,
                        "check": error.check(),
                        "error": error.to_string(),
                    })
                );
            } else {
                println!("FAILED {bundle}: {} check: {error}", error.check());
            }
            Ok(ExitCode::from(1))
        }
        Err(error) => Err(error).with_context(|| format!("cannot verify {bundle}")),
    }
}

fn inspect(args: &InspectArgs) -> anyhow::Result<ExitCode> {
    let limits = Limits::default();
    let info = ferry_manifests::read_unverified(&args.bundle, &limits)
        .with_context(|| format!("cannot inspect {}", args.bundle.display()))?;
    let signature = args
        .signature
        .clone()
        .unwrap_or_else(|| ferry_manifests::default_signature_path(&args.bundle));
    let signer = match ferry_manifests::signature_key_id(&signature, &limits) {
        Ok(id) => Some(id.to_string()),
        Err(_) if args.signature.is_none() => None,
        Err(e) => return Err(e).context("cannot read the detached signature"),
    };
    let manifest = &info.manifest;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "bundle": args.bundle,
                "verified": false,
                "signer_key_id": signer,
                "manifest_key_id": info.manifest_key_id.map(|k| k.to_string()),
                "manifest_sha256": info.manifest_sha256.to_hex(),
                "bundle_bytes": std::fs::metadata(&args.bundle).map(|m| m.len()).ok(),
                "carried_bytes": manifest.carried_size(),
                "payload_bytes": manifest.total_size(),
                "manifest": manifest,
            }))?
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!("name       {}", manifest.name);
    println!("sequence   {}", manifest.sequence);
    println!("created    {}", rfc(manifest.created));
    println!("expires    {}", rfc(manifest.expires));
    println!("builder    {}", manifest.builder);
    println!(
        "signer     {} (not verified; run `ferry verify`)",
        signer.map_or_else(
            || "unknown: no detached signature found".to_owned(),
            |id| format!("key {id}")
        )
    );
    println!("manifest   sha256 {}", info.manifest_sha256);
    println!("entries    {} files, {} bytes", manifest.files.len(), manifest.total_size());
    if let Some(line) = delta_line(manifest) {
        println!("delta      {line}");
        let bundle_bytes = std::fs::metadata(&args.bundle).map(|m| m.len()).unwrap_or(0);
        println!("file       {bundle_bytes} bytes");
    }
    let shown = |value: Option<&str>| value.unwrap_or("-").to_owned();
    let of_kind = |kinds: &[Kind]| {
        manifest.files.iter().filter(|f| kinds.contains(&f.kind)).collect::<Vec<_>>()
    };
    let artifacts = of_kind(&[Kind::AgentArtifact, Kind::FleetServerArtifact]);
    if !artifacts.is_empty() {
        print_table(
            "artifacts",
            &["PRODUCT", "VERSION", "PLATFORM", "PACKAGE", "SIZE"],
            artifacts.iter().map(|f| {
                let m = &f.metadata;
                let fips = if m.fips() { "-fips" } else { "" };
                vec![
                    format!("{}{fips}", shown(m.product())),
                    shown(m.version()),
                    shown(m.platform()),
                    shown(m.package()),
                    f.size.to_string(),
                ]
            }),
        );
    }
    let policies = of_kind(&[Kind::Policy]);
    if !policies.is_empty() {
        print_table(
            "policies",
            &["ID", "REVISION", "NAME", "PATH"],
            policies.iter().map(|f| {
                let m = &f.metadata;
                vec![
                    shown(m.policy_id()),
                    shown(m.policy_revision()),
                    shown(m.policy_name()),
                    f.path.to_string(),
                ]
            }),
        );
    }
    let endpoint = of_kind(&[Kind::EndpointArtifact]);
    let (manifests, listed): (Vec<&&ferry_manifests::FileEntry>, Vec<_>) =
        endpoint.iter().partition(|f| f.metadata.endpoint_version().is_some());
    if !manifests.is_empty() {
        print_table(
            "endpoint artifact manifests",
            &["ENDPOINT", "MANIFEST VERSION", "MANIFEST DATE", "PATH"],
            manifests.iter().map(|f| {
                let m = &f.metadata;
                vec![
                    shown(m.endpoint_version()),
                    shown(m.manifest_version()),
                    shown(m.content_date().map(ferry_manifests::rfc3339).as_deref()),
                    f.path.to_string(),
                ]
            }),
        );
        println!("{} endpoint artifact file(s) listed by them", listed.len());
    }
    let certificates = of_kind(&[Kind::Certificate]);
    if !certificates.is_empty() {
        print_table(
            "certificates",
            &["SUBJECT", "EXPIRES", "PATH"],
            certificates.iter().map(|f| {
                let m = &f.metadata;
                vec![
                    shown(m.certificate_subject()),
                    shown(m.certificate_not_after()),
                    f.path.to_string(),
                ]
            }),
        );
    }
    if !manifest.files.is_empty() {
        print_table(
            "files",
            &["PATH", "KIND", "SIZE", "SHA256"],
            manifest.files.iter().map(|f| {
                vec![
                    f.path.to_string(),
                    f.kind.to_string(),
                    f.size.to_string(),
                    f.sha256.to_hex()[..16].to_owned(),
                ]
            }),
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints a titled table (see [`ferry_manifests::terminal::table`]).
fn print_table(title: &str, headers: &[&str], rows: impl Iterator<Item = Vec<String>>) {
    println!("\n{title}:");
    print!("{}", ferry_manifests::terminal::table(headers, rows));
}
