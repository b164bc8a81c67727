//! Admission of requests to a function's replicas: how many each replica gets at once, and who
//! goes next when none has room.
//!
//! A replica is a process written by someone else, often Python's stdlib server with a listen
//! backlog of 5. Releasing hundreds of held requests onto it at once overflows its SYN queue,
//! and the excess waits on the client's SYN retransmits (1 s, 3 s, 7 s …) instead of in the
//! gateway. So:
//!
//! - **a cap per replica**: at most `option.max_concurrency`, else `FAAS_REPLICA_MAX_INFLIGHT`
//!   (64), requests in flight to one replica;
//! - **slow start**: a new replica's window opens at [`SLOW_START`] requests and grows by one
//!   for each answered request (doubling every round trip, as TCP's slow start) up to the cap;
//!   a connection it refuses or resets halves the window (at least one);
//! - **one FIFO queue per function**: a request that finds no room waits in line, and a freed
//!   slot goes to the first in line — never to a request that arrived later. Nobody barges:
//!   while anyone waits, new requests queue behind them.
//!
//! Invariant: every slot granted is taken (`inflight += 1`) before it is handed over, and given
//! back exactly once, by [`FnEntry::release`] or by a [`Ticket`] dropped with an unclaimed grant.

use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::sync::oneshot;

use crate::registry::FnEntry;

/// The window of a replica that just became ready: below the stdlib server's backlog of 5.
pub const SLOW_START: usize = 4;

/// A ready replica the gateway may send requests to.
#[derive(Debug)]
pub struct Endpoint {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Which replica of its function it is (unique per function while it lives).
    pub replica: u64,
    /// Requests being proxied to it now.
    pub inflight: AtomicUsize,
    /// Requests it may have in flight now (slow start), before the function's cap.
    window: AtomicUsize,
    /// Failed health probes in a row; at the threshold it is out of rotation.
    probe_fails: AtomicU32,
    /// It closes its connection after each answer (an HTTP/1.0 server such as Python's
    /// `http.server` by default): every request is a new connection, which its small listen
    /// backlog must take, so it gets at most [`ONE_SHOT_CAP`] at once.
    one_shot: std::sync::atomic::AtomicBool,
}

/// Requests at once to a replica that closes its connection after each answer: every one is a
/// connection its accept loop must take, below the stdlib server's backlog of 5 (+1).
pub const ONE_SHOT_CAP: usize = 6;

/// How a request that held a slot ended, for the replica's window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The replica answered: its window grows.
    Answered,
    /// Connecting to it failed (refused, reset, timed out): its window halves.
    ConnectFailed,
    /// Anything else (the client left, the replica failed mid-answer): no change.
    Other,
}

/// The queue of requests waiting for a slot.
#[derive(Debug, Default)]
pub(crate) struct Waiters {
    queue: Mutex<VecDeque<(u64, oneshot::Sender<Arc<Endpoint>>)>>,
    /// Length of `queue`, readable without the lock (the fast path's "anyone waiting?").
    queued: AtomicUsize,
    next_id: AtomicU64,
    /// Requests one replica may serve at once (0: no limit, no slow start).
    pub(crate) cap: AtomicUsize,
}

/// A place in a function's queue: resolves to a slot on a replica. Dropping it leaves the
/// queue, and gives back a slot granted but not claimed.
pub struct Ticket {
    entry: Arc<FnEntry>,
    id: u64,
    rx: oneshot::Receiver<Arc<Endpoint>>,
}

// === impl Endpoint ===

impl Endpoint {
    /// A replica that just became ready, its window at [`SLOW_START`].
    pub fn new(addr: SocketAddr, replica: u64) -> Self {
        Endpoint {
            addr,
            replica,
            inflight: AtomicUsize::new(0),
            window: AtomicUsize::new(SLOW_START),
            probe_fails: AtomicU32::new(0),
            one_shot: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Records whether its last answer kept the connection open.
    pub fn keeps_connections(&self, keeps: bool) {
        if self.one_shot.load(Ordering::Relaxed) == keeps {
            self.one_shot.store(!keeps, Ordering::Relaxed);
        }
    }

    /// Whether it is in rotation: not taken out by failed health probes.
    pub fn healthy(&self) -> bool {
        self.probe_fails.load(Ordering::Relaxed) < u32::MAX
    }

    /// Records a health probe; `remove_after` failures in a row take it out of rotation, one
    /// success puts it back. Returns its new state when that changed.
    pub fn record_probe(&self, alive: bool, remove_after: u32) -> Option<bool> {
        let was = self.healthy();
        if alive {
            self.probe_fails.store(0, Ordering::Relaxed);
        } else {
            let n = self.probe_fails.load(Ordering::Relaxed);
            let next = if n + 1 >= remove_after {
                u32::MAX
            } else {
                n + 1
            };
            self.probe_fails.store(next, Ordering::Relaxed);
        }
        let now = self.healthy();
        (now != was).then_some(now)
    }

    /// Requests it may take now under `cap` (0: no limit).
    fn room(&self, cap: usize) -> usize {
        if cap == 0 {
            usize::MAX
        } else if self.one_shot.load(Ordering::Relaxed) {
            self.window
                .load(Ordering::Relaxed)
                .min(cap)
                .min(ONE_SHOT_CAP)
        } else {
            self.window.load(Ordering::Relaxed).min(cap)
        }
    }

    /// Its current slow-start window.
    pub fn window(&self) -> usize {
        self.window.load(Ordering::Relaxed)
    }

    fn adjust(&self, outcome: Outcome, cap: usize) {
        let next = |w: usize| match outcome {
            Outcome::Answered if w < cap => Some(w + 1),
            Outcome::ConnectFailed if w > 1 => Some((w / 2).max(1)),
            _ => None,
        };
        let _ = self
            .window
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, next);
    }
}

// === impl Waiters ===

impl Waiters {
    pub(crate) fn new(cap: usize) -> Self {
        Waiters {
            cap: AtomicUsize::new(cap),
            ..Default::default()
        }
    }

    /// Requests waiting now.
    pub(crate) fn len(&self) -> usize {
        self.queued.load(Ordering::SeqCst)
    }
}

// === impl FnEntry (admission) ===

impl FnEntry {
    /// Takes a slot on the ready replica with the fewest requests in flight, unless requests
    /// are already waiting (they go first) or every replica is full. Give it back with
    /// [`FnEntry::release`].
    pub fn acquire(&self) -> Option<Arc<Endpoint>> {
        self.acquire_avoiding(None)
    }

    /// [`FnEntry::acquire`], preferring any replica but `avoid` (the one a retry just failed
    /// on) while another has room.
    pub fn acquire_avoiding(&self, avoid: Option<u64>) -> Option<Arc<Endpoint>> {
        if self.waiters.len() > 0 {
            return None;
        }
        self.take_slot(avoid)
    }

    /// Takes a slot regardless of the queue.
    fn take_slot(&self, avoid: Option<u64>) -> Option<Arc<Endpoint>> {
        let cap = self.waiters.cap.load(Ordering::Relaxed);
        let route = self.route_state();
        // Another request may take the last slot between the look and the take: look again.
        for _ in 0..8 {
            let ep = route
                .endpoints
                .iter()
                .filter(|e| e.healthy() && e.inflight.load(Ordering::Acquire) < e.room(cap))
                .min_by_key(|e| (Some(e.replica) == avoid, e.inflight.load(Ordering::Relaxed)))?;
            let n = ep.inflight.load(Ordering::Acquire);
            if n >= ep.room(cap) {
                continue;
            }
            if ep
                .inflight
                .compare_exchange(n, n + 1, Ordering::SeqCst, Ordering::Acquire)
                .is_ok()
            {
                return Some(ep.clone());
            }
        }
        None
    }

    /// Gives back a slot taken with [`FnEntry::acquire`] or a [`Ticket`], after a request that
    /// ended in no particular way (see [`FnEntry::release_with`]).
    pub fn release(&self, ep: &Endpoint) {
        self.release_with(ep, Outcome::Other);
    }

    /// Gives back a slot, adjusting the replica's window by how the request ended, and hands
    /// it to the first waiting request.
    pub fn release_with(&self, ep: &Endpoint, outcome: Outcome) {
        let cap = self.waiters.cap.load(Ordering::Relaxed);
        if cap > 0 {
            ep.adjust(outcome, cap);
        }
        ep.inflight.fetch_sub(1, Ordering::SeqCst);
        if self.waiters.len() > 0 {
            self.grant();
        }
    }

    /// Joins the queue. The ticket resolves when a slot is granted; it may be granted at once.
    pub fn enqueue(self: &Arc<Self>) -> Ticket {
        let (tx, rx) = oneshot::channel();
        let id = self.waiters.next_id.fetch_add(1, Ordering::Relaxed);
        {
            let mut q = self.waiters.queue.lock().unwrap_or_else(|p| p.into_inner());
            q.push_back((id, tx));
            self.waiters.queued.store(q.len(), Ordering::SeqCst);
            self.grant_locked(&mut q);
        }
        Ticket {
            entry: self.clone(),
            id,
            rx,
        }
    }

    /// Hands free slots to waiting requests, first come first served. Called when a slot is
    /// freed, a replica becomes ready, or the cap changes.
    pub fn grant(&self) {
        let mut q = self.waiters.queue.lock().unwrap_or_else(|p| p.into_inner());
        self.grant_locked(&mut q);
    }

    fn grant_locked(&self, q: &mut VecDeque<(u64, oneshot::Sender<Arc<Endpoint>>)>) {
        while let Some((_, tx)) = q.front() {
            if tx.is_closed() {
                q.pop_front();
                continue;
            }
            let Some(ep) = self.take_slot(None) else {
                break;
            };
            let Some((_, tx)) = q.pop_front() else { break };
            if let Err(ep) = tx.send(ep) {
                // Gone between the check and the send: the slot is free again.
                ep.inflight.fetch_sub(1, Ordering::SeqCst);
            }
        }
        self.waiters.queued.store(q.len(), Ordering::SeqCst);
    }
}

// === impl Ticket ===

impl Future for Ticket {
    type Output = Arc<Endpoint>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match Pin::new(&mut self.rx).poll(cx) {
            Poll::Ready(Ok(ep)) => Poll::Ready(ep),
            // The sender is only dropped unsent when we left the queue: never ready then.
            Poll::Ready(Err(_)) | Poll::Pending => Poll::Pending,
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        {
            let mut q = self
                .entry
                .waiters
                .queue
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if let Some(at) = q.iter().position(|(id, _)| *id == self.id) {
                q.remove(at);
                self.entry.waiters.queued.store(q.len(), Ordering::SeqCst);
            }
        }
        // Granted but not claimed (timed out or the client left at that moment): give it back.
        if let Ok(ep) = self.rx.try_recv() {
            self.entry.release(&ep);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::function::FunctionSpec;
    use crate::registry::Registry;

    fn entry(cap: Option<u32>) -> Arc<FnEntry> {
        let (reg, _rx) = Registry::new();
        reg.insert(FunctionSpec {
            max_concurrency: cap,
            ..FunctionSpec::named("f")
        })
    }

    fn ep(replica: u64) -> Arc<Endpoint> {
        Arc::new(Endpoint::new(([127, 0, 0, 1], 9000).into(), replica))
    }

    #[test]
    fn a_new_replica_starts_slow_and_opens_per_answer_up_to_the_cap() {
        let e = entry(Some(6));
        e.add_endpoint(ep(1));
        let held: Vec<_> = (0..SLOW_START).map(|_| e.acquire().unwrap()).collect();
        assert!(e.acquire().is_none(), "the window is {SLOW_START}");
        for h in &held {
            e.release_with(h, Outcome::Answered);
        }
        let held: Vec<_> = std::iter::from_fn(|| e.acquire()).collect();
        assert_eq!(held.len(), 6, "grown past the window, stopped at the cap");
        e.release_with(&held[0], Outcome::ConnectFailed);
        assert_eq!(held[0].window(), 3, "a refused connection halves it");
    }

    #[tokio::test]
    async fn freed_slots_go_to_waiters_in_arrival_order_and_nobody_barges() {
        let e = entry(Some(1));
        e.add_endpoint(ep(1));
        let first = e.acquire().unwrap();
        let (t1, t2) = (e.enqueue(), e.enqueue());
        assert!(e.acquire().is_none(), "a newcomer waits behind the queue");
        e.release_with(&first, Outcome::Answered);
        let got = t1.await;
        assert_eq!(got.replica, 1);
        drop(t2); // leaves the queue without a slot
        e.release(&got);
        assert_eq!(e.waiters.len(), 0);
        assert!(e.acquire().is_some(), "free again once nobody waits");
    }

    #[tokio::test]
    async fn a_ticket_dropped_with_a_grant_gives_the_slot_back() {
        let e = entry(Some(1));
        let t = e.enqueue();
        e.add_endpoint(ep(1)); // granted to `t`
        assert_eq!(
            e.subscribe().borrow().endpoints[0]
                .inflight
                .load(Ordering::SeqCst),
            1
        );
        drop(t);
        assert_eq!(
            e.subscribe().borrow().endpoints[0]
                .inflight
                .load(Ordering::SeqCst),
            0
        );
        assert!(e.acquire().is_some());
    }

    #[tokio::test]
    async fn waiters_are_granted_when_a_replica_becomes_ready() {
        let e = entry(None);
        let tickets: Vec<_> = (0..10).map(|_| e.enqueue()).collect();
        e.add_endpoint(ep(1));
        let mut granted = 0;
        for t in tickets {
            if tokio::time::timeout(std::time::Duration::from_millis(10), t)
                .await
                .is_ok()
            {
                granted += 1;
            }
        }
        assert_eq!(
            granted, SLOW_START,
            "a fresh replica takes its window, not all ten"
        );
    }

    #[test]
    fn a_replica_out_of_rotation_takes_no_request_until_it_answers() {
        let e = entry(None);
        let sick = ep(1);
        e.add_endpoint(sick.clone());
        assert_eq!(
            sick.record_probe(false, 2),
            None,
            "one failure is not enough"
        );
        assert_eq!(sick.record_probe(false, 2), Some(false));
        assert!(e.acquire().is_none());
        assert_eq!(sick.record_probe(true, 2), Some(true));
        assert!(e.acquire().is_some());
    }

    #[test]
    fn a_replica_that_closes_after_each_answer_gets_a_backlog_s_worth() {
        let e = entry(None);
        let one = ep(1);
        e.add_endpoint(one.clone());
        for _ in 0..20 {
            let h = e.acquire().unwrap();
            e.release_with(&h, Outcome::Answered);
        }
        one.keeps_connections(false);
        let held: Vec<_> = std::iter::from_fn(|| e.acquire()).collect();
        assert_eq!(held.len(), ONE_SHOT_CAP);
        for h in &held {
            e.release(h);
        }
        one.keeps_connections(true);
        assert!(std::iter::from_fn(|| e.acquire()).count() > ONE_SHOT_CAP);
    }
}
