//! Configuration: `conf/faas.yaml` (its `faas:` section) overridden by the environment,
//! parsed once into [`Config`]. Every setting has an environment name (the original's, or
//! `FAAS_*`); its key in the file is that name in lower case without the `FAAS_` prefix.

use std::collections::HashMap;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use crate::{Error, Result};

/// Which runtime runs the functions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuntimeKind {
    /// Functions are child processes of `faas` on this machine.
    Local,
    /// Functions are Deployments in a Kubernetes cluster.
    Kubernetes,
}

/// The typed configuration of `faas`.
#[derive(Debug, Clone)]
pub struct Config {
    /// `LOG_LEVEL`: error, warn, info, debug or trace.
    pub log_level: String,
    /// `PORT`: the gateway, admin API, `/health` and `/metrics` port.
    pub port: u16,
    /// `FAAS_LISTEN`: the address to bind.
    pub listen: String,
    /// `REAPER_POLL_EVERY`: how often the reaper looks for idle functions.
    pub reaper_poll_every: Duration,
    /// `REAPER_TIME_TO_LIVE`: idle time after which a function is scaled to zero.
    pub reaper_time_to_live: Duration,
    /// `K8S_NAMESPACE`: namespace of the functions on Kubernetes.
    pub namespace: String,
    /// `K8S_LOAD_BALANCER_PORT`: the port written into the URLs returned on deploy.
    pub load_balancer_port: u16,
    /// `GATEWAY_SERVICE_NAME`: the gateway's LoadBalancer Service.
    pub gateway_service_name: String,
    /// `GATEWAY_PATH_PREFIX`: the path under which functions are served.
    pub path_prefix: String,
    /// `FAAS_RUNTIME`: local or kubernetes.
    pub runtime: RuntimeKind,
    /// `FAAS_STATE_DIR`: where the local runtime keeps its functions.
    pub state_dir: PathBuf,
    /// `FAAS_ADMIN_TOKEN`: `/admin` needs `Authorization: Bearer <token>`. When unset, `faas
    /// serve` generates one into the state directory (see [`crate::token`]).
    pub admin_token: Option<String>,
    /// `FAAS_ADMIN_OPEN`: serve `/admin` without a token (only with `FAAS_ADMIN_TOKEN` unset or
    /// empty); a warning is logged at every start.
    pub admin_open: bool,
    /// `FAAS_MAX_BODY_BYTES`: the largest admin request body (413 beyond).
    pub max_body_bytes: usize,
    /// `FAAS_SHUTDOWN_GRACE`: how long a SIGTERM may take: drain, stop replicas, exit.
    pub shutdown_grace: Duration,
    /// `FAAS_DEPLOY_TIMEOUT`: how long a deploy waits for its replicas to become ready.
    pub deploy_timeout: Duration,
    /// `FAAS_ACTIVATION_TIMEOUT`: how long a request waits for a function to start (504 beyond).
    pub activation_timeout: Duration,
    /// `FAAS_ACTIVATION_MAX_PENDING`: requests held per function while it starts (503 beyond).
    pub activation_max_pending: usize,
    /// `FAAS_REPLICA_MAX_INFLIGHT`: requests one replica gets at once when its function sets no
    /// `max_concurrency` (0: no cap and no slow start).
    pub replica_max_inflight: usize,
    /// `FAAS_HEALTH_CHECK_INTERVAL`: on the local runtime, how often each replica is probed on
    /// `FAAS_FUNCTION_HEALTH_PATH`; one that stops answering leaves the rotation.
    pub health_check_interval: Duration,
    /// `FAAS_ADMIN_RATE_LIMIT`: admin requests per minute per client IP (429 beyond), as the
    /// original limited them; 0 turns the limit off.
    pub admin_rate_limit: u32,
    /// `FAAS_PIN_THREADS`: pin each of the gateway's threads to its own CPU (with
    /// `work_stealing: false`), as nginx's `worker_cpu_affinity auto` does.
    pub pin_threads: bool,
    /// `FAAS_UV`: the `uv` executable.
    pub uv: String,
    /// `FAAS_AUTOSCALE_WINDOW`: the window in-flight requests are averaged over.
    pub autoscale_window: Duration,
    /// `FAAS_SCALE_DOWN_DELAY`: how long fewer replicas must suffice before scaling down.
    pub scale_down_delay: Duration,
    /// `FAAS_LEADER_LEASE_DURATION`: on Kubernetes, how long the leader's Lease holds without
    /// renewal; a new leader takes over within it when the leader dies (whole seconds, at least 2).
    pub leader_lease_duration: Duration,
    /// `POD_NAME` (the downward API): this gateway replica's name in the Lease and in its
    /// activity reports; empty: the host name.
    pub pod_name: String,
    /// How functions run on Kubernetes.
    pub kube: KubeSettings,
    /// How functions are confined on the local runtime.
    pub sandbox: SandboxSettings,
    /// `FAAS_ZYGOTE`: local replicas are forked from a zygote of their function version that
    /// imported the script's imports (see `runtime::local::zygote`).
    pub zygote: bool,
    /// `FAAS_ZYGOTE_TTL`: how long a zygote is kept while its function is at zero; unset: as
    /// long as the function's idle timeout.
    pub zygote_ttl: Option<Duration>,
}

/// How the local runtime confines a replica (see `runtime::local::sandbox`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxSettings {
    /// `FAAS_SANDBOX`: run each replica in a bubblewrap sandbox. Off only when asked.
    pub enabled: bool,
    /// `FAAS_BWRAP`: the bubblewrap executable.
    pub bwrap: String,
    /// `FAAS_FUNCTION_MEMORY_LIMIT` (shared with Kubernetes), in bytes; 0 for none.
    pub memory_bytes: u64,
    /// `FAAS_FUNCTION_MAX_PROCESSES`: processes and threads of one replica; 0 for none.
    pub max_processes: u64,
    /// `FAAS_FUNCTION_MAX_OPEN_FILES`: open files of each process of a replica.
    pub max_open_files: u64,
}

/// The shape of function pods on Kubernetes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeSettings {
    /// `FAAS_FUNCTION_IMAGE`: an image with `uv` and Python.
    pub image: String,
    /// `FAAS_FUNCTION_HEALTH_PATH`: readiness path; empty means a TCP check of the port.
    pub health_path: String,
    /// `FAAS_FUNCTION_CPU_REQUEST`, empty for none.
    pub cpu_request: String,
    /// `FAAS_FUNCTION_MEMORY_REQUEST`, empty for none.
    pub memory_request: String,
    /// `FAAS_FUNCTION_CPU_LIMIT`, empty for none.
    pub cpu_limit: String,
    /// `FAAS_FUNCTION_MEMORY_LIMIT`, empty for none.
    pub memory_limit: String,
    /// `FAAS_UV_CACHE_PVC`: a PersistentVolumeClaim shared as uv's cache; empty for a
    /// per-pod `emptyDir`.
    pub uv_cache_pvc: String,
}

/// (environment name, default) of every setting.
const SETTINGS: &[(&str, &str)] = &[
    ("LOG_LEVEL", "info"),
    ("PORT", "8080"),
    ("FAAS_LISTEN", "0.0.0.0"),
    ("REAPER_POLL_EVERY", "10s"),
    ("REAPER_TIME_TO_LIVE", "30s"),
    ("K8S_NAMESPACE", "faas"),
    ("K8S_LOAD_BALANCER_PORT", "8080"),
    ("GATEWAY_SERVICE_NAME", "faas-gateway"),
    ("GATEWAY_PATH_PREFIX", "/gateway"),
    ("FAAS_RUNTIME", ""),
    ("FAAS_STATE_DIR", ""),
    ("FAAS_ADMIN_TOKEN", ""),
    ("FAAS_ADMIN_OPEN", "false"),
    ("FAAS_SANDBOX", "true"),
    ("FAAS_ZYGOTE", "true"),
    ("FAAS_ZYGOTE_TTL", ""),
    ("FAAS_BWRAP", "bwrap"),
    ("FAAS_FUNCTION_MAX_PROCESSES", "1024"),
    ("FAAS_FUNCTION_MAX_OPEN_FILES", "4096"),
    ("FAAS_MAX_BODY_BYTES", "8388608"),
    ("FAAS_SHUTDOWN_GRACE", "10s"),
    ("FAAS_DEPLOY_TIMEOUT", "60s"),
    ("FAAS_ACTIVATION_TIMEOUT", "60s"),
    ("FAAS_ACTIVATION_MAX_PENDING", "1000"),
    ("FAAS_REPLICA_MAX_INFLIGHT", "64"),
    ("FAAS_HEALTH_CHECK_INTERVAL", "5s"),
    ("FAAS_ADMIN_RATE_LIMIT", "10"),
    ("FAAS_PIN_THREADS", "true"),
    ("FAAS_UV", "uv"),
    ("FAAS_AUTOSCALE_WINDOW", "10s"),
    ("FAAS_SCALE_DOWN_DELAY", "30s"),
    ("FAAS_LEADER_LEASE_DURATION", "15s"),
    ("POD_NAME", ""),
    (
        "FAAS_FUNCTION_IMAGE",
        "ghcr.io/astral-sh/uv:python3.12-alpine",
    ),
    ("FAAS_FUNCTION_HEALTH_PATH", "/health"),
    ("FAAS_FUNCTION_CPU_REQUEST", "50m"),
    ("FAAS_FUNCTION_MEMORY_REQUEST", "64Mi"),
    ("FAAS_FUNCTION_CPU_LIMIT", ""),
    ("FAAS_FUNCTION_MEMORY_LIMIT", "512Mi"),
    ("FAAS_UV_CACHE_PVC", ""),
];

impl Config {
    /// Reads the `faas:` section of a YAML file (if given) and the process environment. A
    /// variable that looks like a misspelt setting stops start-up (see [`check_environment`]).
    pub fn load(yaml: Option<&str>) -> Result<Self> {
        for ignored in
            check_environment(std::env::vars_os().filter_map(|(k, _)| k.into_string().ok()))?
        {
            eprintln!("faas: ignoring {ignored}: not a setting of `faas serve`");
        }
        Self::from_sources(yaml, |k| std::env::var(k).ok())
    }

    /// Builds the configuration from YAML text and an environment lookup.
    pub fn from_sources(yaml: Option<&str>, env: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let file = match yaml {
            Some(text) => file_section(text)?,
            None => HashMap::new(),
        };
        let get = |name: &str| -> String {
            let key = file_key(name);
            env(name)
                .or_else(|| file.get(&key).cloned())
                .or_else(|| {
                    SETTINGS
                        .iter()
                        .find(|(n, _)| *n == name)
                        .map(|(_, d)| d.to_string())
                })
                .unwrap_or_default()
        };
        let prefix = get("GATEWAY_PATH_PREFIX");
        if !prefix.starts_with('/') || prefix.ends_with('/') || prefix.len() < 2 {
            return Err(invalid(
                "GATEWAY_PATH_PREFIX",
                &prefix,
                "must start with `/` and must not end with `/`, e.g. /gateway",
            ));
        }
        let runtime = match get("FAAS_RUNTIME").as_str() {
            "local" => RuntimeKind::Local,
            "kubernetes" => RuntimeKind::Kubernetes,
            "" if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() => RuntimeKind::Kubernetes,
            "" => RuntimeKind::Local,
            other => {
                return Err(invalid(
                    "FAAS_RUNTIME",
                    other,
                    "must be `local` or `kubernetes`",
                ))
            }
        };
        let state_dir = match get("FAAS_STATE_DIR") {
            s if !s.is_empty() => PathBuf::from(s),
            _ => default_state_dir(),
        };
        let log_level = get("LOG_LEVEL").to_ascii_lowercase();
        if !["error", "warn", "info", "debug", "trace"].contains(&log_level.as_str()) {
            return Err(invalid(
                "LOG_LEVEL",
                &log_level,
                "must be error, warn, info, debug or trace",
            ));
        }
        let admin_token = Some(get("FAAS_ADMIN_TOKEN")).filter(|t| !t.is_empty());
        let admin_open = flag(&get, "FAAS_ADMIN_OPEN")?;
        if admin_open && admin_token.is_some() {
            return Err(invalid(
                "FAAS_ADMIN_OPEN",
                "true",
                "an open admin API and FAAS_ADMIN_TOKEN exclude each other: unset one of them",
            ));
        }
        let memory_limit = get("FAAS_FUNCTION_MEMORY_LIMIT");
        let memory_bytes = parse_quantity(&memory_limit).ok_or_else(|| {
            invalid(
                "FAAS_FUNCTION_MEMORY_LIMIT",
                &memory_limit,
                "expected a size such as 512Mi, 1Gi or a number of bytes (empty for no limit)",
            )
        })?;
        Ok(Config {
            log_level,
            port: number(&get, "PORT")?,
            listen: get("FAAS_LISTEN"),
            reaper_poll_every: duration(&get, "REAPER_POLL_EVERY")?,
            reaper_time_to_live: duration(&get, "REAPER_TIME_TO_LIVE")?,
            namespace: get("K8S_NAMESPACE"),
            load_balancer_port: number(&get, "K8S_LOAD_BALANCER_PORT")?,
            gateway_service_name: get("GATEWAY_SERVICE_NAME"),
            path_prefix: prefix,
            runtime,
            state_dir,
            admin_token,
            admin_open,
            max_body_bytes: number(&get, "FAAS_MAX_BODY_BYTES")?,
            shutdown_grace: duration(&get, "FAAS_SHUTDOWN_GRACE")?,
            deploy_timeout: duration(&get, "FAAS_DEPLOY_TIMEOUT")?,
            activation_timeout: duration(&get, "FAAS_ACTIVATION_TIMEOUT")?,
            activation_max_pending: number(&get, "FAAS_ACTIVATION_MAX_PENDING")?,
            replica_max_inflight: number(&get, "FAAS_REPLICA_MAX_INFLIGHT")?,
            health_check_interval: duration(&get, "FAAS_HEALTH_CHECK_INTERVAL")?,
            admin_rate_limit: number(&get, "FAAS_ADMIN_RATE_LIMIT")?,
            pin_threads: flag(&get, "FAAS_PIN_THREADS")?,
            uv: get("FAAS_UV"),
            autoscale_window: duration(&get, "FAAS_AUTOSCALE_WINDOW")?,
            scale_down_delay: duration(&get, "FAAS_SCALE_DOWN_DELAY")?,
            leader_lease_duration: match duration(&get, "FAAS_LEADER_LEASE_DURATION")? {
                d if d < Duration::from_secs(2) => {
                    return Err(invalid(
                        "FAAS_LEADER_LEASE_DURATION",
                        &get("FAAS_LEADER_LEASE_DURATION"),
                        "must be at least 2s",
                    ))
                }
                d => d,
            },
            pod_name: get("POD_NAME"),
            kube: KubeSettings {
                image: get("FAAS_FUNCTION_IMAGE"),
                health_path: get("FAAS_FUNCTION_HEALTH_PATH"),
                cpu_request: get("FAAS_FUNCTION_CPU_REQUEST"),
                memory_request: get("FAAS_FUNCTION_MEMORY_REQUEST"),
                cpu_limit: get("FAAS_FUNCTION_CPU_LIMIT"),
                memory_limit: get("FAAS_FUNCTION_MEMORY_LIMIT"),
                uv_cache_pvc: get("FAAS_UV_CACHE_PVC"),
            },
            sandbox: SandboxSettings {
                enabled: flag(&get, "FAAS_SANDBOX")?,
                bwrap: get("FAAS_BWRAP"),
                memory_bytes,
                max_processes: number(&get, "FAAS_FUNCTION_MAX_PROCESSES")?,
                max_open_files: number(&get, "FAAS_FUNCTION_MAX_OPEN_FILES")?,
            },
            zygote: flag(&get, "FAAS_ZYGOTE")?,
            zygote_ttl: match get("FAAS_ZYGOTE_TTL") {
                t if t.trim().is_empty() => None,
                _ => Some(duration(&get, "FAAS_ZYGOTE_TTL")?),
            },
        })
    }
}

/// Parses a Go-style duration (`10s`, `2m`, `1h30m`, `500ms`).
pub fn parse_duration(s: &str) -> std::result::Result<Duration, String> {
    humantime::parse_duration(s.trim()).map_err(|e| e.to_string())
}

/// Parses a size as Kubernetes writes quantities (`512Mi`, `1Gi`, `500M`, `1048576`) into
/// bytes; empty means no limit (0). `None` when it is not a size.
pub fn parse_quantity(s: &str) -> Option<u64> {
    let s = s.trim();
    if s.is_empty() {
        return Some(0);
    }
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return None;
    }
    let n: u64 = s[..digits].parse().ok()?;
    let unit: u64 = match &s[digits..] {
        "" => 1,
        "k" | "K" => 1000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        _ => return None,
    };
    n.checked_mul(unit)
}

fn duration(get: &impl Fn(&str) -> String, name: &str) -> Result<Duration> {
    let v = get(name);
    match parse_duration(&v) {
        Ok(d) if !d.is_zero() => Ok(d),
        Ok(_) => Err(invalid(name, &v, "must be longer than zero")),
        Err(e) => Err(invalid(
            name,
            &v,
            &format!("expected a duration such as 10s, 2m or 1h30m ({e})"),
        )),
    }
}

fn flag(get: &impl Fn(&str) -> String, name: &str) -> Result<bool> {
    let v = get(name);
    match v.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(invalid(name, &v, "expected true or false")),
    }
}

fn number<T: FromStr>(get: &impl Fn(&str) -> String, name: &str) -> Result<T> {
    let v = get(name);
    v.trim()
        .parse()
        .map_err(|_| invalid(name, &v, "expected a non-negative whole number in range"))
}

/// Variables of ours that are not settings of `faas serve`: the command line's, and `--conf`'s.
const CLIENT_VARIABLES: &[&str] = &["FAAS_GATEWAY", "FAAS_CONF"];

/// Prefixes of our variables: a name with one that is not a setting is probably a typo.
const OUR_PREFIXES: &[&str] = &["FAAS_", "REAPER_", "GATEWAY_", "K8S_"];

/// Checks the names of the environment's variables: one that is not a setting but is within a
/// few letters of one (`FAAS_ACTIVATION_TIMEUOT`) is an error naming the setting it resembles;
/// other unknown `FAAS_*` names are returned, to be reported as ignored. Kubernetes' service
/// links (`FAAS_GATEWAY_SERVICE_HOST`, `FAAS_GATEWAY_PORT_8080_TCP`, ...) are not ours.
pub fn check_environment(names: impl IntoIterator<Item = String>) -> Result<Vec<String>> {
    let mut ignored = Vec::new();
    for name in names {
        let ours = OUR_PREFIXES.iter().any(|p| name.starts_with(p));
        if !ours
            || SETTINGS.iter().any(|(n, _)| *n == name)
            || CLIENT_VARIABLES.contains(&name.as_str())
            || is_service_link(&name)
        {
            continue;
        }
        let known = SETTINGS
            .iter()
            .map(|(n, _)| *n)
            .chain(CLIENT_VARIABLES.iter().copied());
        match nearest(&name, known) {
            Some(near) => {
                return Err(Error::BadRequest(format!(
                    "unknown variable {name}: did you mean {near}? (README: Configuration)"
                )))
            }
            None if name.starts_with("FAAS_") => ignored.push(name),
            None => {}
        }
    }
    Ok(ignored)
}

/// Whether a variable is one Kubernetes sets for a Service (`<SERVICE>_SERVICE_HOST`,
/// `<SERVICE>_PORT_8080_TCP_ADDR`, ...).
fn is_service_link(name: &str) -> bool {
    name.ends_with("_SERVICE_HOST")
        || name.contains("_SERVICE_PORT")
        || name.ends_with("_PORT")
        || name.contains("_PORT_")
            && (name.contains("_TCP") || name.contains("_UDP") || name.contains("_SCTP"))
}

/// The known name closest to `name`, if it is close enough to be what was meant.
fn nearest<'a>(name: &str, known: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    known
        .map(|k| (strsim::levenshtein(name, k), k))
        .filter(|(d, k)| *d <= 3.max(k.len() / 6))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

fn invalid(name: &str, value: &str, why: &str) -> Error {
    Error::BadRequest(format!("invalid {name}={value:?}: {why}"))
}

fn file_section(text: &str) -> Result<HashMap<String, String>> {
    let doc: serde_yaml::Value = serde_yaml::from_str(text)
        .map_err(|e| Error::BadRequest(format!("the configuration file is not valid YAML: {e}")))?;
    let mut out = HashMap::new();
    if let Some(serde_yaml::Value::Mapping(m)) = doc.get("faas") {
        let known: Vec<String> = SETTINGS.iter().map(|(n, _)| file_key(n)).collect();
        for (k, v) in m {
            let (Some(k), Some(v)) = (k.as_str(), scalar(v)) else {
                continue;
            };
            let k = k.to_ascii_lowercase();
            if !known.contains(&k) {
                let hint = match nearest(&k, known.iter().map(String::as_str)) {
                    Some(near) => format!("did you mean {near}?"),
                    None => "the keys are the variables of the README's Configuration in lower \
                             case, without FAAS_"
                        .into(),
                };
                return Err(Error::BadRequest(format!(
                    "unknown key `{k}` in the faas: section of the configuration file: {hint}"
                )));
            }
            out.insert(k, v);
        }
    }
    Ok(out)
}

/// A setting's key in the file: its variable in lower case without `FAAS_`.
fn file_key(name: &str) -> String {
    name.strip_prefix("FAAS_")
        .unwrap_or(name)
        .to_ascii_lowercase()
}

fn scalar(v: &serde_yaml::Value) -> Option<String> {
    match v {
        serde_yaml::Value::String(s) => Some(s.clone()),
        serde_yaml::Value::Number(n) => Some(n.to_string()),
        serde_yaml::Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// The state directory when `FAAS_STATE_DIR` is unset: `$XDG_STATE_HOME/poorman-faas`, else
/// `~/.local/state/poorman-faas` (also where the command line looks for the admin token).
pub fn default_state_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("XDG_STATE_HOME") {
        return PathBuf::from(d).join("poorman-faas");
    }
    match std::env::var_os("HOME") {
        Some(h) => PathBuf::from(h).join(".local/state/poorman-faas"),
        None => PathBuf::from(".poorman-faas"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(pairs: &[(&str, &str)]) -> Result<Config> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_sources(None, |k| map.get(k).cloned())
    }

    #[test]
    fn defaults_follow_the_original() {
        let c = with(&[("FAAS_RUNTIME", "local")]).unwrap();
        assert_eq!(c.port, 8080);
        assert_eq!(c.reaper_poll_every, Duration::from_secs(10));
        assert_eq!(c.reaper_time_to_live, Duration::from_secs(30));
        assert_eq!(c.path_prefix, "/gateway");
        assert_eq!(c.max_body_bytes, 8 << 20);
        assert_eq!(c.admin_rate_limit, 10);
        assert!(c.pin_threads);
        assert!(!with(&[("FAAS_PIN_THREADS", "false")]).unwrap().pin_threads);
    }

    #[test]
    fn sizes_as_kubernetes_writes_them() {
        assert_eq!(parse_quantity("512Mi"), Some(512 << 20));
        assert_eq!(parse_quantity("1Gi"), Some(1 << 30));
        assert_eq!(parse_quantity("500M"), Some(500_000_000));
        assert_eq!(parse_quantity("4096"), Some(4096));
        assert_eq!(parse_quantity(""), Some(0));
        for bad in ["Mi", "-1", "1.5Gi", "12 Mi", "1Xi", "+5"] {
            assert_eq!(parse_quantity(bad), None, "{bad}");
        }
        let e = with(&[("FAAS_FUNCTION_MEMORY_LIMIT", "lots")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("FAAS_FUNCTION_MEMORY_LIMIT"), "{e}");
    }

    #[test]
    fn an_open_admin_api_excludes_a_token() {
        let c = with(&[("FAAS_ADMIN_OPEN", "true")]).unwrap();
        assert!(c.admin_open && c.admin_token.is_none());
        let e = with(&[("FAAS_ADMIN_OPEN", "true"), ("FAAS_ADMIN_TOKEN", "t")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("FAAS_ADMIN_OPEN"), "{e}");
    }

    #[test]
    fn go_durations() {
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
    }

    #[test]
    fn bad_values_name_the_variable() {
        let e = with(&[("REAPER_POLL_EVERY", "soon")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("REAPER_POLL_EVERY"), "{e}");
        let e = with(&[("PORT", "http")]).unwrap_err().to_string();
        assert!(e.contains("PORT"), "{e}");
        let e = with(&[("GATEWAY_PATH_PREFIX", "/gateway/")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("GATEWAY_PATH_PREFIX"), "{e}");
        let e = with(&[("FAAS_PIN_THREADS", "maybe")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("FAAS_PIN_THREADS"), "{e}");
        let e = with(&[("FAAS_RUNTIME", "docker")]).unwrap_err().to_string();
        assert!(e.contains("FAAS_RUNTIME"), "{e}");
    }

    #[test]
    fn misspelt_names_stop_start_up_and_name_the_setting() {
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let e = check_environment(names(&["FAAS_ACTIVATION_TIMEUOT"]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("FAAS_ACTIVATION_TIMEUOT") && e.contains("FAAS_ACTIVATION_TIMEOUT"),
            "{e}"
        );
        let e = check_environment(names(&["REAPER_TIME_TO_LIEV"]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("REAPER_TIME_TO_LIVE"), "{e}");
        // Ours but not the server's, Kubernetes' service links, others' variables.
        let fine = names(&[
            "FAAS_GATEWAY",
            "FAAS_ADMIN_TOKEN",
            "FAAS_GATEWAY_SERVICE_HOST",
            "FAAS_GATEWAY_PORT_8080_TCP_ADDR",
            "HOME",
            "FAAS_SOMETHING_ELSE_ENTIRELY",
        ]);
        assert_eq!(
            check_environment(fine).unwrap(),
            vec!["FAAS_SOMETHING_ELSE_ENTIRELY"]
        );
        let yaml = "faas:\n  port: 9000\n  activation_timout: 5s\n";
        let e = Config::from_sources(Some(yaml), |_| None)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("activation_timout") && e.contains("activation_timeout"),
            "{e}"
        );
        let shipped = include_str!("../../conf/faas.yaml");
        Config::from_sources(Some(shipped), |_| None).expect("the shipped file is valid");
    }

    #[test]
    fn environment_overrides_the_file() {
        let yaml = "threads: 2\nfaas:\n  port: 9000\n  reaper_time_to_live: 10m\n";
        let c = Config::from_sources(Some(yaml), |k| (k == "PORT").then(|| "9100".into())).unwrap();
        assert_eq!(c.port, 9100);
        assert_eq!(c.reaper_time_to_live, Duration::from_secs(600));
    }
}
