//! The Kubernetes runtime against a real kube-apiserver (v1.20.2 with etcd and RBAC, built from
//! Debian's packages: `tests/kube/cluster.py`, [`cluster`]) and, for what a real server cannot
//! be made to do on demand (cut every watch at once) and pod logs (there is no kubelet), against
//! a Kubernetes API emulator (PyPI `kmock`, extended in `tests/kube/emulator.py`). Both play the
//! kubelet and the endpoints controller: for a Deployment scaled above zero the function's
//! script runs as a local process, published as an EndpointSlice.

#[path = "kube/cluster.rs"]
mod cluster;
mod harness;
mod pss;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use cluster::Cluster;
use harness::{repo, script, tool, Faas};
use serde_json::{json, Value};

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
                    "selfLink",
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
async fn on_the_emulator_watches_cut_at_once_are_taken_up_again_and_pod_logs_are_read() {
    let emu = Emulator::start();
    let faas = faas_on(&emu).await;
    let tool_py = script("tests/functions/tool.py");

    // Deploy: the four objects, applied server-side, answered once an endpoint is ready.
    let (s, r) = faas
        .deploy("kfn", &tool_py, "VERSION=\"on kubernetes\"\n", 1)
        .await;
    assert_eq!(s, 200, "{r}\n{}\n{}", faas.log_text(), emu.log());

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
}

// === against a real API server ===

/// The admin token both gateways of a test share (the leader asks its peers with it).
const TOKEN: &str = "kube-test-token";

/// A gateway on the real API server, as the chart's ServiceAccount.
async fn gateway_on(k: &Cluster, pod: &str, extra: &[(&str, &str)]) -> Faas {
    let kubeconfig = k.gateway_kubeconfig().to_string_lossy().into_owned();
    let mut env = vec![
        ("FAAS_RUNTIME", "kubernetes"),
        ("KUBECONFIG", kubeconfig.as_str()),
        ("K8S_NAMESPACE", "faas"),
        ("POD_NAME", pod),
        ("FAAS_ADMIN_TOKEN", TOKEN),
        ("REAPER_POLL_EVERY", "250ms"),
        ("REAPER_TIME_TO_LIVE", "3s"),
        ("FAAS_DEPLOY_TIMEOUT", "90s"),
        ("FAAS_ACTIVATION_TIMEOUT", "90s"),
    ];
    env.extend_from_slice(extra);
    Faas::start_with(&env).await
}

/// The gateway's own Service, as the chart makes it: not labelled as a function's.
async fn gateway_service(k: &Cluster) -> Value {
    k.apply(
        "/api/v1/namespaces/faas/services/faas-gateway",
        json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "faas-gateway", "namespace": "faas",
                         "labels": {"app.kubernetes.io/name": "faas-gateway"}},
            "spec": {"type": "LoadBalancer",
                     "selector": {"app.kubernetes.io/name": "faas-gateway"},
                     "ports": [{"name": "http", "port": 8080, "targetPort": 8080, "protocol": "TCP"}]},
        }),
    )
    .await
}

/// Plays the endpoints controller for the gateway's Service: a ready gateway replica on `port`
/// (one slice per port, as the endpoints controller groups addresses).
async fn publish_gateway(k: &Cluster, replica: &str, port: u16) {
    k.apply(
        &format!("/apis/discovery.k8s.io/v1/namespaces/faas/endpointslices/faas-gateway-{replica}"),
        json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": format!("faas-gateway-{replica}"), "namespace": "faas",
                         "labels": {"kubernetes.io/service-name": "faas-gateway"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": true}}],
            "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
        }),
    )
    .await;
}

const OBJECTS: [&str; 4] = [
    "/api/v1/namespaces/faas/configmaps/configmap-",
    "/api/v1/namespaces/faas/secrets/secret-",
    "/api/v1/namespaces/faas/services/",
    "/apis/apps/v1/namespaces/faas/deployments/deployment-",
];

#[tokio::test]
async fn on_a_real_api_server_deploy_scale_rediscover_delete_and_touch_only_our_objects() {
    let k = Cluster::start();
    let svc_before = gateway_service(&k).await;
    // An object of the same namespace that is not ours.
    k.apply(
        "/api/v1/namespaces/faas/configmaps/configmap-theirs",
        json!({"apiVersion": "v1", "kind": "ConfigMap",
               "metadata": {"name": "configmap-theirs", "namespace": "faas"},
               "data": {"owner": "someone else"}}),
    )
    .await;
    let mut faas = gateway_on(&k, "gw-0", &[]).await;
    let tool_py = script("tests/functions/tool.py");

    // Deploy: four objects, ours by label, applied server-side by our field manager.
    let (s, r) = faas
        .deploy("kfn", &tool_py, "VERSION=\"on kubernetes\"\n", 1)
        .await;
    assert_eq!(s, 200, "{r}\n{}\n{}", faas.log_text(), k.log());
    for prefix in OBJECTS {
        let (s, obj) = k.get(&format!("{prefix}kfn")).await;
        assert_eq!(s, 200, "{prefix}kfn");
        let labels = &obj["metadata"]["labels"];
        assert_eq!(labels["poorman-faas.io/managed"], "true");
        assert_eq!(labels["poorman-faas.io/service-id"], "kfn");
        let managers = obj["metadata"]["managedFields"].as_array().unwrap();
        assert!(
            managers
                .iter()
                .any(|m| m["manager"] == "poorman-faas" && m["operation"] == "Apply"),
            "{prefix}kfn not applied by poorman-faas: {managers:?}"
        );
    }
    check_objects(&k, &tool_py).await;
    assert_eq!(
        faas.call("/gateway/kfn/version").await,
        (200, "on kubernetes".into())
    );

    // Idle: the reaper scales the Deployment to zero through /scale; a request brings it back.
    assert!(
        wait_until(Duration::from_secs(30), || async {
            k.replicas("deployment-kfn").await == 0
        })
        .await,
        "not scaled to zero:\n{}",
        faas.log_text()
    );
    assert!(
        faas.wait_status("kfn", "ready_replicas", Duration::from_secs(20), |v| v == 0)
            .await
    );
    let activated =
        tokio::time::timeout(Duration::from_secs(60), faas.call("/gateway/kfn/version")).await;
    assert_eq!(
        activated.ok(),
        Some((200, "on kubernetes".into())),
        "{}\n{}",
        faas.log_text(),
        k.log()
    );
    assert_eq!(k.replicas("deployment-kfn").await, 1);

    // A restarted gateway rediscovers it from its labels.
    faas.restart().await;
    let (s, st) = faas.admin("GET", "/admin/functions/kfn", None).await;
    assert_eq!(s, 200, "{st}");
    assert_eq!(
        faas.call("/gateway/kfn/version").await,
        (200, "on kubernetes".into())
    );
    // An update keeps the replica count the Deployment has (one writer: /scale).
    let body = json!({"dot_file": harness::b64_wrapped("VERSION=\"rolled\"\n")});
    let (s, r) = faas.admin("PUT", "/admin/functions/kfn", Some(body)).await;
    assert_eq!(s, 200, "{r}");
    assert!(
        wait_until(Duration::from_secs(60), || async {
            faas.call("/gateway/kfn/version").await == (200, "rolled".into())
        })
        .await,
        "never rolled:\n{}",
        k.log()
    );
    // Pod logs need a kubelet, which this server lacks; the call still exercises the Role.
    assert_eq!(
        faas.get("/admin/functions/kfn/logs?tail=5").await.status(),
        200
    );

    // The gateway's own Service is not a function's: refused, and left as it was.
    let (s, r) = faas.deploy("faas-gateway", &tool_py, "", 1).await;
    assert_eq!(s, 409, "{r}");
    assert!(r["message"].as_str().unwrap().contains("gateway"), "{r}");
    let (_, svc_after) = k.get("/api/v1/namespaces/faas/services/faas-gateway").await;
    assert_eq!(
        svc_after["metadata"]["resourceVersion"],
        svc_before["metadata"]["resourceVersion"]
    );
    // An object someone else made is not applied over, nor deleted.
    let (s, r) = faas.deploy("theirs", &tool_py, "", 1).await;
    assert_eq!(s, 409, "{r}");
    assert!(
        r["message"].as_str().unwrap().contains("configmap-theirs"),
        "{r}"
    );
    assert_eq!(
        faas.admin("DELETE", "/admin/functions/theirs", None)
            .await
            .0,
        404
    );
    let (s, theirs) = k
        .get("/api/v1/namespaces/faas/configmaps/configmap-theirs")
        .await;
    assert_eq!(s, 200);
    assert_eq!(theirs["data"]["owner"], "someone else");
    assert_eq!(
        k.get("/apis/apps/v1/namespaces/faas/deployments/deployment-theirs")
            .await
            .0,
        404
    );
    // A name Kubernetes would refuse is refused before any API call.
    let (s, r) = faas.deploy("1abc", &tool_py, "", 1).await;
    assert_eq!(s, 400, "{r}");
    assert_eq!(
        faas.admin("DELETE", "/admin/functions/nope", None).await.0,
        404
    );

    // The gateway's Service gets a LoadBalancer address: deploys return URLs with it.
    let (s, v) = k
        .send(
            "PATCH",
            "/api/v1/namespaces/faas/services/faas-gateway/status",
            Some((
                "application/merge-patch+json",
                json!({"status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.7"}]}}}),
            )),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        v["status"]["loadBalancer"]["ingress"][0]["ip"], "203.0.113.7",
        "{v}"
    );

    // `foo` and `service-foo` own different objects: both live, deleting one leaves the other.
    for name in ["foo", "service-foo"] {
        let dot = format!("VERSION=\"{name}\"\n");
        let (s, r) = faas.deploy(name, &tool_py, &dot, 1).await;
        assert_eq!(s, 200, "{name}: {r}\n{}", faas.log_text());
        assert_eq!(r["url"], format!("http://203.0.113.7:8080/gateway/{name}"));
    }
    assert_eq!(faas.call("/gateway/foo/version").await, (200, "foo".into()));
    assert_eq!(
        faas.call("/gateway/service-foo/version").await,
        (200, "service-foo".into())
    );
    assert_eq!(
        faas.admin("DELETE", "/admin/functions/service-foo", None)
            .await
            .0,
        204
    );
    for prefix in OBJECTS {
        assert_eq!(k.get(&format!("{prefix}foo")).await.0, 200, "{prefix}foo");
        assert_eq!(
            k.get(&format!("{prefix}service-foo")).await.0,
            404,
            "{prefix}service-foo"
        );
    }
    assert_eq!(faas.call("/gateway/foo/version").await, (200, "foo".into()));

    // Delete removes all four objects.
    assert_eq!(
        faas.admin("DELETE", "/admin/functions/kfn", None).await.0,
        204
    );
    for prefix in OBJECTS {
        assert_eq!(k.get(&format!("{prefix}kfn")).await.0, 404, "{prefix}kfn");
    }

    // The chart's Role is exactly what the gateway needed: nothing refused, nothing unused.
    let (used, refused) = cluster::permissions_used(&k.audit());
    assert!(refused.is_empty(), "refused by the Role: {refused:#?}");
    let granted = cluster::permissions_granted();
    let missing: Vec<_> = used.difference(&granted).collect();
    assert!(missing.is_empty(), "the Role lacks {missing:?}");
    let unused: Vec<_> = granted.difference(&used).collect();
    assert!(
        unused.is_empty(),
        "the Role grants more than the code uses: {unused:?}"
    );
}

#[tokio::test]
async fn two_gateways_one_leader_deciding_from_both() {
    let k = Cluster::start();
    gateway_service(&k).await;
    let env = [
        ("FAAS_LEADER_LEASE_DURATION", "4s"),
        ("REAPER_TIME_TO_LIVE", "4s"),
        ("FAAS_AUTOSCALE_WINDOW", "2s"),
        ("FAAS_SCALE_DOWN_DELAY", "120s"),
    ];
    let a = gateway_on(&k, "gw-a", &env).await;
    let b = gateway_on(&k, "gw-b", &env).await;
    publish_gateway(&k, "gw-a", a.port).await;
    publish_gateway(&k, "gw-b", b.port).await;
    assert!(
        wait_until(Duration::from_secs(15), || async {
            leads(&a, "gw-a").await != leads(&b, "gw-b").await
        })
        .await,
        "no single leader:\n{}\n{}",
        a.log_text(),
        b.log_text()
    );
    let a_leads = leads(&a, "gw-a").await;
    let (leader, follower, leader_slice, follower_name) = if a_leads {
        (a, b, "gw-a", "gw-b")
    } else {
        (b, a, "gw-b", "gw-a")
    };
    let tool_py = script("tests/functions/tool.py");
    let (s, r) = follower.deploy("f", &tool_py, "", 1).await;
    assert_eq!(s, 200, "{r}\n{}", follower.log_text());
    // The other replica adopts it from the Deployment watch.
    assert!(
        wait_until(Duration::from_secs(10), || async {
            leader.admin("GET", "/admin/functions/f", None).await.0 == 200
        })
        .await
    );
    let scale_downs = || async { leader.metric("faas_reaper_scale_downs_total").await };

    // Traffic only through the follower for 12 s (idle timeout 4 s): the leader sees it in the
    // follower's activity and never scales the function to zero.
    let until = Instant::now() + Duration::from_secs(12);
    while Instant::now() < until {
        assert_eq!(follower.call("/gateway/f/version").await.0, 200);
        assert_eq!(
            k.replicas("deployment-f").await,
            1,
            "scaled away while served"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(scale_downs().await, 0.0, "{}", leader.log_text());

    // Idle on both: to zero, exactly once.
    assert!(
        wait_until(Duration::from_secs(15), || async {
            k.replicas("deployment-f").await == 0
        })
        .await,
        "not scaled to zero:\n{}",
        leader.log_text()
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(scale_downs().await, 1.0);

    // Both gateways activate it at once: one scale-up (one change of the Deployment's spec).
    let (_, dep) = k
        .get("/apis/apps/v1/namespaces/faas/deployments/deployment-f")
        .await;
    let generation = dep["metadata"]["generation"].as_i64().unwrap();
    let (x, y) = tokio::join!(
        leader.call("/gateway/f/version"),
        follower.call("/gateway/f/version")
    );
    assert_eq!((x.0, y.0), (200, 200), "{x:?} {y:?}");
    let (_, dep) = k
        .get("/apis/apps/v1/namespaces/faas/deployments/deployment-f")
        .await;
    assert_eq!(dep["spec"]["replicas"], 1);
    assert_eq!(
        dep["metadata"]["generation"].as_i64().unwrap(),
        generation + 1,
        "more than one scale-up"
    );

    // The autoscaler counts both replicas' in-flight: 2 slow requests through each of the two
    // gateways with a target of 1 make 4 replicas (2 if it counted only its own).
    let body = json!({
        "script": harness::b64_wrapped(&tool_py),
        "dot_file": "",
        "option": {"name": "g", "replica": 1, "target_concurrency": 1, "max_replicas": 4,
                   "idle_timeout": "10m"},
    });
    let (s, r) = follower.admin("POST", "/admin/python", Some(body)).await;
    assert_eq!(s, 200, "{r}");
    let slow = "/gateway/g/slow?s=10";
    let held = async {
        tokio::join!(
            leader.call(slow),
            leader.call(slow),
            follower.call(slow),
            follower.call(slow)
        )
    };
    let watch = async {
        wait_until(Duration::from_secs(9), || async {
            k.replicas("deployment-g").await == 4
        })
        .await
    };
    let (_, scaled) = tokio::join!(held, watch);
    assert!(scaled, "not scaled to 4:\n{}", leader.log_text());

    // The leader dies: the follower leads within the lease duration (4 s), and reaps.
    assert_eq!(follower.call("/gateway/f/version").await.0, 200);
    assert_eq!(k.replicas("deployment-f").await, 1);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(leader.pid()),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    // As the endpoints controller withdraws a dead pod.
    k.send(
        "DELETE",
        &format!(
            "/apis/discovery.k8s.io/v1/namespaces/faas/endpointslices/faas-gateway-{leader_slice}"
        ),
        None,
    )
    .await;
    let killed = Instant::now();
    assert!(
        wait_until(Duration::from_secs(10), || async {
            leads(&follower, follower_name).await
        })
        .await,
        "no new leader:\n{}",
        follower.log_text()
    );
    let took = killed.elapsed();
    assert!(took < Duration::from_secs(4 + 2), "took {took:?}");
    assert!(
        wait_until(Duration::from_secs(20), || async {
            k.replicas("deployment-f").await == 0
        })
        .await,
        "the new leader does not reap:\n{}",
        follower.log_text()
    );
    assert_eq!(follower.metric("faas_reaper_scale_downs_total").await, 1.0);
}

/// Whether gateway replica `name` says it leads.
async fn leads(f: &Faas, name: &str) -> bool {
    f.metric(&format!("faas_leader{{replica=\"{name}\"}}"))
        .await
        == 1.0
}

/// The four objects of `kfn` as the gateway applied them: what the original made, valid for
/// Kubernetes 1.33, and pods the restricted Pod Security Standard admits.
async fn check_objects(k: &Cluster, tool_py: &str) {
    let (s, cm) = k
        .get("/api/v1/namespaces/faas/configmaps/configmap-kfn")
        .await;
    assert_eq!(s, 200);
    assert_eq!(cm["data"]["main.py"], tool_py);
    let (s, secret) = k.get("/api/v1/namespaces/faas/secrets/secret-kfn").await;
    assert_eq!(s, 200);
    let version = base64::engine::general_purpose::STANDARD
        .decode(secret["data"]["VERSION"].as_str().unwrap())
        .unwrap();
    assert_eq!(version, b"on kubernetes");
    let (s, svc) = k.get("/api/v1/namespaces/faas/services/kfn").await;
    assert_eq!(s, 200);
    assert_eq!(svc["spec"]["type"], "ClusterIP");
    assert_eq!(svc["spec"]["ports"][0]["port"], 80);
    assert_eq!(svc["spec"]["ports"][0]["targetPort"], 8000);
    assert_eq!(svc["spec"]["selector"]["app"], "app-kfn");
    let (s, dep) = k
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
}
