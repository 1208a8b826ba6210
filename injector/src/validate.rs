//! The validating webhook for routing annotations: `kubectl apply` of a
//! Service or Namespace whose `meshd.io/*` routing annotations do not parse
//! is refused up front, with the message the control plane would log.
//!
//! ```text
//! API server ──POST /validate (AdmissionReview, Service or Namespace)──> review
//!     Service:   routing::parse(its key, its annotations, no namespace annotations)
//!     Namespace: routing::validate_namespace(its name, its annotations)
//!     (and the same of authorization: authorization::parse, validate_namespace)
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
//! - DELETE and CONNECT, subresources and other kinds are allowed.

use kube::core::admission::{AdmissionRequest, AdmissionResponse, Operation};
use kube::core::{DynamicObject, PartialObjectMeta};
use meshd_api::annotations::authorization;
use meshd_api::annotations::routing::{self, AnnotationError, Annotations};
use meshd_api::names::ServiceKey;

use crate::admission::{deny, gvk_name, short};

/// What the validating webhook decodes of a Service or Namespace: type
/// fields and metadata, nothing of the spec.
pub type ObjectMetadata = PartialObjectMeta<DynamicObject>;

/// The longest annotation value quoted in a denial; the message still
/// says what is accepted.
const MAX_QUOTED_VALUE: usize = 200;

/// The kinds whose annotations are checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Service,
    Namespace,
}

/// Decides on a review of a Service or Namespace.
pub fn review(request: &AdmissionRequest<ObjectMetadata>) -> AdmissionResponse {
    let allowed = AdmissionResponse::from(request);
    let kind = match (
        request.kind.group.as_str(),
        request.kind.version.as_str(),
        request.kind.kind.as_str(),
    ) {
        ("", "v1", "Service") => Kind::Service,
        ("", "v1", "Namespace") => Kind::Namespace,
        _ => {
            // Only a webhook configuration that matches more than it needs
            // sends these; routing annotations live nowhere else.
            tracing::debug!(uid = %request.uid, kind = %gvk_name(&request.kind), "allowed: not a Service or Namespace");
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
    let empty = Annotations::new();
    let annotations = object.metadata.annotations.as_ref().unwrap_or(&empty);
    let name = match (&object.metadata.name, &object.metadata.generate_name) {
        (Some(name), _) if !name.is_empty() => name.clone(),
        _ if !request.name.is_empty() => request.name.clone(),
        (_, Some(prefix)) => format!("{prefix}<generated>"),
        _ => String::new(),
    };
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
            errors.extend(
                authorization::parse(&key, annotations, &Annotations::new())
                    .err()
                    .into_iter()
                    .flatten(),
            );
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
    ) -> AdmissionRequest<ObjectMetadata> {
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
}
