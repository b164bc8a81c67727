//! Reflectors that keep the registry in step with the cluster: EndpointSlices give each
//! function's ready endpoints (waking held requests), Deployments its desired replicas.
//! Watch errors back off and recover; the route table keeps its last state meanwhile.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};

use futures_util::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::runtime::reflector::{self, reflector, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client};

use super::objects::{MANAGED, SERVICE_ID, SLICE_SERVICE};
use super::KubeRuntime;

/// Whether an object carries the managed label (the emulator in tests ignores selectors).
pub(super) fn is_managed(meta: &ObjectMeta) -> bool {
    meta.labels
        .as_ref()
        .and_then(|l| l.get(MANAGED))
        .is_some_and(|v| v == "true")
}

/// Starts both reflectors on the current runtime.
pub(super) fn spawn(rt: KubeRuntime, client: Client) {
    let ns = rt.inner.namespace.clone();
    tokio::spawn(endpoint_slices(
        rt.clone(),
        Api::namespaced(client.clone(), &ns),
    ));
    tokio::spawn(deployments(rt, Api::namespaced(client, &ns)));
}

/// The ready endpoints of `service` in the store: ready addresses with their slice's port.
pub fn ready_endpoints<'a>(
    slices: impl Iterator<Item = &'a EndpointSlice>,
    service: &str,
) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    for s in slices {
        if s.metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(SLICE_SERVICE))
            .map(String::as_str)
            != Some(service)
        {
            continue;
        }
        let Some(port) = s
            .ports
            .as_ref()
            .and_then(|p| p.first())
            .and_then(|p| p.port)
        else {
            continue;
        };
        for ep in &s.endpoints {
            let ready = ep.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
            if !ready {
                continue;
            }
            for a in &ep.addresses {
                if let Ok(ip) = a.parse::<IpAddr>() {
                    let addr = SocketAddr::new(ip, port as u16);
                    if !out.contains(&addr) {
                        out.push(addr);
                    }
                }
            }
        }
    }
    out
}

/// Publishes the ready endpoints of `service` from the store into the registry.
pub(super) fn sync_service(rt: &KubeRuntime, store: &Store<EndpointSlice>, service: &str) {
    if let Some(entry) = rt.inner.registry.get(service) {
        let state = store.state();
        let addrs = ready_endpoints(state.iter().map(|s| s.as_ref()), service);
        entry.set_endpoints(&addrs);
    }
}

async fn endpoint_slices(rt: KubeRuntime, api: Api<EndpointSlice>) {
    let (store, writer) = reflector::store();
    let _ = rt.inner.slices.set(store.clone());
    let config = watcher::Config::default().labels(SLICE_SERVICE);
    let mut events = reflector(writer, watcher(api, config))
        .default_backoff()
        .boxed();
    while let Some(event) = events.next().await {
        match event {
            Ok(watcher::Event::Apply(s) | watcher::Event::Delete(s)) => {
                if let Some(svc) = s
                    .metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(SLICE_SERVICE))
                {
                    sync_service(&rt, &store, svc);
                }
            }
            Ok(watcher::Event::InitDone) => {
                // A (re)list: every known function's endpoints may have changed.
                let names: HashSet<String> = rt.inner.registry.snapshot().keys().cloned().collect();
                for name in names {
                    sync_service(&rt, &store, &name);
                }
            }
            Ok(_) => {}
            Err(e) => log::warn!("EndpointSlice watch: {e}; retrying"),
        }
    }
}

async fn deployments(rt: KubeRuntime, api: Api<Deployment>) {
    let config = watcher::Config::default().labels(&format!("{MANAGED}=true"));
    let mut events = watcher(api, config).default_backoff().boxed();
    while let Some(event) = events.next().await {
        let dep = match event {
            Ok(watcher::Event::Apply(d) | watcher::Event::InitApply(d)) => d,
            // Deleted from elsewhere (kubectl, another gateway): forget it here too.
            Ok(watcher::Event::Delete(d)) => {
                if let Some(name) = d.metadata.labels.as_ref().and_then(|l| l.get(SERVICE_ID)) {
                    if is_managed(&d.metadata) {
                        rt.forget(name);
                    }
                }
                continue;
            }
            Ok(_) => continue,
            Err(e) => {
                log::warn!("Deployment watch: {e}; retrying");
                continue;
            }
        };
        if !is_managed(&dep.metadata) {
            continue;
        }
        let Some(name) = dep
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(SERVICE_ID))
            .cloned()
        else {
            continue;
        };
        let replicas = dep
            .spec
            .as_ref()
            .and_then(|s| s.replicas)
            .unwrap_or(0)
            .max(0) as u32;
        match rt.inner.registry.get(&name) {
            // Scaled from elsewhere (kubectl, another gateway): follow.
            Some(entry) if entry.spec().replicas != replicas => {
                let mut spec = (*entry.spec()).clone();
                spec.replicas = replicas;
                entry.set_spec(spec.clone());
                let mut defs = rt.inner.defs.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(def) = defs.get_mut(&name) {
                    def.spec = spec;
                }
            }
            Some(_) => {}
            // Deployed through another gateway replica: adopt it.
            None if dep.metadata.deletion_timestamp.is_none() => match rt.load(&dep).await {
                Ok(def) => rt.remember(def),
                Err(e) => log::debug!("not adopting {name} yet: {e}"),
            },
            None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_ready_addresses_with_the_slice_port() {
        let slice: EndpointSlice = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "s-1", "labels": {SLICE_SERVICE: "f"}},
            "addressType": "IPv4",
            "endpoints": [
                {"addresses": ["10.0.0.1"], "conditions": {"ready": true}},
                {"addresses": ["10.0.0.2"], "conditions": {"ready": false}},
                {"addresses": ["10.0.0.3"]},
            ],
            "ports": [{"port": 8000}],
        }))
        .unwrap();
        let other: EndpointSlice = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "s-2", "labels": {SLICE_SERVICE: "g"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["10.0.0.9"], "conditions": {"ready": true}}],
            "ports": [{"port": 8000}],
        }))
        .unwrap();
        let got = ready_endpoints([&slice, &other].into_iter(), "f");
        assert_eq!(
            got,
            vec![
                "10.0.0.1:8000".parse().unwrap(),
                "10.0.0.3:8000".parse().unwrap()
            ]
        );
    }
}
