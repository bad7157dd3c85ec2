//! The server's one error type, mapped to HTTP statuses.
//!
//! Every refusal has a stable `error` code and a human message in a JSON body. Internal
//! failures are logged with their detail and answered with a generic 500: a client never sees
//! internals.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::token::TokenError;

/// An error answered to an HTTP client.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The request body or a parameter is invalid; the message says which and why.
    #[error("{message}")]
    BadRequest {
        /// Stable code, such as `bad_json`.
        code: &'static str,
        /// What was wrong, without echoing user content.
        message: String,
    },
    /// The token is missing, forged, expired or for another room.
    #[error("{0}")]
    Unauthorized(#[from] TokenError),
    /// The token is valid but its role may not do this.
    #[error("this link does not allow that")]
    Forbidden,
    /// No such room.
    #[error("no such room")]
    NotFound,
    /// The meeting has ended.
    #[error("this meeting has ended")]
    Gone,
    /// `/ws/...` was requested without a WebSocket upgrade.
    #[error("this endpoint expects a WebSocket upgrade")]
    UpgradeRequired,
    /// The room backend (Redis) could not be reached. The detail is logged, not sent.
    #[error("the room service is briefly unavailable")]
    Unavailable(String),
    /// This node serves as many sockets as it may, in all or for the client's address; the
    /// message says which. Try again later.
    #[error("{0}")]
    Busy(&'static str),
    /// A persistent room's stored board could not be read. The room stays closed and the
    /// stored copy is kept as it is, never replaced by an empty board.
    #[error("this room's stored board could not be loaded; it is kept as it was, and the room stays closed")]
    Unreadable,
    /// A refusal with its own status.
    #[error("{message}")]
    Refused {
        /// The HTTP status.
        status: StatusCode,
        /// Stable code.
        code: &'static str,
        /// What was refused and why.
        message: String,
    },
    /// Something failed inside the server. Logged, never detailed to the client.
    #[error("internal error")]
    Internal(#[from] anyhow::Error),
}

impl AppError {
    /// A bad request with a code and a message.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        AppError::BadRequest { code, message: message.into() }
    }

    /// A refusal with a status other than 400.
    pub fn bad_request_status(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        AppError::Refused { status, code, message: message.into() }
    }

    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            AppError::BadRequest { code, .. } => (StatusCode::BAD_REQUEST, code),
            AppError::Unauthorized(TokenError::Missing) => (StatusCode::UNAUTHORIZED, "missing_token"),
            AppError::Unauthorized(TokenError::Expired) => (StatusCode::UNAUTHORIZED, "expired_token"),
            AppError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "invalid_token"),
            AppError::Forbidden => (StatusCode::FORBIDDEN, "forbidden"),
            AppError::NotFound => (StatusCode::NOT_FOUND, "not_found"),
            AppError::Gone => (StatusCode::GONE, "ended"),
            AppError::UpgradeRequired => (StatusCode::UPGRADE_REQUIRED, "upgrade_required"),
            AppError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            AppError::Unreadable => (StatusCode::SERVICE_UNAVAILABLE, "board_unreadable"),
            AppError::Busy(_) => (StatusCode::SERVICE_UNAVAILABLE, "server_busy"),
            AppError::Refused { status, code, .. } => (*status, code),
            AppError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        match &self {
            AppError::Internal(e) => tracing::error!(error = %e, "internal error"),
            AppError::Unavailable(detail) => tracing::warn!(error = %detail, "backend unavailable"),
            AppError::Unreadable => tracing::error!("a stored board could not be loaded; kept as it was"),
            _ => {}
        }
        // A wrong-room token is reported like any invalid token.
        let message = match &self {
            AppError::Unauthorized(TokenError::WrongRoom | TokenError::BadSignature | TokenError::Malformed) => {
                "invalid token".to_owned()
            }
            other => other.to_string(),
        };
        let mut response = (status, Json(serde_json::json!({ "error": code, "message": message }))).into_response();
        if matches!(self, AppError::Busy(_)) {
            response.headers_mut().insert(axum::http::header::RETRY_AFTER, axum::http::HeaderValue::from_static("5"));
        }
        response
    }
}
