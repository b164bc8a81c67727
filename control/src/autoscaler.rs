//! Request-driven autoscaling: desired replicas = ceil(average in-flight over a window /
//! `target_concurrency`), clamped to `[max(min_replicas, 1), max_replicas]`. Scale-up is
//! immediate; scale-down waits until the lower count has been enough for the stabilisation
//! window, so that a short lull does not stop warm replicas. Zero is the reaper's business.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::registry::Registry;
use crate::runtime::Runtime;

/// Autoscaler timing.
#[derive(Debug, Clone, Copy)]
pub struct AutoscaleConfig {
    /// The window in-flight requests are averaged over (`FAAS_AUTOSCALE_WINDOW`).
    pub window: Duration,
    /// How long fewer replicas must suffice before scaling down (`FAAS_SCALE_DOWN_DELAY`).
    pub scale_down_delay: Duration,
}

/// Samples kept per window.
const SAMPLES: usize = 10;

/// What the autoscaler remembers of one function.
#[derive(Default)]
struct Track {
    samples: VecDeque<usize>,
    lower_since: Option<Instant>,
}

/// The replica count for an average in-flight load.
pub fn desired(avg_inflight: f64, target: u32, min: u32, max: u32) -> u32 {
    let want = (avg_inflight / target.max(1) as f64).ceil() as u32;
    want.clamp(min.max(1), max.max(1))
}

/// Runs forever, sampling every `window / 10`.
pub async fn run(cfg: AutoscaleConfig, registry: Registry, runtime: Arc<dyn Runtime>) {
    let period = (cfg.window / SAMPLES as u32).max(Duration::from_millis(50));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut tracks: HashMap<String, Track> = HashMap::new();
    loop {
        tick.tick().await;
        let table = registry.snapshot();
        tracks.retain(|name, _| table.contains_key(name));
        for entry in table.values() {
            let spec = entry.spec();
            let Some(target) = spec.target_concurrency else {
                continue;
            };
            let t = tracks.entry(entry.name.clone()).or_default();
            if t.samples.len() == SAMPLES {
                t.samples.pop_front();
            }
            t.samples.push_back(entry.inflight.load(Ordering::Acquire));
            if spec.replicas == 0 {
                // At zero: the activator brings it back; stale samples must not linger.
                t.samples.clear();
                t.lower_since = None;
                continue;
            }
            let avg = t.samples.iter().sum::<usize>() as f64 / t.samples.len() as f64;
            let want = desired(avg, target, spec.min_replicas, spec.max_replicas);
            let change = if want > spec.replicas {
                t.lower_since = None;
                Some(want)
            } else if want < spec.replicas {
                let since = *t.lower_since.get_or_insert_with(Instant::now);
                (since.elapsed() >= cfg.scale_down_delay).then_some(want)
            } else {
                t.lower_since = None;
                None
            };
            if let Some(n) = change {
                t.lower_since = None;
                log::info!(
                    "autoscaling {}: {} → {n} replicas (average in flight {avg:.1}, target {target})",
                    entry.name,
                    spec.replicas
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
