//! The `ferry` binary as an operator meets it: keys, build, verify, inspect, interop with the
//! stock `minisign` and GNU `tar`, reproducibility, tampering and refusals.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use clap::CommandFactory as _;
use ferry_manifests::{BundleComment, SigningKey};

use crate::support::{assert_ok, ferry, fixture, stderr, stdout};

const CREATED: &str = "2026-11-01T00:00:00Z";

fn demo_spec() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/demo/bundle.toml")
}

/// Makes a second, unrelated key pair in `dir` (which must exist); returns its public key.
fn other_key(dir: &Path) -> PathBuf {
    assert_ok(&ferry(&[
        &"keygen",
        &"--without-password",
        &"--secret-key",
        &dir.join("k"),
        &"--public-key",
        &dir.join("k.pub"),
    ]));
    dir.join("k.pub")
}

/// Builds the demo bundle with the fixture key into `out`.
fn build_demo(out: &Path) -> (PathBuf, PathBuf) {
    let o = ferry(&[
        &"build",
        &demo_spec(),
        &"--secret-key",
        &fixture("test.key"),
        &"--out",
        &out,
        &"--created",
        &CREATED,
    ]);
    assert_ok(&o);
    (out.join("demo-1.ferry"), out.join("demo-1.ferry.minisig"))
}

fn verify_json(bundle: &Path) -> (i32, serde_json::Value) {
    let o = ferry(&[&"verify", &bundle, &"--public-key", &fixture("test.pub"), &"--json"]);
    let json = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", stdout(&o)));
    (o.status.code().unwrap(), json)
}

/// clap's own checks of `ferry`'s command tree (duplicate names, conflicts naming missing
/// arguments, bad defaults...), which a debug build otherwise makes only for the subcommand it
/// parses.
#[test]
fn the_command_tree_passes_clap_checks() {
    ferry_builder::cli::Cli::command().debug_assert();
}

#[test]
fn build_verify_inspect_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let (bundle, _) = build_demo(dir.path());
    let (code, verdict) = verify_json(&bundle);
    assert_eq!(code, 0, "{verdict}");
    assert_eq!(verdict["ok"], true);
    assert_eq!(verdict["key_id"], "2B0F415528066F97");
    assert_eq!(verdict["entries"], 3);

    let o = ferry(&[&"inspect", &bundle, &"--json"]);
    assert_ok(&o);
    let inspected: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let mut paths: Vec<&str> = inspected["manifest"]["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap())
        .collect();
    paths.sort_unstable();
    // Exactly the spec's three files, at their default or explicit bundle paths.
    assert_eq!(
        paths,
        ["certificates/demo-ca.pem", "docs/README.txt", "policies/default-policy.yml"]
    );
    assert_eq!(inspected["signer_key_id"], "2B0F415528066F97");
    assert_eq!(inspected["manifest"]["files"][2]["metadata"]["policy_id"], "default-policy");
}

#[test]
fn inspect_output() {
    let dir = tempfile::tempdir().unwrap();
    let (bundle, _) = build_demo(dir.path());
    let o = ferry(&[&"inspect", &bundle]);
    assert_ok(&o);
    insta::assert_snapshot!(stdout(&o));
}

#[test]
fn stock_minisign_and_gnu_tar_read_the_bundle() {
    let dir = tempfile::tempdir().unwrap();
    let (bundle, signature) = build_demo(dir.path());
    let o = ferry_manifests::test_tools::tool("minisign")
        .args(["-V", "-H", "-m"])
        .arg(&bundle)
        .arg("-x")
        .arg(&signature)
        .arg("-p")
        .arg(fixture("test.pub"))
        .output()
        .expect("the stock minisign tool is installed (apt-get install minisign)");
    assert_ok(&o);
    assert!(
        stdout(&o).contains("ferry-bundle format=1 name=demo sequence=1 manifest-sha256="),
        "{}",
        stdout(&o)
    );

    let o = ferry_manifests::test_tools::tool("tar")
        .arg("--zstd")
        .arg("-tvf")
        .arg(&bundle)
        .output()
        .unwrap();
    assert_ok(&o);
    let names: Vec<String> =
        stdout(&o).lines().map(|l| l.rsplit(' ').next().unwrap().to_owned()).collect();
    assert_eq!(
        names,
        [
            "manifest.json",
            "manifest.json.minisig",
            "certificates/demo-ca.pem",
            "docs/README.txt",
            "policies/default-policy.yml"
        ]
    );
    // The stock tool rejects a wrong key too, so the test above cannot pass vacuously.
    let other = dir.path().join("other");
    let o = ferry(&[
        &"keygen",
        &"--without-password",
        &"--secret-key",
        &other.join("k"),
        &"--public-key",
        &other.join("k.pub"),
    ]);
    assert!(!o.status.success(), "keygen into a missing folder should fail");
    std::fs::create_dir(&other).unwrap();
    let other_pub = other_key(&other);
    let o = ferry_manifests::test_tools::tool("minisign")
        .arg("-Vm")
        .arg(&bundle)
        .arg("-p")
        .arg(&other_pub)
        .output()
        .unwrap();
    assert!(!o.status.success());
}

#[test]
fn builds_are_reproducible() {
    let dir = tempfile::tempdir().unwrap();
    let (a, a_sig) = build_demo(&dir.path().join("a"));
    let o = ferry(&[
        &"build",
        &demo_spec(),
        &"--secret-key",
        &fixture("test.key"),
        &"--out",
        &dir.path().join("b"),
        &"--created",
        &CREATED,
        &"--threads",
        &"1",
    ]);
    assert_ok(&o);
    let b = dir.path().join("b/demo-1.ferry");
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    assert_eq!(
        std::fs::read(&a_sig).unwrap(),
        std::fs::read(b.with_extension("ferry.minisig")).unwrap()
    );
    // SOURCE_DATE_EPOCH pins the time the same way (1793491200 = 2026-11-01T00:00:00Z).
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ferry"));
    cmd.args(["build"]).arg(demo_spec()).arg("--secret-key").arg(fixture("test.key"));
    cmd.arg("--out").arg(dir.path().join("c")).env("SOURCE_DATE_EPOCH", "1793491200");
    assert_ok(&cmd.output().unwrap());
    assert_eq!(
        std::fs::read(&a).unwrap(),
        std::fs::read(dir.path().join("c/demo-1.ferry")).unwrap()
    );
}

/// Asserts `ferry verify` refuses `bundle` with exit 1, naming `check` on stdout.
#[track_caller]
fn assert_refused(bundle: &Path, check: &str) {
    let (code, verdict) = verify_json(bundle);
    assert_eq!(code, 1, "{verdict}");
    assert_eq!(verdict["ok"], false);
    assert_eq!(verdict["check"], check, "{verdict}");
    let o = ferry(&[&"verify", &bundle, &"--public-key", &fixture("test.pub")]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stdout(&o).starts_with(&format!("FAILED {}: {check} check: ", bundle.display())),
        "{}",
        stdout(&o)
    );
}

#[test]
fn tampering_in_transit_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (bundle, signature) = build_demo(dir.path());
    let original = std::fs::read(&bundle).unwrap();
    let original_sig = std::fs::read_to_string(&signature).unwrap();

    // One flipped byte anywhere in the compressed stream; a truncated file.
    for at in [0, 40, original.len() / 2, original.len() - 1] {
        let mut bytes = original.clone();
        bytes[at] ^= 0x20;
        std::fs::write(&bundle, bytes).unwrap();
        assert_refused(&bundle, "bundle-signature");
    }
    std::fs::write(&bundle, &original[..original.len() - 1]).unwrap();
    assert_refused(&bundle, "bundle-signature");
    std::fs::write(&bundle, &original).unwrap();

    // One flipped byte in each line of the detached signature.
    let lines: Vec<&str> = original_sig.lines().collect();
    for (line, check) in [(1, "bundle-signature"), (2, "bundle-signature"), (3, "bundle-signature")]
    {
        let mut edited: Vec<String> = lines.iter().map(|l| (*l).to_owned()).collect();
        let mut bytes = edited[line].clone().into_bytes();
        let at = bytes.len() - 5;
        bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
        edited[line] = String::from_utf8(bytes).unwrap();
        std::fs::write(&signature, edited.join("\n") + "\n").unwrap();
        assert_refused(&bundle, check);
    }
    std::fs::write(&signature, &original_sig).unwrap();

    // The wrong public key.
    let other = dir.path().join("other");
    std::fs::create_dir(&other).unwrap();
    let other_pub = other_key(&other);
    let o = ferry(&[&"verify", &bundle, &"--public-key", &other_pub, &"--json"]);
    assert_eq!(o.status.code(), Some(1));
    let verdict: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(verdict["check"], "untrusted-key");
    assert!(verdict["error"].as_str().unwrap().contains("2B0F415528066F97"), "{verdict}");
    // Trusting both keys, as during a rotation, accepts it again.
    let o = ferry(&[&"verify", &bundle, &"-p", &other_pub, &"-p", &fixture("test.pub")]);
    assert_ok(&o);
}

/// Edits the decompressed stream, recompresses it and signs the result with the fixture key,
/// as someone holding the key (or a buggy builder) could: the inner checks must still hold.
fn resign(bundle: &Path, edit: impl FnOnce(&mut Vec<u8>)) {
    let compressed = std::fs::read(bundle).unwrap();
    let mut stream = zstd_decode(&compressed);
    edit(&mut stream);
    let recompressed = zstd_encode(&stream);
    let key =
        SigningKey::from_text(&std::fs::read_to_string(fixture("test.key")).unwrap(), "test", None)
            .unwrap();
    let sig_path = PathBuf::from(format!("{}.minisig", bundle.display()));
    let old = std::fs::read_to_string(&sig_path).unwrap();
    let comment: BundleComment =
        old.lines().nth(2).unwrap().trim_start_matches("trusted comment: ").parse().unwrap();
    std::fs::write(bundle, &recompressed).unwrap();
    std::fs::write(&sig_path, key.sign(&recompressed, &comment.to_string())).unwrap();
}

fn zstd_decode(bytes: &[u8]) -> Vec<u8> {
    let o = run_with_stdin(ferry_manifests::test_tools::tool("zstd").arg("-dc"), bytes);
    assert!(o.status.success());
    o.stdout
}

fn zstd_encode(bytes: &[u8]) -> Vec<u8> {
    run_with_stdin(ferry_manifests::test_tools::tool("zstd").arg("-c"), bytes).stdout
}

fn run_with_stdin(cmd: &mut Command, input: &[u8]) -> Output {
    use std::io::Write as _;
    let mut child = cmd
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input).unwrap());
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    out
}

fn find(haystack: &[u8], needle: &[u8]) -> usize {
    haystack.windows(needle.len()).position(|w| w == needle).unwrap()
}

#[test]
fn tampering_inside_a_resigned_bundle_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (bundle, _) = build_demo(dir.path());
    // Sanity: re-signing an unedited stream still verifies, so the cases below fail for their
    // edit and not for the re-signing.
    resign(&bundle, |_| {});
    let (code, verdict) = verify_json(&bundle);
    assert_eq!(code, 0, "{verdict}");

    let cases: [(&[u8], &str); 3] = [
        (b"\"sequence\": 1", "manifest-signature"), // a byte of the manifest
        (b"trusted comment: ferry-manifest", "manifest-signature"), // the inner signature
        (b"revision: 1", "sha256"),                 // a payload entry
    ];
    for (needle, check) in cases {
        let dir = tempfile::tempdir().unwrap();
        let (bundle, _) = build_demo(dir.path());
        resign(&bundle, |stream| {
            let at = find(stream, needle) + needle.len() - 1;
            stream[at] ^= 0x01;
        });
        assert_refused(&bundle, check);
    }
}

#[test]
fn expired_bundles_are_refused_unless_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("old.toml");
    std::fs::write(
        &spec,
        format!(
            "[bundle]\nname = \"old\"\nsequence = 4\nexpires = \"2020-02-01T00:00:00Z\"\n\
             [[file]]\nsource = \"{}\"\nkind = \"other\"\n",
            demo_spec().with_file_name("README.txt").display()
        ),
    )
    .unwrap();
    let o = ferry(&[
        &"build",
        &spec,
        &"--secret-key",
        &fixture("test.key"),
        &"--out",
        &dir.path(),
        &"--created",
        &"2020-01-01T00:00:00Z",
    ]);
    assert_ok(&o);
    // Built, but the operator hears that it is dead on arrival; the log, written to a pipe here,
    // carries no colour codes.
    let err = stderr(&o);
    assert!(err.contains("the bundle has already expired"), "{err}");
    assert!(!err.contains('\x1b'), "ANSI escape codes in a piped log: {err:?}");
    let bundle = dir.path().join("old-4.ferry");
    assert_refused(&bundle, "expired");
    let o = ferry(&[&"verify", &bundle, &"-p", &fixture("test.pub"), &"--allow-expired"]);
    assert_ok(&o);
    assert!(stdout(&o).contains("EXPIRED"), "{}", stdout(&o));
}

#[test]
fn build_refuses_links_special_files_missing_files_and_unsafe_names() {
    let dir = tempfile::tempdir().unwrap();
    let readme = demo_spec().with_file_name("README.txt");
    std::os::unix::fs::symlink(&readme, dir.path().join("link")).unwrap();
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    let fifo = dir.path().join("fifo");
    assert!(ferry_manifests::test_tools::tool("mkfifo").arg(&fifo).status().unwrap().success());
    std::fs::write(dir.path().join("bad.yml"), "id: x\nrevision: 1\n").unwrap();
    let build = |files: &str| {
        let spec = dir.path().join("spec.toml");
        std::fs::write(&spec, format!("[bundle]\nname = \"x\"\nsequence = 1\n{files}")).unwrap();
        let out = dir.path().join("out");
        let o = ferry(&[&"build", &spec, &"--secret-key", &fixture("test.key"), &"--out", &out]);
        assert!(!dir.path().join("out/x-1.ferry").exists());
        o
    };
    // Every unusable file is named by one build, which exits 1: its inputs were refused.
    let cases = [
        ("link", "other", "link is a symbolic link"),
        ("fifo", "other", "fifo is a fifo"),
        ("sub", "other", "sub is a directory"),
        ("absent", "other", "absent: No such file"),
        ("bad.yml", "policy", "`outputs` is missing"),
        ("README.txt", "other", "README.txt"),
    ];
    let files: String = cases
        .iter()
        .map(|(source, kind, _)| format!("[[file]]\nsource = \"{source}\"\nkind = \"{kind}\"\n"))
        .collect();
    std::fs::copy(&readme, dir.path().join("README.txt")).unwrap();
    let o = build(&files);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("5 local file(s) cannot go into the bundle"), "{err}");
    for (_, _, says) in &cases[..5] {
        assert!(err.contains(says), "{says}: {err}");
    }
    assert_eq!(err.matches("(os error 2)").count(), 1, "each cause once: {err}");
    // An unsafe bundle path is a mistake in the spec itself: exit 2.
    let o = build("[[file]]\nsource = \"README.txt\"\npath = \"../escape\"\nkind = \"other\"\n");
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("unsafe bundle path \"../escape\""), "{}", stderr(&o));
}

/// The exit code rule, command by command: 1 when an input was refused (a bundle or its
/// signature missing or failing a check, a file a build needs missing), 2 for usage and
/// environment errors. Each message names the file once.
#[test]
fn missing_inputs_exit_1_and_usage_errors_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let (bundle, signature) = build_demo(dir.path());
    let public = fixture("test.pub");
    let missing = dir.path().join("missing.ferry");

    // verify: the bundle is what is missing, not its .minisig.
    let o = ferry(&[&"verify", &missing, &"-p", &public]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stdout(&o).contains("bundle-missing check: bundle"), "{}", stdout(&o));
    assert!(!stdout(&o).contains("minisig"), "{}", stdout(&o));
    std::fs::rename(&signature, dir.path().join("elsewhere")).unwrap();
    let (code, verdict) = verify_json(&bundle);
    assert_eq!((code, &verdict["check"]), (1, &serde_json::json!("signature-missing")));
    std::fs::rename(dir.path().join("elsewhere"), &signature).unwrap();
    // A missing trusted key is the command line's mistake.
    let o = ferry(&[&"verify", &bundle, &"-p", &dir.path().join("nokey.pub")]);
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(stderr(&o).matches("No such file").count(), 1, "{}", stderr(&o));

    // inspect
    let o = ferry(&[&"inspect", &missing]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("bundle") && stderr(&o).contains("does not exist"));
    assert_ok(&ferry(&[&"inspect", &bundle]));

    // plan: a missing local file is marked and makes it fail; so does a build.
    let spec = dir.path().join("spec.toml");
    let readme = demo_spec().with_file_name("README.txt");
    std::fs::write(
        &spec,
        format!(
            "[bundle]\nname = \"p\"\nsequence = 1\n[[file]]\nsource = \"{}\"\nkind = \"other\"\n\
             [[file]]\nsource = \"gone.txt\"\nkind = \"other\"\n",
            readme.display()
        ),
    )
    .unwrap();
    let o = ferry(&[&"plan", &spec]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let table = stdout(&o);
    let line = |name: &str| table.lines().find(|l| l.contains(name)).unwrap().to_owned();
    assert!(line("files/gone.txt").contains("MISSING"), "{table}");
    assert!(line("files/README.txt").contains("local"), "{table}");
    assert!(stderr(&o).contains("1 local file(s) missing"), "{}", stderr(&o));
    let o = ferry(&[&"plan", &spec, &"--json"]);
    assert_eq!(o.status.code(), Some(1));
    let plan: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let missing_files: Vec<_> =
        plan["files"].as_array().unwrap().iter().filter(|f| f["missing"] == true).collect();
    assert_eq!(missing_files.len(), 1, "{plan}");
    let o = ferry(&[&"build", &spec, &"--secret-key", &fixture("test.key"), &"--out", &dir.path()]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert_ok(&ferry(&[&"plan", &demo_spec()]));

    // keygen and build: usage errors.
    let o = ferry(&[
        &"keygen",
        &"--without-password",
        &"--secret-key",
        &fixture("test.key"),
        &"--public-key",
        &dir.path().join("new.pub"),
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let o = ferry(&[&"build", &demo_spec(), &"--secret-key", &dir.path().join("none.key")]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert_eq!(stderr(&o).matches("No such file").count(), 1, "{}", stderr(&o));
    let o = ferry(&[&"build", &dir.path().join("no-spec.toml")]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
}

#[test]
fn keygen_protects_existing_keys_and_passwords() {
    let dir = tempfile::tempdir().unwrap();
    let (sk, pk) = (dir.path().join("k"), dir.path().join("k.pub"));
    let password_file = dir.path().join("pw");
    std::fs::write(&password_file, "correct horse\n").unwrap();
    let o = ferry(&[
        &"keygen",
        &"--secret-key",
        &sk,
        &"--public-key",
        &pk,
        &"--password-file",
        &password_file,
        &"--json",
    ]);
    assert_ok(&o);
    let made: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(made["encrypted"], true);
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(std::fs::metadata(&sk).unwrap().permissions().mode() & 0o777, 0o600);
    let before = std::fs::read(&sk).unwrap();

    let o = ferry(&[&"keygen", &"--without-password", &"--secret-key", &sk, &"--public-key", &pk]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("already exists; pass --force"), "{}", stderr(&o));
    assert_eq!(std::fs::read(&sk).unwrap(), before, "a refused keygen must not touch the key");

    // Building with the encrypted key: no password and no terminal is a clear error; the
    // password file or the environment opens it; the wrong one does not.
    let out = dir.path().join("out");
    let o = ferry(&[&"build", &demo_spec(), &"--secret-key", &sk, &"--out", &out]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--password-file"), "{}", stderr(&o));
    let o = ferry(&[
        &"build",
        &demo_spec(),
        &"--secret-key",
        &sk,
        &"--out",
        &out,
        &"--password-file",
        &password_file,
    ]);
    assert_ok(&o);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ferry"));
    cmd.arg("build").arg(demo_spec()).arg("--secret-key").arg(&sk).arg("--out").arg(&out);
    let o = cmd.env("FERRY_KEY_PASSWORD", "wrong").output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("wrong password"), "{}", stderr(&o));

    let o = ferry(&[
        &"keygen",
        &"--without-password",
        &"--force",
        &"--secret-key",
        &sk,
        &"--public-key",
        &pk,
        &"--json",
    ]);
    assert_ok(&o);
    assert_ne!(std::fs::read(&sk).unwrap(), before);
    let made: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(made["encrypted"], false);
}

#[test]
fn stock_minisign_signs_with_a_ferry_key() {
    // Keys are minisign's own format both ways: the stock tool signs with our secret key and
    // our verifier accepts it.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("data");
    std::fs::write(&file, b"hello").unwrap();
    let o = ferry_manifests::test_tools::tool("minisign")
        .arg("-S")
        .arg("-s")
        .arg(fixture("test.key"))
        .arg("-m")
        .arg(&file)
        .arg("-t")
        .arg("ok")
        .output()
        .unwrap();
    assert_ok(&o);
    let signature = ferry_manifests::SignatureFile::parse(
        &std::fs::read_to_string(dir.path().join("data.minisig")).unwrap(),
    )
    .unwrap();
    let public = ferry_manifests::PublicKey::from_text(
        &std::fs::read_to_string(fixture("test.pub")).unwrap(),
        "test.pub",
    )
    .unwrap();
    signature.verify(&public, b"hello").unwrap();
    assert!(signature.verify(&public, b"hellO").is_err());
}
