//! The background service that owns the runtime's life: it restores stored functions on start,
//! runs the activation, reaper and autoscaler loops, and on shutdown drains in-flight requests,
//! stops every replica and exits within the grace period.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use control::autoscaler::{self, AutoscaleConfig};
use control::config::Config;
use control::metrics::ControlMetrics;
use control::reaper::{self, ReaperConfig};
use control::registry::{Registry, ScaleRequest};
use control::runtime::Runtime;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use tokio::sync::mpsc;

/// Restores, activates, reaps, autoscales, and stops cleanly.
pub struct Lifecycle {
    cfg: Arc<Config>,
    registry: Registry,
    runtime: Arc<dyn Runtime>,
    metrics: ControlMetrics,
    scale_rx: Mutex<Option<mpsc::UnboundedReceiver<ScaleRequest>>>,
}

impl Lifecycle {
    /// The service over a registry, its scale-request receiver and a runtime.
    pub fn new(
        cfg: Arc<Config>,
        registry: Registry,
        scale_rx: mpsc::UnboundedReceiver<ScaleRequest>,
        runtime: Arc<dyn Runtime>,
        metrics: ControlMetrics,
    ) -> Self {
        Lifecycle {
            cfg,
            registry,
            runtime,
            metrics,
            scale_rx: Mutex::new(Some(scale_rx)),
        }
    }

    fn inflight(&self) -> usize {
        self.registry
            .snapshot()
            .values()
            .map(|e| e.inflight.load(Ordering::Acquire))
            .sum()
    }
}

#[async_trait]
impl BackgroundService for Lifecycle {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        self.runtime.set_metrics(self.metrics.clone());
        match self.runtime.restore().await {
            Ok(names) if !names.is_empty() => log::info!("restored {} function(s)", names.len()),
            Ok(_) => {}
            Err(e) => log::error!("could not restore stored functions: {e}"),
        }
        self.registry.set_restored();
        let rx = self
            .scale_rx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(rx) = rx {
            tokio::spawn(control::scaler::run(
                rx,
                self.registry.clone(),
                self.runtime.clone(),
                self.metrics.clone(),
                self.cfg.activation_timeout,
            ));
        }
        let reaper_cfg = ReaperConfig {
            poll_every: self.cfg.reaper_poll_every,
            time_to_live: self.cfg.reaper_time_to_live,
        };
        let reaper = tokio::spawn(reaper::run(
            reaper_cfg,
            self.registry.clone(),
            self.runtime.clone(),
            self.metrics.clone(),
        ));
        let autoscale_cfg = AutoscaleConfig {
            window: self.cfg.autoscale_window,
            scale_down_delay: self.cfg.scale_down_delay,
        };
        let autoscaler = tokio::spawn(autoscaler::run(
            autoscale_cfg,
            self.registry.clone(),
            self.runtime.clone(),
        ));
        let _ = shutdown.wait_for(|stop| *stop).await;
        reaper.abort();
        autoscaler.abort();

        // Listeners are closed now. Let in-flight requests finish, then stop the replicas.
        let started = Instant::now();
        let drain_budget = self.cfg.shutdown_grace.mul_f32(0.6);
        while self.inflight() > 0 && started.elapsed() < drain_budget {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let left = self.inflight();
        if left > 0 {
            log::warn!("{left} request(s) still in flight after {drain_budget:?}; stopping anyway");
        }
        self.runtime.shutdown().await;
        log::info!("stopped all replicas in {:?}; exiting", started.elapsed());
        std::process::exit(0);
    }
}
