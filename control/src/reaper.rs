//! The reaper: scales idle functions to zero. It never deletes a function.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crate::metrics::ControlMetrics;
use crate::registry::{FnEntry, Registry};
use crate::runtime::Runtime;

/// When a function counts as idle.
#[derive(Debug, Clone, Copy)]
pub struct ReaperConfig {
    /// How often to look (`REAPER_POLL_EVERY`).
    pub poll_every: Duration,
    /// Idle time before scale to zero (`REAPER_TIME_TO_LIVE`), unless the function sets its own.
    pub time_to_live: Duration,
}

/// Whether `entry` is idle at `now_ms`: it has replicas, may go to zero (`min_replicas == 0`),
/// has nothing in flight or held, and nothing finished within its idle timeout.
pub fn is_idle(entry: &FnEntry, default_ttl: Duration, now_ms: u64) -> bool {
    let spec = entry.spec();
    let ttl = spec.idle_timeout().unwrap_or(default_ttl).as_millis() as u64;
    spec.replicas > 0
        && spec.min_replicas == 0
        && entry.inflight.load(Ordering::Acquire) == 0
        && entry.pending.load(Ordering::Acquire) == 0
        && now_ms.saturating_sub(entry.last_activity_ms()) >= ttl
}

/// Runs forever: every `poll_every`, scales idle functions to zero.
pub async fn run(
    cfg: ReaperConfig,
    registry: Registry,
    runtime: Arc<dyn Runtime>,
    metrics: ControlMetrics,
) {
    let mut tick = tokio::time::interval(cfg.poll_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = crate::now_ms();
        let idle: Vec<_> = registry
            .snapshot()
            .values()
            .filter(|e| is_idle(e, cfg.time_to_live, now))
            .cloned()
            .collect();
        for entry in idle {
            log::info!(
                "{} idle for {:?}: scaling to zero",
                entry.name,
                Duration::from_millis(now.saturating_sub(entry.last_activity_ms()))
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
    use crate::function::FunctionSpec;

    fn spec(replicas: u32, min: u32) -> FunctionSpec {
        FunctionSpec {
            replicas,
            min_replicas: min,
            ..FunctionSpec::named("f")
        }
    }

    #[test]
    fn idle_rules() {
        let (reg, _rx) = Registry::new();
        let ttl = Duration::from_secs(30);
        let e = reg.insert(spec(1, 0));
        let later = e.last_activity_ms() + 31_000;
        assert!(
            !is_idle(&e, ttl, e.last_activity_ms() + 1_000),
            "recently active"
        );
        assert!(is_idle(&e, ttl, later));
        e.inflight.fetch_add(1, Ordering::AcqRel);
        assert!(!is_idle(&e, ttl, later), "a request in flight");
        e.inflight.fetch_sub(1, Ordering::AcqRel);
        e.set_spec(spec(1, 1));
        assert!(!is_idle(&e, ttl, later), "min_replicas keeps it warm");
        e.set_spec(spec(0, 0));
        assert!(!is_idle(&e, ttl, later), "already at zero");
        let mut s = spec(1, 0);
        s.idle_timeout_ms = Some(60_000);
        e.set_spec(s);
        assert!(!is_idle(&e, ttl, later), "its own longer idle timeout");
    }
}
