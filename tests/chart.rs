//! The Helm chart, checked with a real helm and the rendered objects with kubernetes-validate.

mod harness;

use base64::Engine;
use harness::{render_chart, run_tool};
use serde_yaml::Value;

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in the chart"))
}

#[test]
fn helm_lint_strict_passes() {
    run_tool("helm", &["lint", "--strict", "charts/poorman-faas"]);
}

#[test]
fn rendered_manifests_pass_kubernetes_validate_strict() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rendered.yaml");
    let text = run_tool(
        "helm",
        &[
            "template",
            "faas",
            "charts/poorman-faas",
            "--namespace",
            "faas",
        ],
    );
    std::fs::write(&path, text).unwrap();
    let out = run_tool(
        "kubernetes-validate",
        &["--strict", "-k", "1.33.0", path.to_str().unwrap()],
    );
    for kind in [
        "serviceaccount",
        "role",
        "rolebinding",
        "secret",
        "service",
        "deployment",
    ] {
        assert!(
            out.contains(&format!("passed for resource {kind}/")),
            "{kind} not validated:\n{out}"
        );
    }
}

#[test]
fn the_chart_has_the_objects_of_the_original() {
    let docs = render_chart(&[]);
    find(&docs, "ServiceAccount", "faas-gateway-sa");
    let binding = find(&docs, "RoleBinding", "faas-gateway-rolebinding");
    assert_eq!(binding["roleRef"]["name"], "faas-gateway-role");
    assert_eq!(binding["subjects"][0]["name"], "faas-gateway-sa");
    let svc = find(&docs, "Service", "faas-gateway");
    assert_eq!(svc["spec"]["type"], "LoadBalancer");
    assert_eq!(svc["spec"]["ports"][0]["port"], 8080);
    let dep = find(&docs, "Deployment", "faas-gateway");
    let pod = &dep["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], "faas-gateway-sa");
    let c = &pod["containers"][0];
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/health");
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/health");
    assert!(
        c["lifecycle"]["preStop"]["sleep"]["seconds"]
            .as_u64()
            .unwrap()
            > 0
    );
    let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
    let env = |name: &str| {
        c["env"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|e| e["name"] == name)
            .cloned()
            .unwrap_or(Value::Null)
    };
    assert_eq!(env("FAAS_RUNTIME")["value"], "kubernetes");
    // The gateway's own drain fits in the pod's grace period after the preStop sleep.
    let drain = env("FAAS_SHUTDOWN_GRACE")["value"]
        .as_str()
        .unwrap()
        .trim_end_matches('s')
        .parse::<u64>()
        .unwrap();
    assert!(
        drain < grace,
        "FAAS_SHUTDOWN_GRACE {drain}s must be below the grace period {grace}s"
    );
    assert_eq!(
        env("FAAS_ADMIN_TOKEN")["valueFrom"]["secretKeyRef"]["name"],
        "faas-gateway-admin"
    );
}

#[test]
fn the_admin_token_is_generated_unless_given() {
    let token = |docs: &[Value]| {
        let b64 = find(docs, "Secret", "faas-gateway-admin")["data"]["token"]
            .as_str()
            .unwrap()
            .to_string();
        String::from_utf8(
            base64::engine::general_purpose::STANDARD
                .decode(b64)
                .unwrap(),
        )
        .unwrap()
    };
    let generated = token(&render_chart(&[]));
    assert!(generated.len() >= 32, "{generated:?}");
    assert_ne!(
        generated,
        token(&render_chart(&[])),
        "a fresh random token per install"
    );
    assert_eq!(
        token(&render_chart(&["--set", "adminToken=s3cret"])),
        "s3cret"
    );
}

#[test]
fn values_reach_the_gateway() {
    let docs = render_chart(&[
        "--set",
        "reaper.timeToLive=5m",
        "--set",
        "activation.maxPending=7",
        "--set",
        "adminRateLimit=0",
        "--set",
        "functions.image=example.org/uv:1",
    ]);
    let dep = find(&docs, "Deployment", "faas-gateway");
    let env = dep["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_sequence()
        .unwrap();
    let get = |n: &str| {
        env.iter().find(|e| e["name"] == n).unwrap()["value"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(get("REAPER_TIME_TO_LIVE"), "5m");
    assert_eq!(get("FAAS_ACTIVATION_MAX_PENDING"), "7");
    assert_eq!(get("FAAS_ADMIN_RATE_LIMIT"), "0");
    assert_eq!(get("FAAS_PIN_THREADS"), "false");
    assert_eq!(get("FAAS_FUNCTION_IMAGE"), "example.org/uv:1");
}
