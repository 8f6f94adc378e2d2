//! The chunked upload API (fleet-protocol.md §3.6), which agents use to hand over the
//! diagnostics bundle an admin asked for: begin, chunks with their SHA-256, complete with the
//! transit hash. Files live under `data_dir/uploads/<upload id>/`.

use std::io::Write as _;
use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use sha2::Digest as _;

use super::wire::{
    ActionKind, UploadBeginRequest, UploadBeginResponse, UploadCompleteRequest,
    UploadCompleteResponse,
};
use super::{
    AgentApi, UPLOAD_BEGIN_LIMIT, UPLOAD_CHUNK_SIZE, UPLOAD_END_LIMIT, authenticated, blocking,
    wrong_agent,
};
use crate::error::ApiError;
use crate::store::{ChunkRecord, UploadRecord, UploadStatus};

fn upload_error(code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::fleet(StatusCode::BAD_REQUEST, code, message)
}

/// The folder of an upload. Ids come from the database, never from a request path.
pub(crate) fn upload_dir(root: &FsPath, upload: &UploadRecord) -> PathBuf {
    root.join(&upload.id)
}

/// The finished file of an upload.
pub(crate) fn upload_file(root: &FsPath, upload: &UploadRecord) -> PathBuf {
    upload_dir(root, upload).join("file")
}

fn chunk_path(root: &FsPath, upload: &UploadRecord, num: u64) -> PathBuf {
    upload_dir(root, upload).join(format!("chunk-{num}"))
}

fn chunk_count(upload: &UploadRecord) -> u64 {
    upload.size.div_ceil(upload.chunk_size)
}

/// `POST /api/fleet/uploads`.
pub(crate) async fn begin(
    State(api): State<Arc<AgentApi>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let agent = authenticated(&api, &headers, None).await?;
    let body = super::read_limited(body, UPLOAD_BEGIN_LIMIT).await?;
    let request: UploadBeginRequest = super::json_body(&body, "upload request")?;
    for (field, value) in [
        ("action_id", &request.action_id),
        ("agent_id", &request.agent_id),
        ("src", &request.src),
        ("file.name", &request.file.name),
        ("file.mime_type", &request.file.mime_type),
    ] {
        if value.trim().is_empty() {
            return Err(ApiError::bad_request(format!("{field} is required")));
        }
    }
    if request.agent_id != agent.id {
        return Err(wrong_agent());
    }
    if !["agent", "endpoint"].contains(&request.src.as_str()) {
        return Err(ApiError::bad_request(format!("unknown upload source {:?}", request.src)));
    }
    if request.file.size == 0 || request.file.size > api.max_upload_bytes {
        return Err(ApiError::bad_request(format!(
            "file.size {} is outside 1..={} bytes",
            request.file.size, api.max_upload_bytes
        )));
    }
    let upload = UploadRecord {
        id: super::uuid_v4(),
        action_id: request.action_id,
        agent_id: agent.id,
        name: request.file.name.chars().take(255).collect(),
        mime_type: request.file.mime_type.chars().take(255).collect(),
        size: request.file.size,
        chunk_size: UPLOAD_CHUNK_SIZE as u64,
        status: UploadStatus::Awaiting,
        created: crate::clock::now_rfc3339(),
        completed: None,
        sha256: None,
    };
    let api2 = Arc::clone(&api);
    let upload = blocking(move || {
        let mut state = api2.state.lock().expect("state lock");
        // Uploads left open for a day are abandoned (Fleet Server's rule).
        let day_ago = time::OffsetDateTime::now_utc() - time::Duration::days(1);
        let now = crate::clock::now_rfc3339();
        for stale in state.expire_uploads(&ferry_manifests::rfc3339(day_ago), &now)? {
            let _ = std::fs::remove_dir_all(upload_dir(&api2.uploads_dir, &stale));
        }
        // Only what an admin asked for, while the request is live, once: an agent cannot fill
        // the disk on its own accord.
        let action = state.agent_action(&upload.agent_id, &upload.action_id)?;
        if action.is_none_or(|a| {
            a.kind != ActionKind::RequestDiagnostics.as_str() || a.expiration <= upload.created
        }) {
            return Err(ApiError::bad_request(format!(
                "{} is not a live diagnostics request for this agent",
                upload.action_id
            )));
        }
        match state.upload_for_action(&upload.action_id, &upload.agent_id)? {
            Some(done) if done.status == UploadStatus::Ready => {
                return Err(ApiError::bad_request(format!(
                    "diagnostics for {} were uploaded already ({})",
                    upload.action_id, done.id
                )));
            }
            // A new attempt replaces one left open.
            Some(open) if open.status == UploadStatus::Awaiting => {
                state.finish_upload(&open.id, UploadStatus::Failed, None, &now)?;
                let _ = std::fs::remove_dir_all(upload_dir(&api2.uploads_dir, &open));
            }
            _ => {}
        }
        std::fs::create_dir_all(upload_dir(&api2.uploads_dir, &upload))
            .map_err(|e| ApiError::Internal(e.into()))?;
        state.create_upload(&upload)?;
        Ok(upload)
    })
    .await?;
    tracing::info!(upload = %upload.id, agent = %upload.agent_id, size = upload.size, "upload started");
    let response = UploadBeginResponse { upload_id: &upload.id, chunk_size: upload.chunk_size };
    Ok(axum::Json(response).into_response())
}

/// The upload named in the path, if it belongs to the authenticated agent and is still open.
async fn open_upload(
    api: &Arc<AgentApi>,
    headers: &HeaderMap,
    upload_id: &str,
) -> Result<UploadRecord, ApiError> {
    let agent = authenticated(api, headers, None).await?;
    let id = upload_id.to_owned();
    let upload = super::with_state(api, move |s| s.upload(&id)).await?.ok_or_else(|| {
        ApiError::fleet(StatusCode::NOT_FOUND, "ErrUploadNotFound", "no such upload")
    })?;
    if upload.agent_id != agent.id {
        return Err(wrong_agent());
    }
    if upload.status != UploadStatus::Awaiting {
        return Err(upload_error("ErrStatusNoUploads", format!("upload is {}", upload.status)));
    }
    Ok(upload)
}

/// `PUT /api/fleet/uploads/{upload_id}/{chunk}`: raw bytes with `X-Chunk-SHA2`.
pub(crate) async fn chunk(
    State(api): State<Arc<AgentApi>>,
    Path((upload_id, num)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let upload = open_upload(&api, &headers, &upload_id).await?;
    let count = chunk_count(&upload);
    let num: u64 = num
        .parse()
        .ok()
        .filter(|n| *n < count)
        .ok_or_else(|| ApiError::bad_request(format!("chunk {num:?} is not in 0..{count}")))?;
    let claimed = headers
        .get("x-chunk-sha2")
        .and_then(|v| v.to_str().ok())
        .filter(|v| v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or_else(|| ApiError::bad_request("X-Chunk-SHA2 must be the chunk's SHA-256 in hex"))?
        .to_ascii_lowercase();
    // The Content-Type agents send here (application/json) is meaningless and ignored.
    let bytes = super::read_limited(body, upload.chunk_size as usize).await?;
    let actual = hex::encode(sha2::Sha256::digest(&bytes));
    if actual != claimed {
        return Err(upload_error(
            "ErrHashMismatch",
            format!("chunk {num}: X-Chunk-SHA2 says {claimed}, the bytes hash to {actual}"),
        ));
    }
    blocking(move || {
        let path = chunk_path(&api.uploads_dir, &upload, num);
        let part = path.with_extension("part");
        let mut file = std::fs::File::create(&part).map_err(|e| ApiError::Internal(e.into()))?;
        file.write_all(&bytes)
            .and_then(|()| file.sync_all())
            .map_err(|e| ApiError::Internal(e.into()))?;
        std::fs::rename(&part, &path).map_err(|e| ApiError::Internal(e.into()))?;
        let record = ChunkRecord { num, size: bytes.len() as u64, sha256: actual };
        Ok(api.state.lock().expect("state lock").put_chunk(&upload.id, &record)?)
    })
    .await?;
    Ok(StatusCode::OK.into_response())
}

/// `POST /api/fleet/uploads/{upload_id}`: checks every chunk is there with the right size and
/// that the transit hash (SHA-256 over the chunk digests in order) matches, then joins them.
pub(crate) async fn complete(
    State(api): State<Arc<AgentApi>>,
    Path(upload_id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let upload = open_upload(&api, &headers, &upload_id).await?;
    let body = super::read_limited(body, UPLOAD_END_LIMIT).await?;
    let request: UploadCompleteRequest = super::json_body(&body, "upload completion")?;
    blocking(move || {
        let chunks = api.state.lock().expect("state lock").chunks(&upload.id)?;
        let n = chunk_count(&upload);
        if chunks.len() as u64 != n || chunks.iter().enumerate().any(|(i, c)| c.num != i as u64) {
            return Err(upload_error(
                "ErrMissingChunks",
                format!("{} of {n} chunks received", chunks.len()),
            ));
        }
        // A refused upload is closed and its chunks dropped; the agent starts a new one.
        let fail = |message: String| -> ApiError {
            let _ = std::fs::remove_dir_all(upload_dir(&api.uploads_dir, &upload));
            let now = crate::clock::now_rfc3339();
            let closed = api.state.lock().expect("state lock").finish_upload(
                &upload.id,
                UploadStatus::Failed,
                None,
                &now,
            );
            if let Err(e) = closed {
                tracing::error!(upload = %upload.id, error = %e, "cannot close upload");
            }
            tracing::warn!(upload = %upload.id, %message, "upload refused");
            upload_error("ErrFailValidation", message)
        };
        for c in &chunks {
            let last = c.num + 1 == n;
            let want =
                if last { upload.size - upload.chunk_size * (n - 1) } else { upload.chunk_size };
            if c.size != want {
                return Err(fail(format!("chunk {} is {} bytes, expected {want}", c.num, c.size)));
            }
        }
        let mut transit = sha2::Sha256::new();
        for c in &chunks {
            let mut raw = [0u8; 32];
            hex::decode_to_slice(&c.sha256, &mut raw).map_err(|e| ApiError::Internal(e.into()))?;
            transit.update(raw);
        }
        let transit = hex::encode(transit.finalize());
        if !transit.eq_ignore_ascii_case(request.transithash.sha256.trim()) {
            return Err(fail(format!(
                "transit hash {} does not match the chunks ({transit})",
                request.transithash.sha256
            )));
        }
        let sha256 = join_chunks(&api.uploads_dir, &upload, &chunks).map_err(ApiError::Internal)?;
        let now = crate::clock::now_rfc3339();
        api.state.lock().expect("state lock").finish_upload(
            &upload.id,
            UploadStatus::Ready,
            Some(&sha256),
            &now,
        )?;
        tracing::info!(upload = %upload.id, agent = %upload.agent_id, %sha256, "upload complete");
        Ok(())
    })
    .await?;
    Ok(axum::Json(UploadCompleteResponse::OK).into_response())
}

/// Joins the chunk files into the upload's file, re-checking each chunk's digest on the way
/// (the disk is not trusted more than the network), and returns the file's SHA-256.
fn join_chunks(
    root: &FsPath,
    upload: &UploadRecord,
    chunks: &[ChunkRecord],
) -> anyhow::Result<String> {
    let target = upload_file(root, upload);
    let part = target.with_extension("part");
    let mut out = std::fs::File::create(&part)?;
    let mut whole = sha2::Sha256::new();
    for c in chunks {
        let path = chunk_path(root, upload, c.num);
        let bytes = std::fs::read(&path)?;
        anyhow::ensure!(
            hex::encode(sha2::Sha256::digest(&bytes)) == c.sha256,
            "chunk file {} changed on disk",
            path.display()
        );
        whole.update(&bytes);
        out.write_all(&bytes)?;
    }
    out.sync_all()?;
    std::fs::rename(&part, &target)?;
    for c in chunks {
        std::fs::remove_file(chunk_path(root, upload, c.num))?;
    }
    Ok(hex::encode(whole.finalize()))
}
