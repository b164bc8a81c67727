//! The `ProxyHttp` implementation: routing, the admin API, `/health` and `/metrics`.

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use bytes::BytesMut;
use control::admin::{Admin, AdminRequest, AdminResponse};
use control::config::Config;
use control::registry::{Endpoint, FnEntry, InFlight, Outcome, Registry};
use pingora_core::upstreams::peer::HttpPeer;
use pingora_core::{Error, ErrorType, Result};
use pingora_http::RequestHeader;
use pingora_proxy::{FailToProxy, ProxyHttp, Session};

use crate::activator::{self, Bounds, Refusal};
use crate::metrics::Metrics;
use crate::ratelimit::AdminLimit;
use crate::{forward, respond, routes};

/// The gateway. Shared by all connections; everything in it is cheap to read concurrently.
pub struct Gateway {
    cfg: Arc<Config>,
    registry: Registry,
    admin: Admin,
    metrics: Arc<Metrics>,
    bounds: Bounds,
    admin_limit: AdminLimit,
}

/// Per-request state.
#[derive(Default)]
pub struct Ctx {
    /// The function this request goes to.
    entry: Option<Arc<FnEntry>>,
    /// The replica it was sent to.
    endpoint: Option<Arc<Endpoint>>,
    /// Counts the request in flight for its function while it lives.
    flight: Option<InFlight>,
    /// Where the function's part of the path starts (after `/gateway/{name}`).
    rest_at: usize,
    /// Why the activator refused, when it did.
    refusal: Option<Refusal>,
    /// Attempts at connecting, to bound retries.
    attempts: u8,
    started: Option<Instant>,
    /// A chunked request body read whole (Pingora replays it from its retry buffer): its
    /// length, sent as `Content-Length` instead of the chunks.
    dechunked: Option<usize>,
}

/// Chunked request bodies up to this size reach a function with a `Content-Length` (as nginx
/// buffers them), on both paths; Pingora's retry buffer, which replays it, holds as much.
pub const MAX_CHUNKED_BODY: usize = 64 * 1024;

/// Connection attempts per request (a replica may die between pick and connect); the fast path
/// allows as many.
pub const MAX_ATTEMPTS: u8 = 3;

/// How long connecting to a replica may take, on both paths.
pub const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

impl Gateway {
    /// A gateway over a registry, with its admin API and metrics.
    pub fn new(cfg: Arc<Config>, registry: Registry, admin: Admin, metrics: Arc<Metrics>) -> Self {
        let bounds = Bounds::from_config(&cfg);
        Gateway {
            admin_limit: AdminLimit::new(cfg.admin_rate_limit),
            cfg,
            registry,
            admin,
            metrics,
            bounds,
        }
    }

    /// Serves `/admin/*`: rate limit, token, body limit, then the admin API.
    async fn serve_admin(&self, session: &mut Session) -> Result<()> {
        let client = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        // The leader's activity polls (control::scaling) are not the users' admin calls.
        let internal = session.req_header().uri.path() == control::scaling::activity::PATH;
        if let Some(Err(wait)) = client
            .filter(|_| !internal)
            .map(|ip| self.admin_limit.check(ip))
        {
            let msg = format!(
                "more than {} admin requests per minute from {} (FAAS_ADMIN_RATE_LIMIT); retry in {wait} s",
                self.admin_limit.per_minute,
                client.map(|ip| ip.to_string()).unwrap_or_default()
            );
            self.metrics
                .admin
                .with_label_values(&["rate_limited", "429"])
                .inc();
            return respond::error(session, 429, &msg, &[("Retry-After", wait.to_string())]).await;
        }
        let header = |s: &Session, name: &str| {
            s.req_header()
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let resp = match self
            .admin
            .authorize(header(session, "authorization").as_deref())
        {
            Some(denied) => denied,
            None => match self.read_body(session).await? {
                Err(too_large) => too_large,
                Ok(body) => {
                    let req = session.req_header();
                    let host = header(session, "host");
                    let accept = header(session, "accept");
                    let path = req.uri.path().to_string();
                    let query = req.uri.query().map(str::to_string);
                    let method = req.method.as_str().to_string();
                    self.admin
                        .handle(AdminRequest {
                            method: &method,
                            path: &path,
                            query: query.as_deref(),
                            host: host.as_deref(),
                            body: &body,
                            accept: accept.as_deref(),
                        })
                        .await
                }
            },
        };
        self.metrics
            .admin
            .with_label_values(&[resp.operation, resp.status.to_string().as_str()])
            .inc();
        if resp.status == 413 {
            session.set_keepalive(None);
        }
        if let Some(rest) = resp.stream {
            let head = (resp.status, resp.content_type, resp.body);
            return crate::streamed::send(session, head, &resp.headers, rest).await;
        }
        respond::send(
            session,
            resp.status,
            resp.content_type,
            &resp.headers,
            resp.body,
        )
        .await
    }

    /// Reads the request body up to the limit; `Err` is the 413 to send.
    async fn read_body(
        &self,
        session: &mut Session,
    ) -> Result<std::result::Result<BytesMut, AdminResponse>> {
        let limit = self.cfg.max_body_bytes;
        let too_large = || {
            AdminResponse::error(
                "too_large",
                413,
                &format!("the body is larger than {limit} bytes (FAAS_MAX_BODY_BYTES)"),
            )
        };
        let declared = session
            .req_header()
            .headers
            .get("content-length")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        if declared.is_some_and(|n| n > limit) {
            return Ok(Err(too_large()));
        }
        let mut body = BytesMut::new();
        while let Some(chunk) = session.read_request_body().await? {
            if body.len() + chunk.len() > limit {
                return Ok(Err(too_large()));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Ok(body))
    }
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx::default()
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        // RFC 9112 §3.2: an HTTP/1.1 request without exactly one Host is refused, as on the
        // fast path.
        let req = session.req_header();
        if req.version == http::Version::HTTP_11 && req.headers.get_all("host").iter().count() != 1
        {
            let msg = "an HTTP/1.1 request needs exactly one Host header (RFC 9112 §3.2)";
            session.set_keepalive(None);
            respond::error(session, 400, msg, &[]).await?;
            return Ok(true);
        }
        let path = session.req_header().uri.path();
        if let Some(route) = routes::split(&self.cfg.path_prefix, path) {
            let mut found = self.registry.get(route.name);
            if found.is_none() && !self.registry.is_restored() {
                // Just restarted: the function may be on its way back.
                self.registry
                    .wait_restored(self.cfg.activation_timeout)
                    .await;
                found = self.registry.get(route.name);
            }
            let Some(entry) = found else {
                let msg = format!("no function named {:?} is deployed", route.name);
                respond::error(session, 404, &msg, &[]).await?;
                // true: the response is already written
                return Ok(true);
            };
            ctx.rest_at = path.len() - route.rest.len();
            if is_chunked(session.req_header()) {
                // Read it whole, so that a server without chunked request support (Python's
                // http.server) gets it with a length.
                session.enable_retry_buffering();
                let mut total = 0;
                while let Some(chunk) = session.read_request_body().await? {
                    total += chunk.len();
                    if total > MAX_CHUNKED_BODY {
                        let msg = format!(
                            "a chunked request body may be at most {MAX_CHUNKED_BODY} bytes; \
                             send a larger one with a Content-Length"
                        );
                        session.set_keepalive(None);
                        respond::error(session, 413, &msg, &[]).await?;
                        return Ok(true);
                    }
                }
                ctx.dechunked = Some(total);
            }
            ctx.started = Some(Instant::now());
            ctx.flight = Some(entry.begin());
            ctx.entry = Some(entry);
            return Ok(false);
        }
        match path {
            "/health" => respond::send(session, 200, "text/plain", &[], b"ok".to_vec()).await?,
            "/metrics" => {
                let body = self.metrics.render(&self.registry);
                respond::send(session, 200, "text/plain; version=0.0.4", &[], body).await?
            }
            p if p == "/admin" || p.starts_with("/admin/") => self.serve_admin(session).await?,
            _ => {
                let msg = format!(
                    "nothing at {path}; functions are served under {}/<name>/",
                    self.cfg.path_prefix
                );
                respond::error(session, 404, &msg, &[]).await?
            }
        }
        Ok(true)
    }

    async fn upstream_peer(&self, session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let Some(entry) = ctx.entry.clone() else {
            return Error::e_explain(ErrorType::InternalError, "no function chosen");
        };
        // A retry: give back the replica of the failed attempt, and try another one if any.
        // (Retries come only from `fail_to_connect`: its window shrinks.)
        let failed = ctx.endpoint.take().map(|old| {
            entry.release_with(&old, Outcome::ConnectFailed);
            old.replica
        });
        ctx.attempts += 1;
        let ep = match entry.acquire_avoiding(failed) {
            Some(ep) => ep,
            None => {
                // Slow path: hold the request. A body-less request notices its client leaving.
                let watch_client = !has_body(session.req_header());
                let downstream = session.as_downstream_mut();
                let client_gone = async move {
                    if watch_client {
                        let _ = downstream.read_body_or_idle(true).await;
                    } else {
                        std::future::pending::<()>().await
                    }
                };
                match activator::acquire(&self.registry, &entry, self.bounds, client_gone).await {
                    Ok(ep) => ep,
                    Err(refusal) => {
                        let status = refusal.status;
                        ctx.refusal = Some(refusal);
                        return Error::e_explain(
                            ErrorType::HTTPStatus(status),
                            "request not forwarded",
                        );
                    }
                }
            }
        };
        let mut peer = HttpPeer::new(ep.addr, false, String::new());
        // A pod address that went silent fails in seconds, not after the kernel's ~2 min.
        peer.options.connection_timeout = Some(CONNECT_TIMEOUT);
        ctx.endpoint = Some(ep);
        Ok(Box::new(peer))
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let uri = &session.req_header().uri;
        let rest = uri.path().get(ctx.rest_at..).unwrap_or("");
        let prefix = &uri.path()[..ctx.rest_at];
        let target = routes::upstream_path(rest, uri.query());
        let host = session.req_header().headers.get("host").cloned();
        let prefix = prefix.to_string();
        upstream.set_uri(
            target.parse().map_err(|e| {
                Error::because(ErrorType::InvalidHTTPHeader, "rewriting the path", e)
            })?,
        );
        let client = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip().to_string());
        // The rules of the fast path (`forward`): what stops here, then ours.
        let previous = upstream.headers.get("x-forwarded-for").cloned();
        let dropped: Vec<http::HeaderName> = {
            let named: Vec<&[u8]> = session
                .req_header()
                .headers
                .get_all("connection")
                .iter()
                .flat_map(|v| v.as_bytes().split(|&b| b == b','))
                .map(<[u8]>::trim_ascii)
                .filter(|t| !t.is_empty())
                .collect();
            // An upgrade (WebSocket) keeps the two headers that ask for it: this path is the
            // one that carries upgrades.
            let upgrading = session.is_upgrade_req();
            upstream
                .headers
                .keys()
                .filter(|k| !(upgrading && matches!(k.as_str(), "connection" | "upgrade")))
                .filter(|k| forward::drops_request_header(k.as_str().as_bytes(), &named))
                .cloned()
                .collect()
        };
        for name in dropped {
            upstream.remove_header(&name);
        }
        let ip = client.unwrap_or_default();
        if previous.is_some() || !ip.is_empty() {
            let mut xff = Vec::new();
            forward::forwarded_for(previous.as_ref().map(|v| v.as_bytes()), &ip, &mut xff);
            upstream.insert_header("X-Forwarded-For", xff)?;
        }
        upstream.insert_header("X-Forwarded-Proto", "http")?;
        if let Some(h) = host {
            upstream.insert_header("X-Forwarded-Host", h)?;
        }
        if let Some(n) = ctx.dechunked {
            upstream.remove_header("Transfer-Encoding");
            upstream.insert_header("Content-Length", n.to_string())?;
        }
        upstream.insert_header("X-Forwarded-Prefix", prefix)?;
        Ok(())
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Ctx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        // Nothing was sent yet: another replica (or the next activation) may take it.
        if forward::may_resend(false, false) && ctx.attempts < MAX_ATTEMPTS {
            e.set_retry(true);
        }
        e
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        let name = ctx.entry.as_ref().map(|e| e.name.as_str()).unwrap_or("");
        let (code, message, extra) = match ctx.refusal.as_ref() {
            Some(r) => (r.status, r.message.clone(), r.headers()),
            None => match e.etype() {
                ErrorType::HTTPStatus(c) => (*c, format!("function {name:?}: {e}"), Vec::new()),
                _ => match e.esource() {
                    pingora_core::ErrorSource::Upstream => (
                        502,
                        format!("function {name:?} failed to answer: {e}"),
                        Vec::new(),
                    ),
                    pingora_core::ErrorSource::Downstream => match e.etype() {
                        ErrorType::WriteError
                        | ErrorType::ReadError
                        | ErrorType::ConnectionClosed => (0, String::new(), Vec::new()),
                        _ => (400, format!("bad request: {e}"), Vec::new()),
                    },
                    _ => (500, format!("gateway error: {e}"), Vec::new()),
                },
            },
        };
        if session.response_written().is_some() {
            // The head went out: the client learns of the failure by the connection closing,
            // never by an error appended to a body it would take as the function's.
            return FailToProxy {
                error_code: code,
                can_reuse_downstream: false,
            };
        }
        if code == 499 {
            // The client is gone: nothing to write.
            return FailToProxy {
                error_code: code,
                can_reuse_downstream: false,
            };
        }
        if code > 0 {
            // The connection is not reused after a failed proxy: say so (`Connection: close`).
            session.set_keepalive(None);
            if let Err(we) = respond::error(session, code, &message, &extra).await {
                log::debug!("could not send the error response: {we}");
            }
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Ctx) {
        let Some(entry) = ctx.entry.take() else {
            return;
        };
        if let Some(ep) = ctx.endpoint.take() {
            let outcome = if e.is_none() {
                Outcome::Answered
            } else {
                Outcome::Other
            };
            entry.release_with(&ep, outcome);
        }
        ctx.flight.take(); // no longer in flight
        let code = match session.response_written() {
            Some(r) => r.status.as_u16(),
            None => ctx.refusal.as_ref().map_or(0, |r| r.status),
        };
        let seconds = ctx.started.map(|t| t.elapsed().as_secs_f64());
        self.metrics
            .observe(&entry.series, &entry.name, code, seconds);
    }
}

/// Whether the request's body is chunked (one `Transfer-Encoding: chunked`).
fn is_chunked(req: &RequestHeader) -> bool {
    let mut te = req.headers.get_all("transfer-encoding").iter();
    matches!((te.next(), te.next()), (Some(v), None) if v.as_bytes().trim_ascii().eq_ignore_ascii_case(b"chunked"))
}

/// Whether a request carries a body (`Content-Length` above zero, or chunked).
fn has_body(req: &RequestHeader) -> bool {
    req.headers.contains_key("transfer-encoding")
        || req
            .headers
            .get("content-length")
            .is_some_and(|v| v.as_bytes() != b"0")
}
