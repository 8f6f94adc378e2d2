//! The download mirror in Elastic's layout (`/downloads/…`, with ranges and ETags), the PGP key
//! agents check archives with, and the quick-start CA's revocation list: what the active release
//! holds, served by path.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path as UrlPath, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use ferry_manifests::EntryName;

use crate::app::AppState;
use crate::error::ApiError;
use crate::net::sendfile::FileRange;

pub(crate) async fn crl(State(state): State<Arc<AppState>>) -> Result<Response, ApiError> {
    let crl = state.crl.clone().ok_or(ApiError::NotFound)?;
    Ok(([(header::CONTENT_TYPE, "application/pkix-crl")], crl).into_response())
}

pub(crate) async fn pgp_key(
    State(state): State<Arc<AppState>>,
    UrlPath(version): UrlPath<String>,
) -> Result<Response, ApiError> {
    // Agents (8.10.4+) ask with the core version of their upgrade target, which may be one
    // this appliance does not carry (a fallback key source, elastic-agent
    // internal/pkg/agent/application/upgrade/step_download.go); Fleet Server answers every
    // version with its one key. A path that is not X.Y.Z is a bad request.
    if !version.parse::<ferry_artifacts::Version>().is_ok_and(|v| v.is_core()) {
        return Err(ApiError::bad_request(format!(
            "{version:?} is not a version MAJOR.MINOR.PATCH"
        )));
    }
    let release = state.current().ok_or(ApiError::NotFound)?;
    let key = release.pgp_key().ok_or(ApiError::NotFound)?;
    let bytes = tokio::fs::read(state.blobs.path(&key.sha256))
        .await
        .map_err(|e| ApiError::Internal(e.into()))?;
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response())
}

/// Maps a request path to a release entry, refusing anything that is not exactly an entry name
/// below `downloads/`: no percent-encoding, backslashes, empty, `.` or `..` components.
fn entry_for(raw_path: &str) -> Option<EntryName> {
    let relative = raw_path.strip_prefix('/')?;
    if relative.contains('%') || !relative.starts_with("downloads/") {
        return None;
    }
    EntryName::new(relative).ok()
}

/// A single `bytes=` range, resolved against `size`. `Ok(None)` means serve the whole file
/// (no header, or a form we do not serve, such as several ranges).
pub(crate) fn parse_range(value: &str, size: u64) -> Result<Option<(u64, u64)>, ApiError> {
    let Some(spec) = value.strip_prefix("bytes=") else { return Ok(None) };
    if spec.contains(',') {
        return Ok(None);
    }
    let Some((start, end)) = spec.split_once('-') else { return Ok(None) };
    let unsatisfiable = ApiError::RangeNotSatisfiable { size };
    let (start, end) = match (start.trim(), end.trim()) {
        ("", "") => return Ok(None),
        ("", suffix) => {
            let n: u64 = suffix.parse().map_err(|_| ApiError::RangeNotSatisfiable { size })?;
            if n == 0 || size == 0 {
                return Err(unsatisfiable);
            }
            (size.saturating_sub(n), size - 1)
        }
        (start, end) => {
            let start: u64 = start.parse().map_err(|_| ApiError::RangeNotSatisfiable { size })?;
            let end: u64 = if end.is_empty() {
                size.saturating_sub(1)
            } else {
                end.parse().map_err(|_| ApiError::RangeNotSatisfiable { size })?
            };
            if start >= size || end < start {
                return Err(unsatisfiable);
            }
            (start, end.min(size - 1))
        }
    };
    Ok(Some((start, end)))
}

pub(crate) async fn download(state: State<Arc<AppState>>, request: Request) -> Response {
    let response = answer(state, request).await.into_response();
    crate::metrics::COUNTERS.mirror_answered(response.status());
    response
}

async fn answer(
    State(state): State<Arc<AppState>>,
    request: Request,
) -> Result<Response, ApiError> {
    let name = entry_for(request.uri().path()).ok_or(ApiError::NotFound)?;
    let release = state.current().ok_or(ApiError::NotFound)?;
    let entry = release.files.get(name.as_str()).ok_or(ApiError::NotFound)?;
    let content_type = if name.as_str().ends_with(".sha512") || name.as_str().ends_with(".asc") {
        "text/plain; charset=utf-8"
    } else {
        "application/octet-stream"
    };
    let (parts, _) = request.into_parts();
    serve_entry(&state, &parts, entry, content_type).await
}

/// Whether an `If-None-Match` header names `etag` (or `*`).
pub(crate) fn none_match(headers: &HeaderMap, etag: &str) -> bool {
    headers.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()).is_some_and(|inm| {
        inm.split(',')
            .map(str::trim)
            .any(|t| t == etag || t == "*" || t.strip_prefix("W/") == Some(etag))
    })
}

/// Serves a release entry's blob: its digest as the ETag, `If-None-Match`, one byte range,
/// `HEAD`, and the body streamed from the file (zero-copy on a plain listener). The mirror and
/// the package registry's zips and signatures (`crate::registry`) answer through it.
pub(crate) async fn serve_entry(
    state: &AppState,
    request: &axum::http::request::Parts,
    entry: &ferry_manifests::FileEntry,
    content_type: &str,
) -> Result<Response, ApiError> {
    let etag = format!("\"{}\"", entry.sha256.to_hex());
    let headers: &HeaderMap = &request.headers;
    let mut response = Response::builder()
        .header(header::ETAG, &etag)
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::CACHE_CONTROL, "no-cache");
    if none_match(headers, &etag) {
        return Ok(response
            .status(StatusCode::NOT_MODIFIED)
            .body(Body::empty())
            .expect("valid response"));
    }
    let size = entry.size;
    let range = match headers.get(header::RANGE).and_then(|v| v.to_str().ok()) {
        Some(value) => parse_range(value, size)?,
        None => None,
    };
    let (start, len) = match range {
        Some((start, end)) => {
            response = response
                .status(StatusCode::PARTIAL_CONTENT)
                .header(header::CONTENT_RANGE, format!("bytes {start}-{end}/{size}"));
            (start, end - start + 1)
        }
        None => (0, size),
    };
    response =
        response.header(header::CONTENT_TYPE, content_type).header(header::CONTENT_LENGTH, len);
    if request.method == Method::HEAD {
        return Ok(response.body(Body::empty()).expect("valid response"));
    }
    // Opened now: an import or garbage collection that replaces the blob later does not disturb
    // this download, which keeps reading the file it opened.
    let path = state.blobs.path(&entry.sha256);
    let file = crate::app::blocking(move || {
        std::fs::File::open(path).map_err(|e| ApiError::Internal(e.into()))
    })
    .await?;
    // Streamed from the file over TLS; sent with sendfile(2) on a plain listener, where the
    // copy through user space cost 5–6× nginx's CPU per GB (net/sendfile.rs).
    Ok(FileRange::new(file, start, len).response(response).expect("valid response"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_exact_entry_names_below_downloads() {
        assert!(entry_for("/downloads/beats/elastic-agent/a.tar.gz").is_some());
        for bad in [
            "/downloads/../state.db",
            "/downloads/%2e%2e/state.db",
            "/downloads//beats/a",
            "/downloads/beats\\a",
            "/releases/x",
            "/downloads/",
            "downloads/a",
        ] {
            assert!(entry_for(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-9", 100).unwrap(), Some((0, 9)));
        assert_eq!(parse_range("bytes=90-", 100).unwrap(), Some((90, 99)));
        assert_eq!(parse_range("bytes=-10", 100).unwrap(), Some((90, 99)));
        assert_eq!(parse_range("bytes=0-1000", 100).unwrap(), Some((0, 99)));
        assert_eq!(parse_range("bytes=0-1,5-6", 100).unwrap(), None);
        assert!(parse_range("bytes=100-", 100).is_err());
        assert!(parse_range("bytes=5-2", 100).is_err());
    }
}
