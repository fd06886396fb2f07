//! Every error answer: `{"error": "...", "field": ...}` with its status.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use otturnaut_core::InvalidField;
use serde::Serialize;
use utoipa::ToSchema;

/// The body of every error.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// What went wrong, for a person; never a secret.
    pub error: String,
    /// The request field at fault, for 422s.
    pub field: Option<String>,
    /// The deploy in the way, for 409s.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deployment: Option<String>,
}

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub body: ErrorBody,
}

impl ApiError {
    pub fn new(status: StatusCode, error: impl Into<String>) -> Self {
        ApiError { status, body: ErrorBody { error: error.into(), field: None, deployment: None } }
    }

    pub fn field(field: &str, error: impl Into<String>) -> Self {
        let mut e = ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, error);
        e.body.field = Some(field.to_owned());
        e
    }

    /// An error from Docker or Caddy: 503 when unreachable, 500 otherwise.
    pub fn service(doing: &str, e: &otturnaut_core::Error) -> Self {
        let status =
            if e.is_unavailable() { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::INTERNAL_SERVER_ERROR };
        ApiError::new(status, format!("{doing}: {e}"))
    }
}

impl From<InvalidField> for ApiError {
    fn from(e: InvalidField) -> Self {
        ApiError::field(e.field, e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body)).into_response()
    }
}

pub async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "no such endpoint; see /v1/openapi.json")
}

/// A body axum could not take (too large, unreadable) as our error.
pub fn body_rejection(e: axum::extract::rejection::BytesRejection) -> ApiError {
    ApiError::new(e.status(), e.body_text())
}

/// A JSON body parsed into `T`, naming the field at fault.
pub fn parse_json<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let message = inner.to_string();
        // serde names an unknown or missing field in its message, not in the path.
        let kind = ["unknown field", "missing field"].into_iter().find(|k| message.starts_with(k));
        let field = match (kind, message.split('`').nth(1)) {
            (Some(_), Some(name)) => name.to_owned(),
            _ if path == "." => "body".to_owned(),
            _ => path,
        };
        // Only our own words: a value serde quotes could be a secret.
        let what = match inner.classify() {
            serde_json::error::Category::Syntax | serde_json::error::Category::Eof => "not valid JSON",
            _ => kind.unwrap_or("wrong type or value"),
        };
        ApiError::field(&field, format!("{field}: {what}"))
    })
}
