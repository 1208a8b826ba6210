//! The validating webhook for routing annotations and mesh routes:
//! `kubectl apply` of a Service or Namespace whose `meshd.io/*` routing
//! annotations do not parse, or of an HTTPRoute or GRPCRoute attached to a
//! Service that meshd cannot use, is refused up front, with the message the
//! control plane would log.
//!
//! ```text
//! API server ──POST /validate (AdmissionReview)──> review
//!     Service:   routing::parse(its key, its annotations, no namespace annotations)
//!     Namespace: routing::validate_namespace(its name, its annotations)
//!     (and the same of authorization: authorization::parse, validate_namespace)
//!     HTTPRoute, GRPCRoute with a Service parentRef:
//!                gateway::http_route / grpc_route(the route)
//!            <──allowed (warnings for problems the object already had), or denied
//! ```
//!
//! Pure: [`review`] decides from the request alone; the webhook handler
//! only decodes and encodes, and nothing here has side effects, so dry-run
//! reviews are answered like any other.
//!
//! What is checked, and what is not:
//!
//! - A Service is checked against its own annotations only. Its
//!   namespace's annotations are not in the review, and a bad namespace
//!   default is the Namespace's problem (refused when the Namespace is
//!   applied, reported on it otherwise): it must not block every Service
//!   in that namespace. So the Service is parsed with no namespace
//!   annotations, and every error names the Service.
//! - Whether split targets and route backends exist is not checked: the
//!   webhook sees one object, and a `kubectl apply -f` of several files
//!   would otherwise depend on their order. The control plane reports
//!   missing targets (log, metric, `/debug/routing`, an Event).
//! - Annotations outside `meshd.io/` are not looked at.
//! - On UPDATE, a problem with an annotation whose value is the same in
//!   the old object is a warning, not a denial: the object was stored
//!   before (perhaps before this webhook existed), and refusing every
//!   later change to it (a label, a finalizer, a controller's update)
//!   would break others without fixing anything. A changed or added bad
//!   value is denied.
//! - A route (gateway.networking.k8s.io/v1 HTTPRoute or GRPCRoute) is
//!   checked only when one of its `parentRefs` is a Service (`group: ""`,
//!   `kind: Service`): a route attached only to Gateways belongs to other
//!   controllers, and meshd never refuses it, whatever it holds. A mesh
//!   route is refused for what the route model refuses (a field meshd does
//!   not support, a bad regular expression, a `backendRequest` timeout
//!   longer than the request's, …), never for what is merely unresolved: a
//!   backend Service that does not exist (yet), a cross-namespace backend
//!   without its ReferenceGrant, a backend of another kind. Those are the
//!   route's status conditions (ResolvedRefs), written by the control
//!   plane, as the Gateway API asks; refusing them would again make
//!   `kubectl apply -f` of several files depend on their order.
//! - DELETE and CONNECT, subresources (a route's `status`) and other kinds
//!   are allowed.

use std::borrow::Cow;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, Operation};
use kube::core::{ApiResource, DynamicResourceScope, Resource};
use meshd_api::annotations::authorization;
use meshd_api::annotations::routing::{self, AnnotationError, Annotations};
use meshd_api::gateway::{self, GrpcRouteObject, HttpRouteObject, RouteError, RouteKind};
use meshd_api::names::ServiceKey;
use serde_json::{Value, json};

use crate::admission::{deny, gvk_name, short};

/// What the validating webhook decodes of the object under review: its
/// metadata (a Service's or Namespace's annotations) and its spec as JSON,
/// read only for routes, whose `parentRefs` decide whether meshd looks at
/// the rest at all.
#[derive(Clone, Debug, Default, serde::Deserialize, serde::Serialize)]
pub struct ReviewedObject {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<Value>,
}

/// Any kind, like `DynamicObject`: the review's `request.kind` says which.
impl Resource for ReviewedObject {
    type DynamicType = ApiResource;
    type Scope = DynamicResourceScope;

    fn group(dt: &ApiResource) -> Cow<'_, str> {
        dt.group.as_str().into()
    }

    fn version(dt: &ApiResource) -> Cow<'_, str> {
        dt.version.as_str().into()
    }

    fn kind(dt: &ApiResource) -> Cow<'_, str> {
        dt.kind.as_str().into()
    }

    fn api_version(dt: &ApiResource) -> Cow<'_, str> {
        dt.api_version.as_str().into()
    }

    fn plural(dt: &ApiResource) -> Cow<'_, str> {
        dt.plural.as_str().into()
    }

    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// The longest annotation value quoted in a denial; the message still
/// says what is accepted.
const MAX_QUOTED_VALUE: usize = 200;

/// The kinds checked: Services and Namespaces for their annotations,
/// routes for what they say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Service,
    Namespace,
    Route(RouteKind),
}

/// Decides on a review of a Service, Namespace, HTTPRoute or GRPCRoute.
pub fn review(request: &AdmissionRequest<ReviewedObject>) -> AdmissionResponse {
    let allowed = AdmissionResponse::from(request);
    let kind = match (
        request.kind.group.as_str(),
        request.kind.version.as_str(),
        request.kind.kind.as_str(),
    ) {
        ("", "v1", "Service") => Kind::Service,
        ("", "v1", "Namespace") => Kind::Namespace,
        (gateway::GROUP, "v1", "HTTPRoute") => Kind::Route(RouteKind::Http),
        (gateway::GROUP, "v1", "GRPCRoute") => Kind::Route(RouteKind::Grpc),
        _ => {
            // Only a webhook configuration that matches more than it needs
            // sends these (with `matchPolicy: Equivalent` the API server
            // converts other route versions to v1 first); routing lives
            // nowhere else.
            tracing::debug!(uid = %request.uid, kind = %gvk_name(&request.kind), "allowed: not a kind meshd checks");
            return allowed;
        }
    };
    if !matches!(request.operation, Operation::Create | Operation::Update)
        || request.sub_resource.is_some()
    {
        return allowed;
    }
    let Some(object) = &request.object else {
        let message = format!(
            "request.object is missing; a {:?} review carries the {kind:?} being written",
            request.operation
        );
        return deny(allowed, 400, "BadRequest", message);
    };
    let name = object_name(request, object);
    if let Kind::Route(kind) = kind {
        return review_route(kind, request, object, name, allowed);
    }
    let empty = Annotations::new();
    let annotations = object.metadata.annotations.as_ref().unwrap_or(&empty);
    let errors = match kind {
        Kind::Service => {
            let namespace = request
                .namespace
                .as_deref()
                .or(object.metadata.namespace.as_deref())
                .unwrap_or_default();
            let key = ServiceKey::new(namespace, name);
            // No namespace annotations: see the module docs.
            let mut errors = routing::parse(&key, annotations, &Annotations::new())
                .err()
                .unwrap_or_default();
            // Rule ports must be among the Service's own `spec.ports`.
            let ports: Vec<u16> = (object.spec.as_ref())
                .and_then(|spec| spec["ports"].as_array())
                .into_iter()
                .flatten()
                .filter_map(|p| u16::try_from(p["port"].as_u64()?).ok())
                .collect();
            let none = Annotations::new();
            errors.extend(match authorization::parse(&key, annotations, &none) {
                Ok(policy) => authorization::check_ports(&key, &ports, annotations, &none, &policy),
                Err(e) => e,
            });
            Some(errors)
        }
        Kind::Namespace => {
            let mut errors = routing::validate_namespace(&name, annotations)
                .err()
                .unwrap_or_default();
            errors.extend(
                authorization::validate_namespace(&name, annotations)
                    .err()
                    .into_iter()
                    .flatten(),
            );
            Some(errors)
        }
        Kind::Route(_) => None,
    }
    .unwrap_or_default();
    if errors.is_empty() {
        return allowed;
    }

    // On UPDATE, problems the stored object already had only warn.
    let old = request
        .old_object
        .as_ref()
        .filter(|_| request.operation == Operation::Update)
        .map(|old| old.metadata.annotations.as_ref().unwrap_or(&empty));
    let (existing, new): (Vec<&AnnotationError>, Vec<&AnnotationError>) =
        errors.iter().partition(|e| {
            old.is_some_and(|old| old.get(&e.annotation) == annotations.get(&e.annotation))
        });
    if new.is_empty() {
        let mut response = allowed;
        response.warnings = Some(
            existing
                .iter()
                .map(|e| format!("{} (unchanged by this update)", problem(e)))
                .collect(),
        );
        return response;
    }
    let mut response = deny(allowed, 400, "BadRequest", denial(&new));
    if !existing.is_empty() {
        response.warnings = Some(existing.iter().map(|e| problem(e)).collect());
    }
    response
}

/// The object's name as messages give it; a generated one is not known
/// yet when it is created.
fn object_name(request: &AdmissionRequest<ReviewedObject>, object: &ReviewedObject) -> String {
    match (&object.metadata.name, &object.metadata.generate_name) {
        (Some(name), _) if !name.is_empty() => name.clone(),
        _ if !request.name.is_empty() => request.name.clone(),
        (_, Some(prefix)) => format!("{prefix}<generated>"),
        _ => String::new(),
    }
}

/// Decides on a route: see the module docs for what is refused and what
/// is left to the route's status.
fn review_route(
    kind: RouteKind,
    request: &AdmissionRequest<ReviewedObject>,
    object: &ReviewedObject,
    name: String,
    allowed: AdmissionResponse,
) -> AdmissionResponse {
    if !has_service_parent(object) {
        tracing::debug!(uid = %request.uid, %kind, "allowed: no Service parent, not a mesh route");
        return allowed;
    }
    let namespace = request
        .namespace
        .as_deref()
        .or(object.metadata.namespace.as_deref())
        .unwrap_or_default();
    let Err(error) = check_route(kind, namespace, &name, object) else {
        return allowed;
    };
    // On UPDATE, a problem the stored route already had only warns, as
    // with annotations: a relabelled or re-owned route must not be stuck.
    let unchanged = request
        .old_object
        .as_ref()
        .filter(|_| request.operation == Operation::Update)
        .filter(|old| has_service_parent(old))
        .is_some_and(|old| check_route(kind, namespace, &name, old).err() == Some(error.clone()));
    if unchanged {
        let mut response = allowed;
        response.warnings = Some(vec![format!("{error} (unchanged by this update)")]);
        return response;
    }
    deny(
        allowed,
        400,
        "BadRequest",
        format!("invalid mesh route: {error}"),
    )
}

/// Whether one of the route's `parentRefs` is a Service. Only an explicit
/// `group: ""` and `kind: Service` is one: the defaults are the Gateway
/// API's group and kind Gateway (read as `meshd_api::gateway` reads them).
fn has_service_parent(object: &ReviewedObject) -> bool {
    object
        .spec
        .as_ref()
        .and_then(|spec| spec.get("parentRefs"))
        .and_then(Value::as_array)
        .is_some_and(|parents| {
            parents.iter().any(|p| {
                p.get("group") == Some(&json!("")) && p.get("kind") == Some(&json!("Service"))
            })
        })
}

/// The route as the control plane would read it: decoded into the Gateway
/// API types (a value they cannot hold names its field), then checked by
/// `meshd_api::gateway`.
fn check_route(
    kind: RouteKind,
    namespace: &str,
    name: &str,
    object: &ReviewedObject,
) -> Result<(), RouteError> {
    let route = json!({
        "apiVersion": format!("{}/v1", gateway::GROUP),
        "kind": kind.as_str(),
        "metadata": {"name": name, "namespace": namespace},
        "spec": object.spec.clone().unwrap_or_else(|| json!({})),
    });
    let undecodable = |e: serde_path_to_error::Error<serde_json::Error>| RouteError {
        object: format!("{kind} {namespace}/{name}"),
        field: e.path().to_string(),
        message: e.inner().to_string(),
        reason: "UnsupportedValue",
    };
    match kind {
        RouteKind::Http => {
            let route: HttpRouteObject =
                serde_path_to_error::deserialize(route).map_err(undecodable)?;
            gateway::http_route(&route)?;
        }
        RouteKind::Grpc => {
            let route: GrpcRouteObject =
                serde_path_to_error::deserialize(route).map_err(undecodable)?;
            gateway::grpc_route(&route)?;
        }
    }
    Ok(())
}

/// One problem: the object, the annotation, its value and what is wrong
/// (which ends with what is accepted).
fn problem(e: &AnnotationError) -> String {
    let value = match e.value.char_indices().nth(MAX_QUOTED_VALUE) {
        None => e.value.clone(),
        Some((end, _)) => format!("{}…", &e.value[..end]),
    };
    format!(
        "{}: annotation {} = {:?}: {}",
        e.object,
        short(&e.annotation),
        value,
        e.message
    )
}

/// The denial message: every problem, each on its own line when there are
/// several (kubectl prints the message as it is).
fn denial(errors: &[&AnnotationError]) -> String {
    match errors {
        [one] => format!("invalid meshd annotation: {}", problem(one)),
        many => {
            let mut message = format!("{} invalid meshd annotations:", many.len());
            for e in many {
                message.push_str("\n- ");
                message.push_str(&problem(e));
            }
            message
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    /// A review of `operation` on `object` of `kind`, decoded as the
    /// webhook decodes it.
    fn request(
        kind: &str,
        operation: &str,
        object: Value,
        old_object: Value,
    ) -> AdmissionRequest<ReviewedObject> {
        let resource = format!("{}s", kind.to_lowercase());
        let namespace = if kind == "Namespace" {
            Value::Null
        } else {
            json!("shop")
        };
        serde_json::from_value(json!({
            "uid": "uid-1",
            "kind": {"group": "", "version": "v1", "kind": kind},
            "resource": {"group": "", "version": "v1", "resource": resource},
            "name": object["metadata"]["name"].as_str().unwrap_or_default(),
            "namespace": namespace,
            "operation": operation,
            "userInfo": {"username": "alice"},
            "object": object,
            "oldObject": old_object,
            "dryRun": false,
        }))
        .expect("a valid request")
    }

    fn service(annotations: Value) -> Value {
        json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "reviews", "namespace": "shop", "annotations": annotations},
            "spec": {"clusterIP": "198.19.0.20", "ports": [{"name": "http", "port": 9080}]}
        })
    }

    fn namespace(annotations: Value) -> Value {
        json!({
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": "shop", "annotations": annotations},
        })
    }

    fn denial_message(response: &AdmissionResponse) -> &str {
        assert!(!response.allowed, "expected a denial: {response:?}");
        assert_eq!(response.result.code, 400);
        &response.result.message
    }

    #[test]
    fn a_service_with_valid_or_no_routing_annotations_is_allowed() {
        for annotations in [
            json!({}),
            json!({"meshd.io/timeout": "5s", "meshd.io/retries": "3",
                   "meshd.io/traffic-split": "reviews-v1=90,reviews-v2=10"}),
            // Not ours: never looked at.
            json!({"example.com/timeout": "whenever", "kubectl.kubernetes.io/last-applied-configuration": "{}"}),
        ] {
            let response = review(&request(
                "Service",
                "CREATE",
                service(annotations.clone()),
                Value::Null,
            ));
            assert!(response.allowed, "{annotations}: {response:?}");
            assert_eq!(response.uid, "uid-1");
            assert!(response.warnings.is_none());
        }
        let mut no_annotations = service(json!({}));
        no_annotations["metadata"]
            .as_object_mut()
            .unwrap()
            .remove("annotations");
        assert!(review(&request("Service", "CREATE", no_annotations, Value::Null)).allowed);
    }

    #[test]
    fn a_bad_service_annotation_is_denied_naming_object_annotation_value_and_what_is_accepted() {
        let response = review(&request(
            "Service",
            "CREATE",
            service(json!({"meshd.io/timeout": "fast"})),
            Value::Null,
        ));
        let accepted = routing::doc(routing::TIMEOUT).unwrap().accepted;
        assert_eq!(
            denial_message(&response),
            format!(
                "invalid meshd annotation: Service shop/reviews: annotation meshd.io/timeout = \"fast\": \
                 `fast` is not a duration; accepted: {accepted}"
            )
        );
        assert_eq!(response.uid, "uid-1");
    }

    #[test]
    fn every_problem_is_listed() {
        let response = review(&request(
            "Service",
            "UPDATE",
            service(
                json!({"meshd.io/retries": "eleven", "meshd.io/load-balancer": "fastest",
                           "meshd.io/timeuot": "5s", "meshd.io/egress": "./*"}),
            ),
            service(json!({})),
        ));
        let message = denial_message(&response);
        assert!(
            message.starts_with("4 invalid meshd annotations:\n- "),
            "{message}"
        );
        for fragment in [
            "annotation meshd.io/retries = \"eleven\"",
            "accepted: a whole number 0-10",
            "annotation meshd.io/load-balancer = \"fastest\"",
            "accepted: round-robin, least-request",
            "annotation meshd.io/timeuot = \"5s\": is not a meshd annotation",
            "annotation meshd.io/egress = \"./*\": is not accepted on a Service, only on: Namespace, Pod",
        ] {
            assert!(message.contains(fragment), "{fragment:?} in {message}");
        }
        assert_eq!(message.lines().count(), 5, "{message}");
    }

    #[test]
    fn a_namespace_is_checked_for_defaults_and_egress() {
        let response = review(&request(
            "Namespace",
            "CREATE",
            namespace(json!({"meshd.io/egress": "shop", "meshd.io/mtls": "STRICT"})),
            Value::Null,
        ));
        let message = denial_message(&response);
        assert!(
            message.starts_with(
                "invalid meshd annotation: Namespace shop: annotation meshd.io/egress = \"shop\": "
            ),
            "{message}"
        );
        assert!(message.contains("accepted: a comma-separated list of namespace/service"));

        let response = review(&request(
            "Namespace",
            "CREATE",
            namespace(
                json!({"meshd.io/timeout": "1m", "meshd.io/egress": "./*,payments/api",
                             "meshd.io/mtls": "STRICT", "meshd-injection": "enabled"}),
            ),
            Value::Null,
        ));
        assert!(response.allowed, "{response:?}");

        // A Service-only annotation on a Namespace.
        let response = review(&request(
            "Namespace",
            "CREATE",
            namespace(json!({"meshd.io/traffic-split": "a=1"})),
            Value::Null,
        ));
        assert!(
            denial_message(&response).contains("is not accepted on a Namespace, only on: Service"),
            "{response:?}"
        );
    }

    #[test]
    fn a_service_is_never_blamed_for_its_namespace() {
        // Nothing of the namespace is in a Service review; the Service's
        // own values are all that is parsed, and every error names it.
        let response = review(&request(
            "Service",
            "CREATE",
            service(json!({"meshd.io/retries": "99"})),
            Value::Null,
        ));
        assert!(
            denial_message(&response).contains("Service shop/reviews: annotation meshd.io/retries")
        );
        assert!(!denial_message(&response).contains("Namespace"));
    }

    #[test]
    fn an_update_that_leaves_a_bad_value_alone_is_allowed_with_a_warning() {
        let bad = json!({"meshd.io/timeout": "fast"});
        let mut labelled = service(bad.clone());
        labelled["metadata"]["labels"] = json!({"team": "books"});
        let response = review(&request(
            "Service",
            "UPDATE",
            labelled,
            service(bad.clone()),
        ));
        assert!(response.allowed, "{response:?}");
        let warnings = response.warnings.expect("a warning");
        assert_eq!(warnings.len(), 1);
        assert!(
            warnings[0].starts_with(
                "Service shop/reviews: annotation meshd.io/timeout = \"fast\": `fast` is not a duration"
            ),
            "{warnings:?}"
        );

        // Changing it to another bad value, or adding one, is denied; the
        // old problem still warns.
        let response = review(&request(
            "Service",
            "UPDATE",
            service(json!({"meshd.io/timeout": "faster", "meshd.io/retries": "x"})),
            service(json!({"meshd.io/retries": "x"})),
        ));
        let denied = denial_message(&response);
        assert!(denied.contains("\"faster\""), "{denied}");
        assert!(!denied.contains("meshd.io/retries"), "{denied}");
        assert_eq!(response.warnings.map(|w| w.len()), Some(1));

        // On CREATE there is no old object to excuse anything.
        let response = review(&request("Service", "CREATE", service(bad), Value::Null));
        assert!(!response.allowed);
    }

    #[test]
    fn deletes_other_kinds_and_subresources_are_allowed() {
        let bad = json!({"meshd.io/timeout": "fast"});
        let response = review(&request(
            "Service",
            "DELETE",
            Value::Null,
            service(bad.clone()),
        ));
        assert!(response.allowed, "{response:?}");

        let mut pod = service(bad.clone());
        pod["kind"] = json!("Pod");
        assert!(review(&request("Pod", "CREATE", pod, Value::Null)).allowed);

        let mut status = request(
            "Service",
            "UPDATE",
            service(bad.clone()),
            service(json!({})),
        );
        status.sub_resource = Some("status".into());
        assert!(review(&status).allowed);
    }

    #[test]
    fn a_create_without_its_object_is_denied() {
        let response = review(&request("Namespace", "CREATE", Value::Null, Value::Null));
        assert!(
            denial_message(&response).contains("request.object is missing"),
            "{response:?}"
        );
    }

    #[test]
    fn long_values_are_shortened_in_messages() {
        let long = format!("[{}]", "{\"backend\": \"x\"},".repeat(100));
        let response = review(&request(
            "Service",
            "CREATE",
            service(json!({ "meshd.io/routes": long })),
            Value::Null,
        ));
        let denied = denial_message(&response);
        let quoted = format!("= {:?}", format!("{}…", &long[..200]));
        assert!(denied.contains(&quoted), "{denied}");
    }

    #[test]
    fn a_bad_authorization_rule_is_denied_naming_object_annotation_value_and_what_is_accepted() {
        let response = review(&request(
            "Service",
            "CREATE",
            service(json!({"meshd.io/allow": "shop/web FETCH /api/*"})),
            Value::Null,
        ));
        assert!(!response.allowed);
        let message = denial_message(&response);
        assert!(
            message.starts_with(
                "invalid meshd annotation: Service shop/reviews: annotation meshd.io/allow = \"shop/web FETCH /api/*\": `FETCH` is not a method"
            ),
            "{message}"
        );
        assert!(
            message.contains(authorization::accepted(authorization::ALLOW)),
            "{message}"
        );
        let response = review(&request(
            "Namespace",
            "CREATE",
            namespace(json!({"meshd.io/authorization": "deny-everyone"})),
            Value::Null,
        ));
        assert!(
            denial_message(&response)
                .contains("Namespace shop: annotation meshd.io/authorization = \"deny-everyone\""),
            "{}",
            denial_message(&response)
        );
        let good = review(&request(
            "Service",
            "CREATE",
            service(json!({"meshd.io/authorization": "deny-all", "meshd.io/allow": "./*"})),
            Value::Null,
        ));
        assert!(good.allowed);
    }

    /// A review of `operation` on a route of `kind` (HTTPRoute, GRPCRoute).
    fn route_request(
        kind: &str,
        operation: &str,
        object: Value,
        old_object: Value,
    ) -> AdmissionRequest<ReviewedObject> {
        let resource = format!("{}s", kind.to_lowercase());
        serde_json::from_value(json!({
            "uid": "uid-route",
            "kind": {"group": "gateway.networking.k8s.io", "version": "v1", "kind": kind},
            "resource": {"group": "gateway.networking.k8s.io", "version": "v1", "resource": resource},
            "name": object["metadata"]["name"].as_str().unwrap_or_default(),
            "namespace": "shop",
            "operation": operation,
            "userInfo": {"username": "alice"},
            "object": object,
            "oldObject": old_object,
            "dryRun": false,
        }))
        .expect("a valid request")
    }

    /// An HTTPRoute `reviews` in `shop` with these parents and rules.
    fn http_route(parent_refs: Value, rules: Value) -> Value {
        json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": {"name": "reviews", "namespace": "shop"},
            "spec": {"parentRefs": parent_refs, "rules": rules}
        })
    }

    fn mesh_parent() -> Value {
        json!([{"group": "", "kind": "Service", "name": "reviews", "port": 9080}])
    }

    fn gateway_parent() -> Value {
        json!([{"name": "ingress", "namespace": "edge"}])
    }

    fn cors_rule() -> Value {
        json!([{"filters": [{"type": "CORS", "cors": {"allowOrigins": ["https://example.com"]}}],
                "backendRefs": [{"name": "reviews-v1", "port": 9080}]}])
    }

    #[test]
    fn a_mesh_route_meshd_cannot_use_is_denied_naming_route_field_and_what_is_accepted() {
        let response = review(&route_request(
            "HTTPRoute",
            "CREATE",
            http_route(mesh_parent(), cors_rule()),
            Value::Null,
        ));
        let message = denial_message(&response);
        assert!(
            message.starts_with(
                "invalid mesh route: HTTPRoute shop/reviews: spec.rules[0].filters[0].type: CORS is not supported by meshd for HTTPRoute; accepted: "
            ),
            "{message}"
        );
        assert_eq!(response.uid, "uid-route");

        // A value the Gateway API types cannot hold names its field too.
        let response = review(&route_request(
            "HTTPRoute",
            "CREATE",
            http_route(
                mesh_parent(),
                json!([{"matches": [{"path": {"type": "Glob", "value": "/*"}}]}]),
            ),
            Value::Null,
        ));
        let message = denial_message(&response);
        assert!(
            message.starts_with(
                "invalid mesh route: HTTPRoute shop/reviews: spec.rules[0].matches[0].path.type: unknown variant `Glob`"
            ),
            "{message}"
        );

        let grpc = json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "GRPCRoute",
            "metadata": {"name": "echo", "namespace": "shop"},
            "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "echo"}],
                     "rules": [{"matches": [{"method": {"type": "Exact"}}]}]}
        });
        let message = denial_message(&review(&route_request(
            "GRPCRoute",
            "CREATE",
            grpc,
            Value::Null,
        )))
        .to_string();
        assert!(
            message.starts_with(
                "invalid mesh route: GRPCRoute shop/echo: spec.rules[0].matches[0].method: names neither service nor method"
            ),
            "{message}"
        );
    }

    #[test]
    fn a_route_attached_only_to_gateways_is_never_denied() {
        for parents in [gateway_parent(), json!([]), Value::Null] {
            let response = review(&route_request(
                "HTTPRoute",
                "CREATE",
                http_route(parents.clone(), cors_rule()),
                Value::Null,
            ));
            assert!(response.allowed, "{parents}: {response:?}");
            assert!(response.warnings.is_none());
        }
        // Even one the Gateway API types cannot hold: it is another
        // controller's to judge.
        let response = review(&route_request(
            "HTTPRoute",
            "UPDATE",
            http_route(gateway_parent(), json!([{"timeouts": {"request": 5}}])),
            Value::Null,
        ));
        assert!(response.allowed, "{response:?}");
        // Group and kind must both say Service: a Service-named Gateway is not one.
        let response = review(&route_request(
            "HTTPRoute",
            "CREATE",
            http_route(json!([{"kind": "Service", "name": "reviews"}]), cors_rule()),
            Value::Null,
        ));
        assert!(response.allowed, "{response:?}");
    }

    #[test]
    fn what_is_only_unresolved_is_left_to_the_route_status() {
        // A backend that does not exist, one in another namespace with no
        // ReferenceGrant in sight, one of another kind: status conditions.
        let response = review(&route_request(
            "HTTPRoute",
            "CREATE",
            http_route(
                json!([{"group": "", "kind": "Service", "name": "reviews"},
                       {"name": "ingress"}]),
                json!([{"backendRefs": [
                    {"name": "reviews-v1", "port": 9080, "weight": 90},
                    {"name": "reviews-v2", "namespace": "canary", "port": 9080, "weight": 10},
                    {"group": "example.com", "kind": "Bucket", "name": "b"},
                    {"name": "no-port"}]}]),
            ),
            Value::Null,
        ));
        assert!(response.allowed, "{response:?}");
    }

    #[test]
    fn an_update_that_leaves_a_bad_route_alone_warns_and_status_is_not_reviewed() {
        let bad = http_route(mesh_parent(), cors_rule());
        let mut labelled = bad.clone();
        labelled["metadata"]["labels"] = json!({"team": "books"});
        let response = review(&route_request("HTTPRoute", "UPDATE", labelled, bad.clone()));
        assert!(response.allowed, "{response:?}");
        let warnings = response.warnings.expect("a warning");
        assert!(
            warnings[0].starts_with("HTTPRoute shop/reviews: spec.rules[0].filters[0].type: CORS")
                && warnings[0].ends_with("(unchanged by this update)"),
            "{warnings:?}"
        );

        // Attaching a stored Gateway route with the defect to a Service is
        // a new problem for meshd.
        let response = review(&route_request(
            "HTTPRoute",
            "UPDATE",
            bad.clone(),
            http_route(gateway_parent(), cors_rule()),
        ));
        assert!(!response.allowed, "{response:?}");

        let mut status = route_request("HTTPRoute", "UPDATE", bad.clone(), Value::Null);
        status.sub_resource = Some("status".into());
        assert!(review(&status).allowed);
        assert!(review(&route_request("HTTPRoute", "DELETE", Value::Null, bad)).allowed);
    }
}
