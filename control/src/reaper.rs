//! The reaper: scales idle functions to zero. It never deletes a function. It runs on the leader
//! only, and decides from the activity of every gateway replica ([`Fleet`]): a function another
//! replica is serving is not idle, and neither is any function while a peer does not answer.

use std::sync::Arc;
use std::time::Duration;

use crate::function::FunctionSpec;
use crate::metrics::ControlMetrics;
use crate::registry::Registry;
use crate::runtime::Runtime;
use crate::scaling::activity::{Activity, Fleet};
use crate::scaling::peers::Peers;

/// When a function counts as idle.
#[derive(Debug, Clone, Copy)]
pub struct ReaperConfig {
    /// How often to look (`REAPER_POLL_EVERY`).
    pub poll_every: Duration,
    /// Idle time before scale to zero (`REAPER_TIME_TO_LIVE`), unless the function sets its own.
    pub time_to_live: Duration,
}

/// Whether a function is to go to zero: it has replicas, may go to zero (`min_replicas == 0`),
/// and has been idle for its idle timeout on every replica.
pub fn is_idle(spec: &FunctionSpec, fleet: &Fleet, default_ttl: Duration) -> bool {
    let ttl = spec.idle_timeout().unwrap_or(default_ttl);
    spec.replicas > 0 && spec.min_replicas == 0 && fleet.idle(&spec.name, ttl)
}

/// Runs until aborted (leadership lost): every `poll_every`, scales idle functions to zero.
pub async fn run(
    cfg: ReaperConfig,
    registry: Registry,
    runtime: Arc<dyn Runtime>,
    metrics: ControlMetrics,
    activity: Activity,
    peers: Peers,
) {
    let mut tick = tokio::time::interval(cfg.poll_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let fleet = peers.gather(activity.report()).await;
        if !fleet.unreachable.is_empty() {
            log::warn!(
                "reaper: no activity from {}; nothing is idle until they answer",
                fleet.unreachable.join(", ")
            );
            continue;
        }
        let idle: Vec<_> = registry
            .snapshot()
            .values()
            .filter(|e| is_idle(&e.spec(), &fleet, cfg.time_to_live))
            .cloned()
            .collect();
        for entry in idle {
            let seen = fleet.functions.get(&entry.name).map_or(0, |a| a.idle_ms);
            log::info!(
                "{} idle for {:?} on {} gateway replica(s): scaling to zero",
                entry.name,
                Duration::from_millis(seen),
                fleet.replicas.len()
            );
            match runtime.scale(&entry.name, 0).await {
                Ok(()) => metrics.reaper_scale_downs.inc(),
                Err(e) => log::warn!("reaper could not scale {} to zero: {e}", entry.name),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scaling::activity::{FnActivity, Report};
    use std::collections::HashMap;

    fn spec(replicas: u32, min: u32) -> FunctionSpec {
        FunctionSpec {
            replicas,
            min_replicas: min,
            ..FunctionSpec::named("f")
        }
    }

    fn fleet(inflight: u64, idle_ms: u64) -> Fleet {
        let a = FnActivity {
            inflight,
            idle_ms,
            ..FnActivity::default()
        };
        let r = Report {
            replica: "a".into(),
            functions: HashMap::from([("f".to_string(), a)]),
        };
        Fleet::merge([r], vec![])
    }

    #[test]
    fn idle_rules() {
        let ttl = Duration::from_secs(30);
        assert!(
            !is_idle(&spec(1, 0), &fleet(0, 1_000), ttl),
            "recently active"
        );
        assert!(is_idle(&spec(1, 0), &fleet(0, 31_000), ttl));
        assert!(
            !is_idle(&spec(1, 0), &fleet(1, 31_000), ttl),
            "a request in flight"
        );
        assert!(
            !is_idle(&spec(1, 1), &fleet(0, 31_000), ttl),
            "min_replicas keeps it warm"
        );
        assert!(
            !is_idle(&spec(0, 0), &fleet(0, 31_000), ttl),
            "already at zero"
        );
        let mut s = spec(1, 0);
        s.idle_timeout_ms = Some(60_000);
        assert!(
            !is_idle(&s, &fleet(0, 31_000), ttl),
            "its own longer idle timeout"
        );
    }
}
