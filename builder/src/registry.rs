//! Integration packages from Elastic's package registry: each `[[integration]]` is resolved
//! through the registry's `/search`, and each package selected is fetched as its zip and `.sig`,
//! the signature verified with Elastic's PGP key and the package's own `manifest.yml` read
//! before anything is cached or goes into a bundle.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use ferry_artifacts::Keyring;
use ferry_artifacts::epr_version::{Constraint, Version};
use ferry_manifests::{
    EntryName, Kind, Metadata, Mode, PayloadSource, PgpKeyFacts, Sha256Digest, SidecarFormat,
};
use serde::{Deserialize, Serialize};

use crate::fetch::{self, Bars, Cache, FetchError, FetchErrors, Fetcher, PlannedFile};
use crate::spec::{IntegrationSection, Spec, Upstream};

/// Where packages come from when the spec names no registry.
pub const DEFAULT_REGISTRY: &str = "https://epr.elastic.co/";

/// A `/search` answer is JSON of a few hundred bytes per package; the registry's whole
/// catalogue with `all=true` is about 8 MB today.
const MAX_SEARCH: u64 = 64 << 20;

/// A package's `manifest.yml` is a few KiB; more is not a manifest.
const MAX_PACKAGE_MANIFEST: u64 = 1 << 20;

/// One package version the spec selects.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Selected {
    pub name: String,
    pub version: String,
}

impl Selected {
    /// Its zip below the registry (`epr/NAME/NAME-VERSION.zip`), as the registry's search
    /// answers and its `distribution` tool downloads it.
    pub fn download_path(&self) -> String {
        format!("epr/{0}/{0}-{1}.zip", self.name, self.version)
    }

    /// Its zip in the bundle, where the appliance's registry looks for it.
    pub fn bundle_path(&self) -> String {
        format!("packages/{}-{}.zip", self.name, self.version)
    }

    fn file_name(&self) -> String {
        format!("{}-{}.zip", self.name, self.version)
    }
}

/// The registry as the spec names it: resolved, before anything is fetched.
pub struct RegistryPlan {
    pub url: String,
    pub key_path: PathBuf,
    pub ca_file: Option<PathBuf>,
}

impl RegistryPlan {
    /// The spec's registry, or `None` when it asks for no integration.
    pub fn of(spec: &Spec, base: &Path) -> anyhow::Result<Option<Self>> {
        if spec.integrations.is_empty() {
            if spec.registry.is_some() {
                tracing::warn!("[registry] is set but no [[integration]] asks for a package");
            }
            return Ok(None);
        }
        // A malformed entry is the spec's error (exit 2), found before the registry is asked.
        for (n, entry) in spec.integrations.iter().enumerate() {
            wanted(entry, &entry_name(n, entry))?;
        }
        let section = spec.registry.as_ref();
        let url = match section.and_then(|r| r.url.as_deref()) {
            None => DEFAULT_REGISTRY.to_owned(),
            Some(url) => Spec::http_base(url, "[registry]")?,
        };
        let key = section
            .and_then(|r| r.pgp_key.as_ref())
            .or(spec.upstream.as_ref().map(|u| &u.pgp_key))
            .context(
                "[[integration]] needs the PGP key packages are signed with: set [registry] \
                 pgp_key, or [upstream] pgp_key (Elastic signs both with GPG-KEY-elasticsearch)",
            )?;
        Ok(Some(Self {
            url,
            key_path: base.join(key),
            ca_file: section.and_then(|r| r.ca_file.as_ref()).map(|p| base.join(p)),
        }))
    }

    /// The fetcher for the registry, verifying with its key (read and checked like a local
    /// file, an `Err` naming it), and the key's bundle entry when it is not `[upstream]`'s,
    /// which the bundle carries already.
    pub fn fetcher(
        &self,
        cache: Cache,
        upstream_key: Option<&Path>,
    ) -> anyhow::Result<(Fetcher, Option<PayloadSource>)> {
        let path = &self.key_path;
        let keyring = ferry_manifests::check_input(path)
            .map_err(anyhow::Error::from)
            .and_then(|()| crate::intake::read_pgp_key(path))
            .context("the registry's PGP key (docs/operator-guide.md says how to get Elastic's)")?;
        let entry = if upstream_key == Some(path.as_path()) {
            None
        } else {
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .context("the PGP key file has no name")?;
            let mut metadata = Metadata::default();
            metadata.set_pgp_key(&PgpKeyFacts {
                fingerprints: keyring.fingerprints(),
                signs_artifacts: false,
            });
            Some(PayloadSource {
                path: EntryName::new(&format!("pgp/{name}"))
                    .with_context(|| format!("unusable PGP key file name {name:?}"))?,
                source: path.clone(),
                kind: Kind::PgpKey,
                mode: Mode::Regular,
                metadata,
            })
        };
        let fetcher = Fetcher::new(
            Upstream::Http(self.url.clone()),
            keyring,
            cache,
            self.ca_file.as_deref(),
        )?;
        Ok((fetcher, entry))
    }
}

/// Why the integrations could not be resolved: refusals (an entry that selects nothing or is
/// malformed, an answer the registry should not give), and searches that could not be made.
#[derive(Debug, Default)]
pub struct SelectErrors {
    pub refused: Vec<String>,
    pub unreachable: Vec<FetchError>,
}

/// What the registry's search answers of one package version. Fields beyond these are the
/// appliance's to read from the package itself.
#[derive(Debug, Deserialize)]
struct Hit {
    name: String,
    version: String,
    /// `ga`, `beta` or `experimental`.
    release: Option<String>,
    download: Option<String>,
    signature_path: Option<String>,
}

/// How an entry narrows the versions the registry offers.
enum Wanted {
    Newest,
    Exact(Version),
    Range(Constraint),
}

/// The `/search` queries of one `[[integration]]` (one per category), as path and query below
/// the registry.
fn queries(entry: &IntegrationSection) -> Vec<String> {
    let categories: Vec<Option<&str>> = if entry.categories.is_empty() {
        vec![None]
    } else {
        entry.categories.iter().map(|c| Some(c.as_str())).collect()
    };
    categories
        .into_iter()
        .map(|category| {
            let mut q = form_urlencoded::Serializer::new(String::new());
            if let Some(name) = &entry.name {
                q.append_pair("package", name);
            }
            if let Some(t) = &entry.package_type {
                q.append_pair("type", t);
            }
            if let Some(c) = category {
                q.append_pair("category", c);
            }
            if let Some(k) = &entry.kibana {
                q.append_pair("kibana.version", &k.version);
            }
            if let Some(spec) = &entry.spec {
                if let Some(min) = &spec.min {
                    q.append_pair("spec.min", min);
                }
                if let Some(max) = &spec.max {
                    q.append_pair("spec.max", max);
                }
            }
            // A version or range is chosen here from every version the registry has: without
            // `all` it answers only the newest of each package.
            if entry.all || entry.version.is_some() {
                q.append_pair("all", "true");
            }
            // With a version, every version: `release: experimental` ones too, which the
            // registry leaves out without `prerelease` even with `all` (its exact lookup,
            // NameVersionFilter, asks for them); a range narrows them again below.
            let pre = entry.prerelease || entry.version.is_some();
            if pre {
                q.append_pair("prerelease", "true");
            }
            format!("search?{}", q.finish())
        })
        .collect()
}

/// What an entry asks for, checked before the registry is asked anything.
fn wanted(entry: &IntegrationSection, at: &str) -> anyhow::Result<Wanted> {
    let query = entry.package_type.is_some()
        || entry.kibana.is_some()
        || entry.spec.is_some()
        || !entry.categories.is_empty();
    if entry.name.is_none() && !query {
        bail!(
            "{at}: needs `name` or a query (`type`, `kibana.version`, `spec.min`/`spec.max`, \
             `categories`); an empty entry would select the whole registry"
        );
    }
    let Some(text) = &entry.version else { return Ok(Wanted::Newest) };
    if entry.name.is_none() {
        bail!("{at}: `version` needs `name`");
    }
    if let Some(v) = Version::strict(text) {
        return Ok(Wanted::Exact(v));
    }
    Constraint::parse(text).map(Wanted::Range).with_context(|| {
        format!(
            "{at}: version {text:?} is neither a version (1.60.0) nor a constraint as the \
             registry writes them (^1.60.0, >=1.50.0 <2.0.0)"
        )
    })
}

/// How errors name the `n`th entry (from 0).
fn entry_name(n: usize, entry: &IntegrationSection) -> String {
    match &entry.name {
        Some(name) => format!("[[integration]] number {} ({name})", n + 1),
        None => format!("[[integration]] number {}", n + 1),
    }
}

/// A package name as the registry allows them: lower-case letters, digits and `_`, so that
/// it is safe in a URL and a bundle path.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// Resolves every `[[integration]]` through the registry's `/search`. Returns the union of
/// what they select, sorted by name and version, or every reason one of them cannot be
/// resolved.
pub fn select(
    fetcher: &Fetcher,
    entries: &[IntegrationSection],
    bars: &Bars,
) -> Result<Vec<Selected>, SelectErrors> {
    let mut chosen: BTreeMap<(String, Version), Selected> = BTreeMap::new();
    let mut errors = SelectErrors::default();
    let problems = &mut errors.refused;
    for (n, entry) in entries.iter().enumerate() {
        let at = entry_name(n, entry);
        let (refused_before, unreachable_before) = (problems.len(), errors.unreachable.len());
        let wanted = match wanted(entry, &at) {
            Ok(w) => w,
            Err(e) => {
                problems.push(format!("{e:#}"));
                continue;
            }
        };
        let mut offered = 0;
        let mut newest: BTreeMap<String, (Version, Hit)> = BTreeMap::new();
        let mut picked = Vec::new();
        for query in queries(entry) {
            let hits = match search(fetcher, &query, bars) {
                Ok(h) => h,
                Err(Searched::Unreachable(e)) => {
                    errors.unreachable.push(e);
                    continue;
                }
                Err(Searched::Refused(e)) => {
                    problems.push(format!("{at}: {e}"));
                    continue;
                }
            };
            offered += hits.len();
            for hit in hits {
                // `package=` is a filter of the registry's; a name it did not ask for is a
                // registry that ignored it, and must not widen the selection.
                if entry.name.as_ref().is_some_and(|n| *n != hit.name) {
                    continue;
                }
                // The registry's versions are strict; one that is not cannot be chosen.
                let Some(version) = Version::strict(&hit.version) else { continue };
                let keep = match &wanted {
                    Wanted::Newest => true,
                    Wanted::Exact(v) => *v == version,
                    // Asked with `prerelease=true` (a range may reach technical previews), so
                    // the registry's own rule is kept here: an `experimental` release only
                    // when the entry asks for prereleases (package-registry
                    // packages/packages.go, the Prerelease filter).
                    Wanted::Range(c) => {
                        c.check(&version)
                            && (entry.prerelease || hit.release.as_deref() != Some("experimental"))
                    }
                };
                if !keep {
                    continue;
                }
                if entry.all {
                    picked.push((version, hit));
                } else {
                    match newest.get(&hit.name) {
                        Some((v, _)) if *v >= version => {}
                        _ => {
                            newest.insert(hit.name.clone(), (version, hit));
                        }
                    }
                }
            }
        }
        picked.extend(newest.into_values());
        // Only what is chosen must be the registry's own layout and signed: an unsigned old
        // version the entry does not want must not fail it.
        let picked: Vec<(Version, Selected)> = picked
            .into_iter()
            .filter_map(|(version, hit)| match check_hit(&hit) {
                Ok(selected) => Some((version, selected)),
                Err(reason) => {
                    problems.push(format!("{at}: {}search: {reason}", fetcher.source_of("")));
                    None
                }
            })
            .collect();
        let failed =
            problems.len() > refused_before || errors.unreachable.len() > unreachable_before;
        if picked.is_empty() && !failed {
            let narrowed = match &entry.version {
                Some(v) => format!(", none of them version {v}"),
                None if !entry.prerelease => {
                    ", without previews or betas (`prerelease = true` asks for them)".to_owned()
                }
                None => String::new(),
            };
            problems
                .push(format!("{at} selects no package: the registry offered {offered}{narrowed}"));
        }
        for (version, selected) in picked {
            chosen.insert((selected.name.clone(), version), selected);
        }
    }
    if errors.refused.is_empty() && errors.unreachable.is_empty() {
        Ok(chosen.into_values().collect())
    } else {
        Err(errors)
    }
}

enum Searched {
    Unreachable(FetchError),
    Refused(String),
}

/// One `/search` answer.
fn search(fetcher: &Fetcher, query: &str, bars: &Bars) -> Result<Vec<Hit>, Searched> {
    let file = fetcher.get(query, Some(MAX_SEARCH), bars).map_err(|e| match e {
        // The registry answers 400 for a parameter it cannot read (a `kibana.version` or
        // `spec.min` that is not a version, package-registry search.go): the spec's fault.
        FetchError::NotFound { .. } | FetchError::TooLarge { .. } => {
            Searched::Refused(e.to_string())
        }
        FetchError::Status { status, .. } if (400..500).contains(&status) && status != 429 => {
            Searched::Refused(e.to_string())
        }
        e => Searched::Unreachable(e),
    })?;
    let bytes = fs::read(&file)
        .map_err(|source| Searched::Unreachable(FetchError::Io { path: file.clone(), source }));
    let _ = fs::remove_file(&file);
    serde_json::from_slice(&bytes?).map_err(|e| {
        Searched::Refused(format!(
            "{}{query}: not the registry's search answer: {e}",
            fetcher.source_of("")
        ))
    })
}

/// A chosen hit's download paths, which must be the registry's own layout for its name and
/// version (package-registry `packages/package.go` always answers them so): an answer
/// pointing anywhere else is refused, not followed.
fn check_hit(hit: &Hit) -> Result<Selected, String> {
    let what = format!("package {:?} version {:?}", hit.name, hit.version);
    if !valid_name(&hit.name) {
        return Err(format!("{what}: not a package name the registry allows"));
    }
    let selected = Selected { name: hit.name.clone(), version: hit.version.clone() };
    let expected = format!("/{}", selected.download_path());
    if hit.download.as_deref() != Some(expected.as_str()) {
        return Err(format!("{what}: download {:?} is not {expected}", hit.download));
    }
    match hit.signature_path.as_deref() {
        None => Err(format!("{what}: the registry gives no signature_path (unsigned package)")),
        Some(s) if s != format!("{expected}.sig") => {
            Err(format!("{what}: signature_path {s:?} is not {expected}.sig"))
        }
        Some(_) => Ok(selected),
    }
}

/// A selected package as `plan` lists it.
#[derive(Debug, Serialize)]
pub struct PlannedPackage {
    pub name: String,
    pub version: String,
    /// The zip's size: the cached copy's, else what the registry announces (`None` when it
    /// does not say).
    pub size: Option<u64>,
    pub cached: bool,
}

/// The rows `plan` shows for the selected packages (zip and `.sig` each), added to `rows`,
/// and each package with its size. Sizes come from the cache or a `HEAD` of the zip.
pub fn plan(
    fetcher: &Fetcher,
    selected: &[Selected],
    rows: &mut Vec<PlannedFile>,
) -> Vec<PlannedPackage> {
    let sized = fetch::in_parallel(selected, fetcher.parallel, |p| {
        let cached = cached_size(fetcher, p);
        (cached.is_some(), cached.or_else(|| fetcher.announced_size(&p.download_path())))
    });
    selected
        .iter()
        .zip(sized)
        .map(|(p, (cached, size))| {
            for suffix in ["", ".sig"] {
                rows.push(PlannedFile {
                    source: fetcher.source_of(&format!("{}{suffix}", p.download_path())),
                    bundle_path: format!("{}{suffix}", p.bundle_path()),
                    cached,
                    local: false,
                    missing: false,
                });
            }
            PlannedPackage { name: p.name.clone(), version: p.version.clone(), size, cached }
        })
        .collect()
}

/// The packages section of `plan`'s text output.
pub fn print_plan(packages: &[PlannedPackage]) {
    if packages.is_empty() {
        return;
    }
    let width = packages.iter().map(|p| p.name.len()).max().unwrap_or(4).max(7);
    println!("\n{:width$}  {:12}  {:>12}  CACHED", "PACKAGE", "VERSION", "BYTES");
    for p in packages {
        let size = p.size.map_or_else(|| "?".to_owned(), |s| s.to_string());
        let cached = if p.cached { "yes" } else { "no" };
        println!("{:width$}  {:12}  {size:>12}  {cached}", p.name, p.version);
    }
    let known: u64 = packages.iter().filter_map(|p| p.size).sum();
    let unknown = packages.iter().filter(|p| p.size.is_none()).count();
    let to_fetch: u64 = packages.iter().filter(|p| !p.cached).filter_map(|p| p.size).sum();
    print!("{} integration packages, {known} bytes ({to_fetch} to download)", packages.len());
    if unknown > 0 {
        print!(", and {unknown} of a size the registry does not announce");
    }
    println!();
}

/// A verified package and its signature, as files in the cache.
#[derive(Debug, Clone)]
pub struct FetchedPackage {
    pub package: Selected,
    pub zip: PathBuf,
    pub sig: PathBuf,
    pub size: u64,
    /// Fingerprint of the PGP key that signed it.
    pub signer: String,
    /// When the package was made: its `manifest.yml`'s time in the zip.
    pub date: Option<time::OffsetDateTime>,
    pub from_cache: bool,
}

/// What the cache remembers of a verified package: the blobs of its zip and its `.sig`.
#[derive(Debug, Serialize, Deserialize)]
struct CacheEntry {
    zip: String,
    sig: String,
}

/// Whether a verified copy of `package` is cached, and its size (for `plan`).
pub fn cached_size(fetcher: &Fetcher, package: &Selected) -> Option<u64> {
    let [zip, _] = cached(fetcher, package)?;
    fs::metadata(fetcher.cache().store().path(&zip)).ok().map(|m| m.len())
}

/// The blobs of a cached package, zip then `.sig`, when the index names both and the store
/// holds both: what `plan` calls cached is what a build takes from the cache.
fn cached(fetcher: &Fetcher, package: &Selected) -> Option<[Sha256Digest; 2]> {
    let entry: CacheEntry = fetcher.cache().read_entry(&package.download_path())?;
    let store = fetcher.cache().store();
    let [Some(zip), Some(sig)] = [&entry.zip, &entry.sig].map(|h| Sha256Digest::from_hex(h)) else {
        return None;
    };
    (store.contains(&zip) && store.contains(&sig)).then_some([zip, sig])
}

/// Fetches and verifies every selected package, `parallel` at a time; every failure is
/// reported, as for artifacts.
pub fn fetch_all(
    fetcher: &Fetcher,
    packages: &[Selected],
    bars: &Bars,
) -> Result<Vec<FetchedPackage>, FetchErrors> {
    fetch::collect(fetch::in_parallel(packages, fetcher.parallel, |p| fetch_one(fetcher, p, bars)))
}

fn fetch_one(
    fetcher: &Fetcher,
    package: &Selected,
    bars: &Bars,
) -> Result<FetchedPackage, Vec<FetchError>> {
    let keyring = fetcher.keyring().expect("RegistryPlan::fetcher gives its fetcher a key");
    let store = fetcher.cache().store();
    let key = package.download_path();
    if let Some([zip, sig]) = cached(fetcher, package) {
        // Verified when it entered; verified again, as the keyring may have changed.
        match verify(keyring, package, &store.path(&zip), &store.path(&sig), true) {
            Ok(f) => return Ok(f),
            Err(e) => tracing::warn!(
                package = %package.file_name(),
                error = %e,
                "cached copy no longer verifies; fetching again"
            ),
        }
    }
    // The signature first: a package without one fails before its zip moves.
    let sig = fetcher.get(&format!("{key}.sig"), Some(fetch::MAX_SIDECAR), bars);
    let sig = sig.map_err(|e| vec![e])?;
    let zip = fetcher.get(&key, None, bars).map_err(|e| {
        let _ = fs::remove_file(&sig);
        vec![e]
    })?;
    let checked = verify(keyring, package, &zip, &sig, false);
    let fail = |e| {
        let _ = fs::remove_file(&zip);
        let _ = fs::remove_file(&sig);
        vec![e]
    };
    let checked = checked.map_err(fail)?;
    let stored = |path: &Path| store.insert_file(path, None).map(|(d, _)| d);
    let zip_digest = stored(&zip).map_err(|e| vec![e.into()])?;
    let sig_digest = stored(&sig).map_err(|e| vec![e.into()])?;
    let entry = CacheEntry { zip: zip_digest.to_hex(), sig: sig_digest.to_hex() };
    fetcher.cache().write_entry(&key, &entry).map_err(|e| vec![e])?;
    Ok(FetchedPackage { zip: store.path(&zip_digest), sig: store.path(&sig_digest), ..checked })
}

/// Checks a package's `.sig` with `keyring`, then reads its `manifest.yml`: the zip must be
/// the package the registry named, laid out as the registry serves packages
/// (`NAME-VERSION/manifest.yml`, nothing outside that folder).
fn verify(
    keyring: &Keyring,
    package: &Selected,
    zip: &Path,
    sig: &Path,
    from_cache: bool,
) -> Result<FetchedPackage, FetchError> {
    let name = package.file_name();
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| FetchError::Io { path, source }
    };
    let text = String::from_utf8_lossy(&fs::read(sig).map_err(io(sig))?).into_owned();
    let signer = keyring.verify(
        &text,
        &format!("{name}.sig"),
        &name,
        fs::File::open(zip).map_err(io(zip))?,
    )?;
    let date = check_zip(zip, package).map_err(|reason| FetchError::Refused {
        file: name.clone(),
        reason: format!("{reason:#}"),
    })?;
    let size = fs::metadata(zip).map_err(io(zip))?.len();
    Ok(FetchedPackage {
        package: package.clone(),
        zip: zip.to_owned(),
        sig: sig.to_owned(),
        size,
        signer,
        date,
        from_cache,
    })
}

/// The part of the appliance's own package reading that a build can check early, so that a
/// bundle never carries a package its import would refuse for these reasons. Returns when
/// the package was made, if its `manifest.yml` has a valid time.
fn check_zip(path: &Path, package: &Selected) -> anyhow::Result<Option<time::OffsetDateTime>> {
    let file = fs::File::open(path)?;
    let mut zip = zip::ZipArchive::new(std::io::BufReader::new(file))
        .context("not a readable zip archive")?;
    // Readers disagree on which of two same-named entries is the file (the zip crate takes
    // the last, Kibana's AdmZip the first): refused rather than guessed.
    if zip.has_duplicate_names() {
        bail!("holds two entries of the same name");
    }
    let top = format!("{}-{}/", package.name, package.version);
    let mut manifest = None;
    for i in 0..zip.len() {
        let entry = zip.by_index_raw(i)?;
        let raw = entry.name()?.into_owned();
        let Some(relative) = raw.strip_prefix(&top) else {
            bail!("entry {raw:?} is not below the package's folder {top}");
        };
        let relative = relative.strip_suffix('/').unwrap_or(relative);
        if raw.contains('\\') || relative.split('/').any(|c| c == "." || c == "..") {
            bail!("entry {raw:?} is not a plain relative path");
        }
        if relative == "manifest.yml" {
            manifest = Some(i);
        }
    }
    let index = manifest.with_context(|| format!("no {top}manifest.yml"))?;
    let entry = zip.by_index(index)?;
    let date = entry.last_modified().and_then(crate::intake::zip_time);
    let mut bytes = Vec::new();
    entry.take(MAX_PACKAGE_MANIFEST + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_PACKAGE_MANIFEST {
        bail!("{top}manifest.yml is larger than {MAX_PACKAGE_MANIFEST} bytes");
    }
    let doc: serde_yaml_ng::Value = serde_yaml_ng::from_slice(&bytes)
        .with_context(|| format!("{top}manifest.yml is not valid YAML"))?;
    let field = |key: &str| match doc.get(key) {
        Some(serde_yaml_ng::Value::String(s)) => Some(s.clone()),
        Some(serde_yaml_ng::Value::Number(n)) => Some(n.to_string()),
        _ => None,
    };
    for (key, want) in [("name", &package.name), ("version", &package.version)] {
        let got = field(key);
        if got.as_ref() != Some(want) {
            bail!("{top}manifest.yml says {key} {got:?}, not {want:?} as the registry does");
        }
    }
    Ok(date)
}

/// Bundle entries for verified packages: each zip at `packages/NAME-VERSION.zip` with its
/// `.sig` beside it, as the appliance's registry serves them.
pub fn payload(fetched: &[FetchedPackage]) -> anyhow::Result<Vec<PayloadSource>> {
    let mut payload = Vec::new();
    for f in fetched {
        let path = f.package.bundle_path();
        let entry =
            |p: &str| EntryName::new(p).with_context(|| format!("unusable package path {p:?}"));
        payload.push(PayloadSource {
            path: entry(&path)?,
            source: f.zip.clone(),
            kind: Kind::Package,
            mode: Mode::Regular,
            metadata: {
                let mut m = Metadata::integration_package(&f.package.name, &f.package.version);
                m.set_pgp_signer(&f.signer);
                if let Some(date) = f.date {
                    m.set_content_date(date);
                }
                m
            },
        });
        payload.push(PayloadSource {
            path: entry(&format!("{path}.sig"))?,
            source: f.sig.clone(),
            kind: Kind::ArtifactSidecar,
            mode: Mode::Regular,
            metadata: Metadata::sidecar(&path, SidecarFormat::PgpSignature),
        });
    }
    Ok(payload)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{KibanaQuery, SpecQuery};

    #[test]
    fn queries_use_the_registry_s_parameters() {
        let entry = IntegrationSection {
            package_type: Some("integration".into()),
            kibana: Some(KibanaQuery { version: "9.2.0".into() }),
            spec: Some(SpecQuery { min: Some("3.0".into()), max: Some("3.5".into()) }),
            categories: vec!["security".into(), "network".into()],
            ..IntegrationSection::default()
        };
        assert_eq!(
            queries(&entry),
            [
                "search?type=integration&category=security&kibana.version=9.2.0&spec.min=3.0&spec.max=3.5",
                "search?type=integration&category=network&kibana.version=9.2.0&spec.min=3.0&spec.max=3.5",
            ]
        );
        let pinned = IntegrationSection {
            name: Some("system".into()),
            version: Some("2.0.0-preview1".into()),
            ..IntegrationSection::default()
        };
        assert_eq!(queries(&pinned), ["search?package=system&all=true&prerelease=true"]);
    }

    #[test]
    fn entries_are_checked_before_the_registry_is_asked() {
        let err = |entry: IntegrationSection| format!("{:#}", wanted(&entry, "e").err().unwrap());
        assert!(err(IntegrationSection::default()).contains("whole registry"));
        let no_name = IntegrationSection {
            version: Some("1.0.0".into()),
            package_type: Some("input".into()),
            ..IntegrationSection::default()
        };
        assert!(err(no_name).contains("needs `name`"));
        let bad = IntegrationSection {
            name: Some("system".into()),
            version: Some("one".into()),
            ..IntegrationSection::default()
        };
        assert!(err(bad).contains("neither a version"));
    }

    #[test]
    fn a_hit_must_point_at_the_registry_s_own_layout() {
        let hit = |download: &str, sig: Option<&str>| Hit {
            name: "nginx".into(),
            version: "1.2.3".into(),
            release: None,
            download: Some(download.into()),
            signature_path: sig.map(str::to_owned),
        };
        assert!(
            check_hit(&hit("/epr/nginx/nginx-1.2.3.zip", Some("/epr/nginx/nginx-1.2.3.zip.sig")))
                .is_ok()
        );
        for (download, sig, says) in [
            ("/epr/other/other-1.2.3.zip", Some("/epr/other/other-1.2.3.zip.sig"), "is not"),
            ("https://evil.example/nginx.zip", Some("/epr/nginx/nginx-1.2.3.zip.sig"), "is not"),
            ("/epr/nginx/nginx-1.2.3.zip", None, "unsigned"),
            ("/epr/nginx/nginx-1.2.3.zip", Some("/x.sig"), "signature_path"),
        ] {
            let e = check_hit(&hit(download, sig)).unwrap_err();
            assert!(e.contains(says), "{e}");
        }
        let mut traversal =
            hit("/epr/nginx/nginx-1.2.3.zip", Some("/epr/nginx/nginx-1.2.3.zip.sig"));
        traversal.name = "../etc".into();
        assert!(check_hit(&traversal).unwrap_err().contains("name"));
    }
}
