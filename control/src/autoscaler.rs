//! Request-driven autoscaling: desired replicas = ceil(average in-flight over a window /
//! `target_concurrency`), clamped to `[max(min_replicas, 1), max_replicas]`. The average is summed
//! over every gateway replica (each averages its own over the window, see
//! [`Activity`]); the autoscaler runs on the leader only. Scale-up is immediate; scale-down waits
//! until the lower count has been enough for the stabilisation window, so that a short lull does
//! not stop warm replicas, and does not happen while a peer's load is unknown. Zero is the
//! reaper's business.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::registry::Registry;
use crate::runtime::Runtime;
use crate::scaling::activity::Activity;
use crate::scaling::peers::Peers;

/// Autoscaler timing.
#[derive(Debug, Clone, Copy)]
pub struct AutoscaleConfig {
    /// The window in-flight requests are averaged over (`FAAS_AUTOSCALE_WINDOW`).
    pub window: Duration,
    /// How long fewer replicas must suffice before scaling down (`FAAS_SCALE_DOWN_DELAY`).
    pub scale_down_delay: Duration,
}

/// The replica count for an average in-flight load.
pub fn desired(avg_inflight: f64, target: u32, min: u32, max: u32) -> u32 {
    let want = (avg_inflight / target.max(1) as f64).ceil() as u32;
    want.clamp(min.max(1), max.max(1))
}

/// Runs until aborted (leadership lost), deciding every tenth of the window.
pub async fn run(
    cfg: AutoscaleConfig,
    registry: Registry,
    runtime: Arc<dyn Runtime>,
    activity: Activity,
    peers: Peers,
) {
    let mut tick = tokio::time::interval(activity.period());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Per function: since when fewer replicas have sufficed.
    let mut lower_since: HashMap<String, Instant> = HashMap::new();
    loop {
        tick.tick().await;
        let table = registry.snapshot();
        if !table
            .values()
            .any(|e| e.spec().target_concurrency.is_some())
        {
            lower_since.clear();
            continue;
        }
        let fleet = peers.gather(activity.report()).await;
        lower_since.retain(|name, _| table.contains_key(name));
        for entry in table.values() {
            let spec = entry.spec();
            let Some(target) = spec.target_concurrency else {
                continue;
            };
            if spec.replicas == 0 {
                // At zero: the activator brings it back.
                lower_since.remove(&entry.name);
                continue;
            }
            let avg = fleet
                .functions
                .get(&entry.name)
                .map_or(0.0, |a| a.inflight_avg);
            let want = desired(avg, target, spec.min_replicas, spec.max_replicas);
            let change = if want > spec.replicas {
                Some(want)
            } else if want < spec.replicas && fleet.unreachable.is_empty() {
                let since = *lower_since
                    .entry(entry.name.clone())
                    .or_insert_with(Instant::now);
                (since.elapsed() >= cfg.scale_down_delay).then_some(want)
            } else {
                lower_since.remove(&entry.name);
                None
            };
            if let Some(n) = change {
                lower_since.remove(&entry.name);
                log::info!(
                    "autoscaling {}: {} → {n} replicas (average in flight {avg:.1} over {} gateway \
                     replica(s), target {target})",
                    entry.name,
                    spec.replicas,
                    fleet.replicas.len()
                );
                if let Err(e) = runtime.scale(&entry.name, n).await {
                    log::warn!("autoscaler could not scale {}: {e}", entry.name);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn desired_replicas() {
        assert_eq!(
            desired(0.0, 4, 0, 5),
            1,
            "never below one: zero is the reaper's"
        );
        assert_eq!(desired(4.0, 4, 0, 5), 1);
        assert_eq!(desired(4.1, 4, 0, 5), 2);
        assert_eq!(desired(100.0, 4, 0, 5), 5, "clamped to max");
        assert_eq!(desired(1.0, 4, 3, 5), 3, "clamped to min");
    }
}
