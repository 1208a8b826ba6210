//! The sidecar-injection admission webhook: HTTPS on rustls with a serving
//! certificate from the mesh CA that renews itself without a restart.
//!
//! ```text
//! API server ──POST /inject (AdmissionReview, Pod)──> decode ──> inject::inject ──┐
//!            <──AdmissionReview (allowed + base64 JSONPatch, or denied)───────────┘
//!                                          Patched, not dry-run:
//!                                          IdentityProvisioner::ensure(ns, sa) first
//! API server ──POST /validate (Service, Namespace, route)──> decode ──> validate::review ─┐
//!            <──AdmissionReview (allowed, or denied naming every bad annotation or field)─┘
//! ```
//!
//! The handlers only decode, call [`crate::inject::inject`] or
//! [`crate::validate::review`], and encode; both share the decoding below.
//! A Pod is decoded as [`PodForInjection`], only the fields injection
//! reads, which is most of what a review costs otherwise.
//! Problems with the envelope (not JSON, not an `admission.k8s.io/v1
//! AdmissionReview`, no request, no uid, a body over [`MAX_BODY_BYTES`])
//! are answered with an HTTP error and a plain-text message, since there
//! is no request to answer; everything wrong inside a readable request
//! (another kind, a Pod that does not decode, an injection error, a Secret
//! that cannot be provisioned) is a denial whose message says what and why.
//! Dry-run reviews never cause side effects: they are answered with the
//! same patch, without provisioning.
//!
//! The listener is served by [`meshd_controlplane::serving`], so no client
//! can hold it: handshake, header-read, idle and body timeouts, at most
//! [`DEFAULT_WEBHOOK_MAX_CONNECTIONS`] connections (a full listener closes
//! the one idle longest to let the API server in), a body announced over
//! [`MAX_BODY_BYTES`] refused (413) before it is read, and a body that
//! stops arriving answered 408 ([`default_limits`]).
//!
//! The API server verifies the certificate against the `caBundle` of the
//! MutatingWebhookConfiguration by the Service's DNS name, so the serving
//! certificate names [`service_dns_name`] (`<service>.<namespace>.svc`).

use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::admission::{deny, gvk_name, short};
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use k8s_openapi::api::core::v1::Pod;
use kube::core::admission::{
    AdmissionRequest, AdmissionResponse, META_API_VERSION_V1, META_KIND, Operation,
};
use kube::core::{Resource, TypeMeta};
use meshd_ca::serving::provider;
use meshd_ca::{Authority, RenewingServerCert, SpiffeId};
use meshd_controlplane::serving::{
    self, DEFAULT_WEBHOOK_MAX_CONNECTIONS, Limits, Protocol, Server,
};
use rustls::ServerConfig;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::net::TcpListener;

use crate::config::{InjectorConfig, identity_secret_name};
use crate::identity::IdentityProvisioner;
use crate::inject::{Injection, PodForInjection, inject_patch};
use crate::validate::{self, ReviewedObject};

/// Where the API server posts Pod reviews.
pub const INJECT_PATH: &str = "/inject";
/// Where the API server posts Service and Namespace reviews, to check their
/// routing annotations.
pub const VALIDATE_PATH: &str = "/validate";
/// The largest review accepted. A review carries one Pod (the API server
/// caps objects at about 1.5 MiB), so this only stops abuse.
pub const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;
/// The serving certificate's lifetime; renewed half-way.
pub const SERVING_CERT_TTL: Duration = Duration::from_secs(24 * 3600);
/// The default bound on provisioning an identity Secret: below the API
/// server's default webhook timeout (10 s), so a slow API answers with a
/// denial that says why instead of a bare timeout.
pub const DEFAULT_PROVISION_TIMEOUT: Duration = Duration::from_secs(8);

/// The DNS name the API server dials and verifies for a webhook behind
/// Service `service` in `namespace`.
pub fn service_dns_name(service: &str, namespace: &str) -> String {
    format!("{service}.{namespace}.svc")
}

/// The webhook's serving certificate for `id` (the control plane's own
/// SPIFFE ID), naming `dns_names` (at least [`service_dns_name`]) and
/// `ips`. Chain [`RenewingServerCert::with_generation`] to re-issue when
/// the CA changes.
pub fn serving_cert(
    ca: Arc<Authority>,
    id: SpiffeId,
    dns_names: Vec<String>,
    ips: Vec<IpAddr>,
) -> RenewingServerCert {
    RenewingServerCert::new(ca, "webhook", id, dns_names, ips, SERVING_CERT_TTL)
}

/// TLS for the webhook port: the renewing certificate, no client
/// certificates (the API server authenticates us, not the other way
/// round), HTTP/1.1.
pub fn tls_config(cert: Arc<RenewingServerCert>) -> Arc<ServerConfig> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default TLS versions")
        .with_no_client_auth()
        .with_cert_resolver(cert);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// What the handlers share.
#[derive(Clone)]
pub struct WebhookState {
    pub config: Arc<InjectorConfig>,
    /// Readiness: the CA must be able to sign.
    pub ca: Arc<Authority>,
    /// Readiness: there must be a certificate to serve.
    pub cert: Arc<RenewingServerCert>,
    /// Creates the identity Secret an injected pod mounts. Without one the
    /// webhook only patches (the Secrets are managed elsewhere).
    pub provisioner: Option<Arc<dyn IdentityProvisioner>>,
    /// How long provisioning may take before the pod is denied; keep it
    /// below the webhook's `timeoutSeconds`.
    pub provision_timeout: Duration,
}

impl WebhookState {
    pub fn new(config: InjectorConfig, ca: Arc<Authority>, cert: Arc<RenewingServerCert>) -> Self {
        WebhookState {
            config: Arc::new(config),
            ca,
            cert,
            provisioner: None,
            provision_timeout: DEFAULT_PROVISION_TIMEOUT,
        }
    }

    pub fn with_provisioner(mut self, provisioner: Arc<dyn IdentityProvisioner>) -> Self {
        self.provisioner = Some(provisioner);
        self
    }
}

impl std::fmt::Debug for WebhookState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookState")
            .field("cert", &self.cert)
            .field("provisioner", &self.provisioner.is_some())
            .field("provision_timeout", &self.provision_timeout)
            .finish_non_exhaustive()
    }
}

/// The webhook's routes, without TLS (what [`serve`] serves).
pub fn router(state: WebhookState) -> Router {
    Router::new()
        .route(INJECT_PATH, post(inject_handler))
        .route(VALIDATE_PATH, post(validate_handler))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .fallback(|| async {
            text(
                StatusCode::NOT_FOUND,
                format!(
                    "no such path; the webhook serves POST {INJECT_PATH}, POST {VALIDATE_PATH}, GET /healthz and GET /readyz"
                ),
            )
        })
        .method_not_allowed_fallback(|| async {
            text(
                StatusCode::METHOD_NOT_ALLOWED,
                format!(
                    "method not allowed; the webhook serves POST {INJECT_PATH}, POST {VALIDATE_PATH}, GET /healthz and GET /readyz"
                ),
            )
        })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// The webhook listener's bounds: [`DEFAULT_WEBHOOK_MAX_CONNECTIONS`]
/// connections, the default timeouts of [`serving`], and bodies announcing
/// more than [`MAX_BODY_BYTES`] refused before they are read.
pub fn default_limits() -> Limits {
    Limits {
        max_body_bytes: Some(MAX_BODY_BYTES as u64),
        ..Limits::http(DEFAULT_WEBHOOK_MAX_CONNECTIONS)
    }
}

/// Serves the webhook on `listener` over TLS until `shutdown` completes,
/// then lets open requests finish, with the [`default_limits`].
pub async fn serve(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    state: WebhookState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with_limits(listener, tls, state, default_limits(), shutdown).await
}

/// [`serve`] with other bounds on connections, timeouts and body size
/// (the body limit applies as announced; [`MAX_BODY_BYTES`] still bounds
/// what a handler reads).
pub async fn serve_with_limits(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    state: WebhookState,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let address = listener.local_addr()?;
    tracing::info!(%address, max_connections = limits.max_connections, "admission webhook listening");
    Server::new("webhook", listener, Protocol::Http1, limits)
        .tls(tls)
        .serve(router(state), shutdown)
        .await;
    Ok(())
}

async fn readyz(State(state): State<WebhookState>) -> Response {
    if let Some(reason) = state.ca.status().unready {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: the CA cannot sign: {reason}"),
        );
    }
    if state.cert.current().is_none() {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: no serving certificate (the log says why the CA could not issue one)"
                .into(),
        );
    }
    text(StatusCode::OK, "ready".into())
}

fn text(status: StatusCode, mut message: String) -> Response {
    message.push('\n');
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        message,
    )
        .into_response()
}

/// The body, or the HTTP status and message that answer a body we cannot
/// read.
fn read_body(body: Result<Bytes, BytesRejection>) -> Result<Bytes, (StatusCode, String)> {
    match body {
        Ok(body) => Ok(body),
        Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            tracing::info!("rejected an admission review: body over {MAX_BODY_BYTES} bytes");
            Err((
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "the request body is larger than {} MiB; an AdmissionReview carries one object and is far smaller",
                    MAX_BODY_BYTES / (1024 * 1024)
                ),
            ))
        }
        Err(rejection) if serving::is_body_timeout(&rejection) => {
            tracing::info!("rejected an admission review: {}", rejection.body_text());
            Err((
                StatusCode::REQUEST_TIMEOUT,
                format!("cannot read the request body: {}", rejection.body_text()),
            ))
        }
        Err(rejection) => {
            tracing::info!("rejected an admission review: {}", rejection.body_text());
            Err((
                rejection.status(),
                format!("cannot read the request body: {}", rejection.body_text()),
            ))
        }
    }
}

fn bad_review(BadReview(message): BadReview) -> Response {
    tracing::info!("rejected an admission review: {message}");
    text(StatusCode::BAD_REQUEST, message)
}

async fn inject_handler(
    State(state): State<WebhookState>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match read_body(body) {
        Ok(body) => body,
        Err((status, message)) => return text(status, message),
    };
    match decode_review::<PodForInjection>(&body) {
        Ok(Decoded::Request {
            request, object, ..
        }) => encode(decide(&state, &request, object).await),
        Ok(Decoded::Denied(response)) => encode(response),
        Err(bad) => bad_review(bad),
    }
}

/// `POST /validate`: the routing annotations of a Service or Namespace,
/// and HTTPRoutes and GRPCRoutes attached to Services, checked by
/// [`crate::validate`]. It has no side effects, so dry runs
/// need no special care.
async fn validate_handler(body: Result<Bytes, BytesRejection>) -> Response {
    let body = match read_body(body) {
        Ok(body) => body,
        Err((status, message)) => return text(status, message),
    };
    match decode_review::<ReviewedObject>(&body) {
        Ok(Decoded::Request {
            mut request,
            object,
            old_object,
        }) => {
            let decoded = resolve_object(object, "request.object")
                .and_then(|object| Ok((object, resolve_object(old_object, "request.oldObject")?)));
            let response = match decoded {
                Ok((object, old_object)) => {
                    request.object = object;
                    request.old_object = old_object;
                    validate::review(&request)
                }
                Err(message) => deny(
                    AdmissionResponse::from(&request),
                    400,
                    "BadRequest",
                    message,
                ),
            };
            if !response.allowed {
                log_denial(
                    &Subject {
                        uid: &request.uid,
                        namespace: request.namespace.as_deref().unwrap_or_default(),
                        name: &request.name,
                    },
                    &response,
                );
            }
            encode(response)
        }
        Ok(Decoded::Denied(response)) => encode(response),
        Err(bad) => bad_review(bad),
    }
}

/// A body that is not a review we can answer: HTTP 400 with this message.
struct BadReview(String);

/// What the review's request names, for log lines.
struct Subject<'a> {
    uid: &'a str,
    namespace: &'a str,
    /// The object's name (a Pod's, in injection reviews).
    name: &'a str,
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// A decoding error, naming the field under `prefix` (`request`,
/// `request.object`) unless the problem is with the whole object.
fn field_error<E: std::fmt::Display>(prefix: &str, e: &serde_path_to_error::Error<E>) -> String {
    let path = e.path().to_string();
    if path == "." {
        e.inner().to_string()
    } else {
        format!("{prefix}.{path}: {}", e.inner())
    }
}

fn log_denial(subject: &Subject<'_>, response: &AdmissionResponse) {
    tracing::info!(
        uid = %short(subject.uid),
        namespace = %short(subject.namespace),
        name = %short(subject.name),
        "denied: {}",
        response.result.message
    );
}

/// A review decoded as far as the webhook can answer it.
// Moved once per review; boxing the request would cost an allocation.
#[allow(clippy::large_enum_variant)]
enum Decoded<K: Resource> {
    /// A request to decide on, its objects still to be checked.
    Request {
        request: AdmissionRequest<K>,
        object: Object<K>,
        old_object: Object<K>,
    },
    /// A readable request that is not valid, answered with this denial.
    Denied(AdmissionResponse),
}

/// Decodes a review whose objects are `K`s. An envelope we cannot answer
/// is a [`BadReview`]; a request that is readable enough to echo its uid
/// but not valid is a denial naming the field.
fn decode_review<K>(body: &[u8]) -> Result<Decoded<K>, BadReview>
where
    K: Resource + DeserializeOwned,
{
    const EXPECTED: &str = "expected an admission.k8s.io/v1 AdmissionReview";
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(BadReview(format!("the request body is empty; {EXPECTED}")));
    }
    // The common case in one typed pass. Whatever that cannot read is
    // decoded again step by step, for a message that says what is wrong.
    // (UTF-8 is checked once for the whole body, not string by string.)
    if let Ok(text) = std::str::from_utf8(body)
        && let Ok(Envelope {
            api_version,
            kind,
            request: Some(mut request),
        }) = serde_json::from_str::<Envelope<K>>(text)
        && api_version == META_API_VERSION_V1
        && kind == META_KIND
        && !request.uid.is_empty()
    {
        request.types = review_type();
        let object = Object::Decoded(request.object.take().map(Box::new));
        let old_object = Object::Decoded(request.old_object.take().map(Box::new));
        return Ok(Decoded::Request {
            request,
            object,
            old_object,
        });
    }
    let review: Value = serde_json::from_slice(body).map_err(|e| {
        BadReview(format!(
            "the request body is not valid JSON ({e}); {EXPECTED}"
        ))
    })?;
    let Value::Object(mut review) = review else {
        return Err(BadReview(format!(
            "the request body is a JSON {}, not an object; {EXPECTED}",
            json_type(&review)
        )));
    };
    let field = |name: &str| match review.get(name) {
        Some(Value::String(s)) => format!("`{}`", short(s)),
        Some(other) => format!("a {}", json_type(other)),
        None => "missing".to_string(),
    };
    let (api_version, kind) = (
        review.get("apiVersion").and_then(Value::as_str),
        review.get("kind").and_then(Value::as_str),
    );
    if api_version != Some(META_API_VERSION_V1) || kind != Some(META_KIND) {
        return Err(BadReview(format!(
            "apiVersion is {} and kind is {}; accepted: apiVersion {META_API_VERSION_V1}, kind {META_KIND} \
             (list only v1 in the webhook's admissionReviewVersions)",
            field("apiVersion"),
            field("kind"),
        )));
    }
    let mut request = match review.remove("request") {
        None | Some(Value::Null) => {
            return Err(BadReview(
                "the AdmissionReview has no request; the API server sends one in every review"
                    .into(),
            ));
        }
        Some(Value::Object(request)) => request,
        Some(other) => {
            return Err(BadReview(format!(
                "request is a JSON {}, not an object; {EXPECTED}",
                json_type(&other)
            )));
        }
    };
    let uid = match request.get("uid") {
        Some(Value::String(uid)) if !uid.is_empty() => uid.clone(),
        _ => {
            return Err(BadReview(
                "request.uid is missing or not a string; the response must echo it".into(),
            ));
        }
    };
    // Decoded separately, so a bad object is a denial that names its field.
    let object = request.remove("object");
    let old_object = request.remove("oldObject");
    match serde_path_to_error::deserialize::<_, AdmissionRequest<K>>(Value::Object(request)) {
        Ok(mut request) => {
            request.types = review_type();
            Ok(Decoded::Request {
                request,
                object: Object::Raw(object),
                old_object: Object::Raw(old_object),
            })
        }
        Err(e) => {
            let mut response = AdmissionResponse::invalid("");
            response.uid = uid.clone();
            let response = deny(
                response,
                400,
                "BadRequest",
                format!(
                    "the AdmissionReview's request is not valid: {}",
                    field_error("request", &e)
                ),
            );
            log_denial(
                &Subject {
                    uid: &uid,
                    namespace: "",
                    name: "",
                },
                &response,
            );
            Ok(Decoded::Denied(response))
        }
    }
}

/// The typed shape of a review (kube's `AdmissionReview` flattens its type
/// fields, which makes serde buffer the whole object before decoding it).
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase", bound = "K: DeserializeOwned")]
struct Envelope<K: Resource> {
    #[serde(default)]
    api_version: String,
    #[serde(default)]
    kind: String,
    request: Option<AdmissionRequest<K>>,
}

fn review_type() -> TypeMeta {
    TypeMeta {
        api_version: META_API_VERSION_V1.into(),
        kind: META_KIND.into(),
    }
}

/// One of the request's objects: decoded with the request, or still JSON
/// (when the typed pass failed) to be decoded with a precise message.
enum Object<K> {
    Decoded(Option<Box<K>>),
    Raw(Option<Value>),
}

/// The object, decoded; a message naming the field under `field` (such as
/// `request.object`) when it is not a `K`. Absent and `null` are `None`.
fn resolve_object<K: DeserializeOwned>(
    object: Object<K>,
    field: &str,
) -> Result<Option<K>, String> {
    match object {
        Object::Decoded(object) => Ok(object.map(|o| *o)),
        Object::Raw(None | Some(Value::Null)) => Ok(None),
        Object::Raw(Some(object)) => serde_path_to_error::deserialize(object)
            .map(Some)
            .map_err(|e| format!("{field} is not valid: {}", field_error(field, &e))),
    }
}

async fn decide(
    state: &WebhookState,
    request: &AdmissionRequest<PodForInjection>,
    object: Object<PodForInjection>,
) -> AdmissionResponse {
    let allowed = AdmissionResponse::from(request);
    let namespace = request.namespace.as_deref().unwrap_or_default();
    let mut subject = Subject {
        uid: &request.uid,
        namespace,
        name: &request.name,
    };
    let denied = |response: AdmissionResponse, subject: &Subject<'_>| {
        log_denial(subject, &response);
        response
    };

    if (
        request.kind.group.as_str(),
        request.kind.version.as_str(),
        request.kind.kind.as_str(),
    ) != ("", "v1", "Pod")
    {
        let message = format!(
            "request.kind is {}; this webhook injects only v1 Pod (match only the `pods` resource, \
             without subresources, in the MutatingWebhookConfiguration's rules)",
            gvk_name(&request.kind)
        );
        return denied(deny(allowed, 400, "BadRequest", message), &subject);
    }
    if request.operation != Operation::Create || request.sub_resource.is_some() {
        // Only a Pod being created can get a sidecar (a pod's containers are
        // immutable afterwards): anything else passes untouched.
        tracing::debug!(
            uid = subject.uid,
            namespace = subject.namespace,
            pod = subject.name,
            operation = ?request.operation,
            subresource = ?request.sub_resource,
            "allowed without injection: not a Pod creation"
        );
        return allowed;
    }
    let pod: Pod = match object {
        Object::Decoded(Some(pod)) => pod.0,
        Object::Decoded(None) | Object::Raw(None | Some(Value::Null)) => {
            let message =
                "request.object is missing; a CREATE review carries the Pod being created".into();
            return denied(deny(allowed, 400, "BadRequest", message), &subject);
        }
        Object::Raw(Some(object)) => {
            let type_field = |name: &str| object.get(name).and_then(Value::as_str).unwrap_or("");
            let (api_version, kind) = (type_field("apiVersion"), type_field("kind"));
            // An object that says what it is gets a plainer message than
            // whatever field of a Pod it happens to trip over.
            if (!api_version.is_empty() || !kind.is_empty()) && (api_version, kind) != ("v1", "Pod")
            {
                let message = format!(
                    "request.object is {} {}, not a v1 Pod; this webhook injects only Pods",
                    short(api_version),
                    short(kind)
                );
                return denied(deny(allowed, 400, "BadRequest", message), &subject);
            }
            match serde_path_to_error::deserialize::<_, PodForInjection>(object) {
                Ok(pod) => pod.0,
                Err(e) => {
                    let message = format!(
                        "request.object is not a valid v1 Pod: {}",
                        field_error("request.object", &e)
                    );
                    return denied(deny(allowed, 400, "BadRequest", message), &subject);
                }
            }
        }
    };
    let generated;
    if subject.name.is_empty() {
        subject.name = match (&pod.metadata.name, &pod.metadata.generate_name) {
            (Some(name), _) => name,
            (None, Some(prefix)) => {
                generated = format!("{prefix}<generated>");
                &generated
            }
            (None, None) => "",
        };
    }
    let namespace = match namespace {
        "" => pod.metadata.namespace.as_deref().unwrap_or_default(),
        namespace => namespace,
    };
    subject.namespace = namespace;
    if namespace.is_empty() {
        let message =
            "request.namespace is missing and the Pod names no metadata.namespace; a Pod is always created in a namespace".into();
        return denied(deny(allowed, 400, "BadRequest", message), &subject);
    }

    match inject_patch(&pod, namespace, &state.config) {
        Ok(Injection::Skipped(why)) => {
            tracing::debug!(
                uid = subject.uid,
                namespace = subject.namespace,
                pod = subject.name,
                "allowed without injection: {why:?}"
            );
            allowed
        }
        Ok(Injection::Patched {
            patch,
            service_account,
        }) => {
            if !request.dry_run
                && let Some(provisioner) = &state.provisioner
            {
                let secret = identity_secret_name(&service_account);
                let outcome = tokio::time::timeout(
                    state.provision_timeout,
                    provisioner.ensure(namespace, &service_account),
                )
                .await;
                let problem = match outcome {
                    Ok(Ok(())) => None,
                    Ok(Err(e)) => Some(e),
                    Err(_) => Some(format!(
                        "no answer within {} s",
                        state.provision_timeout.as_secs_f64()
                    )),
                };
                if let Some(problem) = problem {
                    let message = format!(
                        "cannot provision Secret {namespace}/{secret}, the bootstrap identity of \
                         service account {service_account} that the sidecar mounts: {problem}"
                    );
                    return denied(deny(allowed, 500, "InternalError", message), &subject);
                }
            }
            let operations = patch.len();
            match patch.to_json() {
                Ok(patch) => {
                    tracing::debug!(
                        uid = subject.uid,
                        namespace = subject.namespace,
                        pod = subject.name,
                        service_account,
                        dry_run = request.dry_run,
                        operations,
                        "injected"
                    );
                    // `encode` says it is a JSONPatch, the only type there is.
                    let mut response = allowed;
                    response.patch = Some(patch);
                    response
                }
                Err(e) => {
                    let message = format!("cannot encode the injection patch: {e}");
                    denied(deny(allowed, 500, "InternalError", message), &subject)
                }
            }
        }
        Err(e) => denied(deny(allowed, 400, "BadRequest", e.to_string()), &subject),
    }
}

/// The response review as JSON. Kubernetes defines `response.patch` as
/// base64 (Go's `[]byte`); kube-core serialises the bytes as an array of
/// numbers, which the API server happens to accept, so the documented form
/// is written instead. A response with a patch (a JSON Patch, already
/// serialised) says `patchType: JSONPatch`.
fn encode(mut response: AdmissionResponse) -> Response {
    let patch = response.patch.take();
    match review_json(response, patch.as_deref()) {
        Ok(body) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response(),
        Err(e) => {
            tracing::error!("cannot encode an admission response: {e}");
            text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot encode the admission response: {e}"),
            )
        }
    }
}

/// `response` (without its patch) in its review, with `patch` as
/// `response.patch`, as JSON: what `serde_json` writes for the review as a
/// `Value` holding the base64 string (object keys sorted). The patch is
/// most of an answer, so its base64 text is written straight into the body
/// rather than held in a `Value` and copied out through JSON string
/// escaping, which it never needs (the alphabet is letters, digits, `+`,
/// `/` and `=`).
fn review_json(response: AdmissionResponse, patch: Option<&[u8]>) -> serde_json::Result<Vec<u8>> {
    let review = serde_json::to_value(response.into_review())?;
    let Some(patch) = patch else {
        return serde_json::to_vec(&review);
    };
    let Value::Object(mut review) = review else {
        return Err(serde::ser::Error::custom("the review is not a JSON object"));
    };
    let Some(Value::Object(fields)) = review.get_mut("response") else {
        return Err(serde::ser::Error::custom("the review has no response"));
    };
    fields.insert("patchType".into(), "JSONPatch".into());
    let engine = &base64::engine::general_purpose::STANDARD;
    let encoded_len = base64::encoded_len(patch.len(), true)
        .ok_or_else(|| serde::ser::Error::custom("the patch is too large to encode"))?;
    let mut out = Vec::with_capacity(encoded_len + 512);
    let write_patch = |out: &mut Vec<u8>| -> serde_json::Result<()> {
        out.extend_from_slice(br#""patch":""#);
        let start = out.len();
        out.resize(start + encoded_len, 0);
        engine
            .encode_slice(patch, &mut out[start..])
            .map_err(serde::ser::Error::custom)?;
        out.push(b'"');
        Ok(())
    };
    out.push(b'{');
    for (i, (key, value)) in review.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        serde_json::to_writer(&mut out, key)?;
        out.push(b':');
        let (Value::Object(fields), "response") = (value, key.as_str()) else {
            serde_json::to_writer(&mut out, value)?;
            continue;
        };
        // In key order, as a map is written: `patch` before the first
        // key that sorts after it (`patchType`).
        out.push(b'{');
        let mut patch_written = false;
        for (i, (key, value)) in fields.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            if !patch_written && key.as_str() > "patch" {
                write_patch(&mut out)?;
                patch_written = true;
                out.push(b',');
            }
            serde_json::to_writer(&mut out, key)?;
            out.push(b':');
            serde_json::to_writer(&mut out, value)?;
        }
        if !patch_written {
            if !fields.is_empty() {
                out.push(b',');
            }
            write_patch(&mut out)?;
        }
        out.push(b'}');
    }
    out.push(b'}');
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::core::{GroupVersionKind, Status};

    #[test]
    fn quoted_values_stay_short_and_split_on_character_boundaries() {
        assert_eq!(short("apps"), "apps");
        let long = "é".repeat(100);
        let quoted = short(&long);
        assert_eq!(quoted.chars().count(), 64, "63 characters and an ellipsis");
        assert!(quoted.ends_with('…'));
    }

    /// The review as it was written before the patch was spliced in: a
    /// `Value` with the base64 string, serialised.
    fn review_json_through_a_value(response: AdmissionResponse, patch: Option<&[u8]>) -> Vec<u8> {
        let mut review = serde_json::to_value(response.into_review()).unwrap();
        if let Some(patch) = patch {
            let fields = review["response"].as_object_mut().unwrap();
            fields.insert(
                "patch".into(),
                base64::engine::general_purpose::STANDARD
                    .encode(patch)
                    .into(),
            );
            fields.insert("patchType".into(), "JSONPatch".into());
        }
        serde_json::to_vec(&review).unwrap()
    }

    #[test]
    fn the_patch_is_written_into_the_review_as_serde_json_would() {
        let mut responses = Vec::new();
        for uid in ["", "a", "uid-\"quoted\"\\ \u{1} é"] {
            let mut response = AdmissionResponse::invalid("");
            response.uid = uid.into();
            response.allowed = true;
            response.result = Status::default();
            responses.push(response.clone());
            response.warnings = Some(vec!["careful".into()]);
            response.audit_annotations = [("x".to_string(), "y".to_string())].into();
            responses.push(response.clone());
            responses.push(deny(response, 400, "BadRequest", "no".into()));
        }
        for response in responses {
            for patch in [
                None,
                Some(&b""[..]),
                Some(b"["),
                Some(b"[]"),
                Some(br#"[{"op":"add","path":"/a","value":"\u00ff"}]"#),
            ] {
                let expected = review_json_through_a_value(response.clone(), patch);
                let actual = review_json(response.clone(), patch).unwrap();
                assert_eq!(
                    String::from_utf8(actual).unwrap(),
                    String::from_utf8(expected).unwrap()
                );
            }
        }
    }

    #[test]
    fn kinds_are_named_as_users_write_them() {
        let gvk = |group: &str, version: &str, kind: &str| GroupVersionKind {
            group: group.into(),
            version: version.into(),
            kind: kind.into(),
        };
        assert_eq!(gvk_name(&gvk("", "v1", "Pod")), "v1 Pod");
        assert_eq!(
            gvk_name(&gvk("apps", "v1", "Deployment")),
            "apps/v1 Deployment"
        );
    }
}
