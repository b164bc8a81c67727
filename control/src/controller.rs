//! The controller owns the control loops and the runtime's life. On start it restores stored
//! functions, then runs, on every gateway replica, the scaler (activations the gateway asks for)
//! and the activity sampler; on the leader only, the reaper and the autoscaler, which start when
//! this replica becomes the leader and stop the moment it is not. With one gateway (the local
//! runtime) it always leads; on Kubernetes it leads while it holds the Lease
//! `<GATEWAY_SERVICE_NAME>-leader`, and decides from the activity of every replica of the
//! gateway's Service. On shutdown it gives up the Lease, drains in-flight requests and stops the
//! runtime's replicas.

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use prometheus::IntGaugeVec;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::autoscaler::{self, AutoscaleConfig};
use crate::config::Config;
use crate::metrics::ControlMetrics;
use crate::reaper::{self, ReaperConfig};
use crate::registry::{Registry, ScaleRequest};
use crate::runtime::kube::KubeRuntime;
use crate::runtime::Runtime;
use crate::scaling::activity::Activity;
use crate::scaling::leader::{Leadership, Lease};
use crate::scaling::peers::Peers;

/// Restores, activates, reaps, autoscales (when leading), and stops cleanly.
pub struct Controller {
    cfg: Arc<Config>,
    registry: Registry,
    runtime: Arc<dyn Runtime>,
    metrics: ControlMetrics,
    scale_rx: Mutex<Option<mpsc::UnboundedReceiver<ScaleRequest>>>,
    activity: Activity,
    /// The Kubernetes runtime, when functions run there: the Lease and the peers come from it.
    cluster: Option<KubeRuntime>,
    /// The controller's own runtime, once it runs.
    offload: Offload,
}

/// Runs the control side's work (the admin API's runtime calls, with their file I/O, `/proc`
/// scans, uv runs and the replica supervisors they spawn) on the controller's runtime, off the
/// gateway's pinned threads. Before the controller runs, on the caller's runtime. Cheap to clone.
#[derive(Clone, Default)]
pub struct Offload(Arc<OnceLock<tokio::runtime::Handle>>);

// === impl Controller ===

impl Controller {
    /// A controller over a registry, its scale-request receiver and a runtime; `cluster` is the
    /// same runtime when it is the Kubernetes one (leader election and peers).
    pub fn new(
        cfg: Arc<Config>,
        registry: Registry,
        scale_rx: mpsc::UnboundedReceiver<ScaleRequest>,
        runtime: Arc<dyn Runtime>,
        metrics: ControlMetrics,
        cluster: Option<KubeRuntime>,
    ) -> Self {
        let activity = Activity::new(registry.clone(), replica_name(&cfg), cfg.autoscale_window);
        Controller {
            cfg,
            registry,
            runtime,
            metrics,
            scale_rx: Mutex::new(Some(scale_rx)),
            activity,
            cluster,
            offload: Offload::default(),
        }
    }

    /// Where the admin API runs its runtime calls: this controller's runtime.
    pub fn offload(&self) -> Offload {
        self.offload.clone()
    }

    /// This replica's activity, which the admin API serves to the leader.
    pub fn activity(&self) -> Activity {
        self.activity.clone()
    }

    /// Runs until `shutdown` completes, then drains and stops the runtime's replicas.
    pub async fn run(&self, shutdown: impl Future<Output = ()>) {
        let _ = self.offload.0.set(tokio::runtime::Handle::current());
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
        let mut tasks: Vec<JoinHandle<()>> = Vec::new();
        if let Some(rx) = rx {
            tasks.push(tokio::spawn(crate::scaler::run(
                rx,
                self.registry.clone(),
                self.runtime.clone(),
                self.metrics.clone(),
                self.cfg.activation_timeout,
            )));
        }
        tasks.push(tokio::spawn(self.activity.clone().run()));
        let (leadership, peers) = self.leadership().await;
        let lead = self.lead(leadership.leading.clone(), peers);
        tokio::select! {
            _ = lead => {}
            _ = shutdown => {}
        }
        for t in &tasks {
            t.abort();
        }
        // Every receiver but the Leadership's is gone with `lead`: resigning releases the Lease.
        leadership.resign().await;
        self.metrics
            .leader
            .with_label_values(&[&replica_name(&self.cfg)])
            .set(0);
        self.drain().await;
    }

    /// How this replica leads and whom it asks for activity.
    async fn leadership(&self) -> (Leadership, Peers) {
        let Some(kube) = &self.cluster else {
            return (Leadership::always(), Peers::alone());
        };
        let client = match kube.client().await {
            Ok(c) => c,
            Err(e) => {
                // No API server, no functions to reap: nothing to lead.
                log::error!("leader election needs the API server: {e}");
                let (_tx, leading) = tokio::sync::watch::channel(false);
                let mut l = Leadership::always();
                l.leading = leading;
                return (l, Peers::alone());
            }
        };
        let lease = Lease {
            client,
            namespace: kube.namespace().to_string(),
            name: format!("{}-leader", self.cfg.gateway_service_name),
            identity: replica_name(&self.cfg),
            duration: self.cfg.leader_lease_duration,
        };
        let kube = kube.clone();
        let peers = Peers::new(
            Arc::new(move || kube.gateway_peers()),
            self.cfg.admin_token.clone(),
        );
        (Leadership::elect(lease), peers)
    }

    /// Forever: while leading, runs the reaper and the autoscaler; stops them at once when
    /// leadership is lost.
    async fn lead(&self, mut leading: tokio::sync::watch::Receiver<bool>, peers: Peers) {
        let gauge: IntGaugeVec = self.metrics.leader.clone();
        let me = replica_name(&self.cfg);
        gauge.with_label_values(&[&me]).set(0);
        loop {
            if leading.wait_for(|l| *l).await.is_err() {
                return std::future::pending().await;
            }
            log::info!("{me} leads: running the reaper and the autoscaler");
            gauge.with_label_values(&[&me]).set(1);
            let reaper = tokio::spawn(reaper::run(
                ReaperConfig {
                    poll_every: self.cfg.reaper_poll_every,
                    time_to_live: self.cfg.reaper_time_to_live,
                },
                self.registry.clone(),
                self.runtime.clone(),
                self.metrics.clone(),
                self.activity.clone(),
                peers.clone(),
            ));
            let autoscaler = tokio::spawn(autoscaler::run(
                AutoscaleConfig {
                    window: self.cfg.autoscale_window,
                    scale_down_delay: self.cfg.scale_down_delay,
                },
                self.registry.clone(),
                self.runtime.clone(),
                self.activity.clone(),
                peers.clone(),
            ));
            // Aborted when this future is dropped (shutdown) as well.
            let _stop = AbortOnDrop(vec![reaper, autoscaler]);
            let lost = leading.wait_for(|l| !*l).await.is_ok();
            drop(_stop);
            gauge.with_label_values(&[&me]).set(0);
            if !lost {
                // Leadership can no longer change (always the leader).
                return std::future::pending().await;
            }
            log::warn!("{me} is no longer the leader: reaper and autoscaler stopped");
        }
    }

    /// Listeners are closed: lets in-flight requests finish, then stops the replicas.
    async fn drain(&self) {
        let started = Instant::now();
        let inflight = || -> usize {
            self.registry
                .snapshot()
                .values()
                .map(|e| e.inflight.load(Ordering::Acquire))
                .sum()
        };
        let drain_budget = self.cfg.shutdown_grace.mul_f32(0.6);
        while inflight() > 0 && started.elapsed() < drain_budget {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let left = inflight();
        if left > 0 {
            log::warn!("{left} request(s) still in flight after {drain_budget:?}; stopping anyway");
        }
        self.runtime.shutdown().await;
        log::info!("stopped all replicas in {:?}", started.elapsed());
    }
}

// === impl Offload ===

impl Offload {
    /// Spawns `f` on the controller's runtime.
    pub fn spawn<F>(&self, f: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        match self.0.get() {
            Some(h) => h.spawn(f),
            None => tokio::spawn(f),
        }
    }

    /// Runs `f` on the controller's runtime and waits for it.
    pub async fn run<T: Send + 'static>(
        &self,
        f: impl Future<Output = crate::Result<T>> + Send + 'static,
    ) -> crate::Result<T> {
        match self.spawn(f).await {
            Ok(r) => r,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => Err(crate::Error::Unavailable("faas is shutting down".into())),
        }
    }
}

/// Aborts its tasks when dropped.
struct AbortOnDrop(Vec<JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

/// This replica's name: `POD_NAME`, else the host name.
fn replica_name(cfg: &Config) -> String {
    if !cfg.pod_name.is_empty() {
        return cfg.pod_name.clone();
    }
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "faas".to_string())
}
