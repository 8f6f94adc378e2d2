//! The subcommands of `ferry`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use ferry_manifests::{
    Compression, Discard, Limits, Manifest, SignedBundle, VerifyError, check_expiry,
};
use serde_json::json;
use time::OffsetDateTime;

use crate::cli::{BuildArgs, Cli, Command, CompressionArg, InspectArgs, KeygenArgs, VerifyArgs};
use crate::keys::{self, PasswordSource};
use crate::progress::Bar;
use crate::spec::{self, Spec};

/// Runs one command. Output for people and machines goes to stdout; logs go to stderr.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Keygen(args) => keygen(&args),
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

fn build(args: &BuildArgs, quiet: bool) -> anyhow::Result<ExitCode> {
    let spec_file = Spec::load(&args.spec)?;
    let base = args.spec.parent().unwrap_or(Path::new("."));
    let payload = spec_file.payload(base)?;
    let created = created_time(args.created.as_deref())?;
    let expires = spec_file.expires(created)?;
    if expires <= created {
        bail!("the bundle would expire ({}) before it is created ({})", rfc(expires), rfc(created));
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

fn default_signature(bundle: &Path) -> PathBuf {
    let mut name = bundle.as_os_str().to_owned();
    name.push(".minisig");
    PathBuf::from(name)
}

fn verify(args: &VerifyArgs, quiet: bool) -> anyhow::Result<ExitCode> {
    let keys = keys::load_trusted(&args.public_key)?;
    let signature = args.signature.clone().unwrap_or_else(|| default_signature(&args.bundle));
    let progress = Bar::new(quiet || args.json);
    let outcome = (|| -> Result<Manifest, VerifyError> {
        let signed =
            SignedBundle::verify(&args.bundle, &signature, &keys, Limits::default(), &progress)?;
        let stage = signed.read_manifest()?;
        if !args.allow_expired {
            check_expiry(stage.manifest(), OffsetDateTime::now_utc(), time::Duration::ZERO)?;
        }
        Ok(stage.extract(&mut Discard, &progress)?.manifest)
    })();
    let bundle = args.bundle.display();
    match outcome {
        Ok(manifest) => {
            let key_id = ferry_manifests::signature_key_id(&signature, &Limits::default())?;
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
    let signature = args.signature.clone().unwrap_or_else(|| default_signature(&args.bundle));
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
    if manifest.files.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    let width = manifest.files.iter().map(|f| f.path.as_str().len()).max().unwrap_or(4).max(4);
    let kind_width = manifest.files.iter().map(|f| f.kind.as_str().len()).max().unwrap_or(4).max(4);
    println!();
    println!("{:width$}  {:kind_width$}  {:>12}  SHA256", "PATH", "KIND", "SIZE");
    for f in &manifest.files {
        println!(
            "{:width$}  {:kind_width$}  {:>12}  {}",
            f.path.as_str(),
            f.kind.as_str(),
            f.size,
            &f.sha256.to_hex()[..16]
        );
    }
    Ok(ExitCode::SUCCESS)
}
