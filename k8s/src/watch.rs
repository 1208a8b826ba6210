//! The Kubernetes source: Namespaces, Services, EndpointSlices and Pods from
//! the API server, through kube-rs watchers, into the core's [`KubeIndex`].
//!
//! A watch that fails is retried with backoff by kube-rs; a re-list (after a
//! 410 Gone or a reconnect) replaces that kind's objects wholesale.

use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::future::BoxFuture;
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use kube::Resource;
use kube::api::Api;
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

/// Runs the source: four watchers and the index, publishing meshes on
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
        Api::<core::Pod>::all(client),
        "Pod",
        Object::from_pod,
        tx,
    ));

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
