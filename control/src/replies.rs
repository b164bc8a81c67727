//! The JSON bodies the admin API answers with. The handlers build these types and the OpenAPI
//! document ([`crate::openapi`]) is generated from them, so the two cannot disagree.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Every error: `{"code": N, "message": "..."}`, `code` being the HTTP status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// The HTTP status.
    #[schema(minimum = 400, maximum = 599)]
    pub code: u16,
    /// What went wrong, for a person.
    pub message: String,
}

/// The answer to a deploy (`POST /admin/python`), the original's shape; errors carry an empty
/// `url`. Fields in alphabetical order, as this API has always written them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DeployReply {
    /// The HTTP status of the outcome (200 on success).
    #[schema(minimum = 200, maximum = 599)]
    pub code: u16,
    /// `success`, or what went wrong.
    pub message: String,
    /// The function's name; empty when the request was not understood far enough to know it.
    pub name: String,
    /// Where the function is served; empty when the deploy failed.
    pub url: String,
}

/// One line of a streamed deploy (`Accept: application/x-ndjson`): progress lines, then the
/// outcome as the last line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum DeployEvent {
    /// A line of progress (uv resolving and installing the dependencies, replicas starting).
    Progress {
        /// The line.
        progress: String,
    },
    /// The outcome, the same body a plain deploy answers with.
    Done(DeployReply),
}

/// A function's status. Fields in alphabetical order, as this API has always written them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct FunctionStatus {
    /// When it was deployed (RFC 3339).
    pub created_at: String,
    /// The script's dependencies.
    pub dependencies: Vec<String>,
    /// Idle time before it is scaled to zero.
    pub idle_timeout_seconds: f64,
    /// Requests in flight, held ones included.
    pub inflight: u64,
    /// When a request last finished (RFC 3339).
    pub last_activity: String,
    /// The same, milliseconds since the epoch.
    pub last_activity_ms: u64,
    /// Requests one replica serves at once.
    pub max_concurrency: Option<u32>,
    /// Upper bound of replicas.
    pub max_replicas: u32,
    /// Lower bound of replicas.
    pub min_replicas: u32,
    /// Its name.
    pub name: String,
    /// Requests held waiting for a replica.
    pub pending: u64,
    /// Replicas ready to serve.
    pub ready_replicas: u64,
    /// Desired replicas.
    pub replicas: u32,
    /// The script's `requires-python`.
    pub requires_python: Option<String>,
    /// In-flight requests per replica the autoscaler aims at.
    pub target_concurrency: Option<u32>,
    /// When it was last updated (RFC 3339).
    pub updated_at: String,
    /// Where it is served.
    pub url: String,
    /// Who deployed it.
    pub user: Option<String>,
    /// Bumped on every update.
    pub version: u64,
    /// Its zygote, where the runtime has one (local runtime).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub zygote: Option<serde_json::Value>,
}

/// `GET /admin/functions`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct FunctionList {
    /// Every function, by name.
    pub functions: Vec<FunctionStatus>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deploy_answers_byte_for_byte_as_before() {
        let reply = DeployReply {
            code: 200,
            message: "success".into(),
            name: "hello".into(),
            url: "http://127.0.0.1:8080/gateway/hello".into(),
        };
        assert_eq!(
            serde_json::to_string(&reply).unwrap(),
            r#"{"code":200,"message":"success","name":"hello","url":"http://127.0.0.1:8080/gateway/hello"}"#
        );
    }
}
