//! The one error type of the HTTP side, and how it becomes a response: Fleet Server's JSON error
//! shape for agents, with the status, `Retry-After` and `Content-Range` each kind needs.

use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// Errors as agents expect them: a status and Fleet Server's JSON error shape. Internal causes
/// are logged here, once, and never sent.
#[derive(Debug)]
pub enum ApiError {
    /// Any Fleet error: a status, Fleet Server's `error` code, and a message for the agent's log.
    Fleet {
        status: StatusCode,
        code: &'static str,
        message: String,
    },
    /// `429` with Fleet's error shape and a `Retry-After` (whole seconds, at least one: what
    /// HTTP clients and agents' backoff understand).
    TooMany {
        code: &'static str,
        message: String,
        retry_after: Duration,
    },
    NotFound,
    /// `503` with `Retry-After`: the state database cannot be reached now.
    Unavailable {
        retry_after: Duration,
    },
    TlsRequired,
    RangeNotSatisfiable {
        size: u64,
    },
    Internal(anyhow::Error),
}

impl ApiError {
    /// `400` with Fleet's `BadRequest` code: a request the agent or the CLI got wrong.
    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        ApiError::fleet(StatusCode::BAD_REQUEST, "BadRequest", message)
    }

    pub fn fleet(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError::Fleet { status, code, message: message.into() }
    }
}

/// Fleet Server's error body (fleet-server internal/pkg/api/error.go, `HTTPErrResp`): agents log
/// `error` and `message`.
#[derive(serde::Serialize)]
struct ErrorBody<'a> {
    #[serde(rename = "statusCode")]
    status_code: u16,
    error: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    message: &'a str,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, error, message) = match self {
            ApiError::Fleet { status, code, message } => (status, code, message),
            ApiError::TooMany { code, message, retry_after } => {
                let mut response =
                    ApiError::fleet(StatusCode::TOO_MANY_REQUESTS, code, message).into_response();
                let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
                response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
                return response;
            }
            ApiError::NotFound => (StatusCode::NOT_FOUND, "NotFound", "not found".to_owned()),
            ApiError::Unavailable { retry_after } => {
                let mut response = ApiError::fleet(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "ServiceUnavailable",
                    "the appliance cannot reach its state database; try again",
                )
                .into_response();
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(retry_after.as_secs().max(1)));
                return response;
            }
            ApiError::TlsRequired => {
                (StatusCode::NOT_IMPLEMENTED, "ErrTLSRequired", "TLS required".to_owned())
            }
            ApiError::RangeNotSatisfiable { size } => {
                let mut response = (
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    [(header::CONTENT_RANGE, format!("bytes */{size}"))],
                )
                    .into_response();
                *response.body_mut() = Body::empty();
                return response;
            }
            ApiError::Internal(e) => {
                tracing::error!(error = %format!("{e:#}"), "internal error");
                (StatusCode::INTERNAL_SERVER_ERROR, "BadRequest", "internal error".to_owned())
            }
        };
        let body = ErrorBody { status_code: status.as_u16(), error, message: &message };
        let mut response = (status, axum::Json(body)).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json; charset=utf-8"),
        );
        response
    }
}
