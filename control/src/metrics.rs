//! Metrics the control side records: cold starts and reaper scale-downs. They register into the
//! same Prometheus registry as the gateway's.

use prometheus::{
    HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry,
};

/// Cold-start and reaper metrics. Cheap to clone (handles to shared series).
#[derive(Clone)]
pub struct ControlMetrics {
    /// `faas_cold_starts_total{function,outcome}`: activations from zero by how they ended
    /// (`ready`, `failed`, `timeout`).
    pub cold_starts: IntCounterVec,
    /// `faas_cold_start_duration_seconds{function}`: from the scale-up to the first ready replica.
    pub cold_start_duration: HistogramVec,
    /// `faas_reaper_scale_downs_total`: idle functions scaled to zero.
    pub reaper_scale_downs: IntCounter,
    /// `faas_replica_starts_total{function,path}`: replica processes started on the local
    /// runtime, by how (`zygote`: forked; `direct`: the interpreter started, no zygote warm;
    /// `fallback`: the interpreter started because the zygote path failed).
    pub replica_starts: IntCounterVec,
    /// `faas_leader{replica}`: 1 on the gateway replica that runs the reaper and the autoscaler.
    pub leader: IntGaugeVec,
}

/// Cold starts take from tens of milliseconds (stdlib script) to a minute.
const COLD_START_BUCKETS: &[f64] = &[
    0.025, 0.05, 0.1, 0.15, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0,
];

impl ControlMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        let cold_starts = IntCounterVec::new(
            Opts::new(
                "faas_cold_starts_total",
                "Activations of functions from zero replicas, by outcome",
            ),
            &["function", "outcome"],
        )?;
        let cold_start_duration = HistogramVec::new(
            HistogramOpts::new(
                "faas_cold_start_duration_seconds",
                "Time from an activation's scale-up to the function's first ready replica",
            )
            .buckets(COLD_START_BUCKETS.to_vec()),
            &["function"],
        )?;
        let reaper_scale_downs = IntCounter::new(
            "faas_reaper_scale_downs_total",
            "Idle functions the reaper scaled to zero",
        )?;
        registry.register(Box::new(cold_starts.clone()))?;
        registry.register(Box::new(cold_start_duration.clone()))?;
        let replica_starts = IntCounterVec::new(
            Opts::new(
                "faas_replica_starts_total",
                "Replica processes started on the local runtime, by path (zygote, direct, fallback)",
            ),
            &["function", "path"],
        )?;
        registry.register(Box::new(reaper_scale_downs.clone()))?;
        registry.register(Box::new(replica_starts.clone()))?;
        let leader = IntGaugeVec::new(
            Opts::new(
                "faas_leader",
                "1 on the gateway replica that leads (runs the reaper and the autoscaler)",
            ),
            &["replica"],
        )?;
        registry.register(Box::new(leader.clone()))?;
        Ok(ControlMetrics {
            cold_starts,
            cold_start_duration,
            reaper_scale_downs,
            replica_starts,
            leader,
        })
    }

    /// Drops the series of a deleted function.
    pub fn forget(&self, name: &str) {
        let _ = self.cold_start_duration.remove_label_values(&[name]);
        for outcome in OUTCOMES {
            let _ = self.cold_starts.remove_label_values(&[name, outcome]);
        }
        for path in START_PATHS {
            let _ = self.replica_starts.remove_label_values(&[name, path]);
        }
    }
}

/// Every value of the `outcome` label.
pub const OUTCOMES: [&str; 3] = ["ready", "failed", "timeout"];

/// Every value of the `path` label of `faas_replica_starts_total`.
pub const START_PATHS: [&str; 3] = ["zygote", "direct", "fallback"];
