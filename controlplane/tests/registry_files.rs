//! The file registry at the scale of the load test: 1,000 services in 20
//! namespaces, 10 endpoints (and pods) each, as 2,001 files, the way a
//! generated registry is laid out:
//!
//! ```text
//! namespaces.yaml            20 Namespaces
//! svc-NNNN.yaml   × 1,000    Service + its EndpointSlice (10 endpoints)
//! pods-NNNN.yaml  × 1,000    the 10 Pods behind it
//! ```
//!
//! `reload_after_one_file_change_at_scale` checks that every one-file
//! change at that scale reaches the published mesh, and prints what it
//! cost the source: from rewriting one slice file to the new mesh on the
//! watch channel. It asserts outcomes only, never a time; its figures mean
//! something in release:
//!
//! ```text
//! cargo test --release -p meshd-controlplane --test registry_files -- --nocapture
//! ```

#[path = "../benches/support/mod.rs"]
mod support;

use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use meshd_controlplane::discovery::file::{self, FileRegistry};
use meshd_controlplane::model::{Mesh, ServiceKey};
use support::{
    ENDPOINTS_PER_SERVICE, NAMESPACES, SERVICES, TARGET_PORT, address, namespace_of, port_of,
    service_name,
};
use tokio::sync::watch;

/// Service `i` and its slice, with the first `ready` endpoints ready.
fn service_file(i: usize, ready: usize) -> String {
    let namespace = namespace_of(i);
    let name = service_name(i);
    let port = port_of(i);
    let port_name = port.name.unwrap_or_default();
    let mut text = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {namespace}}}\nspec:\n  clusterIP: {vip}\n  ports: [{{name: {port_name}, port: {port}}}]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {name}-1, namespace: {namespace}, labels: {{kubernetes.io/service-name: {name}}}}}\naddressType: IPv4\nports: [{{name: {port_name}, port: {TARGET_PORT}}}]\nendpoints:\n",
        vip = address([198, 19], i + 1),
        port = port.port,
    );
    for k in 0..ENDPOINTS_PER_SERVICE {
        text.push_str(&format!(
            "- addresses: [{}]\n  conditions: {{ready: {}}}\n  targetRef: {{kind: Pod, name: {name}-{k}}}\n",
            address([198, 18], i * ENDPOINTS_PER_SERVICE + k + 1),
            k < ready,
        ));
    }
    text
}

fn pods_file(i: usize) -> String {
    let namespace = namespace_of(i);
    let name = service_name(i);
    (0..ENDPOINTS_PER_SERVICE)
        .map(|k| {
            format!(
                "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}-{k}, namespace: {namespace}, labels: {{app: {name}}}}}\nspec: {{serviceAccountName: {name}}}\nstatus: {{podIP: {}}}\n",
                address([198, 18], i * ENDPOINTS_PER_SERVICE + k + 1)
            )
        })
        .collect::<Vec<_>>()
        .join("---\n")
}

fn write_mesh(dir: &Path) {
    let namespaces = (0..NAMESPACES)
        .map(|n| format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: ns-{n:02}}}\n"))
        .collect::<Vec<_>>()
        .join("---\n");
    std::fs::write(dir.join("namespaces.yaml"), namespaces).unwrap();
    for i in 0..SERVICES {
        std::fs::write(
            dir.join(format!("{}.yaml", service_name(i))),
            service_file(i, ENDPOINTS_PER_SERVICE),
        )
        .unwrap();
        std::fs::write(
            dir.join(format!("pods-{}.yaml", service_name(i))),
            pods_file(i),
        )
        .unwrap();
    }
}

fn ready_endpoints(mesh: &Mesh, service: usize) -> usize {
    let key = ServiceKey::new(namespace_of(service), service_name(service));
    mesh.endpoints
        .get(&key)
        .map_or(0, |eps| eps.iter().filter(|e| e.conditions.ready).count())
}

/// Waits for the next mesh, or `None` after `wait`.
async fn next_mesh(rx: &mut watch::Receiver<Arc<Mesh>>, wait: Duration) -> Option<Arc<Mesh>> {
    tokio::time::timeout(wait, rx.changed())
        .await
        .ok()?
        .unwrap();
    Some(rx.borrow_and_update().clone())
}

#[tokio::test]
async fn a_watched_registry_publishes_what_changed_and_keeps_what_cannot_be_read() {
    let dir = tempfile::tempdir().unwrap();
    let web = dir.path().join(format!("{}.yaml", service_name(1)));
    let api = dir.path().join(format!("{}.yaml", service_name(2)));
    std::fs::write(&web, service_file(1, ENDPOINTS_PER_SERVICE)).unwrap();
    std::fs::write(&api, service_file(2, ENDPOINTS_PER_SERVICE)).unwrap();
    let (mesh_tx, mut mesh_rx) = watch::channel(Arc::new(Mesh::default()));
    let problems: file::Problems = Arc::new(RwLock::new(Vec::new()));
    let _watch = file::run(
        FileRegistry::new(dir.path()),
        mesh_tx,
        problems.clone(),
        Duration::from_millis(10),
    )
    .await
    .unwrap();
    let first = mesh_rx.borrow_and_update().clone();
    assert_eq!(first.services.len(), 2);

    // An endpoint change: a new mesh, the other service's endpoints
    // untouched (the very same Arc).
    std::fs::write(&api, service_file(2, 9)).unwrap();
    let mesh = next_mesh(&mut mesh_rx, Duration::from_secs(10))
        .await
        .expect("a new mesh");
    assert_eq!(ready_endpoints(&mesh, 2), 9);
    let web_key = ServiceKey::new(namespace_of(1), service_name(1));
    assert!(Arc::ptr_eq(
        &first.endpoints[&web_key],
        &mesh.endpoints[&web_key]
    ));

    // Written again as it was: nothing to publish.
    std::fs::write(&api, service_file(2, 9)).unwrap();
    assert!(
        next_mesh(&mut mesh_rx, Duration::from_millis(500))
            .await
            .is_none()
    );

    // Replaced by a dangling symlink (renamed into place, as a ConfigMap
    // update does): an error, and the service keeps serving.
    let staged = dir.path().join(".web.yaml.tmp");
    std::os::unix::fs::symlink("gone.yaml", &staged).unwrap();
    std::fs::rename(&staged, &web).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while problems.read().unwrap().is_empty() {
        assert!(
            Instant::now() < deadline,
            "no error for the dangling symlink"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let error = problems.read().unwrap()[0].to_string();
    assert!(error.contains(&web.display().to_string()), "{error}");
    assert!(error.contains("which does not exist"), "{error}");
    assert!(mesh_rx.borrow().services.contains_key(&web_key));

    // Deleted: now it goes.
    std::fs::remove_file(&web).unwrap();
    let mesh = next_mesh(&mut mesh_rx, Duration::from_secs(10))
        .await
        .expect("a new mesh");
    assert!(!mesh.services.contains_key(&web_key));
    assert!(problems.read().unwrap().is_empty());
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[rank]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_after_one_file_change_at_scale() {
    const CHANGES: usize = 20;
    // What `meshd run` uses with its default debounce.
    const SETTLE: Duration = Duration::from_millis(10);

    let dir = tempfile::tempdir().unwrap();
    write_mesh(dir.path());

    let started = Instant::now();
    let (mesh_tx, mut mesh_rx) = watch::channel(Arc::new(Mesh::default()));
    let problems: file::Problems = Arc::new(RwLock::new(Vec::new()));
    let _watch = file::run(
        FileRegistry::new(dir.path()),
        mesh_tx,
        problems.clone(),
        SETTLE,
    )
    .await
    .unwrap();
    let first_load = started.elapsed();
    assert!(problems.read().unwrap().is_empty());
    assert_eq!(mesh_rx.borrow_and_update().services.len(), SERVICES);

    let mut latencies = Vec::new();
    for n in 0..CHANGES {
        // One endpoint of a service turns not ready, then ready again.
        let service = (n / 2 * 37) % SERVICES;
        let ready = if n % 2 == 0 {
            ENDPOINTS_PER_SERVICE - 1
        } else {
            ENDPOINTS_PER_SERVICE
        };
        let path = dir.path().join(format!("{}.yaml", service_name(service)));
        // A moment apart, so changes do not share a settle window.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let changed = Instant::now();
        std::fs::write(&path, service_file(service, ready)).unwrap();
        loop {
            tokio::time::timeout(Duration::from_secs(30), mesh_rx.changed())
                .await
                .expect("a new mesh within 30 s")
                .unwrap();
            if ready_endpoints(&mesh_rx.borrow_and_update(), service) == ready {
                break;
            }
        }
        latencies.push(changed.elapsed());
    }
    latencies.sort();
    println!(
        "registry of {} files ({SERVICES} services × {ENDPOINTS_PER_SERVICE} endpoints + pods): first load {:.1?}; one slice file changed → new mesh published ({CHANGES} changes, settle {SETTLE:?}): p50 {:.1?}, p90 {:.1?}, max {:.1?}",
        std::fs::read_dir(dir.path()).unwrap().count(),
        first_load,
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.9),
        latencies.last().unwrap(),
    );

    // A rescan with nothing changed: what the safety net costs.
    let mut registry = FileRegistry::new(dir.path());
    registry.load();
    let rescan = Instant::now();
    let load = registry.load();
    println!(
        "FileRegistry::load with no file changed: {:.1?}",
        rescan.elapsed()
    );
    assert_eq!(load.mesh.services.len(), SERVICES);
}
