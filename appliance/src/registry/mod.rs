//! An Elastic Package Registry (EPR) for Kibana (`xpack.fleet.registryUrl`), served from the
//! integration packages of the active release under [`PREFIX`] on the agent listener: `/search`,
//! `/categories`, `/epr/{name}/{name}-{version}.zip` and `.zip.sig`, a package's index JSON
//! (`/package/{name}/{version}/`), the files inside a package
//! (`/package/{name}/{version}/{file}`), `/health` and the index (`/`). The routes, query
//! parameters, error texts and status codes, and cache headers follow Elastic's
//! package-registry (`main.go`, `search.go`, `categories.go`, `artifacts.go`,
//! `signatures.go`, `package_index.go`, `static.go`, `handler.go`, `packages/packages.go`);
//! the index of packages, each package's index JSON included, is built once per release (on
//! its first use, which the release watcher makes as soon as a release activates) and held in
//! memory.
//!
//! Not yet served: the favicon, and `/categories`' and `/search`'s response caches (they are
//! cheap to recompute).

mod categories;
mod detail;
mod package;

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use ferry_manifests::{FileEntry, Kind, Manifest, Sha256Digest};
use serde::Serialize;

use crate::app::AppState;
use ferry_artifacts::epr_version::{self as semver, Constraint, Version};
use package::{BasePackage, Package};

/// Where the registry is served on the agent listener: `xpack.fleet.registryUrl` is
/// `https://<appliance>:<port>/registry`. Kibana appends `/search`, `/epr/…` to it.
pub(crate) const PREFIX: &str = "/registry";

/// Cache lifetimes, the registry's defaults (`main.go`): the index 10 s, the rest 10 min.
const CACHE_INDEX: u32 = 10;
const CACHE_OTHER: u32 = 600;

/// The largest file served from inside a package (read into memory to answer).
const STATIC_LIMIT: u64 = 64 << 20;

/// Where a package's zip and signature are in the active release.
#[derive(Debug, Clone)]
struct Blobs {
    zip: FileEntry,
    sig: Option<FileEntry>,
}

/// The registry's view of one release: its packages sorted by name, then version.
#[derive(Debug, Default)]
pub(crate) struct Index {
    packages: Vec<Package>,
    blobs: Vec<Blobs>,
    /// `(name, version)` → position in `packages`.
    by_key: HashMap<(String, String), usize>,
}

impl Index {
    /// Reads every `package` entry of `manifest` (`packages/<name>-<version>.zip`, metadata
    /// `name` and `version`) from the blob store: a package that cannot be read (not a zip, a
    /// zip-slip entry, a `manifest.yml` that is not valid YAML or names another package) makes
    /// the whole index fail, naming the file, so that an import refuses the bundle.
    pub(crate) fn build(
        manifest: &Manifest,
        blob_path: &dyn Fn(&Sha256Digest) -> PathBuf,
    ) -> anyhow::Result<Index> {
        let sigs: HashMap<&str, &FileEntry> =
            manifest.files.iter().map(|f| (f.path.as_str(), f)).collect();
        let mut found = Vec::new();
        for entry in manifest.files.iter().filter(|f| f.kind == Kind::Package) {
            let path = entry.path.as_str();
            let read = || -> anyhow::Result<(Package, Blobs)> {
                let name = entry.metadata.package_name().context("no `name` metadata")?;
                let version = entry.metadata.version().context("no `version` metadata")?;
                if path != format!("packages/{name}-{version}.zip") {
                    anyhow::bail!("a package must be at packages/{name}-{version}.zip");
                }
                let sig = sigs.get(format!("{path}.sig").as_str()).map(|f| (*f).clone());
                let file = std::fs::File::open(blob_path(&entry.sha256))?;
                let package =
                    Package::read(std::io::BufReader::new(file), name, version, sig.is_some())?;
                Ok((package, Blobs { zip: entry.clone(), sig }))
            };
            found.push(read().with_context(|| format!("package {path}"))?);
        }
        Ok(Index::from_packages(found))
    }

    fn from_packages(mut found: Vec<(Package, Blobs)>) -> Index {
        found.sort_by(|(a, _), (b, _)| a.name().cmp(b.name()).then(a.version.cmp(&b.version)));
        // The newest deprecation notice of a package is shown on all its versions
        // (`packages/deprecated.go`).
        let mut notices: HashMap<String, (Version, serde_yaml_ng::Value)> = HashMap::new();
        for (p, _) in &found {
            if let Some(d) = &p.base.deprecated
                && notices.get(p.name()).is_none_or(|(v, _)| p.version > *v)
            {
                notices.insert(p.name().to_owned(), (p.version.clone(), d.clone()));
            }
        }
        let mut index = Index::default();
        for (mut p, b) in found {
            if let Some((_, notice)) = notices.get(p.name()) {
                p.base.deprecated = Some(notice.clone());
            }
            // Written now, with the deprecation notice the index shows on every version.
            let detail = std::mem::take(&mut p.detail);
            let written = serde_json::to_value(&p.base)
                .and_then(|base| detail::index_json(base, &detail))
                .map(|value| axum::body::Bytes::from(pretty(&value)));
            match written {
                Ok(bytes) => p.index_json = Some(bytes),
                Err(e) => tracing::error!(
                    error = %e,
                    package = p.name(),
                    version = %p.base.version,
                    "a package's index JSON cannot be written"
                ),
            }
            index
                .by_key
                .insert((p.base.name.clone(), p.base.version.clone()), index.packages.len());
            index.packages.push(p);
            index.blobs.push(b);
        }
        index
    }

    pub(crate) fn len(&self) -> usize {
        self.packages.len()
    }

    fn find(&self, name: &str, version: &str) -> Option<usize> {
        self.by_key.get(&(name.to_owned(), version.to_owned())).copied()
    }

    /// The packages `filter` selects, sorted by name then version (`Filter.Apply`, then
    /// `getSearchOutput`'s sort).
    fn select<'a>(&'a self, f: &Filter) -> Result<Vec<std::borrow::Cow<'a, BasePackage>>, String> {
        let mut chosen: Vec<usize> = Vec::new();
        let mut latest: HashMap<&str, usize> = HashMap::new();
        for (i, p) in self.packages.iter().enumerate() {
            if f.experimental {
                // Legacy clients (`experimental=true`): `legacyApply`.
                if !f.matches_legacy(p) {
                    continue;
                }
            } else if !f.matches(p)? {
                continue;
            }
            if f.all {
                chosen.push(i);
                continue;
            }
            match latest.get(p.name()) {
                Some(&slot) => {
                    let current = &self.packages[chosen[slot]];
                    let replace = if f.experimental {
                        // A release outranks a pre-release, whatever the versions.
                        let (was_pre, is_pre) =
                            (current.version.is_prerelease(), p.version.is_prerelease());
                        let keep = (was_pre == is_pre && current.version >= p.version)
                            || (!was_pre && is_pre);
                        !keep
                    } else {
                        current.version < p.version
                    };
                    if replace {
                        chosen[slot] = i;
                    }
                }
                None => {
                    latest.insert(p.name(), chosen.len());
                    chosen.push(i);
                }
            }
        }
        if f.experimental && f.all {
            // Legacy: a package with a GA version hides its pre-release and 0.x versions.
            let stable: std::collections::HashSet<&str> = chosen
                .iter()
                .map(|&i| &self.packages[i])
                .filter(|p| !p.version.is_prerelease() && p.version.major >= 1)
                .map(Package::name)
                .collect();
            chosen.retain(|&i| {
                let p = &self.packages[i];
                !(stable.contains(p.name()) && (p.version.is_prerelease() || p.version.major < 1))
            });
        }
        let mut out = Vec::with_capacity(chosen.len());
        for i in chosen {
            let p = &self.packages[i];
            match &f.category {
                None => out.push(std::borrow::Cow::Borrowed(&p.base)),
                Some(c) if p.has_category(c) => out.push(std::borrow::Cow::Borrowed(&p.base)),
                // Only the policy templates of the category (`filterPolicyTemplates`, which
                // compares without subcategories).
                Some(c) if p.has_policy_template_with_category(c) => {
                    let mut base = p.base.clone();
                    base.policy_templates.retain(|t| {
                        t.categories.as_deref().unwrap_or_default().iter().any(|x| x == c)
                    });
                    out.push(std::borrow::Cow::Owned(base));
                }
                Some(_) => {}
            }
        }
        out.sort_by(|a, b| {
            a.name.cmp(&b.name).then_with(|| {
                match (Version::lenient(&a.version), Version::lenient(&b.version)) {
                    (Some(x), Some(y)) => x.cmp(&y),
                    _ => a.version.cmp(&b.version),
                }
            })
        });
        Ok(out)
    }

    /// `/categories`: each category of the selected packages with its count (`getCategories`).
    fn categories(
        &self,
        f: &Filter,
        include_policy_templates: bool,
    ) -> Result<Vec<Category>, String> {
        let mut counts: BTreeMap<String, u64> = BTreeMap::new();
        for base in self.select(f)? {
            for c in &base.categories {
                *counts.entry(c.clone()).or_default() += 1;
            }
            if !include_policy_templates {
                continue;
            }
            let mut extra: Vec<&str> = Vec::new();
            for t in &base.policy_templates {
                if t.categories.is_none() && base.policy_templates.len() == 1 {
                    break;
                }
                for c in &base.categories {
                    *counts.entry(c.clone()).or_default() += 1;
                }
                for c in t.categories.as_deref().unwrap_or_default() {
                    let count = counts.entry(c.clone()).or_default();
                    if !categories::has(&base.categories, c) && !extra.contains(&c.as_str()) {
                        extra.push(c);
                        *count += 1;
                    }
                    *count += 1;
                }
            }
        }
        Ok(counts
            .into_iter()
            .map(|(id, count)| {
                let (title, parent) = match categories::lookup(&id) {
                    Some((title, parent)) => (title.to_owned(), parent),
                    None => (id.clone(), None),
                };
                Category {
                    id,
                    title,
                    count,
                    parent_id: parent.map(|p| p.0.to_owned()),
                    parent_title: parent.map(|p| p.1.to_owned()),
                }
            })
            .collect())
    }
}

#[derive(Debug, Serialize)]
struct Category {
    id: String,
    title: String,
    count: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    parent_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    parent_title: Option<String>,
}

/// What `/search` and `/categories` select by (`packages.Filter`).
#[derive(Debug, Default)]
struct Filter {
    all: bool,
    category: Option<String>,
    prerelease: bool,
    experimental: bool,
    kibana: Option<Version>,
    agent: Option<Version>,
    package: Option<String>,
    kind: Option<String>,
    capabilities: Option<Vec<String>>,
    spec_min: Option<Version>,
    spec_max: Option<Version>,
    /// Each `discovery=` parameter: fields or datasets.
    discovery: Vec<(bool, Vec<String>)>,
}

impl Filter {
    fn matches(&self, p: &Package) -> Result<bool, String> {
        if !self.prerelease && (p.release() == "experimental" || p.version.is_prerelease()) {
            return Ok(false);
        }
        if !self.common(p) {
            return Ok(false);
        }
        if let (Some(caps), Some(required)) = (&self.capabilities, p.capabilities())
            && !required.iter().all(|r| caps.contains(r))
        {
            return Ok(false);
        }
        for (fields, names) in &self.discovery {
            let d = &p.base.discovery;
            let ok = if *fields {
                // Every field the package names must be asked for.
                !d.fields.is_empty() && d.fields.iter().all(|f| names.contains(&f.name))
            } else {
                // One dataset the package names must be asked for.
                d.datasets.iter().any(|f| names.contains(&f.name))
            };
            if !ok {
                return Ok(false);
            }
        }
        if self.spec_min.is_some() || self.spec_max.is_some() {
            let Some(spec) = &p.spec else {
                return Err(format!(
                    "can't compare spec version for {}: package spec version is not set",
                    p.name()
                ));
            };
            if self.spec_min.as_ref().is_some_and(|m| spec < m)
                || self.spec_max.as_ref().is_some_and(|m| spec > m)
            {
                return Ok(false);
            }
        }
        if let Some(v) = &self.agent
            && p.agent.as_ref().is_some_and(|c| !c.check(v))
        {
            return Ok(false);
        }
        Ok(true)
    }

    fn matches_legacy(&self, p: &Package) -> bool {
        // `experimental=true` is what brings experimental packages here.
        self.common(p)
    }

    /// The checks `Apply` and `legacyApply` share.
    fn common(&self, p: &Package) -> bool {
        let kibana_ok = |c: &Constraint, v: &Version| c.check(v);
        if let (Some(v), Some(c)) = (&self.kibana, &p.kibana)
            && !kibana_ok(c, v)
        {
            return false;
        }
        if self.package.as_ref().is_some_and(|n| n != p.name()) {
            return false;
        }
        if self.kind.as_ref().is_some_and(|k| *k != p.base.kind) {
            return false;
        }
        true
    }

    /// `newSearchFilterFromQuery` / `newCategoriesFilterFromQuery`: the first value of each
    /// parameter counts (every one for `discovery`); empty values are ignored; unknown
    /// parameters are allowed, as the registry allows them by default.
    fn from_query(query: &BTreeMap<String, Vec<String>>, search: bool) -> Result<Filter, String> {
        let mut f = Filter::default();
        for (key, values) in query {
            let v = values.first().map(String::as_str).unwrap_or_default();
            let boolean = |name: &str| {
                parse_bool(v).ok_or_else(|| format!("invalid '{name}' query param: '{v}'"))
            };
            match key.as_str() {
                "kibana.version" if !v.is_empty() => {
                    f.kibana = Some(Version::lenient(v).ok_or_else(|| {
                        format!("invalid Kibana version '{v}': {}", semver::INVALID)
                    })?);
                }
                "agent.version" if !v.is_empty() => {
                    f.agent = Some(Version::lenient(v).ok_or_else(|| {
                        format!("invalid agent version '{v}': {}", semver::INVALID)
                    })?);
                }
                "category" if search && !v.is_empty() => f.category = Some(v.to_owned()),
                "package" if search && !v.is_empty() => f.package = Some(v.to_owned()),
                "type" if search && !v.is_empty() => f.kind = Some(v.to_owned()),
                "all" if search && !v.is_empty() => f.all = boolean("all")?,
                "capabilities" if !v.is_empty() => {
                    f.capabilities = Some(v.split(',').map(str::to_owned).collect());
                }
                "spec.min" if !v.is_empty() => {
                    f.spec_min = Some(
                        spec_version(v).map_err(|e| format!("invalid 'spec.min' version: {e}"))?,
                    );
                }
                "spec.max" if !v.is_empty() => {
                    f.spec_max = Some(
                        spec_version(v).map_err(|e| format!("invalid 'spec.max' version: {e}"))?,
                    );
                }
                "experimental" if !v.is_empty() => f.experimental = boolean("experimental")?,
                "prerelease" if !v.is_empty() => f.prerelease = boolean("prerelease")?,
                "discovery" => {
                    for v in values {
                        let parsed = match v.split_once(':') {
                            Some(("fields", args)) => (true, args),
                            Some(("datasets", args)) => (false, args),
                            Some((kind, _)) => {
                                return Err(format!(
                                    "invalid 'discovery' query param: '{v}': unknown discovery filter \"{kind}\""
                                ));
                            }
                            None => {
                                return Err(format!(
                                    "invalid 'discovery' query param: '{v}': could not parse filter \"{v}\""
                                ));
                            }
                        };
                        f.discovery
                            .push((parsed.0, parsed.1.split(',').map(str::to_owned).collect()));
                    }
                }
                _ => {}
            }
        }
        Ok(f)
    }
}

/// Go's `strconv.ParseBool`.
fn parse_bool(v: &str) -> Option<bool> {
    match v {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// `getSpecVersion`: exactly `major.minor`.
fn spec_version(v: &str) -> Result<Version, String> {
    if v.split('.').count() != 2 {
        return Err(format!("invalid version '{v}': it should be <major.version>"));
    }
    Version::lenient(v).ok_or_else(|| format!("invalid spec version '{v}': {}", semver::INVALID))
}

/// The query's parameters, decoded as Go's `url.ParseQuery` does (`+` is a space).
fn parse_query(query: Option<&str>) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (k, v) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        out.entry(k.into_owned()).or_default().push(v.into_owned());
    }
    out
}

/// Go's `json.Encoder` with two-space indentation: pretty JSON and a newline.
fn pretty<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    let mut bytes = serde_json::to_vec_pretty(value).expect("serialisable");
    bytes.push(b'\n');
    bytes
}

fn json(bytes: impl IntoResponse, max_age: u32) -> Response {
    let mut r =
        (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], bytes).into_response();
    cache(&mut r, max_age);
    r
}

/// `cacheHeaders`: two `Cache-Control` values, as the registry sends them.
fn cache(r: &mut Response, max_age: u32) {
    let h = r.headers_mut();
    h.remove(header::CACHE_CONTROL);
    h.append(
        header::CACHE_CONTROL,
        HeaderValue::from_str(&format!("max-age={max_age}")).expect("ascii"),
    );
    h.append(header::CACHE_CONTROL, HeaderValue::from_static("public"));
}

/// Go's `http.Error` after `noCacheHeaders`: the message and a newline, as plain text.
fn error(status: StatusCode, message: &str) -> Response {
    let mut r =
        (status, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], format!("{message}\n"))
            .into_response();
    let h = r.headers_mut();
    h.append(header::CACHE_CONTROL, HeaderValue::from_static("max-age=0"));
    h.append(header::CACHE_CONTROL, HeaderValue::from_static("private, no-store"));
    r
}

fn not_found(message: &str) -> Response {
    error(StatusCode::NOT_FOUND, message)
}

/// What the registry's router answers for a path it has no route for.
fn no_route() -> Response {
    not_found("404 page not found")
}

/// The content type of a file served from a package: Go's `mime.TypeByExtension` with the
/// registry's additions (`mime_types.go`); other files as text when they are UTF-8 without
/// NUL, as Go's content sniffing says of them, else as bytes.
fn content_type(name: &str, bytes: &[u8]) -> &'static str {
    let ext = name.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase()).unwrap_or_default();
    match ext.as_str() {
        "zip" => "application/zip",
        "ico" => "image/x-icon",
        "md" => "text/markdown; charset=utf-8",
        "yml" => "text/yaml; charset=UTF-8",
        "json" => "application/json",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "avif" => "image/avif",
        "pdf" => "application/pdf",
        "css" => "text/css; charset=utf-8",
        "html" | "htm" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "xml" => "text/xml; charset=utf-8",
        "wasm" => "application/wasm",
        _ if std::str::from_utf8(bytes).is_ok() && !bytes.contains(&0) => {
            "text/plain; charset=utf-8"
        }
        _ => "application/octet-stream",
    }
}

/// The handler of every path below [`PREFIX`].
pub(crate) async fn serve(State(state): State<Arc<AppState>>, request: Request) -> Response {
    let (request, _) = request.into_parts();
    let mut response = answer(&state, &request).await;
    // `util.CORSMiddleware`: Kibana's browser side may read the registry too.
    response
        .headers_mut()
        .insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    if request.method == Method::HEAD {
        *response.body_mut() = Body::empty();
    }
    response
}

async fn answer(state: &Arc<AppState>, request: &Parts) -> Response {
    let Some(rest) = request.uri.path().strip_prefix(PREFIX) else { return no_route() };
    // Anything but plain segments (`..`, `.`, empty ones, encoded bytes, backslashes) is no
    // route: a traversal never reaches a package's files. The registry's router cleans such
    // paths and redirects; a 404 tells a probe the same nothing.
    let rest_segments = rest.strip_prefix('/').unwrap_or(rest);
    if rest.contains('%')
        || rest.contains('\\')
        || rest_segments.split('/').enumerate().any(|(i, s)| {
            s == "." || s == ".." || (s.is_empty() && i + 1 != rest_segments.split('/').count())
        })
    {
        return no_route();
    }
    match rest {
        "" | "/" | "/index.json" => return index_document(),
        "/health" => return StatusCode::OK.into_response(),
        _ => {}
    }
    let index = match state.registry().await {
        Ok(index) => index,
        Err(response) => return response,
    };
    let query = parse_query(request.uri.query());
    match rest {
        "/search" => {
            let f = match Filter::from_query(&query, true) {
                Ok(f) => f,
                Err(e) => return error(StatusCode::BAD_REQUEST, &e),
            };
            match index.select(&f) {
                Ok(list) if list.is_empty() => json(b"[]".to_vec(), CACHE_OTHER),
                Ok(list) => json(pretty(&list), CACHE_OTHER),
                Err(e) => not_found(&e),
            }
        }
        "/categories" => {
            let f = match Filter::from_query(&query, false) {
                Ok(f) => f,
                Err(e) => return error(StatusCode::BAD_REQUEST, &e),
            };
            let include = match query.get("include_policy_templates").and_then(|v| v.first()) {
                Some(v) if !v.is_empty() => match parse_bool(v) {
                    Some(b) => b,
                    None => {
                        return error(
                            StatusCode::BAD_REQUEST,
                            &format!("invalid 'include_policy_templates' query param: '{v}'"),
                        );
                    }
                },
                _ => false,
            };
            match index.categories(&f, include) {
                Ok(list) => json(pretty(&list), CACHE_OTHER),
                Err(e) => not_found(&e),
            }
        }
        _ => {
            let segments: Vec<&str> = rest_segments.split('/').collect();
            match segments.as_slice() {
                ["epr", _, file] => artifact(state, &index, request, file).await,
                ["package", name, version, ""] => package_index(&index, name, version),
                ["package", name, version, file @ ..] if !file.is_empty() => {
                    static_file(state, &index, request, name, version, &file.join("/")).await
                }
                _ => no_route(),
            }
        }
    }
}

/// `/` and `/index.json`: what the service is. The name is the registry's, which clients may
/// look for; the version is the appliance's.
fn index_document() -> Response {
    #[derive(Serialize)]
    struct IndexData {
        #[serde(rename = "service.name")]
        name: &'static str,
        #[serde(rename = "service.version")]
        version: &'static str,
    }
    json(pretty(&IndexData { name: "package-registry", version: crate::version() }), CACHE_INDEX)
}

/// `/epr/{name}/{name}-{version}.zip` and `.zip.sig` (`artifacts.go`, `signatures.go`): the
/// name is the file name's up to its first `-` (`[a-z0-9_]+`), as the registry's route reads it.
async fn artifact(state: &Arc<AppState>, index: &Index, request: &Parts, file: &str) -> Response {
    let (stem, sig) = match file.strip_suffix(".zip.sig") {
        Some(stem) => (stem, true),
        None => match file.strip_suffix(".zip") {
            Some(stem) => (stem, false),
            None => return no_route(),
        },
    };
    let Some((name, version)) = stem.split_once('-') else { return no_route() };
    if name.is_empty()
        || version.is_empty()
        || !name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        return no_route();
    }
    if Version::strict(version).is_none() {
        return error(StatusCode::BAD_REQUEST, "invalid package version");
    }
    let missing = if sig { "signature file not found" } else { "artifact not found" };
    let Some(i) = index.find(name, version) else { return not_found(missing) };
    let blobs = &index.blobs[i];
    let (entry, kind) = if sig {
        // The registry answers 500 for a package without its signature; 404 says it better.
        match &blobs.sig {
            Some(s) => (s.clone(), "text/plain; charset=utf-8"),
            None => return not_found(missing),
        }
    } else {
        (blobs.zip.clone(), "application/zip")
    };
    let mut response =
        crate::mirror::serve_entry(state, request, &entry, kind).await.into_response();
    if response.status().is_success() || response.status() == StatusCode::NOT_MODIFIED {
        cache(&mut response, CACHE_OTHER);
    }
    response
}

/// `/package/{name}/{version}/` (`package_index.go`): the package's index JSON, written when
/// the index was built, with the index's cache lifetime as the registry gives it.
fn package_index(index: &Index, name: &str, version: &str) -> Response {
    // The registry's route takes only such names; another is no route at all.
    if !name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_') {
        return no_route();
    }
    if Version::strict(version).is_none() {
        return error(StatusCode::BAD_REQUEST, "invalid package version");
    }
    let Some(i) = index.find(name, version) else {
        return not_found("package revision not found");
    };
    match &index.packages[i].index_json {
        Some(bytes) => json(bytes.clone(), CACHE_INDEX),
        None => error(StatusCode::INTERNAL_SERVER_ERROR, "internal server error"),
    }
}

/// `/package/{name}/{version}/{file}` (`static.go`): a file from inside the package's zip,
/// with an ETag (the zip's digest and the file's name) and single byte ranges.
async fn static_file(
    state: &Arc<AppState>,
    index: &Index,
    request: &Parts,
    name: &str,
    version: &str,
    file: &str,
) -> Response {
    if Version::strict(version).is_none() {
        return error(StatusCode::BAD_REQUEST, "invalid package version");
    }
    let Some(i) = index.find(name, version) else {
        return not_found("package revision not found");
    };
    let Some(&entry_index) = index.packages[i].files.get(file) else {
        return error(StatusCode::NOT_FOUND, "resource not found");
    };
    let zip = index.blobs[i].zip.sha256;
    let etag = {
        let mut tag = String::from("\"");
        let _ = write!(tag, "{}-{}", zip.to_hex(), Sha256Digest::of(file.as_bytes()).to_hex());
        tag.push('"');
        tag
    };
    if crate::mirror::none_match(&request.headers, &etag) {
        let mut r = Response::builder()
            .status(StatusCode::NOT_MODIFIED)
            .header(header::ETAG, &etag)
            .body(Body::empty())
            .expect("valid response");
        cache(&mut r, CACHE_OTHER);
        return r;
    }
    let path = state.blobs.path(&zip);
    let read = crate::app::blocking(move || {
        let file = std::fs::File::open(path).map_err(|e| crate::ApiError::Internal(e.into()))?;
        let mut zip = zip::ZipArchive::new(std::io::BufReader::new(file))
            .map_err(|e| crate::ApiError::Internal(e.into()))?;
        package::read_entry(&mut zip, entry_index, STATIC_LIMIT).map_err(crate::ApiError::Internal)
    })
    .await;
    let bytes = match read {
        Ok(bytes) => bytes,
        Err(e) => {
            tracing::error!(error = ?e, package = name, version, file, "reading a package file failed");
            return error(StatusCode::INTERNAL_SERVER_ERROR, "internal server error");
        }
    };
    let size = bytes.len() as u64;
    let kind = content_type(file, &bytes);
    let mut builder = Response::builder()
        .header(header::ETAG, &etag)
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::CONTENT_TYPE, kind);
    let range = &request.headers.get(header::RANGE).and_then(|v| v.to_str().ok());
    let body = match range.map(|r| crate::mirror::parse_range(r, size)) {
        Some(Err(e)) => return e.into_response(),
        Some(Ok(Some((start, end)))) => {
            builder = builder
                .status(StatusCode::PARTIAL_CONTENT)
                .header(header::CONTENT_RANGE, format!("bytes {start}-{end}/{size}"));
            bytes[start as usize..=end as usize].to_vec()
        }
        _ => bytes,
    };
    let mut r = builder.body(Body::from(body)).expect("valid response");
    cache(&mut r, CACHE_OTHER);
    r
}

impl AppState {
    /// The served release's package index, built on first use and kept with the release.
    pub(crate) async fn registry(self: &Arc<Self>) -> Result<Arc<Index>, Response> {
        let Some(release) = self.current() else {
            return Err(not_found("package revision not found"));
        };
        if let Some(built) = release.registry.get() {
            return built
                .clone()
                .map_err(|_| error(StatusCode::INTERNAL_SERVER_ERROR, "internal server error"));
        }
        let state = Arc::clone(self);
        let built = tokio::task::spawn_blocking(move || state.registry_of(&release))
            .await
            .unwrap_or_else(|e| Err(e.to_string()));
        built.map_err(|_| error(StatusCode::INTERNAL_SERVER_ERROR, "internal server error"))
    }

    /// Builds (once) the index of `release`'s packages, logging a failure once.
    pub(crate) fn registry_of(
        &self,
        release: &crate::release::Release,
    ) -> Result<Arc<Index>, String> {
        release
            .registry
            .get_or_init(|| {
                let started = std::time::Instant::now();
                match Index::build(&release.manifest, &|d| self.blobs.path(d)) {
                    Ok(index) => {
                        tracing::info!(
                            packages = index.len(),
                            seconds = started.elapsed().as_secs_f64(),
                            "package registry index built"
                        );
                        Ok(Arc::new(index))
                    }
                    Err(e) => {
                        let e = format!("{e:#}");
                        tracing::error!(error = %e, "the release's packages cannot be served");
                        Err(e)
                    }
                }
            })
            .clone()
    }
}

#[cfg(test)]
mod tests;
