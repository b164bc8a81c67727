//! The Kubernetes objects of a function: names, labels, and the ConfigMap, Secret, Deployment and
//! Service the runtime applies. Pure functions, tested without a server.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::ByteString;
use serde_json::json;

use crate::config::KubeSettings;
use crate::function::{FunctionDef, FunctionSpec};
use crate::{Error, Result};

/// Label on every object the gateway manages.
pub const MANAGED: &str = "poorman-faas.io/managed";
/// Label naming the function an object belongs to.
pub const SERVICE_ID: &str = "poorman-faas.io/service-id";
/// Deployment annotation holding the function's spec as JSON.
pub const SPEC: &str = "poorman-faas.io/spec";
/// Pod template annotation that rolls the pods when a function is updated.
pub const VERSION: &str = "poorman-faas.io/version";
/// The port functions listen on in a pod.
pub const PORT: i32 = 8000;
/// The label EndpointSlices carry naming their Service.
pub const SLICE_SERVICE: &str = "kubernetes.io/service-name";
/// The user and group function processes run as: not root, and no user that images tend to own
/// files as (65532 is the distroless images' `nonroot`).
pub const RUN_AS: i64 = 65532;

// The writable directories of a function pod, each its own volume (the root filesystem is
// read-only): `HOME`, also the working directory; `TMPDIR`; uv's cache, with the interpreters
// uv downloads, so that a shared cache PVC keeps them too.
const HOME: &str = "/home/function";
const TMP: &str = "/tmp";
const UV_CACHE: &str = "/uv-cache";

/// The names of a function's objects. `service-<uuid>` keeps the original's names
/// (`configmap-<uuid>`, `deployment-<uuid>`, the Service `service-<uuid>`, pods `app: app-<uuid>`);
/// any other name `n` has `configmap-n`, `secret-n`, `deployment-n` and the Service `n`. The map
/// is one-to-one because a bare UUID is not a valid name ([`validate_name`]): `service-foo` and
/// `foo` own different objects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    /// The ConfigMap holding `main.py`.
    pub configmap: String,
    /// The Secret holding the dot file's entries.
    pub secret: String,
    /// The Deployment.
    pub deployment: String,
    /// The Service (the function's name).
    pub service: String,
    /// The `app` label of its pods (at most 63 characters, so not unique on its own: selectors
    /// pair it with [`SERVICE_ID`]).
    pub app: String,
}

/// Names of the objects of function `name`.
pub fn names(name: &str) -> Names {
    let id = match name.strip_prefix("service-") {
        Some(uuid) if is_uuid(uuid) => uuid,
        _ => name,
    };
    let mut app = format!("app-{id}");
    app.truncate(63);
    Names {
        configmap: format!("configmap-{id}"),
        secret: format!("secret-{id}"),
        deployment: format!("deployment-{id}"),
        service: name.to_string(),
        app,
    }
}

/// A lowercase hyphenated UUID (`8-4-4-4-12` hex digits), as `service-<uuid>` names carry.
fn is_uuid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
}

/// Refuses (400) a name Kubernetes would refuse for the function's Service, a DNS-1035 label: at
/// most 63 lowercase letters, digits and `-`, starting with a letter and ending with a letter or
/// digit; and a bare UUID, which names the objects of `service-<uuid>`.
pub fn validate_name(name: &str) -> Result<()> {
    let b = name.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_lowercase()
        && b[b.len() - 1] != b'-'
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-');
    if !ok {
        return Err(Error::BadRequest(format!(
            "invalid function name {name:?} on Kubernetes: its Service needs a DNS-1035 label, \
             1 to 63 lowercase letters, digits and `-`, starting with a letter and ending with a \
             letter or digit"
        )));
    }
    if is_uuid(name) {
        return Err(Error::BadRequest(format!(
            "invalid function name {name:?}: a bare UUID names the objects of service-{name}; \
             call it service-{name}"
        )));
    }
    Ok(())
}

/// Whether an object with these labels was made by us for function `name`.
pub fn owned_by(labels: Option<&BTreeMap<String, String>>, name: &str) -> bool {
    labels.is_some_and(|l| {
        l.get(MANAGED).is_some_and(|v| v == "true") && l.get(SERVICE_ID).is_some_and(|v| v == name)
    })
}

fn labels(name: &str) -> serde_json::Value {
    json!({ MANAGED: "true", SERVICE_ID: name })
}

fn typed<T: serde::de::DeserializeOwned>(what: &str, v: serde_json::Value) -> Result<T> {
    serde_json::from_value(v).map_err(|e| Error::internal(format!("building the {what}"), e))
}

/// The ConfigMap with the script as `main.py`.
pub fn configmap(def: &FunctionDef, ns: &str) -> Result<ConfigMap> {
    let n = names(&def.spec.name);
    typed(
        "ConfigMap",
        json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": n.configmap, "namespace": ns, "labels": labels(&def.spec.name)},
            "data": {"main.py": def.script},
        }),
    )
}

/// The Secret with the dot file's entries, which become the function's environment.
pub fn secret(def: &FunctionDef, ns: &str) -> Result<Secret> {
    let n = names(&def.spec.name);
    let mut s: Secret = typed(
        "Secret",
        json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": n.secret, "namespace": ns, "labels": labels(&def.spec.name)},
            "type": "Opaque",
        }),
    )?;
    let data: BTreeMap<String, ByteString> = def
        .env
        .iter()
        .map(|(k, v)| (k.clone(), ByteString(v.clone().into_bytes())))
        .collect();
    s.data = Some(data);
    Ok(s)
}

/// The Deployment running `uv run --script /scripts/main.py` with `PORT=8000`.
///
/// Its pods meet the `restricted` Pod Security Standard: non-root user [`RUN_AS`], no privilege
/// escalation, every capability dropped, the runtime's default seccomp profile, only configMap,
/// emptyDir and persistentVolumeClaim volumes; besides, no ServiceAccount token (functions are
/// other users' code) and a read-only root filesystem.
pub fn deployment(def: &FunctionDef, ns: &str, k: &KubeSettings) -> Result<Deployment> {
    let spec = &def.spec;
    let n = names(&spec.name);
    let spec_json =
        serde_json::to_string(spec).map_err(|e| Error::internal("encoding the spec", e))?;
    let probe = if k.health_path.is_empty() {
        json!({"tcpSocket": {"port": PORT}})
    } else {
        json!({"httpGet": {"path": k.health_path, "port": PORT}})
    };
    let quantities = |pairs: [(&str, &String); 2]| -> serde_json::Map<String, serde_json::Value> {
        pairs
            .into_iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(k, v)| (k.to_string(), json!(v)))
            .collect()
    };
    let requests = quantities([("cpu", &k.cpu_request), ("memory", &k.memory_request)]);
    let limits = quantities([("cpu", &k.cpu_limit), ("memory", &k.memory_limit)]);
    let uv_cache = if k.uv_cache_pvc.is_empty() {
        json!({"name": "uv-cache", "emptyDir": {}})
    } else {
        json!({"name": "uv-cache", "persistentVolumeClaim": {"claimName": k.uv_cache_pvc}})
    };
    let mut pod_labels = labels(&spec.name);
    pod_labels["app"] = json!(n.app);
    typed(
        "Deployment",
        json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {
                "name": n.deployment,
                "namespace": ns,
                "labels": labels(&spec.name),
                "annotations": {SPEC: spec_json},
            },
            "spec": {
                "replicas": spec.replicas,
                "selector": {"matchLabels": {"app": n.app, SERVICE_ID: spec.name}},
                // New pods are ready before old ones go.
                "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
                "template": {
                    "metadata": {
                        "labels": pod_labels,
                        "annotations": {VERSION: spec.version.to_string()},
                    },
                    "spec": {
                        "terminationGracePeriodSeconds": 30,
                        "automountServiceAccountToken": false,
                        "securityContext": {
                            "runAsNonRoot": true,
                            "runAsUser": RUN_AS,
                            "runAsGroup": RUN_AS,
                            // A cache PVC becomes writable; OnRootMismatch spares a full chown
                            // of a large shared cache on every start.
                            "fsGroup": RUN_AS,
                            "fsGroupChangePolicy": "OnRootMismatch",
                            "seccompProfile": {"type": "RuntimeDefault"},
                        },
                        "containers": [{
                            "name": "function",
                            "image": k.image,
                            "command": ["uv", "run", "--script", "/scripts/main.py"],
                            "workingDir": HOME,
                            "env": [
                                {"name": "PORT", "value": PORT.to_string()},
                                {"name": "PYTHONUNBUFFERED", "value": "1"},
                                {"name": "HOME", "value": HOME},
                                {"name": "TMPDIR", "value": TMP},
                                {"name": "UV_CACHE_DIR", "value": UV_CACHE},
                                {"name": "UV_PYTHON_INSTALL_DIR", "value": format!("{UV_CACHE}/python")},
                            ],
                            "envFrom": [{"secretRef": {"name": n.secret}}],
                            "ports": [{"name": "http", "containerPort": PORT}],
                            // The first start may install dependencies into an empty cache.
                            "startupProbe": with(&probe, json!({"periodSeconds": 1, "failureThreshold": 300})),
                            "readinessProbe": with(&probe, json!({"periodSeconds": 2})),
                            "livenessProbe": with(&probe, json!({"periodSeconds": 10, "failureThreshold": 3})),
                            // Endpoints are withdrawn first; in-flight requests finish meanwhile.
                            "lifecycle": {"preStop": {"exec": {"command": ["sleep", "5"]}}},
                            "resources": {"requests": requests, "limits": limits},
                            "securityContext": {
                                "allowPrivilegeEscalation": false,
                                "readOnlyRootFilesystem": true,
                                "runAsNonRoot": true,
                                "capabilities": {"drop": ["ALL"]},
                            },
                            "volumeMounts": [
                                {"name": "script", "mountPath": "/scripts", "readOnly": true},
                                {"name": "home", "mountPath": HOME},
                                {"name": "tmp", "mountPath": TMP},
                                {"name": "uv-cache", "mountPath": UV_CACHE},
                            ],
                        }],
                        "volumes": [
                            {"name": "script", "configMap": {"name": n.configmap}},
                            {"name": "home", "emptyDir": {}},
                            {"name": "tmp", "emptyDir": {}},
                            uv_cache,
                        ],
                    },
                },
            },
        }),
    )
}

/// `base` with the keys of `extra` added.
fn with(base: &serde_json::Value, extra: serde_json::Value) -> serde_json::Value {
    let mut out = base.clone();
    if let (Some(o), serde_json::Value::Object(e)) = (out.as_object_mut(), extra) {
        o.extend(e);
    }
    out
}

/// The ClusterIP Service, port 80 → 8000.
pub fn service(spec: &FunctionSpec, ns: &str) -> Result<Service> {
    let n = names(&spec.name);
    typed(
        "Service",
        json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": n.service, "namespace": ns, "labels": labels(&spec.name)},
            "spec": {
                "type": "ClusterIP",
                "selector": {"app": n.app, SERVICE_ID: spec.name},
                "ports": [{"name": "http", "port": 80, "targetPort": PORT, "protocol": "TCP"}],
            },
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::function::DeployRequest;

    fn def(name: &str) -> FunctionDef {
        use base64::Engine;
        let script = "# /// script\n# requires-python = \">=3.11\"\n# ///\nprint(1)\n";
        let body = serde_json::json!({
            "script": base64::engine::general_purpose::STANDARD.encode(script),
            "dot_file": base64::engine::general_purpose::STANDARD.encode("HIDDEN_MESSAGE=\"psst\"\n"),
            "option": {"name": name, "replica": 2},
        });
        DeployRequest::from_json(body.to_string().as_bytes())
            .unwrap()
            .into_new(0)
            .unwrap()
    }

    fn settings() -> KubeSettings {
        KubeSettings {
            image: "ghcr.io/astral-sh/uv:python3.12-alpine".into(),
            health_path: "/health".into(),
            cpu_request: "50m".into(),
            memory_request: "64Mi".into(),
            cpu_limit: String::new(),
            memory_limit: "512Mi".into(),
            uv_cache_pvc: String::new(),
        }
    }

    #[test]
    fn names_follow_the_original() {
        let uuid = "0b4e3c1a-9f2d-4e6b-8a7c-1d2e3f4a5b6c";
        let n = names(&format!("service-{uuid}"));
        assert_eq!(n.configmap, format!("configmap-{uuid}"));
        assert_eq!(n.deployment, format!("deployment-{uuid}"));
        assert_eq!(n.service, format!("service-{uuid}"));
        assert_eq!(n.app, format!("app-{uuid}"));
        assert_eq!(names("hello").deployment, "deployment-hello");
        assert!(names(&"a".repeat(63)).app.len() <= 63);
    }

    #[test]
    fn names_map_one_to_one() {
        let uuid = "0b4e3c1a-9f2d-4e6b-8a7c-1d2e3f4a5b6c";
        let all = [
            "foo".to_string(),
            "service-foo".to_string(),
            "service-service-foo".to_string(),
            format!("service-{uuid}"),
            format!("service-service-{uuid}"),
            format!("x{}", &uuid[1..]),
        ];
        let mut seen = std::collections::HashSet::new();
        for n in &all {
            assert!(validate_name(n).is_ok(), "{n}");
            let o = names(n);
            for obj in [o.configmap, o.secret, o.deployment, o.service] {
                assert!(seen.insert(obj.clone()), "{obj} is shared ({n})");
            }
        }
        assert!(
            validate_name(uuid).is_err(),
            "a bare UUID would share service-<uuid>'s objects"
        );
    }

    #[test]
    fn names_kubernetes_refuses_are_refused() {
        for bad in ["1abc", "-a", "a-", "A", "a_b", "", &"a".repeat(64)] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
        for good in ["a", "a1", "a-b", &"a".repeat(63)] {
            assert!(validate_name(good).is_ok(), "{good:?}");
        }
    }

    #[test]
    fn ownership_needs_both_labels() {
        let l = |m: &str, id: &str| {
            Some(BTreeMap::from([
                (MANAGED.to_string(), m.to_string()),
                (SERVICE_ID.to_string(), id.to_string()),
            ]))
        };
        assert!(owned_by(l("true", "f").as_ref(), "f"));
        assert!(!owned_by(l("true", "g").as_ref(), "f"));
        assert!(!owned_by(l("false", "f").as_ref(), "f"));
        assert!(!owned_by(None, "f"));
    }

    #[test]
    fn every_object_is_labelled() {
        let d = def("f1234");
        let cm = configmap(&d, "faas").unwrap();
        let sec = secret(&d, "faas").unwrap();
        let dep = deployment(&d, "faas", &settings()).unwrap();
        let svc = service(&d.spec, "faas").unwrap();
        for meta in [&cm.metadata, &sec.metadata, &dep.metadata, &svc.metadata] {
            let l = meta.labels.as_ref().unwrap();
            assert_eq!(l[MANAGED], "true");
            assert_eq!(l[SERVICE_ID], "f1234");
            assert_eq!(meta.namespace.as_deref(), Some("faas"));
        }
        assert_eq!(cm.data.unwrap()["main.py"], d.script);
        assert_eq!(sec.data.unwrap()["HIDDEN_MESSAGE"].0, b"psst");
    }

    #[test]
    fn the_deployment_runs_the_script_with_uv_on_port_8000() {
        let d = def("f1234");
        let dep = deployment(&d, "faas", &settings()).unwrap();
        let spec = dep.spec.unwrap();
        assert_eq!(spec.replicas, Some(2));
        let pod = spec.template.spec.unwrap();
        let c = &pod.containers[0];
        assert_eq!(
            c.command.as_ref().unwrap(),
            &["uv", "run", "--script", "/scripts/main.py"]
        );
        let env = c.env.as_ref().unwrap();
        assert!(env
            .iter()
            .any(|e| e.name == "PORT" && e.value.as_deref() == Some("8000")));
        assert_eq!(
            c.env_from.as_ref().unwrap()[0]
                .secret_ref
                .as_ref()
                .unwrap()
                .name,
            "secret-f1234"
        );
        let ready = c
            .readiness_probe
            .as_ref()
            .unwrap()
            .http_get
            .as_ref()
            .unwrap();
        assert_eq!(ready.path.as_deref(), Some("/health"));
        assert!(c.startup_probe.is_some() && c.liveness_probe.is_some());
        let labels = spec.template.metadata.unwrap().labels.unwrap();
        assert_eq!(labels["app"], "app-f1234");
        let vols = pod.volumes.unwrap();
        assert_eq!(vols[0].config_map.as_ref().unwrap().name, "configmap-f1234");
        let stored: FunctionSpec =
            serde_json::from_str(&dep.metadata.annotations.unwrap()[SPEC]).unwrap();
        assert_eq!(stored, d.spec);
    }

    #[test]
    fn function_pods_are_hardened() {
        let dep = deployment(&def("f"), "faas", &settings()).unwrap();
        let pod = serde_json::to_value(dep.spec.unwrap().template.spec.unwrap()).unwrap();
        assert_eq!(pod["automountServiceAccountToken"], false);
        let sc = &pod["securityContext"];
        assert_eq!(sc["runAsNonRoot"], true);
        assert_eq!(sc["runAsUser"], RUN_AS);
        assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault");
        let c = &pod["containers"][0];
        let csc = &c["securityContext"];
        assert_eq!(csc["allowPrivilegeEscalation"], false);
        assert_eq!(csc["readOnlyRootFilesystem"], true);
        assert_eq!(csc["capabilities"]["drop"], json!(["ALL"]));
        // Every directory uv and Python write to is a mounted volume.
        let mounts: Vec<&str> = c["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["readOnly"] != true)
            .map(|m| m["mountPath"].as_str().unwrap())
            .collect();
        let env = |name: &str| {
            c["env"]
                .as_array()
                .unwrap()
                .iter()
                .find(|e| e["name"] == name)
                .unwrap()["value"]
                .as_str()
                .unwrap()
                .to_string()
        };
        for var in ["HOME", "TMPDIR", "UV_CACHE_DIR", "UV_PYTHON_INSTALL_DIR"] {
            let dir = env(var);
            assert!(
                mounts
                    .iter()
                    .any(|m| dir == *m || dir.starts_with(&format!("{m}/"))),
                "{var}={dir} is on the read-only root filesystem"
            );
        }
        assert_eq!(c["workingDir"], env("HOME"));
        for v in pod["volumes"].as_array().unwrap() {
            assert!(
                ["configMap", "emptyDir"].iter().any(|k| v.get(k).is_some()),
                "{v}"
            );
        }
    }

    #[test]
    fn a_cache_pvc_replaces_the_cache_empty_dir() {
        let mut k = settings();
        k.uv_cache_pvc = "uv-cache".into();
        let dep = deployment(&def("f"), "faas", &k).unwrap();
        let vols = dep.spec.unwrap().template.spec.unwrap().volumes.unwrap();
        let cache = vols.iter().find(|v| v.name == "uv-cache").unwrap();
        assert_eq!(
            cache.persistent_volume_claim.as_ref().unwrap().claim_name,
            "uv-cache"
        );
        assert!(cache.empty_dir.is_none());
    }

    #[test]
    fn tcp_probe_when_no_health_path() {
        let mut k = settings();
        k.health_path.clear();
        let dep = deployment(&def("f"), "faas", &k).unwrap();
        let c = &dep.spec.unwrap().template.spec.unwrap().containers[0];
        assert!(c.readiness_probe.as_ref().unwrap().tcp_socket.is_some());
    }

    #[test]
    fn the_service_maps_80_to_8000() {
        let svc = service(&def("f1234").spec, "faas").unwrap();
        let spec = svc.spec.unwrap();
        assert_eq!(spec.type_.as_deref(), Some("ClusterIP"));
        assert_eq!(spec.ports.as_ref().unwrap()[0].port, 80);
        assert_eq!(spec.selector.unwrap()["app"], "app-f1234");
    }
}
