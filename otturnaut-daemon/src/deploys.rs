//! `POST /v1/apps/{app}/deployments` and its cancel.
//!
//! The deploy runs in a task of its own: the response only listens to it,
//! so a client that goes away does not stop it, and its outcome still lands
//! in the metrics (and in Docker, for `GET /v1/apps/{app}`).

use std::convert::Infallible;
use std::sync::Arc;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State as Extract};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use otturnaut_adapters::lock::{self, AppLock};
use otturnaut_adapters::{LOCK_TIMEOUT, StartError};
use otturnaut_core::request::app_id;
use otturnaut_core::{AppId, DeployEvent, DeployRequest, DeploySpec, DeploymentId};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use utoipa::{IntoParams, ToSchema};

use crate::error::{ApiError, ErrorBody, body_rejection, parse_json};
use crate::state::{ResultSlot, Running, State};

#[derive(Debug, Deserialize, IntoParams)]
pub struct DeployQuery {
    /// Wait (up to 10 minutes) for a running deploy of the app instead of answering 409.
    #[serde(default)]
    wait: bool,
}

/// One line of the stream: an event, or (last) the result object, the same
/// as `otturnaut deploy --json` prints.
enum Line {
    Event(DeployEvent),
    Result(serde_json::Value),
}

#[utoipa::path(post, path = "/v1/apps/{app}/deployments", tag = "deploys",
    params(("app" = String, Path, description = "The app's name"), DeployQuery,
           ("Idempotency-Key" = Option<String>, Header, description = "A repeat within 10 minutes gets the first result")),
    request_body = DeployRequest,
    responses(
        (status = 200, description = "The deploy's events, one JSON object a line; the last is the result \
            (as `otturnaut deploy --json`). With `Accept: text/event-stream`, the same as SSE events `event` and `result`.",
            content_type = "application/x-ndjson", body = String),
        (status = 401, description = "No or wrong bearer token", body = ErrorBody),
        (status = 409, description = "A deploy of the app is running", body = ErrorBody),
        (status = 413, description = "Body over 1 MiB", body = ErrorBody),
        (status = 422, description = "Invalid request; `field` names the value", body = ErrorBody),
        (status = 503, description = "Docker or Caddy unreachable", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn deploy(
    Extract(state): Extract<Arc<State>>,
    Path(app): Path<String>,
    query: Result<Query<DeployQuery>, QueryRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::field("wait", e.body_text()))?;
    let body = body.map_err(body_rejection)?;
    let request: DeployRequest = parse_json(&body)?;
    let spec = otturnaut_adapters::validate(&request, &app)?;
    run_streamed(&state, spec, query.wait, &headers).await
}

/// Runs `spec` (a deploy or a rollback) and answers with its stream; a
/// repeated `Idempotency-Key` gets the first request's result instead.
async fn run_streamed(
    state: &Arc<State>,
    spec: DeploySpec,
    wait: bool,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let sse =
        headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|a| a.contains("text/event-stream"));
    let key = headers.get("idempotency-key").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let app = spec.app.clone();
    let slot = match &key {
        None => None,
        Some(key) => match state.idempotency(&app, key) {
            Ok(mut earlier) => {
                // A repeat: the first request's result, once it has one.
                let result = match earlier.wait_for(Option::is_some).await {
                    Ok(v) => v.clone().unwrap_or_default(),
                    Err(_) => {
                        return Err(ApiError::new(StatusCode::CONFLICT, "the first request with this key failed"));
                    }
                };
                let (tx, rx) = mpsc::unbounded_channel();
                let _ = tx.send(Line::Result(result));
                return Ok(respond(rx, sse));
            }
            Err(slot) => Some(slot),
        },
    };
    match start(state, spec, wait, slot).await {
        Ok(rx) => Ok(respond(rx, sse)),
        Err(e) => {
            if let Some(key) = &key {
                state.forget_idempotency(&app, key);
            }
            Err(e)
        }
    }
}

/// `POST /v1/apps/{app}/rollback`'s optional body.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RollbackRequest {
    /// The retained release to make live again (default: the newest retained one).
    #[serde(default)]
    to: Option<String>,
}

#[utoipa::path(post, path = "/v1/apps/{app}/rollback", tag = "deploys",
    params(("app" = String, Path, description = "The app's name"), DeployQuery,
           ("Idempotency-Key" = Option<String>, Header, description = "A repeat within 10 minutes gets the first result")),
    request_body(content = Option<RollbackRequest>, description = "Optional: `{\"to\": DEPLOYMENT}`"),
    responses(
        (status = 200, description = "As a deploy: the events, then the result (with `rollback_of`)",
            content_type = "application/x-ndjson", body = String),
        (status = 401, description = "No or wrong bearer token", body = ErrorBody),
        (status = 409, description = "A deploy of the app is running", body = ErrorBody),
        (status = 422, description = "Invalid app or `to`, or no retained release to go back to", body = ErrorBody),
        (status = 503, description = "Docker or Caddy unreachable", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn rollback(
    Extract(state): Extract<Arc<State>>,
    Path(app): Path<String>,
    query: Result<Query<DeployQuery>, QueryRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::field("wait", e.body_text()))?;
    let body = body.map_err(body_rejection)?;
    let request: RollbackRequest =
        if body.iter().all(u8::is_ascii_whitespace) { RollbackRequest::default() } else { parse_json(&body)? };
    let app = app_id(&app)?;
    let to: Option<DeploymentId> = request
        .to
        .as_deref()
        .map(|t| t.parse().map_err(|e: otturnaut_core::Error| ApiError::field("to", e.to_string())))
        .transpose()?;
    let spec = state.agent.rollback_spec(&app, to.as_ref()).await.map_err(start_error)?;
    run_streamed(&state, spec, query.wait, &headers).await
}

/// Checks, locks and starts the deploy; the receiver gets its lines.
async fn start(
    state: &Arc<State>,
    spec: DeploySpec,
    wait: bool,
    slot: Option<ResultSlot>,
) -> Result<mpsc::UnboundedReceiver<Line>, ApiError> {
    let agent = &state.agent;
    agent.check_deploy(&spec).await.map_err(start_error)?;
    let lock = take_lock(state, &spec.app, wait).await?;
    let mut run = agent.start_deploy(spec.clone(), lock).await.map_err(start_error)?;
    let app = spec.app.clone();
    state.set_running(&app, Running { deployment: None, canceller: run.canceller() });
    let (tx, rx) = mpsc::unbounded_channel();
    let state2 = state.clone();
    state.spawn_deploy(async move {
        while let Some(event) = run.next_event().await {
            if let DeployEvent::Started { deployment, .. } = &event {
                state2.set_deployment(&app, deployment);
            }
            // The client may be gone: the deploy goes on regardless.
            let _ = tx.send(Line::Event(event));
        }
        let outcome = run.outcome().await;
        let rollback = outcome.rollback_of.is_some();
        state2.metrics.deploy(rollback, outcome.is_deployed(), !outcome.residue().is_empty(), outcome.elapsed);
        let result = outcome.to_json();
        tracing::info!(app = %app, result = outcome.result(), "deploy ended");
        // Whoever reads the result line finds the outcome in `GET /v1/apps`.
        state2.apps.changed().await;
        state2.done_running(&app);
        if let Some(slot) = slot {
            let _ = slot.send(Some(result.clone()));
        }
        let _ = tx.send(Line::Result(result));
    });
    Ok(rx)
}

async fn take_lock(state: &State, app: &AppId, wait: bool) -> Result<AppLock, ApiError> {
    let dir = state.agent.locks_dir();
    let io =
        |e: std::io::Error| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("cannot take {app}'s lock: {e}"));
    if wait {
        return lock::lock(&dir, app, "deploy", LOCK_TIMEOUT, |_| {}).await.map_err(|e| match e {
            lock::LockError::Io(_, e) => io(e),
            timed_out => ApiError::new(StatusCode::CONFLICT, format!("{app}: {timed_out}")),
        });
    }
    match lock::try_lock(&dir, app, "deploy").map_err(io)? {
        Ok(lock) => Ok(lock),
        Err(holder) => {
            let mut e = ApiError::new(StatusCode::CONFLICT, holder.describe(app));
            e.body.deployment = state.running(app).and_then(|r| r.deployment).map(|d| d.to_string());
            Err(e)
        }
    }
}

fn start_error(e: StartError) -> ApiError {
    match e {
        StartError::DomainTaken { .. } => ApiError::field("domains", e.to_string()),
        StartError::Service { doing, error } => ApiError::service(&doing, &error),
        StartError::Lock(_) => ApiError::new(StatusCode::CONFLICT, e.to_string()),
        StartError::NoRelease(why) => ApiError::field("to", why),
    }
}

fn respond(rx: mpsc::UnboundedReceiver<Line>, sse: bool) -> Response {
    let lines = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|line| (line, rx)) });
    if sse {
        let events = lines.map(|line| {
            let event = match line {
                Line::Event(e) => Event::default().event("event").json_data(e),
                Line::Result(r) => Event::default().event("result").json_data(r),
            };
            Ok::<_, Infallible>(event.unwrap_or_else(|e| Event::default().event("error").data(e.to_string())))
        });
        return Sse::new(events).keep_alive(KeepAlive::default()).into_response();
    }
    let body = lines.map(|line| {
        let mut text = match line {
            Line::Event(e) => serde_json::to_string(&e),
            Line::Result(r) => serde_json::to_string(&r),
        }
        .unwrap_or_else(|e| format!(r#"{{"error":"serialising an event: {e}"}}"#));
        text.push('\n');
        Ok::<_, Infallible>(text)
    });
    ([(header::CONTENT_TYPE, "application/x-ndjson")], Body::from_stream(body)).into_response()
}

/// The answer to a cancel.
#[derive(Debug, Serialize, ToSchema)]
pub struct Cancelled {
    app: String,
    /// The deploy that is being rolled back (null if it had no id yet).
    deployment: Option<String>,
}

#[utoipa::path(post, path = "/v1/apps/{app}/deployments/cancel", tag = "deploys",
    params(("app" = String, Path, description = "The app's name")),
    responses(
        (status = 202, description = "The running deploy is being interrupted and rolled back (as Ctrl-C)", body = Cancelled),
        (status = 401, description = "No or wrong bearer token", body = ErrorBody),
        (status = 404, description = "No deploy of the app runs in this daemon", body = ErrorBody),
        (status = 422, description = "Invalid app name", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn cancel(Extract(state): Extract<Arc<State>>, Path(app): Path<String>) -> Result<Response, ApiError> {
    let app = app_id(&app)?;
    let Some(running) = state.running(&app) else {
        return Err(ApiError::new(StatusCode::NOT_FOUND, format!("no deploy of {app} is running in this daemon")));
    };
    running.canceller.cancel("a cancel request");
    let body = Cancelled { app: app.to_string(), deployment: running.deployment.map(|d| d.to_string()) };
    Ok((StatusCode::ACCEPTED, Json(body)).into_response())
}
