//! Who runs the reaper and the autoscaler: with one gateway (the local runtime) always this
//! one; on Kubernetes the holder of a `coordination.k8s.io/v1` Lease, elected with the
//! `kube-lease-manager` crate. A holder renews the Lease before it expires; when it stops (killed,
//! cut off), another replica takes the Lease over once it has expired, within the lease duration.

use std::time::Duration;

use kube_lease_manager::{LeaseCreateMode, LeaseManager, LeaseParams};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A Lease to hold.
#[derive(Clone)]
pub struct Lease {
    /// The API client.
    pub client: kube::Client,
    /// The Lease's namespace (the gateway's).
    pub namespace: String,
    /// The Lease's name.
    pub name: String,
    /// This replica's identity in the Lease (its pod name).
    pub identity: String,
    /// How long a Lease holds without renewal (`FAAS_LEADER_LEASE_DURATION`).
    pub duration: Duration,
}

/// Whether this replica leads, as it changes.
pub struct Leadership {
    /// `true` while this replica is the leader.
    pub leading: watch::Receiver<bool>,
    task: Option<JoinHandle<()>>,
    /// Keeps an unchanging leadership's channel open.
    _always: Option<watch::Sender<bool>>,
}

// === impl Leadership ===

impl Leadership {
    /// Always the leader (the only gateway).
    pub fn always() -> Self {
        let (tx, leading) = watch::channel(true);
        Leadership {
            leading,
            task: None,
            _always: Some(tx),
        }
    }

    /// Takes part in the election of `lease`, retrying while the API server is away.
    pub fn elect(lease: Lease) -> Self {
        let (tx, leading) = watch::channel(false);
        let task = tokio::spawn(campaign(lease, tx));
        Leadership {
            leading,
            task: Some(task),
            _always: None,
        }
    }

    /// Gives the Lease up (shutdown), so that another replica takes over at once.
    pub async fn resign(self) {
        let Leadership { leading, task, .. } = self;
        drop(leading);
        if let Some(task) = task {
            // The campaign sees its receivers gone and releases the Lease.
            let _ = tokio::time::timeout(Duration::from_secs(3), task).await;
        }
    }
}

async fn campaign(lease: Lease, tx: watch::Sender<bool>) {
    let secs = lease.duration.as_secs().max(2);
    // Renewed a third of the duration before it expires.
    let grace = (secs / 3).max(1);
    let params = LeaseParams::new(lease.identity.clone(), secs, grace);
    let manager = loop {
        let made = LeaseManager::new(
            lease.client.clone(),
            lease.name.clone(),
            lease.namespace.clone(),
            params.clone(),
            LeaseCreateMode::AutoCreate,
        );
        tokio::select! {
            m = made => match m {
                Ok(m) => break m,
                Err(e) => log::warn!("leader election: Lease {}: {e}; retrying", lease.name),
            },
            _ = tx.closed() => return,
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            _ = tx.closed() => return,
        }
    };
    let (mut changes, manager_task) = manager.watch().await;
    // The manager keeps saying "leader" while it fails to renew (API server unreachable): this
    // replica leads only while the Lease it last read is its own and was renewed recently
    // enough, stopping half a grace period before the Lease would expire and another replica
    // could take it over.
    let api: kube::Api<k8s_openapi::api::coordination::v1::Lease> =
        kube::Api::namespaced(lease.client.clone(), &lease.namespace);
    let margin_ms = grace * 500;
    let mut check = tokio::time::interval(Duration::from_millis(margin_ms.min(1000)));
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut manager_says = false;
    // Until when the Lease, as last read, is ours to act on (ms since the epoch).
    let mut ours_until: u64 = 0;
    let publish = |now: bool| {
        if tx.send_replace(now) != now {
            log::info!(
                "{} {} the leader (Lease {})",
                lease.identity,
                if now { "is now" } else { "is no longer" },
                lease.name
            );
        }
    };
    loop {
        tokio::select! {
            changed = changes.changed() => {
                if changed.is_err() {
                    // The manager stopped: no longer sure to lead.
                    publish(false);
                    return;
                }
                manager_says = *changes.borrow_and_update();
                if manager_says {
                    // It has just written the Lease as ours.
                    ours_until = crate::now_ms() + secs * 1000 - margin_ms;
                }
                publish(manager_says);
            }
            _ = check.tick() => {
                if !manager_says {
                    continue;
                }
                match api.get(&lease.name).await {
                    Ok(l) => {
                        let spec = l.spec.unwrap_or_default();
                        let mine = spec.holder_identity.as_deref() == Some(lease.identity.as_str());
                        let renewed = spec.renew_time.map_or(0, |t| t.0.as_millisecond().max(0) as u64);
                        let lasts = spec.lease_duration_seconds.unwrap_or(0).max(0) as u64 * 1000;
                        ours_until = if mine { (renewed + lasts).saturating_sub(margin_ms) } else { 0 };
                    }
                    Err(e) => log::warn!("leader election: reading Lease {}: {e}", lease.name),
                }
                publish(manager_says && crate::now_ms() < ours_until);
            }
            _ = tx.closed() => {
                // Shutdown: the manager releases the Lease once its receiver is gone.
                drop(changes);
                let _ = manager_task.await;
                return;
            }
        }
    }
}
