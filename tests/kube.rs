//! The Kubernetes runtime against a Kubernetes API emulator (PyPI `kmock`, extended in
//! `tests/kube/emulator.py`), which also plays the endpoints controller: for a Deployment scaled
//! above zero it runs the function's script as a local process and publishes an EndpointSlice.

mod harness;
mod pss;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use harness::{repo, script, tool, Faas};
use serde_json::Value;

/// The user agent of the test's own requests to the emulator.
const HARNESS_AGENT: &str = "poorman-e2e-harness";

struct Emulator {
    child: Child,
    port: u16,
    workdir: tempfile::TempDir,
    kubeconfig: PathBuf,
}

impl Emulator {
    fn start() -> Emulator {
        let workdir = tempfile::tempdir().unwrap();
        let port = harness::free_port();
        let mut child = Command::new(tool("python3"))
            .arg(repo().join("tests/kube/emulator.py"))
            .args(["--port", &port.to_string(), "--uv", &harness::uv()])
            .arg("--workdir")
            .arg(workdir.path())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(workdir.path().join("emulator.log")).unwrap())
            .spawn()
            .expect("starting tests/kube/emulator.py (./dev setup installs kmock)");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(line.starts_with("READY"), "emulator said {line:?}");
        let kubeconfig = workdir.path().join("kubeconfig");
        std::fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: emu\n  cluster:\n    server: http://127.0.0.1:{port}\n\
                 users:\n- name: emu\n  user: {{}}\ncontexts:\n- name: emu\n  context:\n    cluster: emu\n    user: emu\n    namespace: faas\n\
                 current-context: emu\n"
            ),
        )
        .unwrap();
        Emulator {
            child,
            port,
            workdir,
            kubeconfig,
        }
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        let client = reqwest::Client::builder()
            .user_agent(HARNESS_AGENT)
            .build()
            .unwrap();
        let url = format!("http://127.0.0.1:{}{path}", self.port);
        let r = client.get(url).send().await.unwrap();
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }

    async fn replicas(&self, deployment: &str) -> i64 {
        let (_, d) = self
            .get(&format!(
                "/apis/apps/v1/namespaces/faas/deployments/{deployment}"
            ))
            .await;
        d["spec"]["replicas"].as_i64().unwrap_or(-1)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.workdir.path().join("emulator.log")).unwrap_or_default()
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let _ = self.child.wait();
    }
}

async fn faas_on(emu: &Emulator) -> Faas {
    let kubeconfig = emu.kubeconfig.to_string_lossy().into_owned();
    Faas::start_with(&[
        ("FAAS_RUNTIME", "kubernetes"),
        ("KUBECONFIG", &kubeconfig),
        ("K8S_NAMESPACE", "faas"),
        ("REAPER_POLL_EVERY", "250ms"),
        ("REAPER_TIME_TO_LIVE", "3s"),
        ("FAAS_DEPLOY_TIMEOUT", "90s"),
        ("FAAS_ACTIVATION_TIMEOUT", "90s"),
    ])
    .await
}

async fn wait_until<F: std::future::Future<Output = bool>>(
    timeout: Duration,
    mut f: impl FnMut() -> F,
) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

fn validate(objects: &[&Value]) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("objects.yaml");
    let docs: Vec<String> = objects
        .iter()
        .map(|o| {
            let mut o = (*o).clone();
            // Server-populated fields are not part of what we send.
            if let Some(m) = o["metadata"].as_object_mut() {
                for k in [
                    "resourceVersion",
                    "uid",
                    "creationTimestamp",
                    "generation",
                    "managedFields",
                ] {
                    m.remove(k);
                }
            }
            if let Some(obj) = o.as_object_mut() {
                obj.remove("status");
            }
            serde_json::to_string(&o).unwrap()
        })
        .collect();
    std::fs::write(&path, docs.join("\n---\n")).unwrap();
    let out = Command::new(tool("kubernetes-validate"))
        .args(["--strict", "-k", "1.33.0"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kubernetes-validate:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn deploy_route_scale_to_zero_activate_and_rediscover_on_kubernetes() {
    let emu = Emulator::start();
    let mut faas = faas_on(&emu).await;
    let tool_py = script("tests/functions/tool.py");

    // Deploy: the four objects, applied server-side, answered once an endpoint is ready.
    let (s, r) = faas
        .deploy("kfn", &tool_py, "VERSION=\"on kubernetes\"\n", 1)
        .await;
    assert_eq!(s, 200, "{r}\n{}\n{}", faas.log_text(), emu.log());

    let (s, cm) = emu
        .get("/api/v1/namespaces/faas/configmaps/configmap-kfn")
        .await;
    assert_eq!(s, 200);
    assert_eq!(cm["data"]["main.py"], tool_py);
    let (s, secret) = emu.get("/api/v1/namespaces/faas/secrets/secret-kfn").await;
    assert_eq!(s, 200);
    let version = base64::engine::general_purpose::STANDARD
        .decode(secret["data"]["VERSION"].as_str().unwrap())
        .unwrap();
    assert_eq!(version, b"on kubernetes");
    let (s, svc) = emu.get("/api/v1/namespaces/faas/services/kfn").await;
    assert_eq!(s, 200);
    assert_eq!(svc["spec"]["type"], "ClusterIP");
    assert_eq!(svc["spec"]["ports"][0]["port"], 80);
    assert_eq!(svc["spec"]["ports"][0]["targetPort"], 8000);
    assert_eq!(svc["spec"]["selector"]["app"], "app-kfn");
    let (s, dep) = emu
        .get("/apis/apps/v1/namespaces/faas/deployments/deployment-kfn")
        .await;
    assert_eq!(s, 200);
    for obj in [&cm, &secret, &svc, &dep] {
        assert_eq!(obj["metadata"]["labels"]["poorman-faas.io/managed"], "true");
        assert_eq!(
            obj["metadata"]["labels"]["poorman-faas.io/service-id"],
            "kfn"
        );
    }
    assert_eq!(dep["spec"]["replicas"], 1);
    let pod = &dep["spec"]["template"];
    assert_eq!(pod["metadata"]["labels"]["app"], "app-kfn");
    let c = &pod["spec"]["containers"][0];
    assert_eq!(
        c["command"],
        serde_json::json!(["uv", "run", "--script", "/scripts/main.py"])
    );
    assert!(c["image"].as_str().unwrap().contains("uv"));
    assert!(c["env"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["name"] == "PORT" && e["value"] == "8000"));
    assert_eq!(c["envFrom"][0]["secretRef"]["name"], "secret-kfn");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/health");
    assert_eq!(c["readinessProbe"]["httpGet"]["port"], 8000);
    assert_eq!(
        pod["spec"]["volumes"][0]["configMap"]["name"],
        "configmap-kfn"
    );
    validate(&[&cm, &secret, &svc, &dep]);

    // Its pods would be admitted in a namespace enforcing the restricted Pod Security Standard,
    // hold no API credentials, and write only to their volumes.
    let refused = pss::violations(pod, pss::Profile::Restricted);
    assert!(refused.is_empty(), "restricted would refuse: {refused:#?}");
    assert_eq!(pod["spec"]["automountServiceAccountToken"], false);
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    let writable: Vec<&str> = c["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["readOnly"] != true)
        .map(|m| m["mountPath"].as_str().unwrap())
        .collect();
    for var in ["HOME", "TMPDIR", "UV_CACHE_DIR"] {
        let dir = c["env"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == var)
            .and_then(|e| e["value"].as_str())
            .unwrap_or_else(|| panic!("{var} is not set"));
        assert!(
            writable
                .iter()
                .any(|m| dir == *m || dir.starts_with(&format!("{m}/"))),
            "{var}={dir} is not on a volume: {writable:?}"
        );
    }

    // Routed straight to the endpoint the harness published.
    assert_eq!(
        faas.call("/gateway/kfn/version").await,
        (200, "on kubernetes".into())
    );

    // The API server drops every watch (as on its restart): the route table stays, and the
    // reflectors re-watch, as the scale-down below shows.
    let watches = || {
        let audit =
            std::fs::read_to_string(emu.workdir.path().join("requests.log")).unwrap_or_default();
        audit
            .lines()
            .filter(|l| l.contains("watch=true") && !l.ends_with(HARNESS_AGENT))
            .count()
    };
    let before = watches();
    let pid = nix::unistd::Pid::from_raw(emu.child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGUSR1).unwrap();
    assert_eq!(
        faas.call("/gateway/kfn/version").await,
        (200, "on kubernetes".into())
    );
    assert!(
        wait_until(Duration::from_secs(20), || async {
            watches() >= before + 2
        })
        .await,
        "the gateway did not watch again after its watches were cut"
    );

    // Idle: the reaper scales the Deployment to 0 through /scale.
    assert!(
        wait_until(Duration::from_secs(20), || async {
            emu.replicas("deployment-kfn").await == 0
        })
        .await,
        "not scaled to zero:\n{}",
        faas.log_text()
    );
    assert!(
        faas.wait_status("kfn", "ready_replicas", Duration::from_secs(20), |v| v == 0)
            .await
    );

    // A held request triggers a scale to 1 and completes once the endpoint is published.
    assert_eq!(
        faas.call("/gateway/kfn/version").await,
        (200, "on kubernetes".into())
    );
    assert_eq!(emu.replicas("deployment-kfn").await, 1);
    assert_eq!(
        faas.metric("faas_cold_starts_total{function=\"kfn\",outcome=\"ready\"}")
            .await,
        1.0
    );

    // A restarted gateway rediscovers the function from its labels.
    faas.restart().await;
    let (s, st) = faas.admin("GET", "/admin/functions/kfn", None).await;
    assert_eq!(s, 200, "{st}");
    assert_eq!(
        faas.call("/gateway/kfn/version").await,
        (200, "on kubernetes".into())
    );

    // Update: the Deployment rolls to the new version; every request meanwhile is answered.
    let body = serde_json::json!({"dot_file": harness::b64_wrapped("VERSION=\"rolled\"\n")});
    let (s, r) = faas.admin("PUT", "/admin/functions/kfn", Some(body)).await;
    assert_eq!(s, 200, "{r}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, text) = faas.call("/gateway/kfn/version").await;
        assert_eq!(status, 200, "during the rollout: {text}");
        if text == "rolled" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never rolled to the new version:\n{}",
            emu.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Logs come from the pods of the function.
    let logs = faas.get("/admin/functions/kfn/logs?tail=20").await;
    assert_eq!(logs.status(), 200);
    let logs = logs.text().await.unwrap();
    assert!(logs.contains("listening on"), "{logs}");

    // Delete removes all four objects.
    assert_eq!(
        faas.admin("DELETE", "/admin/functions/kfn", None).await.0,
        204
    );
    for path in [
        "/api/v1/namespaces/faas/configmaps/configmap-kfn",
        "/api/v1/namespaces/faas/secrets/secret-kfn",
        "/api/v1/namespaces/faas/services/kfn",
        "/apis/apps/v1/namespaces/faas/deployments/deployment-kfn",
    ] {
        assert_eq!(emu.get(path).await.0, 404, "{path} still exists");
    }
    assert_eq!(faas.call("/gateway/kfn/version").await.0, 404);

    // Every call the gateway made is allowed by the chart's Role, and the Role allows nothing else.
    let audit = std::fs::read_to_string(emu.workdir.path().join("requests.log")).unwrap();
    let used = permissions_used(&audit);
    let granted = permissions_granted();
    let missing: Vec<_> = used.difference(&granted).collect();
    assert!(
        missing.is_empty(),
        "the Role lacks {missing:?}; the calls:\n{audit}"
    );
    let unused: Vec<_> = granted.difference(&used).collect();
    assert!(
        unused.is_empty(),
        "the Role grants more than the code uses: {unused:?}"
    );
}

type Permission = (String, String, String);

/// (API group, resource[/subresource], verb) of every resource request the gateway made, from
/// the emulator's log (the test's own reads carry the user agent [`HARNESS_AGENT`]).
fn permissions_used(audit: &str) -> std::collections::BTreeSet<Permission> {
    let mut out = std::collections::BTreeSet::new();
    for line in audit.lines() {
        let mut parts = line.split_whitespace();
        let (Some(method), Some(target), content_type, agent) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if agent == Some(HARNESS_AGENT) {
            continue;
        }
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
        let (group, rest) = match segs.as_slice() {
            ["api", "v1", "namespaces", _ns, rest @ ..] => ("", rest),
            ["apis", group, _version, "namespaces", _ns, rest @ ..] => (*group, rest),
            _ => continue, // discovery and other non-resource paths
        };
        let (resource, named) = match rest {
            [r] => (r.to_string(), false),
            [r, _name] => (r.to_string(), true),
            [r, _name, sub] => (format!("{r}/{sub}"), true),
            _ => continue,
        };
        let verbs: &[&str] = match (method, named) {
            ("GET", true) => &["get"],
            ("GET", false) if query.contains("watch=true") || query.contains("watch=1") => {
                &["watch"]
            }
            ("GET", false) => &["list"],
            ("POST", _) => &["create"],
            ("PUT", _) => &["update"],
            // Server-side apply creates what does not exist yet: it needs both.
            ("PATCH", _) if content_type == Some("application/apply-patch+yaml") => {
                &["patch", "create"]
            }
            ("PATCH", _) => &["patch"],
            ("DELETE", true) => &["delete"],
            ("DELETE", false) => &["deletecollection"],
            _ => continue,
        };
        for v in verbs {
            out.insert((group.to_string(), resource.clone(), v.to_string()));
        }
    }
    out
}

/// What the chart's Role grants, expanded to single permissions.
fn permissions_granted() -> std::collections::BTreeSet<Permission> {
    let docs = harness::render_chart(&[]);
    let role = docs
        .iter()
        .find(|d| d["kind"] == "Role")
        .expect("a Role in the chart");
    let mut out = std::collections::BTreeSet::new();
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
