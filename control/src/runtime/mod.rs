//! Runtimes run functions: the local one as child processes, the Kubernetes one as Deployments.
//! Both publish ready endpoints into the [`Registry`](crate::registry::Registry).

pub mod kube;
pub mod local;

use async_trait::async_trait;

use crate::function::{DeployRequest, FunctionDef};
use crate::logbuf::Follow;
use crate::metrics::ControlMetrics;
use crate::{Error, Result};

/// What the admin API, the reaper and the activator need from a runtime.
#[async_trait]
pub trait Runtime: Send + Sync + 'static {
    /// Brings back the functions that existed before this process started, with their replica
    /// counts, registering them. Returns their names.
    async fn restore(&self) -> Result<Vec<String>>;

    /// Prepares and starts a new function; returns once `spec.replicas` replicas are ready.
    /// On failure nothing of it is left behind.
    async fn create(&self, def: FunctionDef) -> Result<()>;

    /// Applies an update request to a function (fields it lacks keep their value), computed
    /// under the function's lock so that concurrent updates and scales do not overwrite each
    /// other. New replicas are ready before old ones stop; on failure the old version serves on.
    async fn update(&self, name: &str, req: DeployRequest) -> Result<()>;

    /// The stored definition of a function.
    async fn get(&self, name: &str) -> Result<FunctionDef>;

    /// Removes a function and everything it runs.
    async fn delete(&self, name: &str) -> Result<()>;

    /// Sets the desired replica count; does not wait for readiness.
    async fn scale(&self, name: &str, replicas: u32) -> Result<()>;

    /// Raises the desired replica count to at least `replicas` (an activation); a count already
    /// that high is left alone, so that activations asked for at once, by several gateway
    /// replicas, scale up once. Returns whether it changed the count.
    async fn scale_up(&self, name: &str, replicas: u32) -> Result<bool> {
        self.scale(name, replicas).await.map(|()| true)
    }

    /// The address clients reach the gateway at, when the runtime knows it (on Kubernetes, the
    /// LoadBalancer address of `GATEWAY_SERVICE_NAME`): the host of the URLs deploys return.
    fn advertised_host(&self) -> Option<String> {
        None
    }

    /// The last `tail` lines of the output of a function's replicas.
    async fn logs(&self, name: &str, tail: usize) -> Result<Vec<String>>;

    /// The last `tail` lines of a function's output and every new line after them
    /// (`faas logs -f`). Runtimes that cannot follow answer 503.
    async fn follow_logs(&self, name: &str, tail: usize) -> Result<Follow> {
        let _ = (name, tail);
        Err(Error::Unavailable(
            "this runtime cannot follow logs; ask for them without follow".into(),
        ))
    }

    /// Stops every replica (process shutdown); functions stay stored.
    async fn shutdown(&self);

    /// Hands the runtime the metrics it records into (replica starts by path); once, at start.
    fn set_metrics(&self, _metrics: ControlMetrics) {}

    /// The function's zygote as the admin API shows it (local runtime), `None` where there is
    /// none.
    fn zygote_status(&self, _name: &str) -> Option<serde_json::Value> {
        None
    }
}
