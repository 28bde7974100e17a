//! The JSON body extractor: 415 for a wrong content type, 413 over the limit, 400 for bad JSON.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{header, StatusCode};
use serde_json::{Map, Value as Json};

use super::error::ApiError;

/// A request body that must be one JSON object.
pub struct JsonObject(pub Map<String, Json>);

impl<S: Send + Sync> FromRequest<S> for JsonObject {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let content_type = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let mime = content_type
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        if mime != "application/json"
            && !(mime.starts_with("application/") && mime.ends_with("+json"))
        {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!(
                    "expected Content-Type: application/json, got {}",
                    if content_type.is_empty() {
                        "none".to_owned()
                    } else {
                        format!("{content_type:?}")
                    }
                ),
            ));
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            let status = rejection.status();
            if status == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(
                    status,
                    "request body is larger than the configured limit (max_body_bytes)",
                )
            } else {
                ApiError::new(
                    status,
                    format!("cannot read request body: {}", rejection.body_text()),
                )
            }
        })?;
        match serde_json::from_slice::<Json>(&bytes) {
            Ok(Json::Object(map)) => Ok(JsonObject(map)),
            Ok(other) => Err(ApiError::bad_request(format!(
                "request body must be a JSON object, got {}",
                json_type(&other)
            ))),
            Err(e) => Err(ApiError::bad_request(format!("malformed JSON: {e}"))),
        }
    }
}

/// The JSON type name of a value, for error messages.
pub fn json_type(value: &Json) -> &'static str {
    match value {
        Json::Null => "null",
        Json::Bool(_) => "a boolean",
        Json::Number(_) => "a number",
        Json::String(_) => "a string",
        Json::Array(_) => "an array",
        Json::Object(_) => "an object",
    }
}
