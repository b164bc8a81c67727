//! The Pingora gateway of Poorman FaaS: routes `/gateway/{name}/...` to a ready replica of the
//! function, holds requests while a function at zero starts, and carries the admin API,
//! `/health` and `/metrics` on the same port.
// One documented exception: `fastpath::local` borrows a socket's fd to duplicate it.
#![deny(unsafe_code)]
#![deny(missing_docs)]

pub mod activator;
pub mod fastpath;
pub mod forward;
pub mod gateway;
pub mod health;
pub mod lifecycle;
pub mod metrics;
pub mod ratelimit;
pub mod respond;
pub mod routes;
pub mod signals;
pub mod streamed;
