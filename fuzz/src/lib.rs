//! The fuzz targets' harnesses, one plain function per target: the libFuzzer binaries in
//! `fuzz_targets/` call them, and `tests/corpus.rs` replays the committed corpora through them,
//! so an input is checked by `cargo test` exactly as the fuzzer ran it.
//!
//! Each harness feeds the input to the parser and, when the parser accepts it, asserts what the
//! parser promises about the accepted value. A panic anywhere is a finding.

use std::path::{Component, Path, PathBuf};
use std::sync::OnceLock;

use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use ferry_appliance::ApiError;
use ferry_appliance::fuzzing;
use ferry_artifacts::{ArtifactId, PackageKind, Platform, Product, Sha512Digest, Version};
use ferry_manifests::forge::{self, Piece};
use ferry_manifests::tar::RawHeader;
use ferry_manifests::{
    BundleComment, BundleName, DELTA_FORMAT, EntryName, Expiry, FORMAT, Limits, MANIFEST_ENTRY,
    MANIFEST_SIGNATURE_ENTRY, MAX_BUNDLE_NAME_LEN, MAX_COMPONENT_LEN, MAX_ENTRY_NAME_LEN, Manifest,
    ManifestComment, Mode, NoProgress, Sha256Digest, SignedBundle, SigningKey, StagingDir,
    TrustedKeys, VerifiedBundle, VerifyError, check_collisions,
};
use time::macros::datetime;

/// A throwaway minisign key, committed in the clear so the bundle target can sign what it
/// forges and reach past both signature checks. It protects nothing; never trust it.
pub const TEST_KEY: &str = include_str!("../fuzz-test.key");

/// The "now" the harnesses check expiry against, fixed so a replayed input behaves the same on
/// any day.
const NOW: time::OffsetDateTime = datetime!(2026-11-15 00:00 UTC);

/// The test key, decoded once per process.
pub fn test_key() -> &'static SigningKey {
    static KEY: OnceLock<SigningKey> = OnceLock::new();
    KEY.get_or_init(|| {
        SigningKey::from_text(TEST_KEY, "fuzz/fuzz-test.key", None).expect("the test key loads")
    })
}

// ---------------------------------------------------------------------------------------------
// manifest

/// Expiry tolerances the appliance can be configured with (`expiry_tolerance_days`, a `u32`):
/// none, a day, and the largest.
fn tolerances() -> [time::Duration; 3] {
    [time::Duration::ZERO, time::Duration::days(1), time::Duration::days(i64::from(u32::MAX))]
}

/// `Manifest::parse` with the reader's limits; an accepted manifest must satisfy every rule of
/// format 1, survive what the reader and the appliance do next (re-serialising, trusted
/// comments, the expiry check), and re-parse to itself.
pub fn manifest(data: &[u8]) {
    let limits = Limits::default();
    let Ok(manifest) = Manifest::parse(data, &limits) else { return };
    assert_valid_manifest(&manifest, &limits);
    let again = Manifest::parse(&manifest.to_bytes(), &limits).expect("a re-serialised manifest");
    assert_eq!(again, manifest);
    let comment = ManifestComment { name: manifest.name.clone(), sequence: manifest.sequence };
    assert_eq!(comment.to_string().parse::<ManifestComment>(), Ok(comment));
    let comment = BundleComment {
        name: manifest.name.clone(),
        sequence: manifest.sequence,
        manifest_sha256: Sha256Digest::of(data),
    };
    assert_eq!(comment.to_string().parse::<BundleComment>(), Ok(comment));
    for tolerance in tolerances() {
        let expired = manifest.expired(NOW, tolerance).is_some();
        if tolerance.is_zero() {
            assert_eq!(expired, manifest.expires < NOW);
        }
    }
}

fn assert_valid_manifest(manifest: &Manifest, limits: &Limits) {
    // A delta (format 2) names an earlier bundle of its own name; a full bundle no base and no
    // entry in it.
    match &manifest.base {
        None => {
            assert_eq!(manifest.format, FORMAT);
            assert!(manifest.files.iter().all(|f| !f.in_base));
        }
        Some(base) => {
            assert_eq!(manifest.format, DELTA_FORMAT);
            assert!(base.name == manifest.name && base.sequence < manifest.sequence);
        }
    }
    assert!(manifest.sequence >= 1);
    assert!(manifest.expires >= manifest.created);
    assert_bundle_name(manifest.name.as_str());
    assert!(manifest.files.len() <= limits.max_entries);
    let mut total: u64 = 0;
    for file in &manifest.files {
        assert!(file.size <= limits.max_entry_size);
        total = total.checked_add(file.size).expect("declared sizes are bounded");
        assert_entry_name(file.path.as_str());
    }
    assert!(total <= limits.max_total_size);
    assert_eq!(manifest.total_size(), total);
    for pair in manifest.files.windows(2) {
        assert!(pair[0].path.as_str().as_bytes() < pair[1].path.as_str().as_bytes());
    }
    assert_no_collisions(manifest.files.iter().map(|f| f.path.as_str()));
}

/// The collision rules of the format, checked pair by pair instead of the way
/// `check_collisions` does it.
fn assert_no_collisions<'a>(names: impl Iterator<Item = &'a str>) {
    let folded: Vec<String> = names.map(str::to_ascii_lowercase).collect();
    for (i, a) in folded.iter().enumerate() {
        for b in &folded[i + 1..] {
            assert_ne!(a, b, "names equal without case");
            for (dir, inside) in [(a, b), (b, a)] {
                assert!(!inside.starts_with(&format!("{dir}/")), "{dir} is a file and a folder");
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// entry names

/// What `EntryName` promises about every name it holds (`manifests/src/name.rs` and the format's
/// §4.2).
fn assert_entry_name(name: &str) {
    assert!(!name.is_empty() && name.len() <= MAX_ENTRY_NAME_LEN, "{name:?}: length");
    assert!(
        name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-+@=,~/".contains(&b)),
        "{name:?}: characters"
    );
    assert!(!name.starts_with('/'), "{name:?}: absolute");
    for component in name.split('/') {
        assert!(!component.is_empty(), "{name:?}: empty component");
        assert!(!component.bytes().all(|b| b == b'.'), "{name:?}: dot component");
        assert!(component.len() <= MAX_COMPONENT_LEN, "{name:?}: long component");
    }
    assert!(name != MANIFEST_ENTRY && name != MANIFEST_SIGNATURE_ENTRY, "{name:?}: reserved");
    // Joined below a folder, the name stays inside it.
    let root = Path::new("/staging");
    let joined = name.split('/').fold(root.to_path_buf(), |p, c| p.join(c));
    assert!(joined.starts_with(root), "{name:?}: escapes");
    assert!(
        joined.components().skip(2).all(|c| matches!(c, Component::Normal(_))),
        "{name:?}: joins to {joined:?}"
    );
    assert_eq!(joined.components().count() - 2, name.split('/').count(), "{name:?}: components");
    // It fits a ustar header, which decodes back to the same name.
    let header = RawHeader::file(name, 0o644, 0, 0);
    let block = header.encode().unwrap_or_else(|e| panic!("{name:?} does not encode: {e}"));
    assert_eq!(RawHeader::decode(&block).expect("an encoded header decodes"), header);
}

fn assert_bundle_name(name: &str) {
    let bytes = name.as_bytes();
    assert!(!bytes.is_empty() && bytes.len() <= MAX_BUNDLE_NAME_LEN, "{name:?}: length");
    assert!(bytes[0].is_ascii_lowercase() || bytes[0].is_ascii_digit(), "{name:?}: first");
    assert!(
        bytes.iter().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(b)),
        "{name:?}: characters"
    );
}

/// `EntryName::new`, its `FromStr` and serde twins, `BundleName::new`, `check_collisions` and the
/// mirror's `mirror_entry`: accepted names keep every promise, the three ways in agree, and the
/// collision check agrees with a pair-by-pair one. Lines of the input are names.
pub fn entry_name(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut accepted = Vec::new();
    for line in text.split('\n') {
        let parsed = EntryName::new(line);
        let json = serde_json::to_string(line).expect("a string serialises");
        let via_serde = serde_json::from_str::<EntryName>(&json);
        assert_eq!(parsed.is_ok(), via_serde.is_ok(), "{line:?}: serde disagrees");
        assert_eq!(line.parse::<EntryName>(), parsed.clone(), "{line:?}: FromStr disagrees");
        if let Ok(name) = parsed {
            assert_eq!(name.as_str(), line);
            assert_eq!(via_serde.expect("checked"), name);
            assert_entry_name(name.as_str());
            assert_eq!(name.components().collect::<Vec<_>>().join("/"), line);
            assert_eq!(Some(name.file_name()), line.rsplit('/').next());
            accepted.push(name);
        }
        if let Ok(mirrored) = ferry_artifacts::mirror_entry(line) {
            assert_eq!(mirrored.as_str(), format!("{}/{line}", ferry_artifacts::MIRROR_ROOT));
            assert_entry_name(mirrored.as_str());
        }
        if let Ok(bundle) = BundleName::new(line) {
            assert_eq!(bundle.as_str(), line);
            assert_bundle_name(line);
        }
    }
    let folded: Vec<String> = accepted.iter().map(|n| n.as_str().to_ascii_lowercase()).collect();
    let pairwise_ok = folded.iter().enumerate().all(|(i, a)| {
        folded[i + 1..]
            .iter()
            .all(|b| a != b && !a.starts_with(&format!("{b}/")) && !b.starts_with(&format!("{a}/")))
    });
    assert_eq!(check_collisions(&accepted).is_ok(), pairwise_ok, "{accepted:?}");
}

// ---------------------------------------------------------------------------------------------
// .sha512 sidecars

/// `parse_sidecar` as the builder and appliance call it. The input is `file name \0 sidecar
/// text` (the whole input is the text when there is no NUL, for the name Elastic would use). An
/// accepted digest must be the one on the last line naming the file; and any digest written for
/// a plain file name must parse back.
pub fn sha512(data: &[u8]) {
    let (file_name, text) = match data.iter().position(|&b| b == 0) {
        Some(i) => (String::from_utf8_lossy(&data[..i]), String::from_utf8_lossy(&data[i + 1..])),
        None => ("elastic-agent-9.2.2-linux-x86_64.tar.gz".into(), String::from_utf8_lossy(data)),
    };
    let parsed = ferry_artifacts::parse_sidecar(&text, "fuzz.sha512", &file_name);
    let last_line = text.lines().rev().find_map(|line| {
        match line.split_whitespace().collect::<Vec<_>>().as_slice() {
            [digest, name] if name.strip_prefix('*').unwrap_or(name) == file_name => {
                Some(digest.to_string())
            }
            _ => None,
        }
    });
    match &parsed {
        Ok(digest) => assert_eq!(last_line.as_deref(), Some(digest.to_hex().as_str())),
        Err(_) => {
            if let Some(line) = &last_line {
                assert!(
                    line.len() != 128
                        || !line.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
                    "a good digest {line:?} was refused"
                );
            }
        }
    }
    if let Ok(digest) = &parsed {
        ferry_artifacts::check_sidecar(&text, "fuzz.sha512", &file_name, digest)
            .expect("the digest the sidecar gives checks against itself");
    }
    // Writing: names a release file can have (no whitespace, not starting with '*', which the
    // agent's rules strip) round-trip.
    let plain = !file_name.is_empty()
        && !file_name.starts_with('*')
        && !file_name.chars().any(char::is_whitespace)
        && !file_name.contains(['\n', '\r']);
    if plain {
        let digest = Sha512Digest::of_reader(data).expect("reading memory");
        let written = ferry_artifacts::write_sidecar(&digest, &file_name);
        assert_eq!(ferry_artifacts::parse_sidecar(&written, "w", &file_name), Ok(digest));
    }
}

// ---------------------------------------------------------------------------------------------
// artifact ids

/// `ArtifactId::from_file_name` and `from_mirror_path` on the input, and `ArtifactId::new` on
/// values drawn from it: an id parsed from a name prints as that name; an id built from parts
/// parses back from its name and path; every id's mirror path is a valid entry name.
pub fn artifact_id(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Ok(id) = ArtifactId::from_file_name(&text) {
        assert_eq!(id.file_name(), text);
        assert_eq!(id.to_string(), text);
        assert_artifact_id(&id);
    }
    if let Ok(id) = ArtifactId::from_mirror_path(&text) {
        assert_eq!(id.mirror_path(), text);
        assert_artifact_id(&id);
    }
    if let Ok(version) = text.parse::<Version>() {
        assert_eq!(version.to_string(), text);
    }
    // Parts drawn from the first 16 bytes.
    let mut b = [0u8; 16];
    let n = data.len().min(16);
    b[..n].copy_from_slice(&data[..n]);
    let word = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    let product = Product::ALL[usize::from(b[0]) % Product::ALL.len()];
    let platform = Platform::ALL[usize::from(b[1]) % Platform::ALL.len()];
    let package = PackageKind::ALL[usize::from(b[2]) % PackageKind::ALL.len()];
    let fips = b[3] & 1 == 1;
    let snapshot = b[3] & 2 == 2;
    let version = Version::new(word(4).into(), word(8).into(), word(12).into(), snapshot);
    if let Ok(id) = ArtifactId::new(product, version.clone(), platform, package, fips) {
        assert_eq!(
            (id.product(), id.version(), id.platform(), id.package(), id.fips()),
            (product, &version, platform, package, fips)
        );
        assert_artifact_id(&id);
    }
}

fn assert_artifact_id(id: &ArtifactId) {
    assert_eq!(ArtifactId::from_file_name(&id.to_string()).as_ref(), Ok(id));
    assert_eq!(ArtifactId::from_mirror_path(&id.mirror_path()).as_ref(), Ok(id));
    assert_eq!(id.version().to_string().parse::<Version>().as_ref(), Ok(id.version()));
    let entry = ferry_artifacts::mirror_entry(&id.mirror_path())
        .unwrap_or_else(|e| panic!("{id}: mirror path is not an entry name: {e}"));
    assert_entry_name(entry.as_str());
}

// ---------------------------------------------------------------------------------------------
// agent API bodies

/// A refusal of a body the agent sent must be the agent's fault (400) or too large (413); never
/// an internal error.
fn assert_client_error(error: &ApiError) {
    match error {
        ApiError::Fleet { status, .. } => assert!(
            *status == StatusCode::BAD_REQUEST || *status == StatusCode::PAYLOAD_TOO_LARGE,
            "{status}"
        ),
        _ => panic!("a body was refused with an error that is not the agent's: {error:?}"),
    }
}

fn headers(encoding: Option<&'static str>) -> HeaderMap {
    let mut headers = HeaderMap::new();
    if let Some(encoding) = encoding {
        headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static(encoding));
    }
    headers
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write as _;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(bytes).expect("writing to memory");
    enc.finish().expect("writing to memory")
}

/// The check-in route's body parsing: the input as a plain body, as a gzip body (the raw bytes
/// under `Content-Encoding: gzip`, reaching the decoder with arbitrary streams), and gzipped by
/// us, which must decode exactly as the plain body did.
pub fn checkin(data: &[u8]) {
    let plain = fuzzing::checkin(&headers(None), Bytes::copy_from_slice(data));
    match &plain {
        Ok(status) => assert!(!status.is_empty(), "a check-in without a status was accepted"),
        Err(e) => assert_client_error(e),
    }
    if let Err(e) = fuzzing::checkin(&headers(Some("gzip")), Bytes::copy_from_slice(data)) {
        assert_client_error(&e);
    }
    let zipped = fuzzing::checkin(&headers(Some(" GZip ")), Bytes::from(gzip(data)));
    match (&plain, &zipped) {
        (Ok(a), Ok(b)) => assert_eq!(a, b),
        (Err(a), Err(b)) => assert_eq!(format!("{a:?}"), format!("{b:?}")),
        _ => panic!("gzip changed the outcome: plain {plain:?}, gzipped {zipped:?}"),
    }
}

/// The acks route's body parsing: refusals are the agent's fault; a policy ack's id and revision
/// are exactly what its action id spells.
pub fn ack(data: &[u8]) {
    match fuzzing::acks(data) {
        Err(e) => assert_client_error(&e),
        Ok(events) => {
            for (action_id, policy) in events {
                let Some((policy, revision)) = policy else {
                    continue;
                };
                assert!(!policy.contains(':'));
                let rest = action_id
                    .strip_prefix(&format!("policy:{policy}:"))
                    .unwrap_or_else(|| panic!("{action_id:?} does not ack policy {policy:?}"));
                let digits = rest.split(':').next().unwrap_or(rest);
                assert_eq!(digits.parse::<u64>(), Ok(revision), "{action_id:?}");
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// bundles

/// The manifest of the bundles whose payload the fuzzer writes (`bundle` mode 0): three files,
/// one nested two deep, one executable spanning two blocks, one empty.
pub fn fixed_manifest() -> &'static Manifest {
    static MANIFEST: OnceLock<Manifest> = OnceLock::new();
    MANIFEST.get_or_init(|| {
        let mut files: Vec<_> =
            fixed_payload().iter().map(|(path, body)| forge::declared(path, body)).collect();
        files[1].mode = Mode::Executable;
        forge::manifest(1, files)
    })
}

/// The payload files the fixed manifest declares, in order.
pub fn fixed_payload() -> [(&'static str, Vec<u8>); 3] {
    [
        ("a/b.txt", b"hello, fuzzer\n".to_vec()),
        ("a/c/d.bin", (0..700u32).map(|i| (i * 7) as u8).collect()),
        ("e", Vec::new()),
    ]
}

/// The fixed manifest's two signed metadata entries, as tar bytes.
pub fn fixed_head() -> &'static [u8] {
    static HEAD: OnceLock<Vec<u8>> = OnceLock::new();
    HEAD.get_or_init(|| forge::tar_bytes(&forge::head(test_key(), fixed_manifest()), false))
}

/// The tar bytes after the fixed head that make a valid bundle: the payload and the end marker.
pub fn fixed_tail() -> Vec<u8> {
    let pieces: Vec<Piece> = fixed_payload()
        .iter()
        .map(|(path, body)| {
            let mode = if *path == "a/c/d.bin" { 0o755 } else { 0o644 };
            Piece::Entry(RawHeader::file(path, mode, body.len() as u64, 0), body.clone())
        })
        .collect();
    forge::tar_bytes(&pieces, true)
}

/// The largest payload the manifest mode writes out for the manifest it was given.
const MAX_GENERATED_PAYLOAD: u64 = 1 << 20;

/// Builds the decompressed tar stream for `bundle` and the manifest bytes its detached
/// signature names. Mode (first byte mod 3):
/// 0. the rest is the tar stream after the fixed, validly signed head;
/// 1. the rest is `manifest.json`, signed as it is; when it parses and declares at most 1 MiB,
///    each declared file follows with its declared size, mode and a body of zeros (so a
///    manifest that declares zeros' digests is accepted and written);
/// 2. the rest is the whole tar stream (the fixed manifest's comment is signed).
pub fn bundle_stream(data: &[u8]) -> (Vec<u8>, Vec<u8>, bool) {
    let (first, rest) = data.split_first().map_or((0, data), |(f, r)| (*f, r));
    let gzip = (first / 3) % 2 == 1;
    let (stream, manifest_bytes) = match first % 3 {
        0 => ([fixed_head(), rest].concat(), fixed_manifest().to_bytes()),
        1 => (manifest_stream(rest), rest.to_vec()),
        _ => (rest.to_vec(), fixed_manifest().to_bytes()),
    };
    (stream, manifest_bytes, gzip)
}

fn manifest_stream(manifest_bytes: &[u8]) -> Vec<u8> {
    let parsed = Manifest::parse(manifest_bytes, &Limits::default()).ok();
    let comment = match &parsed {
        Some(m) => ManifestComment { name: m.name.clone(), sequence: m.sequence },
        None => ManifestComment { name: fixed_manifest().name.clone(), sequence: 1 },
    };
    let signature = test_key().sign(manifest_bytes, &comment.to_string());
    let mut pieces = vec![
        Piece::file(MANIFEST_ENTRY, manifest_bytes),
        Piece::file(MANIFEST_SIGNATURE_ENTRY, signature.as_bytes()),
    ];
    if let Some(m) = parsed.filter(|m| m.total_size() <= MAX_GENERATED_PAYLOAD) {
        for file in &m.files {
            let body = vec![0u8; usize::try_from(file.size).expect("at most 1 MiB")];
            let header = RawHeader::file(file.path.as_str(), file.mode.bits(), file.size, 0);
            pieces.push(Piece::Entry(header, body));
        }
    }
    forge::tar_bytes(&pieces, true)
}

/// The whole reader on a forged, validly signed bundle (see [`bundle_stream`] for the modes):
/// `SignedBundle::verify` → `read_manifest` → `extract` into a staging folder. Nothing may be
/// written outside staging; an accepted bundle's files must be in staging exactly as declared.
pub fn bundle(data: &[u8]) {
    let (stream, manifest_bytes, gzip) = bundle_stream(data);
    let compressed = if gzip { forge::gzip(&stream) } else { forge::zstd(&stream) };
    let dir = tempfile::Builder::new().prefix("ferry-fuzz-").tempdir().expect("a temp folder");
    let path = dir.path().join("forged.ferry");
    let (name, sequence) = Manifest::parse(&manifest_bytes, &Limits::default())
        .map_or_else(|_| (fixed_manifest().name.clone(), 1), |m| (m.name, m.sequence));
    let comment =
        BundleComment { name, sequence, manifest_sha256: Sha256Digest::of(&manifest_bytes) };
    std::fs::write(&path, &compressed).expect("writing the bundle");
    let signature = ferry_manifests::default_signature_path(&path);
    std::fs::write(&signature, test_key().sign(&compressed, &comment.to_string()))
        .expect("writing the signature");
    let staging_root = dir.path().join("staging");
    let trusted = TrustedKeys::from(test_key().public_key());
    // Expiry is reported, not enforced, so that an expired manifest's payload is still read.
    let expiry = Expiry::AllowExpired { now: NOW, grace: time::Duration::ZERO };
    let result = SignedBundle::verify(&path, &signature, &trusted, Limits::default(), &NoProgress)
        .and_then(|signed| signed.read_manifest(expiry))
        .and_then(|stage| {
            let mut staging = StagingDir::create(&staging_root).expect("creating staging");
            stage.extract(&mut staging, &NoProgress)
        });
    let written = files_below(dir.path());
    for file in &written {
        assert!(
            *file == path || *file == signature || file.starts_with(&staging_root),
            "{file:?} was written outside staging"
        );
    }
    match result {
        Ok(verified) => assert_staged(&verified, &staging_root, &written),
        Err(e) => assert_refusal(&e),
    }
}

/// A forged bundle is refused as a bundle; the local folder never fails.
fn assert_refusal(error: &VerifyError) {
    assert!(error.is_refusal(), "{error}");
}

fn assert_staged(verified: &VerifiedBundle, root: &Path, written: &[PathBuf]) {
    use std::os::unix::fs::PermissionsExt as _;
    assert_valid_manifest(&verified.manifest, &Limits::default());
    let staged = written.iter().filter(|p| p.starts_with(root) && p.is_file()).count();
    assert_eq!(staged, verified.manifest.files.len(), "staged files differ from the manifest");
    for file in &verified.manifest.files {
        let path = file.path.components().fold(root.to_path_buf(), |p, c| p.join(c));
        let meta = std::fs::symlink_metadata(&path).expect("a declared file is staged");
        assert!(meta.file_type().is_file());
        assert_eq!(meta.len(), file.size);
        assert_eq!(meta.permissions().mode() & 0o7777, file.mode.bits());
        let body = std::fs::read(&path).expect("reading a staged file");
        assert_eq!(Sha256Digest::of(&body), file.sha256);
    }
}

/// Every path below `dir`, folders included, without following links.
fn files_below(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(folder) = stack.pop() {
        for entry in std::fs::read_dir(&folder).expect("listing the bundle folder") {
            let entry = entry.expect("listing the bundle folder");
            let path = entry.path();
            if entry.file_type().expect("file type").is_dir() {
                stack.push(path.clone());
            }
            out.push(path);
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// parts index

/// `PartsIndex::parse` (`NAME-SEQ.ferry.parts`), whose only spelling is the writer's: an
/// accepted index re-serialises to the input byte for byte, its layout adds up (counts, every
/// part's size, names numbered in order, parity after data), and what is derived from it (the
/// trusted comment, the transfer note, every stripe's lengths) is computed without a panic.
pub fn parts_index(data: &[u8]) {
    use ferry_manifests::PartsComment;
    use ferry_manifests::parts::{MAX_PARTS, MAX_STRIPE, PartsIndex};
    let Ok(index) = PartsIndex::parse(data) else { return };
    assert_eq!(index.to_text().as_bytes(), data, "an accepted index is in its one spelling");
    let layout = index.layout;
    assert!(layout.total_parts() <= MAX_PARTS);
    assert_eq!(index.parts.len(), layout.total_parts());
    assert!(layout.stripe % 64 == 0 && layout.stripe <= MAX_STRIPE && layout.stripe > 0);
    let data_bytes: u64 = index.data_parts().iter().map(|p| p.size).sum();
    assert_eq!(data_bytes, layout.bundle_size);
    let bundle_file = index.bundle_file();
    for (i, part) in index.parts.iter().enumerate() {
        assert_eq!(part.index, i);
        assert_eq!(part.parity, i >= layout.data_parts);
        assert_eq!(part.file_name, layout.part_name(&bundle_file, i));
        assert!(part.file_name.starts_with(&format!("{bundle_file}.part")));
        if !part.parity {
            assert!(part.size > 0 && part.size <= layout.part_size);
        }
    }
    let comment = index.comment();
    assert_eq!(comment.to_string().parse::<PartsComment>(), Ok(comment));
    assert_eq!(index.bundle_signature.lines().count(), 4);
    let _ = index.transfer_text();
    // The stripe arithmetic the encoder and decoder use, for the first and last stripes.
    let stripes = layout.stripes();
    for k in [0, stripes / 2, stripes - 1] {
        assert!(layout.stripe_len(k) > 0 && layout.shard_len(k) <= layout.stripe);
        for i in 0..layout.data_parts.min(8) {
            assert!(layout.piece_len(i, k) <= layout.stripe_len(k));
        }
    }
}

/// A valid parts index for the seeds: a bundle of `size` bytes signed with the test key, the
/// parts' digests made up (the parser never reads parts).
pub fn sample_parts_index(size: u64, part_size: u64, parity: usize) -> Vec<u8> {
    use ferry_manifests::parts::{Layout, Part, PartsIndex};
    let name = BundleName::new("site").expect("a valid name");
    let comment = BundleComment {
        name: name.clone(),
        sequence: 3,
        manifest_sha256: Sha256Digest::of(b"manifest"),
    };
    let layout = Layout::new(size, part_size, parity).expect("a valid layout");
    let parts = (0..layout.total_parts())
        .map(|i| Part {
            index: i,
            file_name: layout.part_name("site-3.ferry", i),
            size: layout.part_len(i),
            sha256: Sha256Digest::of(&(i as u64).to_le_bytes()),
            parity: i >= layout.data_parts,
        })
        .collect();
    PartsIndex {
        name,
        sequence: 3,
        bundle_sha256: Sha256Digest::of(b"bundle"),
        bundle_signature: test_key().sign(b"bundle", &comment.to_string()),
        layout,
        parts,
    }
    .to_text()
    .into_bytes()
}

// ---------------------------------------------------------------------------------------------
// seeds

/// The hand-made seed inputs per target, `(target, file name, bytes)`. `tests/corpus.rs`
/// checks that each is in `corpus/<target>/`, and writes them there when asked to.
pub fn seeds() -> Vec<(&'static str, &'static str, Vec<u8>)> {
    let fixed = fixed_manifest().to_bytes();
    let tail = fixed_tail();
    let zeros_manifest = {
        let mut m = forge::manifest(7, Vec::new());
        m.files = vec![
            forge::declared("downloads/beats/elastic-agent/a.tar.gz", &[0u8; 600]),
            forge::declared("policies/p.yml", &[]),
        ];
        m.files[1].mode = Mode::Executable;
        m.to_bytes()
    };
    let whole = [fixed_head(), tail.as_slice()].concat();
    let with_mode = |mode: u8, rest: &[u8]| [&[mode][..], rest].concat();
    let checkin = br#"{"status":"online","message":"Running","ack_token":"a1","local_metadata":{"elastic":{"agent":{"version":"9.2.2"}}},"components":[],"agent_policy_id":"default","policy_revision_idx":3}"#;
    vec![
        ("manifest", "fixed", fixed.clone()),
        ("manifest", "zeros", zeros_manifest.clone()),
        ("bundle", "tail-zstd", with_mode(0, &tail)),
        ("bundle", "tail-gzip", with_mode(3, &tail)),
        ("bundle", "manifest-zstd", with_mode(1, &zeros_manifest)),
        ("bundle", "manifest-gzip", with_mode(4, &zeros_manifest)),
        ("bundle", "whole-zstd", with_mode(2, &whole)),
        ("entry_name", "names", b"downloads/beats/elastic-agent/elastic-agent-9.2.2-linux-x86_64.tar.gz\npolicies/Default.yml\nPolicies/default.yml\na/../b\n/etc/passwd\nmanifest.json\na\na/b".to_vec()),
        ("sha512", "elastic", format!("{}  elastic-agent-9.2.2-linux-x86_64.tar.gz\n", "ab".repeat(64)).into_bytes()),
        ("sha512", "named", format!("x.zip\0junk\n{} *x.zip\n", "0f".repeat(64)).into_bytes()),
        ("artifact_id", "agent", b"elastic-agent-fips-9.2.2-SNAPSHOT-linux-arm64.tar.gz".to_vec()),
        ("artifact_id", "deb", b"beats/elastic-agent/elastic-agent-9.2.2-amd64.deb".to_vec()),
        ("artifact_id", "fleet", b"fleet-server/fleet-server-8.19.4-windows-x86_64.zip".to_vec()),
        ("checkin", "report", checkin.to_vec()),
        ("checkin", "gzip", gzip(checkin)),
        ("parts_index", "parity-2", sample_parts_index(10_000, 4096, 2)),
        ("parts_index", "no-parity", sample_parts_index(5 << 20, 2 << 20, 0)),
        ("parts_index", "many-parts", sample_parts_index(40 * 1024 + 5, 1024, 3)),
        ("parts_index", "big-parts", sample_parts_index(9 << 30, 4 << 30, 1)),
        ("parts_index", "one-line-short", {
            // Refused (the last digest line is missing): the fuzzer starts beside the edge too.
            let mut text = sample_parts_index(10_000, 4096, 1);
            let cut = text[..text.len() - 1].iter().rposition(|&b| b == b'\n').expect("lines");
            text.truncate(cut + 1);
            text
        }),
        ("ack", "events", br#"{"events":[{"action_id":"policy:default:3:1","agent_id":"x"},{"action_id":"a1","error":"boom","payload":{"k":1}},{"action_id":""}]}"#.to_vec()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Expiry as `ferry verify` enforces it, at the harnesses' fixed time.
    const ENFORCE: Expiry = Expiry::Enforce { now: NOW, grace: time::Duration::ZERO };

    #[test]
    fn the_fixed_bundle_is_accepted_and_staged() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.ferry");
        let manifest = fixed_manifest();
        let compressed = forge::zstd(&[fixed_head(), fixed_tail().as_slice()].concat());
        let signature = forge::sign_file(&path, test_key(), manifest, &compressed).unwrap();
        let trusted = TrustedKeys::from(test_key().public_key());
        let signed =
            SignedBundle::verify(&path, &signature, &trusted, Limits::default(), &NoProgress)
                .unwrap();
        let mut staging = StagingDir::create(&dir.path().join("s")).unwrap();
        let verified =
            signed.read_manifest(ENFORCE).unwrap().extract(&mut staging, &NoProgress).unwrap();
        assert_eq!(&verified.manifest, manifest);
        let written = files_below(dir.path());
        assert_staged(&verified, &dir.path().join("s"), &written);
    }

    #[test]
    fn the_parts_index_seeds_are_accepted_but_the_short_one() {
        use ferry_manifests::parts::PartsIndex;
        for (target, name, bytes) in seeds() {
            if target == "parts_index" {
                let parsed = PartsIndex::parse(&bytes);
                assert_eq!(parsed.is_ok(), name != "one-line-short", "{name}: {parsed:?}");
                parts_index(&bytes);
            }
        }
    }

    #[test]
    fn every_bundle_mode_accepts_its_seed() {
        // Each seed must reach `Ok`, or the fuzzer would start from refusals only.
        for (target, name, bytes) in seeds() {
            if target != "bundle" {
                continue;
            }
            let (stream, manifest_bytes, gzip) = bundle_stream(&bytes);
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("b.ferry");
            let compressed = if gzip { forge::gzip(&stream) } else { forge::zstd(&stream) };
            let m = Manifest::parse(&manifest_bytes, &Limits::default()).unwrap();
            let signature = forge::sign_file(&path, test_key(), &m, &compressed).unwrap();
            let trusted = TrustedKeys::from(test_key().public_key());
            let result =
                SignedBundle::verify(&path, &signature, &trusted, Limits::default(), &NoProgress)
                    .and_then(|s| s.read_manifest(ENFORCE))
                    .and_then(|s| s.extract(&mut ferry_manifests::Discard, &NoProgress));
            assert!(result.is_ok(), "{name}: {:?}", result.err());
        }
    }
}
