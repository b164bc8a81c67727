//! The function model: what a deploy request carries, how it is validated, and the spec that is
//! kept for each function.

use std::sync::LazyLock;
use std::time::Duration;

use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine;
use regex::Regex;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::pep723::{self, ScriptMetadata};
use crate::{Error, Result};

/// Default upper bound of replicas when the deploy does not give one.
pub const DEFAULT_MAX_REPLICAS: u32 = 10;

static NAME: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$").expect("name regex compiles"));

/// Standard base64, padding optional; whitespace (line wrapping) is removed before decoding.
const B64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// The body of `POST /admin/python` and `PUT /admin/functions/{name}`: the original's shape.
/// On a deploy `script` is required; on an update absent fields keep their value.
#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
pub struct DeployRequest {
    /// The script, base64 (line-wrapped input accepted): a PEP 723 script with a `script` block.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(content_encoding = "base64", content_media_type = "text/x-python")]
    pub script: Option<String>,
    /// A dotenv file, base64; its entries become the function's environment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(content_encoding = "base64")]
    pub dot_file: Option<String>,
    /// Deploy options.
    #[serde(default)]
    pub option: Options,
}

/// `option` of a deploy request. Unknown keys are refused so that a typo is not silently ignored.
#[derive(Debug, Default, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Options {
    /// Who deployed it (informational).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Initial replicas (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0, maximum = 4294967295_u64)]
    pub replica: Option<u32>,
    /// Replicas the reaper and autoscaler never go below (default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0, maximum = 4294967295_u64)]
    pub min_replicas: Option<u32>,
    /// Replicas the autoscaler never goes above (default 10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 4294967295_u64)]
    pub max_replicas: Option<u32>,
    /// In-flight requests per replica the autoscaler aims at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 4294967295_u64)]
    pub target_concurrency: Option<u32>,
    /// Requests one replica serves at once; more wait in the gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 4294967295_u64)]
    pub max_concurrency: Option<u32>,
    /// Idle time before scale to zero: a duration string (`10m`) or seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(schema_with = crate::openapi::duration_or_seconds)]
    pub idle_timeout: Option<serde_json::Value>,
    /// A stable name instead of `service-<uuid>`: 1 to 63 lowercase letters, digits and `-`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(
        pattern = "^[a-z0-9]([a-z0-9-]*[a-z0-9])?$",
        min_length = 1,
        max_length = 63
    )]
    pub name: Option<String>,
    /// Memory of one replica (`"256Mi"`, `"1Gi"` or bytes, at least 16Mi); local runtime.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(schema_with = crate::openapi::size_or_bytes)]
    pub memory_limit: Option<serde_json::Value>,
    /// Processes and threads of one replica; local runtime.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 18446744073709551615_u64)]
    pub max_processes: Option<u64>,
    /// Open files of each process of a replica; local runtime.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 18446744073709551615_u64)]
    pub max_open_files: Option<u64>,
}

/// Per-function resource limits of a replica; `None` takes the runtime's default.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Memory of one replica, bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
    /// Processes and threads of one replica.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_processes: Option<u64>,
    /// Open files of each process of a replica.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_open_files: Option<u64>,
}

/// What is kept about a function besides its script and environment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FunctionSpec {
    /// Unique name, a DNS label; the path segment after the gateway prefix.
    pub name: String,
    /// Who deployed it.
    pub user: Option<String>,
    /// Desired replicas.
    pub replicas: u32,
    /// Lower bound of replicas.
    pub min_replicas: u32,
    /// Upper bound of replicas.
    pub max_replicas: u32,
    /// In-flight requests per replica the autoscaler aims at.
    pub target_concurrency: Option<u32>,
    /// Requests one replica serves at once; more wait in the gateway.
    #[serde(default)]
    pub max_concurrency: Option<u32>,
    /// Idle timeout in milliseconds, overriding `REAPER_TIME_TO_LIVE`.
    pub idle_timeout_ms: Option<u64>,
    /// Resource limits of each replica, overriding the runtime's defaults.
    #[serde(default)]
    pub limits: Limits,
    /// The script's PEP 723 metadata.
    pub metadata: ScriptMetadata,
    /// Bumped on every update.
    pub version: u64,
    /// Milliseconds since the epoch.
    pub created_at_ms: u64,
    /// Milliseconds since the epoch.
    pub updated_at_ms: u64,
}

/// A function in full: spec, script and environment.
#[derive(Debug, Clone)]
pub struct FunctionDef {
    /// The spec.
    pub spec: FunctionSpec,
    /// The Python source.
    pub script: String,
    /// The dot file as given (kept so that it can be stored and re-read).
    pub dot_file: String,
    /// The dot file's entries.
    pub env: Vec<(String, String)>,
}

impl FunctionSpec {
    /// A spec with every option at its default and no replicas (tests, benchmarks).
    pub fn named(name: &str) -> Self {
        FunctionSpec {
            name: name.to_string(),
            user: None,
            replicas: 0,
            min_replicas: 0,
            max_replicas: DEFAULT_MAX_REPLICAS,
            target_concurrency: None,
            max_concurrency: None,
            idle_timeout_ms: None,
            limits: Limits::default(),
            metadata: ScriptMetadata::default(),
            version: 1,
            created_at_ms: 0,
            updated_at_ms: 0,
        }
    }

    /// The idle timeout of this function, if it overrides the global one.
    pub fn idle_timeout(&self) -> Option<Duration> {
        self.idle_timeout_ms.map(Duration::from_millis)
    }
}

/// Checks a function name: lowercase letters, digits and `-`, at most 63 characters.
pub fn validate_name(name: &str) -> Result<()> {
    if name.len() > 63 || !NAME.is_match(name) {
        return Err(Error::BadRequest(format!(
            "invalid function name {name:?}: use 1 to 63 lowercase letters, digits and `-`, \
             starting and ending with a letter or digit"
        )));
    }
    Ok(())
}

/// Parses a dotenv file into its entries.
pub fn parse_dot_file(text: &str) -> Result<Vec<(String, String)>> {
    dotenvy::from_read_iter(text.as_bytes())
        .map(|item| {
            item.map_err(|e| Error::BadRequest(format!("dot_file is not a valid dotenv file: {e}")))
        })
        .collect()
}

/// Decodes a base64 field of a deploy request into UTF-8 text.
pub fn decode_field(field: &str, value: &str) -> Result<String> {
    let compact: String = value.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    let bytes = B64
        .decode(compact.as_bytes())
        .map_err(|e| Error::BadRequest(format!("{field} is not valid base64: {e}")))?;
    String::from_utf8(bytes)
        .map_err(|_| Error::BadRequest(format!("{field} does not decode to UTF-8 text")))
}

impl DeployRequest {
    /// Parses the JSON body. `base64` output pasted into a JSON string by a shell
    /// (`"$(base64 main.py)"`) carries raw line breaks, which JSON forbids inside strings; line
    /// breaks carry no meaning anywhere in this body, so such a body is read without them.
    pub fn from_json(body: &[u8]) -> Result<Self> {
        let bad = |e: &dyn std::fmt::Display| {
            Error::BadRequest(format!("the body is not the JSON we expect: {e}"))
        };
        let value: serde_json::Value = serde_json::from_slice(body).or_else(|e| {
            if !body.iter().any(|b| *b == b'\n' || *b == b'\r') {
                return Err(bad(&e));
            }
            let flat: Vec<u8> = body
                .iter()
                .copied()
                .filter(|b| *b != b'\n' && *b != b'\r')
                .collect();
            serde_json::from_slice(&flat).map_err(|e| bad(&e))
        })?;
        // serde reads a struct from a JSON array too (`[null, null]`): only objects are ours.
        let object = |v: Option<&serde_json::Value>| v.is_none_or(serde_json::Value::is_object);
        if !value.is_object() || !object(value.get("option")) {
            return Err(bad(
                &"the body must be an object {\"script\": \"<base64>\", \"dot_file\": \"<base64>\", \"option\": {...}}",
            ));
        }
        serde_json::from_value(value).map_err(|e| bad(&e))
    }

    /// Builds a new function from this request; `name` is generated when the option has none.
    pub fn into_new(self, now_ms: u64) -> Result<FunctionDef> {
        let name = match &self.option.name {
            Some(n) => n.clone(),
            None => format!("service-{}", uuid::Uuid::new_v4()),
        };
        validate_name(&name)?;
        let script_b64 = self
            .script
            .as_deref()
            .filter(|s| !s.trim().is_empty())
            .ok_or_else(|| {
                Error::BadRequest("`script` is missing: send the script as base64".into())
            })?;
        let script = decode_field("script", script_b64)?;
        let dot_file = match self.dot_file.as_deref() {
            Some(d) => decode_field("dot_file", d)?,
            None => String::new(),
        };
        let env = parse_dot_file(&dot_file)?;
        let metadata = pep723::parse(&script)?;
        let o = &self.option;
        let spec = FunctionSpec {
            name,
            user: o.user.clone(),
            replicas: o.replica.unwrap_or(1),
            min_replicas: o.min_replicas.unwrap_or(0),
            max_replicas: o.max_replicas.unwrap_or(DEFAULT_MAX_REPLICAS),
            target_concurrency: o.target_concurrency,
            max_concurrency: o.max_concurrency,
            idle_timeout_ms: idle_timeout(o.idle_timeout.as_ref())?,
            limits: o.limits(&Limits::default())?,
            metadata,
            version: 1,
            created_at_ms: now_ms,
            updated_at_ms: now_ms,
        };
        check_bounds(&spec)?;
        Ok(FunctionDef {
            spec,
            script,
            dot_file,
            env,
        })
    }

    /// Applies this request to an existing function: fields that are absent keep their value.
    pub fn apply_to(self, current: &FunctionDef, now_ms: u64) -> Result<FunctionDef> {
        if let Some(n) = &self.option.name {
            if n != &current.spec.name {
                return Err(Error::BadRequest(
                    "option.name cannot rename a function; deploy a new one instead".into(),
                ));
            }
        }
        let script = match self.script.as_deref() {
            Some(s) => decode_field("script", s)?,
            None => current.script.clone(),
        };
        let dot_file = match self.dot_file.as_deref() {
            Some(d) => decode_field("dot_file", d)?,
            None => current.dot_file.clone(),
        };
        let env = parse_dot_file(&dot_file)?;
        let o = &self.option;
        let c = &current.spec;
        let spec = FunctionSpec {
            name: c.name.clone(),
            user: o.user.clone().or_else(|| c.user.clone()),
            replicas: o.replica.unwrap_or(c.replicas),
            min_replicas: o.min_replicas.unwrap_or(c.min_replicas),
            max_replicas: o.max_replicas.unwrap_or(c.max_replicas),
            target_concurrency: o.target_concurrency.or(c.target_concurrency),
            max_concurrency: o.max_concurrency.or(c.max_concurrency),
            idle_timeout_ms: match o.idle_timeout.as_ref() {
                Some(v) => idle_timeout(Some(v))?,
                None => c.idle_timeout_ms,
            },
            limits: o.limits(&c.limits)?,
            metadata: pep723::parse(&script)?,
            version: c.version + 1,
            created_at_ms: c.created_at_ms,
            updated_at_ms: now_ms,
        };
        check_bounds(&spec)?;
        Ok(FunctionDef {
            spec,
            script,
            dot_file,
            env,
        })
    }
}

impl Options {
    /// The limits this request sets, the others kept from `current`.
    fn limits(&self, current: &Limits) -> Result<Limits> {
        let memory_bytes = match &self.memory_limit {
            None | Some(serde_json::Value::Null) => current.memory_bytes,
            Some(v) => Some(memory_limit(v)?),
        };
        for (key, v) in [
            ("max_processes", self.max_processes),
            ("max_open_files", self.max_open_files),
        ] {
            if v == Some(0) {
                return Err(Error::BadRequest(format!(
                    "option.{key} must be at least 1"
                )));
            }
        }
        Ok(Limits {
            memory_bytes,
            max_processes: self.max_processes.or(current.max_processes),
            max_open_files: self.max_open_files.or(current.max_open_files),
        })
    }
}

/// Below this a Python interpreter cannot even start.
const MIN_MEMORY: u64 = 16 << 20;

fn memory_limit(v: &serde_json::Value) -> Result<u64> {
    let bytes = match v {
        serde_json::Value::Number(n) => n.as_u64(),
        serde_json::Value::String(s) if !s.trim().is_empty() => crate::config::parse_quantity(s),
        _ => None,
    };
    match bytes {
        Some(b) if b >= MIN_MEMORY => Ok(b),
        Some(_) => Err(Error::BadRequest(
            "option.memory_limit must be at least 16Mi".into(),
        )),
        None => Err(Error::BadRequest(
            "option.memory_limit must be a size such as \"256Mi\" or \"1Gi\", or a number of bytes"
                .into(),
        )),
    }
}

fn idle_timeout(v: Option<&serde_json::Value>) -> Result<Option<u64>> {
    let bad = || {
        Error::BadRequest(
            "option.idle_timeout must be a duration such as \"10m\" or a number of seconds".into(),
        )
    };
    match v {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::Number(n)) => {
            let secs = n.as_f64().filter(|s| *s > 0.0).ok_or_else(bad)?;
            Ok(Some((secs * 1000.0) as u64))
        }
        Some(serde_json::Value::String(s)) => {
            let d = crate::config::parse_duration(s).map_err(|_| bad())?;
            Ok(Some(d.as_millis() as u64))
        }
        Some(_) => Err(bad()),
    }
}

/// Checks that replicas fit `[min_replicas, max_replicas]`.
pub fn check_bounds(spec: &FunctionSpec) -> Result<()> {
    if spec.target_concurrency == Some(0) || spec.max_concurrency == Some(0) {
        return Err(Error::BadRequest(
            "option.target_concurrency and option.max_concurrency must be at least 1".into(),
        ));
    }
    if spec.max_replicas == 0 || spec.min_replicas > spec.max_replicas {
        return Err(Error::BadRequest(format!(
            "option.min_replicas ({}) must not exceed option.max_replicas ({}), which must be at least 1",
            spec.min_replicas, spec.max_replicas
        )));
    }
    if spec.replicas < spec.min_replicas {
        return Err(Error::BadRequest(format!(
            "replicas ({}) are below min_replicas ({})",
            spec.replicas, spec.min_replicas
        )));
    }
    if spec.replicas > spec.max_replicas {
        return Err(Error::BadRequest(format!(
            "replicas ({}) exceed max_replicas ({})",
            spec.replicas, spec.max_replicas
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCRIPT: &str =
        "# /// script\n# requires-python = \">=3.11\"\n# dependencies = []\n# ///\n";

    fn wrapped_b64(s: &str) -> String {
        let flat = base64::engine::general_purpose::STANDARD.encode(s);
        flat.as_bytes()
            .chunks(76)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn original_request_shape() {
        let long = format!("{SCRIPT}{}", "print('x')\n".repeat(20));
        let body = serde_json::json!({
            "script": wrapped_b64(&long),
            "dot_file": wrapped_b64("HIDDEN_MESSAGE=\"hello world\"\n"),
            "option": {"user": "frank", "replica": 1}
        });
        let def = DeployRequest::from_json(body.to_string().as_bytes())
            .unwrap()
            .into_new(0)
            .unwrap();
        assert!(def.spec.name.starts_with("service-"));
        assert_eq!(
            def.env,
            vec![("HIDDEN_MESSAGE".into(), "hello world".into())]
        );
        assert_eq!(def.spec.user.as_deref(), Some("frank"));
        assert_eq!(def.script, long);
    }

    #[test]
    fn raw_line_breaks_from_a_shell_are_accepted() {
        let body = format!(
            "{{\"script\": \"{}\", \"option\": {{\"name\": \"f\"}}}}",
            wrapped_b64(&format!("{SCRIPT}{}", "print(1)\n".repeat(30)))
        );
        assert!(body.contains('\n'));
        let def = DeployRequest::from_json(body.as_bytes())
            .unwrap()
            .into_new(0)
            .unwrap();
        assert_eq!(def.spec.name, "f");
    }

    #[test]
    fn names() {
        assert!(validate_name("hello-1").is_ok());
        for bad in ["Hello", "a_b", "-a", "a-", "", &"a".repeat(64), "a/b"] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn bad_base64_names_the_field() {
        let e = decode_field("dot_file", "!!!").unwrap_err().to_string();
        assert!(e.contains("dot_file"), "{e}");
    }

    #[test]
    fn only_an_object_is_a_request() {
        for body in [
            &b"[null, null]"[..],
            b"null",
            b"\"x\"",
            b" [\"c2NyaXB0\"]",
            b"{\"option\": [null, null]}",
        ] {
            let e = DeployRequest::from_json(body).unwrap_err();
            assert!(e.to_string().contains("must be an object"), "{e}");
        }
        assert!(DeployRequest::from_json(b" {}").is_ok());
    }

    #[test]
    fn unknown_option_is_refused() {
        let e = DeployRequest::from_json(br#"{"script":"","option":{"replicas":2}}"#).unwrap_err();
        assert!(e.to_string().contains("replicas"), "{e}");
    }

    #[test]
    fn replicas_must_fit_the_bounds() {
        let mut spec = FunctionSpec::named("f");
        spec.min_replicas = 1;
        assert!(check_bounds(&spec)
            .unwrap_err()
            .to_string()
            .contains("below min_replicas"));
        spec.replicas = 11;
        assert!(check_bounds(&spec)
            .unwrap_err()
            .to_string()
            .contains("max_replicas"));
        spec.replicas = 1;
        assert!(check_bounds(&spec).is_ok());
    }

    #[test]
    fn idle_timeout_forms() {
        assert_eq!(
            idle_timeout(Some(&serde_json::json!("10m"))).unwrap(),
            Some(600_000)
        );
        assert_eq!(
            idle_timeout(Some(&serde_json::json!(5))).unwrap(),
            Some(5_000)
        );
        assert!(idle_timeout(Some(&serde_json::json!("soon"))).is_err());
    }
}
