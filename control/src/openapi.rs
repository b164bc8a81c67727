//! The admin API's OpenAPI 3.1 document, served at `GET /admin/openapi.json`. The request and
//! response schemas are derived from the types the handlers parse and build
//! ([`DeployRequest`], [`ScaleBody`], [`crate::replies`]); the operations below list every
//! route of [`crate::admin::Admin::handle`] with every status it answers.
// The functions below only carry `#[utoipa::path]` attributes: they are never called.
#![allow(dead_code)]

use std::sync::LazyLock;

use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Schema, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::RefOr;
use utoipa::{Modify, OpenApi};

use crate::admin::ScaleBody;
use crate::function::{DeployRequest, Options};
use crate::replies::{DeployEvent, DeployReply, ErrorBody, FunctionList, FunctionStatus};

/// The document.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Poorman FaaS admin API",
        description = "Deploy, inspect, scale and remove Python functions. Every call needs \
            `Authorization: Bearer <token>` (FAAS_ADMIN_TOKEN, or the token `faas serve` \
            generated into its state directory). Errors are `{\"code\": N, \"message\": \"...\"}`.",
        license(name = "Apache-2.0"),
    ),
    paths(deploy, list, get, update, delete, scale, logs, openapi, activity),
    components(schemas(
        DeployRequest, Options, DeployReply, DeployEvent, ErrorBody, FunctionStatus, FunctionList,
        ScaleBody
    )),
    modifiers(&BearerToken),
    security(("bearer" = [])),
    tags(
        (name = "functions", description = "Python functions"),
        (name = "internal", description = "Between the gateway's own replicas")
    )
)]
pub struct ApiDoc;

/// The document as JSON, built once.
pub fn document() -> &'static str {
    static DOC: LazyLock<String> = LazyLock::new(|| {
        let mut doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or_default();
        fix_links(&mut doc);
        serde_json::to_string_pretty(&doc).unwrap_or_default()
    });
    &DOC
}

/// utoipa 5 writes a link's `operationId` as `operation_id`; OpenAPI knows only the former.
fn fix_links(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(map) => {
            if let Some(id) = map.remove("operation_id") {
                map.insert("operationId".into(), id);
            }
            map.values_mut().for_each(fix_links);
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(fix_links),
        _ => {}
    }
}

struct BearerToken;

impl Modify for BearerToken {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "FAAS_ADMIN_TOKEN, or the content of FAAS_STATE_DIR/admin-token",
                    ))
                    .build(),
            ),
        );
    }
}

/// `option.idle_timeout`: a duration string or a positive number of seconds.
pub fn duration_or_seconds() -> RefOr<Schema> {
    one_of_text_or_number(
        "Idle time before the function is scaled to zero: a duration such as \"10m\" or \
         \"1h30m\", or a number of seconds.",
        ObjectBuilder::new()
            .schema_type(Type::Number)
            .exclusive_minimum(Some(0)),
    )
}

/// `option.memory_limit`: a size string or a number of bytes.
pub fn size_or_bytes() -> RefOr<Schema> {
    one_of_text_or_number(
        "Memory of one replica: a size such as \"256Mi\" or \"1Gi\", or a number of bytes; at \
         least 16Mi (local runtime).",
        ObjectBuilder::new()
            .schema_type(Type::Integer)
            .minimum(Some(16 << 20)),
    )
}

fn one_of_text_or_number(description: &str, number: ObjectBuilder) -> RefOr<Schema> {
    OneOfBuilder::new()
        .item(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .min_length(Some(1)),
        )
        .item(number)
        .item(ObjectBuilder::new().schema_type(Type::Null))
        .description(Some(description))
        .into()
}

/// Deploys a new function (the original's call).
///
/// With `Accept: application/x-ndjson` the answer streams: one `{"progress": "..."}` line per
/// step (uv resolving and installing the dependencies, replicas starting), then the outcome,
/// whose `code` is the status a plain deploy would have answered with. A request that is not
/// understood (400) or names a taken function (409) is answered at once either way.
#[utoipa::path(
    post, path = "/admin/python", tag = "functions", operation_id = "deploy",
    request_body = DeployRequest,
    responses(
        (status = 200, description = "Deployed: its replicas are ready", content(
            (DeployReply = "application/json"),
            (DeployEvent = "application/x-ndjson"),
        )),
        (status = 400, description = "Bad JSON, base64, PEP 723 block, name or option", body = DeployReply),
        (status = 401, description = "Missing or wrong admin token", body = ErrorBody),
        (status = 409, description = "A function of that name exists", body = DeployReply),
        (status = 413, description = "Body over FAAS_MAX_BODY_BYTES", body = ErrorBody),
        (status = 422, description = "uv cannot prepare the script, or it exits before it is ready", body = DeployReply),
        (status = 429, description = "Over FAAS_ADMIN_RATE_LIMIT", body = ErrorBody, headers(("Retry-After" = u64, description = "seconds"))),
        (status = 503, description = "faas is shutting down", body = DeployReply),
        (status = 504, description = "Not ready within FAAS_DEPLOY_TIMEOUT", body = DeployReply),
    )
)]
fn deploy() {}

/// Lists every function with its status.
#[utoipa::path(
    get, path = "/admin/functions", tag = "functions", operation_id = "list",
    responses(
        (status = 200, description = "Every function", body = FunctionList, links(
            ("get" = (operation_id = "get", parameters(("name" = "$response.body#/functions/0/name")))),
            ("update" = (operation_id = "update", parameters(("name" = "$response.body#/functions/0/name")))),
            ("scale" = (operation_id = "scale", parameters(("name" = "$response.body#/functions/0/name")))),
            ("logs" = (operation_id = "logs", parameters(("name" = "$response.body#/functions/0/name")))),
            ("delete" = (operation_id = "delete", parameters(("name" = "$response.body#/functions/0/name")))),
        )),
        (status = 401, description = "Missing or wrong admin token", body = ErrorBody),
        (status = 429, description = "Over FAAS_ADMIN_RATE_LIMIT", body = ErrorBody, headers(("Retry-After" = u64, description = "seconds"))),
    )
)]
fn list() {}

/// One function's status.
#[utoipa::path(
    get, path = "/admin/functions/{name}", tag = "functions", operation_id = "get",
    params(("name" = String, Path, description = "The function's name")),
    responses(
        (status = 200, description = "The function", body = FunctionStatus),
        (status = 401, description = "Missing or wrong admin token", body = ErrorBody),
        (status = 404, description = "No such function", body = ErrorBody),
        (status = 429, description = "Over FAAS_ADMIN_RATE_LIMIT", body = ErrorBody, headers(("Retry-After" = u64, description = "seconds"))),
    )
)]
fn get() {}

/// Updates a function: a new script, dot file or options; absent fields keep their value.
///
/// New replicas are ready before old ones stop; on failure the old version keeps serving.
/// With `Accept: application/x-ndjson` the answer streams as a deploy's does.
#[utoipa::path(
    put, path = "/admin/functions/{name}", tag = "functions", operation_id = "update",
    params(("name" = String, Path, description = "The function's name")),
    request_body = DeployRequest,
    responses(
        (status = 200, description = "Updated: its new replicas are ready", content(
            (FunctionStatus = "application/json"),
            (DeployEvent = "application/x-ndjson"),
        )),
        (status = 400, description = "Bad JSON, base64, PEP 723 block or option", body = ErrorBody),
        (status = 401, description = "Missing or wrong admin token", body = ErrorBody),
        (status = 404, description = "No such function", body = ErrorBody),
        (status = 413, description = "Body over FAAS_MAX_BODY_BYTES", body = ErrorBody),
        (status = 422, description = "uv cannot prepare the script, or it exits before it is ready", body = ErrorBody),
        (status = 429, description = "Over FAAS_ADMIN_RATE_LIMIT", body = ErrorBody, headers(("Retry-After" = u64, description = "seconds"))),
        (status = 503, description = "faas is shutting down", body = ErrorBody),
        (status = 504, description = "Not ready within FAAS_DEPLOY_TIMEOUT", body = ErrorBody),
    )
)]
fn update() {}

/// Removes a function: stops its replicas and forgets it.
#[utoipa::path(
    delete, path = "/admin/functions/{name}", tag = "functions", operation_id = "delete",
    params(("name" = String, Path, description = "The function's name")),
    responses(
        (status = 204, description = "Removed"),
        (status = 401, description = "Missing or wrong admin token", body = ErrorBody),
        (status = 404, description = "No such function", body = ErrorBody),
        (status = 429, description = "Over FAAS_ADMIN_RATE_LIMIT", body = ErrorBody, headers(("Retry-After" = u64, description = "seconds"))),
    )
)]
fn delete() {}

/// Sets a function's replicas within its `[min_replicas, max_replicas]`; does not wait for them.
#[utoipa::path(
    post, path = "/admin/functions/{name}/scale", tag = "functions", operation_id = "scale",
    params(("name" = String, Path, description = "The function's name")),
    request_body = ScaleBody,
    responses(
        (status = 200, description = "The function, with its new desired replicas", body = FunctionStatus),
        (status = 400, description = "Not `{\"replicas\": n}`, or n outside the bounds", body = ErrorBody),
        (status = 401, description = "Missing or wrong admin token", body = ErrorBody),
        (status = 404, description = "No such function", body = ErrorBody),
        (status = 413, description = "Body over FAAS_MAX_BODY_BYTES", body = ErrorBody),
        (status = 429, description = "Over FAAS_ADMIN_RATE_LIMIT", body = ErrorBody, headers(("Retry-After" = u64, description = "seconds"))),
        (status = 503, description = "faas is shutting down", body = ErrorBody),
    )
)]
fn scale() {}

/// The recent output of a function's replicas, one line each; with `follow=true` the answer
/// goes on with new lines as they come, until the function is removed or the client leaves.
#[utoipa::path(
    get, path = "/admin/functions/{name}/logs", tag = "functions", operation_id = "logs",
    params(
        ("name" = String, Path, description = "The function's name"),
        ("tail" = Option<u32>, Query, minimum = 0, maximum = 100000, description = "How many recent lines (default 100)"),
        ("follow" = Option<bool>, Query, description = "Go on with new lines as they come"),
    ),
    responses(
        (status = 200, description = "The lines", body = String, content_type = "text/plain"),
        (status = 400, description = "`tail` is not a whole number up to 100000, or `follow` not a boolean", body = ErrorBody),
        (status = 401, description = "Missing or wrong admin token", body = ErrorBody),
        (status = 404, description = "No such function", body = ErrorBody),
        (status = 429, description = "Over FAAS_ADMIN_RATE_LIMIT", body = ErrorBody, headers(("Retry-After" = u64, description = "seconds"))),
        (status = 503, description = "This runtime cannot follow logs", body = ErrorBody),
    )
)]
fn logs() {}

/// This gateway replica's request activity, which the leader of replicated gateways reads to
/// run the reaper and autoscaler for all of them (Kubernetes); 404 where there is no leader.
#[utoipa::path(
    get, path = "/admin/internal/activity", tag = "internal", operation_id = "activity",
    responses(
        (status = 200, description = "Activity by function", body = Object),
        (status = 401, description = "Missing or wrong admin token", body = ErrorBody),
        (status = 404, description = "Not a replicated gateway", body = ErrorBody),
        (status = 429, description = "Over FAAS_ADMIN_RATE_LIMIT", body = ErrorBody, headers(("Retry-After" = u64, description = "seconds"))),
    )
)]
fn activity() {}

/// This document.
#[utoipa::path(
    get, path = "/admin/openapi.json", tag = "functions", operation_id = "openapi",
    responses(
        (status = 200, description = "The OpenAPI 3.1 document", body = Object),
        (status = 401, description = "Missing or wrong admin token", body = ErrorBody),
        (status = 429, description = "Over FAAS_ADMIN_RATE_LIMIT", body = ErrorBody, headers(("Retry-After" = u64, description = "seconds"))),
    )
)]
fn openapi() {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describes_every_admin_route_with_its_security() {
        let doc: serde_json::Value = serde_json::from_str(document()).unwrap();
        assert_eq!(doc["openapi"], "3.1.0");
        for path in [
            "/admin/python",
            "/admin/functions",
            "/admin/functions/{name}",
            "/admin/functions/{name}/scale",
            "/admin/functions/{name}/logs",
            "/admin/openapi.json",
            crate::scaling::activity::PATH,
        ] {
            assert!(doc["paths"][path].is_object(), "{path}");
        }
        assert_eq!(
            doc["components"]["securitySchemes"]["bearer"]["scheme"],
            "bearer"
        );
        let options = &doc["components"]["schemas"]["Options"];
        assert_eq!(options["additionalProperties"], false);
        assert_eq!(options["properties"]["max_replicas"]["minimum"], 1);
        let link = &doc["paths"]["/admin/functions"]["get"]["responses"]["200"]["links"]["get"];
        assert_eq!(link["operationId"], "get");
    }
}
