//! Fetching Elastic artifacts: download (or copy) each archive with its `.sha512` and `.asc`,
//! verify both, and keep the verified files in a content-addressed cache so that a rebuild
//! downloads nothing twice.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use ferry_artifacts::{ArtifactId, BlobStore, Keyring, Sha512Digest};
use ferry_manifests::Sha256Digest;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::{Deserialize, Serialize};

use crate::spec::Upstream;

/// Sidecars are small; anything bigger is not one.
pub(crate) const MAX_SIDECAR: u64 = 1 << 20;

/// One failure to obtain a verified artifact.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FetchError {
    #[error("{url}: not found (HTTP 404)")]
    NotFound { url: String },
    #[error("{url}: HTTP {status}")]
    Status { url: String, status: u16 },
    #[error("{url}: {reason} (gave up after {attempts} attempts)")]
    Transport { url: String, reason: String, attempts: u32 },
    #[error("{url}: larger than the {max} bytes such a file may have")]
    TooLarge { url: String, max: u64 },
    #[error(transparent)]
    Sidecar(#[from] ferry_artifacts::SidecarError),
    #[error(transparent)]
    Pgp(#[from] ferry_artifacts::PgpError),
    #[error(transparent)]
    Store(#[from] ferry_artifacts::StoreError),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    /// A file that arrived whole but is not what it must be (an integration package whose
    /// zip is not the package the registry named).
    #[error("{file}: {reason}")]
    Refused { file: String, reason: String },
}

/// Every failure of a fetch run, so the operator sees all missing files at once.
#[derive(Debug)]
pub struct FetchErrors(pub Vec<FetchError>);

impl std::fmt::Display for FetchErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} artifact file(s) could not be fetched and verified:", self.0.len())?;
        for e in &self.0 {
            write!(f, "\n  - {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for FetchErrors {}

impl FetchErrors {
    /// Whether an artifact was refused: missing upstream (the spec names a file Elastic does not
    /// publish), or not vouched for by its `.sha512` or `.asc`; as opposed to out of reach
    /// (network, HTTP errors, the local disk).
    pub fn is_refusal(&self) -> bool {
        self.0.iter().any(|e| {
            matches!(
                e,
                FetchError::NotFound { .. }
                    | FetchError::TooLarge { .. }
                    | FetchError::Sidecar(_)
                    | FetchError::Pgp(_)
                    | FetchError::Refused { .. }
            )
        })
    }
}

/// A verified artifact and its sidecars, as files in the cache.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub id: ArtifactId,
    pub archive: PathBuf,
    pub sha512_file: PathBuf,
    pub asc_file: PathBuf,
    pub size: u64,
    pub sha512: Sha512Digest,
    /// Fingerprint of the PGP key that signed it.
    pub signer: String,
    /// Whether nothing had to be fetched for it.
    pub from_cache: bool,
}

/// What the cache remembers of one verified artifact: the blobs of its three files.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct IndexEntry {
    archive: String,
    sha512: String,
    asc: String,
}

/// The builder's download cache: a blob store plus an index from mirror path to blobs.
pub struct Cache {
    store: BlobStore,
    index: PathBuf,
}

impl Cache {
    /// Opens (making it if missing) the cache at `root`; an error names the folder, so every
    /// command that opens it refuses alike.
    pub fn open(root: &Path) -> anyhow::Result<Self> {
        let open = || -> anyhow::Result<Self> {
            let store = BlobStore::open(&root.join("blobs"))?;
            let index = root.join("index");
            fs::create_dir_all(&index)?;
            Ok(Self { store, index })
        };
        use anyhow::Context as _;
        open().with_context(|| format!("cannot open cache {}", root.display()))
    }

    /// The default cache folder: `$XDG_CACHE_HOME/ferry`, else `~/.cache/ferry`.
    pub fn default_dir() -> PathBuf {
        std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
            .unwrap_or_else(|| PathBuf::from(".cache"))
            .join("ferry")
    }

    pub(crate) fn store(&self) -> &BlobStore {
        &self.store
    }

    /// The index file of what is cached for `key` (a path below the upstream).
    fn entry_path(&self, key: &str) -> PathBuf {
        self.index.join(format!("{key}.json"))
    }

    /// What the index holds for `key`, if it reads.
    pub(crate) fn read_entry<T: serde::de::DeserializeOwned>(&self, key: &str) -> Option<T> {
        serde_json::from_slice(&fs::read(self.entry_path(key)).ok()?).ok()
    }

    /// Records `entry` for `key`, replacing any earlier one whole (written aside, renamed).
    pub(crate) fn write_entry<T: Serialize>(&self, key: &str, entry: &T) -> Result<(), FetchError> {
        let path = self.entry_path(key);
        let io = |source| FetchError::Io { path: path.clone(), source };
        fs::create_dir_all(path.parent().expect("index entries have a parent")).map_err(io)?;
        let tmp = path.with_extension("json.tmp");
        fs::write(&tmp, serde_json::to_vec_pretty(entry).expect("serialisable")).map_err(io)?;
        fs::rename(tmp, &path).map_err(io)
    }

    fn lookup(&self, id: &ArtifactId) -> Option<[Sha256Digest; 3]> {
        let entry: IndexEntry = self.read_entry(&id.mirror_path())?;
        let digests = [entry.archive, entry.sha512, entry.asc].map(|h| Sha256Digest::from_hex(&h));
        let [Some(a), Some(s), Some(c)] = digests else { return None };
        [a, s, c].iter().all(|d| self.store.contains(d)).then_some([a, s, c])
    }

    /// Whether a verified copy of `id` is cached (for `plan`).
    pub fn has(&self, id: &ArtifactId) -> bool {
        self.lookup(id).is_some()
    }

    fn record(&self, id: &ArtifactId, digests: [Sha256Digest; 3]) -> Result<(), FetchError> {
        let entry = IndexEntry {
            archive: digests[0].to_hex(),
            sha512: digests[1].to_hex(),
            asc: digests[2].to_hex(),
        };
        self.write_entry(&id.mirror_path(), &entry)
    }
}

/// One artifact fetched and verified, or every file of it that failed.
type Outcome = Result<Fetched, Vec<FetchError>>;

/// How to fetch.
pub struct Fetcher {
    upstream: Upstream,
    agent: ureq::Agent,
    /// What archives' `.asc` must verify with; `None` for a fetcher that only downloads
    /// ([`Fetcher::get`], for files verified otherwise, as `crate::defend` does).
    keyring: Option<Keyring>,
    cache: Cache,
    /// Downloads at once.
    pub parallel: usize,
    /// Attempts per file before giving up.
    pub attempts: u32,
    /// First pause between attempts; doubled each time, capped at 30 s.
    pub backoff: Duration,
}

impl Fetcher {
    pub fn new(
        upstream: Upstream,
        keyring: Keyring,
        cache: Cache,
        ca_file: Option<&Path>,
    ) -> anyhow::Result<Self> {
        Self::with_keyring(upstream, Some(keyring), cache, ca_file)
    }

    /// A fetcher that only downloads: [`Fetcher::fetch_all`] refuses every artifact with it.
    pub fn without_keyring(
        upstream: Upstream,
        cache: Cache,
        ca_file: Option<&Path>,
    ) -> anyhow::Result<Self> {
        Self::with_keyring(upstream, None, cache, ca_file)
    }

    fn with_keyring(
        upstream: Upstream,
        keyring: Option<Keyring>,
        cache: Cache,
        ca_file: Option<&Path>,
    ) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        let mut tls = ureq::tls::TlsConfig::builder();
        if let Some(ca) = ca_file {
            let pem =
                fs::read(ca).with_context(|| format!("cannot read CA file {}", ca.display()))?;
            let certs = ureq::tls::parse_pem(&pem)
                .filter_map(|item| match item {
                    Ok(ureq::tls::PemItem::Certificate(c)) => Some(Ok(c)),
                    Ok(_) => None,
                    Err(e) => Some(Err(e)),
                })
                .collect::<Result<Vec<_>, _>>()
                .with_context(|| format!("CA file {} is not PEM", ca.display()))?;
            anyhow::ensure!(!certs.is_empty(), "CA file {} holds no certificate", ca.display());
            tls = tls.root_certs(ureq::tls::RootCerts::new_with_certs(&certs));
        }
        let config = ureq::Agent::config_builder()
            .tls_config(tls.build())
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(30)))
            .timeout_recv_response(Some(Duration::from_secs(60)))
            .user_agent(format!("ferry/{}", env!("CARGO_PKG_VERSION")))
            .build();
        Ok(Self {
            upstream,
            agent: config.into(),
            keyring,
            cache,
            parallel: 4,
            attempts: 5,
            backoff: Duration::from_secs(1),
        })
    }

    /// Where a file below `downloads/` is fetched from.
    pub fn source_of(&self, mirror_path: &str) -> String {
        self.upstream.source_of(mirror_path)
    }

    pub fn cache(&self) -> &Cache {
        &self.cache
    }

    /// The keys what it fetches must be signed with (none for a fetcher of files checked by
    /// other means, `crate::defend`'s).
    pub fn keyring(&self) -> Option<&Keyring> {
        self.keyring.as_ref()
    }

    /// The size the upstream announces for a file below it (a `HEAD`), for `plan`.
    pub(crate) fn announced_size(&self, path: &str) -> Option<u64> {
        let source = self.source_of(path);
        match &self.upstream {
            Upstream::Dir(_) => fs::metadata(source).ok().map(|m| m.len()),
            Upstream::Http(_) => {
                let response = self.agent.head(&source).call().ok()?;
                if response.status() == 200 { content_length(&response) } else { None }
            }
        }
    }

    /// Fetches and verifies every artifact, `parallel` at a time. Returns them in input order,
    /// or every failure.
    pub fn fetch_all(&self, ids: &[ArtifactId], bars: &Bars) -> Result<Vec<Fetched>, FetchErrors> {
        collect(in_parallel(ids, self.parallel, |id| self.fetch_one(id, bars)))
    }

    /// Fetches one artifact; on failure, every file of it that failed (a missing `.sha512` does
    /// not hide a missing `.asc`).
    fn fetch_one(&self, id: &ArtifactId, bars: &Bars) -> Outcome {
        if let Some(digests) = self.cache.lookup(id) {
            // Cached files were verified when they entered; verify again, since a bundle is
            // never written with an unverified artifact and the keyring may have changed.
            match self.verify(id, &digests, true) {
                Ok(f) => {
                    tracing::info!(artifact = %id, "served from cache");
                    return Ok(f);
                }
                Err(e) => {
                    tracing::warn!(artifact = %id, error = %e, "cached copy no longer verifies; fetching again");
                }
            }
        }
        let path = id.mirror_path();
        // Sidecars first: a missing one fails fast, before hundreds of megabytes move.
        let sha512 = self.get(&format!("{path}.sha512"), Some(MAX_SIDECAR), bars);
        let asc = self.get(&format!("{path}.asc"), Some(MAX_SIDECAR), bars);
        let (sha512, asc) = match (sha512, asc) {
            (Ok(s), Ok(a)) => (s, a),
            (s, a) => return Err([s.err(), a.err()].into_iter().flatten().collect()),
        };
        let archive = self.get(&path, None, bars).map_err(|e| vec![e])?;
        self.finish_fetch(id, &sha512, &asc, &archive).map_err(|e| vec![e])
    }

    /// Verifies freshly fetched files and moves them into the cache.
    fn finish_fetch(
        &self,
        id: &ArtifactId,
        sha512: &Path,
        asc: &Path,
        archive: &Path,
    ) -> Result<Fetched, FetchError> {
        let store = &self.cache.store;
        let sha512 = store.insert_file(sha512, None)?.0;
        let asc = store.insert_file(asc, None)?.0;
        // The archive enters the cache only once verified.
        let archive_digest = ferry_artifacts::hash_file(archive)?.0;
        let digests = [archive_digest, sha512, asc];
        let verified = self.verify_paths(id, archive, &digests, false);
        let verified = match verified {
            Ok(v) => v,
            Err(e) => {
                let _ = fs::remove_file(archive);
                return Err(e);
            }
        };
        store.insert_file(archive, Some(&archive_digest))?;
        self.cache.record(id, digests)?;
        Ok(Fetched { archive: store.path(&archive_digest), ..verified })
    }

    fn verify(
        &self,
        id: &ArtifactId,
        digests: &[Sha256Digest; 3],
        from_cache: bool,
    ) -> Result<Fetched, FetchError> {
        self.verify_paths(id, &self.cache.store.path(&digests[0]), digests, from_cache)
    }

    /// Checks the archive at `archive` against its `.sha512` and `.asc` (blobs in the store).
    fn verify_paths(
        &self,
        id: &ArtifactId,
        archive: &Path,
        digests: &[Sha256Digest; 3],
        from_cache: bool,
    ) -> Result<Fetched, FetchError> {
        let store = &self.cache.store;
        let name = id.file_name();
        let read =
            |p: &Path| fs::read(p).map_err(|source| FetchError::Io { path: p.to_owned(), source });
        let open = |p: &Path| {
            File::open(p).map_err(|source| FetchError::Io { path: p.to_owned(), source })
        };
        let (sha512_file, asc_file) = (store.path(&digests[1]), store.path(&digests[2]));
        let sidecar = String::from_utf8_lossy(&read(&sha512_file)?).into_owned();
        let actual = Sha512Digest::of_reader(open(archive)?)
            .map_err(|source| FetchError::Io { path: archive.to_owned(), source })?;
        ferry_artifacts::check_sidecar(&sidecar, &format!("{name}.sha512"), &name, &actual)?;
        let asc = String::from_utf8_lossy(&read(&asc_file)?).into_owned();
        let Some(keyring) = &self.keyring else {
            return Err(FetchError::Refused {
                file: name,
                reason: "no PGP key to check it".into(),
            });
        };
        let signer = keyring.verify(&asc, &format!("{name}.asc"), &name, open(archive)?)?;
        let size = fs::metadata(archive)
            .map_err(|source| FetchError::Io { path: archive.to_owned(), source })?
            .len();
        Ok(Fetched {
            id: id.clone(),
            archive: archive.to_owned(),
            sha512_file,
            asc_file,
            size,
            sha512: actual,
            signer,
            from_cache,
        })
    }

    /// Fetches one file below `downloads/` into a temporary file in the cache, resuming with a
    /// byte range after a dropped connection and retrying with backoff. The caller verifies it
    /// and moves it into the store, or removes it.
    pub(crate) fn get(
        &self,
        mirror_path: &str,
        max: Option<u64>,
        bars: &Bars,
    ) -> Result<PathBuf, FetchError> {
        let dest = self.cache.store.temp_path(mirror_path.rsplit('/').next().unwrap_or("file"));
        let url = self.source_of(mirror_path);
        let io_err = |source| FetchError::Io { path: dest.clone(), source };
        if let Upstream::Dir(_) = self.upstream {
            let from = PathBuf::from(&url);
            return match fs::copy(&from, &dest) {
                Ok(n) if max.is_some_and(|m| n > m) => {
                    Err(FetchError::TooLarge { url, max: max.unwrap_or(0) })
                }
                Ok(_) => Ok(dest),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Err(FetchError::NotFound { url }),
                Err(source) => Err(FetchError::Io { path: from, source }),
            };
        }
        let bar = bars.add(ProgressBar::no_length());
        bar.set_style(
            ProgressStyle::with_template(
                "{msg:40!} [{bar:25}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        bar.set_message(mirror_path.rsplit('/').next().unwrap_or(mirror_path).to_owned());
        let mut last_error = String::new();
        // The length the upstream first announced: a resumed response for another length means
        // the file changed in between, and the pieces must not be spliced together.
        let mut announced: Option<u64> = None;
        for attempt in 0..self.attempts {
            if attempt > 0 {
                let pause = self
                    .backoff
                    .saturating_mul(1 << (attempt - 1).min(5))
                    .min(Duration::from_secs(30));
                tracing::info!(%url, attempt, ?pause, error = %last_error, "retrying");
                std::thread::sleep(pause);
            }
            let have = fs::metadata(&dest).map(|m| m.len()).unwrap_or(0);
            let mut request = self.agent.get(&url);
            if have > 0 {
                request = request.header("Range", &format!("bytes={have}-"));
            }
            let response = match request.call() {
                Ok(r) => r,
                Err(e) => {
                    last_error = e.to_string();
                    continue;
                }
            };
            let status = response.status().as_u16();
            let append = match status {
                200 => false,
                206 if content_range(&response)
                    .is_some_and(|(_, total)| announced.is_some_and(|a| a != total)) =>
                {
                    let _ = fs::remove_file(&dest);
                    announced = None;
                    last_error = "the file changed upstream while resuming; starting over".into();
                    continue;
                }
                206 if content_range(&response).map(|(start, _)| start) == Some(have) => true,
                206 => {
                    // A range we did not ask for: start over.
                    let _ = fs::remove_file(&dest);
                    last_error = "server answered with an unexpected range".into();
                    continue;
                }
                416 => {
                    let _ = fs::remove_file(&dest);
                    last_error = "server refused the resume range".into();
                    continue;
                }
                404 => {
                    bar.finish_and_clear();
                    return Err(FetchError::NotFound { url });
                }
                s if s >= 500 || s == 429 || s == 408 => {
                    last_error = format!("HTTP {s}");
                    continue;
                }
                s => {
                    bar.finish_and_clear();
                    return Err(FetchError::Status { url, status: s });
                }
            };
            let start = if append { have } else { 0 };
            if let Some(total) = content_length(&response).map(|n| n + start) {
                announced.get_or_insert(total);
                if max.is_some_and(|m| total > m) {
                    bar.finish_and_clear();
                    return Err(FetchError::TooLarge { url, max: max.unwrap_or(0) });
                }
                bar.set_length(total);
            }
            bar.set_position(start);
            let mut file = OpenOptions::new()
                .create(true)
                .write(true)
                .append(append)
                .truncate(!append)
                .open(&dest)
                .map_err(io_err)?;
            let mut body = response.into_body().into_reader();
            match copy_counting(&mut body, &mut file, &bar, max.map(|m| m - start.min(m))) {
                Ok(()) => {
                    bar.finish_and_clear();
                    return Ok(dest);
                }
                Err(CopyError::TooLarge) => {
                    bar.finish_and_clear();
                    return Err(FetchError::TooLarge { url, max: max.unwrap_or(0) });
                }
                Err(CopyError::Write(source)) => return Err(io_err(source)),
                Err(CopyError::Read(e)) => last_error = format!("connection lost: {e}"),
            }
        }
        bar.finish_and_clear();
        Err(FetchError::Transport { url, reason: last_error, attempts: self.attempts })
    }
}

/// The progress bars of one fetch run.
pub type Bars = MultiProgress;

/// Progress bars on stderr when it is a terminal and not `quiet`.
pub fn bars(quiet: bool) -> Bars {
    if quiet || !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        MultiProgress::with_draw_target(ProgressDrawTarget::hidden())
    } else {
        MultiProgress::new()
    }
}

/// `f` over every item, `parallel` at a time on scoped threads; results in input order.
pub(crate) fn in_parallel<T: Sync, R: Send>(
    items: &[T],
    parallel: usize,
    f: impl Fn(&T) -> R + Sync,
) -> Vec<R> {
    let next = AtomicUsize::new(0);
    let results: Vec<Mutex<Option<R>>> = items.iter().map(|_| Mutex::new(None)).collect();
    std::thread::scope(|scope| {
        for _ in 0..parallel.clamp(1, items.len().max(1)) {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(item) = items.get(i) else { return };
                    let result = f(item);
                    *results[i].lock().expect("no panics while locked") = Some(result);
                }
            });
        }
    });
    results
        .into_iter()
        .map(|r| r.into_inner().expect("no panics while locked").expect("every item tried"))
        .collect()
}

/// Every success in order, or every failure.
pub(crate) fn collect<T>(outcomes: Vec<Result<T, Vec<FetchError>>>) -> Result<Vec<T>, FetchErrors> {
    let mut done = Vec::new();
    let mut errors = Vec::new();
    for outcome in outcomes {
        match outcome {
            Ok(f) => done.push(f),
            Err(e) => errors.extend(e),
        }
    }
    if errors.is_empty() { Ok(done) } else { Err(FetchErrors(errors)) }
}

fn content_length(response: &ureq::http::Response<ureq::Body>) -> Option<u64> {
    response.headers().get("content-length")?.to_str().ok()?.parse().ok()
}

/// The first byte and the total length of a `Content-Range: bytes START-END/TOTAL` header.
fn content_range(response: &ureq::http::Response<ureq::Body>) -> Option<(u64, u64)> {
    let value = response.headers().get("content-range")?.to_str().ok()?;
    let (range, total) = value.strip_prefix("bytes ")?.split_once('/')?;
    Some((range.split('-').next()?.parse().ok()?, total.parse().ok()?))
}

enum CopyError {
    Read(io::Error),
    Write(io::Error),
    TooLarge,
}

fn copy_counting(
    body: &mut dyn Read,
    file: &mut File,
    bar: &ProgressBar,
    max: Option<u64>,
) -> Result<(), CopyError> {
    let mut buf = vec![0u8; 256 << 10];
    let mut written = 0u64;
    loop {
        let n = match body.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                let _ = file.flush();
                return Err(CopyError::Read(e));
            }
        };
        written += n as u64;
        if max.is_some_and(|m| written > m) {
            return Err(CopyError::TooLarge);
        }
        file.write_all(&buf[..n]).map_err(CopyError::Write)?;
        bar.inc(n as u64);
    }
    file.sync_all().map_err(CopyError::Write)
}

/// A plan entry: one file the build needs and where it comes from.
#[derive(Debug, Clone, Serialize)]
pub struct PlannedFile {
    pub source: String,
    pub bundle_path: String,
    /// A verified copy is in the download cache (artifacts only).
    pub cached: bool,
    /// A file of the spec (or its upstream PGP key), not an artifact.
    pub local: bool,
    /// A local file that is not there (artifacts are only known missing once fetched).
    pub missing: bool,
}

/// Every file the artifacts need, in bundle order, without fetching anything.
pub fn plan(upstream: &Upstream, cache: &Cache, ids: &[ArtifactId]) -> Vec<PlannedFile> {
    let mut files = BTreeMap::new();
    for id in ids {
        let cached = cache.has(id);
        let path = id.mirror_path();
        for p in [path.clone(), format!("{path}.sha512"), format!("{path}.asc")] {
            files.insert(
                format!("{}/{p}", ferry_artifacts::MIRROR_ROOT),
                PlannedFile {
                    source: upstream.source_of(&p),
                    bundle_path: String::new(),
                    cached,
                    local: false,
                    missing: false,
                },
            );
        }
    }
    files.into_iter().map(|(bundle_path, f)| PlannedFile { bundle_path, ..f }).collect()
}
