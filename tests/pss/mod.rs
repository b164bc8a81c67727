//! The Pod Security Standards as data: every control of the `baseline` and `restricted` profiles
//! with the fields it restricts and the values it allows, as
//! <https://kubernetes.io/docs/concepts/security/pod-security-standards/> lists them (and
//! Kubernetes' `pod-security-admission` checks them, up to 1.35), and a check of a pod template
//! against them.
//!
//! Fields are written as the page writes them. `spec.containers[*]` stands for the page's
//! `spec.initContainers[*]` and `spec.ephemeralContainers[*]` lines too; `[*]` is every item of
//! a list, `['prefix/*']` every annotation whose key starts with `prefix/`.
#![allow(dead_code)]

use serde_json::Value;

/// A Pod Security Standards profile; `restricted` includes every `baseline` control.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Profile {
    /// Prevents known privilege escalations.
    Baseline,
    /// Current pod hardening best practice.
    Restricted,
}

/// What a control allows in its fields. Values are written as text (`false`, `RuntimeDefault`);
/// one ending in `*` allows every value with that prefix.
#[derive(Debug)]
pub enum Allowed {
    /// Undefined, or one of these.
    UnsetOr(&'static [&'static str]),
    /// One of these; undefined is refused.
    Only(&'static [&'static str]),
    /// Undefined, or anything but these.
    UnsetOrNot(&'static [&'static str]),
    /// A list that includes this value.
    Includes(&'static str),
    /// The first field (pod level) one of these and the others (container level) undefined or
    /// one of these; or, with the pod level undefined, every container one of these.
    PodOrEveryContainer(&'static [&'static str]),
}

/// One control of a profile.
#[derive(Debug)]
pub struct Control {
    /// Its profile.
    pub profile: Profile,
    /// Its name on the page.
    pub name: &'static str,
    /// The fields it restricts.
    pub fields: &'static [&'static str],
    /// What it allows in them.
    pub allowed: Allowed,
}

use Allowed::*;
use Profile::*;

/// Every control of both profiles.
pub const CONTROLS: &[Control] = &[
    // === baseline ===
    Control {
        profile: Baseline,
        name: "HostProcess",
        fields: &[
            "spec.securityContext.windowsOptions.hostProcess",
            "spec.containers[*].securityContext.windowsOptions.hostProcess",
        ],
        allowed: UnsetOr(&["false"]),
    },
    Control {
        profile: Baseline,
        name: "Host Namespaces",
        fields: &["spec.hostNetwork", "spec.hostPID", "spec.hostIPC"],
        allowed: UnsetOr(&["false"]),
    },
    Control {
        profile: Baseline,
        name: "Privileged Containers",
        fields: &["spec.containers[*].securityContext.privileged"],
        allowed: UnsetOr(&["false"]),
    },
    Control {
        profile: Baseline,
        name: "Capabilities",
        fields: &["spec.containers[*].securityContext.capabilities.add[*]"],
        allowed: UnsetOr(&[
            "AUDIT_WRITE",
            "CHOWN",
            "DAC_OVERRIDE",
            "FOWNER",
            "FSETID",
            "KILL",
            "MKNOD",
            "NET_BIND_SERVICE",
            "SETFCAP",
            "SETGID",
            "SETPCAP",
            "SETUID",
            "SYS_CHROOT",
        ]),
    },
    Control {
        profile: Baseline,
        name: "HostPath Volumes",
        fields: &["spec.volumes[*].hostPath"],
        allowed: UnsetOr(&[]),
    },
    Control {
        profile: Baseline,
        name: "Host Ports",
        fields: &["spec.containers[*].ports[*].hostPort"],
        allowed: UnsetOr(&["0"]),
    },
    Control {
        profile: Baseline,
        name: "Host Probes / Lifecycle Hooks",
        fields: &[
            "spec.containers[*].livenessProbe.httpGet.host",
            "spec.containers[*].readinessProbe.httpGet.host",
            "spec.containers[*].startupProbe.httpGet.host",
            "spec.containers[*].livenessProbe.tcpSocket.host",
            "spec.containers[*].readinessProbe.tcpSocket.host",
            "spec.containers[*].startupProbe.tcpSocket.host",
            "spec.containers[*].lifecycle.postStart.tcpSocket.host",
            "spec.containers[*].lifecycle.preStop.tcpSocket.host",
            "spec.containers[*].lifecycle.postStart.httpGet.host",
            "spec.containers[*].lifecycle.preStop.httpGet.host",
        ],
        allowed: UnsetOr(&[""]),
    },
    Control {
        profile: Baseline,
        name: "AppArmor",
        fields: &[
            "spec.securityContext.appArmorProfile.type",
            "spec.containers[*].securityContext.appArmorProfile.type",
        ],
        allowed: UnsetOr(&["RuntimeDefault", "Localhost"]),
    },
    Control {
        profile: Baseline,
        name: "AppArmor (annotations)",
        fields: &["metadata.annotations['container.apparmor.security.beta.kubernetes.io/*']"],
        allowed: UnsetOr(&["runtime/default", "localhost/*", ""]),
    },
    Control {
        profile: Baseline,
        name: "SELinux (type)",
        fields: &[
            "spec.securityContext.seLinuxOptions.type",
            "spec.containers[*].securityContext.seLinuxOptions.type",
        ],
        allowed: UnsetOr(&[
            "",
            "container_t",
            "container_init_t",
            "container_kvm_t",
            "container_engine_t",
        ]),
    },
    Control {
        profile: Baseline,
        name: "SELinux (user, role)",
        fields: &[
            "spec.securityContext.seLinuxOptions.user",
            "spec.containers[*].securityContext.seLinuxOptions.user",
            "spec.securityContext.seLinuxOptions.role",
            "spec.containers[*].securityContext.seLinuxOptions.role",
        ],
        allowed: UnsetOr(&[""]),
    },
    Control {
        profile: Baseline,
        name: "/proc Mount Type",
        fields: &["spec.containers[*].securityContext.procMount"],
        allowed: UnsetOr(&["Default"]),
    },
    Control {
        profile: Baseline,
        name: "Seccomp",
        fields: &[
            "spec.securityContext.seccompProfile.type",
            "spec.containers[*].securityContext.seccompProfile.type",
        ],
        allowed: UnsetOr(&["RuntimeDefault", "Localhost"]),
    },
    Control {
        profile: Baseline,
        name: "Sysctls",
        fields: &["spec.securityContext.sysctls[*].name"],
        allowed: UnsetOr(&[
            "kernel.shm_rmid_forced",
            "net.ipv4.ip_local_port_range",
            "net.ipv4.ip_unprivileged_port_start",
            "net.ipv4.tcp_syncookies",
            "net.ipv4.ping_group_range",
            "net.ipv4.ip_local_reserved_ports",
            "net.ipv4.tcp_keepalive_time",
            "net.ipv4.tcp_fin_timeout",
            "net.ipv4.tcp_keepalive_intvl",
            "net.ipv4.tcp_keepalive_probes",
            "net.ipv4.tcp_rmem",
            "net.ipv4.tcp_wmem",
        ]),
    },
    // === restricted ===
    Control {
        profile: Restricted,
        name: "Volume Types",
        fields: &[
            "spec.volumes[*].hostPath",
            "spec.volumes[*].gcePersistentDisk",
            "spec.volumes[*].awsElasticBlockStore",
            "spec.volumes[*].gitRepo",
            "spec.volumes[*].nfs",
            "spec.volumes[*].iscsi",
            "spec.volumes[*].glusterfs",
            "spec.volumes[*].rbd",
            "spec.volumes[*].flexVolume",
            "spec.volumes[*].cinder",
            "spec.volumes[*].cephfs",
            "spec.volumes[*].flocker",
            "spec.volumes[*].fc",
            "spec.volumes[*].azureFile",
            "spec.volumes[*].vsphereVolume",
            "spec.volumes[*].quobyte",
            "spec.volumes[*].azureDisk",
            "spec.volumes[*].portworxVolume",
            "spec.volumes[*].photonPersistentDisk",
            "spec.volumes[*].scaleIO",
            "spec.volumes[*].storageos",
        ],
        allowed: UnsetOr(&[]),
    },
    Control {
        profile: Restricted,
        name: "Privilege Escalation",
        fields: &["spec.containers[*].securityContext.allowPrivilegeEscalation"],
        allowed: Only(&["false"]),
    },
    Control {
        profile: Restricted,
        name: "Running as Non-root",
        fields: &[
            "spec.securityContext.runAsNonRoot",
            "spec.containers[*].securityContext.runAsNonRoot",
        ],
        allowed: PodOrEveryContainer(&["true"]),
    },
    Control {
        profile: Restricted,
        name: "Running as Non-root user",
        fields: &[
            "spec.securityContext.runAsUser",
            "spec.containers[*].securityContext.runAsUser",
        ],
        allowed: UnsetOrNot(&["0"]),
    },
    Control {
        profile: Restricted,
        name: "Seccomp",
        fields: &[
            "spec.securityContext.seccompProfile.type",
            "spec.containers[*].securityContext.seccompProfile.type",
        ],
        allowed: PodOrEveryContainer(&["RuntimeDefault", "Localhost"]),
    },
    Control {
        profile: Restricted,
        name: "Capabilities (drop)",
        fields: &["spec.containers[*].securityContext.capabilities.drop"],
        allowed: Includes("ALL"),
    },
    Control {
        profile: Restricted,
        name: "Capabilities (add)",
        fields: &["spec.containers[*].securityContext.capabilities.add[*]"],
        allowed: UnsetOr(&["NET_BIND_SERVICE"]),
    },
];

/// The containers' lists of a pod spec.
const CONTAINER_LISTS: [&str; 3] = ["containers", "initContainers", "ephemeralContainers"];

/// What the controls of `profile` (and the profiles below it) find wrong with a pod template
/// (`metadata` and `spec`), one line each: the control, the field, the value.
pub fn violations(template: &Value, profile: Profile) -> Vec<String> {
    let mut out = Vec::new();
    for control in CONTROLS.iter().filter(|c| c.profile <= profile) {
        // Each field with the value found at each place it names (None: undefined there).
        let found: Vec<(String, Vec<Option<&Value>>)> = control
            .fields
            .iter()
            .flat_map(|f| expand(f))
            .map(|f| {
                let values = select(template, &steps(&f));
                (f, values)
            })
            .collect();
        let mut bad = |field: &str, value: Option<&Value>| {
            let shown = value.map_or("undefined".into(), |v| v.to_string());
            out.push(format!(
                "{:?} {}: {field} = {shown}",
                control.profile, control.name
            ));
        };
        match &control.allowed {
            UnsetOr(ok) => {
                for (f, values) in &found {
                    for v in values.iter().flatten() {
                        if !matches(v, ok) {
                            bad(f, Some(v));
                        }
                    }
                }
            }
            Only(ok) => {
                for (f, values) in &found {
                    for v in values {
                        if !v.is_some_and(|v| matches(v, ok)) {
                            bad(f, *v);
                        }
                    }
                }
            }
            UnsetOrNot(refused) => {
                for (f, values) in &found {
                    for v in values.iter().flatten() {
                        if matches(v, refused) {
                            bad(f, Some(v));
                        }
                    }
                }
            }
            Includes(needed) => {
                for (f, values) in &found {
                    for v in values {
                        let has = v
                            .and_then(|v| v.as_array())
                            .is_some_and(|l| l.iter().any(|i| i == needed));
                        if !has {
                            bad(f, *v);
                        }
                    }
                }
            }
            PodOrEveryContainer(ok) => {
                let ((pod_field, pod), containers) = found.split_first().expect("a pod field");
                let pod = pod.first().copied().flatten();
                if let Some(v) = pod {
                    if !matches(v, ok) {
                        bad(pod_field, Some(v));
                    }
                }
                for (f, values) in containers {
                    for v in values {
                        match v {
                            Some(v) if !matches(v, ok) => bad(f, Some(v)),
                            None if pod.is_none() => bad(f, None),
                            _ => {}
                        }
                    }
                }
            }
        }
    }
    out
}

/// `field` for each list of containers when it names `spec.containers[*]`.
fn expand(field: &str) -> Vec<String> {
    match field.strip_prefix("spec.containers[*]") {
        Some(rest) => CONTAINER_LISTS
            .iter()
            .map(|list| format!("spec.{list}[*]{rest}"))
            .collect(),
        None => vec![field.to_string()],
    }
}

/// Whether a scalar is one of `allowed` (a pattern ending in `*` allows its prefix).
fn matches(v: &Value, allowed: &[&str]) -> bool {
    let text = match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    allowed.iter().any(|a| match a.strip_suffix('*') {
        Some(prefix) => text.starts_with(prefix),
        None => text == *a,
    })
}

#[derive(Debug, PartialEq)]
enum Step {
    /// A field of an object.
    Field(String),
    /// Every item of a list.
    Each,
    /// The values of every key matching a pattern.
    Keys(String),
}

/// The steps of a field path such as `spec.containers[*].ports[*].hostPort` or
/// `metadata.annotations['prefix/*']`.
fn steps(path: &str) -> Vec<Step> {
    let mut out = Vec::new();
    let mut rest = path;
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix("[*]") {
            out.push(Step::Each);
            rest = r;
        } else if let Some(r) = rest.strip_prefix("['") {
            let end = r.find("']").expect("a closing ']");
            out.push(Step::Keys(r[..end].to_string()));
            rest = &r[end + 2..];
        } else {
            let r = rest.strip_prefix('.').unwrap_or(rest);
            let end = r.find(['.', '[']).unwrap_or(r.len());
            out.push(Step::Field(r[..end].to_string()));
            rest = &r[end..];
        }
    }
    out
}

/// The value at each place the steps name: lists and maps fan out over their items (none when
/// absent); a missing field gives one undefined value.
fn select<'a>(v: &'a Value, steps: &[Step]) -> Vec<Option<&'a Value>> {
    let Some((step, rest)) = steps.split_first() else {
        return vec![Some(v).filter(|v| !v.is_null())];
    };
    match step {
        Step::Field(name) => match v.get(name).filter(|next| !next.is_null()) {
            Some(next) => select(next, rest),
            None if rest.iter().any(|s| !matches!(s, Step::Field(_))) => Vec::new(),
            None => vec![None],
        },
        Step::Each => v
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|item| select(item, rest))
            .collect(),
        Step::Keys(pattern) => v
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(k, _)| matches(&Value::String(k.to_string()), &[pattern.as_str()]))
            .flat_map(|(_, item)| select(item, rest))
            .collect(),
    }
}
