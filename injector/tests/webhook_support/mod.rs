//! Shared by the webhook tests and the webhook benchmark: a webhook
//! server on 127.0.0.1:0 with a CA in a temporary directory, an HTTPS
//! client that verifies it the way the API server does (the CA bundle as
//! the only root, the Service's DNS name as SNI), realistic Pod reviews and
//! a provisioner fake that counts its calls.

#![allow(dead_code)] // each user takes what it needs

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use meshd_ca::{Authority, DirStore, SpiffeId};
use meshd_injector::config::InjectorConfig;
use meshd_injector::identity::IdentityProvisioner;
use meshd_injector::webhook::{self, WebhookState};
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::client::TlsStream;

pub const TRUST_DOMAIN: &str = "cluster.local";
/// What the API server dials: `<service>.<namespace>.svc`.
pub const SERVICE_DNS: &str = "meshd.meshd-system.svc";

pub fn authority(dir: &std::path::Path) -> Arc<Authority> {
    Arc::new(
        Authority::load_or_generate(TRUST_DOMAIN, Arc::new(DirStore::new(dir)))
            .expect("a generated root"),
    )
}

/// Records every `ensure` and answers with `fail` when set.
#[derive(Default)]
pub struct FakeProvisioner {
    pub calls: Mutex<Vec<(String, String)>>,
    pub fail: Option<String>,
}

impl FakeProvisioner {
    pub fn failing(message: &str) -> Self {
        FakeProvisioner {
            calls: Mutex::default(),
            fail: Some(message.into()),
        }
    }

    pub fn calls(&self) -> Vec<(String, String)> {
        self.calls.lock().expect("calls").clone()
    }
}

impl IdentityProvisioner for FakeProvisioner {
    fn ensure<'a>(
        &'a self,
        namespace: &'a str,
        service_account: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>> {
        Box::pin(async move {
            self.calls
                .lock()
                .expect("calls")
                .push((namespace.into(), service_account.into()));
            match &self.fail {
                Some(message) => Err(message.clone()),
                None => Ok(()),
            }
        })
    }
}

/// A webhook serving on 127.0.0.1 until dropped.
pub struct Server {
    pub addr: SocketAddr,
    pub ca: Arc<Authority>,
    /// Bump it to make the serving certificate re-issue (a CA change).
    pub generation: Arc<AtomicU64>,
    _dir: tempfile::TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Server {
    pub async fn start(provisioner: Option<Arc<dyn IdentityProvisioner>>) -> Server {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let ca = authority(dir.path());
        let generation = Arc::new(AtomicU64::new(0));
        let reported = generation.clone();
        let cert = Arc::new(
            webhook::serving_cert(
                ca.clone(),
                SpiffeId::new(TRUST_DOMAIN, "meshd-system", "meshd"),
                vec![SERVICE_DNS.into()],
                vec![],
            )
            .with_generation(Arc::new(move || reported.load(Ordering::SeqCst))),
        );
        let mut state = WebhookState::new(InjectorConfig::default(), ca.clone(), cert.clone());
        if let Some(provisioner) = provisioner {
            state = state.with_provisioner(provisioner);
        }
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a loopback port");
        let addr = listener.local_addr().expect("its address");
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(webhook::serve(
            listener,
            webhook::tls_config(cert),
            state,
            async move {
                let _ = stopped.await;
            },
        ));
        Server {
            addr,
            ca,
            generation,
            _dir: dir,
            stop: Some(stop),
            task,
        }
    }

    /// A client that trusts this server's CA, dialling it by its Service name.
    pub async fn client(&self) -> Client {
        Client::connect(self.addr, &self.ca.trust_anchors(), SERVICE_DNS)
            .await
            .expect("a TLS connection to the webhook")
    }

    /// A [`RawClient`] (the benchmark's) that trusts this server's CA.
    pub async fn raw_client(&self) -> RawClient {
        RawClient::connect(self.addr, &self.ca.trust_anchors(), SERVICE_DNS)
            .await
            .expect("a TLS connection to the webhook")
    }

    /// Stops the server and waits until it has.
    pub async fn stop(mut self) -> std::io::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.task).await.expect("the server task")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One keep-alive HTTPS connection.
pub struct Client {
    send: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    /// The certificate the server presented.
    pub server_cert: CertificateDer<'static>,
}

impl Client {
    pub async fn connect(
        addr: SocketAddr,
        roots: &[CertificateDer<'static>],
        server_name: &str,
    ) -> Result<Client, String> {
        let mut store = rustls::RootCertStore::empty();
        for root in roots {
            store.add(root.clone()).map_err(|e| e.to_string())?;
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(store)
        .with_no_client_auth();
        let name = ServerName::try_from(server_name.to_string()).map_err(|e| e.to_string())?;
        let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        tcp.set_nodelay(true).map_err(|e| e.to_string())?;
        let tls: TlsStream<TcpStream> = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS handshake: {e}"))?;
        let server_cert = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|certs| certs.first())
            .cloned()
            .ok_or("the server presented no certificate")?;
        let (send, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(connection);
        Ok(Client { send, server_cert })
    }

    /// Sends one request; the status and the body.
    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        body: Vec<u8>,
    ) -> Result<(u16, Bytes), String> {
        let request = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", SERVICE_DNS)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| e.to_string())?;
        self.send.ready().await.map_err(|e| e.to_string())?;
        let response = self
            .send
            .send_request(request)
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok((status, body))
    }

    pub async fn post_review(&mut self, review: &Value) -> Result<(u16, Bytes), String> {
        self.request("POST", "/inject", review.to_string().into_bytes())
            .await
    }
}

/// A Pod as the API server hands it to a mutating webhook on CREATE: made
/// by a ReplicaSet (generateName, owner reference), defaulted, with the
/// service-account token volume and managed fields.
pub fn pod(name_prefix: &str, service_account: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": format!("{name_prefix}-7d4b9c8f6-"),
            "namespace": "shop",
            "labels": {"app": name_prefix, "pod-template-hash": "7d4b9c8f6", "version": "v1"},
            "annotations": {"kubectl.kubernetes.io/restartedAt": "2025-05-01T10:00:00Z"},
            "ownerReferences": [{
                "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": format!("{name_prefix}-7d4b9c8f6"),
                "uid": "5b7e1f0a-3a4c-4f5e-9a1b-0c2d3e4f5a6b", "controller": true, "blockOwnerDeletion": true
            }],
            "managedFields": [{
                "manager": "kube-controller-manager", "operation": "Update", "apiVersion": "v1",
                "time": "2025-05-01T10:00:01Z", "fieldsType": "FieldsV1",
                "fieldsV1": {"f:metadata": {"f:generateName": {}, "f:labels": {".": {}, "f:app": {}, "f:pod-template-hash": {}, "f:version": {}},
                             "f:ownerReferences": {".": {}, "k:{\"uid\":\"5b7e1f0a-3a4c-4f5e-9a1b-0c2d3e4f5a6b\"}": {}}},
                             "f:spec": {"f:containers": {"k:{\"name\":\"app\"}": {".": {}, "f:image": {}, "f:name": {}, "f:ports": {}}}}}
            }]
        },
        "spec": {
            "serviceAccountName": service_account,
            "serviceAccount": service_account,
            "containers": [{
                "name": "app",
                "image": format!("registry.example.com/shop/{name_prefix}:1.4.2"),
                "imagePullPolicy": "IfNotPresent",
                "args": ["--port=8080", "--log-format=json"],
                "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"},
                          {"name": "metrics", "containerPort": 9090, "protocol": "TCP"}],
                "env": [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}}},
                        {"name": "LOG_LEVEL", "value": "info"}],
                "resources": {"requests": {"cpu": "250m", "memory": "256Mi"}, "limits": {"memory": "512Mi"}},
                "readinessProbe": {"httpGet": {"path": "/ready", "port": 8080, "scheme": "HTTP"},
                                   "periodSeconds": 5, "timeoutSeconds": 1, "successThreshold": 1, "failureThreshold": 3},
                "livenessProbe": {"httpGet": {"path": "/healthz", "port": 8080, "scheme": "HTTP"},
                                  "periodSeconds": 10, "timeoutSeconds": 1, "successThreshold": 1, "failureThreshold": 3},
                "volumeMounts": [{"name": "kube-api-access-x7k2p", "readOnly": true,
                                  "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}],
                "terminationMessagePath": "/dev/termination-log",
                "terminationMessagePolicy": "File"
            }],
            "volumes": [{
                "name": "kube-api-access-x7k2p",
                "projected": {"defaultMode": 420, "sources": [
                    {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                    {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                    {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}}
                ]}
            }],
            "restartPolicy": "Always",
            "terminationGracePeriodSeconds": 30,
            "dnsPolicy": "ClusterFirst",
            "securityContext": {},
            "schedulerName": "default-scheduler",
            "enableServiceLinks": true,
            "preemptionPolicy": "PreemptLowerPriority",
            "priority": 0,
            "tolerations": [
                {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
                {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}
            ]
        },
        "status": {"phase": "Pending", "qosClass": "Burstable"}
    })
}

/// An `admission.k8s.io/v1` review of creating `object` (a Pod unless
/// `kind` says otherwise) in namespace `shop`.
pub fn review_of(uid: &str, kind: (&str, &str, &str), object: Value, dry_run: bool) -> Value {
    let (group, version, kind) = kind;
    let resource = format!("{}s", kind.to_lowercase());
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": group, "version": version, "kind": kind},
            "resource": {"group": group, "version": version, "resource": resource},
            "requestKind": {"group": group, "version": version, "kind": kind},
            "requestResource": {"group": group, "version": version, "resource": resource},
            "name": "",
            "namespace": "shop",
            "operation": "CREATE",
            "userInfo": {
                "username": "system:serviceaccount:kube-system:replicaset-controller",
                "uid": "8a4f7f3e-2b1c-4d5e-8f9a-0b1c2d3e4f5a",
                "groups": ["system:serviceaccounts", "system:serviceaccounts:kube-system", "system:authenticated"]
            },
            "object": object,
            "oldObject": null,
            "dryRun": dry_run,
            "options": {"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1"}
        }
    })
}

/// A review of creating [`pod`] `web` with service account `web`.
pub fn pod_review(uid: &str, dry_run: bool) -> Value {
    review_of(uid, ("", "v1", "Pod"), pod("web", "web"), dry_run)
}

/// One keep-alive HTTPS connection for the benchmark's load: requests are
/// encoded once ([`RawClient::encode`]) and written whole, and answers are
/// read into one reused buffer by their `content-length`. It does only
/// what the webhook's answers need (no chunked bodies, no 1xx), so the
/// clients cost the shared cores as little as possible; the tests use
/// hyper's client ([`Client`]).
pub struct RawClient {
    tls: TlsStream<TcpStream>,
    buffer: Vec<u8>,
}

/// An answer read by [`RawClient::round_trip`]: the status and the body,
/// borrowed from the client's buffer.
pub struct RawAnswer<'a> {
    pub status: u16,
    pub body: &'a [u8],
}

impl RawClient {
    pub async fn connect(
        addr: SocketAddr,
        roots: &[CertificateDer<'static>],
        server_name: &str,
    ) -> Result<RawClient, String> {
        let mut store = rustls::RootCertStore::empty();
        for root in roots {
            store.add(root.clone()).map_err(|e| e.to_string())?;
        }
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(store)
        .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let name = ServerName::try_from(server_name.to_string()).map_err(|e| e.to_string())?;
        let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        tcp.set_nodelay(true).map_err(|e| e.to_string())?;
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS handshake: {e}"))?;
        Ok(RawClient {
            tls,
            buffer: Vec::with_capacity(64 * 1024),
        })
    }

    /// A `POST` of `body` to `path` as HTTP/1.1 bytes, headers and body.
    pub fn encode(path: &str, body: &[u8]) -> Vec<u8> {
        let mut request = format!(
            "POST {path} HTTP/1.1\r\nhost: {SERVICE_DNS}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        request.extend_from_slice(body);
        request
    }

    /// Writes `request` (from [`RawClient::encode`]) and reads its answer.
    pub async fn round_trip(&mut self, request: &[u8]) -> Result<RawAnswer<'_>, String> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        self.tls
            .write_all(request)
            .await
            .map_err(|e| e.to_string())?;
        self.buffer.clear();
        let mut head_end = None;
        let mut total = usize::MAX;
        while self.buffer.len() < total {
            if self.buffer.len() == self.buffer.capacity() {
                self.buffer.reserve(self.buffer.capacity());
            }
            let read = self
                .tls
                .read_buf(&mut self.buffer)
                .await
                .map_err(|e| e.to_string())?;
            if read == 0 {
                return Err("the server closed the connection".into());
            }
            if head_end.is_none()
                && let Some(end) = find(&self.buffer, b"\r\n\r\n")
            {
                let length = content_length(&self.buffer[..end])
                    .ok_or("an answer without content-length")?;
                head_end = Some(end + 4);
                total = end + 4 + length;
            }
        }
        let head_end = head_end.ok_or("an answer without headers")?;
        let status = self
            .buffer
            .get(9..12)
            .and_then(|s| std::str::from_utf8(s).ok())
            .and_then(|s| s.parse().ok())
            .ok_or("an answer without a status line")?;
        Ok(RawAnswer {
            status,
            body: &self.buffer[head_end..total],
        })
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The `content-length` of a response head.
fn content_length(head: &[u8]) -> Option<usize> {
    let head = std::str::from_utf8(head).ok()?;
    head.split("\r\n").find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.eq_ignore_ascii_case("content-length")
            .then(|| value.trim().parse().ok())?
    })
}
