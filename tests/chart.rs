//! The Helm chart, checked with a real helm and the rendered objects with kubernetes-validate.

mod harness;
mod pss;

use base64::Engine;
use control::runtime::kube::objects::{MANAGED, PORT};
use harness::{render_chart, run_tool};
use serde_yaml::Value;

/// Every optional object of the chart switched on.
const ALL_ON: &[&str] = &[
    "--set",
    "namespace.create=true",
    "--set",
    "namespace.name=faas-fns",
    "--set",
    "networkPolicy.enabled=true",
    "--set",
    "networkPolicy.apiServerCIDRs={10.0.0.5/32,10.96.0.1/32,fd00::1/128}",
];

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
fn helm_lint_strict_passes_with_every_option_on() {
    let mut args = vec!["lint", "--strict", "charts/poorman-faas"];
    args.extend_from_slice(ALL_ON);
    run_tool("helm", &args);
}

#[test]
fn rendered_manifests_pass_kubernetes_validate_strict() {
    let default_kinds = [
        "serviceaccount",
        "role",
        "rolebinding",
        "secret",
        "service",
        "deployment",
        "poddisruptionbudget",
    ];
    for (options, extra_kinds) in [
        (&[][..], &[][..]),
        (ALL_ON, &["namespace", "networkpolicy"][..]),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rendered.yaml");
        let mut args = vec![
            "template",
            "faas",
            "charts/poorman-faas",
            "--namespace",
            "faas",
        ];
        args.extend_from_slice(options);
        std::fs::write(&path, run_tool("helm", &args)).unwrap();
        let out = run_tool(
            "kubernetes-validate",
            &["--strict", "-k", "1.33.0", path.to_str().unwrap()],
        );
        for kind in default_kinds.iter().chain(extra_kinds) {
            assert!(
                out.contains(&format!("passed for resource {kind}/")),
                "{kind} not validated with {options:?}:\n{out}"
            );
        }
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
fn replicas_spread_with_a_disruption_budget_and_a_lease_to_elect_a_leader() {
    let docs = render_chart(&[]);
    let dep = find(&docs, "Deployment", "faas-gateway");
    assert_eq!(dep["spec"]["replicas"], 2);
    let pod = &dep["spec"]["template"]["spec"];
    let spread = &pod["topologySpreadConstraints"][0];
    assert_eq!(spread["topologyKey"], "kubernetes.io/hostname");
    assert_eq!(
        spread["labelSelector"]["matchLabels"],
        dep["spec"]["selector"]["matchLabels"]
    );
    let pdb = find(&docs, "PodDisruptionBudget", "faas-gateway");
    assert_eq!(pdb["spec"]["minAvailable"], 1);
    assert_eq!(
        pdb["spec"]["selector"]["matchLabels"],
        dep["spec"]["selector"]["matchLabels"]
    );
    let env = pod["containers"][0]["env"].as_sequence().unwrap();
    let var = |n: &str| env.iter().find(|e| e["name"] == n).cloned().unwrap();
    assert_eq!(
        var("POD_NAME")["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.name"
    );
    assert_eq!(
        var("K8S_NAMESPACE")["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.namespace"
    );
    assert_eq!(var("GATEWAY_SERVICE_NAME")["value"], "faas-gateway");
    assert_eq!(var("FAAS_LEADER_LEASE_DURATION")["value"], "15s");
    // The Lease verbs, and nothing more on leases.
    let role = find(&docs, "Role", "faas-gateway-role");
    let lease_rules: Vec<&Value> = role["rules"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter(|r| r["apiGroups"][0] == "coordination.k8s.io")
        .collect();
    assert_eq!(lease_rules.len(), 1);
    assert_eq!(lease_rules[0]["resources"][0], "leases");
    let verbs: Vec<&str> = lease_rules[0]["verbs"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(verbs, ["get", "create", "patch"]);
    // One replica: no budget that would block every drain.
    let one = render_chart(&["--set", "replicaCount=1"]);
    assert!(!one.iter().any(|d| d["kind"] == "PodDisruptionBudget"));
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

/// A YAML document as JSON, for the Pod Security checks.
fn json(v: &Value) -> serde_json::Value {
    serde_json::to_value(v).unwrap()
}

#[test]
fn the_gateway_pod_meets_the_restricted_pod_security_standard() {
    let docs = render_chart(&[]);
    let dep = find(&docs, "Deployment", "faas-gateway");
    let template = json(&dep["spec"]["template"]);
    let found = pss::violations(&template, pss::Profile::Restricted);
    assert!(found.is_empty(), "{found:#?}");
    let c = &dep["spec"]["template"]["spec"]["containers"][0]["securityContext"];
    assert_eq!(c["readOnlyRootFilesystem"], true);
}

#[test]
fn the_namespace_is_created_with_pod_security_labels_when_asked() {
    let create = |options: &[&str]| {
        let mut args = vec![
            "--set",
            "namespace.create=true",
            "--set",
            "namespace.name=faas-fns",
        ];
        args.extend_from_slice(options);
        render_chart(&args)
    };
    let docs = create(&[]);
    let ns = find(&docs, "Namespace", "faas-fns");
    assert_eq!(
        ns["metadata"]["annotations"]["helm.sh/resource-policy"], "keep",
        "uninstalling the chart would delete the functions"
    );
    let labels = json(&ns["metadata"]["labels"]);
    for mode in ["enforce", "audit", "warn"] {
        assert_eq!(
            labels[format!("pod-security.kubernetes.io/{mode}")],
            "restricted"
        );
    }
    // Everything but the release record goes there; the gateway runs functions where it is.
    for doc in docs.iter().filter(|d| d["kind"] != "Namespace") {
        assert_eq!(doc["metadata"]["namespace"], "faas-fns", "{doc:?}");
    }
    let binding = find(&docs, "RoleBinding", "faas-gateway-rolebinding");
    assert_eq!(binding["subjects"][0]["namespace"], "faas-fns");

    let baseline = create(&["--set", "namespace.podSecurity=baseline"]);
    let labels = json(&find(&baseline, "Namespace", "faas-fns")["metadata"]["labels"]);
    assert_eq!(labels["pod-security.kubernetes.io/enforce"], "baseline");
    let unlabelled = create(&["--set", "namespace.podSecurity="]);
    let labels = json(&find(&unlabelled, "Namespace", "faas-fns")["metadata"]["labels"]);
    assert!(labels.get("pod-security.kubernetes.io/enforce").is_none());

    assert!(
        !render_chart(&[]).iter().any(|d| d["kind"] == "Namespace"),
        "a namespace only when asked"
    );
    // helm stores the release in --namespace before it creates anything: that one cannot be
    // the chart's.
    let out = std::process::Command::new(harness::tool("helm"))
        .args([
            "template",
            "faas",
            "charts/poorman-faas",
            "--namespace",
            "faas",
        ])
        .args(["--set", "namespace.create=true"])
        .current_dir(harness::repo())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("namespace.create needs namespace.name"));
}

#[test]
fn the_network_policy_lets_only_the_gateway_in_and_keeps_functions_from_the_api_server() {
    assert!(!render_chart(&[])
        .iter()
        .any(|d| d["kind"] == "NetworkPolicy"));
    let docs = render_chart(ALL_ON);
    let np = json(find(&docs, "NetworkPolicy", "faas-functions"));
    let spec = &np["spec"];
    // It selects function pods, by the label the runtime gives them.
    assert_eq!(spec["podSelector"]["matchLabels"][MANAGED], "true");
    assert_eq!(
        spec["policyTypes"],
        serde_json::json!(["Ingress", "Egress"])
    );
    // In: only from the gateway's pods, only to the port functions listen on.
    let ingress = spec["ingress"].as_array().unwrap();
    assert_eq!(ingress.len(), 1, "{ingress:?}");
    let from = ingress[0]["from"].as_array().unwrap();
    assert_eq!(from.len(), 1);
    let gateway =
        json(&find(&docs, "Deployment", "faas-gateway")["spec"]["template"]["metadata"]["labels"]);
    let selector = from[0]["podSelector"]["matchLabels"].as_object().unwrap();
    assert!(!selector.is_empty() && from[0].get("namespaceSelector").is_none());
    for (k, v) in selector {
        assert_eq!(&gateway[k], v, "the gateway's pods lack {k}={v}");
    }
    assert_eq!(
        ingress[0]["ports"],
        serde_json::json!([{"protocol": "TCP", "port": PORT}])
    );
    // Out: DNS, and every address but the API server's.
    let egress = spec["egress"].as_array().unwrap();
    assert!(egress.iter().any(|r| r.get("to").is_none()
        && r["ports"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["port"] == 53)));
    let blocks: Vec<&serde_json::Value> = egress
        .iter()
        .filter_map(|r| r["to"].as_array())
        .flatten()
        .map(|peer| &peer["ipBlock"])
        .collect();
    assert!(blocks.iter().all(|b| !b.is_null()), "{egress:?}");
    let except = |cidr: &str| blocks.iter().find(|b| b["cidr"] == cidr).unwrap()["except"].clone();
    assert_eq!(
        except("0.0.0.0/0"),
        serde_json::json!(["10.0.0.5/32", "10.96.0.1/32"])
    );
    assert_eq!(except("::/0"), serde_json::json!(["fd00::1/128"]));
}

#[test]
fn the_pod_security_check_refuses_what_each_profile_refuses() {
    use pss::Profile::{Baseline, Restricted};
    let restricted = serde_json::json!({
        "metadata": {"labels": {"app": "a"}},
        "spec": {
            "securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{"name": "a", "image": "a", "securityContext": {
                "allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}}}],
            "volumes": [{"name": "v", "emptyDir": {}}],
        },
    });
    assert_eq!(
        pss::violations(&restricted, Restricted),
        Vec::<String>::new()
    );
    // runAsNonRoot and seccomp may be set on every container instead of the pod.
    let mut per_container = restricted.clone();
    per_container["spec"]["securityContext"] = serde_json::json!({});
    per_container["spec"]["containers"][0]["securityContext"]["runAsNonRoot"] = true.into();
    per_container["spec"]["containers"][0]["securityContext"]["seccompProfile"] =
        serde_json::json!({"type": "Localhost", "localhostProfile": "p.json"});
    assert_eq!(
        pss::violations(&per_container, Restricted),
        Vec::<String>::new()
    );

    let bad = serde_json::json!({
        "metadata": {"annotations": {"container.apparmor.security.beta.kubernetes.io/a": "unconfined"}},
        "spec": {
            "hostNetwork": true,
            "securityContext": {"runAsUser": 0, "sysctls": [{"name": "kernel.msgmax", "value": "1"}]},
            "containers": [{"name": "a", "image": "a",
                "ports": [{"containerPort": 80, "hostPort": 80}],
                "readinessProbe": {"httpGet": {"host": "10.0.0.1", "port": 80}},
                "securityContext": {
                    "privileged": true,
                    "capabilities": {"add": ["SYS_ADMIN"]},
                    "seccompProfile": {"type": "Unconfined"},
                    "seLinuxOptions": {"type": "spc_t"},
                    "procMount": "Unmasked",
                }}],
            "initContainers": [{"name": "i", "image": "i",
                "securityContext": {"capabilities": {"add": ["CHOWN"]}}}],
            "volumes": [{"name": "h", "hostPath": {"path": "/"}}, {"name": "n", "nfs": {"server": "s", "path": "/"}}],
        },
    });
    let controls = |profile| {
        let mut names: Vec<String> = pss::violations(&bad, profile)
            .iter()
            .map(|v| v.split(':').next().unwrap().to_string())
            .collect();
        names.dedup();
        names
    };
    assert_eq!(
        controls(Baseline),
        [
            "Baseline Host Namespaces",
            "Baseline Privileged Containers",
            "Baseline Capabilities",
            "Baseline HostPath Volumes",
            "Baseline Host Ports",
            "Baseline Host Probes / Lifecycle Hooks",
            "Baseline AppArmor (annotations)",
            "Baseline SELinux (type)",
            "Baseline /proc Mount Type",
            "Baseline Seccomp",
            "Baseline Sysctls",
        ]
    );
    let restricted_only: Vec<String> = controls(Restricted)
        .into_iter()
        .filter(|c| c.starts_with("Restricted"))
        .collect();
    assert_eq!(
        restricted_only,
        [
            "Restricted Volume Types",
            "Restricted Privilege Escalation",
            "Restricted Running as Non-root",
            "Restricted Running as Non-root user",
            "Restricted Seccomp",
            "Restricted Capabilities (drop)",
            "Restricted Capabilities (add)",
        ]
    );
    // The init container is held to the same rules: it adds CHOWN (restricted refuses it) and
    // does not set allowPrivilegeEscalation.
    let found = pss::violations(&bad, Restricted);
    assert!(
        found.iter().any(
            |v| v.contains("initContainers[*].securityContext.capabilities.add[*] = \"CHOWN\"")
        ),
        "{found:#?}"
    );
    assert!(
        found.iter().any(|v| v
            .contains("initContainers[*].securityContext.allowPrivilegeEscalation = undefined")),
        "{found:#?}"
    );
}
