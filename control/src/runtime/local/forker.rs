//! When a function version has a zygote ([`super::zygote`]): started at deploy, replaced when it
//! dies, kept while the function is at zero for `FAAS_ZYGOTE_TTL`, then stopped (the next
//! activation starts the slow way and brings it back). Turned off for the version, with its
//! reason logged once, when the zygote path cannot work for its script: an import fails, threads
//! stay alive, a forked child exits before it is ready. Counts how replicas started.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::zygote::{memory_json, State, Zygote, ZygoteSpec};
use crate::metrics::ControlMetrics;

/// Deaths of a zygote we did not ask for, within [`DEATH_WINDOW`], after which it is not
/// replaced any more.
const MAX_DEATHS: usize = 3;
const DEATH_WINDOW: Duration = Duration::from_secs(60);

/// How a replica started, the `path` label of `faas_replica_starts_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum StartPath {
    /// Forked from the zygote.
    Zygote,
    /// Its interpreter started directly: the zygote is off, or not warm (yet, or any more).
    Direct,
    /// Directly, because the zygote path failed for it.
    Fallback,
}

impl StartPath {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            StartPath::Zygote => "zygote",
            StartPath::Direct => "direct",
            StartPath::Fallback => "fallback",
        }
    }
}

/// The zygote side of one function version.
pub(super) struct Forker {
    enabled: bool,
    spec: ZygoteSpec,
    current: Mutex<Option<Arc<Zygote>>>,
    /// Why the zygote path is off for this version.
    off: Mutex<Option<String>>,
    deaths: Mutex<VecDeque<Instant>>,
    ttl_timer: Mutex<Option<JoinHandle<()>>>,
    starts: [AtomicU64; 3],
    metrics: Arc<OnceLock<ControlMetrics>>,
}

// === impl Forker ===

impl Forker {
    /// The forker of a version; with `enabled` and `start`, its zygote starts at once.
    pub fn new(
        enabled: bool,
        spec: ZygoteSpec,
        metrics: Arc<OnceLock<ControlMetrics>>,
        start: bool,
    ) -> Arc<Self> {
        let me = Arc::new(Forker {
            enabled,
            spec,
            current: Mutex::new(None),
            off: Mutex::new(None),
            deaths: Mutex::new(VecDeque::new()),
            ttl_timer: Mutex::new(None),
            starts: Default::default(),
            metrics,
        });
        if start {
            me.ensure();
        }
        me
    }

    /// Starts a zygote unless one runs or the path is off.
    pub fn ensure(self: &Arc<Self>) {
        if !self.enabled || lock(&self.off).is_some() {
            return;
        }
        let mut current = lock(&self.current);
        if current
            .as_ref()
            .is_some_and(|z| !matches!(z.state(), State::Gone))
        {
            return;
        }
        match Zygote::start(&self.spec) {
            Ok(z) => {
                let z = Arc::new(z);
                tokio::spawn(self.clone().watch(z.subscribe(), Arc::downgrade(&z)));
                *current = Some(z);
            }
            Err(e) => {
                drop(current);
                self.turn_off(format!("the zygote could not start: {e}"));
            }
        }
    }

    /// Follows a zygote: turns the path off when it fails, replaces it when it dies unasked.
    async fn watch(self: Arc<Self>, mut state: watch::Receiver<State>, z: Weak<Zygote>) {
        let end = state
            .wait_for(|s| matches!(s, State::Gone | State::Failed(_)))
            .await
            .map(|s| s.clone())
            .unwrap_or(State::Gone);
        if let State::Failed(why) = end {
            self.turn_off(why);
            return;
        }
        // Gone: was it stopped (it is no longer current), or did it die?
        {
            let mut current = lock(&self.current);
            let died = current
                .as_ref()
                .is_some_and(|c| Arc::downgrade(c).ptr_eq(&z));
            if !died {
                return;
            }
            *current = None;
        }
        let now = Instant::now();
        let too_many = {
            let mut d = lock(&self.deaths);
            d.retain(|t| now.duration_since(*t) < DEATH_WINDOW);
            d.push_back(now);
            d.len() >= MAX_DEATHS
        };
        if too_many {
            self.turn_off(format!(
                "the zygote died {MAX_DEATHS} times within {DEATH_WINDOW:?}"
            ));
        } else {
            log::warn!(
                "{}: the zygote of version {} died; starting another",
                self.spec.name,
                self.spec.version
            );
            self.ensure();
        }
    }

    /// The zygote, when it is warm; otherwise `None` (and one is started if none runs).
    pub fn warm(self: &Arc<Self>) -> Option<Arc<Zygote>> {
        if !self.enabled || lock(&self.off).is_some() {
            return None;
        }
        let z = lock(&self.current).clone();
        match z {
            Some(z) if z.state() == State::Warm => Some(z),
            Some(_) => None,
            None => {
                self.ensure();
                None
            }
        }
    }

    /// Turns the zygote path off for this version (logged once) and stops the zygote.
    pub fn turn_off(&self, why: String) {
        {
            let mut off = lock(&self.off);
            if off.is_some() {
                return;
            }
            log::warn!(
                "{}: replicas of version {} start without the zygote: {why}",
                self.spec.name,
                self.spec.version
            );
            self.spec.logs.push(format!(
                "[faas] replicas start without the zygote (slower cold starts): {why}"
            ));
            *off = Some(why);
        }
        if let Some(z) = lock(&self.current).take() {
            tokio::spawn(stop(z));
        }
    }

    /// The function went to zero: the zygote stays for `ttl`, then goes.
    pub fn at_zero(self: &Arc<Self>, ttl: Duration) {
        let me = Arc::downgrade(self);
        let timer = tokio::spawn(async move {
            tokio::time::sleep(ttl).await;
            if let Some(me) = me.upgrade() {
                let z = lock(&me.current).take();
                if let Some(z) = z {
                    log::info!(
                        "{}: zygote stopped after {ttl:?} at zero (FAAS_ZYGOTE_TTL)",
                        me.spec.name
                    );
                    stop(z).await;
                }
            }
        });
        if let Some(old) = lock(&self.ttl_timer).replace(timer) {
            old.abort();
        }
    }

    /// The function has replicas again: no stop is due; its zygote comes back if it went.
    pub fn busy(self: &Arc<Self>) {
        if let Some(t) = lock(&self.ttl_timer).take() {
            t.abort();
        }
        self.ensure();
    }

    /// Stops the zygote (and so any child of it still running) for good.
    pub async fn stop(&self) {
        if let Some(t) = lock(&self.ttl_timer).take() {
            t.abort();
        }
        *lock(&self.off) = Some("stopped".into());
        let z = lock(&self.current).take();
        if let Some(z) = z {
            stop(z).await;
        }
    }

    /// Counts a replica start.
    pub fn count(&self, path: StartPath) {
        self.starts[path as usize].fetch_add(1, Ordering::Relaxed);
        if let Some(m) = self.metrics.get() {
            m.replica_starts
                .with_label_values(&[&self.spec.name, path.as_str()])
                .inc();
        }
    }

    /// The zygote's part of the function's status.
    pub fn status(&self) -> Value {
        let z = lock(&self.current).clone();
        let off = lock(&self.off).clone();
        let state = match (&z, &off) {
            _ if !self.enabled => "disabled".to_string(),
            (_, Some(_)) => "off".to_string(),
            (Some(z), None) => match z.state() {
                State::Warm => "warm",
                State::Starting => "starting",
                State::Failed(_) => "off",
                State::Gone => "stopped",
            }
            .to_string(),
            (None, None) => "stopped".to_string(),
        };
        let n = |p: StartPath| self.starts[p as usize].load(Ordering::Relaxed);
        let mut v = json!({
            "state": state,
            "warm": state == "warm",
            "version": self.spec.version,
            "pid": z.as_ref().and_then(|z| z.pid()),
            "why_off": off,
            "starts": {
                "zygote": n(StartPath::Zygote),
                "direct": n(StartPath::Direct),
                "fallback": n(StartPath::Fallback),
            },
        });
        if let (Some(obj), Value::Object(mem)) = (
            v.as_object_mut(),
            memory_json(z.as_ref().and_then(|z| z.memory())),
        ) {
            obj.extend(mem);
        }
        v
    }
}

impl Drop for Forker {
    fn drop(&mut self) {
        if let Some(t) = lock(&self.ttl_timer).take() {
            t.abort();
        }
    }
}

async fn stop(z: Arc<Zygote>) {
    // The last holder stops it; a replica forking right now holds it a moment longer, and
    // dropping it then stops it too.
    if let Ok(z) = Arc::try_unwrap(z) {
        z.stop().await;
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
