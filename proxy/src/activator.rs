//! Holding requests for a function that has no ready replica while it starts.
//!
//! The first held request asks the control side for exactly one scale-up; every held request
//! then waits on the function's route watch, woken by the runtime when an endpoint is ready or
//! a start fails. The wait is bounded in time and in the number of held requests.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use control::registry::{Endpoint, FnEntry, Registry};

/// Why a held request is answered with an error instead of being forwarded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// HTTP status: 502 (start failed), 503 (queue full), 504 (timeout), 404 (deleted).
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

/// Counts a held request while it lives.
struct PendingGuard<'a>(&'a FnEntry);

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.0.pending.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A ready endpoint of `entry`, waiting for one (and triggering the start) when there is none.
pub async fn acquire(
    registry: &Registry,
    entry: &FnEntry,
    bounds: Bounds,
) -> Result<Arc<Endpoint>, Refusal> {
    if let Some(ep) = entry.pick() {
        return Ok(ep);
    }
    let held = entry.pending.fetch_add(1, Ordering::AcqRel) + 1;
    let _guard = PendingGuard(entry);
    if held > bounds.max_pending {
        return Err(Refusal {
            status: 503,
            message: format!(
                "function {:?} is starting and already holds {} requests (FAAS_ACTIVATION_MAX_PENDING); retry shortly",
                entry.name, bounds.max_pending
            ),
            retry_after: Some(1),
        });
    }
    let mut rx = entry.subscribe();
    registry.request_activation(entry);
    let wait = async {
        loop {
            let failure = rx
                .wait_for(|r| !r.endpoints.is_empty() || r.failure.is_some())
                .await
                .map(|r| r.failure.clone());
            match failure {
                Err(_) => return Err(None),
                Ok(Some(why)) => return Err(Some(why)),
                Ok(None) => {
                    if let Some(ep) = entry.pick() {
                        return Ok(ep);
                    }
                }
            }
        }
    };
    match tokio::time::timeout(bounds.timeout, wait).await {
        Ok(Ok(ep)) => Ok(ep),
        Ok(Err(Some(why))) => Err(Refusal {
            status: 502,
            message: format!("function {:?} could not start: {why}", entry.name),
            retry_after: None,
        }),
        Ok(Err(None)) => Err(Refusal {
            status: 404,
            message: format!("function {:?} was deleted", entry.name),
            retry_after: None,
        }),
        Err(_) => Err(Refusal {
            status: 504,
            message: format!(
                "function {:?} did not become ready within {:?} (FAAS_ACTIVATION_TIMEOUT)",
                entry.name, bounds.timeout
            ),
            retry_after: None,
        }),
    }
}
