//! The bearer token, and the bound on concurrent requests.

use std::sync::Arc;

use axum::extract::{Request, State as Extract};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

use crate::error::ApiError;
use crate::state::State;

/// Lets a request through only with `Authorization: Bearer TOKEN`. The
/// comparison takes the same time whatever the bytes; a refusal says nothing
/// but that a bearer token is wanted.
pub async fn require(Extract(state): Extract<Arc<State>>, request: Request, next: Next) -> Response {
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    if bool::from(given.as_bytes().ct_eq(state.token.expose().as_bytes())) {
        return next.run(request).await;
    }
    let mut response = ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized").into_response();
    response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

/// At most [`crate::MAX_CONCURRENT`] requests at once; more get 503 at once.
pub async fn limit_concurrency(Extract(state): Extract<Arc<State>>, request: Request, next: Next) -> Response {
    let Ok(_permit) = state.requests.clone().try_acquire_owned() else {
        let mut response =
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "too many concurrent requests; try again").into_response();
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return response;
    };
    // Held until the response head is out; a streamed body (a deploy, a log
    // follow) then runs on without a permit.
    next.run(request).await
}
