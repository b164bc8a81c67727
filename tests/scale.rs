//! Scale to zero, activation that loses nothing, bounded holding, autoscaling.

mod harness;

use std::io::Write;
use std::time::Duration;

use harness::{script, Faas};
use serde_json::{json, Value};

const FAST_REAPER: &[(&str, &str)] = &[
    ("REAPER_POLL_EVERY", "200ms"),
    ("REAPER_TIME_TO_LIVE", "1s"),
];

#[tokio::test]
async fn an_idle_function_goes_to_zero_and_the_next_request_brings_it_back() {
    let faas = Faas::start_with(FAST_REAPER).await;
    faas.deploy_ok("idle", "tests/functions/tool.py", "", 1)
        .await;
    assert_eq!(faas.call("/gateway/idle/version").await, (200, "v1".into()));
    assert!(
        faas.wait_status("idle", "replicas", Duration::from_secs(10), |v| v == 0)
            .await
    );
    assert!(
        faas.wait_status("idle", "ready_replicas", Duration::from_secs(10), |v| v
            == 0)
            .await
    );
    assert!(
        harness::eventually(Duration::from_secs(5), || faas
            .replica_processes()
            .is_empty())
        .await,
        "the replica process is gone"
    );
    assert!(faas.metric("faas_reaper_scale_downs_total").await >= 1.0);
    // The function was scaled, not deleted: the next request activates it.
    assert_eq!(faas.call("/gateway/idle/version").await, (200, "v1".into()));
    assert_eq!(
        faas.metric("faas_cold_starts_total{function=\"idle\",outcome=\"ready\"}")
            .await,
        1.0
    );
    assert_eq!(faas.status("idle", "replicas").await, 1);
}

/// How a burst request is made and what its answer must say.
struct Shape {
    /// Request `i`, given the client and the function's base URL.
    request: fn(&reqwest::Client, &str, usize) -> reqwest::RequestBuilder,
    /// The part of the answer that names the request (`r{i}`).
    echoed: fn(&Value) -> String,
}

/// `n` concurrent requests at a function at zero: each must answer 200 with its own `r{i}`,
/// after one activation, in seconds (the gateway holds what the replica cannot take yet,
/// instead of its kernel dropping SYNs that clients retransmit for seconds).
async fn burst_at_zero(faas: &Faas, name: &str, n: usize, shape: Shape) {
    assert_eq!(faas.status(name, "ready_replicas").await, 0);
    let started = std::time::Instant::now();
    let base = faas.url(&format!("/gateway/{name}"));
    let mut tasks = Vec::new();
    for i in 0..n {
        let req = (shape.request)(&faas.http, &base, i);
        tasks.push(tokio::spawn(async move {
            let r = req.send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }));
    }
    let mut last = Duration::ZERO;
    for (i, t) in tasks.into_iter().enumerate() {
        let (status, body) = t.await.unwrap();
        last = last.max(started.elapsed());
        assert_eq!(status, 200, "request {i}: {body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!((shape.echoed)(&v), format!("r{i}"), "{body}");
    }
    eprintln!("{n} requests at zero onto {name}: the last answered after {last:?}");
    assert!(
        last < Duration::from_secs(20),
        "{n} requests took {last:?}: requests waited on SYN retransmits"
    );
    assert_eq!(
        faas.metric(&format!(
            "faas_cold_starts_total{{function=\"{name}\",outcome=\"ready\"}}"
        ))
        .await,
        1.0
    );
    assert_eq!(faas.status(name, "replicas").await, 1);
    assert_eq!(
        faas.metric(&format!(
            "faas_activation_queue_depth{{function=\"{name}\"}}"
        ))
        .await,
        0.0
    );
}

#[tokio::test]
async fn three_hundred_concurrent_requests_at_zero_onto_a_default_stdlib_server_all_succeed() {
    let faas = Faas::start().await;
    // ThreadingHTTPServer as people write it: listen backlog 5, a connection per request.
    faas.deploy_ok("burst", "tests/functions/plain.py", "", 0)
        .await;
    let shape = Shape {
        request: |http, base, i| http.get(format!("{base}/r{i}")),
        echoed: |v| {
            v["path"]
                .as_str()
                .unwrap_or_default()
                .trim_start_matches('/')
                .into()
        },
    };
    burst_at_zero(&faas, "burst", 300, shape).await;
}

#[tokio::test]
async fn a_thousand_concurrent_requests_at_zero_onto_the_fastapi_echo_all_succeed() {
    harness::raise_fd_limit();
    let faas = Faas::start().await;
    faas.deploy_ok("echo", "examples/echo/main.py", "HIDDEN_MESSAGE=x\n", 0)
        .await;
    let shape = Shape {
        request: |http, base, i| {
            http.post(format!("{base}/echo/"))
                .json(&json!({"message": format!("r{i}")}))
        },
        echoed: |v| v["received_message"].as_str().unwrap_or_default().into(),
    };
    burst_at_zero(&faas, "echo", 1000, shape).await;
}

#[tokio::test]
async fn a_never_ready_function_answers_504_after_the_activation_timeout() {
    let faas = Faas::start_with(&[("FAAS_ACTIVATION_TIMEOUT", "1s")]).await;
    faas.deploy_ok("never", "tests/functions/never_ready.py", "", 0)
        .await;
    let started = std::time::Instant::now();
    let resp = faas.get("/gateway/never/").await;
    assert_eq!(resp.status(), 504);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["code"], 504);
    assert!(v["message"].as_str().unwrap().contains("\"never\""), "{v}");
    assert!(
        started.elapsed() >= Duration::from_secs(1) && started.elapsed() < Duration::from_secs(5)
    );
}

#[tokio::test]
async fn a_full_queue_answers_503_with_retry_after() {
    let faas = Faas::start_with(&[
        ("FAAS_ACTIVATION_TIMEOUT", "30s"),
        ("FAAS_ACTIVATION_MAX_PENDING", "2"),
    ])
    .await;
    faas.deploy_ok("full", "tests/functions/never_ready.py", "", 0)
        .await;
    let held: Vec<_> = (0..2)
        .map(|_| {
            let (http, url) = (faas.http.clone(), faas.url("/gateway/full/"));
            tokio::spawn(async move { http.get(url).send().await })
        })
        .collect();
    assert!(
        faas.wait_status("full", "pending", Duration::from_secs(10), |v| v == 2)
            .await
    );
    let resp = faas.get("/gateway/full/").await;
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.headers()["retry-after"], "1");
    let v: Value = resp.json().await.unwrap();
    assert!(v["message"].as_str().unwrap().contains("\"full\""), "{v}");
    for h in held {
        h.abort();
    }
}

#[tokio::test]
async fn a_client_that_disconnects_while_held_leaves_the_queue() {
    let faas = Faas::start_with(&[("FAAS_ACTIVATION_TIMEOUT", "60s")]).await;
    faas.deploy_ok("gone", "tests/functions/never_ready.py", "", 0)
        .await;
    let mut sock = std::net::TcpStream::connect(("127.0.0.1", faas.port)).unwrap();
    write!(sock, "GET /gateway/gone/ HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    assert!(
        faas.wait_status("gone", "pending", Duration::from_secs(10), |v| v == 1)
            .await
    );
    assert_eq!(
        faas.metric("faas_activation_queue_depth{function=\"gone\"}")
            .await,
        1.0
    );
    drop(sock);
    assert!(
        faas.wait_status("gone", "pending", Duration::from_secs(2), |v| v == 0)
            .await
    );
    assert_eq!(
        faas.metric("faas_activation_queue_depth{function=\"gone\"}")
            .await,
        0.0
    );
}

#[tokio::test]
async fn a_replica_crashing_on_start_fails_held_requests_with_its_output() {
    let faas = Faas::start().await;
    faas.deploy_ok("crash", "tests/functions/crash_on_start.py", "", 0)
        .await;
    let resp = faas.get("/gateway/crash/").await;
    assert_eq!(resp.status(), 502);
    let v: Value = resp.json().await.unwrap();
    let msg = v["message"].as_str().unwrap();
    assert!(msg.contains("boom: DATABASE_URL is not set"), "{msg}");
    assert_eq!(
        faas.metric("faas_cold_starts_total{function=\"crash\",outcome=\"failed\"}")
            .await,
        1.0
    );
}

#[tokio::test]
async fn min_replicas_keeps_a_function_warm() {
    let faas = Faas::start_with(FAST_REAPER).await;
    let body = json!({
        "script": harness::b64_wrapped(&script("tests/functions/tool.py")),
        "option": {"name": "warm", "replica": 1, "min_replicas": 1},
    });
    assert_eq!(faas.admin("POST", "/admin/python", Some(body)).await.0, 200);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(faas.status("warm", "replicas").await, 1);
    assert_eq!(faas.status("warm", "ready_replicas").await, 1);
    assert_eq!(faas.metric("faas_reaper_scale_downs_total").await, 0.0);
}

#[tokio::test]
async fn sustained_load_scales_out_and_back_in() {
    let faas = Faas::start_with(&[
        ("FAAS_AUTOSCALE_WINDOW", "1s"),
        ("FAAS_SCALE_DOWN_DELAY", "2s"),
        ("REAPER_TIME_TO_LIVE", "1h"),
    ])
    .await;
    let body = json!({
        "script": harness::b64_wrapped(&script("tests/functions/tool.py")),
        "option": {"name": "busy", "replica": 1, "target_concurrency": 2, "max_replicas": 3},
    });
    assert_eq!(faas.admin("POST", "/admin/python", Some(body)).await.0, 200);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut clients = Vec::new();
    for _ in 0..8 {
        let (http, url, stop) = (
            faas.http.clone(),
            faas.url("/gateway/busy/slow?s=0.2"),
            stop.clone(),
        );
        clients.push(tokio::spawn(async move {
            let mut codes = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                codes.push(http.get(&url).send().await.unwrap().status().as_u16());
            }
            codes
        }));
    }
    let scaled_out = faas
        .wait_status("busy", "ready_replicas", Duration::from_secs(15), |v| {
            v.as_u64().unwrap_or(0) > 1
        })
        .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for c in clients {
        assert!(
            c.await.unwrap().iter().all(|c| *c == 200),
            "every request under load succeeded"
        );
    }
    assert!(
        scaled_out,
        "never scaled above one replica:\n{}",
        faas.log_text()
    );
    assert!(
        faas.wait_status("busy", "replicas", Duration::from_secs(15), |v| v == 1)
            .await,
        "did not scale back in"
    );
    assert_eq!(faas.status("busy", "ready_replicas").await, 1);
}

#[tokio::test]
async fn scaling_down_lets_inflight_requests_finish() {
    let faas = Faas::start().await;
    faas.deploy_ok("drain", "tests/functions/tool.py", "", 1)
        .await;
    let (http, url) = (faas.http.clone(), faas.url("/gateway/drain/slow?s=1.5"));
    let slow = tokio::spawn(async move {
        let r = http.get(url).send().await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    });
    assert!(
        faas.wait_status("drain", "inflight", Duration::from_secs(5), |v| v == 1)
            .await
    );
    let (s, _) = faas
        .admin(
            "POST",
            "/admin/functions/drain/scale",
            Some(json!({"replicas": 0})),
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(slow.await.unwrap(), (200, "slow done".to_string()));
    // A request after the scale-down waits for the next activation instead of failing.
    assert_eq!(
        faas.call("/gateway/drain/version").await,
        (200, "v1".into())
    );
}

#[tokio::test]
async fn deleting_a_function_answers_its_held_requests_with_404() {
    let faas = Faas::start_with(&[("FAAS_ACTIVATION_TIMEOUT", "60s")]).await;
    faas.deploy_ok("doomed", "tests/functions/never_ready.py", "", 0)
        .await;
    let (http, url) = (faas.http.clone(), faas.url("/gateway/doomed/"));
    let held = tokio::spawn(async move {
        let r = http.get(url).send().await.unwrap();
        (r.status().as_u16(), r.json::<Value>().await.unwrap())
    });
    assert!(
        faas.wait_status("doomed", "pending", Duration::from_secs(10), |v| v == 1)
            .await
    );
    assert_eq!(
        faas.admin("DELETE", "/admin/functions/doomed", None)
            .await
            .0,
        204
    );
    let (status, body) = held.await.unwrap();
    assert_eq!(status, 404, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("deleted"),
        "{body}"
    );
}
