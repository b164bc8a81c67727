//! The gateway's Prometheus metrics, in a registry of their own.

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
    /// `faas_gateway_inflight_requests{function}`.
    pub inflight: IntGaugeVec,
    /// `faas_admin_requests_total{operation,code}`.
    pub admin: IntCounterVec,
}

/// Buckets from 0.5 ms (proxying) to 60 s (cold starts held in the activator).
const BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

impl Metrics {
    /// Creates and registers the metrics.
    pub fn new() -> prometheus::Result<Self> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "faas_gateway_requests_total",
                "Requests proxied to functions, by status code",
            ),
            &["function", "code"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "faas_gateway_request_duration_seconds",
                "Time from request to response end",
            )
            .buckets(BUCKETS.to_vec()),
            &["function"],
        )?;
        let inflight = IntGaugeVec::new(
            Opts::new(
                "faas_gateway_inflight_requests",
                "Requests in flight to each function",
            ),
            &["function"],
        )?;
        let admin = IntCounterVec::new(
            Opts::new(
                "faas_admin_requests_total",
                "Admin API requests by operation and status code",
            ),
            &["operation", "code"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(inflight.clone()))?;
        registry.register(Box::new(admin.clone()))?;
        Ok(Metrics {
            registry,
            requests,
            duration,
            inflight,
            admin,
        })
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(4096);
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}
