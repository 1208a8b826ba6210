//! The validating webhook checks a Service's authorization rule ports
//! against the Service's own `spec.ports`: a `port=` the Service does not
//! have is refused at admission instead of being accepted and then
//! ignored by the control plane (which keeps the last good policy).

use kube::core::admission::AdmissionRequest;
use meshd_injector::validate::{ReviewedObject, review};
use serde_json::{Value, json};

fn service_review(annotations: Value, ports: Value) -> AdmissionRequest<ReviewedObject> {
    serde_json::from_value(json!({
        "uid": "uid-ports",
        "kind": {"group": "", "version": "v1", "kind": "Service"},
        "resource": {"group": "", "version": "v1", "resource": "services"},
        "name": "reviews",
        "namespace": "shop",
        "operation": "UPDATE",
        "userInfo": {"username": "alice"},
        "object": {
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "reviews", "namespace": "shop", "annotations": annotations},
            "spec": {"clusterIP": "198.19.0.20", "ports": ports},
        },
        "oldObject": null,
        "dryRun": false,
    }))
    .expect("a valid request")
}

#[test]
fn an_authorization_rule_port_the_service_lacks_is_refused() {
    let ports = json!([{"name": "http", "port": 9080}, {"name": "metrics", "port": 9090}]);
    let fits = json!({"meshd.io/allow": "shop/web port=9080; */prometheus port=9090"});
    let response = review(&service_review(fits, ports.clone()));
    assert!(response.allowed, "{response:?}");

    let lacks = json!({"meshd.io/deny": "* port=8080"});
    let response = review(&service_review(lacks, ports));
    assert!(!response.allowed, "{response:?}");
    assert_eq!(response.result.code, 400);
    let message = &response.result.message;
    for part in [
        "Service shop/reviews",
        "meshd.io/deny",
        "* port=8080",
        "has no port 8080",
        "accepted: ",
    ] {
        assert!(message.contains(part), "{part:?} in {message}");
    }
}
