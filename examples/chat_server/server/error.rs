//! One error type for HTTP answers and WebSocket error frames.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chatstore::{ChatError, Error};
use serde_json::json;

/// An error with an HTTP status, a stable machine-readable code and a human message.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// For `rate_limited`: when to try again.
    pub retry_after_ms: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after_ms: None,
        }
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }
    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a valid session token is required",
        )
    }
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        let msg = e.to_string();
        match e {
            Error::Chat(ChatError::NotAMember { .. }) => ApiError::forbidden(msg),
            Error::UnknownConversation(_) => ApiError::not_found(msg),
            Error::Chat(ChatError::UnknownUser(_)) => ApiError::not_found(msg),
            Error::IdOutOfRange { .. } => ApiError::new(StatusCode::BAD_REQUEST, "bad_id", msg),
            Error::Chat(ChatError::EmptyMessage)
            | Error::Chat(ChatError::EmptyGroup)
            | Error::InvalidArgument(_) => ApiError::bad_request(msg),
            Error::MessageTooLarge { .. } => {
                ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", msg)
            }
            Error::Closed => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "shutting_down", msg),
            // A retry whose original has expired under the conversation's retention.
            Error::Expired { .. } => ApiError::new(StatusCode::GONE, "expired", msg),
            // Disk trouble, corruption, a poisoned store: nothing the client did.
            _ => {
                eprintln!("chat_server: storage error: {msg}");
                ApiError::internal("storage error")
            }
        }
    }
}

impl From<axum::extract::rejection::JsonRejection> for ApiError {
    fn from(r: axum::extract::rejection::JsonRejection) -> Self {
        match r.status() {
            StatusCode::PAYLOAD_TOO_LARGE => {
                ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", r.body_text())
            }
            StatusCode::UNSUPPORTED_MEDIA_TYPE => ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_type",
                "the body must be JSON, sent with `Content-Type: application/json`",
            ),
            // Malformed JSON, and well-formed JSON with a missing or mistyped field (422 in
            // axum) alike.
            _ => ApiError::bad_request(r.body_text()),
        }
    }
}

impl From<axum::extract::rejection::BytesRejection> for ApiError {
    fn from(r: axum::extract::rejection::BytesRejection) -> Self {
        let code = if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            "too_large"
        } else {
            "bad_request"
        };
        ApiError::new(r.status(), code, r.body_text())
    }
}

/// Put on every error response, for the log of rejected requests.
#[derive(Clone, Debug)]
pub struct Rejection {
    pub code: &'static str,
    pub message: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let rejection = Rejection {
            code: self.code,
            message: self.message.clone(),
        };
        let mut body = json!({ "error": self.code, "message": self.message });
        if let Some(ms) = self.retry_after_ms {
            body["retry_after_ms"] = json!(ms);
        }
        let mut resp = (self.status, Json(body)).into_response();
        if let Some(ms) = self.retry_after_ms {
            resp.headers_mut().insert(
                header::RETRY_AFTER,
                header::HeaderValue::from(ms.div_ceil(1000)),
            );
        }
        resp.extensions_mut().insert(rejection);
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        resp
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
