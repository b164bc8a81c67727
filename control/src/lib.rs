//! The control side of Poorman FaaS: the function model, PEP 723 parsing, the admin API,
//! the live registry of functions the gateway routes from, and the runtimes that run them.
// Documented exceptions, all in `runtime::local` between fork and exec of a replica: its CPU
// mask (`affinity`), its session, cgroup and open-file limit (`sandbox`).
#![deny(unsafe_code)]
#![deny(missing_docs)]

pub mod admin;
pub mod admission;
pub mod autoscaler;
pub mod config;
pub mod controller;
pub mod function;
pub mod logbuf;
pub mod metrics;
pub mod openapi;
pub mod pep723;
pub mod progress;
pub mod reaper;
pub mod registry;
pub mod replies;
pub mod runtime;
pub mod scaler;
pub mod scaling;
pub mod token;

use std::time::Duration;

/// Everything that can go wrong on the control side. The admin API maps each variant to an HTTP
/// status in one place ([`Error::status`]).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The caller sent something we cannot use (bad JSON, base64, script, name, option).
    #[error("{0}")]
    BadRequest(String),
    /// No function of that name.
    #[error("function {0:?} not found")]
    NotFound(String),
    /// A function of that name already exists.
    #[error("function {0:?} already exists; update it with PUT /admin/functions/{0}")]
    Conflict(String),
    /// The name is taken by something that is not this function's (an object we did not make,
    /// such as the gateway's own Service); the message says what.
    #[error("{0}")]
    Taken(String),
    /// The script is well-formed but cannot be run: uv could not resolve its dependencies or
    /// find an interpreter, or it exited before it became ready.
    #[error("{0}")]
    Unprocessable(String),
    /// The function did not become ready in time.
    #[error("{0}")]
    Timeout(String),
    /// The service cannot do it now (shutting down).
    #[error("{0}")]
    Unavailable(String),
    /// Our own fault (disk, process spawning, the cluster).
    #[error("{context}: {source}")]
    Internal {
        /// What we were doing.
        context: String,
        /// Why it failed.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// Result with the control [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The HTTP status this error answers with.
    pub fn status(&self) -> u16 {
        match self {
            Error::BadRequest(_) => 400,
            Error::NotFound(_) => 404,
            Error::Conflict(_) | Error::Taken(_) => 409,
            Error::Unprocessable(_) => 422,
            Error::Timeout(_) => 504,
            Error::Unavailable(_) => 503,
            Error::Internal { .. } => 500,
        }
    }

    /// Wraps an internal failure with what we were doing.
    pub fn internal(
        context: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Error::Internal {
            context: context.into(),
            source: source.into(),
        }
    }
}

/// Milliseconds since the Unix epoch, the clock of activity stamps.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_millis() as u64
}
