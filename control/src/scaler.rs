//! Turns the gateway's activation requests into runtime scale calls.

use std::sync::Arc;

use tokio::sync::mpsc;

use crate::registry::{Registry, ScaleRequest};
use crate::runtime::Runtime;

/// Serves activation requests until the registry is dropped. A request asks for at least
/// `replicas`; a function that already wants that many is left alone (its replicas are starting).
pub async fn run(
    mut rx: mpsc::UnboundedReceiver<ScaleRequest>,
    registry: Registry,
    runtime: Arc<dyn Runtime>,
) {
    while let Some(req) = rx.recv().await {
        let Some(entry) = registry.get(&req.name) else {
            continue;
        };
        let spec = entry.spec();
        if spec.replicas >= req.replicas {
            continue;
        }
        log::info!("activating {} (0 → {} replicas)", req.name, req.replicas);
        let runtime = runtime.clone();
        tokio::spawn(async move {
            if let Err(e) = runtime.scale(&req.name, req.replicas).await {
                entry.publish_failure(format!("could not start {}: {e}", req.name));
            }
        });
    }
}
