//! The Gateway API's Mesh conformance profile, end to end: every scenario
//! of upstream's `conformance/tests/mesh/` (kubernetes-sigs/gateway-api),
//! with its own manifests, against real Envoy sidecars in network
//! namespaces, requests and expectations as its `.go` test has them.
//!
//! ```text
//! gateway-conformance-mesh:           echo-v1-… (198.18.0.2) ─┐ app: HTTP 8080, gRPC 7070; also the client
//!                                     echo-v2-… (198.18.0.3) ─┤ app: HTTP 8080, gRPC 7070; the gRPC client of one case
//! gateway-conformance-mesh-consumer:  echo-v1-… (198.18.0.4) ─┘ the consumer namespace's client
//! Services echo (both pods), echo-v1, echo-v2: 80→8080, 8080, 443→8443, 9090, 7070, VIPs 198.19.0.10-12
//! ```
//!
//! Upstream's base manifests (`conformance/mesh/manifests.yaml`) become
//! the registry's shape: the Deployments' pods as Pods with their
//! EndpointSlices, each Service with a cluster IP. One mesh serves every
//! scenario in turn: its routes are cleared (the base alone, until no
//! client's proxy holds a route of a route object any more), then the
//! base and the scenario's manifests are written, unchanged, and each case
//! is retried as upstream's `MakeRequestAndExpectEventuallyConsistentResponse`
//! does: until it holds 3 times in a row, for at most 30 s, then it fails
//! with the last answer. Every failing scenario is reported by name.
//!
//! The client is upstream's too: a request from the echo-v1 pod's app to
//! the Service named by the case's host (its cluster IP: there is no DNS
//! here), with that host as `Host`. Upstream's mesh client compares status,
//! headers and the answering pod; the path the backend saw and a redirect's
//! `Location` are compared as upstream's gateway client does. Names like
//! `example.org` only ever appear in `Location`: nothing connects to them.
//!
//! The scenarios' manifests are upstream's (kubernetes-sigs/gateway-api,
//! Apache-2.0), reproduced as test data because they define the scenarios:
//! the issue asks for the conformance suite's own objects.
//!
//! `GATEWAY_MESH_SCENARIOS=MeshBasic,MeshPorts` runs only those (for
//! debugging one scenario); unset, all of them run.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::{Duration, Instant};

use meshd_controlplane::identity::IdentityConfig;
use meshd_tests::envoy::wait_for;
use meshd_tests::grpc_echo::{self, GrpcEcho};
use meshd_tests::http::{Connection, Response};
use meshd_tests::mesh::{Extras, PodSpec, TestMesh, pod_ip};

const MESH_NS: &str = "gateway-conformance-mesh";
const CONSUMER_NS: &str = "gateway-conformance-mesh-consumer";
/// The Deployments' pods, named as a Deployment names them
/// (`<deployment>-<template hash>-<pod suffix>`), so upstream's
/// `extractBackendName` finds the backend in them.
const ECHO_V1: &str = "echo-v1-5d8f9c-q7x2m";
const ECHO_V2: &str = "echo-v2-6b7c4d-h3n8k";
const CONSUMER_ECHO_V1: &str = "echo-v1-7f8c6d-w4r9t";
const ECHO_V1_HOST: u8 = 2;
const ECHO_V2_HOST: u8 = 3;
const CONSUMER_HOST: u8 = 4;
const ECHO_VIP: &str = "198.19.0.10";
const ECHO_V1_VIP: &str = "198.19.0.11";
const ECHO_V2_VIP: &str = "198.19.0.12";
/// The echo app's ports (`--port=8080`, `--grpc=7070`).
const HTTP_PORT: u16 = 8080;
const GRPC_PORT: u16 = 7070;

/// Upstream's default `TimeoutConfig`: `MaxTimeToConsistency`,
/// `RequiredConsecutiveSuccesses`, `DefaultPollInterval`.
const MAX_TIME_TO_CONSISTENCY: Duration = Duration::from_secs(30);
const REQUIRED_CONSECUTIVE_SUCCESSES: u32 = 3;
const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// Upstream's `weight.TestWeightedDistributionBatch` and `MaxTestRetries`.
const WEIGHT_REQUESTS: usize = 500;
const WEIGHT_TOLERANCE: f64 = 0.05;
const WEIGHT_MAX_TEST_RETRIES: usize = 10;
/// How long the mesh may take to start, and a scenario's routes to be
/// cleared from the proxies.
const WAIT: Duration = Duration::from_secs(60);

const PODS: [PodSpec<'static>; 3] = [
    PodSpec {
        name: ECHO_V1,
        host: ECHO_V1_HOST,
        app_port: Some(HTTP_PORT),
    },
    PodSpec {
        name: ECHO_V2,
        host: ECHO_V2_HOST,
        app_port: Some(HTTP_PORT),
    },
    PodSpec {
        name: CONSUMER_ECHO_V1,
        host: CONSUMER_HOST,
        app_port: Some(HTTP_PORT),
    },
];

/// Upstream's `conformance/mesh/manifests.yaml` in the registry's shape.
/// Each Deployment (one replica) is its Pod, whose service account is its
/// name (as the harness's sidecars are bootstrapped), and each Service an
/// EndpointSlice as the EndpointSlice controller would write it; the
/// Services keep their selectors, ports, names and appProtocols and get a
/// cluster IP.
fn base_manifests() -> String {
    let ip = |host| pod_ip(host).to_string();
    let pod = |namespace: &str, name: &str, version: &str, host: u8| {
        format!(
            r#"apiVersion: v1
kind: Pod
metadata:
  name: {name}
  namespace: {namespace}
  labels: {{app: echo, version: {version}}}
spec:
  serviceAccountName: {name}
  containers:
  - name: echo
    image: registry.k8s.io/gateway-api/conformance/echo-advanced:v0.1.0
    ports:
    - {{containerPort: 8080, protocol: TCP}}
    - {{containerPort: 8443, protocol: TCP}}
    - {{containerPort: 9090, protocol: TCP}}
    - {{containerPort: 7070, protocol: TCP}}
status:
  podIP: "{}"
"#,
            ip(host)
        )
    };
    let service = |name: &str, selector: &str, vip: &str, grpc_app_protocol: &str| {
        format!(
            r#"apiVersion: v1
kind: Service
metadata:
  name: {name}
  namespace: {MESH_NS}
spec:
  clusterIP: {vip}
  selector: {{{selector}}}
  ports:
    - name: http
      port: 80
      appProtocol: http
      targetPort: 8080
    - name: http-alt
      port: 8080
      appProtocol: http
    - name: https
      port: 443
      targetPort: 8443
    - name: tcp
      port: 9090
    - name: grpc
      port: 7070{grpc_app_protocol}
"#
        )
    };
    let slice = |service: &str, pods: &[(&str, u8)], grpc_app_protocol: &str| {
        let endpoints: String = pods
            .iter()
            .map(|(pod, host)| {
                format!(
                    "- addresses: [\"{}\"]\n  conditions: {{ready: true}}\n  targetRef: {{kind: Pod, name: {pod}, namespace: {MESH_NS}}}\n",
                    ip(*host)
                )
            })
            .collect();
        format!(
            r#"apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: {service}-x7k2p
  namespace: {MESH_NS}
  labels: {{kubernetes.io/service-name: {service}}}
addressType: IPv4
ports:
- {{name: http, port: 8080, appProtocol: http}}
- {{name: http-alt, port: 8080, appProtocol: http}}
- {{name: https, port: 8443}}
- {{name: tcp, port: 9090}}
- {{name: grpc, port: 7070{grpc_app_protocol}}}
endpoints:
{endpoints}"#
        )
    };
    let h2c = "\n      appProtocol: kubernetes.io/h2c";
    let both = [(ECHO_V1, ECHO_V1_HOST), (ECHO_V2, ECHO_V2_HOST)];
    [
        format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {MESH_NS}\n  labels:\n    gateway-conformance: mesh\n"),
        pod(MESH_NS, ECHO_V1, "v1", ECHO_V1_HOST),
        service("echo-v1", "app: echo, version: v1", ECHO_V1_VIP, ""),
        slice("echo-v1", &both[..1], ""),
        pod(MESH_NS, ECHO_V2, "v2", ECHO_V2_HOST),
        service("echo-v2", "app: echo, version: v2", ECHO_V2_VIP, ""),
        slice("echo-v2", &both[1..], ""),
        service("echo", "app: echo", ECHO_VIP, h2c),
        slice("echo", &both, ", appProtocol: kubernetes.io/h2c"),
        format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {CONSUMER_NS}\n  labels:\n    gateway-conformance: mesh-consumer\n"),
        pod(CONSUMER_NS, CONSUMER_ECHO_V1, "v1", CONSUMER_HOST),
    ]
    .join("---\n")
}

/// What the echo app answered (or a proxy, for a redirect or a 404): the
/// fields upstream's mesh client reads from the echo server's answer.
#[derive(Debug)]
struct Echo {
    status: u16,
    response_headers: Vec<(String, String)>,
    /// The pod whose app answered (`X-Served-By`, upstream's `Hostname`);
    /// empty when a proxy answered.
    pod: String,
    /// The path (with query) of the request line the app saw.
    path: String,
    /// The request headers the app saw, in order.
    request_headers: Vec<(String, String)>,
    /// A proxy's own answer's body (why it answered), for failure messages.
    #[allow(dead_code, reason = "read through Debug, in failure messages")]
    proxy_body: String,
}

impl Echo {
    fn from_response(r: Response) -> Echo {
        let pod = r.header("x-served-by").unwrap_or_default().to_string();
        let (mut path, mut request_headers) = (String::new(), Vec::new());
        let mut proxy_body = String::new();
        if pod.is_empty() {
            proxy_body = r.body.clone();
        } else {
            // The app's body: "hello from <pod>", the request line, the
            // request headers.
            let mut lines = r.body.lines().skip(1);
            path = lines
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                .unwrap_or_default()
                .to_string();
            request_headers = lines
                .filter_map(|l| l.split_once(':'))
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                .collect();
        }
        Echo {
            status: r.status,
            response_headers: r.headers,
            pod,
            path,
            request_headers,
            proxy_body,
        }
    }
}

/// Every value of header `name` (any case) joined by commas, as upstream
/// compares them (`strings.Join(values, ",")`); `None` when absent.
fn joined(headers: &[(String, String)], name: &str) -> Option<String> {
    let values: Vec<&str> = headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
        .collect();
    (!values.is_empty()).then(|| values.join(","))
}

/// Upstream's `roundtripper.RedirectRequest`: what `Location` must say;
/// an empty field is upstream's default (scheme and path of the request,
/// any host, no port other than the scheme's).
#[derive(Clone, Copy, Debug, Default)]
struct Redirect {
    scheme: &'static str,
    host: &'static str,
    port: &'static str,
    path: &'static str,
}

/// Upstream's `http.ExpectedResponse`, the fields the mesh tests use.
#[derive(Clone, Copy, Debug, Default)]
struct Expected {
    /// `Request.Host`: the Service called (`name[.namespace][:port]`) or
    /// `ip:port`; `echo` when empty, as upstream defaults it.
    host: &'static str,
    /// `Request.Path`; `/` when empty.
    path: &'static str,
    /// `Request.Headers`; a `Host` among them replaces the `Host` header.
    headers: &'static [(&'static str, &'static str)],
    /// `Response.StatusCode`; 200 when 0.
    status: u16,
    /// `Response.Headers` and `Response.AbsentHeaders`.
    response_headers: &'static [(&'static str, &'static str)],
    absent_response_headers: &'static [&'static str],
    /// `Backend`: the answering pod's name starts with it.
    backend: &'static str,
    /// `ExpectedRequest.Path`: the path the backend saw.
    backend_path: Option<&'static str>,
    /// `ExpectedRequest.Headers` and `ExpectedRequest.AbsentHeaders`.
    backend_headers: &'static [(&'static str, &'static str)],
    absent_backend_headers: &'static [&'static str],
    /// `RedirectRequest`.
    redirect: Option<Redirect>,
}

impl Expected {
    fn host(&self) -> &'static str {
        if self.host.is_empty() {
            "echo"
        } else {
            self.host
        }
    }

    fn path(&self) -> &'static str {
        if self.path.is_empty() { "/" } else { self.path }
    }

    /// Upstream's test case name (`GetTestCaseName`).
    fn name(&self, i: usize) -> String {
        let with = if self.headers.is_empty() {
            ""
        } else {
            " with headers"
        };
        let request = format!("{i} request to '{}{}'{with}", self.host(), self.path);
        if self.backend.is_empty() {
            format!("{request} should receive {}", self.status())
        } else {
            format!("{request} should go to {}", self.backend)
        }
    }

    fn status(&self) -> u16 {
        if self.status == 0 { 200 } else { self.status }
    }

    /// Upstream's `compareRequest` (mesh) and, for the backend's path and a
    /// redirect, its `CompareRoundTrip`.
    fn compare(&self, got: &Echo) -> Result<(), String> {
        if got.status != self.status() {
            return Err(format!(
                "wanted status code {}, got {}",
                self.status(),
                got.status
            ));
        }
        for (name, want) in self.backend_headers {
            match joined(&got.request_headers, name) {
                None => return Err(format!("expected {name} header to be set")),
                Some(v) if v != *want => {
                    return Err(format!(
                        "expected {name} header to be set to {want}, got {v}"
                    ));
                }
                Some(_) => {}
            }
        }
        for name in self.absent_backend_headers {
            if let Some(v) = joined(&got.request_headers, name) {
                return Err(format!("expected {name} header to not be set, got {v}"));
            }
        }
        for name in self.absent_response_headers {
            if let Some(v) = joined(&got.response_headers, name) {
                return Err(format!("expected no header {name:?}, got {v}"));
            }
        }
        for (name, want) in self.response_headers {
            let v = got
                .response_headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str());
            if v != Some(*want) {
                return Err(format!("expected header {name}={want}, got {v:?}"));
            }
        }
        if !got.pod.starts_with(self.backend) {
            return Err(format!(
                "expected pod name to start with {}, got {:?}",
                self.backend, got.pod
            ));
        }
        if let Some(want) = self.backend_path {
            let seen = got.path.split('?').next().unwrap_or_default();
            if seen != want {
                return Err(format!(
                    "expected the backend to see path {want}, got {}",
                    got.path
                ));
            }
        }
        if let Some(want) = self.redirect {
            self.compare_redirect(want, got)?;
        }
        Ok(())
    }

    fn compare_redirect(&self, want: Redirect, got: &Echo) -> Result<(), String> {
        let location = got
            .response_headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("location"))
            .map(|(_, v)| v.as_str())
            .ok_or("a redirect without Location")?;
        let (scheme, rest) = location
            .split_once("://")
            .ok_or_else(|| format!("Location {location:?} is not an absolute URL"))?;
        let (authority, path) = match rest.find(['/', '?']) {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        let path = path.split('?').next().unwrap_or_default();
        let (host, port) = authority.split_once(':').unwrap_or((authority, ""));
        // setRedirectRequestDefaults: unset fields take the request's.
        let want_host = if want.host.is_empty() {
            host
        } else {
            want.host
        };
        let want_scheme = if want.scheme.is_empty() {
            "http"
        } else {
            want.scheme
        };
        let want_path = if want.path.is_empty() {
            self.path().split('?').next().unwrap_or_default()
        } else {
            want.path
        };
        if host != want_host {
            return Err(format!(
                "expected redirected hostname to be {want_host:?}, got {host:?} ({location})"
            ));
        }
        if want.port.is_empty() {
            let default = match scheme.to_ascii_lowercase().as_str() {
                "http" => "80",
                "https" => "443",
                _ => port,
            };
            if !port.is_empty() && port != default {
                return Err(format!(
                    "for {scheme} scheme, expected redirected port to be {default} or not set, got {port:?} ({location})"
                ));
            }
        } else if port != want.port {
            return Err(format!(
                "expected redirected port to be {:?}, got {port:?} ({location})",
                want.port
            ));
        }
        if scheme != want_scheme {
            return Err(format!(
                "expected redirected scheme to be {want_scheme:?}, got {scheme:?} ({location})"
            ));
        }
        if path != want_path {
            return Err(format!(
                "expected redirected path to be {want_path:?}, got {path:?} ({location})"
            ));
        }
        Ok(())
    }
}

/// The address a request's host reaches: a Service of the mesh namespace
/// by its cluster IP (where DNS would have sent the client) and the port
/// given (80 by default), or a pod IP and port.
fn target(host: &str) -> SocketAddr {
    let (name, port) = match host.rsplit_once(':') {
        Some((name, port)) => (name, port.parse().expect("a port number")),
        None => (host, 80),
    };
    if let Ok(ip) = name.parse::<Ipv4Addr>() {
        return SocketAddr::new(IpAddr::V4(ip), port);
    }
    let vip = match name.split('.').next().unwrap_or_default() {
        "echo" => ECHO_VIP,
        "echo-v1" => ECHO_V1_VIP,
        "echo-v2" => ECHO_V2_VIP,
        other => panic!("no Service {other} in {MESH_NS}"),
    };
    SocketAddr::new(vip.parse().unwrap(), port)
}

/// One request of `exp` from `client`'s app on a fresh connection, as
/// upstream's echo client runs one process per request.
fn request(mesh: &TestMesh, client: &str, exp: &Expected) -> Result<Echo, String> {
    let addr = target(exp.host());
    let host = exp
        .headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("host"))
        .map_or(exp.host(), |(_, v)| *v);
    let headers: Vec<(&str, &str)> = exp
        .headers
        .iter()
        .filter(|(k, _)| !k.eq_ignore_ascii_case("host"))
        .copied()
        .collect();
    let path = exp.path();
    mesh.pod(client)
        .run(|| Connection::new(addr).get(host, path, &headers))
        .map_err(|e| format!("{e:#}"))?
        .map(Echo::from_response)
        .map_err(|e| format!("GET http://{host}{path} via {addr}: {e:#}"))
}

/// Upstream's `AwaitConvergence`: `attempt` until it succeeds
/// [`REQUIRED_CONSECUTIVE_SUCCESSES`] times in a row, within
/// [`MAX_TIME_TO_CONSISTENCY`]; otherwise the last failure.
fn await_convergence(mut attempt: impl FnMut() -> Result<(), String>) -> Result<(), String> {
    let start = Instant::now();
    let (mut attempts, mut successes) = (0, 0);
    let mut last = String::new();
    while start.elapsed() < MAX_TIME_TO_CONSISTENCY {
        attempts += 1;
        match attempt() {
            Ok(()) => {
                successes += 1;
                if successes >= REQUIRED_CONSECUTIVE_SUCCESSES {
                    return Ok(());
                }
                continue;
            }
            Err(e) => last = e,
        }
        successes = 0;
        std::thread::sleep(POLL_INTERVAL);
    }
    Err(format!(
        "timeout after {attempts} attempts ({successes}/{REQUIRED_CONSECUTIVE_SUCCESSES} successes); last: {last}"
    ))
}

/// `MakeRequestAndExpectEventuallyConsistentResponse` for each case, from
/// `client`; every failing case is reported, not just the first.
fn expect_all(mesh: &TestMesh, client: &str, cases: &[Expected]) -> Result<(), String> {
    let failures: Vec<String> = cases
        .iter()
        .enumerate()
        .filter_map(|(i, exp)| {
            await_convergence(|| {
                let got = request(mesh, client, exp)?;
                exp.compare(&got).map_err(|e| format!("{e}; got {got:?}"))
            })
            .err()
            .map(|e| format!("{}: {e}", exp.name(i)))
        })
        .collect();
    if failures.is_empty() {
        Ok(())
    } else {
        Err(failures.join("\n"))
    }
}

/// Upstream's `extractBackendName`: a pod name without its last two
/// dash-separated parts (template hash and pod suffix).
fn extract_backend_name(pod: &str) -> String {
    let parts: Vec<&str> = pod.split('-').collect();
    if parts.len() < 3 {
        return pod.to_string();
    }
    parts[..parts.len() - 2].join("-")
}

/// Upstream's `TestWeightedDistributionBatch`: [`WEIGHT_REQUESTS`]
/// answers from `send_batch` (the pods that answered), each backend's
/// share within [`WEIGHT_TOLERANCE`] of its weight.
fn weighted_distribution(
    send_batch: &dyn Fn(usize) -> Result<Vec<String>, String>,
    expected: &[(&str, f64)],
) -> Result<(), String> {
    let pods = send_batch(WEIGHT_REQUESTS)?;
    if pods.len() != WEIGHT_REQUESTS {
        return Err(format!(
            "expected {WEIGHT_REQUESTS} responses but got {}",
            pods.len()
        ));
    }
    let mut seen = std::collections::BTreeMap::<String, usize>::new();
    for pod in &pods {
        let backend = extract_backend_name(pod);
        if !expected.iter().any(|(b, _)| *b == backend) {
            return Err(format!(
                "request was handled by an unexpected pod {pod:?} (extracted backend: {backend:?})"
            ));
        }
        *seen.entry(backend).or_default() += 1;
    }
    let active = expected.iter().filter(|(_, w)| *w > 0.0).count();
    let mut errors = Vec::new();
    if seen.len() != active {
        errors.push(format!(
            "expected {active} backends to receive traffic, but got {}",
            seen.len()
        ));
    }
    for (backend, want) in expected {
        let got = seen.get(*backend).copied().unwrap_or(0);
        if got == 0 && *want != 0.0 {
            errors.push(format!(
                "expect traffic to hit backend {backend:?} - but none was received"
            ));
            continue;
        }
        // At most 500: exact in an f64.
        let share = got as f64 / WEIGHT_REQUESTS as f64;
        if (share - want).abs() > WEIGHT_TOLERANCE {
            errors.push(format!(
                "backend {backend:?} weighted traffic of {share} not within tolerance {want} (+/-{WEIGHT_TOLERANCE})"
            ));
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        errors.sort();
        Err(errors.join("; "))
    }
}

/// The weight tests' loop: up to [`WEIGHT_MAX_TEST_RETRIES`] batches, one
/// within tolerance passes (a correct mesh misses the ±5% band now and
/// then by chance; a wrong one every time).
fn expect_weights(
    send_batch: &dyn Fn(usize) -> Result<Vec<String>, String>,
    expected: &[(&str, f64)],
) -> Result<(), String> {
    let mut failures = Vec::new();
    for i in 0..WEIGHT_MAX_TEST_RETRIES {
        match weighted_distribution(send_batch, expected) {
            Ok(()) => return Ok(()),
            Err(e) => {
                println!(
                    "Traffic distribution test failed ({}/{WEIGHT_MAX_TEST_RETRIES}): {e}",
                    i + 1
                );
                failures.push(e);
            }
        }
    }
    Err(format!(
        "Weighted distribution tests failed: {}",
        failures.join(" | ")
    ))
}

/// `n` requests of `exp` from `client` on one keep-alive connection (as
/// the echo client's `--count`): the pod that answered each ("" for an
/// answer without one).
fn http_batch(
    mesh: &TestMesh,
    client: &str,
    exp: &Expected,
    n: usize,
) -> Result<Vec<String>, String> {
    let addr = target(exp.host());
    mesh.pod(client)
        .run(|| {
            let mut connection = Connection::new(addr);
            (0..n)
                .map(|_| {
                    connection
                        .get(exp.host(), exp.path(), exp.headers)
                        .map(|r| r.header("x-served-by").unwrap_or_default().to_string())
                        .map_err(|e| format!("{e:#}"))
                })
                .collect()
        })
        .map_err(|e| format!("{e:#}"))?
}

/// A gRPC case: upstream's `http.Request{Protocol: "grpc"}` to `host`
/// (`echo:7070`), which calls `GrpcEcho/Echo`.
#[derive(Clone, Copy, Debug, Default)]
struct ExpectedGrpc {
    host: &'static str,
    metadata: &'static [(&'static str, &'static str)],
    backend: &'static str,
    backend_headers: &'static [(&'static str, &'static str)],
    absent_backend_headers: &'static [&'static str],
}

/// `n` calls of `exp` from `client`'s pod on one connection.
fn grpc_calls(
    mesh: &TestMesh,
    client: &str,
    exp: &ExpectedGrpc,
    n: usize,
) -> Result<Vec<Result<grpc_echo::EchoResponse, tonic::Status>>, String> {
    let addr = target(exp.host);
    mesh.pod(client)
        .run(|| grpc_echo::call(addr, exp.host, exp.metadata, n))
        .map_err(|e| format!("{e:#}"))?
        .map_err(|e| format!("gRPC to {} via {addr}: {e:#}", exp.host))
}

impl ExpectedGrpc {
    /// The mesh `compareRequest` for a gRPC answer: status OK (upstream
    /// maps it to 200), the backend's headers, the answering pod.
    fn compare(&self, got: &Result<grpc_echo::EchoResponse, tonic::Status>) -> Result<(), String> {
        let got = got
            .as_ref()
            .map_err(|s| format!("wanted gRPC status OK, got {:?}: {}", s.code(), s.message()))?;
        for (name, want) in self.backend_headers {
            let values = got.request_header(name);
            if values.is_empty() {
                return Err(format!("expected {name} header to be set; got {got:?}"));
            }
            let v = values.join(",");
            if v != *want {
                return Err(format!(
                    "expected {name} header to be set to {want}, got {v}; got {got:?}"
                ));
            }
        }
        for name in self.absent_backend_headers {
            let values = got.request_header(name);
            if !values.is_empty() {
                return Err(format!(
                    "expected {name} header to not be set, got {values:?}"
                ));
            }
        }
        if !got.pod().starts_with(self.backend) {
            return Err(format!(
                "expected pod name to start with {}, got {:?}",
                self.backend,
                got.pod()
            ));
        }
        Ok(())
    }
}

type Scenario = fn(&TestMesh) -> Result<(), String>;

/// Every scenario of the Mesh profile: upstream's `ShortName`, the
/// manifests its test applies (`conformance/tests/mesh/*.yaml`, below,
/// unchanged) and its test. Core first, then extended, then gRPC.
const SCENARIOS: [(&str, &str, Scenario); 23] = [
    ("MeshBasic", "", mesh_basic),
    ("MeshTrafficSplit", MESH_SPLIT, mesh_traffic_split),
    (
        "MeshHTTPRouteSimpleSameNamespace",
        HTTPROUTE_SIMPLE_SAME_NAMESPACE,
        mesh_http_route_simple_same_namespace,
    ),
    (
        "MeshHTTPRouteMatching",
        HTTPROUTE_MATCHING,
        mesh_http_route_matching,
    ),
    (
        "MeshHTTPRouteWeight",
        HTTPROUTE_WEIGHT,
        mesh_http_route_weight,
    ),
    (
        "MeshHTTPRouteRequestHeaderModifier",
        HTTPROUTE_REQUEST_HEADER_MODIFIER,
        mesh_http_route_request_header_modifier,
    ),
    (
        "MeshHTTPRouteRedirectHostAndStatus",
        HTTPROUTE_REDIRECT_HOST_AND_STATUS,
        mesh_http_route_redirect_host_and_status,
    ),
    ("MeshPorts", MESH_PORTS, mesh_ports),
    ("MeshFrontend", MESH_FRONTEND, mesh_frontend),
    (
        "MeshFrontendHostname",
        MESH_FRONTEND,
        mesh_frontend_hostname,
    ),
    (
        "MeshConsumerRoute",
        MESH_CONSUMER_ROUTE,
        mesh_consumer_route,
    ),
    (
        "MeshHTTPRouteQueryParamMatching",
        HTTPROUTE_QUERY_PARAM_MATCHING,
        mesh_http_route_query_param_matching,
    ),
    (
        "MeshHTTPRouteNamedRule",
        HTTPROUTE_NAMED_RULE,
        mesh_http_route_named_rule,
    ),
    (
        "MeshHTTPRouteBackendRequestHeaderModifier",
        HTTPROUTE_REQUEST_HEADER_MODIFIER_BACKEND,
        mesh_http_route_backend_request_header_modifier,
    ),
    (
        "MeshHTTPRouteRewritePath",
        HTTPROUTE_REWRITE_PATH,
        mesh_http_route_rewrite_path,
    ),
    (
        "MeshHTTPRouteRedirectPath",
        HTTPROUTE_REDIRECT_PATH,
        mesh_http_route_redirect_path,
    ),
    (
        "MeshHTTPRouteRedirectPort",
        HTTPROUTE_REDIRECT_PORT,
        mesh_http_route_redirect_port,
    ),
    (
        "MeshHTTPRouteSchemeRedirect",
        HTTPROUTE_REDIRECT_SCHEME,
        mesh_http_route_scheme_redirect,
    ),
    (
        "MeshHTTPRoute303Redirect",
        HTTPROUTE_303_REDIRECT,
        mesh_http_route_303_redirect,
    ),
    (
        "MeshHTTPRoute307Redirect",
        HTTPROUTE_307_REDIRECT,
        mesh_http_route_307_redirect,
    ),
    (
        "MeshHTTPRoute308Redirect",
        HTTPROUTE_308_REDIRECT,
        mesh_http_route_308_redirect,
    ),
    (
        "MeshGRPCRouteWeight",
        GRPCROUTE_WEIGHT,
        mesh_grpc_route_weight,
    ),
    (
        "MeshGRPCRouteRequestHeaderModifier",
        GRPCROUTE_REQUEST_HEADER_MODIFIER,
        mesh_grpc_route_request_header_modifier,
    ),
];

/// MeshBasic: a mesh client reaches a mesh server with no configuration.
fn mesh_basic(mesh: &TestMesh) -> Result<(), String> {
    expect_all(
        mesh,
        ECHO_V1,
        &[Expected {
            host: "echo",
            ..Default::default()
        }],
    )
}

/// MeshTrafficSplit: path matches split calls to `echo` between versions.
fn mesh_traffic_split(mesh: &TestMesh) -> Result<(), String> {
    expect_all(
        mesh,
        ECHO_V1,
        &[
            Expected {
                host: "echo",
                path: "/v1",
                backend: "echo-v1",
                ..Default::default()
            },
            Expected {
                host: "echo",
                path: "/v2",
                backend: "echo-v2",
                ..Default::default()
            },
        ],
    )
}

fn mesh_http_route_simple_same_namespace(mesh: &TestMesh) -> Result<(), String> {
    expect_all(
        mesh,
        ECHO_V1,
        &[Expected {
            host: "echo",
            path: "/",
            backend: "echo-v1",
            ..Default::default()
        }],
    )
}

fn mesh_http_route_matching(mesh: &TestMesh) -> Result<(), String> {
    let case = |path, headers, backend| Expected {
        path,
        headers,
        backend,
        ..Default::default()
    };
    expect_all(
        mesh,
        ECHO_V1,
        &[
            case("/", &[], "echo-v1"),
            case("/example", &[], "echo-v1"),
            case("/", &[("Version", "one")], "echo-v1"),
            case("/v2", &[], "echo-v2"),
            case("/v2/example", &[], "echo-v2"),
            case("/", &[("Version", "two")], "echo-v2"),
            case("/v2/", &[], "echo-v2"),
            case("/v2example", &[], "echo-v1"),
            case("/foo/v2/example", &[], "echo-v1"),
        ],
    )
}

/// MeshHTTPRouteWeight: 70/30 between echo-v1 and echo-v2.
fn mesh_http_route_weight(mesh: &TestMesh) -> Result<(), String> {
    let expected = Expected {
        host: "echo",
        path: "/",
        ..Default::default()
    };
    expect_all(mesh, ECHO_V1, &[expected])?;
    expect_weights(
        &|n| http_batch(mesh, ECHO_V1, &expected, n),
        &[("echo-v1", 0.7), ("echo-v2", 0.3)],
    )
}

/// The cases MeshHTTPRouteRequestHeaderModifier and
/// MeshHTTPRouteBackendRequestHeaderModifier share (upstream's second
/// test is the first's function on other manifests).
const HEADER_MODIFIER_CASES: [Expected; 7] = [
    Expected {
        host: "",
        path: "/set",
        headers: &[("Some-Other-Header", "val")],
        status: 0,
        response_headers: &[],
        absent_response_headers: &[],
        backend: "echo-v1",
        backend_path: Some("/set"),
        backend_headers: &[
            ("Some-Other-Header", "val"),
            ("X-Header-Set", "set-overwrites-values"),
        ],
        absent_backend_headers: &[],
        redirect: None,
    },
    Expected {
        host: "",
        path: "/set",
        headers: &[
            ("Some-Other-Header", "val"),
            ("X-Header-Set", "some-other-value"),
        ],
        status: 0,
        response_headers: &[],
        absent_response_headers: &[],
        backend: "echo-v1",
        backend_path: Some("/set"),
        backend_headers: &[
            ("Some-Other-Header", "val"),
            ("X-Header-Set", "set-overwrites-values"),
        ],
        absent_backend_headers: &[],
        redirect: None,
    },
    Expected {
        host: "",
        path: "/add",
        headers: &[("Some-Other-Header", "val")],
        status: 0,
        response_headers: &[],
        absent_response_headers: &[],
        backend: "echo-v1",
        backend_path: Some("/add"),
        backend_headers: &[
            ("Some-Other-Header", "val"),
            ("X-Header-Add", "add-appends-values"),
        ],
        absent_backend_headers: &[],
        redirect: None,
    },
    Expected {
        host: "",
        path: "/add",
        headers: &[
            ("Some-Other-Header", "val"),
            ("X-Header-Add", "some-other-value"),
        ],
        status: 0,
        response_headers: &[],
        absent_response_headers: &[],
        backend: "echo-v1",
        backend_path: Some("/add"),
        backend_headers: &[
            ("Some-Other-Header", "val"),
            ("X-Header-Add", "some-other-value,add-appends-values"),
        ],
        absent_backend_headers: &[],
        redirect: None,
    },
    Expected {
        host: "",
        path: "/remove",
        headers: &[("X-Header-Remove", "val")],
        status: 0,
        response_headers: &[],
        absent_response_headers: &[],
        backend: "echo-v1",
        backend_path: Some("/remove"),
        backend_headers: &[],
        absent_backend_headers: &["X-Header-Remove"],
        redirect: None,
    },
    Expected {
        host: "",
        path: "/multiple",
        headers: &[
            ("X-Header-Set-2", "set-val-2"),
            ("X-Header-Add-2", "add-val-2"),
            ("X-Header-Remove-2", "remove-val-2"),
            ("Another-Header", "another-header-val"),
        ],
        status: 0,
        response_headers: &[],
        absent_response_headers: &[],
        backend: "echo-v1",
        backend_path: Some("/multiple"),
        backend_headers: &[
            ("X-Header-Set-1", "header-set-1"),
            ("X-Header-Set-2", "header-set-2"),
            ("X-Header-Add-1", "header-add-1"),
            ("X-Header-Add-2", "add-val-2,header-add-2"),
            ("X-Header-Add-3", "header-add-3"),
            ("Another-Header", "another-header-val"),
        ],
        absent_backend_headers: &["X-Header-Remove-1", "X-Header-Remove-2"],
        redirect: None,
    },
    Expected {
        host: "",
        path: "/case-insensitivity",
        headers: &[
            ("x-header-set", "original-val-set"),
            ("x-header-add", "original-val-add"),
            ("x-header-remove", "original-val-remove"),
            ("Another-Header", "another-header-val"),
        ],
        status: 0,
        response_headers: &[],
        absent_response_headers: &[],
        backend: "echo-v1",
        backend_path: Some("/case-insensitivity"),
        backend_headers: &[
            ("X-Header-Set", "header-set"),
            ("X-Header-Add", "original-val-add,header-add"),
            ("Another-Header", "another-header-val"),
        ],
        absent_backend_headers: &["x-header-remove", "X-Header-Remove"],
        redirect: None,
    },
];

fn mesh_http_route_request_header_modifier(mesh: &TestMesh) -> Result<(), String> {
    expect_all(mesh, ECHO_V1, &HEADER_MODIFIER_CASES)
}

fn mesh_http_route_backend_request_header_modifier(mesh: &TestMesh) -> Result<(), String> {
    expect_all(mesh, ECHO_V1, &HEADER_MODIFIER_CASES)
}

/// A redirect case: `path` on `echo` answered `status` with `redirect`.
fn redirect(path: &'static str, status: u16, redirect: Redirect) -> Expected {
    Expected {
        host: "echo",
        path,
        status,
        redirect: Some(redirect),
        ..Default::default()
    }
}

fn mesh_http_route_redirect_host_and_status(mesh: &TestMesh) -> Result<(), String> {
    let host = Redirect {
        host: "example.org",
        ..Default::default()
    };
    expect_all(
        mesh,
        ECHO_V1,
        &[
            redirect("/hostname-redirect", 302, host),
            redirect("/host-and-status", 301, host),
        ],
    )
}

/// MeshPorts: a route with `port: 80` applies to port 80 only; one
/// without a port to every port.
fn mesh_ports(mesh: &TestMesh) -> Result<(), String> {
    let case = |host, set: &'static [(&'static str, &'static str)], absent, backend| Expected {
        host,
        response_headers: set,
        absent_response_headers: absent,
        backend,
        ..Default::default()
    };
    expect_all(
        mesh,
        ECHO_V1,
        &[
            // Explicit port set, send to that port.
            case("echo-v1", &[("X-Header-Set", "v1")], &[], "echo-v1"),
            // Explicit port, send to an excluded port.
            case("echo-v1:8080", &[], &["X-Header-Set"], "echo-v1"),
            // No port set.
            case("echo-v2", &[("X-Header-Set", "v2")], &[], "echo-v2"),
            case("echo-v2:8080", &[("X-Header-Set", "v2")], &[], "echo-v2"),
        ],
    )
}

/// echo-v2's pod, called by its IP on the app's port: no Service, so no
/// Service's routes.
fn echo_v2_pod_address() -> &'static str {
    static ADDRESS: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ADDRESS.get_or_init(|| format!("{}:{HTTP_PORT}", pod_ip(ECHO_V2_HOST)))
}

/// MeshFrontend: a route applies to calls to its Service, not to calls to
/// the Service's pod by IP.
fn mesh_frontend(mesh: &TestMesh) -> Result<(), String> {
    expect_all(
        mesh,
        ECHO_V1,
        &[
            // Send to service.
            Expected {
                host: "echo-v2",
                response_headers: &[("X-Header-Set", "set")],
                backend: "echo-v2",
                ..Default::default()
            },
            // Send to pod IP.
            Expected {
                host: echo_v2_pod_address(),
                absent_response_headers: &["X-Header-Set"],
                backend: "echo-v2",
                ..Default::default()
            },
        ],
    )
}

/// MeshFrontendHostname: the Service called decides, not `Host`.
fn mesh_frontend_hostname(mesh: &TestMesh) -> Result<(), String> {
    expect_all(
        mesh,
        ECHO_V1,
        &[
            // Send to service with wrong hostname.
            Expected {
                host: "echo-v2",
                headers: &[("Host", "echo-v1")],
                response_headers: &[("X-Header-Set", "set")],
                backend: "echo-v2",
                ..Default::default()
            },
            // Send to other service with matching hostname.
            Expected {
                host: "echo-v1",
                headers: &[("Host", "echo-v2")],
                absent_response_headers: &["X-Header-Set"],
                backend: "echo-v1",
                ..Default::default()
            },
        ],
    )
}

/// MeshConsumerRoute: a route in the consumer namespace changes its
/// callers' requests only.
fn mesh_consumer_route(mesh: &TestMesh) -> Result<(), String> {
    let consumer = expect_all(
        mesh,
        CONSUMER_ECHO_V1,
        &[Expected {
            host: "echo-v1.gateway-conformance-mesh",
            path: "/",
            response_headers: &[("X-Header-Set", "set")],
            backend: "echo-v1",
            ..Default::default()
        }],
    )
    .map_err(|e| format!("from {CONSUMER_NS}: {e}"));
    let producer = expect_all(
        mesh,
        ECHO_V1,
        &[Expected {
            host: "echo-v1.gateway-conformance-mesh",
            path: "/",
            absent_response_headers: &["X-Header-Set"],
            backend: "echo-v1",
            ..Default::default()
        }],
    )
    .map_err(|e| format!("from {MESH_NS}: {e}"));
    match (consumer, producer) {
        (Ok(()), Ok(())) => Ok(()),
        (Err(a), Err(b)) => Err(format!("{a}\n{b}")),
        (Err(e), _) | (_, Err(e)) => Err(e),
    }
}

fn mesh_http_route_query_param_matching(mesh: &TestMesh) -> Result<(), String> {
    let to = |path, headers, backend| Expected {
        path,
        headers,
        backend,
        ..Default::default()
    };
    let not_found = |path| Expected {
        path,
        status: 404,
        ..Default::default()
    };
    expect_all(
        mesh,
        ECHO_V1,
        &[
            to("/?animal=whale", &[], "echo-v1"),
            to("/?animal=dolphin", &[], "echo-v2"),
            to("/?animal=whale&otherparam=irrelevant", &[], "echo-v1"),
            to("/?animal=dolphin&color=yellow", &[], "echo-v2"),
            not_found("/?color=blue"),
            not_found("/?animal=dog"),
            not_found("/?animal=whaledolphin"),
            not_found("/"),
            // Combinations with core match types.
            to("/path1?animal=whale", &[], "echo-v1"),
            to("/?animal=whale", &[("version", "one")], "echo-v2"),
            // (cond1 AND cond2) OR (cond3 AND cond4 AND cond5).
            to("/path3?animal=shark", &[], "echo-v1"),
            to("/path4?animal=kraken", &[("version", "three")], "echo-v1"),
            not_found("/?animal=shark"),
            not_found("/path4?animal=kraken"),
            // Precedence: the path match wins over the query match.
            to("/path5?animal=hydra", &[], "echo-v1"),
        ],
    )
}

fn mesh_http_route_named_rule(mesh: &TestMesh) -> Result<(), String> {
    expect_all(
        mesh,
        ECHO_V1,
        &[
            Expected {
                path: "/named",
                backend_path: Some("/named"),
                backend: "echo-v1",
                ..Default::default()
            },
            // Upstream expects the path "/named" here too, which its mesh
            // client never compares; the rule has no rewrite, so the
            // backend sees the path called.
            Expected {
                path: "/unnamed",
                backend_path: Some("/unnamed"),
                backend: "echo-v2",
                ..Default::default()
            },
        ],
    )
}

fn mesh_http_route_rewrite_path(mesh: &TestMesh) -> Result<(), String> {
    let rewrite = |path, seen| Expected {
        host: "echo",
        path,
        backend_path: Some(seen),
        backend: "echo-v1",
        ..Default::default()
    };
    let modify = |path, seen| Expected {
        headers: &[
            ("X-Header-Remove", "remove-val"),
            ("X-Header-Add-Append", "append-val-1"),
            ("X-Header-Set", "set-val"),
        ],
        backend_headers: &[
            ("X-Header-Add", "header-val-1"),
            ("X-Header-Add-Append", "append-val-1,header-val-2"),
            ("X-Header-Set", "set-overwrites-values"),
        ],
        absent_backend_headers: &["X-Header-Remove"],
        ..rewrite(path, seen)
    };
    expect_all(
        mesh,
        ECHO_V1,
        &[
            rewrite("/prefix/one/two", "/one/two"),
            rewrite("/strip-prefix/three", "/three"),
            rewrite("/strip-prefix", "/"),
            rewrite("/full/one/two", "/one"),
            modify("/full/rewrite-path-and-modify-headers/test", "/test"),
            modify("/prefix/rewrite-path-and-modify-headers/one", "/prefix/one"),
        ],
    )
}

fn mesh_http_route_redirect_path(mesh: &TestMesh) -> Result<(), String> {
    let path = |path| Redirect {
        path,
        ..Default::default()
    };
    let path_and_host = |path| Redirect {
        host: "example.org",
        path,
        ..Default::default()
    };
    expect_all(
        mesh,
        ECHO_V1,
        &[
            redirect(
                "/original-prefix/lemon",
                302,
                path("/replacement-prefix/lemon"),
            ),
            redirect("/full/path/original", 302, path("/full-path-replacement")),
            redirect("/path-and-host", 302, path_and_host("/replacement-prefix")),
            redirect("/path-and-status", 301, path("/replacement-prefix")),
            redirect(
                "/full-path-and-host",
                302,
                path_and_host("/replacement-full"),
            ),
            redirect("/full-path-and-status", 301, path("/replacement-full")),
        ],
    )
}

fn mesh_http_route_redirect_port(mesh: &TestMesh) -> Result<(), String> {
    let port = Redirect {
        port: "8083",
        ..Default::default()
    };
    let port_and_host = Redirect {
        host: "example.org",
        ..port
    };
    expect_all(
        mesh,
        ECHO_V1,
        &[
            redirect("/port", 302, port),
            redirect("/port-and-host", 302, port_and_host),
            redirect("/port-and-status", 301, port),
            redirect("/port-and-host-and-status", 302, port_and_host),
        ],
    )
}

fn mesh_http_route_scheme_redirect(mesh: &TestMesh) -> Result<(), String> {
    let https = Redirect {
        scheme: "https",
        ..Default::default()
    };
    let https_and_host = Redirect {
        host: "example.org",
        ..https
    };
    expect_all(
        mesh,
        ECHO_V1,
        &[
            redirect("/scheme", 302, https),
            redirect("/scheme-and-host", 302, https_and_host),
            redirect("/scheme-and-status", 301, https),
            redirect("/scheme-and-host-and-status", 302, https_and_host),
        ],
    )
}

/// The 303, 307 and 308 scenarios: one request to `echo` (upstream's
/// default host), answered `status` with the same path.
fn status_redirect(mesh: &TestMesh, path: &'static str, status: u16) -> Result<(), String> {
    expect_all(
        mesh,
        ECHO_V1,
        &[Expected {
            path,
            status,
            redirect: Some(Redirect {
                path,
                ..Default::default()
            }),
            ..Default::default()
        }],
    )
}

fn mesh_http_route_303_redirect(mesh: &TestMesh) -> Result<(), String> {
    status_redirect(mesh, "/redirect", 303)
}

fn mesh_http_route_307_redirect(mesh: &TestMesh) -> Result<(), String> {
    status_redirect(mesh, "/temporary", 307)
}

fn mesh_http_route_308_redirect(mesh: &TestMesh) -> Result<(), String> {
    status_redirect(mesh, "/permanent", 308)
}

/// MeshGRPCRouteWeight: gRPC calls to `echo:7070` split 70/30 (and 0 to
/// echo-v3, which does not exist).
fn mesh_grpc_route_weight(mesh: &TestMesh) -> Result<(), String> {
    let expected = ExpectedGrpc {
        host: "echo:7070",
        ..Default::default()
    };
    await_convergence(|| {
        let answers = grpc_calls(mesh, ECHO_V1, &expected, 1)?;
        answers.iter().try_for_each(|a| expected.compare(a))
    })
    .map_err(|e| format!("a gRPC call to echo:7070: {e}"))?;
    expect_weights(
        &|n| {
            Ok(grpc_calls(mesh, ECHO_V1, &expected, n)?
                .into_iter()
                .map(|a| a.map(|r| r.pod().to_string()).unwrap_or_default())
                .collect())
        },
        &[("echo-v1", 0.7), ("echo-v2", 0.3)],
    )
}

fn mesh_grpc_route_request_header_modifier(mesh: &TestMesh) -> Result<(), String> {
    let cases: [(&str, &str, ExpectedGrpc); 4] = [
        (
            "Set headers -- overwrites existing header",
            ECHO_V1,
            ExpectedGrpc {
                host: "echo:7070",
                metadata: &[
                    ("x-test-case", "set"),
                    ("some-other-header", "this-header-should-be-set"),
                    ("x-header-set", "this-value-should-be-overwritten"),
                ],
                backend: "echo-v1",
                backend_headers: &[
                    ("x-test-case", "set"),
                    ("some-other-header", "this-header-should-be-set"),
                    ("x-header-set", "set-overwrites-values"),
                ],
                absent_backend_headers: &[],
            },
        ),
        (
            "Add headers -- appends to existing header",
            ECHO_V1,
            ExpectedGrpc {
                host: "echo:7070",
                metadata: &[
                    ("x-test-case", "add"),
                    ("x-header-add", "this-value-should-be-appended"),
                ],
                backend: "echo-v1",
                backend_headers: &[
                    ("x-test-case", "add"),
                    (
                        "x-header-add",
                        "this-value-should-be-appended,add-appends-values",
                    ),
                ],
                absent_backend_headers: &[],
            },
        ),
        (
            "Remove headers -- removes headers",
            ECHO_V1,
            ExpectedGrpc {
                host: "echo:7070",
                metadata: &[
                    ("x-test-case", "remove"),
                    ("x-header-remove", "this-should-be-removed"),
                ],
                backend: "echo-v1",
                backend_headers: &[("x-test-case", "remove")],
                absent_backend_headers: &["x-header-remove"],
            },
        ),
        (
            "Multiple operations -- set, add, and remove headers",
            ECHO_V2,
            ExpectedGrpc {
                host: "echo:7070",
                metadata: &[
                    ("x-test-case", "multi"),
                    ("x-header-set-2", "set-header-2"),
                    ("x-header-add-2", "add-header-2"),
                    ("x-header-remove-2", "should-be-removed-2"),
                ],
                backend: "echo-v2",
                backend_headers: &[
                    ("x-test-case", "multi"),
                    ("x-header-set-1", "header-set-1"),
                    ("x-header-set-2", "header-set-2"),
                    ("x-header-add-1", "header-add-1"),
                    ("x-header-add-2", "add-header-2,header-add-2"),
                ],
                absent_backend_headers: &["x-header-remove-1", "x-header-remove-2"],
            },
        ),
    ];
    let failures: Vec<String> = cases
        .iter()
        .filter_map(|(name, client, exp)| {
            await_convergence(|| {
                let answers = grpc_calls(mesh, client, exp, 1)?;
                answers.iter().try_for_each(|a| exp.compare(a))
            })
            .err()
            .map(|e| format!("{name} (from {client}): {e}"))
        })
        .collect();
    if failures.is_empty() {
        Ok(())
    } else {
        Err(failures.join("\n"))
    }
}

/// The route objects (`Kind namespace/name`) of a scenario's manifests.
fn route_keys(manifests: &str) -> Vec<String> {
    serde_yaml::Deserializer::from_str(manifests)
        .filter_map(|doc| serde::Deserialize::deserialize(doc).ok())
        .filter_map(|doc: serde_yaml::Value| {
            let kind = doc["kind"].as_str()?;
            kind.ends_with("Route").then(|| {
                format!(
                    "{kind} {}/{}",
                    doc["metadata"]["namespace"].as_str().unwrap_or_default(),
                    doc["metadata"]["name"].as_str().unwrap_or_default()
                )
            })
        })
        .collect()
}

/// The clients' proxies' route configurations, the parts the routes
/// showed up in.
fn client_routes(mesh: &TestMesh) -> String {
    [ECHO_V1, ECHO_V2, CONSUMER_ECHO_V1]
        .iter()
        .map(|pod| mesh.admin(pod, "/config_dump?resource=dynamic_route_configs"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Writes the base manifests alone and waits until no client's proxy has
/// a route of a route object left (their Envoy routes are named after
/// them), so nothing of the previous scenario answers for the next.
fn clear_routes(mesh: &TestMesh) -> Result<(), String> {
    mesh.write_registry(&base_manifests());
    wait_for("the previous scenario's routes to be gone", WAIT, || {
        let routes = client_routes(mesh);
        let left: Vec<&str> = routes
            .lines()
            .filter(|l| l.contains("\"HTTPRoute ") || l.contains("\"GRPCRoute "))
            .collect();
        if left.is_empty() {
            Ok(Some(()))
        } else {
            Err(left.join("\n"))
        }
    })
    .map(|_| ())
    .map_err(|e| format!("{e:#}"))
}

/// Writes the base and `manifests`, then waits (a bounded while, without
/// failing) until some client's proxy has a route of each route object:
/// the scenario's expectations then meet its routes, not the empty base
/// (upstream waits for its routes' status likewise). The expectations
/// decide; this only keeps them from passing early.
fn apply(mesh: &TestMesh, manifests: &str) {
    mesh.write_registry(&format!("{}---\n{manifests}", base_manifests()));
    let keys = route_keys(manifests);
    let applied = wait_for("the scenario's routes", MAX_TIME_TO_CONSISTENCY, || {
        let routes = client_routes(mesh);
        let missing: Vec<&String> = keys
            .iter()
            .filter(|k| !routes.contains(&format!("\"{k} ")))
            .collect();
        if missing.is_empty() {
            Ok(Some(()))
        } else {
            Err(format!("no Envoy route of {missing:?}"))
        }
    });
    if let Err(e) = applied {
        println!("  (going on) {e:#}");
    }
}

/// The mesh with upstream's base manifests: every pod's sidecar, the echo
/// apps (HTTP from the harness, gRPC here), and a call between them
/// through the mesh.
fn start() -> Option<TestMesh> {
    let mut mesh = TestMesh::start_with(
        MESH_NS,
        &PODS,
        &base_manifests(),
        IdentityConfig::default(),
        Extras {
            namespaces: &[(CONSUMER_ECHO_V1, CONSUMER_NS)],
            ..Extras::default()
        },
    )?;
    for pod in [ECHO_V1, ECHO_V2] {
        let listener = mesh
            .pod(pod)
            .run(|| std::net::TcpListener::bind(("0.0.0.0", GRPC_PORT)))
            .unwrap()
            .unwrap();
        GrpcEcho::serve(pod, MESH_NS, listener).unwrap();
    }
    // From the consumer namespace, `echo` alone names nothing (its DNS
    // search path is its own namespace).
    for (client, host) in [
        (ECHO_V1, "echo"),
        (CONSUMER_ECHO_V1, "echo.gateway-conformance-mesh"),
    ] {
        let ready = wait_for(&format!("{client} to reach {host}"), WAIT, || {
            let exp = Expected {
                host,
                ..Expected::default()
            };
            match request(&mesh, client, &exp) {
                Ok(got) if got.status == 200 && !got.pod.is_empty() => Ok(Some(())),
                Ok(got) => Err(format!("{got:?}")),
                Err(e) => Err(e),
            }
        });
        if let Err(e) = ready {
            panic!("{e:#}\n{}", mesh.logs());
        }
    }
    Some(mesh)
}

/// The scenarios `GATEWAY_MESH_SCENARIOS` names (comma-separated upstream
/// names), or all of them.
fn selected() -> Vec<(&'static str, &'static str, Scenario)> {
    let only = std::env::var("GATEWAY_MESH_SCENARIOS").unwrap_or_default();
    let only: Vec<&str> = only
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    for name in &only {
        assert!(
            SCENARIOS.iter().any(|(n, _, _)| n == name),
            "GATEWAY_MESH_SCENARIOS: no scenario {name}; accepted: {:?}",
            SCENARIOS.map(|(n, _, _)| n)
        );
    }
    SCENARIOS
        .into_iter()
        .filter(|(name, _, _)| only.is_empty() || only.contains(name))
        .collect()
}

/// Every Mesh-profile scenario against one mesh, one after another; fails
/// naming each scenario that failed, with its cases' last answers and
/// where the clients' proxy configuration was saved.
#[test]
fn gateway_api_mesh_conformance() {
    let scenarios = selected();
    let Some(mesh) = start() else {
        return;
    };
    let dumps = tempfile::Builder::new()
        .prefix("gateway-mesh-")
        .tempdir()
        .unwrap()
        .keep();
    let mut failed = Vec::new();
    for (name, manifests, scenario) in &scenarios {
        let started = Instant::now();
        let outcome = clear_routes(&mesh).and_then(|()| {
            apply(&mesh, manifests);
            catch_unwind(AssertUnwindSafe(|| scenario(&mesh)))
                .unwrap_or_else(|panic| Err(format!("panicked: {panic:?}")))
        });
        match outcome {
            Ok(()) => println!("PASS {name} ({:.1?})", started.elapsed()),
            Err(e) => {
                let dump = dumps.join(format!("{name}.json"));
                let config = [ECHO_V1, ECHO_V2, CONSUMER_ECHO_V1]
                    .map(|pod| format!("// {pod}\n{}", mesh.admin(pod, "/config_dump")))
                    .join("\n");
                std::fs::write(&dump, config).unwrap();
                println!(
                    "FAIL {name} ({:.1?}): {e}\n  the clients' /config_dump: {}",
                    started.elapsed(),
                    dump.display()
                );
                failed.push(format!("{name}:\n{e}"));
            }
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {} Mesh conformance scenarios failed: {}\n\n{}",
        failed.len(),
        scenarios.len(),
        failed
            .iter()
            .map(|f| f.lines().next().unwrap_or_default().trim_end_matches(':'))
            .collect::<Vec<_>>()
            .join(", "),
        failed.join("\n\n")
    );
    let _ = std::fs::remove_dir_all(dumps);
}

/// `conformance/tests/mesh/mesh-split.yaml`.
const MESH_SPLIT: &str = r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: mesh-split
  namespace: gateway-conformance-mesh
spec:
  parentRefs:
  - group: ""
    kind: Service
    name: echo
  rules:
  - matches:
    - path:
        type: Exact
        value: /v1
    backendRefs:
    - name: echo-v1
      port: 80
  - matches:
    - path:
        type: Exact
        value: /v2
    backendRefs:
    - name: echo-v2
      port: 80
"#;

/// `conformance/tests/mesh/mesh-ports.yaml`.
const MESH_PORTS: &str = r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: mesh-split-v1
  namespace: gateway-conformance-mesh
spec:
  parentRefs:
  - group: ""
    kind: Service
    name: echo-v1
    port: 80
  rules:
  - filters:
    - type: ResponseHeaderModifier
      responseHeaderModifier:
        set:
        - name: X-Header-Set
          value: v1
    backendRefs:
    - name: echo-v1
      port: 80
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: mesh-split-v2
  namespace: gateway-conformance-mesh
spec:
  parentRefs:
  - group: ""
    kind: Service
    name: echo-v2
  rules:
  - filters:
    - type: ResponseHeaderModifier
      responseHeaderModifier:
        set:
        - name: X-Header-Set
          value: v2
    backendRefs:
    - name: echo-v2
      port: 80
"#;

/// `conformance/tests/mesh/mesh-frontend.yaml`.
const MESH_FRONTEND: &str = r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: mesh-split-v1
  namespace: gateway-conformance-mesh
spec:
  parentRefs:
  - group: ""
    kind: Service
    name: echo-v2
  rules:
  - filters:
    - type: ResponseHeaderModifier
      responseHeaderModifier:
        set:
        - name: X-Header-Set
          value: set
    backendRefs:
    - name: echo-v2
      port: 80
"#;

/// `conformance/tests/mesh/mesh-consumer-route.yaml`.
const MESH_CONSUMER_ROUTE: &str = r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: mesh-echo-add-header
  namespace: gateway-conformance-mesh-consumer
spec:
  parentRefs:
  - group: ""
    kind: Service
    name: echo-v1
    namespace: gateway-conformance-mesh
  rules:
  - filters:
    - type: ResponseHeaderModifier
      responseHeaderModifier:
        set:
        - name: X-Header-Set
          value: set
    backendRefs:
    - name: echo-v1
      namespace: gateway-conformance-mesh
      port: 80
"#;

/// `conformance/tests/mesh/httproute-simple-same-namespace.yaml`.
const HTTPROUTE_SIMPLE_SAME_NAMESPACE: &str = r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: gateway-conformance-mesh-test
  namespace: gateway-conformance-mesh
spec:
  parentRefs:
  - group: ""
    kind: Service
    name: echo
    port: 80
  rules:
  - backendRefs:
    - name: echo-v1
      port: 8080
"#;

/// `conformance/tests/mesh/httproute-matching.yaml`.
const HTTPROUTE_MATCHING: &str = r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: mesh-matching
  namespace: gateway-conformance-mesh
spec:
  parentRefs:
  - group: ""
    kind: Service
    name: echo
    port: 80
  rules:
  - matches:
    - path:
        type: PathPrefix
        value: /
    - headers:
      - name: version
        value: one
    backendRefs:
    - name: echo-v1
      port: 8080
  - matches:
    - path:
        type: PathPrefix
        value: /v2
    - headers:
      - name: version
        value: two
    backendRefs:
    - name: echo-v2
      port: 8080
"#;

/// `conformance/tests/mesh/httproute-weight.yaml`.
const HTTPROUTE_WEIGHT: &str = r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: mesh-weighted-backends
  namespace: gateway-conformance-mesh
spec:
  parentRefs:
  - group: ""
    kind: Service
    name: echo
    port: 80
  rules:
  - backendRefs:
    - name: echo-v1
      port: 8080
      weight: 70
    - name: echo-v2
      port: 8080
      weight: 30
"#;

/// `conformance/tests/mesh/httproute-request-header-modifier.yaml`.
const HTTPROUTE_REQUEST_HEADER_MODIFIER: &str = r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: mesh-request-header-modifier
  namespace: gateway-conformance-mesh
spec:
  parentRefs:
  - group: ""
    kind: Service
    name: echo
    port: 80
  rules:
  - matches:
    - path:
        type: PathPrefix
        value: /set
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier:
        set:
        - name: X-Header-Set
          value: set-overwrites-values
    backendRefs:
    - name: echo-v1
      port: 8080
  - matches:
    - path:
        type: PathPrefix
        value: /add
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier:
        add:
        - name: X-Header-Add
          value: add-appends-values
    backendRefs:
    - name: echo-v1
      port: 8080
  - matches:
    - path:
        type: PathPrefix
        value: /remove
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier:
        remove:
        - X-Header-Remove
    backendRefs:
    - name: echo-v1
      port: 8080
  - matches:
    - path:
        type: PathPrefix
        value: /multiple
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier:
        set:
        - name: X-Header-Set-1
          value: header-set-1
        - name: X-Header-Set-2
          value: header-set-2
        add:
        - name: X-Header-Add-1
          value: header-add-1
        - name: X-Header-Add-2
          value: header-add-2
        - name: X-Header-Add-3
          value: header-add-3
        remove:
        - X-Header-Remove-1
        - X-Header-Remove-2
    backendRefs:
    - name: echo-v1
      port: 8080
  - matches:
    - path:
        type: PathPrefix
        value: /case-insensitivity
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier:
        set:
        - name: X-Header-Set
          value: header-set
        add:
        - name: X-Header-Add
          value: header-add
        remove:
        - X-Header-Remove
    backendRefs:
    - name: echo-v1
      port: 8080
"#;

/// `conformance/tests/mesh/httproute-request-header-modifier-backend.yaml`.
const HTTPROUTE_REQUEST_HEADER_MODIFIER_BACKEND: &str = r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: mesh-request-header-modifier
  namespace: gateway-conformance-mesh
spec:
  parentRefs:
  - group: ""
    kind: Service
    name: echo
    port: 80
  rules:
  - matches:
    - path:
        type: PathPrefix
        value: /set
    backendRefs:
    - name: echo-v1
      port: 8080
      filters:
      - type: RequestHeaderModifier
        requestHeaderModifier:
          set:
          - name: X-Header-Set
            value: set-overwrites-values
  - matches:
    - path:
        type: PathPrefix
        value: /add
    backendRefs:
    - name: echo-v1
      port: 8080
      filters:
      - type: RequestHeaderModifier
        requestHeaderModifier:
          add:
          - name: X-Header-Add
            value: add-appends-values
  - matches:
    - path:
        type: PathPrefix
        value: /remove
    backendRefs:
    - name: echo-v1
      port: 8080
      filters:
      - type: RequestHeaderModifier
        requestHeaderModifier:
          remove:
          - X-Header-Remove
  - matches:
    - path:
        type: PathPrefix
        value: /multiple
    backendRefs:
    - name: echo-v1
      port: 8080
      filters:
      - type: RequestHeaderModifier
        requestHeaderModifier:
          set:
          - name: X-Header-Set-1
            value: header-set-1
          - name: X-Header-Set-2
            value: header-set-2
          add:
          - name: X-Header-Add-1
            value: header-add-1
          - name: X-Header-Add-2
            value: header-add-2
          - name: X-Header-Add-3
            value: header-add-3
          remove:
          - X-Header-Remove-1
          - X-Header-Remove-2
  - matches:
    - path:
        type: PathPrefix
        value: /case-insensitivity
    backendRefs:
    - name: echo-v1
      port: 8080
      filters:
      - type: RequestHeaderModifier
        requestHeaderModifier:
          set:
          - name: X-Header-Set
            value: header-set
          add:
          - name: X-Header-Add
            value: header-add
          remove:
          - X-Header-Remove
"#;

/// `conformance/tests/mesh/httproute-redirect-host-and-status.yaml`.
const HTTPROUTE_REDIRECT_HOST_AND_STATUS: &str = r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: mesh-redirect-host-and-status
  namespace: gateway-conformance-mesh
spec:
  parentRefs:
  - group: ""
    kind: Service
    name: echo
    port: 80
  rules:
  - matches:
    - path:
        type: PathPrefix
        value: /hostname-redirect
    filters:
    - type: RequestRedirect
      requestRedirect:
        hostname: example.org
  - matches:
    - path:
        type: PathPrefix
        value: /host-and-status
    filters:
    - type: RequestRedirect
      requestRedirect:
        statusCode: 301
        hostname: example.org

"#;

/// `conformance/tests/mesh/httproute-query-param-matching.yaml`.
const HTTPROUTE_QUERY_PARAM_MATCHING: &str = r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: mesh-query-param-matching
  namespace: gateway-conformance-mesh
spec:
  parentRefs:
  - group: ""
    kind: Service
    name: echo
    port: 80
  rules:
  - matches:
    - queryParams:
      - name: animal
        value: whale
    backendRefs:
    - name: echo-v1
      port: 8080
  - matches:
    - queryParams:
      - name: animal
        value: dolphin
    backendRefs:
    - name: echo-v2
      port: 8080

  # Combinations with core match types.
  - matches:
    - path:
        type: PathPrefix
        value: /path1
      queryParams:
      - name: animal
        value: whale
    backendRefs:
    - name: echo-v1
      port: 8080
  - matches:
    - headers:
      - name: version
        value: one
      queryParams:
      - name: animal
        value: whale
    backendRefs:
    - name: echo-v2
      port: 8080

  # Match of the form (cond1 AND cond2) OR (cond3 AND cond4 AND cond5)
  - matches:
    - path:
        type: PathPrefix
        value: /path3
      queryParams:
      - name: animal
        value: shark
    - path:
        type: PathPrefix
        value: /path4
      headers:
      - name: version
        value: three
      queryParams:
      - name: animal
        value: kraken
    backendRefs:
    - name: echo-v1
      port: 8080

  # Matches for checking precedence.
  - matches:
    - path:
        type: PathPrefix
        value: /path5
    backendRefs:
    - name: echo-v1
      port: 8080
  - matches:
    - queryParams:
      - name: animal
        value: hydra
    backendRefs:
    - name: echo-v2
      port: 8080
"#;

/// `conformance/tests/mesh/httproute-named-rule.yaml`.
const HTTPROUTE_NAMED_RULE: &str = r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: mesh-http-named-rules
  namespace: gateway-conformance-mesh
spec:
  parentRefs:
  - group: ""
    kind: Service
    name: echo
    port: 80
  rules:
  - name: named-rule
    matches:
    - path:
        type: PathPrefix
        value: /named
    backendRefs:
    - name: echo-v1
      port: 8080
  - matches:
    - path:
        type: PathPrefix
        value: /unnamed
    backendRefs:
    - name: echo-v2
      port: 8080
"#;

/// `conformance/tests/mesh/httproute-rewrite-path.yaml`.
const HTTPROUTE_REWRITE_PATH: &str = r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: mesh-rewrite-path
  namespace: gateway-conformance-mesh
spec:
  parentRefs:
  - group: ""
    kind: Service
    name: echo
    port: 80
  rules:
  - matches:
    - path:
        type: PathPrefix
        value: /prefix/one
    filters:
    - type: URLRewrite
      urlRewrite:
        path:
          type: ReplacePrefixMatch
          replacePrefixMatch: /one
    backendRefs:
    - name: echo-v1
      port: 80
  - matches:
    - path:
        type: PathPrefix
        value: /strip-prefix
    filters:
    - type: URLRewrite
      urlRewrite:
        path:
          type: ReplacePrefixMatch
          replacePrefixMatch: /
    backendRefs:
    - name: echo-v1
      port: 80
  - matches:
    - path:
        type: PathPrefix
        value: /full/one
    filters:
    - type: URLRewrite
      urlRewrite:
        path:
          type: ReplaceFullPath
          replaceFullPath: /one
    backendRefs:
    - name: echo-v1
      port: 80
  - matches:
    - path:
        type: PathPrefix
        value: /full/rewrite-path-and-modify-headers
    filters:
    - type: URLRewrite
      urlRewrite:
        path:
          type: ReplaceFullPath
          replaceFullPath: /test
    - type: RequestHeaderModifier
      requestHeaderModifier:
        set:
        - name: X-Header-Set
          value: set-overwrites-values
        add:
        - name: X-Header-Add
          value: header-val-1
        - name: X-Header-Add-Append
          value: header-val-2
        remove:
        - X-Header-Remove
    backendRefs:
    - name: echo-v1
      port: 80
  - matches:
    - path:
        type: PathPrefix
        value: /prefix/rewrite-path-and-modify-headers
    filters:
    - type: URLRewrite
      urlRewrite:
        path:
          type: ReplacePrefixMatch
          replacePrefixMatch: /prefix
    - type: RequestHeaderModifier
      requestHeaderModifier:
        set:
        - name: X-Header-Set
          value: set-overwrites-values
        add:
        - name: X-Header-Add
          value: header-val-1
        - name: X-Header-Add-Append
          value: header-val-2
        remove:
        - X-Header-Remove
    backendRefs:
    - name: echo-v1
      port: 80
"#;

/// `conformance/tests/mesh/httproute-redirect-path.yaml`.
const HTTPROUTE_REDIRECT_PATH: &str = r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: mesh-redirect-path
  namespace: gateway-conformance-mesh
spec:
  parentRefs:
  - group: ""
    kind: Service
    name: echo
    port: 80
  rules:
  - matches:
    - path:
        type: PathPrefix
        value: /original-prefix
    filters:
    - type: RequestRedirect
      requestRedirect:
        path:
          type: ReplacePrefixMatch
          replacePrefixMatch: /replacement-prefix
  - matches:
    - path:
        type: PathPrefix
        value: /full
    filters:
    - type: RequestRedirect
      requestRedirect:
        path:
          type: ReplaceFullPath
          replaceFullPath: /full-path-replacement
  - matches:
    - path:
        type: PathPrefix
        value: /path-and-host
    filters:
    - type: RequestRedirect
      requestRedirect:
        hostname: example.org
        path:
          type: ReplacePrefixMatch
          replacePrefixMatch: /replacement-prefix
  - matches:
    - path:
        type: PathPrefix
        value: /path-and-status
    filters:
    - type: RequestRedirect
      requestRedirect:
        path:
          type: ReplacePrefixMatch
          replacePrefixMatch: /replacement-prefix
        statusCode: 301
  - matches:
    - path:
        type: PathPrefix
        value: /full-path-and-host
    filters:
    - type: RequestRedirect
      requestRedirect:
        hostname: example.org
        path:
          type: ReplaceFullPath
          replaceFullPath: /replacement-full
  - matches:
    - path:
        type: PathPrefix
        value: /full-path-and-status
    filters:
    - type: RequestRedirect
      requestRedirect:
        path:
          type: ReplaceFullPath
          replaceFullPath: /replacement-full
        statusCode: 301
"#;

/// `conformance/tests/mesh/httproute-redirect-port.yaml`.
const HTTPROUTE_REDIRECT_PORT: &str = r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: mesh-redirect-port
  namespace: gateway-conformance-mesh
spec:
  parentRefs:
  - group: ""
    kind: Service
    name: echo
    port: 80
  rules:
  - matches:
    - path:
        type: PathPrefix
        value: /port
    filters:
    - type: RequestRedirect
      requestRedirect:
        port: 8083
  - matches:
    - path:
        type: PathPrefix
        value: /port-and-host
    filters:
    - type: RequestRedirect
      requestRedirect:
        hostname: example.org
        port: 8083
  - matches:
    - path:
        type: PathPrefix
        value: /port-and-status
    filters:
    - type: RequestRedirect
      requestRedirect:
        port: 8083
        statusCode: 301
  - matches:
    - path:
        type: PathPrefix
        value: /port-and-host-and-status
    filters:
    - type: RequestRedirect
      requestRedirect:
        port: 8083
        hostname: example.org
        statusCode: 302
"#;

/// `conformance/tests/mesh/httproute-redirect-scheme.yaml`.
const HTTPROUTE_REDIRECT_SCHEME: &str = r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: mesh-redirect-scheme
  namespace: gateway-conformance-mesh
spec:
  parentRefs:
  - group: ""
    kind: Service
    name: echo
    port: 80
  rules:
  - matches:
    - path:
        type: PathPrefix
        value: /scheme
    filters:
    - type: RequestRedirect
      requestRedirect:
        scheme: "https"
  - matches:
    - path:
        type: PathPrefix
        value: /scheme-and-host
    filters:
    - type: RequestRedirect
      requestRedirect:
        hostname: example.org
        scheme: "https"
  - matches:
    - path:
        type: PathPrefix
        value: /scheme-and-status
    filters:
    - type: RequestRedirect
      requestRedirect:
        scheme: "https"
        statusCode: 301
  - matches:
    - path:
        type: PathPrefix
        value: /scheme-and-host-and-status
    filters:
    - type: RequestRedirect
      requestRedirect:
        scheme: "https"
        statusCode: 302
        hostname: example.org

"#;

/// `conformance/tests/mesh/httproute-303-redirect.yaml`.
const HTTPROUTE_303_REDIRECT: &str = r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: mesh-303-redirect
  namespace: gateway-conformance-mesh
spec:
  parentRefs:
  - group: ""
    kind: Service
    name: echo
    port: 80
  rules:
  - matches:
    - path:
        type: PathPrefix
        value: /redirect
    filters:
    - type: RequestRedirect
      requestRedirect:
        statusCode: 303

"#;

/// `conformance/tests/mesh/httproute-307-redirect.yaml`.
const HTTPROUTE_307_REDIRECT: &str = r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: mesh-307-redirect
  namespace: gateway-conformance-mesh
spec:
  parentRefs:
  - group: ""
    kind: Service
    name: echo
    port: 80
  rules:
  - matches:
    - path:
        type: PathPrefix
        value: /temporary
    filters:
    - type: RequestRedirect
      requestRedirect:
        statusCode: 307
"#;

/// `conformance/tests/mesh/httproute-308-redirect.yaml`.
const HTTPROUTE_308_REDIRECT: &str = r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: mesh-308-redirect
  namespace: gateway-conformance-mesh
spec:
  parentRefs:
  - group: ""
    kind: Service
    name: echo
    port: 80
  rules:
  - matches:
    - path:
        type: PathPrefix
        value: /permanent
    filters:
    - type: RequestRedirect
      requestRedirect:
        statusCode: 308

"#;

/// `conformance/tests/mesh/grpcroute-weight.yaml`.
const GRPCROUTE_WEIGHT: &str = r#"apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata:
  name: mesh-grpc-weighted-backends
  namespace: gateway-conformance-mesh
spec:
  parentRefs:
  - group: ""
    kind: Service
    name: echo
    port: 7070
  rules:
  - backendRefs:
    - name: echo-v1
      port: 7070
      weight: 70
    - name: echo-v2
      port: 7070
      weight: 30
    - name: echo-v3
      port: 7070
      weight: 0
"#;

/// `conformance/tests/mesh/grpcroute-request-header-modifier.yaml`.
const GRPCROUTE_REQUEST_HEADER_MODIFIER: &str = r#"apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata:
  name: grpc-request-header-modifier
  namespace: gateway-conformance-mesh
spec:
  parentRefs:
  - group: ""
    kind: Service
    name: echo
    port: 7070
  rules:
  - matches:
    - headers:
      - name: x-test-case
        value: set
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier:
        set:
        - name: x-header-set
          value: set-overwrites-values
    backendRefs:
    - name: echo-v1
      port: 7070
  - matches:
    - headers:
      - name: x-test-case
        value: add
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier:
        add:
        - name: x-header-add
          value: add-appends-values
    backendRefs:
    - name: echo-v1
      port: 7070
  - matches:
    - headers:
      - name: x-test-case
        value: remove
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier:
        remove:
        - x-header-remove
    backendRefs:
    - name: echo-v1
      port: 7070
  - matches:
    - headers:
      - name: x-test-case
        value: multi
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier:
        set:
        - name: x-header-set-1
          value: header-set-1
        - name: x-header-set-2
          value: header-set-2
        add:
        - name: x-header-add-1
          value: header-add-1
        - name: x-header-add-2
          value: header-add-2
        remove:
        - x-header-remove-1
        - x-header-remove-2
    backendRefs:
    - name: echo-v2
      port: 7070
"#;
