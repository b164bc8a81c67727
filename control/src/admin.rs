//! The admin REST API, independent of the HTTP server that carries it: a request in, a
//! response out. Errors map to statuses in one place ([`Error::status`]).

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use serde::Deserialize;
use serde_json::{json, Value};

use crate::config::Config;
use crate::function::{check_bounds, DeployRequest};
use crate::registry::{FnEntry, Registry};
use crate::runtime::Runtime;
use crate::{now_ms, Error};

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
}

/// An admin response.
#[derive(Debug, Clone)]
pub struct AdminResponse {
    /// HTTP status.
    pub status: u16,
    /// Content type of `body`.
    pub content_type: &'static str,
    /// The body.
    pub body: Vec<u8>,
    /// The operation, for metrics (`deploy`, `list`, ...).
    pub operation: &'static str,
}

/// The admin API.
#[derive(Clone)]
pub struct Admin {
    cfg: Arc<Config>,
    registry: Registry,
    runtime: Arc<dyn Runtime>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ScaleBody {
    replicas: u32,
}

// === impl AdminResponse ===

impl AdminResponse {
    /// A JSON response.
    pub fn json(operation: &'static str, status: u16, body: &Value) -> Self {
        AdminResponse {
            status,
            content_type: "application/json",
            body: body.to_string().into_bytes(),
            operation,
        }
    }

    /// The JSON error `{"code", "message"}`.
    pub fn error(operation: &'static str, status: u16, message: &str) -> Self {
        Self::json(
            operation,
            status,
            &json!({"code": status, "message": message}),
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
        }
    }

    /// Checks the bearer token when one is configured; `Some` is the 401 to send.
    pub fn authorize(&self, authorization: Option<&str>) -> Option<AdminResponse> {
        let token = self.cfg.admin_token.as_deref()?;
        let given = authorization
            .and_then(|h| h.strip_prefix("Bearer "))
            .map(str::trim);
        match given {
            Some(g) if constant_time_eq(g.as_bytes(), token.as_bytes()) => None,
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
            (
                _,
                ["python"] | ["functions"] | ["functions", _] | ["functions", _, "scale" | "logs"],
            ) => AdminResponse::error(
                "unknown",
                405,
                &format!("{} is not allowed on {}", req.method, req.path),
            ),
            _ => AdminResponse::error("unknown", 404, &format!("no admin route {}", req.path)),
        }
    }

    async fn deploy(&self, req: AdminRequest<'_>) -> AdminResponse {
        let op = "deploy";
        let reply = |status: u16, url: String, message: String, name: &str| {
            AdminResponse::json(
                op,
                status,
                &json!({"url": url, "code": status, "message": message, "name": name}),
            )
        };
        let def = match DeployRequest::from_json(req.body).and_then(|r| r.into_new(now_ms())) {
            Ok(d) => d,
            Err(e) => return reply(e.status(), String::new(), e.to_string(), ""),
        };
        let name = def.spec.name.clone();
        log::info!("deploying {name} ({} replica(s))", def.spec.replicas);
        match self.runtime.create(def).await {
            Ok(()) => reply(200, self.url(&name, req.host), "success".into(), &name),
            Err(e) => {
                if let Error::Internal { .. } = e {
                    log::error!("deploy {name}: {e}");
                }
                reply(e.status(), String::new(), e.to_string(), &name)
            }
        }
    }

    fn list(&self, req: AdminRequest<'_>) -> AdminResponse {
        let table = self.registry.snapshot();
        let mut items: Vec<Value> = table
            .values()
            .map(|e| self.status_json(e, req.host))
            .collect();
        items.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
        AdminResponse::json("list", 200, &json!({ "functions": items }))
    }

    async fn update(&self, name: &str, req: AdminRequest<'_>) -> AdminResponse {
        let op = "update";
        let result = async {
            let request = DeployRequest::from_json(req.body)?;
            self.runtime.update(name, request).await
        }
        .await;
        match result {
            Ok(()) => self.with_entry(op, name, |e| self.status_json(e, req.host)),
            Err(e) => AdminResponse::from_error(op, &e),
        }
    }

    async fn delete(&self, name: &str) -> AdminResponse {
        match self.runtime.delete(name).await {
            Ok(()) => AdminResponse {
                status: 204,
                content_type: "application/json",
                body: Vec::new(),
                operation: "delete",
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
            let want: ScaleBody = serde_json::from_slice(body).map_err(|e| {
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
            self.runtime.scale(name, want.replicas).await
        }
        .await;
        match result {
            Ok(()) => self.with_entry(op, name, |e| self.status_json(e, None)),
            Err(e) => AdminResponse::from_error(op, &e),
        }
    }

    async fn logs(&self, name: &str, query: Option<&str>) -> AdminResponse {
        let op = "logs";
        let tail = match query_param(query, "tail") {
            None => 100,
            Some(v) => match v.parse::<usize>() {
                Ok(n) => n,
                Err(_) => {
                    return AdminResponse::error(op, 400, "tail must be a whole number of lines")
                }
            },
        };
        match self.runtime.logs(name, tail).await {
            Ok(lines) => {
                let mut body = lines.join("\n");
                if !body.is_empty() {
                    body.push('\n');
                }
                AdminResponse {
                    status: 200,
                    content_type: "text/plain; charset=utf-8",
                    body: body.into_bytes(),
                    operation: op,
                }
            }
            Err(e) => AdminResponse::from_error(op, &e),
        }
    }

    fn with_entry(
        &self,
        op: &'static str,
        name: &str,
        f: impl FnOnce(&FnEntry) -> Value,
    ) -> AdminResponse {
        match self.registry.get(name) {
            Some(e) => AdminResponse::json(op, 200, &f(&e)),
            None => AdminResponse::from_error(op, &Error::NotFound(name.to_string())),
        }
    }

    fn url(&self, name: &str, host: Option<&str>) -> String {
        let host = host
            .map(str::to_string)
            .unwrap_or_else(|| format!("127.0.0.1:{}", self.cfg.load_balancer_port));
        format!("http://{host}{}/{name}", self.cfg.path_prefix)
    }

    /// The status of one function as JSON.
    pub fn status_json(&self, e: &FnEntry, host: Option<&str>) -> Value {
        let spec = e.spec();
        let last = e.last_activity_ms();
        json!({
            "name": e.name,
            "url": self.url(&e.name, host),
            "user": spec.user,
            "replicas": spec.replicas,
            "ready_replicas": e.ready(),
            "inflight": e.inflight.load(std::sync::atomic::Ordering::Relaxed),
            "pending": e.pending.load(std::sync::atomic::Ordering::Relaxed),
            "min_replicas": spec.min_replicas,
            "max_replicas": spec.max_replicas,
            "target_concurrency": spec.target_concurrency,
            "max_concurrency": spec.max_concurrency,
            "idle_timeout_seconds": spec.idle_timeout().unwrap_or(self.cfg.reaper_time_to_live).as_secs_f64(),
            "last_activity": rfc3339(last),
            "last_activity_ms": last,
            "requires_python": spec.metadata.requires_python,
            "dependencies": spec.metadata.dependencies,
            "version": spec.version,
            "created_at": rfc3339(spec.created_at_ms),
            "updated_at": rfc3339(spec.updated_at_ms),
        })
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

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
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
    fn token_compare() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
