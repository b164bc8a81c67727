//! The Kubernetes runtime: functions as a ConfigMap, Secret, Deployment and Service each, applied
//! server-side; scaling through the Deployment's `/scale` subresource; routes from a reflector on
//! EndpointSlices (see [`watch`]).

pub mod objects;
mod watch;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service};
use kube::api::{Api, DeleteParams, ListParams, LogParams, Patch, PatchParams, PostParams};
use kube::Client;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::OnceCell;

use self::objects::{names, owned_by, MANAGED, SERVICE_ID, SPEC};
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
    /// One lock per function: serialises its create, update, delete and scale calls, so that a
    /// scale never races an update's apply; other functions are not held up.
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// `GATEWAY_SERVICE_NAME`: never a function's name; its LoadBalancer address goes into URLs.
    gateway_service: String,
    /// The gateway Service's LoadBalancer address, once it has one.
    advertised: Mutex<Option<String>>,
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

/// Whether an API error is a conflict (a precondition or resourceVersion that no longer holds).
fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

/// Attempts of a read-modify-write that lost a race (409) before giving up.
const RACE_ATTEMPTS: usize = 5;

/// Who holds an object name.
#[derive(Debug)]
enum Holder {
    /// No object of that name.
    Absent,
    /// Ours, made for this function.
    Ours { uid: Option<String> },
    /// Someone else's: not labelled as ours, or another function's.
    Other,
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
                locks: Mutex::new(HashMap::new()),
                gateway_service: cfg.gateway_service_name.clone(),
                advertised: Mutex::new(None),
            }),
        }
    }

    /// The API client, made on first use from `KUBECONFIG` or the in-cluster configuration.
    pub async fn client(&self) -> Result<Client> {
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

    /// The namespace of the functions (and of the gateway).
    pub fn namespace(&self) -> &str {
        &self.inner.namespace
    }

    /// The ready addresses of the gateway's own Service (`GATEWAY_SERVICE_NAME`), from its
    /// EndpointSlices: the gateway replicas that serve now. Empty until the watch has listed.
    pub fn gateway_peers(&self) -> Vec<SocketAddr> {
        match self.inner.slices.get() {
            Some(store) => {
                let state = store.state();
                watch::ready_endpoints(
                    state.iter().map(|s| s.as_ref()),
                    &self.inner.gateway_service,
                )
            }
            None => Vec::new(),
        }
    }

    async fn api<K>(&self) -> Result<Api<K>>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        Ok(Api::namespaced(self.client().await?, &self.inner.namespace))
    }

    /// The lock of one function.
    async fn lock(&self, name: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = self
            .inner
            .locks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(name.to_string())
            .or_default()
            .clone();
        lock.lock_owned().await
    }

    /// Who holds the object `obj` of kind `K`, as far as function `name` is concerned. An API
    /// error is an error, never "absent".
    async fn holder<K>(&self, obj: &str, name: &str) -> Result<Holder>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + DeserializeOwned
            + std::fmt::Debug,
        <K as kube::Resource>::DynamicType: Default,
    {
        let found = self
            .api::<K>()
            .await?
            .get_opt(obj)
            .await
            .map_err(|e| Error::internal(format!("reading {obj}"), e))?;
        Ok(match found {
            None => Holder::Absent,
            Some(o) if owned_by(o.meta().labels.as_ref(), name) => Holder::Ours {
                uid: o.meta().uid.clone(),
            },
            Some(_) => Holder::Other,
        })
    }

    /// Who holds each of the four object names of function `name`.
    async fn holders(&self, name: &str) -> Result<[(&'static str, String, Holder); 4]> {
        let n = names(name);
        Ok([
            (
                "Deployment",
                n.deployment.clone(),
                self.holder::<Deployment>(&n.deployment, name).await?,
            ),
            (
                "Service",
                n.service.clone(),
                self.holder::<Service>(&n.service, name).await?,
            ),
            (
                "ConfigMap",
                n.configmap.clone(),
                self.holder::<ConfigMap>(&n.configmap, name).await?,
            ),
            (
                "Secret",
                n.secret.clone(),
                self.holder::<Secret>(&n.secret, name).await?,
            ),
        ])
    }

    /// Refuses (409) a name whose objects we do not own: the gateway's own Service, or any
    /// object not labelled as this function's.
    fn refuse_foreign(
        &self,
        name: &str,
        holders: &[(&'static str, String, Holder); 4],
    ) -> Result<()> {
        if name == self.inner.gateway_service {
            return Err(Error::Taken(format!(
                "{name:?} is the gateway's own Service (GATEWAY_SERVICE_NAME): choose another name"
            )));
        }
        for (kind, obj, h) in holders {
            if matches!(h, Holder::Other) {
                return Err(Error::Taken(format!(
                    "the {kind} {obj:?} in namespace {} exists and is not function {name:?}'s \
                     (it lacks the labels {MANAGED}=true, {SERVICE_ID}={name}); it is left \
                     alone: choose another name",
                    self.inner.namespace
                )));
            }
        }
        Ok(())
    }

    /// Applies one object server-side. `precondition` (a resourceVersion) makes the apply fail
    /// with a conflict when the object changed since it was read.
    async fn apply<K>(&self, name: &str, obj: &K) -> std::result::Result<(), kube::Error>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + DeserializeOwned
            + Serialize
            + std::fmt::Debug,
        <K as kube::Resource>::DynamicType: Default,
    {
        let api: Api<K> = Api::namespaced(
            self.client().await.map_err(|e| {
                kube::Error::Service(Box::new(std::io::Error::other(e.to_string())))
            })?,
            &self.inner.namespace,
        );
        // Forced: our own earlier applies and `/scale` share these fields. Only objects checked
        // to be ours (or absent) get here.
        let params = PatchParams::apply(FIELD_MANAGER).force();
        api.patch(name, &params, &Patch::Apply(obj))
            .await
            .map(|_| ())
    }

    /// Applies all four objects of a function whose names were checked. The Deployment keeps
    /// the replica count it has (the count has one writer, [`Runtime::scale`]): it is read and
    /// applied with its resourceVersion as a precondition, again if a scale came between.
    async fn apply_all(&self, def: &FunctionDef) -> Result<()> {
        let ns = &self.inner.namespace;
        let name = &def.spec.name;
        let n = names(name);
        let ctx = |obj: &str| format!("applying {obj}");
        self.apply(&n.configmap, &objects::configmap(def, ns)?)
            .await
            .map_err(|e| Error::internal(ctx(&n.configmap), e))?;
        self.apply(&n.secret, &objects::secret(def, ns)?)
            .await
            .map_err(|e| Error::internal(ctx(&n.secret), e))?;
        self.apply(&n.service, &objects::service(&def.spec, ns)?)
            .await
            .map_err(|e| Error::internal(ctx(&n.service), e))?;
        let api = self.api::<Deployment>().await?;
        for attempt in 1..=RACE_ATTEMPTS {
            let live = api
                .get_opt(&n.deployment)
                .await
                .map_err(|e| Error::internal(format!("reading {}", n.deployment), e))?;
            let mut def = def.clone();
            let mut version = None;
            if let Some(live) = &live {
                if !owned_by(live.metadata.labels.as_ref(), name) {
                    return Err(Error::Taken(format!(
                        "the Deployment {:?} is not function {name:?}'s",
                        n.deployment
                    )));
                }
                def.spec.replicas = live
                    .spec
                    .as_ref()
                    .and_then(|s| s.replicas)
                    .unwrap_or(0)
                    .max(0) as u32;
                version = live.metadata.resource_version.clone();
            }
            let mut dep = objects::deployment(&def, ns, &self.inner.settings)?;
            dep.metadata.resource_version = version;
            match self.apply(&n.deployment, &dep).await {
                Ok(()) => return Ok(()),
                Err(e) if is_conflict(&e) && attempt < RACE_ATTEMPTS => continue,
                Err(e) => return Err(Error::internal(ctx(&n.deployment), e)),
            }
        }
        unreachable!("the last attempt returns")
    }

    /// Deletes those of the function's objects that are ours (by labels, and by uid as a
    /// precondition, so that an object replaced meanwhile is not deleted); `false` when none
    /// was. Objects that are not ours are left alone. Every failure is reported.
    async fn delete_owned(&self, name: &str) -> Result<bool> {
        let holders = self.holders(name).await?;
        let mut found = false;
        let mut failed = Vec::new();
        for (kind, obj, h) in holders {
            let Holder::Ours { uid, .. } = h else {
                continue;
            };
            let dp = DeleteParams {
                preconditions: uid.map(|uid| kube::api::Preconditions {
                    uid: Some(uid),
                    resource_version: None,
                }),
                ..DeleteParams::background()
            };
            let r = match kind {
                "Deployment" => self
                    .api::<Deployment>()
                    .await?
                    .delete(&obj, &dp)
                    .await
                    .map(|_| ()),
                "Service" => self
                    .api::<Service>()
                    .await?
                    .delete(&obj, &dp)
                    .await
                    .map(|_| ()),
                "ConfigMap" => self
                    .api::<ConfigMap>()
                    .await?
                    .delete(&obj, &dp)
                    .await
                    .map(|_| ()),
                _ => self
                    .api::<Secret>()
                    .await?
                    .delete(&obj, &dp)
                    .await
                    .map(|_| ()),
            };
            match r {
                Ok(()) => found = true,
                // Gone meanwhile: nothing left to delete.
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => failed.push(format!("{kind} {obj}: {e}")),
            }
        }
        if !failed.is_empty() {
            return Err(Error::internal(
                format!("deleting the objects of {name}"),
                failed.join("; "),
            ));
        }
        Ok(found)
    }

    /// Sets the Deployment's replicas through `/scale`, read then replaced with its
    /// resourceVersion (retried when another writer came between). With `at_least`, a count
    /// already that high is left as it is: two gateways activating at once scale up once.
    async fn write_scale(&self, name: &str, replicas: u32, at_least: bool) -> Result<bool> {
        let n = names(name);
        let api = self.api::<Deployment>().await?;
        for attempt in 1..=RACE_ATTEMPTS {
            let mut scale = api.get_scale(&n.deployment).await.map_err(kube_err(name))?;
            let current = scale
                .spec
                .as_ref()
                .and_then(|s| s.replicas)
                .unwrap_or(0)
                .max(0) as u32;
            if current == replicas || (at_least && current >= replicas) {
                self.note_replicas(name, current);
                return Ok(false);
            }
            scale.spec.get_or_insert_with(Default::default).replicas = Some(replicas as i32);
            match api
                .replace_scale(&n.deployment, &PostParams::default(), &scale)
                .await
            {
                Ok(_) => {
                    self.note_replicas(name, replicas);
                    return Ok(true);
                }
                Err(e) if is_conflict(&e) && attempt < RACE_ATTEMPTS => continue,
                Err(e) => return Err(kube_err(name)(e)),
            }
        }
        unreachable!("the last attempt returns")
    }

    fn note_replicas(&self, name: &str, replicas: u32) {
        let mut defs = self.inner.defs.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(def) = defs.get_mut(name) {
            def.spec.replicas = replicas;
            if let Some(e) = self.inner.registry.get(name) {
                e.set_spec(def.spec.clone());
            }
        }
    }

    /// Reads the LoadBalancer address of the gateway's Service, for the URLs deploys return.
    async fn refresh_advertised(&self) {
        let found = match self.api::<Service>().await {
            Ok(api) => api.get_opt(&self.inner.gateway_service).await,
            Err(_) => return,
        };
        let addr = match found {
            Ok(Some(svc)) => svc
                .status
                .and_then(|s| s.load_balancer)
                .and_then(|lb| lb.ingress)
                .and_then(|i| i.into_iter().next())
                .and_then(|i| i.ip.or(i.hostname)),
            Ok(None) => None,
            Err(e) => {
                log::debug!(
                    "reading the gateway's Service {}: {e}",
                    self.inner.gateway_service
                );
                return;
            }
        };
        *self
            .inner
            .advertised
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = addr;
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
        self.refresh_advertised().await;
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
        let name = def.spec.name.clone();
        objects::validate_name(&name)?;
        let lock = self.lock(&name).await;
        if self.known(&name) {
            return Err(Error::Conflict(name));
        }
        let holders = self.holders(&name).await?;
        self.refuse_foreign(&name, &holders)?;
        if holders
            .iter()
            .any(|(_, _, h)| matches!(h, Holder::Ours { .. }))
        {
            // Deployed through another gateway replica, not adopted here yet.
            return Err(Error::Conflict(name));
        }
        let replicas = def.spec.replicas as usize;
        self.remember(def.clone());
        let applied = self.apply_all(&def).await;
        drop(lock);
        self.refresh_advertised().await;
        let result = match applied {
            Ok(()) => self.wait_ready(&name, replicas).await,
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            let _lock = self.lock(&name).await;
            self.forget(&name);
            if let Err(cleanup) = self.delete_owned(&name).await {
                log::error!("{name}: cleaning up after a failed deploy: {cleanup}");
                return Err(Error::internal(
                    format!("{e}; cleaning up after it failed too"),
                    cleanup.to_string(),
                ));
            }
            return Err(e);
        }
        Ok(())
    }

    async fn update(&self, name: &str, req: DeployRequest) -> Result<()> {
        let _lock = self.lock(name).await;
        let current = self.get(name).await?;
        let def = req.apply_to(&current, crate::now_ms())?;
        let holders = self.holders(name).await?;
        self.refuse_foreign(name, &holders)?;
        // The Deployment rolls its pods (maxUnavailable 0): new ones are ready before old ones go.
        self.apply_all(&def).await?;
        let mut def = def;
        def.spec.replicas = current.spec.replicas;
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
        if objects::validate_name(name).is_err() || name == self.inner.gateway_service {
            // No function can have that name: nothing to look up, nothing to delete.
            return Err(Error::NotFound(name.to_string()));
        }
        let _lock = self.lock(name).await;
        let known = self.known(name);
        let found = self.delete_owned(name).await?;
        self.forget(name);
        if known || found {
            Ok(())
        } else {
            Err(Error::NotFound(name.to_string()))
        }
    }

    async fn scale(&self, name: &str, replicas: u32) -> Result<()> {
        if !self.known(name) {
            return Err(Error::NotFound(name.to_string()));
        }
        let _lock = self.lock(name).await;
        self.write_scale(name, replicas, false).await.map(|_| ())
    }

    async fn scale_up(&self, name: &str, replicas: u32) -> Result<bool> {
        if !self.known(name) {
            return Err(Error::NotFound(name.to_string()));
        }
        let _lock = self.lock(name).await;
        self.write_scale(name, replicas, true).await
    }

    fn advertised_host(&self) -> Option<String> {
        self.inner
            .advertised
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    async fn logs(&self, name: &str, tail: usize) -> Result<Vec<String>> {
        if !self.known(name) {
            return Err(Error::NotFound(name.to_string()));
        }
        let n = names(name);
        let pods = self.api::<Pod>().await?;
        let list = pods
            .list(&ListParams::default().labels(&format!("app={},{SERVICE_ID}={name}", n.app)))
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
