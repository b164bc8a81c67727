//! The local runtime: functions as child processes on this machine, kept in a state directory.

pub mod affinity;
mod cgroup;
mod forker;
mod listen;
mod packets;
mod replica;
pub mod sandbox;
mod store;
mod uv;
mod zygote;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::sync::Mutex as AsyncMutex;

use self::forker::Forker;
use self::replica::{Replica, ReplicaCtx};
use self::sandbox::Sandbox;
use self::store::Store;
use self::uv::PythonEnv;
use self::zygote::ZygoteSpec;
use super::Runtime;
use crate::config::Config;
use crate::function::{DeployRequest, FunctionDef};
use crate::logbuf::{Follow, LogBuf};
use crate::metrics::ControlMetrics;
use crate::registry::{FnEntry, Registry};
use crate::{Error, Result};

/// Lines of output kept per function.
const LOG_LINES: usize = 2000;

/// Runs functions as sandboxed child processes: each replica runs its script environment's
/// interpreter (prepared by `uv` at deploy) in a sandbox ([`sandbox`]), forked from a zygote
/// of its function version where that works ([`zygote`]).
#[derive(Clone)]
pub struct LocalRuntime {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    registry: Registry,
    uv: String,
    sandbox: Arc<Sandbox>,
    deploy_timeout: Duration,
    drain_timeout: Duration,
    fns: Mutex<HashMap<String, Slot>>,
    /// Per function, held by its update from start to end: updates of one function take turns
    /// (activations, scales and reads never wait for it; see `update`).
    updating: Mutex<HashMap<String, Arc<AsyncMutex<()>>>>,
    next_replica: AtomicU64,
    /// Set by `shutdown`: no replica starts after it.
    stopping: AtomicBool,
    /// `FAAS_ZYGOTE`.
    zygote: bool,
    /// `FAAS_ZYGOTE_TTL`, or the function's idle timeout, or `REAPER_TIME_TO_LIVE`.
    zygote_ttl: Option<Duration>,
    idle_timeout: Duration,
    /// The zygote side of each function's live version, for its status.
    forkers: Mutex<HashMap<String, Arc<Forker>>>,
    metrics: Arc<OnceLock<ControlMetrics>>,
}

/// A function's place in the runtime; `None` while it is being created or after deletion.
type Slot = Arc<AsyncMutex<Option<LocalFn>>>;

struct LocalFn {
    def: FunctionDef,
    script: PathBuf,
    python: Arc<PythonEnv>,
    env: Arc<Vec<(String, String)>>,
    replicas: Vec<Replica>,
    logs: Arc<LogBuf>,
    entry: Arc<FnEntry>,
    forker: Arc<Forker>,
}

// === impl LocalRuntime ===

impl LocalRuntime {
    /// Opens the state directory and stops replicas left behind by an earlier run that died.
    pub fn new(cfg: &Config, registry: Registry) -> Result<Self> {
        let store = Store::open(&cfg.state_dir)?;
        let ours = cfg.state_dir.to_string_lossy().into_owned();
        for pgid in store.take_stale_pids() {
            // Only a group whose leader still runs one of our scripts: after a reboot the number
            // may belong to anything.
            let cmdline = std::fs::read(format!("/proc/{pgid}/cmdline")).unwrap_or_default();
            if pgid <= 0 || !String::from_utf8_lossy(&cmdline).contains(&ours) {
                continue;
            }
            if killpg(Pid::from_raw(pgid), Signal::SIGKILL).is_ok() {
                log::warn!("stopped replica process group {pgid} left behind by an earlier run");
            }
        }
        let sandbox = Arc::new(Sandbox::new(cfg)?);
        Ok(LocalRuntime {
            inner: Arc::new(Inner {
                store,
                registry,
                uv: cfg.uv.clone(),
                sandbox,
                deploy_timeout: cfg.deploy_timeout,
                drain_timeout: cfg.shutdown_grace.mul_f32(0.6),
                fns: Mutex::new(HashMap::new()),
                updating: Mutex::new(Default::default()),
                next_replica: AtomicU64::new(1),
                stopping: AtomicBool::new(false),
                zygote: cfg.zygote,
                zygote_ttl: cfg.zygote_ttl,
                idle_timeout: cfg.reaper_time_to_live,
                forkers: Mutex::new(HashMap::new()),
                metrics: Arc::new(OnceLock::new()),
            }),
        })
    }

    fn slot(&self, name: &str) -> Result<Slot> {
        let fns = self.inner.fns.lock().unwrap_or_else(|p| p.into_inner());
        fns.get(name)
            .cloned()
            .ok_or_else(|| Error::NotFound(name.to_string()))
    }

    fn ctx(&self, f: &LocalFn) -> ReplicaCtx {
        ReplicaCtx {
            entry: f.entry.clone(),
            script: f.script.clone(),
            python: f.python.clone(),
            limits: f.def.spec.limits.clone(),
            env: f.env.clone(),
            logs: f.logs.clone(),
            sandbox: self.inner.sandbox.clone(),
            store: self.inner.store.clone(),
            drain_timeout: self.inner.drain_timeout,
            forker: f.forker.clone(),
        }
    }

    /// The zygote side of a version; its zygote starts at once with `start`.
    fn forker(
        &self,
        def: &FunctionDef,
        script: &std::path::Path,
        python: &Arc<PythonEnv>,
        logs: &Arc<LogBuf>,
        start: bool,
    ) -> Arc<Forker> {
        let spec = ZygoteSpec {
            name: def.spec.name.clone(),
            version: def.spec.version,
            script: script.to_path_buf(),
            python: python.clone(),
            env: Arc::new(def.env.clone()),
            limits: def.spec.limits.clone(),
            sandbox: self.inner.sandbox.clone(),
            store: self.inner.store.clone(),
            logs: logs.clone(),
        };
        let f = Forker::new(self.inner.zygote, spec, self.inner.metrics.clone(), start);
        if def.spec.replicas == 0 && start {
            f.at_zero(self.zygote_ttl(def));
        }
        self.inner
            .forkers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(def.spec.name.clone(), f.clone());
        f
    }

    /// How long a function's zygote stays while it is at zero.
    fn zygote_ttl(&self, def: &FunctionDef) -> Duration {
        self.inner
            .zygote_ttl
            .or(def.spec.idle_timeout())
            .unwrap_or(self.inner.idle_timeout)
    }

    fn start_replicas(&self, ctx: &ReplicaCtx, n: u32) -> Vec<Replica> {
        (0..n)
            .map(|_| {
                let id = self.inner.next_replica.fetch_add(1, Ordering::Relaxed);
                Replica::start(ctx.clone(), id)
            })
            .collect()
    }

    /// Waits until every replica in `ids` is ready, a start fails, or the deploy timeout passes.
    async fn wait_ready(&self, entry: &FnEntry, ids: &[u64], logs: &LogBuf) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut rx = entry.subscribe();
        let wait = async {
            rx.wait_for(|r| {
                r.failure.is_some()
                    || ids
                        .iter()
                        .all(|id| r.endpoints.iter().any(|e| e.replica == *id))
            })
            .await
            .map(|state| state.failure.clone())
        };
        match tokio::time::timeout(self.inner.deploy_timeout, wait).await {
            Ok(Ok(None)) => Ok(()),
            Ok(Ok(Some(why))) => Err(Error::Unprocessable(why.to_string())),
            Ok(Err(_)) => Err(Error::NotFound(entry.name.clone())),
            Err(_) => Err(Error::Timeout(format!(
                "the function was not ready after {:?} (FAAS_DEPLOY_TIMEOUT); last output:\n{}",
                self.inner.deploy_timeout,
                logs.tail(15).join("\n")
            ))),
        }
    }

    fn register(&self, def: FunctionDef, script: PathBuf, python: PythonEnv) -> LocalFn {
        let entry = self.inner.registry.insert(def.spec.clone());
        self.local_fn(
            def,
            script,
            python,
            entry,
            Arc::new(LogBuf::new(LOG_LINES)),
            true,
        )
    }

    fn local_fn(
        &self,
        def: FunctionDef,
        script: PathBuf,
        python: PythonEnv,
        entry: Arc<FnEntry>,
        logs: Arc<LogBuf>,
        start_zygote: bool,
    ) -> LocalFn {
        let python = Arc::new(python);
        let forker = self.forker(&def, &script, &python, &logs, start_zygote);
        LocalFn {
            env: Arc::new(def.env.clone()),
            python,
            def,
            script,
            replicas: Vec::new(),
            logs,
            entry,
            forker,
        }
    }

    /// Prepares a version's environment with uv and records it beside the script.
    async fn prepare(&self, def: &FunctionDef, script: &std::path::Path) -> Result<PythonEnv> {
        let name = &def.spec.name;
        let env = uv::prepare(&self.inner.uv, script, name).await?;
        self.inner
            .store
            .write_python_env(name, def.spec.version, &env)?;
        Ok(env)
    }
}

/// Stops a version: its replicas, then its zygote.
async fn stop_version(replicas: Vec<Replica>, forker: Arc<Forker>) {
    stop_all(replicas).await;
    forker.stop().await;
}

async fn stop_all(replicas: Vec<Replica>) {
    let tasks: Vec<_> = replicas
        .into_iter()
        .map(|r| tokio::spawn(r.stop()))
        .collect();
    for t in tasks {
        let _ = t.await;
    }
}

#[async_trait]
impl Runtime for LocalRuntime {
    async fn restore(&self) -> Result<Vec<String>> {
        let defs = self.inner.store.load_all();
        let entries = self
            .inner
            .registry
            .insert_all(defs.iter().map(|d| d.spec.clone()).collect());
        let mut names = Vec::with_capacity(defs.len());
        for (def, entry) in defs.into_iter().zip(entries) {
            let name = def.spec.name.clone();
            let script = self
                .inner
                .store
                .version_dir(&name, def.spec.version)
                .join("main.py");
            let replicas = def.spec.replicas;
            // Recorded at deploy; prepared again if uv's cache lost it (or an older faas
            // deployed it).
            let python = match self.inner.store.load_python_env(&name, def.spec.version) {
                Some(p) if p.exists() => p,
                _ => match self.prepare(&def, &script).await {
                    Ok(p) => p,
                    Err(e) => {
                        // Kept on disk: the next start tries again.
                        log::error!(
                            "function {name} is not served: its environment cannot be prepared: {e}"
                        );
                        self.inner.registry.remove(&name);
                        continue;
                    }
                },
            };
            // Functions at zero get their zygote back at their next activation.
            let mut f = self.local_fn(
                def,
                script,
                python,
                entry,
                Arc::new(LogBuf::new(LOG_LINES)),
                replicas > 0,
            );
            let ctx = self.ctx(&f);
            f.replicas = self.start_replicas(&ctx, replicas);
            if replicas > 0 {
                log::info!("restored function {name} with {replicas} replica(s)");
            }
            let mut fns = self.inner.fns.lock().unwrap_or_else(|p| p.into_inner());
            fns.insert(name.clone(), Arc::new(AsyncMutex::new(Some(f))));
            names.push(name);
        }
        Ok(names)
    }

    async fn create(&self, def: FunctionDef) -> Result<()> {
        let name = def.spec.name.clone();
        let slot: Slot = Arc::new(AsyncMutex::new(None));
        let mut guard = slot
            .clone()
            .try_lock_owned()
            .map_err(|e| Error::internal("locking new function", e))?;
        {
            let mut fns = self.inner.fns.lock().unwrap_or_else(|p| p.into_inner());
            if fns.contains_key(&name) {
                return Err(Error::Conflict(name));
            }
            fns.insert(name.clone(), slot);
        }
        let result = async {
            let script = self.inner.store.write_version(&def)?;
            let python = self.prepare(&def, &script).await?;
            self.inner.store.commit(&def.spec)?;
            let replicas = def.spec.replicas;
            let mut f = self.register(def, script, python);
            let ctx = self.ctx(&f);
            f.replicas = self.start_replicas(&ctx, replicas);
            let ids: Vec<u64> = f.replicas.iter().map(|r| r.id).collect();
            let ready = self.wait_ready(&f.entry, &ids, &f.logs).await;
            Ok::<_, Error>((f, ready))
        }
        .await;
        match result {
            Ok((f, Ok(()))) => {
                *guard = Some(f);
                Ok(())
            }
            Ok((f, Err(e))) => {
                stop_version(f.replicas, f.forker).await;
                self.inner.registry.remove(&name);
                self.forget(&name)?;
                Err(e)
            }
            Err(e) => {
                self.forget(&name)?;
                Err(e)
            }
        }
    }

    async fn update(&self, name: &str, req: DeployRequest) -> Result<()> {
        let name = name.to_string();
        let slot = self.slot(&name)?;
        // The function's lock is held only to read it and to switch versions, not across uv or
        // the new replicas' start: meanwhile it serves, scales and is activated as usual. One
        // update of a function at a time.
        let turn = self
            .inner
            .updating
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(name.clone())
            .or_default()
            .clone();
        let _turn = turn.lock().await;
        let (def, old_version, entry, logs, old_forker, read_replicas) = {
            let guard = slot.lock().await;
            let f = guard
                .as_ref()
                .ok_or_else(|| Error::NotFound(name.clone()))?;
            if self.inner.stopping.load(Ordering::Acquire) {
                return Err(Error::Unavailable("faas is shutting down".into()));
            }
            let def = req.apply_to(&f.def, crate::now_ms())?;
            let old = f.def.spec.version;
            let replicas = f.def.spec.replicas;
            (
                def,
                old,
                f.entry.clone(),
                f.logs.clone(),
                f.forker.clone(),
                replicas,
            )
        };
        let script = self.inner.store.write_version(&def)?;
        let python = match self.prepare(&def, &script).await {
            Ok(p) => p,
            Err(e) => {
                self.inner.store.remove_version(&name, def.spec.version);
                return Err(e);
            }
        };
        let mut next = self.local_fn(def, script, python, entry, logs, true);
        let ctx = self.ctx(&next);
        // Keep at least the serving capacity of the old version while switching.
        let n = next.def.spec.replicas;
        next.replicas = self.start_replicas(&ctx, n);
        let ids: Vec<u64> = next.replicas.iter().map(|r| r.id).collect();
        let failed = self.wait_ready(&next.entry, &ids, &next.logs).await.err();
        let mut guard = slot.lock().await;
        let failed = match (failed, guard.as_mut()) {
            (Some(e), _) => Some(e),
            // Deleted meanwhile.
            (None, None) => Some(Error::NotFound(name.clone())),
            (None, Some(f)) => {
                // Scaled meanwhile (the reaper, an activation): the new version takes that count.
                if f.def.spec.replicas != read_replicas {
                    next.def.spec.replicas = f.def.spec.replicas;
                }
                self.inner.store.commit(&next.def.spec).err()
            }
        };
        if let Some(e) = failed {
            drop(guard);
            self.keep_forker(&name, &old_forker);
            stop_version(next.replicas, next.forker).await;
            self.inner
                .store
                .remove_version(&name, next.def.spec.version);
            next.entry.clear_failure();
            return Err(e);
        }
        let Some(f) = guard.as_mut() else {
            unreachable!("checked above, under the same lock");
        };
        next.entry.set_spec(next.def.spec.clone());
        let old = std::mem::replace(f, next);
        let live = f.def.spec.replicas;
        self.set_replicas(f, live);
        drop(guard);
        stop_version(old.replicas, old.forker).await;
        self.inner.store.remove_version(&name, old_version);
        Ok(())
    }

    async fn get(&self, name: &str) -> Result<FunctionDef> {
        let slot = self.slot(name)?;
        let guard = slot.lock().await;
        guard
            .as_ref()
            .map(|f| f.def.clone())
            .ok_or_else(|| Error::NotFound(name.to_string()))
    }

    async fn delete(&self, name: &str) -> Result<()> {
        let slot = self.slot(name)?;
        let mut guard = slot.lock().await;
        let f = guard
            .take()
            .ok_or_else(|| Error::NotFound(name.to_string()))?;
        self.inner.registry.remove(name);
        stop_version(f.replicas, f.forker).await;
        self.forget(name)
    }

    async fn scale(&self, name: &str, replicas: u32) -> Result<()> {
        let slot = self.slot(name)?;
        let mut guard = slot.lock().await;
        let f = guard
            .as_mut()
            .ok_or_else(|| Error::NotFound(name.to_string()))?;
        if self.inner.stopping.load(Ordering::Acquire) {
            return Err(Error::Unavailable("faas is shutting down".into()));
        }
        let mut spec = f.def.spec.clone();
        spec.replicas = replicas;
        self.inner.store.commit(&spec)?;
        f.entry.set_spec(spec.clone());
        f.def.spec = spec;
        self.set_replicas(f, replicas);
        Ok(())
    }

    async fn logs(&self, name: &str, tail: usize) -> Result<Vec<String>> {
        let slot = self.slot(name)?;
        let guard = slot.lock().await;
        guard
            .as_ref()
            .map(|f| f.logs.tail(tail))
            .ok_or_else(|| Error::NotFound(name.to_string()))
    }

    async fn follow_logs(&self, name: &str, tail: usize) -> Result<Follow> {
        let slot = self.slot(name)?;
        let guard = slot.lock().await;
        guard
            .as_ref()
            .map(|f| f.logs.follow(tail))
            .ok_or_else(|| Error::NotFound(name.to_string()))
    }

    async fn shutdown(&self) {
        self.inner.stopping.store(true, Ordering::Release);
        let slots: Vec<Slot> = {
            let fns = self.inner.fns.lock().unwrap_or_else(|p| p.into_inner());
            fns.values().cloned().collect()
        };
        let mut all = Vec::new();
        let mut forkers = Vec::new();
        for slot in slots {
            if let Some(f) = slot.lock().await.as_mut() {
                all.append(&mut f.replicas);
                forkers.push(f.forker.clone());
            }
        }
        stop_all(all).await;
        for f in forkers {
            f.stop().await;
        }
    }

    fn set_metrics(&self, metrics: ControlMetrics) {
        let _ = self.inner.metrics.set(metrics);
    }

    fn zygote_status(&self, name: &str) -> Option<serde_json::Value> {
        let forkers = self.inner.forkers.lock().unwrap_or_else(|p| p.into_inner());
        forkers.get(name).map(|f| f.status())
    }
}

impl LocalRuntime {
    /// Makes `forker` the one a function's status shows again (a failed update's is dropped).
    fn keep_forker(&self, name: &str, forker: &Arc<Forker>) {
        self.inner
            .forkers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_string(), forker.clone());
    }

    fn forget(&self, name: &str) -> Result<()> {
        self.inner
            .forkers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
        self.inner
            .fns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
        self.inner.store.remove(name)
    }
}

impl LocalRuntime {
    /// Starts or stops replicas of `f`'s live version until it has `replicas`.
    fn set_replicas(&self, f: &mut LocalFn, replicas: u32) {
        if replicas == 0 {
            f.forker.at_zero(self.zygote_ttl(&f.def));
        } else {
            f.forker.busy();
        }
        // A supervisor that gave up (no port, no process) is replaced.
        f.replicas.retain(|r| r.alive());
        let have = f.replicas.len() as u32;
        if replicas > have {
            let ctx = self.ctx(f);
            let more = self.start_replicas(&ctx, replicas - have);
            f.replicas.extend(more);
        } else if replicas < have {
            let gone = f.replicas.split_off(replicas as usize);
            // Draining may take a while; the function stays usable meanwhile.
            tokio::spawn(stop_all(gone));
        }
    }
}
