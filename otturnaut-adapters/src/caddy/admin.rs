//! A thin client for Caddy's admin API: one request, one [`Reply`], with
//! transport failures already turned into `otturnaut_core::Error`.
//!
//! Refusals (any non-2xx answer) are returned as a [`Reply`] rather than an
//! error, because several of them are expected and handled by the caller: a
//! 412 from a stale `If-Match`, a 400 from reading a path that does not exist,
//! a 404 from an unknown `@id`.

use std::time::Duration;

use http_body_util::BodyExt;
use otturnaut_core::{Error, Result, Service};
use reqwest::header::{CACHE_CONTROL, ETAG, IF_MATCH};
use reqwest::{Client, Method, StatusCode};
use serde_json::Value;

/// What Caddy answered to one request.
#[derive(Debug)]
pub(crate) struct Reply {
    method: Method,
    path: String,
    pub status: StatusCode,
    body: Vec<u8>,
    /// `"<path> <hash>"`, to send back as `If-Match`. Caddy 2.6 sends it as a
    /// trailer (after the streamed body), not as a header.
    pub etag: Option<String>,
}

impl Reply {
    pub fn is_success(&self) -> bool {
        self.status.is_success()
    }

    /// The body as JSON. Caddy answers `null` for a missing key.
    pub fn json(&self, operation: &str) -> Result<Value> {
        serde_json::from_slice(&self.body).map_err(|e| {
            Error::failed(
                operation,
                format!(
                    "Caddy answered {} {} with a body that is not JSON ({e}): {}",
                    self.method,
                    self.path,
                    String::from_utf8_lossy(&self.body)
                ),
            )
        })
    }

    /// Caddy's own explanation: the `error` field of its JSON error body, or
    /// the raw body if it is something else.
    pub fn message(&self) -> String {
        serde_json::from_slice::<Value>(&self.body)
            .ok()
            .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_owned))
            .unwrap_or_else(|| String::from_utf8_lossy(&self.body).trim().to_owned())
    }

    /// This reply as the failure of `operation`.
    pub fn failure(&self, operation: &str) -> Error {
        Error::failed(
            operation,
            format!("Caddy answered {} to {} {}: {}", self.status, self.method, self.path, self.message()),
        )
    }
}

/// Tries per request when the connection fails (see [`Admin::send`]).
const TRANSPORT_ATTEMPTS: u32 = 4;

#[derive(Debug, Clone)]
pub(crate) struct Admin {
    client: Client,
    /// The admin URL without a trailing slash, e.g. `http://127.0.0.1:2019`.
    base: String,
    timeout: Duration,
}

impl Admin {
    pub fn new(admin_url: &str, timeout: Duration) -> Result<Self> {
        let base = admin_url.trim_end_matches('/').to_owned();
        let url =
            reqwest::Url::parse(&base).map_err(|e| Error::invalid("Caddy admin URL", admin_url, e.to_string()))?;
        if url.scheme() != "http" && url.scheme() != "https" {
            return Err(Error::invalid("Caddy admin URL", admin_url, "must be an http:// or https:// URL"));
        }
        let client = Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            // The admin API is local; a proxy from the environment must not intercept it.
            .no_proxy()
            // Caddy 2.6 restarts its admin listener on every config change and
            // closes the old one's connections; a pooled connection could be
            // reused just as it is closed. Loopback connects cost microseconds.
            .pool_max_idle_per_host(0)
            .build()
            .map_err(|e| Error::failed("building the HTTP client for Caddy", e))?;
        Ok(Admin { client, base, timeout })
    }

    pub async fn get(&self, operation: &str, path: &str) -> Result<Reply> {
        self.send(operation, Method::GET, path, None, None).await
    }

    /// Sends one request. `path` starts with `/` (e.g. `/config/apps/http`);
    /// `if_match` is an ETag from an earlier reply, to make the change
    /// conditional on that part of the config being unchanged.
    ///
    /// Transport failures other than timeouts are retried a few times: Caddy
    /// 2.6 replaces its admin server on every config change, and for a moment
    /// afterwards a new connection can be dropped unanswered (seen as
    /// "connection closed before message completed" right after changes).
    /// Retrying is safe because every write we send is idempotent or guarded
    /// by `If-Match`/create-only `PUT`.
    pub async fn send(
        &self,
        operation: &str,
        method: Method,
        path: &str,
        body: Option<&Value>,
        if_match: Option<&str>,
    ) -> Result<Reply> {
        self.retrying(operation, &method, path, || self.send_once(&method, path, body, if_match, false)).await
    }

    /// Reloads Caddy's config without changing it: `path`'s value is written
    /// back as read (guarded by `If-Match`), with `Cache-Control:
    /// must-revalidate`, which makes Caddy reload an unchanged config (2.8+
    /// at least). Every handler is then unloaded and started again. A 412
    /// means someone changed that part meanwhile: a reload happened anyway.
    pub async fn reload(&self, operation: &str, path: &str) -> Result<Reply> {
        let current = self.get(operation, path).await?;
        if !current.is_success() {
            return Ok(current);
        }
        let body = current.json(operation)?;
        let etag = current.etag.as_deref();
        let method = Method::PATCH;
        self.retrying(operation, &method, path, || self.send_once(&method, path, Some(&body), etag, true)).await
    }

    /// Runs `once` until it gets an answer, retrying transport failures
    /// other than timeouts (see [`Admin::send`]).
    async fn retrying<F: Future<Output = std::result::Result<Reply, reqwest::Error>>>(
        &self,
        operation: &str,
        method: &Method,
        path: &str,
        once: impl Fn() -> F,
    ) -> Result<Reply> {
        let mut attempt = 1;
        loop {
            match once().await {
                Ok(reply) => return Ok(reply),
                Err(e) if attempt < TRANSPORT_ATTEMPTS && !e.is_timeout() => {
                    tracing::debug!(operation, %method, path, error = %crate::error_chain(&e), "retrying a Caddy admin request");
                    tokio::time::sleep(Duration::from_millis(25 * u64::from(attempt))).await;
                    attempt += 1;
                }
                Err(e) => return Err(self.transport_error(operation, method, path, e)),
            }
        }
    }

    /// Asks Caddy to adapt a Caddyfile to JSON (`POST /adapt`): nothing is
    /// loaded, so it costs no reload. Used to probe what Caddy understands.
    /// Transport failures are retried as in [`Admin::send`]: a probe made
    /// while another command reloads Caddy meets the same closing admin server.
    pub async fn adapt_caddyfile(&self, operation: &str, caddyfile: &str) -> Result<Reply> {
        let method = Method::POST;
        let path = "/adapt";
        let once = || async {
            let resp = self
                .client
                .request(method.clone(), format!("{}{path}", self.base))
                .header(reqwest::header::CONTENT_TYPE, "text/caddyfile")
                .body(caddyfile.to_owned())
                .send()
                .await?;
            let status = resp.status();
            let body = resp.bytes().await?.to_vec();
            Ok::<_, reqwest::Error>(Reply { method: method.clone(), path: path.to_owned(), status, body, etag: None })
        };
        self.retrying(operation, &method, path, once).await
    }

    async fn send_once(
        &self,
        method: &Method,
        path: &str,
        body: Option<&Value>,
        if_match: Option<&str>,
        force: bool,
    ) -> std::result::Result<Reply, reqwest::Error> {
        let mut req = self.client.request(method.clone(), format!("{}{path}", self.base));
        if force {
            req = req.header(CACHE_CONTROL, "must-revalidate");
        }
        if let Some(body) = body {
            req = req.json(body);
        }
        if let Some(etag) = if_match {
            req = req.header(IF_MATCH, etag);
        }
        let resp = req.send().await?;
        let status = resp.status();
        let header_etag = resp.headers().get(ETAG).cloned();
        let collected = reqwest::Body::from(resp).collect().await?;
        let etag = header_etag
            .as_ref()
            .or_else(|| collected.trailers().and_then(|t| t.get(ETAG)))
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        Ok(Reply { method: method.clone(), path: path.to_owned(), status, body: collected.to_bytes().to_vec(), etag })
    }

    fn transport_error(&self, operation: &str, method: &Method, path: &str, e: reqwest::Error) -> Error {
        if e.is_timeout() && !e.is_connect() {
            return Error::Timeout {
                operation: format!("{operation} ({method} {}{path})", self.base),
                after: self.timeout,
            };
        }
        Error::Unavailable {
            service: Service::Caddy,
            address: self.base.clone(),
            detail: format!("{operation}: {method} {path}: {}", crate::error_chain(&e)),
        }
    }
}
