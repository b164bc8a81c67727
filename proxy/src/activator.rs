//! Holding requests for a function that has no free replica while it starts or scales.
//!
//! A request that finds no replica with room joins its function's FIFO queue
//! ([`control::admission`]): freed slots and new replicas are handed to the first in line.
//! The first held request of a function at zero asks the control side for exactly one
//! scale-up; a start that fails wakes every held request through the function's route watch.
//! The wait is bounded in time and in the number of held requests, and a client that goes
//! away leaves at once.

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use control::registry::{Endpoint, FnEntry, Registry};

/// Why a held request is answered with an error instead of being forwarded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// HTTP status: 502 (start failed), 503 (queue full), 504 (timeout), 404 (deleted),
    /// 499 (the client went away; nothing is sent).
    pub status: u16,
    /// What happened, for the JSON error.
    pub message: String,
    /// Seconds for `Retry-After`, on 503.
    pub retry_after: Option<u64>,
}

/// The bounds of holding.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// How long a request may wait.
    pub timeout: Duration,
    /// How many requests a function may hold.
    pub max_pending: usize,
}

impl Bounds {
    /// The bounds configured by `FAAS_ACTIVATION_TIMEOUT` and `FAAS_ACTIVATION_MAX_PENDING`.
    pub fn from_config(cfg: &control::config::Config) -> Self {
        Bounds {
            timeout: cfg.activation_timeout,
            max_pending: cfg.activation_max_pending,
        }
    }
}

/// Counts a held request while it lives.
struct PendingGuard<'a>(&'a FnEntry);

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.0.pending.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A slot on a ready endpoint of `entry` (give it back with [`FnEntry::release_with`]),
/// waiting in the function's FIFO queue — and triggering the start when the function has no
/// replica — when none is free. `client_gone` resolves when the client disconnects.
pub async fn acquire(
    registry: &Registry,
    entry: &Arc<FnEntry>,
    bounds: Bounds,
    client_gone: impl Future<Output = ()>,
) -> Result<Arc<Endpoint>, Refusal> {
    if let Some(ep) = entry.acquire() {
        return Ok(ep);
    }
    let held = entry.pending.fetch_add(1, Ordering::AcqRel) + 1;
    let _guard = PendingGuard(entry);
    if held > bounds.max_pending {
        return Err(refusal(
            503,
            format!(
                "function {:?} holds {} requests already (FAAS_ACTIVATION_MAX_PENDING); retry shortly",
                entry.name, bounds.max_pending
            ),
            Some(1),
        ));
    }
    // Seen before joining the queue: a change published from here on wakes the loop below.
    let mut rx = entry.subscribe();
    rx.borrow_and_update();
    let mut ticket = entry.enqueue();
    let wait = async {
        loop {
            let at_zero = {
                let state = rx.borrow_and_update();
                if state.endpoints.is_empty() {
                    if let Some(why) = &state.failure {
                        return Err(Some(why.clone()));
                    }
                }
                state.endpoints.is_empty()
            };
            if at_zero {
                // At zero, or its replicas went away while we waited (a scale-down): one
                // activation, however many ask. (Not under the borrow: it writes the route.)
                registry.request_activation(entry);
            }
            tokio::select! {
                ep = &mut ticket => return Ok(ep),
                changed = rx.changed() => if changed.is_err() { return Err(None) },
            }
        }
    };
    let result = tokio::select! {
        waited = tokio::time::timeout(bounds.timeout, wait) => match waited {
            Ok(Ok(ep)) => Ok(ep),
            Ok(Err(Some(_))) if registry.get(&entry.name).is_none() => Err(refusal(
                404,
                format!("function {:?} was deleted while the request waited", entry.name),
                None,
            )),
            Ok(Err(Some(why))) => Err(refusal(
                502,
                format!("function {:?} could not start: {why}", entry.name),
                None,
            )),
            Ok(Err(None)) => Err(refusal(404, format!("function {:?} was deleted", entry.name), None)),
            Err(_) if entry.ready() == 0 => Err(refusal(
                504,
                format!(
                    "function {:?} did not become ready within {:?} (FAAS_ACTIVATION_TIMEOUT)",
                    entry.name, bounds.timeout
                ),
                None,
            )),
            Err(_) => Err(refusal(
                504,
                format!(
                    "function {:?} had no replica free within {:?} (FAAS_ACTIVATION_TIMEOUT)",
                    entry.name, bounds.timeout
                ),
                None,
            )),
        },
        _ = client_gone => Err(refusal(499, "the client went away while held".into(), None)),
    };
    // Leaves the queue; a slot granted in the meantime goes to the next in line.
    drop(ticket);
    result
}

impl Refusal {
    /// The headers its error response carries: `Retry-After` on 503.
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        self.retry_after
            .map(|s| vec![("Retry-After", s.to_string())])
            .unwrap_or_default()
    }
}

fn refusal(status: u16, message: String, retry_after: Option<u64>) -> Refusal {
    Refusal {
        status,
        message,
        retry_after,
    }
}
