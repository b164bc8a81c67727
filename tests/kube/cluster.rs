//! A real kube-apiserver (v1.20.2 with etcd, RBAC on) for the tests: `tests/kube/cluster.py`
//! starts it (building it once with `tests/kube/build-apiserver.sh`, cached outside the
//! checkout) and plays the kubelet and the endpoints controller. The gateway talks to it as the
//! chart's ServiceAccount, bound only to the chart's Role; the test reads and writes as admin.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::harness::{self, repo, tool};

/// The gateway's user in the API server (the chart's ServiceAccount).
pub const GATEWAY_USER: &str = "system:serviceaccount:faas:faas-gateway-sa";

/// The running API server and its stand-in kubelet.
pub struct Cluster {
    child: Child,
    port: u16,
    /// Its working directory (logs, kubeconfigs, audit log).
    pub workdir: tempfile::TempDir,
    http: reqwest::Client,
}

impl Cluster {
    /// Starts a new API server; the first call on a machine builds it (minutes).
    pub fn start() -> Cluster {
        let workdir = tempfile::tempdir().unwrap();
        let mut child = Command::new(tool("python3"))
            .arg(repo().join("tests/kube/cluster.py"))
            .arg("--workdir")
            .arg(workdir.path())
            .args(["--uv", &harness::uv()])
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(workdir.path().join("cluster.log")).unwrap())
            .spawn()
            .expect("starting tests/kube/cluster.py");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let log = std::fs::read_to_string(workdir.path().join("cluster.log")).unwrap_or_default();
        let port = line
            .strip_prefix("READY ")
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("cluster.py said {line:?}:\n{log}"));
        Cluster {
            child,
            port,
            workdir,
            http: reqwest::Client::builder()
                .danger_accept_invalid_certs(true)
                .timeout(Duration::from_secs(20))
                .build()
                .unwrap(),
        }
    }

    /// The kubeconfig of the gateway's user.
    pub fn gateway_kubeconfig(&self) -> PathBuf {
        self.workdir.path().join("gateway.kubeconfig")
    }

    /// A request as admin; JSON bodies.
    pub async fn send(
        &self,
        method: &str,
        path: &str,
        body: Option<(&str, Value)>,
    ) -> (u16, Value) {
        let url = format!("https://127.0.0.1:{}{path}", self.port);
        let mut req = self
            .http
            .request(method.parse().unwrap(), url)
            .bearer_auth("admin-token");
        if let Some((content_type, body)) = body {
            req = req
                .header("content-type", content_type)
                .body(body.to_string());
        }
        let r = req.send().await.unwrap();
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }

    /// GET as admin.
    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.send("GET", path, None).await
    }

    /// Creates or replaces an object as admin (server-side apply as `test`).
    pub async fn apply(&self, path: &str, obj: Value) -> Value {
        let path = format!("{path}?fieldManager=test&force=true");
        let (s, v) = self
            .send("PATCH", &path, Some(("application/apply-patch+yaml", obj)))
            .await;
        assert!(s < 300, "applying {path}: {s} {v}");
        v
    }

    /// A Deployment's desired replicas (-1 when it does not exist).
    pub async fn replicas(&self, deployment: &str) -> i64 {
        let (_, d) = self
            .get(&format!(
                "/apis/apps/v1/namespaces/faas/deployments/{deployment}"
            ))
            .await;
        d["spec"]["replicas"].as_i64().unwrap_or(-1)
    }

    /// The audit log's events.
    pub fn audit(&self) -> Vec<Value> {
        std::fs::read_to_string(self.workdir.path().join("audit.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// What cluster.py and the API server logged.
    pub fn log(&self) -> String {
        let read =
            |f: &str| std::fs::read_to_string(self.workdir.path().join(f)).unwrap_or_default();
        let server = read("apiserver.log");
        let tail: Vec<&str> = server.lines().rev().take(30).collect();
        format!(
            "{}\n--- apiserver.log (last lines) ---\n{}",
            read("cluster.log"),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        )
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let _ = self.child.wait();
    }
}

/// (API group, resource[/subresource], verb).
pub type Permission = (String, String, String);

/// Every permission the gateway's requests needed, from the audit log, and the requests it was
/// refused (403).
pub fn permissions_used(events: &[Value]) -> (BTreeSet<Permission>, Vec<String>) {
    let mut used = BTreeSet::new();
    let mut refused = Vec::new();
    for e in events
        .iter()
        .filter(|e| e["user"]["username"] == GATEWAY_USER)
    {
        let Some(resource) = e["objectRef"]["resource"].as_str() else {
            continue; // discovery and other non-resource paths
        };
        let group = e["objectRef"]["apiGroup"]
            .as_str()
            .unwrap_or("")
            .to_string();
        let resource = match e["objectRef"]["subresource"].as_str() {
            Some(sub) => format!("{resource}/{sub}"),
            None => resource.to_string(),
        };
        let verb = e["verb"].as_str().unwrap_or("").to_string();
        if e["responseStatus"]["code"] == 403 {
            refused.push(format!("{verb} {group}/{resource}: {}", e["requestURI"]));
        }
        // Server-side apply (the only patches of these) creates what does not exist yet.
        if verb == "patch"
            && ["configmaps", "secrets", "services", "deployments"].contains(&resource.as_str())
        {
            used.insert((group.clone(), resource.clone(), "create".to_string()));
        }
        used.insert((group, resource, verb));
    }
    (used, refused)
}

/// What the chart's Role grants, expanded to single permissions.
pub fn permissions_granted() -> BTreeSet<Permission> {
    let docs = harness::render_chart(&[]);
    let role = docs
        .iter()
        .find(|d| d["kind"] == "Role")
        .expect("a Role in the chart");
    let mut out = BTreeSet::new();
    for rule in role["rules"].as_sequence().unwrap() {
        let list = |k: &str| -> Vec<String> {
            rule[k]
                .as_sequence()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap().to_string())
                .collect()
        };
        for g in list("apiGroups") {
            for r in list("resources") {
                for v in list("verbs") {
                    out.insert((g.clone(), r.clone(), v));
                }
            }
        }
    }
    out
}
