//! Kubelet's probes under STRICT mTLS: the injector points an app's HTTP
//! probe at the proxy's readiness port, and the proxy's bootstrap routes it
//! to the app on loopback. A caller without a sidecar (as kubelet is) gets
//! the app's answer there, while the app's own port refuses its plaintext.
//!
//! ```text
//! kubelet (198.18.0.9, no sidecar) ──GET :15021/app-health/app/readyz──> server's Envoy ──GET /ready──> 127.0.0.1:8080 app
//!                                  ──GET :8080/ready──> iptables ──> Envoy :15006 (STRICT) ──> refused
//! ```
//!
//! gRPC probes the same way, with a real gRPC health client and server
//! (`grpc.health.v1.Health/Check` over plaintext HTTP/2, as kubelet calls
//! it): the injector moves the probe to port 15021, whose listener forwards
//! that call, and only it, to the app's gRPC port.
//!
//! ```text
//! kubelet ──h2c Check{service}──> :15021 server's Envoy ──h2c──> 127.0.0.1:7070 gRPC health server
//!         ──h2c Check──> :7070 ──> iptables ──> Envoy :15006 (STRICT) ──> refused
//! ```

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use meshd_api::sidecar::bootstrap::{AppProbe, GrpcProbe};
use meshd_controlplane::identity::IdentityConfig;
use meshd_tests::envoy::wait_for;
use meshd_tests::http;
use meshd_tests::mesh::{Extras, PodSpec, TestMesh, pod_ip};
use meshd_tests::registry;

const NS: &str = "e2e";
const APP_PORT: u16 = 8080;
const SERVER: &str = "server-0";
const KUBELET: &str = "kubelet";
const PROBE_PATH: &str = "/app-health/app/readyz";
const WAIT: Duration = Duration::from_secs(30);

const PODS: [PodSpec<'static>; 1] = [PodSpec {
    name: SERVER,
    host: 3,
    app_port: Some(APP_PORT),
}];

fn registry_text() -> String {
    let ip = IpAddr::V4(pod_ip(3));
    registry::documents(&[
        format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {NS}, annotations: {{meshd.io/mtls: STRICT}}}}\n"
        ),
        registry::http_service(NS, "server", "198.19.0.30", APP_PORT),
        registry::slice(NS, "server-1", "server", APP_PORT, &[(SERVER, ip)]),
        registry::pod(NS, SERVER, ip, true),
    ])
}

/// A plaintext GET from the kubelet pod to the server's `port`.
fn kubelet_get(mesh: &TestMesh, port: u16, path: &str) -> anyhow::Result<http::Response> {
    let target = SocketAddr::new(IpAddr::V4(pod_ip(3)), port);
    mesh.pod(KUBELET)
        .run(|| http::get(target, &target.to_string(), path, false))?
}

#[test]
fn kubelet_probes_reach_the_app_through_the_proxy_under_strict_mtls() {
    let probes = [(
        SERVER,
        AppProbe {
            path: PROBE_PATH.into(),
            port: APP_PORT,
            original_path: "/ready".into(),
            timeout: Duration::from_secs(1),
        },
    )];
    let extras = Extras {
        probes: &probes,
        outsiders: &[(KUBELET, 9)],
        ..Extras::default()
    };
    let Some(mut mesh) = TestMesh::start_with(
        NS,
        &PODS,
        &registry_text(),
        IdentityConfig::default(),
        extras,
    ) else {
        return;
    };

    // The app's STRICT inbound chain is in place: the proxy has its
    // certificate and its inbound listener from the control plane.
    let admin = SocketAddr::from(([127, 0, 0, 1], 15000));
    let inbound = wait_for(
        "the server's proxy to take its inbound config",
        WAIT,
        || match mesh
            .pod(SERVER)
            .run(|| http::get(admin, "localhost", "/listeners", false))
        {
            Ok(Ok(r)) if r.body.contains(":15006") => Ok(Some(())),
            Ok(Ok(r)) => Err(format!("listeners: {}", r.body)),
            Ok(Err(e)) | Err(e) => Err(format!("{e:#}")),
        },
    );
    inbound.unwrap_or_else(|e| panic!("{e:#}\n{}", mesh.logs()));

    let before = mesh.apps[0].requests();
    let probe = wait_for(
        "the rewritten probe to reach the app",
        WAIT,
        || match kubelet_get(&mesh, 15021, PROBE_PATH) {
            Ok(r) if r.status == 200 => Ok(Some(r)),
            Ok(r) => Err(format!("HTTP {}: {}", r.status, r.body)),
            Err(e) => Err(format!("{e:#}")),
        },
    )
    .unwrap_or_else(|e| panic!("{e:#}\n{}", mesh.logs()));
    // The app itself answered (not Envoy), in plaintext from the proxy: no
    // client certificate was involved.
    assert!(
        probe.body.starts_with(&format!("hello from {SERVER}")),
        "{}",
        probe.body
    );
    assert_eq!(probe.header("x-served-by"), Some(SERVER), "{}", probe.body);
    assert!(mesh.apps[0].requests() > before);
    // Envoy's own readiness keeps its path on the same port.
    let ready = kubelet_get(&mesh, 15021, "/healthz/ready").unwrap();
    assert_eq!(ready.status, 200, "{}", ready.body);
    // Other paths on the readiness port reach nothing.
    let other = kubelet_get(&mesh, 15021, "/app-health/app/livez").unwrap();
    assert_eq!(other.status, 404, "{}", other.body);

    // The same request to the app's own port is plaintext under STRICT:
    // refused by the inbound listener, and the app never sees it.
    let before = mesh.apps[0].requests();
    match kubelet_get(&mesh, APP_PORT, "/ready") {
        Ok(r) => panic!("STRICT served plaintext: HTTP {}: {}", r.status, r.body),
        Err(e) => println!("plaintext to the app port under STRICT: {e:#}"),
    }
    assert_eq!(mesh.apps[0].requests(), before);
}

/// grpc.health.v1's Check, written out: its two messages (with the harness's
/// prost codec), enough for a real gRPC client and server.
mod health {
    use std::collections::BTreeMap;
    use std::convert::Infallible;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::task::{Context, Poll};

    pub use meshd_tests::grpc_echo::ProstCodec;
    use prost::Message;
    use tonic::codegen::{Body, BoxFuture, Service, StdError, http};
    use tonic::{Request, Response, Status};

    pub const CHECK: &str = "/grpc.health.v1.Health/Check";
    pub const SERVING: i32 = 1;
    pub const NOT_SERVING: i32 = 2;

    #[derive(Clone, PartialEq, Message)]
    pub struct HealthCheckRequest {
        #[prost(string, tag = "1")]
        pub service: String,
    }

    #[derive(Clone, PartialEq, Message)]
    pub struct HealthCheckResponse {
        /// `ServingStatus`: 1 SERVING, 2 NOT_SERVING, 3 SERVICE_UNKNOWN.
        #[prost(int32, tag = "1")]
        pub status: i32,
    }

    /// The app: a gRPC server whose health service answers Check with the
    /// status it was given for each service name, and counts every call it
    /// gets, whatever the method.
    #[derive(Clone)]
    pub struct HealthServer {
        statuses: Arc<BTreeMap<String, i32>>,
        calls: Arc<AtomicU64>,
    }

    impl HealthServer {
        pub fn new(statuses: &[(&str, i32)]) -> HealthServer {
            HealthServer {
                statuses: Arc::new(statuses.iter().map(|(s, v)| (s.to_string(), *v)).collect()),
                calls: Arc::default(),
            }
        }

        pub fn calls(&self) -> u64 {
            self.calls.load(Ordering::SeqCst)
        }
    }

    impl tonic::server::NamedService for HealthServer {
        const NAME: &'static str = "grpc.health.v1.Health";
    }

    struct Check(Arc<BTreeMap<String, i32>>);

    impl tonic::server::UnaryService<HealthCheckRequest> for Check {
        type Response = HealthCheckResponse;
        type Future = BoxFuture<Response<HealthCheckResponse>, Status>;

        fn call(&mut self, request: Request<HealthCheckRequest>) -> Self::Future {
            let status = self.0.get(&request.get_ref().service).copied();
            Box::pin(async move {
                match status {
                    Some(status) => Ok(Response::new(HealthCheckResponse { status })),
                    None => Err(Status::not_found("unknown service")),
                }
            })
        }
    }

    impl<B> Service<http::Request<B>> for HealthServer
    where
        B: Body + Send + 'static,
        B::Error: Into<StdError> + Send + 'static,
    {
        type Response = http::Response<tonic::body::Body>;
        type Error = Infallible;
        type Future = BoxFuture<Self::Response, Infallible>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, request: http::Request<B>) -> Self::Future {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let statuses = self.statuses.clone();
            Box::pin(async move {
                if request.uri().path() != CHECK {
                    return Ok(Status::unimplemented(request.uri().path().to_string()).into_http());
                }
                let codec = ProstCodec::<HealthCheckResponse, HealthCheckRequest>::default();
                let mut grpc = tonic::server::Grpc::new(codec);
                Ok(grpc.unary(Check(statuses), request).await)
            })
        }
    }
}

const GRPC_SERVER: &str = "cart-0";
const GRPC_PORT: u16 = 7070;
const GRPC_SERVICE: &str = "cart.v1.CartService";

/// Calls `method` (a Check) on `target` from the kubelet pod, as kubelet's
/// gRPC prober does: plaintext HTTP/2, the service named in the request.
fn kubelet_grpc(
    mesh: &TestMesh,
    target: SocketAddr,
    method: &'static str,
    service: &str,
) -> anyhow::Result<Result<i32, tonic::Status>> {
    use health::{HealthCheckRequest, HealthCheckResponse, ProstCodec};
    let request = HealthCheckRequest {
        service: service.to_string(),
    };
    // A runtime on the namespace's own thread, so the client's socket is
    // created in the kubelet pod.
    mesh.pod(KUBELET).run(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async move {
            let channel = tonic::transport::Endpoint::from_shared(format!("http://{target}"))?
                .connect_timeout(Duration::from_secs(5))
                .timeout(Duration::from_secs(5))
                .connect()
                .await?;
            let mut grpc = tonic::client::Grpc::new(channel);
            grpc.ready().await?;
            let codec = ProstCodec::<HealthCheckRequest, HealthCheckResponse>::default();
            let path = tonic::codegen::http::uri::PathAndQuery::from_static(method);
            let answer = grpc.unary(tonic::Request::new(request), path, codec).await;
            Ok(answer.map(|r| r.into_inner().status))
        })
    })?
}

/// What the injector makes of a pod probed like Online Boutique's
/// services: the port and service kubelet's readiness probe now calls, and
/// where the proxy's bootstrap forwards it (read back from the bootstrap
/// the injector rendered).
fn injected_grpc_probe() -> (u16, String, GrpcProbe) {
    use k8s_openapi::api::core::v1::Pod;
    use meshd_injector::config::InjectorConfig;
    use meshd_injector::inject::{Injection, PROXY_CONTAINER, inject};
    let original = serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": GRPC_SERVER},
        "spec": {"containers": [{
            "name": "server", "image": "cart:1",
            "ports": [{"containerPort": GRPC_PORT}],
            "readinessProbe": {"grpc": {"port": GRPC_PORT, "service": GRPC_SERVICE}, "timeoutSeconds": 2},
        }]},
    });
    let pod: Pod = serde_json::from_value(original.clone()).unwrap();
    let Injection::Patched { patch, .. } = inject(&pod, NS, &InjectorConfig::default()).unwrap()
    else {
        panic!("not injected");
    };
    let mut doc = original;
    json_patch::patch(&mut doc, &patch).unwrap();
    let pod: Pod = serde_json::from_value(doc).unwrap();
    let spec = pod.spec.unwrap();
    let grpc = spec.containers[0]
        .readiness_probe
        .as_ref()
        .and_then(|p| p.grpc.clone())
        .unwrap();
    let proxy = spec
        .init_containers
        .iter()
        .flatten()
        .find(|c| c.name == PROXY_CONTAINER)
        .unwrap();
    let args = proxy.args.as_ref().unwrap();
    let at = args.iter().position(|a| a == "--config-yaml").unwrap() + 1;
    let bootstrap: serde_json::Value = serde_json::from_str(&args[at]).unwrap();
    let routes = bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
        ["typed_config"]["route_config"]["virtual_hosts"][0]["routes"]
        .as_array()
        .unwrap();
    let route = routes
        .iter()
        .find(|r| r["match"]["path"] == health::CHECK)
        .unwrap_or_else(|| panic!("no gRPC probe route in {routes:?}"));
    let cluster = route["route"]["cluster"].as_str().unwrap();
    let clusters = bootstrap["static_resources"]["clusters"]
        .as_array()
        .unwrap();
    let cluster = clusters.iter().find(|c| c["name"] == cluster).unwrap();
    let address = &cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
        ["socket_address"];
    assert_eq!(address["address"], "127.0.0.1");
    let timeout = route["route"]["timeout"].as_str().unwrap();
    let seconds: f64 = timeout.trim_end_matches('s').parse().unwrap();
    let probe = GrpcProbe {
        port: u16::try_from(address["port_value"].as_u64().unwrap()).unwrap(),
        timeout: Duration::from_secs_f64(seconds),
    };
    let port = u16::try_from(grpc.port).unwrap();
    (port, grpc.service.unwrap_or_default(), probe)
}

#[test]
fn kubelet_grpc_probes_reach_the_apps_health_service_through_the_proxy_under_strict_mtls() {
    let (probe_port, probe_service, grpc_probe) = injected_grpc_probe();
    assert_eq!(probe_port, 15021);
    assert_eq!(probe_service, GRPC_SERVICE);
    assert_eq!(grpc_probe.port, GRPC_PORT);

    let ip = IpAddr::V4(pod_ip(3));
    let registry_text = registry::documents(&[
        format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {NS}, annotations: {{meshd.io/mtls: STRICT}}}}\n"
        ),
        registry::http_service(NS, "cart", "198.19.0.31", GRPC_PORT),
        registry::slice(NS, "cart-1", "cart", GRPC_PORT, &[(GRPC_SERVER, ip)]),
        registry::pod(NS, GRPC_SERVER, ip, true),
    ]);
    let pods = [PodSpec {
        name: GRPC_SERVER,
        host: 3,
        app_port: None,
    }];
    let grpc_probes = [(GRPC_SERVER, grpc_probe)];
    let extras = Extras {
        grpc_probes: &grpc_probes,
        outsiders: &[(KUBELET, 9)],
        ..Extras::default()
    };
    let Some(mut mesh) =
        TestMesh::start_with(NS, &pods, &registry_text, IdentityConfig::default(), extras)
    else {
        return;
    };

    // The app: a gRPC health server on all of its pod's addresses.
    let app = health::HealthServer::new(&[
        ("", health::SERVING),
        (GRPC_SERVICE, health::SERVING),
        ("payments", health::NOT_SERVING),
    ]);
    let listener = mesh
        .pod(GRPC_SERVER)
        .run(|| std::net::TcpListener::bind(("0.0.0.0", GRPC_PORT)))
        .unwrap()
        .unwrap();
    listener.set_nonblocking(true).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let incoming = {
        let _entered = rt.enter();
        tonic::transport::server::TcpIncoming::from(
            tokio::net::TcpListener::from_std(listener).unwrap(),
        )
    };
    rt.spawn(
        tonic::transport::Server::builder()
            .add_service(app.clone())
            .serve_with_incoming(incoming),
    );

    // The STRICT inbound chain is in place before anything is asserted.
    let admin = SocketAddr::from(([127, 0, 0, 1], 15000));
    wait_for(
        "the server's proxy to take its inbound config",
        WAIT,
        || match mesh
            .pod(GRPC_SERVER)
            .run(|| http::get(admin, "localhost", "/listeners", false))
        {
            Ok(Ok(r)) if r.body.contains(":15006") => Ok(Some(())),
            Ok(Ok(r)) => Err(format!("listeners: {}", r.body)),
            Ok(Err(e)) | Err(e) => Err(format!("{e:#}")),
        },
    )
    .unwrap_or_else(|e| panic!("{e:#}\n{}", mesh.logs()));

    // Kubelet's probe as injected: the readiness port, the service named.
    let probe_target = SocketAddr::new(ip, probe_port);
    let before = app.calls();
    let status = wait_for(
        "the gRPC probe to reach the app",
        WAIT,
        || match kubelet_grpc(&mesh, probe_target, health::CHECK, &probe_service) {
            Ok(Ok(status)) => Ok(Some(status)),
            Ok(Err(status)) => Err(format!("gRPC {status:?}")),
            Err(e) => Err(format!("{e:#}")),
        },
    )
    .unwrap_or_else(|e| panic!("{e:#}\n{}", mesh.logs()));
    assert_eq!(status, health::SERVING);
    assert!(app.calls() > before, "the app did not answer the probe");
    // The app's own answer passes through: a service it reports as not
    // serving fails its probe, one it does not know is its error.
    let not_serving = kubelet_grpc(&mesh, probe_target, health::CHECK, "payments").unwrap();
    assert_eq!(not_serving.unwrap(), health::NOT_SERVING);
    let unknown = kubelet_grpc(&mesh, probe_target, health::CHECK, "nope").unwrap();
    assert_eq!(unknown.unwrap_err().code(), tonic::Code::NotFound);

    // The readiness port forwards nothing else of the app: another method
    // never reaches it.
    let before = app.calls();
    let other = kubelet_grpc(&mesh, probe_target, "/cart.v1.CartService/EmptyCart", "").unwrap();
    assert!(other.is_err(), "{other:?}");
    assert_eq!(app.calls(), before);

    // The same call straight to the app's port is plaintext under STRICT:
    // refused, and the app never sees it.
    let direct = SocketAddr::new(ip, GRPC_PORT);
    match kubelet_grpc(&mesh, direct, health::CHECK, &probe_service) {
        Ok(Ok(status)) => panic!("STRICT served plaintext gRPC: status {status}"),
        Ok(Err(status)) => println!("plaintext gRPC to the app port under STRICT: {status:?}"),
        Err(e) => println!("plaintext gRPC to the app port under STRICT: {e:#}"),
    }
    assert_eq!(app.calls(), before);
    drop(mesh);
}
