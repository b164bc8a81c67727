//! The gateway's Prometheus metrics. Counters and histograms are recorded per request; gauges
//! (in flight, held, replicas) are read from the registry at scrape time, so the hot path does
//! not touch them. Series of deleted functions are dropped at the next scrape.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::Ordering;

use control::metrics::ControlMetrics;
use control::registry::Registry as Functions;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Every metric `faas` exports.
pub struct Metrics {
    registry: Registry,
    /// `faas_gateway_requests_total{function,code}`.
    pub requests: IntCounterVec,
    /// `faas_gateway_request_duration_seconds{function}`.
    pub duration: HistogramVec,
    /// `faas_admin_requests_total{operation,code}`.
    pub admin: IntCounterVec,
    inflight: IntGaugeVec,
    queue_depth: IntGaugeVec,
    replicas: IntGaugeVec,
    control: ControlMetrics,
    /// One scrape at a time: a scrape resets and refills the gauges.
    scrape: std::sync::Mutex<()>,
}

/// Buckets from 0.5 ms (proxying) to 60 s (cold starts held in the activator).
const BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

impl Metrics {
    /// Creates the gateway's metrics and the control side's, in one registry.
    pub fn new() -> prometheus::Result<Self> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "faas_gateway_requests_total",
                "Requests to functions through the gateway, by status code",
            ),
            &["function", "code"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "faas_gateway_request_duration_seconds",
                "Time from a request's arrival to the end of its response, holding included",
            )
            .buckets(BUCKETS.to_vec()),
            &["function"],
        )?;
        let admin = IntCounterVec::new(
            Opts::new(
                "faas_admin_requests_total",
                "Admin API requests by operation and status code",
            ),
            &["operation", "code"],
        )?;
        let inflight = IntGaugeVec::new(
            Opts::new(
                "faas_gateway_inflight_requests",
                "Requests in flight to each function, held ones included",
            ),
            &["function"],
        )?;
        let queue_depth = IntGaugeVec::new(
            Opts::new(
                "faas_activation_queue_depth",
                "Requests held waiting for a replica of each function",
            ),
            &["function"],
        )?;
        let replicas = IntGaugeVec::new(
            Opts::new(
                "faas_function_replicas",
                "Replicas of each function: desired and ready",
            ),
            &["function", "state"],
        )?;
        for c in [&requests, &admin] {
            registry.register(Box::new(c.clone()))?;
        }
        registry.register(Box::new(duration.clone()))?;
        for g in [&inflight, &queue_depth, &replicas] {
            registry.register(Box::new(g.clone()))?;
        }
        let control = ControlMetrics::new(&registry)?;
        Ok(Metrics {
            registry,
            requests,
            duration,
            admin,
            inflight,
            queue_depth,
            replicas,
            control,
            scrape: std::sync::Mutex::new(()),
        })
    }

    /// Counts one finished request of function `name` (its handles cached in `slot`).
    pub fn observe(
        &self,
        slot: &std::sync::OnceLock<control::registry::RequestSeries>,
        name: &str,
        code: u16,
        seconds: Option<f64>,
    ) {
        let m = slot.get_or_init(|| control::registry::RequestSeries {
            ok: self.requests.with_label_values(&[name, "200"]),
            duration: self.duration.with_label_values(&[name]),
        });
        if code == 200 {
            m.ok.inc();
        } else {
            self.requests
                .with_label_values(&[name, &code.to_string()])
                .inc();
        }
        if let Some(s) = seconds {
            m.duration.observe(s);
        }
    }

    /// The control side's metrics (cold starts, reaper), registered with these.
    pub fn control(&self) -> ControlMetrics {
        self.control.clone()
    }

    /// The text exposition of every metric, gauges read from `functions` now.
    pub fn render(&self, functions: &Functions) -> Vec<u8> {
        let _one_at_a_time = self.scrape.lock().unwrap_or_else(|p| p.into_inner());
        let table = functions.snapshot();
        for g in [&self.inflight, &self.queue_depth, &self.replicas] {
            g.reset();
        }
        for e in table.values() {
            let name = e.name.as_str();
            let inflight = e.inflight.load(Ordering::Relaxed) as i64;
            let pending = e.pending.load(Ordering::Relaxed) as i64;
            self.inflight.with_label_values(&[name]).set(inflight);
            self.queue_depth.with_label_values(&[name]).set(pending);
            let desired = e.spec().replicas as i64;
            self.replicas
                .with_label_values(&[name, "desired"])
                .set(desired);
            self.replicas
                .with_label_values(&[name, "ready"])
                .set(e.ready() as i64);
        }
        let mut families = self.registry.gather();
        // Drop the series of functions that no longer exist.
        let mut stale: BTreeMap<String, HashSet<String>> = BTreeMap::new();
        for f in families
            .iter()
            .filter(|f| f.name() == "faas_gateway_requests_total")
        {
            for m in f.get_metric() {
                let label = |n: &str| {
                    m.get_label()
                        .iter()
                        .find(|l| l.name() == n)
                        .map(|l| l.value().to_string())
                };
                if let (Some(func), Some(code)) = (label("function"), label("code")) {
                    if !table.contains_key(&func) {
                        stale.entry(func).or_default().insert(code);
                    }
                }
            }
        }
        if !stale.is_empty() {
            for (func, codes) in &stale {
                for code in codes {
                    let _ = self.requests.remove_label_values(&[func, code]);
                }
                let _ = self.duration.remove_label_values(&[func]);
                self.control.forget(func);
            }
            families = self.registry.gather();
        }
        let mut out = Vec::with_capacity(8192);
        if let Err(e) = TextEncoder::new().encode(&families, &mut out) {
            log::warn!("could not encode metrics: {e}");
        }
        out
    }
}
