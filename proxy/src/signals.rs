//! Which signals stop `faas`: SIGTERM and SIGINT (Ctrl-C) both drain and stop the replicas;
//! SIGQUIT is Pingora's graceful upgrade.

use async_trait::async_trait;
use pingora_core::server::{ShutdownSignal, ShutdownSignalWatch};
use tokio::signal::unix::{signal, SignalKind};

/// SIGTERM and SIGINT mean a graceful stop.
pub struct Signals;

#[async_trait]
impl ShutdownSignalWatch for Signals {
    async fn recv(&self) -> ShutdownSignal {
        let (Ok(mut term), Ok(mut int), Ok(mut quit)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::quit()),
        ) else {
            log::error!("cannot install signal handlers; stopping");
            return ShutdownSignal::FastShutdown;
        };
        tokio::select! {
            _ = term.recv() => log::info!("SIGTERM: draining and stopping"),
            _ = int.recv() => log::info!("SIGINT: draining and stopping"),
            _ = quit.recv() => return ShutdownSignal::GracefulUpgrade,
        }
        ShutdownSignal::GracefulTerminate
    }
}
