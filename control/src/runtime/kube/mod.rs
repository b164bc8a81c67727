//! The Kubernetes runtime: functions as a ConfigMap, Secret, Deployment and Service each, applied
//! server-side; scaling through the Deployment's `/scale` subresource; routes from a reflector on
//! EndpointSlices (see [`watch`]).

pub mod objects;
mod watch;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service};
use kube::api::{Api, DeleteParams, ListParams, LogParams, Patch, PatchParams};
use kube::Client;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::OnceCell;

use self::objects::{names, MANAGED, SERVICE_ID, SPEC};
use super::Runtime;
use crate::config::{Config, KubeSettings};
use crate::function::{parse_dot_file, DeployRequest, FunctionDef, FunctionSpec};
use crate::registry::Registry;
use crate::{Error, Result};

/// The field manager of every apply: the project's name.
pub const FIELD_MANAGER: &str = "poorman-faas";

/// Runs functions as Kubernetes Deployments.
#[derive(Clone)]
pub struct KubeRuntime {
    inner: Arc<Inner>,
}

struct Inner {
    namespace: String,
    settings: KubeSettings,
    registry: Registry,
    deploy_timeout: Duration,
    /// Created on first use, inside the runtime of the caller (a background service at start).
    client: OnceCell<Client>,
    defs: Mutex<HashMap<String, FunctionDef>>,
    /// Serialises create, update and delete (each a handful of API calls).
    edit: tokio::sync::Mutex<()>,
    /// The EndpointSlice reflector's store, once the watch runs.
    slices: std::sync::OnceLock<
        kube::runtime::reflector::Store<k8s_openapi::api::discovery::v1::EndpointSlice>,
    >,
}

fn kube_err(context: &str) -> impl FnOnce(kube::Error) -> Error + '_ {
    move |e| match &e {
        kube::Error::Api(s) if s.code == 404 => Error::NotFound(context.to_string()),
        _ => Error::internal(context.to_string(), e),
    }
}

// === impl KubeRuntime ===

impl KubeRuntime {
    /// A runtime for namespace `K8S_NAMESPACE`; the client is made on first use from
    /// `KUBECONFIG` or the in-cluster configuration.
    pub fn new(cfg: &Config, registry: Registry) -> Self {
        KubeRuntime {
            inner: Arc::new(Inner {
                namespace: cfg.namespace.clone(),
                settings: cfg.kube.clone(),
                registry,
                deploy_timeout: cfg.deploy_timeout,
                client: OnceCell::new(),
                defs: Mutex::new(HashMap::new()),
                slices: std::sync::OnceLock::new(),
                edit: tokio::sync::Mutex::new(()),
            }),
        }
    }

    async fn client(&self) -> Result<Client> {
        self.inner
            .client
            .get_or_try_init(|| async {
                Client::try_default().await.map_err(|e| {
                    Error::internal("connecting to Kubernetes (KUBECONFIG or in-cluster)", e)
                })
            })
            .await
            .cloned()
    }

    async fn api<K>(&self) -> Result<Api<K>>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        Ok(Api::namespaced(self.client().await?, &self.inner.namespace))
    }

    async fn apply<K>(&self, name: &str, obj: &K) -> Result<()>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + DeserializeOwned
            + Serialize
            + std::fmt::Debug,
        <K as kube::Resource>::DynamicType: Default,
    {
        let api: Api<K> = self.api().await?;
        let params = PatchParams::apply(FIELD_MANAGER).force();
        api.patch(name, &params, &Patch::Apply(obj))
            .await
            .map_err(|e| Error::internal(format!("applying {name}"), e))?;
        Ok(())
    }

    /// Applies all four objects of a function.
    async fn apply_all(&self, def: &FunctionDef) -> Result<()> {
        let ns = &self.inner.namespace;
        let n = names(&def.spec.name);
        self.apply(&n.configmap, &objects::configmap(def, ns)?)
            .await?;
        self.apply(&n.secret, &objects::secret(def, ns)?).await?;
        self.apply(&n.service, &objects::service(&def.spec, ns)?)
            .await?;
        self.apply(
            &n.deployment,
            &objects::deployment(def, ns, &self.inner.settings)?,
        )
        .await
    }

    /// Deletes the function's objects; `false` when none existed.
    async fn delete_all(&self, name: &str) -> Result<bool> {
        let n = names(name);
        let dp = DeleteParams::background();
        let mut found = false;
        found |= gone(
            self.api::<Deployment>()
                .await?
                .delete(&n.deployment, &dp)
                .await,
        )?;
        found |= gone(self.api::<Service>().await?.delete(&n.service, &dp).await)?;
        found |= gone(
            self.api::<ConfigMap>()
                .await?
                .delete(&n.configmap, &dp)
                .await,
        )?;
        found |= gone(self.api::<Secret>().await?.delete(&n.secret, &dp).await)?;
        Ok(found)
    }

    /// Reads a function back from its objects.
    async fn load(&self, dep: &Deployment) -> Result<FunctionDef> {
        let meta = &dep.metadata;
        let name = meta
            .labels
            .as_ref()
            .and_then(|l| l.get(SERVICE_ID))
            .cloned()
            .ok_or_else(|| Error::internal("reading a deployment", "it has no service-id label"))?;
        let mut spec: FunctionSpec = meta
            .annotations
            .as_ref()
            .and_then(|a| a.get(SPEC))
            .and_then(|s| serde_json::from_str(s).ok())
            .ok_or_else(|| {
                Error::internal(format!("reading {name}"), "its spec annotation is missing")
            })?;
        spec.replicas = dep
            .spec
            .as_ref()
            .and_then(|s| s.replicas)
            .unwrap_or(0)
            .max(0) as u32;
        let n = names(&name);
        let cm = self
            .api::<ConfigMap>()
            .await?
            .get(&n.configmap)
            .await
            .map_err(kube_err(&name))?;
        let script = cm
            .data
            .and_then(|mut d| d.remove("main.py"))
            .ok_or_else(|| Error::internal(format!("reading {}", n.configmap), "no main.py"))?;
        let env: Vec<(String, String)> = match self.api::<Secret>().await?.get_opt(&n.secret).await
        {
            Ok(Some(s)) => secret_env(s),
            Ok(None) => Vec::new(),
            Err(e) => return Err(Error::internal(format!("reading {}", n.secret), e)),
        };
        let dot_file: String = env
            .iter()
            .map(|(k, v)| format!("{k}={}\n", serde_json::Value::String(v.clone())))
            .collect();
        debug_assert_eq!(parse_dot_file(&dot_file).ok().as_ref(), Some(&env));
        Ok(FunctionDef {
            spec,
            script,
            dot_file,
            env,
        })
    }

    fn remember(&self, def: FunctionDef) {
        let name = def.spec.name.clone();
        self.inner.registry.insert(def.spec.clone());
        self.inner
            .defs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.clone(), def);
        // Its slices may have been seen before it was known.
        if let Some(store) = self.inner.slices.get() {
            watch::sync_service(self, store, &name);
        }
    }

    fn forget(&self, name: &str) {
        self.inner.registry.remove(name);
        self.inner
            .defs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
    }

    fn known(&self, name: &str) -> bool {
        self.inner
            .defs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(name)
    }

    /// Waits until `n` endpoints of the function are ready, bounded by the deploy timeout.
    async fn wait_ready(&self, name: &str, n: usize) -> Result<()> {
        let Some(entry) = self.inner.registry.get(name) else {
            return Err(Error::NotFound(name.to_string()));
        };
        let mut rx = entry.subscribe();
        let wait = async { rx.wait_for(|r| r.endpoints.len() >= n).await.map(|_| ()) };
        match tokio::time::timeout(self.inner.deploy_timeout, wait).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(Error::NotFound(name.to_string())),
            Err(_) => {
                let logs = self.logs(name, 15).await.unwrap_or_default();
                Err(Error::Timeout(format!(
                    "{name} had {} of {n} ready replica(s) after {:?} (FAAS_DEPLOY_TIMEOUT); last output:\n{}",
                    entry.ready(),
                    self.inner.deploy_timeout,
                    logs.join("\n")
                )))
            }
        }
    }
}

/// `Ok(true)` for a deleted object, `Ok(false)` for one that was not there.
fn gone<T>(r: std::result::Result<T, kube::Error>) -> Result<bool> {
    match r {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(false),
        Err(e) => Err(Error::internal("deleting", e)),
    }
}

fn secret_env(s: Secret) -> Vec<(String, String)> {
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    for (k, v) in s.data.unwrap_or_default() {
        env.insert(k, String::from_utf8_lossy(&v.0).into_owned());
    }
    for (k, v) in s.string_data.unwrap_or_default() {
        env.insert(k, v);
    }
    env.into_iter().collect()
}

#[async_trait]
impl Runtime for KubeRuntime {
    async fn restore(&self) -> Result<Vec<String>> {
        // Watch first: if the list below fails (API server briefly away), the Deployment
        // watcher still adopts every managed function once it connects.
        watch::spawn(self.clone(), self.client().await?);
        let api = self.api::<Deployment>().await?;
        let list = api
            .list(&ListParams::default().labels(&format!("{MANAGED}=true")))
            .await
            .map_err(|e| Error::internal("listing managed deployments", e))?;
        let mut names = Vec::new();
        for dep in list.items.iter().filter(|d| watch::is_managed(&d.metadata)) {
            match self.load(dep).await {
                Ok(def) => {
                    log::info!(
                        "rediscovered function {} ({} replica(s))",
                        def.spec.name,
                        def.spec.replicas
                    );
                    names.push(def.spec.name.clone());
                    self.remember(def);
                }
                Err(e) => log::warn!("skipping a managed deployment: {e}"),
            }
        }
        Ok(names)
    }

    async fn create(&self, def: FunctionDef) -> Result<()> {
        let _edit = self.inner.edit.lock().await;
        let name = def.spec.name.clone();
        if self.known(&name) {
            return Err(Error::Conflict(name));
        }
        let n = names(&name);
        if self
            .api::<Deployment>()
            .await?
            .get_opt(&n.deployment)
            .await
            .ok()
            .flatten()
            .is_some()
        {
            return Err(Error::Conflict(name));
        }
        let replicas = def.spec.replicas as usize;
        self.remember(def.clone());
        let result = async {
            self.apply_all(&def).await?;
            self.wait_ready(&name, replicas).await
        }
        .await;
        if let Err(e) = result {
            let _ = self.delete_all(&name).await;
            self.forget(&name);
            return Err(e);
        }
        Ok(())
    }

    async fn update(&self, name: &str, req: DeployRequest) -> Result<()> {
        let _edit = self.inner.edit.lock().await;
        let current = self.get(name).await?;
        let def = req.apply_to(&current, crate::now_ms())?;
        // The Deployment rolls its pods (maxUnavailable 0): new ones are ready before old ones go.
        self.apply_all(&def).await?;
        self.remember(def);
        Ok(())
    }

    async fn get(&self, name: &str) -> Result<FunctionDef> {
        let defs = self.inner.defs.lock().unwrap_or_else(|p| p.into_inner());
        defs.get(name)
            .cloned()
            .ok_or_else(|| Error::NotFound(name.to_string()))
    }

    async fn delete(&self, name: &str) -> Result<()> {
        let _edit = self.inner.edit.lock().await;
        let known = self.known(name);
        let found = self.delete_all(name).await?;
        self.forget(name);
        if known || found {
            Ok(())
        } else {
            Err(Error::NotFound(name.to_string()))
        }
    }

    async fn scale(&self, name: &str, replicas: u32) -> Result<()> {
        let n = names(name);
        let api = self.api::<Deployment>().await?;
        let patch = serde_json::json!({"spec": {"replicas": replicas}});
        api.patch_scale(
            &n.deployment,
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
        .map_err(kube_err(name))?;
        let mut defs = self.inner.defs.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(def) = defs.get_mut(name) {
            def.spec.replicas = replicas;
            if let Some(e) = self.inner.registry.get(name) {
                e.set_spec(def.spec.clone());
            }
        }
        Ok(())
    }

    async fn logs(&self, name: &str, tail: usize) -> Result<Vec<String>> {
        if !self.known(name) {
            return Err(Error::NotFound(name.to_string()));
        }
        let n = names(name);
        let pods = self.api::<Pod>().await?;
        let list = pods
            .list(&ListParams::default().labels(&format!("app={}", n.app)))
            .await
            .map_err(|e| Error::internal(format!("listing the pods of {name}"), e))?;
        let mut out = Vec::new();
        for pod in list.items {
            let Some(pod_name) = pod.metadata.name else {
                continue;
            };
            let params = LogParams {
                tail_lines: Some(tail as i64),
                ..LogParams::default()
            };
            match pods.logs(&pod_name, &params).await {
                Ok(text) => out.extend(text.lines().map(|l| format!("[{pod_name}] {l}"))),
                Err(e) => out.push(format!("[{pod_name}] (no logs: {e})")),
            }
        }
        Ok(out)
    }

    async fn shutdown(&self) {
        // Pods belong to the cluster: they keep running, and the next gateway finds them.
    }
}
