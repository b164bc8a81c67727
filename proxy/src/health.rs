//! Active health checks of local replicas: a replica that accepts connections but no longer
//! answers (a hung single-threaded server, a deadlock) is taken out of rotation, and put back
//! once it answers again.
//!
//! On Kubernetes the kubelet's readiness probe does this and the EndpointSlice watch follows
//! it; the local runtime has no kubelet, so the gateway probes. A probe is a `GET` of the
//! function's health path (`FAAS_FUNCTION_HEALTH_PATH`) that must get *some* HTTP status line
//! within the timeout: a 404 from a script without `/health` still shows it is alive, and the
//! replica's own errors are its callers' business. Two failed probes in a row take a replica
//! out; one answer puts it back.

use std::net::SocketAddr;
use std::time::Duration;

use async_trait::async_trait;
use control::registry::{Endpoint, Registry};
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Failed probes in a row that take a replica out of rotation.
const FAILS_TO_REMOVE: u32 = 2;

/// The health checker, a Pingora background service.
pub struct HealthChecks {
    registry: Registry,
    path: String,
    every: Duration,
    timeout: Duration,
}

impl HealthChecks {
    /// Probes every ready replica of every function each `every`, on `path`.
    pub fn new(registry: Registry, path: &str, every: Duration) -> Self {
        let path = if path.starts_with('/') { path } else { "/" };
        HealthChecks {
            registry,
            path: path.to_string(),
            every,
            // A probe may take at most as long as the interval (and 2 s at most).
            timeout: every.min(Duration::from_secs(2)),
        }
    }

    /// One sweep: every replica of every function, probed concurrently.
    async fn sweep(&self) {
        let mut probes = Vec::new();
        for entry in self.registry.snapshot().values() {
            let endpoints = entry.subscribe().borrow().endpoints.clone();
            for ep in endpoints.iter() {
                let (entry, ep) = (entry.clone(), ep.clone());
                let (path, timeout) = (self.path.clone(), self.timeout);
                probes.push(tokio::spawn(async move {
                    let alive = probe(ep.addr, &path, timeout).await;
                    judge(&entry.name, &ep, alive);
                    if alive {
                        entry.grant(); // back in rotation: waiting requests may take it
                    }
                }));
            }
        }
        for p in probes {
            let _ = p.await;
        }
    }
}

/// Records a probe's result on the endpoint; logs when it leaves or rejoins the rotation.
fn judge(name: &str, ep: &Endpoint, alive: bool) {
    match (alive, ep.record_probe(alive, FAILS_TO_REMOVE)) {
        (false, Some(false)) => log::warn!(
            "{name}: replica r{} at {} does not answer its health probe: out of rotation",
            ep.replica,
            ep.addr
        ),
        (true, Some(true)) => log::info!(
            "{name}: replica r{} at {} answers again: back in rotation",
            ep.replica,
            ep.addr
        ),
        _ => {}
    }
}

/// Whether `GET path` at `addr` gets a status line within `timeout`.
async fn probe(addr: SocketAddr, path: &str, timeout: Duration) -> bool {
    let attempt = async {
        let mut s = TcpStream::connect(addr).await.ok()?;
        let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.ok()?;
        let mut buf = [0u8; 16];
        let mut got = 0;
        while got < 12 {
            let n = s.read(&mut buf[got..]).await.ok()?;
            if n == 0 {
                return None;
            }
            got += n;
        }
        buf.starts_with(b"HTTP/1.").then_some(())
    };
    matches!(tokio::time::timeout(timeout, attempt).await, Ok(Some(())))
}

#[async_trait]
impl BackgroundService for HealthChecks {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(self.every) => self.sweep().await,
                _ = shutdown.changed() => return,
            }
        }
    }
}
