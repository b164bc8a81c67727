//! The live table of functions that the gateway routes from and the runtimes publish into.
//!
//! Lookups are lock-free (`ArcSwap` of an immutable map); each function's ready endpoints sit in
//! a `tokio::sync::watch` so that requests held during activation are woken by the runtime that
//! publishes the first endpoint, without polling.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use arc_swap::{ArcSwap, Guard};
use tokio::sync::{mpsc, watch};

use crate::admission::Waiters;
pub use crate::admission::{Endpoint, Outcome, Ticket};
use crate::function::FunctionSpec;

/// Requests one replica serves at once when its function sets no `max_concurrency`
/// (`FAAS_REPLICA_MAX_INFLIGHT`).
pub const DEFAULT_REPLICA_CAP: usize = 64;

/// What the gateway needs to route to a function; replaced as a whole on every change.
#[derive(Debug, Clone, Default)]
pub struct RouteState {
    /// Ready endpoints.
    pub endpoints: Arc<[Arc<Endpoint>]>,
    /// Why the last start failed, if it did since the last activation request.
    pub failure: Option<Arc<str>>,
}

/// One function as seen by the gateway, the admin API and the reaper.
pub struct FnEntry {
    /// The function's name.
    pub name: String,
    spec: ArcSwap<FunctionSpec>,
    route: watch::Sender<RouteState>,
    /// Requests in flight to this function (held ones included).
    pub inflight: AtomicUsize,
    /// Requests held waiting for a replica.
    pub pending: AtomicUsize,
    /// When a request last started or finished, on the monotonic clock ([`mono_ms`]): a step
    /// of the wall clock does not make every function look idle.
    last_activity_ms: AtomicU64,
    /// When the pending activation was asked for (ms on the monotonic clock), 0 when none is.
    activating: AtomicU64,
    /// The per-replica cap when the spec sets none.
    default_cap: usize,
    /// Requests waiting for a slot, and the per-replica cap ([`crate::admission`]).
    pub(crate) waiters: Waiters,
    /// The function's request series, resolved on its first request (see [`RequestSeries`]).
    pub series: OnceLock<RequestSeries>,
}

/// One function's request series, resolved once so that a request does no label lookup: the
/// 200 counter and the duration histogram (other codes are rarer and looked up).
#[derive(Debug, Clone)]
pub struct RequestSeries {
    /// `faas_gateway_requests_total{function, code="200"}`.
    pub ok: prometheus::IntCounter,
    /// `faas_gateway_request_duration_seconds{function}`.
    pub duration: prometheus::Histogram,
}

/// A request in flight to a function, counted in [`FnEntry::inflight`] while it lives; its end
/// marks the function active ([`FnEntry::touch`]). The one way the gateway counts requests.
#[derive(Debug)]
pub struct InFlight {
    entry: Arc<FnEntry>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.entry.inflight.fetch_sub(1, Ordering::AcqRel);
        self.entry.touch();
    }
}

/// How long an activation request stands before a new request may ask again.
const ACTIVATION_RETRY_MS: u64 = 2_000;

/// A request for a function's replica count, from the gateway to the control side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScaleRequest {
    /// The function.
    pub name: String,
    /// Replicas wanted.
    pub replicas: u32,
}

/// The table of functions. Cheap to clone.
#[derive(Clone)]
pub struct Registry {
    inner: Arc<Inner>,
}

struct Inner {
    table: ArcSwap<HashMap<String, Arc<FnEntry>>>,
    edit: Mutex<()>,
    scale_tx: mpsc::UnboundedSender<ScaleRequest>,
    /// The per-replica cap of functions that set none.
    default_cap: AtomicUsize,
    /// True once the runtime has brought back the functions of an earlier run.
    restored: watch::Sender<bool>,
}

// === impl Registry ===

impl Registry {
    /// A new empty registry and the receiving end of its scale requests.
    pub fn new() -> (Self, mpsc::UnboundedReceiver<ScaleRequest>) {
        let (scale_tx, rx) = mpsc::unbounded_channel();
        let inner = Inner {
            table: ArcSwap::from_pointee(HashMap::new()),
            edit: Mutex::new(()),
            scale_tx,
            default_cap: AtomicUsize::new(DEFAULT_REPLICA_CAP),
            restored: watch::Sender::new(false),
        };
        (
            Registry {
                inner: Arc::new(inner),
            },
            rx,
        )
    }

    /// Sets the per-replica cap of functions that set no `max_concurrency` (0: none), for the
    /// functions inserted from now on.
    pub fn set_default_cap(&self, cap: usize) {
        self.inner.default_cap.store(cap, Ordering::Relaxed);
    }

    fn new_entry(&self, spec: FunctionSpec) -> Arc<FnEntry> {
        Arc::new(FnEntry::new(
            spec,
            self.inner.default_cap.load(Ordering::Relaxed),
        ))
    }

    /// Marks the functions of an earlier run as restored (or given up on).
    pub fn set_restored(&self) {
        self.inner.restored.send_replace(true);
    }

    /// Waits (at most `timeout`) until the functions of an earlier run are restored, so that a
    /// request arriving just after a restart does not see a known function as missing.
    pub async fn wait_restored(&self, timeout: std::time::Duration) {
        let mut rx = self.inner.restored.subscribe();
        let _ = tokio::time::timeout(timeout, rx.wait_for(|r| *r)).await;
    }

    /// Whether the functions of an earlier run are restored.
    pub fn is_restored(&self) -> bool {
        *self.inner.restored.borrow()
    }

    /// The function called `name`, if any. Lock-free.
    pub fn get(&self, name: &str) -> Option<Arc<FnEntry>> {
        self.inner.table.load().get(name).cloned()
    }

    /// A snapshot of the whole table.
    pub fn snapshot(&self) -> Guard<Arc<HashMap<String, Arc<FnEntry>>>> {
        self.inner.table.load()
    }

    /// Adds a function, or returns the existing entry of that name.
    pub fn insert(&self, spec: FunctionSpec) -> Arc<FnEntry> {
        let _g = self.inner.edit.lock().unwrap_or_else(|p| p.into_inner());
        let current = self.inner.table.load();
        if let Some(e) = current.get(&spec.name) {
            e.set_spec(spec);
            return e.clone();
        }
        let entry = self.new_entry(spec);
        let mut next = HashMap::clone(&current);
        next.insert(entry.name.clone(), entry.clone());
        self.inner.table.store(Arc::new(next));
        entry
    }

    /// Adds many functions in one table swap (start-up with thousands of functions); existing
    /// names get the new spec.
    pub fn insert_all(&self, specs: Vec<FunctionSpec>) -> Vec<Arc<FnEntry>> {
        let _g = self.inner.edit.lock().unwrap_or_else(|p| p.into_inner());
        let mut next = HashMap::clone(&self.inner.table.load());
        let entries = specs
            .into_iter()
            .map(|spec| match next.get(&spec.name) {
                Some(e) => {
                    e.set_spec(spec);
                    e.clone()
                }
                None => {
                    let e = self.new_entry(spec);
                    next.insert(e.name.clone(), e.clone());
                    e
                }
            })
            .collect();
        self.inner.table.store(Arc::new(next));
        entries
    }

    /// Removes a function; held requests see it gone.
    pub fn remove(&self, name: &str) -> Option<Arc<FnEntry>> {
        let _g = self.inner.edit.lock().unwrap_or_else(|p| p.into_inner());
        let current = self.inner.table.load();
        let entry = current.get(name)?.clone();
        let mut next = HashMap::clone(&current);
        next.remove(name);
        self.inner.table.store(Arc::new(next));
        entry.publish_failure(format!("function {name:?} was deleted"));
        Some(entry)
    }

    /// Asks the control side for one activation of `entry` (scale 0 → 1). Only the first caller
    /// while an activation is under way sends the request; returns whether this call sent it.
    pub fn request_activation(&self, entry: &FnEntry) -> bool {
        // An activation that produced neither an endpoint nor a failure (its replica was scaled
        // away while starting, say) must not block the next one forever: it expires.
        let now = mono_ms().max(1); // monotonic: a wall-clock step neither expires nor freezes it
        let asked = entry.activating.load(Ordering::Acquire);
        if asked != 0 && now.saturating_sub(asked) < ACTIVATION_RETRY_MS {
            return false;
        }
        if entry
            .activating
            .compare_exchange(asked, now, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return false;
        }
        entry.route.send_modify(|r| r.failure = None);
        let req = ScaleRequest {
            name: entry.name.clone(),
            replicas: 1,
        };
        self.inner.scale_tx.send(req).is_ok()
    }
}

impl std::fmt::Debug for FnEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FnEntry")
            .field("name", &self.name)
            .field("ready", &self.ready())
            .field("inflight", &self.inflight)
            .field("pending", &self.pending)
            .finish_non_exhaustive()
    }
}

// === impl FnEntry ===

impl FnEntry {
    fn new(spec: FunctionSpec, default_cap: usize) -> Self {
        let cap = spec.max_concurrency.map_or(default_cap, |c| c as usize);
        FnEntry {
            name: spec.name.clone(),
            route: watch::Sender::new(RouteState::default()),
            inflight: AtomicUsize::new(0),
            pending: AtomicUsize::new(0),
            last_activity_ms: AtomicU64::new(mono_ms()),
            activating: AtomicU64::new(0),
            default_cap,
            waiters: Waiters::new(cap),
            series: OnceLock::new(),
            spec: ArcSwap::from_pointee(spec),
        }
    }

    /// Counts a request in flight until the guard is dropped.
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.inflight.fetch_add(1, Ordering::AcqRel);
        InFlight {
            entry: self.clone(),
        }
    }

    /// The current spec.
    pub fn spec(&self) -> Arc<FunctionSpec> {
        self.spec.load_full()
    }

    /// Replaces the spec.
    pub fn set_spec(&self, spec: FunctionSpec) {
        let cap = spec
            .max_concurrency
            .map_or(self.default_cap, |c| c as usize);
        self.spec.store(Arc::new(spec));
        self.waiters.cap.store(cap, Ordering::Relaxed);
        self.grant();
    }

    /// The route state now (endpoints, last failure).
    pub(crate) fn route_state(&self) -> watch::Ref<'_, RouteState> {
        self.route.borrow()
    }

    /// Requests waiting in line for a slot.
    pub fn queued(&self) -> usize {
        self.waiters.len()
    }

    /// Watches the route state (endpoints and start failures).
    pub fn subscribe(&self) -> watch::Receiver<RouteState> {
        self.route.subscribe()
    }

    /// Number of ready endpoints.
    pub fn ready(&self) -> usize {
        self.route.borrow().endpoints.len()
    }

    /// Publishes a newly ready endpoint and wakes held requests.
    pub fn add_endpoint(&self, ep: Arc<Endpoint>) {
        self.activating.store(0, Ordering::Release);
        self.route.send_modify(|r| {
            let mut v: Vec<_> = r
                .endpoints
                .iter()
                .filter(|e| e.replica != ep.replica)
                .cloned()
                .collect();
            v.push(ep);
            r.endpoints = v.into();
            r.failure = None;
        });
        self.grant();
    }

    /// Replaces the whole set of ready endpoints (a runtime that watches them, e.g. EndpointSlices).
    /// Endpoints that stay keep their identity and in-flight counts; new ones get fresh ids.
    pub fn set_endpoints(&self, addrs: &[SocketAddr]) {
        static NEXT_ID: AtomicU64 = AtomicU64::new(1 << 32);
        self.route.send_if_modified(|r| {
            let same = r.endpoints.len() == addrs.len()
                && addrs
                    .iter()
                    .all(|a| r.endpoints.iter().any(|e| e.addr == *a));
            if same {
                return false;
            }
            let next: Vec<Arc<Endpoint>> = addrs
                .iter()
                .map(|a| match r.endpoints.iter().find(|e| e.addr == *a) {
                    Some(e) => e.clone(),
                    None => Arc::new(Endpoint::new(*a, NEXT_ID.fetch_add(1, Ordering::Relaxed))),
                })
                .collect();
            if !next.is_empty() {
                r.failure = None;
            }
            r.endpoints = next.into();
            true
        });
        if !addrs.is_empty() {
            self.activating.store(0, Ordering::Release);
            self.grant();
        }
    }

    /// Withdraws an endpoint so that no new request goes to it.
    pub fn remove_endpoint(&self, replica: u64) {
        self.route.send_if_modified(|r| {
            if !r.endpoints.iter().any(|e| e.replica == replica) {
                return false;
            }
            r.endpoints = r
                .endpoints
                .iter()
                .filter(|e| e.replica != replica)
                .cloned()
                .collect();
            true
        });
    }

    /// Reports that a start failed, waking held requests so that they can fail fast.
    pub fn publish_failure(&self, why: String) {
        self.activating.store(0, Ordering::Release);
        self.route.send_modify(|r| r.failure = Some(why.into()));
    }

    /// Clears a reported failure before a new start.
    pub fn clear_failure(&self) {
        self.route.send_if_modified(|r| r.failure.take().is_some());
    }

    /// Marks activity now (a request finished or started).
    pub fn touch(&self) {
        self.last_activity_ms.store(mono_ms(), Ordering::Relaxed);
    }

    /// How long since the function last saw a request, on the monotonic clock.
    pub fn idle_for(&self) -> std::time::Duration {
        let last = self.last_activity_ms.load(Ordering::Relaxed);
        std::time::Duration::from_millis(mono_ms().saturating_sub(last))
    }

    /// When the function last saw a request, in milliseconds since the epoch (for display: now
    /// on the wall clock minus [`FnEntry::idle_for`]).
    pub fn last_activity_ms(&self) -> u64 {
        crate::now_ms().saturating_sub(self.idle_for().as_millis() as u64)
    }
}

/// Milliseconds since this process started, on the monotonic clock.
fn mono_ms() -> u64 {
    static START: std::sync::LazyLock<std::time::Instant> =
        std::sync::LazyLock::new(std::time::Instant::now);
    START.elapsed().as_millis() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str) -> FunctionSpec {
        FunctionSpec {
            max_replicas: 3,
            ..FunctionSpec::named(name)
        }
    }

    fn ep(replica: u64, inflight: usize) -> Arc<Endpoint> {
        let ep = Endpoint::new(([127, 0, 0, 1], 1000 + replica as u16).into(), replica);
        ep.inflight.store(inflight, Ordering::Relaxed);
        Arc::new(ep)
    }

    #[test]
    fn one_activation_for_many_requests() {
        let (reg, mut rx) = Registry::new();
        let e = reg.insert(spec("f"));
        assert!(reg.request_activation(&e));
        assert!(!reg.request_activation(&e));
        assert_eq!(rx.try_recv().unwrap().name, "f");
        assert!(rx.try_recv().is_err());
        e.add_endpoint(ep(1, 0));
        e.remove_endpoint(1);
        assert!(
            reg.request_activation(&e),
            "a new activation after the replica went away"
        );
    }

    #[test]
    fn picks_least_inflight() {
        let (reg, _rx) = Registry::new();
        reg.set_default_cap(0); // no cap, no slow start: only the balancing
        let e = reg.insert(spec("f"));
        e.add_endpoint(ep(1, 5));
        e.add_endpoint(ep(2, 1));
        let got = e.acquire().unwrap();
        assert_eq!(got.replica, 2);
        assert_eq!(got.inflight.load(Ordering::Relaxed), 2);
        e.release(&got);
        assert_eq!(
            e.acquire_avoiding(Some(2)).unwrap().replica,
            1,
            "a retry avoids the failed one"
        );
        e.remove_endpoint(2);
        assert_eq!(e.acquire().unwrap().replica, 1);
        assert_eq!(
            e.acquire_avoiding(Some(1)).unwrap().replica,
            1,
            "unless it is the only one"
        );
    }

    #[test]
    fn set_endpoints_keeps_the_identity_of_those_that_stay() {
        let (reg, _rx) = Registry::new();
        let e = reg.insert(spec("f"));
        let a: SocketAddr = ([10, 0, 0, 1], 8000).into();
        let b: SocketAddr = ([10, 0, 0, 2], 8000).into();
        e.set_endpoints(&[a]);
        let first = e.acquire().unwrap();
        e.set_endpoints(&[a, b]);
        assert_eq!(e.ready(), 2);
        let again = e
            .subscribe()
            .borrow()
            .endpoints
            .iter()
            .find(|x| x.addr == a)
            .cloned()
            .unwrap();
        assert!(Arc::ptr_eq(&first, &again));
        assert_eq!(again.inflight.load(Ordering::Relaxed), 1);
        e.set_endpoints(&[]);
        assert_eq!(e.ready(), 0);
    }

    #[test]
    fn concurrency_limit_holds_back_requests() {
        let (reg, _rx) = Registry::new();
        let mut s = spec("f");
        s.max_concurrency = Some(2);
        let e = reg.insert(s);
        e.add_endpoint(ep(1, 0));
        let a = e.acquire().unwrap();
        let _b = e.acquire().unwrap();
        assert!(e.acquire().is_none(), "a third request waits");
        e.release(&a);
        assert!(e.acquire().is_some());
    }

    #[tokio::test]
    async fn held_requests_are_woken_by_an_endpoint() {
        let (reg, _rx) = Registry::new();
        let e = reg.insert(spec("f"));
        let mut rx = e.subscribe();
        let e2 = e.clone();
        tokio::spawn(async move { e2.add_endpoint(ep(7, 0)) });
        let state = rx.wait_for(|r| !r.endpoints.is_empty()).await.unwrap();
        assert_eq!(state.endpoints[0].replica, 7);
    }
}
