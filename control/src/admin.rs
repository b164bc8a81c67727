//! The admin REST API, independent of the HTTP server that carries it: a request in, a
//! response out. Errors map to statuses in one place ([`Error::status`]).

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use tokio::sync::mpsc;
use utoipa::ToSchema;

use crate::config::Config;
use crate::controller::Offload;
use crate::function::{check_bounds, DeployRequest};
use crate::registry::{FnEntry, Registry};
use crate::replies::{DeployEvent, DeployReply, ErrorBody, FunctionList, FunctionStatus};
use crate::runtime::Runtime;
use crate::scaling::activity::{self, Activity};
use crate::{now_ms, Error};

/// The media type of streamed answers (deploy progress): one JSON document per line.
pub const NDJSON: &str = "application/x-ndjson";

/// An admin request as the HTTP layer hands it over.
#[derive(Debug, Clone, Copy)]
pub struct AdminRequest<'a> {
    /// HTTP method.
    pub method: &'a str,
    /// Path, starting with `/admin`.
    pub path: &'a str,
    /// Query string without `?`.
    pub query: Option<&'a str>,
    /// The `Host` header, used to build the URLs we return.
    pub host: Option<&'a str>,
    /// The body.
    pub body: &'a [u8],
    /// The `Accept` header: `application/x-ndjson` asks a deploy to stream its progress.
    pub accept: Option<&'a str>,
}

/// An admin response.
#[derive(Debug)]
pub struct AdminResponse {
    /// HTTP status.
    pub status: u16,
    /// Content type of `body`.
    pub content_type: &'static str,
    /// The body; with `stream`, what comes before the streamed part.
    pub body: Vec<u8>,
    /// Extra headers (`Allow` of a 405).
    pub headers: Vec<(&'static str, String)>,
    /// The rest of the body, chunk by chunk as it is produced (deploy progress, followed logs);
    /// it ends when the sender is dropped. The HTTP layer writes it chunked and drops the
    /// receiver when the client leaves, which tells the producer to stop.
    pub stream: Option<mpsc::Receiver<Vec<u8>>>,
    /// The operation, for metrics (`deploy`, `list`, ...).
    pub operation: &'static str,
}

/// The admin API.
#[derive(Clone)]
pub struct Admin {
    cfg: Arc<Config>,
    registry: Registry,
    runtime: Arc<dyn Runtime>,
    /// This gateway replica's activity, served to the leader on [`activity::PATH`].
    activity: Option<Activity>,
    /// Where runtime calls run: the controller's runtime, off the gateway's pinned threads.
    offload: Offload,
}

/// The body of `POST /admin/functions/{name}/scale`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScaleBody {
    /// Replicas wanted, within the function's `[min_replicas, max_replicas]`.
    pub replicas: u32,
}

/// The most lines `logs?tail=` asks for (a function keeps fewer).
pub const MAX_TAIL: usize = 100_000;

/// Chunks a streamed answer may be ahead of a slow client.
const STREAM_BACKLOG: usize = 64;

// === impl AdminResponse ===

impl AdminResponse {
    /// A JSON response.
    pub fn json(operation: &'static str, status: u16, body: &impl Serialize) -> Self {
        AdminResponse {
            status,
            content_type: "application/json",
            body: serde_json::to_vec(body).unwrap_or_default(),
            headers: Vec::new(),
            stream: None,
            operation,
        }
    }

    fn streamed(
        operation: &'static str,
        content_type: &'static str,
        body: Vec<u8>,
        stream: mpsc::Receiver<Vec<u8>>,
    ) -> Self {
        AdminResponse {
            status: 200,
            content_type,
            body,
            headers: Vec::new(),
            stream: Some(stream),
            operation,
        }
    }

    /// The JSON error `{"code", "message"}`.
    pub fn error(operation: &'static str, status: u16, message: &str) -> Self {
        Self::json(
            operation,
            status,
            &ErrorBody {
                code: status,
                message: message.to_string(),
            },
        )
    }

    fn from_error(operation: &'static str, e: &Error) -> Self {
        if let Error::Internal { .. } = e {
            log::error!("admin {operation}: {e}");
        }
        Self::error(operation, e.status(), &e.to_string())
    }
}

// === impl Admin ===

impl Admin {
    /// The admin API over a registry and a runtime.
    pub fn new(cfg: Arc<Config>, registry: Registry, runtime: Arc<dyn Runtime>) -> Self {
        Admin {
            cfg,
            registry,
            runtime,
            activity: None,
            offload: Offload::default(),
        }
    }

    /// Runs runtime calls on the controller's runtime (see [`Offload`]).
    pub fn with_offload(mut self, offload: Offload) -> Self {
        self.offload = offload;
        self
    }

    /// Serves this replica's activity on [`activity::PATH`] (the controller's).
    pub fn with_activity(mut self, activity: Activity) -> Self {
        self.activity = Some(activity);
        self
    }

    /// Checks the bearer token when one is configured; `Some` is the 401 to send.
    pub fn authorize(&self, authorization: Option<&str>) -> Option<AdminResponse> {
        let token = self.cfg.admin_token.as_deref()?;
        let given = authorization
            .and_then(|h| h.strip_prefix("Bearer "))
            .map(str::trim);
        match given {
            Some(g) if bool::from(g.as_bytes().ct_eq(token.as_bytes())) => None,
            Some(_) => Some(AdminResponse::error("auth", 401, "the admin token is wrong")),
            None => Some(AdminResponse::error(
                "auth",
                401,
                "this gateway needs an admin token: send `Authorization: Bearer <FAAS_ADMIN_TOKEN>`",
            )),
        }
    }

    /// Serves one admin request.
    pub async fn handle(&self, req: AdminRequest<'_>) -> AdminResponse {
        // The leader asks for it, also while this replica restores.
        if let (Some(a), "GET", activity::PATH) = (&self.activity, req.method, req.path) {
            return AdminResponse::json("activity", 200, &a.report());
        }
        // Just restarted: answer about functions once they are back.
        self.registry.wait_restored(self.cfg.deploy_timeout).await;
        let rest = req.path.strip_prefix("/admin").unwrap_or(req.path);
        let segments: Vec<&str> = rest.trim_matches('/').split('/').collect();
        match (req.method, segments.as_slice()) {
            ("POST", ["python"]) => self.deploy(req).await,
            ("GET", ["functions"]) => self.list(req),
            ("GET", ["functions", name]) => {
                self.with_entry("get", name, |e| self.status_json(e, req.host))
            }
            ("PUT", ["functions", name]) => self.update(name, req).await,
            ("DELETE", ["functions", name]) => self.delete(name).await,
            ("POST", ["functions", name, "scale"]) => self.scale(name, req.body).await,
            ("GET", ["functions", name, "logs"]) => self.logs(name, req.query).await,
            ("GET", ["internal", "activity"]) => AdminResponse::error(
                "activity",
                404,
                "no activity here: this gateway is not one of replicated gateways with a leader",
            ),
            ("GET", ["openapi.json"]) => AdminResponse {
                body: crate::openapi::document().as_bytes().to_vec(),
                ..AdminResponse::json("openapi", 200, &())
            },
            (_, route) => {
                let allow = match route {
                    ["python"] | ["functions", _, "scale"] => "POST",
                    ["functions"]
                    | ["functions", _, "logs"]
                    | ["openapi.json"]
                    | ["internal", "activity"] => "GET",
                    ["functions", _] => "GET, PUT, DELETE",
                    _ => {
                        let msg = format!("no admin route {}", req.path);
                        return AdminResponse::error("unknown", 404, &msg);
                    }
                };
                let msg = format!("{} is not allowed on {}", req.method, req.path);
                let mut resp = AdminResponse::error("unknown", 405, &msg);
                resp.headers.push(("Allow", allow.to_string()));
                resp
            }
        }
    }

    /// Runs a deploy or an update in a task of its own, streaming its progress as NDJSON; the
    /// last line is the outcome (`outcome` turns the runtime's result into it).
    fn stream_deploy(
        &self,
        operation: &'static str,
        first: String,
        work: impl std::future::Future<Output = DeployReply> + Send + 'static,
    ) -> AdminResponse {
        let (body_tx, body_rx) = mpsc::channel(STREAM_BACKLOG);
        let (progress_tx, mut progress_rx) = mpsc::unbounded_channel::<String>();
        let line = |event: &DeployEvent| {
            let mut l = serde_json::to_vec(event).unwrap_or_default();
            l.push(b'\n');
            l
        };
        let head = line(&DeployEvent::Progress { progress: first });
        let deploy = self
            .offload
            .spawn(crate::progress::scope(progress_tx, work));
        tokio::spawn(async move {
            // Ends when the deploy is over (its sender is dropped with its scope).
            while let Some(progress) = progress_rx.recv().await {
                // A client that left does not stop the deploy, which finishes on its own.
                let _ = body_tx
                    .send(line(&DeployEvent::Progress { progress }))
                    .await;
            }
            let reply = match deploy.await {
                Ok(reply) => reply,
                Err(e) => DeployReply {
                    url: String::new(),
                    code: 500,
                    message: format!("the deploy failed: {e}"),
                    name: String::new(),
                },
            };
            let _ = body_tx.send(line(&DeployEvent::Done(reply))).await;
        });
        AdminResponse::streamed(operation, NDJSON, head, body_rx)
    }

    async fn deploy(&self, req: AdminRequest<'_>) -> AdminResponse {
        let op = "deploy";
        let reply = |status: u16, url: String, message: String, name: &str| {
            AdminResponse::json(
                op,
                status,
                &DeployReply {
                    url,
                    code: status,
                    message,
                    name: name.to_string(),
                },
            )
        };
        let def = match DeployRequest::from_json(req.body).and_then(|r| r.into_new(now_ms())) {
            Ok(d) => d,
            Err(e) => return reply(e.status(), String::new(), e.to_string(), ""),
        };
        let name = def.spec.name.clone();
        log::info!("deploying {name} ({} replica(s))", def.spec.replicas);
        if !wants_stream(req.accept) {
            let r = deploy_reply(
                {
                    let runtime = self.runtime.clone();
                    self.offload
                        .run(async move { runtime.create(def).await })
                        .await
                },
                self.url(&name, req.host),
                &name,
            );
            return AdminResponse::json(op, r.code, &r);
        }
        // What can be known at once is answered at once, with its status.
        if self.registry.get(&name).is_some() {
            let e = Error::Conflict(name.clone());
            return reply(e.status(), String::new(), e.to_string(), &name);
        }
        let first = format!(
            "deploying {name}: resolving and installing its dependencies ({})",
            dependencies(&def.spec.metadata.dependencies)
        );
        let runtime = self.runtime.clone();
        let url = self.url(&name, req.host);
        self.stream_deploy(op, first, async move {
            deploy_reply(runtime.create(def).await, url, &name)
        })
    }

    fn list(&self, req: AdminRequest<'_>) -> AdminResponse {
        let table = self.registry.snapshot();
        let mut functions: Vec<FunctionStatus> = table
            .values()
            .map(|e| self.status_json(e, req.host))
            .collect();
        functions.sort_by(|a, b| a.name.cmp(&b.name));
        AdminResponse::json("list", 200, &FunctionList { functions })
    }

    async fn update(&self, name: &str, req: AdminRequest<'_>) -> AdminResponse {
        let op = "update";
        if wants_stream(req.accept) {
            let request = match DeployRequest::from_json(req.body) {
                Ok(r) => r,
                Err(e) => return AdminResponse::from_error(op, &e),
            };
            if self.registry.get(name).is_none() {
                return AdminResponse::from_error(op, &Error::NotFound(name.to_string()));
            }
            let runtime = self.runtime.clone();
            let url = self.url(name, req.host);
            let name = name.to_string();
            let first = format!("updating {name}: preparing the new version");
            return self.stream_deploy(op, first, async move {
                let result = runtime.update(&name, request).await;
                deploy_reply(result, url, &name)
            });
        }
        let result = async {
            let request = DeployRequest::from_json(req.body)?;
            let (runtime, name) = (self.runtime.clone(), name.to_string());
            self.offload
                .run(async move { runtime.update(&name, request).await })
                .await
        }
        .await;
        match result {
            Ok(()) => self.with_entry(op, name, |e| self.status_json(e, req.host)),
            Err(e) => AdminResponse::from_error(op, &e),
        }
    }

    async fn delete(&self, name: &str) -> AdminResponse {
        let (runtime, owned) = (self.runtime.clone(), name.to_string());
        let deleted = self
            .offload
            .run(async move { runtime.delete(&owned).await })
            .await;
        match deleted {
            Ok(()) => AdminResponse {
                status: 204,
                body: Vec::new(),
                ..AdminResponse::json("delete", 204, &())
            },
            Err(e) => AdminResponse::from_error("delete", &e),
        }
    }

    async fn scale(&self, name: &str, body: &[u8]) -> AdminResponse {
        let op = "scale";
        let result = async {
            let entry = self
                .registry
                .get(name)
                .ok_or_else(|| Error::NotFound(name.to_string()))?;
            let want: ScaleBody = json_object(body).map_err(|e| {
                Error::BadRequest(format!("the body must be {{\"replicas\": <number>}}: {e}"))
            })?;
            let mut spec = (*entry.spec()).clone();
            spec.replicas = want.replicas;
            check_bounds(&spec)?;
            if want.replicas < spec.min_replicas {
                return Err(Error::BadRequest(format!(
                    "replicas ({}) are below this function's min_replicas ({})",
                    want.replicas, spec.min_replicas
                )));
            }
            let (runtime, name) = (self.runtime.clone(), name.to_string());
            self.offload
                .run(async move { runtime.scale(&name, want.replicas).await })
                .await
        }
        .await;
        match result {
            Ok(()) => self.with_entry(op, name, |e| self.status_json(e, None)),
            Err(e) => AdminResponse::from_error(op, &e),
        }
    }

    async fn logs(&self, name: &str, query: Option<&str>) -> AdminResponse {
        let op = "logs";
        let text = "text/plain; charset=utf-8";
        let tail = match query_param(query, "tail") {
            None => 100,
            Some(v) => match v.parse::<usize>() {
                Ok(n) if n <= MAX_TAIL => n,
                _ => {
                    let msg = format!("tail must be a whole number of lines up to {MAX_TAIL}");
                    return AdminResponse::error(op, 400, &msg);
                }
            },
        };
        let follow = match query_param(query, "follow") {
            None | Some("false") => false,
            Some("true") => true,
            Some(_) => return AdminResponse::error(op, 400, "follow must be true or false"),
        };
        if !follow {
            return match self.runtime.logs(name, tail).await {
                Ok(lines) => AdminResponse {
                    content_type: text,
                    body: lines_text(lines),
                    ..AdminResponse::json(op, 200, &())
                },
                Err(e) => AdminResponse::from_error(op, &e),
            };
        }
        let follow = match self.runtime.follow_logs(name, tail).await {
            Ok(f) => f,
            Err(e) => return AdminResponse::from_error(op, &e),
        };
        let (tx, rx) = mpsc::channel(STREAM_BACKLOG);
        let mut lines = follow.lines;
        tokio::spawn(async move {
            use tokio::sync::broadcast::error::RecvError;
            loop {
                let line = match lines.recv().await {
                    Ok(line) => line,
                    Err(RecvError::Lagged(n)) => format!("[faas] ... {n} lines skipped"),
                    // The function is gone.
                    Err(RecvError::Closed) => break,
                };
                if tx.send(lines_text(vec![line])).await.is_err() {
                    break; // the client left
                }
            }
        });
        AdminResponse::streamed(op, text, lines_text(follow.recent), rx)
    }

    fn with_entry(
        &self,
        op: &'static str,
        name: &str,
        f: impl FnOnce(&FnEntry) -> FunctionStatus,
    ) -> AdminResponse {
        match self.registry.get(name) {
            Some(e) => AdminResponse::json(op, 200, &f(&e)),
            None => AdminResponse::from_error(op, &Error::NotFound(name.to_string())),
        }
    }

    fn url(&self, name: &str, host: Option<&str>) -> String {
        // On Kubernetes, the LoadBalancer address of GATEWAY_SERVICE_NAME, as the original.
        let host = match self.runtime.advertised_host() {
            Some(lb) => format!("{lb}:{}", self.cfg.load_balancer_port),
            None => host
                .map(str::to_string)
                .unwrap_or_else(|| format!("127.0.0.1:{}", self.cfg.load_balancer_port)),
        };
        format!("http://{host}{}/{name}", self.cfg.path_prefix)
    }

    /// The status of one function.
    pub fn status_json(&self, e: &FnEntry, host: Option<&str>) -> FunctionStatus {
        let spec = e.spec();
        let last = e.last_activity_ms();
        FunctionStatus {
            name: e.name.clone(),
            url: self.url(&e.name, host),
            user: spec.user.clone(),
            replicas: spec.replicas,
            ready_replicas: e.ready() as u64,
            inflight: e.inflight.load(std::sync::atomic::Ordering::Relaxed) as u64,
            pending: e.pending.load(std::sync::atomic::Ordering::Relaxed) as u64,
            min_replicas: spec.min_replicas,
            max_replicas: spec.max_replicas,
            target_concurrency: spec.target_concurrency,
            max_concurrency: spec.max_concurrency,
            idle_timeout_seconds: spec
                .idle_timeout()
                .unwrap_or(self.cfg.reaper_time_to_live)
                .as_secs_f64(),
            last_activity: rfc3339(last),
            last_activity_ms: last,
            requires_python: spec.metadata.requires_python.clone(),
            dependencies: spec.metadata.dependencies.clone(),
            version: spec.version,
            created_at: rfc3339(spec.created_at_ms),
            updated_at: rfc3339(spec.updated_at_ms),
            zygote: self.runtime.zygote_status(&e.name),
        }
    }
}

fn rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

fn query_param<'a>(query: Option<&'a str>, key: &str) -> Option<&'a str> {
    query?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == key).then_some(v)
    })
}

/// Parses a JSON object into `T` (serde alone would also read a struct from an array).
fn json_object<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, String> {
    let v: serde_json::Value = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    if !v.is_object() {
        return Err("it is not a JSON object".into());
    }
    serde_json::from_value(v).map_err(|e| e.to_string())
}

/// Whether the client asked for a streamed (NDJSON) answer.
fn wants_stream(accept: Option<&str>) -> bool {
    accept.is_some_and(|a| a.split(',').any(|t| t.trim().starts_with(NDJSON)))
}

/// The outcome of a deploy or update in the original's reply shape.
fn deploy_reply(result: crate::Result<()>, url: String, name: &str) -> DeployReply {
    match result {
        Ok(()) => DeployReply {
            url,
            code: 200,
            message: "success".into(),
            name: name.to_string(),
        },
        Err(e) => {
            if let Error::Internal { .. } = e {
                log::error!("deploy {name}: {e}");
            }
            DeployReply {
                url: String::new(),
                code: e.status(),
                message: e.to_string(),
                name: name.to_string(),
            }
        }
    }
}

fn dependencies(deps: &[String]) -> String {
    match deps.len() {
        0 => "no packages".into(),
        1..=3 => deps.join(", "),
        n => format!("{}, ... ({n} packages)", deps[..3].join(", ")),
    }
}

/// Lines as text, each ending with a line feed.
fn lines_text(lines: Vec<String>) -> Vec<u8> {
    let mut body = lines.join("\n");
    if !body.is_empty() {
        body.push('\n');
    }
    body.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_params() {
        assert_eq!(query_param(Some("a=1&tail=5"), "tail"), Some("5"));
        assert_eq!(query_param(None, "tail"), None);
    }

    #[test]
    fn ndjson_is_asked_for_by_accept() {
        assert!(wants_stream(Some("application/x-ndjson")));
        assert!(wants_stream(Some(
            "application/json, application/x-ndjson;q=0.9"
        )));
        assert!(!wants_stream(Some("application/json")));
        assert!(!wants_stream(None));
    }
}
