//! The Kubernetes source: Namespaces, Services, EndpointSlices and Pods from
//! the API server, through kube-rs watchers, into the core's [`KubeIndex`];
//! and the Gateway API's HTTPRoutes, GRPCRoutes and ReferenceGrants, while
//! their CRDs are installed.
//!
//! A watch that fails is retried with backoff by kube-rs; a re-list (after a
//! 410 Gone or a reconnect) replaces that kind's objects wholesale.
//!
//! The Gateway API kinds are optional: a cluster without their CRDs is
//! served as before (readiness waits only for the core kinds), and each
//! kind is looked for again every [`CRD_RECHECK`], so installing the CRDs
//! later needs no restart.

use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::future::BoxFuture;
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use kube::Resource;
use kube::api::{Api, ApiResource, DynamicObject, ListParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use meshd_controlplane::discovery::kubernetes::{KubeIndex, Update};
use meshd_controlplane::discovery::objects::{Object, ObjectError, ObjectRef};
use meshd_controlplane::model::Mesh;
use meshd_controlplane::server::MeshSource;
use serde::de::DeserializeOwned;
use tokio::sync::{mpsc, watch};

/// The API server as the control plane's discovery source.
pub struct WatchSource(pub kube::Client);

impl MeshSource for WatchSource {
    fn run(
        self: Box<Self>,
        meshes: watch::Sender<Arc<Mesh>>,
        settle: Duration,
    ) -> BoxFuture<'static, ()> {
        Box::pin(run(self.0, meshes, settle))
    }
}

fn object_ref<K: Resource>(kind: &'static str, obj: &K) -> ObjectRef {
    let meta = obj.meta();
    ObjectRef {
        kind,
        namespace: meta.namespace.clone(),
        name: meta.name.clone().unwrap_or_default(),
    }
}

/// Watches one kind and sends its updates until the channel closes.
async fn watch_kind<K>(
    api: Api<K>,
    kind: &'static str,
    parse: fn(&K) -> Result<Object, ObjectError>,
    tx: mpsc::Sender<Update>,
) where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
{
    let mut events = watcher::watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    let mut listing: Vec<Object> = Vec::new();
    let mut rejected: Vec<(ObjectRef, ObjectError)> = Vec::new();
    while let Some(event) = events.next().await {
        let update = match event {
            Ok(Event::Init) => {
                listing.clear();
                rejected.clear();
                continue;
            }
            Ok(Event::InitApply(obj)) => {
                match parse(&obj) {
                    Ok(object) => listing.push(object),
                    Err(e) => rejected.push((object_ref(kind, &obj), e)),
                }
                continue;
            }
            Ok(Event::InitDone) => Update::Reset {
                kind,
                objects: std::mem::take(&mut listing),
                rejected: std::mem::take(&mut rejected),
            },
            Ok(Event::Apply(obj)) => match parse(&obj) {
                Ok(object) => Update::Apply(object),
                Err(e) => Update::Rejected(object_ref(kind, &obj), e),
            },
            Ok(Event::Delete(obj)) => Update::Delete(object_ref(kind, &obj)),
            Err(e) => {
                // kube-rs retries with backoff; a 410 Gone leads to a re-list.
                tracing::warn!(%kind, "watch error: {e}; retrying");
                continue;
            }
        };
        if tx.send(update).await.is_err() {
            return;
        }
    }
}

/// How often a Gateway API kind whose CRD is missing is looked for again.
pub const CRD_RECHECK: Duration = Duration::from_secs(60);

/// The group of the Gateway API kinds.
const GATEWAY_GROUP: &str = "gateway.networking.k8s.io";

/// One optional Gateway API kind: its name, its plural, the versions to
/// try (newest first) and how to read it.
struct GatewayKind {
    kind: &'static str,
    plural: &'static str,
    versions: &'static [&'static str],
    parse: fn(&DynamicObject) -> Result<Object, ObjectError>,
}

const GATEWAY_KINDS: [GatewayKind; 3] = [
    GatewayKind {
        kind: "HTTPRoute",
        plural: "httproutes",
        versions: &["v1"],
        parse: |o| Object::from_http_route(&typed(o)?),
    },
    GatewayKind {
        kind: "GRPCRoute",
        plural: "grpcroutes",
        versions: &["v1"],
        parse: |o| Object::from_grpc_route(&typed(o)?),
    },
    // ReferenceGrant reached v1 in Gateway API v1.5; most clusters still
    // serve only v1beta1, with the same shape.
    GatewayKind {
        kind: "ReferenceGrant",
        plural: "referencegrants",
        versions: &["v1", "v1beta1"],
        parse: |o| Object::from_reference_grant(&typed(o)?),
    },
];

/// A watched object as the Gateway API type (built on its own
/// k8s-openapi, so read through JSON), or what field is wrong.
fn typed<T: DeserializeOwned>(object: &DynamicObject) -> Result<T, ObjectError> {
    let kind = object
        .types
        .as_ref()
        .map_or("object", |t| t.kind.as_str())
        .to_string();
    let name = format!(
        "{kind} {}/{}",
        object.metadata.namespace.as_deref().unwrap_or_default(),
        object.metadata.name.as_deref().unwrap_or_default()
    );
    let value = serde_json::to_value(object).map_err(|e| ObjectError {
        object: name.clone(),
        field: String::new(),
        message: e.to_string(),
    })?;
    serde_path_to_error::deserialize(value).map_err(|e| ObjectError {
        object: name,
        field: e.path().to_string(),
        message: e.inner().to_string(),
    })
}

/// Waits until one of the kind's versions is served (its CRD installed),
/// then watches it. Returns when `tx` closes.
async fn watch_gateway_kind(
    client: kube::Client,
    kind: &'static GatewayKind,
    tx: mpsc::Sender<Update>,
) {
    let mut said_missing = false;
    let api = loop {
        let mut found = None;
        for version in kind.versions {
            let resource = ApiResource {
                group: GATEWAY_GROUP.into(),
                version: (*version).into(),
                api_version: format!("{GATEWAY_GROUP}/{version}"),
                kind: kind.kind.into(),
                plural: kind.plural.into(),
            };
            let api: Api<DynamicObject> = Api::all_with(client.clone(), &resource);
            match api.list_metadata(&ListParams::default().limit(1)).await {
                Ok(_) => {
                    found = Some(api);
                    break;
                }
                Err(kube::Error::Api(status)) if status.is_not_found() => {}
                Err(e) => {
                    tracing::warn!(
                        kind = kind.kind,
                        "looking for the Gateway API CRD: {e}; retrying"
                    );
                }
            }
        }
        if let Some(api) = found {
            break api;
        }
        if !said_missing {
            tracing::info!(
                kind = kind.kind,
                "the Gateway API CRD is not installed: {}s are not watched (looked for again every {}s)",
                kind.kind,
                CRD_RECHECK.as_secs()
            );
            said_missing = true;
        }
        tokio::select! {
            _ = tokio::time::sleep(CRD_RECHECK) => {}
            _ = tx.closed() => return,
        }
    };
    if said_missing {
        tracing::info!(
            kind = kind.kind,
            "the Gateway API CRD is installed: watching {}s",
            kind.kind
        );
    }
    watch_kind(api, kind.kind, kind.parse, tx).await
}

/// Runs the source: a watcher per kind and the index, publishing meshes on
/// `mesh_tx`. Returns when `mesh_tx` has no receivers left.
pub async fn run(
    client: kube::Client,
    mesh_tx: watch::Sender<Arc<Mesh>>,
    publish_interval: Duration,
) {
    let (tx, mut rx) = mpsc::channel(1024);
    tokio::spawn(watch_kind(
        Api::<core::Namespace>::all(client.clone()),
        "Namespace",
        Object::from_namespace,
        tx.clone(),
    ));
    tokio::spawn(watch_kind(
        Api::<core::Service>::all(client.clone()),
        "Service",
        Object::from_service,
        tx.clone(),
    ));
    tokio::spawn(watch_kind(
        Api::<discovery::EndpointSlice>::all(client.clone()),
        "EndpointSlice",
        Object::from_endpoint_slice,
        tx.clone(),
    ));
    tokio::spawn(watch_kind(
        Api::<core::Pod>::all(client.clone()),
        "Pod",
        Object::from_pod,
        tx.clone(),
    ));
    for kind in &GATEWAY_KINDS {
        tokio::spawn(watch_gateway_kind(client.clone(), kind, tx.clone()));
    }
    drop(tx);

    let mut index = KubeIndex::default();
    let mut tick = tokio::time::interval(publish_interval);
    loop {
        tokio::select! {
            update = rx.recv() => match update {
                Some(update) => index.update(update),
                None => return,
            },
            _ = tick.tick() => {
                if let Some(mesh) = index.take_mesh()
                    && mesh_tx.send(Arc::new(mesh)).is_err()
                {
                    return;
                }
            }
        }
    }
}
