//! The subcommands of `ferry`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use ferry_manifests::{
    Compression, Discard, Kind, Limits, Manifest, SignedBundle, VerifyError, check_expiry,
};
use serde_json::json;
use time::OffsetDateTime;

use crate::cli::{
    BuildArgs, CacheArgs, Cli, Command, CompressionArg, InspectArgs, KeygenArgs, PlanArgs,
    VerifyArgs,
};
use crate::fetch::Cache;
use crate::intake;
use crate::keys::{self, PasswordSource};
use crate::spec::{self, Spec};
use ferry_manifests::TerminalBar as Bar;

/// Runs one command. Output for people and machines goes to stdout; logs go to stderr.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Keygen(args) => keygen(&args),
        Command::Plan(args) => plan(&args),
        Command::Build(args) => build(&args, cli.quiet),
        Command::Verify(args) => verify(&args, cli.quiet),
        Command::Inspect(args) => inspect(&args),
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

fn plan(args: &PlanArgs) -> anyhow::Result<ExitCode> {
    let spec_file = Spec::load(&args.spec)?;
    let base = spec_base(&args.spec);
    let ids = spec_file.artifacts()?;
    let mut rows: Vec<crate::fetch::PlannedFile> = spec_file
        .payload(base)?
        .into_iter()
        .map(|p| crate::fetch::PlannedFile {
            source: p.source.display().to_string(),
            bundle_path: p.path.to_string(),
            cached: false,
        })
        .collect();
    if let Some((fetcher, key)) = intake::fetcher(&spec_file, base, &cache_dir(&args.cache))? {
        rows.push(crate::fetch::PlannedFile {
            source: key.source.display().to_string(),
            bundle_path: key.path.to_string(),
            cached: false,
        });
        rows.extend(crate::fetch::plan(&fetcher, &ids));
    }
    rows.sort_by(|a, b| a.bundle_path.cmp(&b.bundle_path));
    if args.json {
        println!("{}", serde_json::to_string_pretty(&json!({ "files": rows }))?);
        return Ok(ExitCode::SUCCESS);
    }
    let to_fetch = rows.iter().filter(|r| r.source.contains("://") && !r.cached).count();
    let width = rows.iter().map(|r| r.bundle_path.len()).max().unwrap_or(4).max(11);
    println!("{:width$}  {:6}  SOURCE", "BUNDLE PATH", "CACHED");
    for r in &rows {
        let cached = if r.source.contains("://") || ids.is_empty() {
            if r.cached { "yes" } else { "no" }
        } else {
            "local"
        };
        println!("{:width$}  {cached:6}  {}", r.bundle_path, r.source);
    }
    println!("\n{} files, {} artifacts, {} to download", rows.len(), ids.len(), to_fetch);
    Ok(ExitCode::SUCCESS)
}

fn build(args: &BuildArgs, quiet: bool) -> anyhow::Result<ExitCode> {
    let spec_file = Spec::load(&args.spec)?;
    let base = spec_base(&args.spec);
    let created = created_time(args.created.as_deref())?;
    let expires = spec_file.expires(created)?;
    if expires <= created {
        bail!("the bundle would expire ({}) before it is created ({})", rfc(expires), rfc(created));
    }
    let mut payload = intake::local_files(&spec_file, base, expires)?;
    let ids = spec_file.artifacts()?;
    if let Some((mut fetcher, key_entry)) =
        intake::fetcher(&spec_file, base, &cache_dir(&args.cache))?
    {
        fetcher.parallel = args.parallel.max(1);
        fetcher.attempts = args.attempts.max(1);
        let fetched = fetcher.fetch_all(&ids, quiet)?;
        let downloaded = fetched.iter().filter(|f| !f.from_cache).count();
        tracing::info!(artifacts = fetched.len(), downloaded, "artifacts verified");
        payload.extend(intake::artifact_payload(&fetched)?);
        payload.push(key_entry);
    }
    let bundle = ferry_manifests::BundleSpec {
        name: spec_file.bundle.name.clone(),
        sequence: spec_file.bundle.sequence,
        created,
        expires,
        builder: crate::builder_id(),
        compression: compression(args)?,
    };
    let key = keys::load_secret(
        &args.secret_key,
        &PasswordSource { file: args.password.password_file.clone() },
    )?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create output folder {}", args.out.display()))?;
    let written =
        ferry_manifests::write_bundle(&bundle, payload, &key, &args.out, &Bar::new(quiet))
            .with_context(|| format!("cannot build bundle from {}", args.spec.display()))?;
    if args.json {
        println!(
            "{}",
            json!({
                "bundle": written.bundle_path,
                "signature": written.signature_path,
                "name": written.manifest.name,
                "sequence": written.manifest.sequence,
                "created": rfc(written.manifest.created),
                "expires": rfc(written.manifest.expires),
                "entries": written.manifest.files.len(),
                "payload_bytes": written.manifest.total_size(),
                "bundle_bytes": written.bundle_size,
                "manifest_sha256": written.manifest_sha256.to_hex(),
                "key_id": key.key_id().to_string(),
            })
        );
    } else {
        println!(
            "wrote {} ({} entries, {} bytes of payload in {} bytes)",
            written.bundle_path.display(),
            written.manifest.files.len(),
            written.manifest.total_size(),
            written.bundle_size
        );
        println!("wrote {} (key {})", written.signature_path.display(), key.key_id());
    }
    Ok(ExitCode::SUCCESS)
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
    let outcome = (|| -> Result<(Manifest, ferry_manifests::KeyId), VerifyError> {
        let signed =
            SignedBundle::verify(&args.bundle, &signature, &keys, Limits::default(), &progress)?;
        let stage = signed.read_manifest()?;
        if !args.allow_expired {
            check_expiry(stage.manifest(), OffsetDateTime::now_utc(), time::Duration::ZERO)?;
        }
        let verified = stage.extract(&mut Discard, &progress)?;
        Ok((verified.manifest, verified.key_id))
    })();
    let bundle = args.bundle.display();
    match outcome {
        Ok((manifest, key_id)) => {
            let expired = manifest.expires < OffsetDateTime::now_utc();
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
                    })
                );
            } else {
                println!(
                    "OK {bundle}: {} sequence {}, signed by key {key_id}, {} entries verified ({} bytes), expires {}{}",
                    manifest.name,
                    manifest.sequence,
                    manifest.files.len(),
                    manifest.total_size(),
                    rfc(manifest.expires),
                    if expired { " (EXPIRED, accepted by --allow-expired)" } else { "" }
                );
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
        .with_context(|| format!("cannot read {}", args.bundle.display()))?;
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
    let meta = |f: &ferry_manifests::FileEntry, k: &str| {
        f.metadata.get(k).cloned().unwrap_or_else(|| "-".into())
    };
    let of_kind = |kinds: &[Kind]| {
        manifest.files.iter().filter(|f| kinds.contains(&f.kind)).collect::<Vec<_>>()
    };
    let artifacts = of_kind(&[Kind::AgentArtifact, Kind::FleetServerArtifact]);
    if !artifacts.is_empty() {
        print_table(
            "artifacts",
            &["PRODUCT", "VERSION", "PLATFORM", "PACKAGE", "SIZE"],
            artifacts.iter().map(|f| {
                let fips = if meta(f, "fips") == "true" { "-fips" } else { "" };
                vec![
                    format!("{}{fips}", meta(f, "product")),
                    meta(f, "version"),
                    meta(f, "platform"),
                    meta(f, "package"),
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
                vec![meta(f, "policy_id"), meta(f, "revision"), meta(f, "name"), f.path.to_string()]
            }),
        );
    }
    let certificates = of_kind(&[Kind::Certificate]);
    if !certificates.is_empty() {
        print_table(
            "certificates",
            &["SUBJECT", "EXPIRES", "PATH"],
            certificates
                .iter()
                .map(|f| vec![meta(f, "subject"), meta(f, "not_after"), f.path.to_string()]),
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
