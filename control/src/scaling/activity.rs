//! The activity of this gateway replica's functions: requests in flight now and on average over
//! the autoscale window, and how long each has been idle (on the monotonic clock). Every replica
//! serves it on [`PATH`]; the leader sums it over replicas ([`Fleet`]).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::registry::Registry;

/// The internal route a replica serves its [`Report`] on: on the gateway port, under `/admin`
/// (the admin token authorises it), never routed to a function.
pub const PATH: &str = "/admin/internal/activity";

/// Samples kept per window.
const SAMPLES: usize = 10;

/// One function's activity on one replica, or summed over replicas.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FnActivity {
    /// Requests in flight now (held ones included).
    pub inflight: u64,
    /// Requests held waiting for a replica now.
    pub pending: u64,
    /// Requests in flight on average over the autoscale window.
    pub inflight_avg: f64,
    /// Milliseconds since a request for it last started or finished (monotonic clock).
    pub idle_ms: u64,
}

/// What one replica reports.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Report {
    /// The replica (its pod name).
    pub replica: String,
    /// Its functions' activity, by name.
    pub functions: HashMap<String, FnActivity>,
}

/// Samples this replica's in-flight counts for the window average. Cheap to clone.
#[derive(Clone)]
pub struct Activity {
    registry: Registry,
    replica: String,
    period: Duration,
    samples: Arc<Mutex<HashMap<String, VecDeque<u64>>>>,
}

// === impl Activity ===

impl Activity {
    /// The activity of `registry`'s functions, averaged over `window`.
    pub fn new(registry: Registry, replica: String, window: Duration) -> Self {
        Activity {
            registry,
            replica,
            period: (window / SAMPLES as u32).max(Duration::from_millis(50)),
            samples: Arc::default(),
        }
    }

    /// How often [`Activity::run`] samples: a tenth of the window.
    pub fn period(&self) -> Duration {
        self.period
    }

    /// Samples forever, every [`Activity::period`].
    pub async fn run(self) {
        let mut tick = tokio::time::interval(self.period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.sample();
        }
    }

    fn sample(&self) {
        let table = self.registry.snapshot();
        let mut samples = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        samples.retain(|name, _| table.contains_key(name));
        for e in table.values() {
            let s = samples.entry(e.name.clone()).or_default();
            if s.len() == SAMPLES {
                s.pop_front();
            }
            s.push_back(e.inflight.load(Ordering::Acquire) as u64);
        }
    }

    /// This replica's report now.
    pub fn report(&self) -> Report {
        let table = self.registry.snapshot();
        let samples = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        let functions = table
            .values()
            .map(|e| {
                let inflight = e.inflight.load(Ordering::Acquire) as u64;
                let inflight_avg = match samples.get(&e.name) {
                    Some(s) if !s.is_empty() => s.iter().sum::<u64>() as f64 / s.len() as f64,
                    _ => inflight as f64,
                };
                let a = FnActivity {
                    inflight,
                    pending: e.pending.load(Ordering::Acquire) as u64,
                    inflight_avg,
                    idle_ms: e.idle_for().as_millis() as u64,
                };
                (e.name.clone(), a)
            })
            .collect();
        Report {
            replica: self.replica.clone(),
            functions,
        }
    }
}

/// The activity of every gateway replica, summed per function: what the leader decides from.
#[derive(Debug, Clone, Default)]
pub struct Fleet {
    /// Per function: in-flight counts summed, idle time the shortest of any replica.
    pub functions: HashMap<String, FnActivity>,
    /// Peers that did not answer (address and why). While any is missing, every function counts
    /// as active: nothing is scaled to zero on missing data.
    pub unreachable: Vec<String>,
    /// The replicas that answered, this one included.
    pub replicas: Vec<String>,
}

// === impl Fleet ===

impl Fleet {
    /// Sums the reports of the replicas that answered.
    pub fn merge(reports: impl IntoIterator<Item = Report>, unreachable: Vec<String>) -> Self {
        let mut fleet = Fleet {
            unreachable,
            ..Fleet::default()
        };
        for r in reports {
            fleet.replicas.push(r.replica);
            for (name, a) in r.functions {
                match fleet.functions.get_mut(&name) {
                    Some(sum) => {
                        sum.inflight += a.inflight;
                        sum.pending += a.pending;
                        sum.inflight_avg += a.inflight_avg;
                        sum.idle_ms = sum.idle_ms.min(a.idle_ms);
                    }
                    None => {
                        fleet.functions.insert(name, a);
                    }
                }
            }
        }
        fleet
    }

    /// Whether function `name` has been idle for `ttl` on every replica: nothing in flight or
    /// held anywhere, no request within `ttl` anywhere, and every peer answered.
    pub fn idle(&self, name: &str, ttl: Duration) -> bool {
        if !self.unreachable.is_empty() {
            return false;
        }
        self.functions.get(name).is_some_and(|a| {
            a.inflight == 0 && a.pending == 0 && a.idle_ms >= ttl.as_millis() as u64
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(replica: &str, name: &str, inflight: u64, avg: f64, idle_ms: u64) -> Report {
        let a = FnActivity {
            inflight,
            pending: 0,
            inflight_avg: avg,
            idle_ms,
        };
        Report {
            replica: replica.into(),
            functions: HashMap::from([(name.to_string(), a)]),
        }
    }

    #[test]
    fn sums_in_flight_and_takes_the_latest_activity() {
        let fleet = Fleet::merge(
            [
                report("a", "f", 0, 0.0, 60_000),
                report("b", "f", 3, 2.5, 10),
            ],
            vec![],
        );
        let f = &fleet.functions["f"];
        assert_eq!((f.inflight, f.inflight_avg, f.idle_ms), (3, 2.5, 10));
        assert!(!fleet.idle("f", Duration::from_secs(30)), "b serves it");
        let quiet = Fleet::merge(
            [
                report("a", "f", 0, 0.0, 60_000),
                report("b", "f", 0, 0.0, 40_000),
            ],
            vec![],
        );
        assert!(quiet.idle("f", Duration::from_secs(30)));
        assert!(
            !quiet.idle("f", Duration::from_secs(50)),
            "b saw it 40 s ago"
        );
    }

    #[test]
    fn a_missing_peer_keeps_everything_active() {
        let fleet = Fleet::merge(
            [report("a", "f", 0, 0.0, 60_000)],
            vec!["10.0.0.2:8080: timed out".into()],
        );
        assert!(!fleet.idle("f", Duration::from_secs(1)));
    }

    #[test]
    fn a_replica_that_does_not_know_a_function_adds_nothing() {
        let fleet = Fleet::merge(
            [
                report("a", "f", 0, 0.0, 60_000),
                report("b", "g", 1, 1.0, 0),
            ],
            vec![],
        );
        assert!(fleet.idle("f", Duration::from_secs(30)));
        assert!(!fleet.idle("unknown", Duration::from_secs(30)));
    }
}
