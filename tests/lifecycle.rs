//! The life of `faas` itself: restart with functions kept, graceful shutdown.

mod harness;

use std::time::Duration;

use harness::{script, Faas};

#[tokio::test]
async fn functions_survive_a_restart_with_their_replica_count() {
    let mut faas = Faas::start().await;
    let tool = script("tests/functions/tool.py");
    assert_eq!(faas.deploy("kept", &tool, "VERSION=kept\n", 2).await.0, 200);
    assert_eq!(faas.deploy("idle", &tool, "", 0).await.0, 200);
    faas.restart().await;
    let ok = {
        let mut ok = false;
        for _ in 0..200 {
            if faas.call("/gateway/kept/version").await == (200, "kept".into()) {
                ok = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        ok
    };
    assert!(ok, "{}", faas.log_text());
    let (_, kept) = faas.admin("GET", "/admin/functions/kept", None).await;
    assert_eq!(kept["replicas"], 2);
    let (s, idle) = faas.admin("GET", "/admin/functions/idle", None).await;
    assert_eq!(s, 200);
    assert_eq!(idle["replicas"], 0);
}

#[tokio::test]
async fn sigterm_finishes_inflight_requests_then_stops_every_replica() {
    let mut faas = Faas::start_with(&[("FAAS_SHUTDOWN_GRACE", "8s")]).await;
    faas.deploy_ok("slow", "tests/functions/tool.py", "", 2)
        .await;
    assert!(!faas.replica_processes().is_empty());
    let url = faas.url("/gateway/slow/slow?s=1.5");
    let http = faas.http.clone();
    let inflight = tokio::spawn(async move {
        let r = http.get(url).send().await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let took = faas.terminate();
    assert_eq!(inflight.await.unwrap(), (200, "slow done".to_string()));
    assert!(took < Duration::from_secs(8), "exit took {took:?}");
    let left = faas.replica_processes();
    assert!(left.is_empty(), "replicas left after shutdown: {left:?}");
}
