//! JSON error answers: every failure of the REST API is `{"error": "...", ...}` with an honest status.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value as Json};

use crate::registry::FieldError;
use crate::store::StoreError;

/// An error answer of the REST API.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// Extra members merged into the JSON object (`field`, `known`, ...).
    pub details: Json,
    /// Seconds for a `Retry-After` header.
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            details: Json::Null,
            retry_after: None,
        }
    }

    /// Tells the client when to try again (`Retry-After`).
    pub fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs);
        self
    }

    pub fn with(mut self, details: Json) -> Self {
        self.details = details;
        self
    }

    pub fn not_found(what: impl std::fmt::Display) -> Self {
        ApiError::new(StatusCode::NOT_FOUND, format!("{what} not found"))
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn unprocessable(field: &str, message: impl std::fmt::Display) -> Self {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("invalid {field}: {message}"),
        )
        .with(json!({ "field": field }))
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::UNAUTHORIZED, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }
}

impl From<FieldError> for ApiError {
    fn from(e: FieldError) -> Self {
        ApiError::unprocessable(&e.field, e.message)
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Duplicate { .. } => ApiError::new(StatusCode::CONFLICT, e.to_string())
                .with(json!({ "field": "hostname" })),
            other => {
                tracing::error!(error = %other, "store failure");
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, other.to_string())
            }
        }
    }
}

impl From<crate::jobs::SubmitError> for ApiError {
    fn from(e: crate::jobs::SubmitError) -> Self {
        match e {
            crate::jobs::SubmitError::Invalid(field) => field.into(),
            crate::jobs::SubmitError::Store(store) => store.into(),
            crate::jobs::SubmitError::Busy(why) => {
                tracing::warn!(%why, "trace request refused: a job limit is reached");
                ApiError::new(StatusCode::TOO_MANY_REQUESTS, why)
                    .retry_after(crate::jobs::BUSY_RETRY_AFTER_SECS)
            }
            crate::jobs::SubmitError::Unavailable(why) => {
                tracing::warn!(%why, "trace request refused during a fail-over");
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, why)
                    .retry_after(crate::cluster::RETRY_AFTER_SECS)
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({ "error": self.message, "status": self.status.as_u16() });
        if let (Some(obj), Json::Object(extra)) = (body.as_object_mut(), self.details) {
            obj.extend(extra);
        }
        let mut response = (self.status, axum::Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}
