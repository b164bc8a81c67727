//! `/metrics` in Prometheus text format: checked by promtool, scraped by a real Prometheus.

mod harness;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use harness::{tool, Faas};
use serde_json::Value;

/// Every series family DESIGN.md promises.
const FAMILIES: &[&str] = &[
    "faas_gateway_requests_total",
    "faas_gateway_request_duration_seconds",
    "faas_gateway_inflight_requests",
    "faas_cold_starts_total",
    "faas_cold_start_duration_seconds",
    "faas_activation_queue_depth",
    "faas_function_replicas",
    "faas_reaper_scale_downs_total",
    "faas_admin_requests_total",
];

async fn scrape(faas: &Faas) -> String {
    faas.call("/metrics").await.1
}

#[tokio::test]
async fn a_scrape_after_traffic_passes_promtool_and_has_every_family() {
    let faas = Faas::start_with(&[
        ("REAPER_POLL_EVERY", "200ms"),
        ("REAPER_TIME_TO_LIVE", "1s"),
    ])
    .await;
    faas.deploy_ok("m", "tests/functions/tool.py", "", 0).await;
    for _ in 0..3 {
        assert_eq!(faas.call("/gateway/m/version").await.0, 200);
    }
    assert_eq!(faas.call("/gateway/nope/").await.0, 404);
    assert!(
        faas.wait_status("m", "replicas", Duration::from_secs(10), |v| v == 0)
            .await
    );
    let text = scrape(&faas).await;
    for family in FAMILIES {
        assert!(
            text.contains(&format!("# TYPE {family} ")),
            "{family} missing:\n{text}"
        );
    }
    assert!(
        text.contains("faas_gateway_requests_total{code=\"200\",function=\"m\"} 3"),
        "{text}"
    );
    assert!(
        text.contains("faas_cold_starts_total{function=\"m\",outcome=\"ready\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("faas_admin_requests_total{code=\"200\",operation=\"deploy\"} 1"),
        "{text}"
    );
    assert!(text.contains("faas_reaper_scale_downs_total 1"), "{text}");

    let mut promtool = Command::new(tool("promtool"))
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (install it with ./dev setup)");
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn a_deleted_functions_series_disappear() {
    let faas = Faas::start().await;
    faas.deploy_ok("gone", "tests/functions/tool.py", "", 1)
        .await;
    assert_eq!(faas.call("/gateway/gone/version").await.0, 200);
    assert!(scrape(&faas).await.contains("function=\"gone\""));
    assert_eq!(
        faas.admin("DELETE", "/admin/functions/gone", None).await.0,
        204
    );
    let text = scrape(&faas).await;
    assert!(!text.contains("function=\"gone\""), "{text}");
}

#[tokio::test]
async fn a_real_prometheus_scrapes_the_request_count() {
    let faas = Faas::start().await;
    faas.deploy_ok("scraped", "tests/functions/tool.py", "", 1)
        .await;
    for _ in 0..7 {
        assert_eq!(faas.call("/gateway/scraped/version").await.0, 200);
    }
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: faas\n    static_configs:\n      - targets: ['127.0.0.1:{}']\n",
            faas.port
        ),
    )
    .unwrap();
    let port = harness::free_port();
    let mut prom = Command::new(tool("prometheus"))
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("prometheus (install it with ./dev setup)");
    let query = format!(
        "http://127.0.0.1:{port}/api/v1/query?query=faas_gateway_requests_total%7Bfunction%3D%22scraped%22%2Ccode%3D%22200%22%7D"
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = Value::Null;
    let value = loop {
        if let Ok(r) = faas.http.get(&query).send().await {
            if let Ok(v) = r.json::<Value>().await {
                if let Some(s) = v["data"]["result"][0]["value"][1].as_str() {
                    break s.to_string();
                }
                last = v;
            }
        }
        if Instant::now() > deadline {
            let _ = prom.kill();
            panic!("Prometheus never had the series; last answer: {last}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let _ = prom.kill();
    let _ = prom.wait();
    assert_eq!(value, "7");
}
