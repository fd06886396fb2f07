//! Health, status, undeploy, reconcile and logs.

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State as Extract};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use otturnaut_adapters::lock;
use otturnaut_adapters::maintenance::MaintenanceError;
use otturnaut_adapters::status::{AppStatus, release_json, statuses};
use otturnaut_core::request::app_id;
use otturnaut_core::{AppId, ContainerId};
use otturnaut_steps::{Residue, list_releases, live_release};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::{IntoParams, ToSchema};

use crate::error::{ApiError, ErrorBody, body_rejection, parse_json};
use crate::state::State;

/// The most lines `tail` asks Docker for, as the CLI's `--tail`.
pub const MAX_TAIL: usize = 100_000;

#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// `ok`, or `unavailable` when Docker or Caddy does not answer.
    status: String,
    /// `ok` or why not.
    docker: String,
    caddy: String,
}

#[utoipa::path(get, path = "/v1/health", tag = "agent",
    responses((status = 200, description = "Docker and Caddy answer", body = Health),
              (status = 503, description = "Docker or Caddy does not answer", body = Health)))]
pub async fn health(Extract(state): Extract<Arc<State>>) -> Response {
    let agent = &state.agent;
    let (docker, caddy) = tokio::join!(agent.docker.ping(), agent.caddy.list_routes());
    let docker = docker.map(|_| "ok".to_owned()).unwrap_or_else(|e| format!("unreachable: {e}"));
    let caddy = caddy.map(|_| "ok".to_owned()).unwrap_or_else(|e| e.to_string());
    let ok = docker == "ok" && caddy == "ok";
    state.metrics.docker_up.store(docker == "ok", std::sync::atomic::Ordering::Relaxed);
    state.metrics.caddy_up.store(caddy == "ok", std::sync::atomic::Ordering::Relaxed);
    let status = if ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let body = Health { status: if ok { "ok" } else { "unavailable" }.into(), docker, caddy };
    (status, Json(body)).into_response()
}

#[utoipa::path(get, path = "/v1/apps", tag = "apps",
    responses((status = 200, description = "Every app, as `otturnaut status --json`", body = Vec<AppStatus>),
              (status = 401, description = "No or wrong bearer token", body = ErrorBody),
              (status = 503, description = "Docker or Caddy unreachable", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list(Extract(state): Extract<Arc<State>>) -> Result<Response, ApiError> {
    match state.apps.get().await {
        Ok(apps) => Ok(([(axum::http::header::CONTENT_TYPE, "application/json")], apps.body.clone()).into_response()),
        Err((status, message)) => Err(ApiError::new(status, message)),
    }
}

#[utoipa::path(get, path = "/v1/apps/{app}", tag = "apps",
    params(("app" = String, Path, description = "The app's name")),
    responses((status = 200, description = "The app, as `otturnaut status APP --json` shows it", body = AppStatus),
              (status = 401, description = "No or wrong bearer token", body = ErrorBody),
              (status = 404, description = "Nothing of the app exists", body = ErrorBody),
              (status = 422, description = "Invalid app name", body = ErrorBody),
              (status = 503, description = "Docker or Caddy unreachable", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn one(Extract(state): Extract<Arc<State>>, Path(app): Path<String>) -> Result<Json<AppStatus>, ApiError> {
    let app = app_id(&app)?;
    let found = statuses(&state.agent, Some(&app)).await.map_err(|e| ApiError::service("reading the app", &e))?;
    match found.into_iter().next() {
        Some(s) if s.live || s.containers > 0 || s.images > 0 => Ok(Json(s)),
        _ => Err(ApiError::new(StatusCode::NOT_FOUND, format!("{app} is not deployed"))),
    }
}

/// What an undeploy did, as `otturnaut undeploy --json`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Undeployed {
    /// `undeployed`, or `failed` when something could not be removed.
    result: String,
    app: String,
    done: Vec<String>,
    #[schema(value_type = Vec<Object>)]
    residue: Vec<Residue>,
    exit_code: u8,
}

#[utoipa::path(delete, path = "/v1/apps/{app}", tag = "apps",
    params(("app" = String, Path, description = "The app's name")),
    responses((status = 200, description = "Removed (route, containers, images, sources)", body = Undeployed),
              (status = 401, description = "No or wrong bearer token", body = ErrorBody),
              (status = 409, description = "A deploy of the app is running", body = ErrorBody),
              (status = 422, description = "Invalid app name", body = ErrorBody),
              (status = 503, description = "Docker or Caddy unreachable", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn undeploy(Extract(state): Extract<Arc<State>>, Path(app): Path<String>) -> Result<Response, ApiError> {
    let app = app_id(&app)?;
    let agent = &state.agent;
    let _lock = match lock::try_lock(&agent.locks_dir(), &app, "undeploy") {
        Ok(Ok(lock)) => lock,
        Ok(Err(holder)) => return Err(ApiError::new(StatusCode::CONFLICT, holder.describe(&app))),
        Err(e) => {
            return Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("cannot take {app}'s lock: {e}")));
        }
    };
    let report = agent.undeploy(&app).await;
    state.apps.changed().await;
    let report = report.map_err(maintenance_error)?;
    let clean = report.residue.is_empty();
    Ok(Json(Undeployed {
        result: if clean { "undeployed" } else { "failed" }.into(),
        app: app.to_string(),
        done: report.done,
        residue: report.residue,
        exit_code: if clean { 0 } else { 3 },
    })
    .into_response())
}

fn maintenance_error(e: MaintenanceError) -> ApiError {
    match e {
        MaintenanceError::Service { doing, error } => ApiError::service(&doing, &error),
        MaintenanceError::Lock(..) => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// `POST /v1/reconcile`'s optional body.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReconcileRequest {
    /// Only this app (default: every app with resources).
    #[serde(default)]
    app: Option<String>,
}

#[utoipa::path(post, path = "/v1/reconcile", tag = "apps",
    request_body(content = Option<ReconcileRequest>, description = "Optional: `{\"app\": NAME}`"),
    responses((status = 200, description = "As `otturnaut reconcile --json`", body = Object),
              (status = 401, description = "No or wrong bearer token", body = ErrorBody),
              (status = 422, description = "Invalid body", body = ErrorBody),
              (status = 503, description = "Docker or Caddy unreachable", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn reconcile(
    Extract(state): Extract<Arc<State>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body.map_err(body_rejection)?;
    let request: ReconcileRequest =
        if body.iter().all(u8::is_ascii_whitespace) { ReconcileRequest::default() } else { parse_json(&body)? };
    let only: BTreeSet<AppId> = request.app.as_deref().map(app_id).transpose()?.into_iter().collect();
    let r = state.agent.reconcile(only).await;
    state.apps.changed().await;
    let r = r.map_err(maintenance_error)?;
    let done: Vec<&String> = r.reports.iter().flat_map(|r| &r.done).collect();
    let residue: Vec<&Residue> = r.reports.iter().flat_map(|r| &r.residue).collect();
    let code = if residue.is_empty() { 0 } else { 3 };
    Ok(Json(json!({
        "result": if code == 0 { "reconciled" } else { "failed" },
        "done": done,
        "residue": residue,
        "apps": r.reports,
        "skipped": r.skipped.iter().map(|(app, why)| json!({"app": app, "reason": why})).collect::<Vec<_>>(),
        "exit_code": code,
    }))
    .into_response())
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct LogsQuery {
    /// How many of the last lines (at most 100000).
    #[serde(default = "default_tail")]
    tail: usize,
    /// Keep sending new lines as Server-Sent Events until the container stops.
    #[serde(default)]
    follow: bool,
}

fn default_tail() -> usize {
    100
}

/// The last lines of an app's container.
#[derive(Debug, Serialize, ToSchema)]
pub struct Logs {
    app: String,
    container: String,
    lines: Vec<String>,
}

#[utoipa::path(get, path = "/v1/apps/{app}/logs", tag = "apps",
    params(("app" = String, Path, description = "The app's name"), LogsQuery),
    responses((status = 200, description = "The live (or newest) container's output; SSE `line` events with follow=true",
               body = Logs),
              (status = 401, description = "No or wrong bearer token", body = ErrorBody),
              (status = 404, description = "The app has no containers", body = ErrorBody),
              (status = 422, description = "Invalid app name or tail", body = ErrorBody),
              (status = 503, description = "Docker unreachable", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn logs(
    Extract(state): Extract<Arc<State>>,
    Path(app): Path<String>,
    query: Result<Query<LogsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::field("query", e.body_text()))?;
    let app = app_id(&app)?;
    if query.tail > MAX_TAIL {
        return Err(ApiError::field("tail", format!("{} lines; at most {MAX_TAIL}", query.tail)));
    }
    let container = container_of(&state, &app).await?;
    let mut stream = state.agent.stream_logs(&container, query.tail, query.follow);
    if query.follow {
        let lines = stream.map(|line| {
            let event = match line {
                Ok(line) => Event::default().event("line").data(line),
                Err(e) => Event::default().event("error").data(e.to_string()),
            };
            Ok::<_, Infallible>(event)
        });
        return Ok(Sse::new(lines).keep_alive(KeepAlive::default()).into_response());
    }
    let mut lines = Vec::new();
    while let Some(line) = stream.next().await {
        lines.push(line.map_err(|e| ApiError::service(&format!("reading {app}'s logs"), &e))?);
    }
    Ok(Json(Logs { app: app.to_string(), container: container.0, lines }).into_response())
}

/// The live container, or the newest one when nothing is live.
async fn container_of(state: &State, app: &AppId) -> Result<ContainerId, ApiError> {
    let a = &state.agent.adapters;
    let live =
        live_release(a, app).await.map_err(|e| ApiError::service(&format!("reading {app}'s live release"), &e))?;
    if let Some(r) = live {
        return Ok(r.container);
    }
    let mut containers =
        a.runtime.list(Some(app)).await.map_err(|e| ApiError::service(&format!("listing {app}'s containers"), &e))?;
    containers.sort_by(|x, y| (x.created, &x.deployment).cmp(&(y.created, &y.deployment)));
    containers
        .pop()
        .map(|c| c.id)
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("{app} has no containers: it is not deployed")))
}

#[utoipa::path(get, path = "/v1/apps/{app}/releases", tag = "apps",
    params(("app" = String, Path, description = "The app's name")),
    responses((status = 200, description = "The live and retained releases, newest first, as `otturnaut releases --json`",
               body = Vec<Object>),
              (status = 401, description = "No or wrong bearer token", body = ErrorBody),
              (status = 422, description = "Invalid app name", body = ErrorBody),
              (status = 503, description = "Docker or Caddy unreachable", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn releases(Extract(state): Extract<Arc<State>>, Path(app): Path<String>) -> Result<Response, ApiError> {
    let app = app_id(&app)?;
    let all = list_releases(&state.agent.adapters, &app)
        .await
        .map_err(|e| ApiError::service(&format!("listing the releases of {app}"), &e))?;
    Ok(Json(all.iter().map(release_json).collect::<Vec<_>>()).into_response())
}

#[utoipa::path(post, path = "/v1/apps/{app}/prune", tag = "apps",
    params(("app" = String, Path, description = "The app's name")),
    responses((status = 200, description = "Retained releases beyond `keep` and dangling build images removed, \
               as `otturnaut prune APP --json`", body = Object),
              (status = 401, description = "No or wrong bearer token", body = ErrorBody),
              (status = 409, description = "A deploy of the app is running", body = ErrorBody),
              (status = 422, description = "Invalid app name", body = ErrorBody),
              (status = 503, description = "Docker or Caddy unreachable", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn prune(Extract(state): Extract<Arc<State>>, Path(app): Path<String>) -> Result<Response, ApiError> {
    let app = app_id(&app)?;
    let agent = &state.agent;
    let _lock = match lock::try_lock(&agent.locks_dir(), &app, "prune") {
        Ok(Ok(lock)) => lock,
        Ok(Err(holder)) => return Err(ApiError::new(StatusCode::CONFLICT, holder.describe(&app))),
        Err(e) => {
            return Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("cannot take {app}'s lock: {e}")));
        }
    };
    let keep = agent.config.keep;
    let report =
        otturnaut_steps::prune(&agent.adapters, &BTreeSet::from([app.clone()]), false, keep, Default::default()).await;
    state.apps.changed().await;
    let report = report.map_err(|e| ApiError::service(&format!("pruning {app}"), &e))?;
    let done: Vec<&String> = report.apps.iter().flat_map(|r| &r.done).collect();
    let residue: Vec<&Residue> = report.apps.iter().flat_map(|r| &r.residue).collect();
    let code = if residue.is_empty() { 0 } else { 3 };
    Ok(Json(json!({
        "result": if code == 0 { "pruned" } else { "failed" },
        "app": app,
        "keep": keep,
        "done": done,
        "dangling_images": report.dangling,
        "freed_bytes": report.freed_bytes,
        "residue": residue,
        "exit_code": code,
    }))
    .into_response())
}

#[utoipa::path(get, path = "/metrics", tag = "agent",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain", body = String),
              (status = 401, description = "No or wrong bearer token", body = crate::error::ErrorBody)),
    security(("bearer" = [])))]
/// `GET /metrics`: the counters in Prometheus text format.
pub async fn metrics(Extract(state): Extract<Arc<State>>) -> impl IntoResponse {
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], state.metrics.text())
}
