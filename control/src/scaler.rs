//! Turns the gateway's activation requests into runtime scale calls, and measures the cold
//! starts they cause.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::metrics::ControlMetrics;
use crate::registry::{FnEntry, Registry, ScaleRequest};
use crate::runtime::Runtime;

/// Serves activation requests until the registry is dropped. A request asks for at least
/// `replicas`; a function that already wants that many is left alone (its replicas are starting).
pub async fn run(
    mut rx: mpsc::UnboundedReceiver<ScaleRequest>,
    registry: Registry,
    runtime: Arc<dyn Runtime>,
    metrics: ControlMetrics,
    timeout: Duration,
) {
    while let Some(req) = rx.recv().await {
        let Some(entry) = registry.get(&req.name) else {
            continue;
        };
        let desired = entry.spec().replicas;
        let runtime = runtime.clone();
        let metrics = metrics.clone();
        if desired >= req.replicas {
            // It should have replicas but none is ready: let the runtime replace any that gave
            // up (a no-op when they are merely starting).
            tokio::spawn(async move {
                if let Err(e) = runtime.scale_up(&req.name, desired).await {
                    entry.publish_failure(format!("could not start {}: {e}", req.name));
                }
            });
            continue;
        }
        log::info!("activating {} (0 → {} replicas)", req.name, req.replicas);
        tokio::spawn(async move {
            let started = Instant::now();
            // At least: another gateway replica may have activated it already.
            if let Err(e) = runtime.scale_up(&req.name, req.replicas).await {
                entry.publish_failure(format!("could not start {}: {e}", req.name));
            }
            observe_cold_start(&entry, started, timeout, &metrics).await;
        });
    }
}

/// Waits for the first ready replica or a failure, and counts the outcome.
async fn observe_cold_start(
    entry: &FnEntry,
    started: Instant,
    timeout: Duration,
    metrics: &ControlMetrics,
) {
    let mut rx = entry.subscribe();
    let outcome = tokio::time::timeout(
        timeout,
        rx.wait_for(|r| !r.endpoints.is_empty() || r.failure.is_some()),
    )
    .await
    .map(|r| r.map(|s| s.endpoints.is_empty()));
    let outcome = match outcome {
        Ok(Ok(false)) => {
            let took = started.elapsed();
            metrics
                .cold_start_duration
                .with_label_values(&[&entry.name])
                .observe(took.as_secs_f64());
            log::info!("{} is ready after a cold start of {took:?}", entry.name);
            "ready"
        }
        Ok(_) => "failed",
        Err(_) => "timeout",
    };
    metrics
        .cold_starts
        .with_label_values(&[&entry.name, outcome])
        .inc();
}
