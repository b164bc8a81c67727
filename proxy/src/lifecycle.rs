//! Runs the control side's [`Controller`] as a Pingora background service: it starts with the
//! server, and on shutdown (listeners closed) the controller drains, stops the replicas, and the
//! process exits.

use std::sync::Arc;

use async_trait::async_trait;
use control::controller::Controller;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;

/// The controller as a background service.
pub struct Lifecycle {
    controller: Arc<Controller>,
}

impl Lifecycle {
    /// The service running `controller`.
    pub fn new(controller: Arc<Controller>) -> Self {
        Lifecycle { controller }
    }
}

#[async_trait]
impl BackgroundService for Lifecycle {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let stop = async move {
            let _ = shutdown.wait_for(|stop| *stop).await;
        };
        self.controller.run(stop).await;
        log::info!("exiting");
        std::process::exit(0);
    }
}
