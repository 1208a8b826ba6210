//! The admission webhook over real HTTPS: a server on 127.0.0.1:0 with a
//! CA in a temporary directory, and a client that trusts only that CA and
//! dials the Service's DNS name, as the API server does.

mod webhook_support;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use base64::Engine;
use meshd_injector::webhook::{MAX_BODY_BYTES, VALIDATE_PATH};
use serde_json::{Value, json};
use webhook_support::{
    Client, FakeProvisioner, SERVICE_DNS, Server, authority, pod, pod_review, review_of,
};

/// A generous bound on any one exchange: never a performance assertion.
const WAIT: Duration = Duration::from_secs(20);

async fn post(client: &mut Client, review: &Value) -> (u16, String) {
    let (status, body) = tokio::time::timeout(WAIT, client.post_review(review))
        .await
        .expect("an answer in time")
        .expect("an HTTP answer");
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// Posts `review`, expects HTTP 200 with a v1 AdmissionReview answering
/// `uid`, and returns its `response`.
async fn answer(client: &mut Client, review: &Value) -> Value {
    let uid = review["request"]["uid"]
        .as_str()
        .expect("a uid")
        .to_string();
    let (status, body) = post(client, review).await;
    assert_eq!(status, 200, "{body}");
    let answer: Value = serde_json::from_str(&body).expect("a JSON answer");
    assert_eq!(answer["apiVersion"], "admission.k8s.io/v1", "{answer}");
    assert_eq!(answer["kind"], "AdmissionReview", "{answer}");
    assert!(answer.get("request").is_none(), "{answer}");
    let response = answer["response"].clone();
    assert_eq!(response["uid"], uid.as_str(), "{answer}");
    response
}

fn denial_message(response: &Value) -> String {
    assert_eq!(response["allowed"], false, "{response}");
    assert_eq!(response["status"]["status"], "Failure", "{response}");
    response["status"]["message"]
        .as_str()
        .expect("a message")
        .to_string()
}

/// The patch of an allowed response, applied to `object`.
fn apply_patch(response: &Value, mut object: Value) -> Value {
    assert_eq!(response["allowed"], true, "{response}");
    assert_eq!(response["patchType"], "JSONPatch", "{response}");
    let encoded = response["patch"]
        .as_str()
        .expect("the patch is a base64 string");
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .expect("valid base64");
    let patch: json_patch::Patch = serde_json::from_slice(&decoded).expect("a JSON Patch");
    json_patch::patch(&mut object, &patch).expect("the patch applies to the pod");
    object
}

fn has_proxy(pod: &Value) -> bool {
    ["containers", "initContainers"].iter().any(|list| {
        pod["spec"][list]
            .as_array()
            .is_some_and(|cs| cs.iter().any(|c| c["name"] == "meshd-proxy"))
    })
}

#[tokio::test]
async fn a_pod_review_is_answered_with_a_patch_that_adds_the_sidecar() {
    let provisioner = Arc::new(FakeProvisioner::default());
    let server = Server::start(Some(provisioner.clone())).await;
    let mut client = server.client().await;

    let response = answer(&mut client, &pod_review("uid-create", false)).await;
    let patched = apply_patch(&response, pod("web", "web"));
    assert!(has_proxy(&patched), "no meshd-proxy in {patched}");
    assert_eq!(
        provisioner.calls(),
        vec![("shop".to_string(), "web".to_string())],
        "the identity Secret is provisioned once, for the pod's service account"
    );

    // The same keep-alive connection serves the next review.
    let response = answer(&mut client, &pod_review("uid-again", false)).await;
    assert!(has_proxy(&apply_patch(&response, pod("web", "web"))));
    assert_eq!(provisioner.calls().len(), 2);
    server.stop().await.expect("a clean shutdown");
}

#[tokio::test]
async fn a_dry_run_review_is_patched_without_provisioning() {
    let provisioner = Arc::new(FakeProvisioner::default());
    let server = Server::start(Some(provisioner.clone())).await;
    let mut client = server.client().await;

    let response = answer(&mut client, &pod_review("uid-dry", true)).await;
    assert!(has_proxy(&apply_patch(&response, pod("web", "web"))));
    assert!(
        provisioner.calls().is_empty(),
        "a dry run must cause no side effects: {:?}",
        provisioner.calls()
    );

    answer(&mut client, &pod_review("uid-real", false)).await;
    assert_eq!(provisioner.calls().len(), 1);
}

#[tokio::test]
async fn a_provisioning_failure_denies_the_pod_naming_the_secret() {
    let provisioner = Arc::new(FakeProvisioner::failing(
        "secrets is forbidden: User \"system:serviceaccount:meshd-system:meshd\" cannot create resource \"secrets\"",
    ));
    let server = Server::start(Some(provisioner.clone())).await;
    let mut client = server.client().await;

    let response = answer(&mut client, &pod_review("uid-fail", false)).await;
    let message = denial_message(&response);
    assert!(
        message.contains("shop/meshd-identity-web"),
        "the message names the Secret: {message}"
    );
    assert!(
        message.contains("secrets is forbidden"),
        "the message carries the error: {message}"
    );
    assert!(response.get("patch").is_none(), "{response}");
    assert_eq!(provisioner.calls().len(), 1);
}

#[tokio::test]
async fn an_opted_out_pod_is_allowed_untouched() {
    let provisioner = Arc::new(FakeProvisioner::default());
    let server = Server::start(Some(provisioner.clone())).await;
    let mut client = server.client().await;

    let mut opted_out = pod("batch", "batch");
    opted_out["metadata"]["annotations"]["meshd.io/inject"] = json!("false");
    let review = review_of("uid-skip", ("", "v1", "Pod"), opted_out, false);
    let response = answer(&mut client, &review).await;
    assert_eq!(response["allowed"], true, "{response}");
    assert!(response.get("patch").is_none(), "{response}");
    assert!(response.get("patchType").is_none(), "{response}");
    assert!(provisioner.calls().is_empty());
}

#[tokio::test]
async fn an_injection_error_is_a_denial_with_its_message() {
    let provisioner = Arc::new(FakeProvisioner::default());
    let server = Server::start(Some(provisioner.clone())).await;
    let mut client = server.client().await;

    let mut bad = pod("web", "web");
    bad["metadata"]["annotations"]["meshd.io/no-such-setting"] = json!("1");
    let review = review_of("uid-bad-annotation", ("", "v1", "Pod"), bad, false);
    let response = answer(&mut client, &review).await;
    let message = denial_message(&response);
    assert!(message.contains("meshd.io/no-such-setting"), "{message}");
    assert_eq!(response["status"]["code"], 400, "{response}");
    assert!(provisioner.calls().is_empty());
}

#[tokio::test]
async fn a_jobs_pod_with_a_classic_sidecar_is_denied_and_with_a_native_one_injected() {
    let provisioner = Arc::new(FakeProvisioner::default());
    let server = Server::start(Some(provisioner.clone())).await;
    let mut client = server.client().await;

    // As the Job controller creates it: owned by the Job, run to completion.
    let mut job_pod = pod("db-migrate", "migrator");
    job_pod["metadata"]["ownerReferences"] = json!([{
        "apiVersion": "batch/v1", "kind": "Job", "name": "db-migrate",
        "uid": "0b6d3c1e-5f1a-4c3b-9d7e-2a4b6c8d0e1f", "controller": true, "blockOwnerDeletion": true
    }]);
    job_pod["spec"]["restartPolicy"] = json!("Never");
    let mut classic = job_pod.clone();
    classic["metadata"]["annotations"]["meshd.io/native-sidecar"] = json!("false");
    let review = review_of("uid-job-classic", ("", "v1", "Pod"), classic, false);
    let response = answer(&mut client, &review).await;
    let message = denial_message(&response);
    for part in [
        "spec.restartPolicy is Never (the pod of Job db-migrate)",
        "never complete",
        "meshd.io/native-sidecar: \"true\"",
    ] {
        assert!(message.contains(part), "{part}: {message}");
    }
    assert!(provisioner.calls().is_empty());

    // The mesh's native sidecar: injected, the proxy an init container the
    // kubelet stops once the job's container has exited.
    let review = review_of("uid-job-native", ("", "v1", "Pod"), job_pod.clone(), false);
    let response = answer(&mut client, &review).await;
    let patched = apply_patch(&response, job_pod);
    let proxy = patched["spec"]["initContainers"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == "meshd-proxy"))
        .unwrap_or_else(|| panic!("no native meshd-proxy in {patched}"));
    assert_eq!(proxy["restartPolicy"], "Always", "{proxy}");
}

#[tokio::test]
async fn other_kinds_and_undecodable_pods_are_denied_naming_what_is_wrong() {
    let server = Server::start(None).await;
    let mut client = server.client().await;

    let deployment = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": {"selector": {"matchLabels": {"app": "web"}}, "template": {"spec": {"containers": []}}}
    });
    let review = review_of(
        "uid-deploy",
        ("apps", "v1", "Deployment"),
        deployment.clone(),
        false,
    );
    let message = denial_message(&answer(&mut client, &review).await);
    assert!(message.contains("apps/v1 Deployment"), "{message}");
    assert!(
        message.contains("v1 Pod"),
        "says what is accepted: {message}"
    );

    // Claims to be a Pod, carries a Deployment.
    let review = review_of("uid-disguised", ("", "v1", "Pod"), deployment, false);
    let message = denial_message(&answer(&mut client, &review).await);
    assert!(message.contains("request.object"), "{message}");
    assert!(message.contains("Deployment"), "{message}");

    // A Pod whose field has the wrong type: the message names the field.
    let mut broken = pod("web", "web");
    broken["spec"]["containers"][0]["ports"][0]["containerPort"] = json!("eighty");
    let review = review_of("uid-broken", ("", "v1", "Pod"), broken, false);
    let message = denial_message(&answer(&mut client, &review).await);
    assert!(
        message.contains("request.object.spec.containers[0].ports[0].containerPort"),
        "{message}"
    );

    // A request missing a required field is denied, still answering its uid.
    let mut review = pod_review("uid-no-user", false);
    review["request"]
        .as_object_mut()
        .expect("a request")
        .remove("userInfo");
    let message = denial_message(&answer(&mut client, &review).await);
    assert!(message.contains("userInfo"), "{message}");
}

#[tokio::test]
async fn updates_pass_untouched() {
    let provisioner = Arc::new(FakeProvisioner::default());
    let server = Server::start(Some(provisioner.clone())).await;
    let mut client = server.client().await;

    let mut review = pod_review("uid-update", false);
    review["request"]["operation"] = json!("UPDATE");
    review["request"]["oldObject"] = pod("web", "web");
    let response = answer(&mut client, &review).await;
    assert_eq!(response["allowed"], true, "{response}");
    assert!(response.get("patch").is_none(), "{response}");
    assert!(provisioner.calls().is_empty());
}

#[tokio::test]
async fn bad_envelopes_are_http_400_with_a_message() {
    let server = Server::start(None).await;
    let mut client = server.client().await;
    let send = |body: &str| body.as_bytes().to_vec();

    let cases: Vec<(Vec<u8>, &[&str])> = vec![
        (
            send("{\"apiVersion\": "),
            &["not valid JSON", "AdmissionReview"],
        ),
        (send(""), &["empty", "AdmissionReview"]),
        (send("[1, 2]"), &["array", "AdmissionReview"]),
        (
            pod_review("u", false)
                .as_object()
                .map(|r| {
                    let mut r = r.clone();
                    r.insert("apiVersion".into(), json!("admission.k8s.io/v1beta1"));
                    Value::Object(r).to_string().into_bytes()
                })
                .expect("a review"),
            &[
                "`admission.k8s.io/v1beta1`",
                "accepted: apiVersion admission.k8s.io/v1",
            ],
        ),
        (
            {
                let mut r = pod_review("u", false);
                r["kind"] = json!("ConversionReview");
                r.to_string().into_bytes()
            },
            &["`ConversionReview`", "kind AdmissionReview"],
        ),
        (
            send("{\"apiVersion\": \"admission.k8s.io/v1\", \"kind\": \"AdmissionReview\"}"),
            &["has no request"],
        ),
        (
            {
                let mut r = pod_review("u", false);
                r["request"]
                    .as_object_mut()
                    .expect("a request")
                    .remove("uid");
                r.to_string().into_bytes()
            },
            &["request.uid"],
        ),
    ];
    for (body, expected) in cases {
        let (status, answer) = tokio::time::timeout(WAIT, client.request("POST", "/inject", body))
            .await
            .expect("an answer in time")
            .expect("an HTTP answer");
        let answer = String::from_utf8_lossy(&answer);
        assert_eq!(status, 400, "{answer}");
        for fragment in expected {
            assert!(
                answer.contains(fragment),
                "expected {fragment:?} in {answer:?}"
            );
        }
    }

    let (status, answer) = client
        .request("GET", "/inject", vec![])
        .await
        .expect("an HTTP answer");
    assert_eq!(status, 405);
    assert!(String::from_utf8_lossy(&answer).contains("POST /inject"));
    let (status, _) = client
        .request("GET", "/nowhere", vec![])
        .await
        .expect("an HTTP answer");
    assert_eq!(status, 404);
}

#[tokio::test]
async fn an_oversized_body_is_refused_with_a_message() {
    let server = Server::start(None).await;
    let mut client = server.client().await;

    // Just over the limit: a JSON string inside an otherwise valid review.
    let mut review = pod_review("uid-huge", false);
    review["request"]["object"]["metadata"]["annotations"]["padding"] =
        json!("x".repeat(MAX_BODY_BYTES));
    let (status, body) = post(&mut client, &review).await;
    assert_eq!(status, 413, "{body}");
    assert!(body.contains("larger than 4 MiB"), "{body}");

    // The server is still serving.
    let mut client = server.client().await;
    answer(&mut client, &pod_review("uid-after", true)).await;
}

#[tokio::test]
async fn health_and_readiness() {
    let server = Server::start(None).await;
    let mut client = server.client().await;
    for path in ["/healthz", "/readyz"] {
        let (status, body) = client
            .request("GET", path, vec![])
            .await
            .expect("an HTTP answer");
        assert_eq!(status, 200, "{path}: {}", String::from_utf8_lossy(&body));
    }
}

#[tokio::test]
async fn clients_that_do_not_trust_the_ca_or_dial_another_name_cannot_connect() {
    let server = Server::start(None).await;

    let other_dir = tempfile::tempdir().expect("a temporary directory");
    let other_ca = authority(other_dir.path());
    let refused = Client::connect(server.addr, &other_ca.trust_anchors(), SERVICE_DNS).await;
    let error = refused.err().expect("an untrusted CA is refused");
    assert!(error.contains("TLS handshake"), "{error}");

    let refused = Client::connect(
        server.addr,
        &server.ca.trust_anchors(),
        "meshd.other-namespace.svc",
    )
    .await;
    let error = refused
        .err()
        .expect("a name the certificate does not carry is refused");
    assert!(error.contains("TLS handshake"), "{error}");

    // A failed handshake does not disturb the server.
    let mut client = server.client().await;
    answer(&mut client, &pod_review("uid-ok", true)).await;
}

#[tokio::test]
async fn the_serving_certificate_is_reissued_after_a_ca_change_without_a_restart() {
    let server = Server::start(None).await;
    let before = server.client().await.server_cert;
    let again = server.client().await.server_cert;
    assert_eq!(before, again, "a current certificate is reused");

    server.generation.fetch_add(1, Ordering::SeqCst);
    let mut client = server.client().await;
    assert_ne!(
        before, client.server_cert,
        "new connections get a new certificate"
    );
    answer(&mut client, &pod_review("uid-rotated", true)).await;
}

#[tokio::test]
async fn a_stalled_handshake_does_not_hold_up_other_clients() {
    let server = Server::start(None).await;
    // Connects and never says a word.
    let _silent = tokio::net::TcpStream::connect(server.addr)
        .await
        .expect("a TCP connection");
    let mut client = tokio::time::timeout(WAIT, server.client())
        .await
        .expect("the next client is served while the silent one waits");
    answer(&mut client, &pod_review("uid-next", true)).await;
}

// --- the validating webhook for routing annotations -----------------------

/// Posts `review` to `/validate` and returns its `response` (HTTP 200, a
/// v1 AdmissionReview answering its uid).
async fn validation(client: &mut Client, review: &Value) -> Value {
    let uid = review["request"]["uid"]
        .as_str()
        .expect("a uid")
        .to_string();
    let (status, body) = tokio::time::timeout(
        WAIT,
        client.request("POST", VALIDATE_PATH, review.to_string().into_bytes()),
    )
    .await
    .expect("an answer in time")
    .expect("an HTTP answer");
    let body = String::from_utf8_lossy(&body);
    assert_eq!(status, 200, "{body}");
    let answer: Value = serde_json::from_str(&body).expect("a JSON answer");
    assert_eq!(answer["apiVersion"], "admission.k8s.io/v1", "{answer}");
    assert_eq!(answer["kind"], "AdmissionReview", "{answer}");
    let response = answer["response"].clone();
    assert_eq!(response["uid"], uid.as_str(), "{answer}");
    assert!(response.get("patch").is_none(), "{response}");
    response
}

fn service(annotations: Value) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "reviews", "namespace": "shop", "annotations": annotations,
                     "labels": {"app": "reviews"}},
        "spec": {"clusterIP": "198.19.0.20", "clusterIPs": ["198.19.0.20"], "type": "ClusterIP",
                 "selector": {"app": "reviews"},
                 "ports": [{"name": "http", "port": 9080, "protocol": "TCP", "targetPort": 9080}]},
        "status": {"loadBalancer": {}}
    })
}

#[tokio::test]
async fn a_service_with_a_bad_routing_annotation_is_refused_with_what_is_accepted() {
    let server = Server::start(None).await;
    let mut client = server.client().await;

    let review = review_of(
        "uid-svc-bad",
        ("", "v1", "Service"),
        service(json!({"meshd.io/retries": "3", "meshd.io/timeout": "fast"})),
        false,
    );
    let response = validation(&mut client, &review).await;
    let message = denial_message(&response);
    assert!(
        message.starts_with(
            "invalid meshd annotation: Service shop/reviews: annotation meshd.io/timeout = \"fast\": \
             `fast` is not a duration; accepted: a duration: whole numbers with a unit ms, s, m or h"
        ),
        "{message}"
    );
    assert_eq!(response["status"]["code"], 400, "{response}");

    // A dry run gets the same answer: validation has no side effects.
    let mut dry = review.clone();
    dry["request"]["dryRun"] = json!(true);
    dry["request"]["uid"] = json!("uid-svc-dry");
    assert_eq!(
        denial_message(&validation(&mut client, &dry).await),
        message
    );

    let review = review_of(
        "uid-svc-good",
        ("", "v1", "Service"),
        service(json!({"meshd.io/retries": "3", "meshd.io/timeout": "5s",
                       "meshd.io/traffic-split": "reviews-v1=90,reviews-v2=10"})),
        false,
    );
    let response = validation(&mut client, &review).await;
    assert_eq!(response["allowed"], true, "{response}");
}

#[tokio::test]
async fn a_namespace_with_a_bad_default_is_refused_and_a_good_one_allowed() {
    let server = Server::start(None).await;
    let mut client = server.client().await;
    let namespace = |annotations: Value| {
        let mut review = review_of(
            "uid-ns",
            ("", "v1", "Namespace"),
            json!({"apiVersion": "v1", "kind": "Namespace",
                   "metadata": {"name": "shop", "annotations": annotations},
                   "spec": {"finalizers": ["kubernetes"]}}),
            false,
        );
        review["request"]["namespace"] = Value::Null;
        review["request"]["name"] = json!("shop");
        review
    };

    let response = validation(
        &mut client,
        &namespace(json!({"meshd.io/load-balancer": "fastest", "meshd.io/egress": "shop"})),
    )
    .await;
    let message = denial_message(&response);
    assert!(
        message.starts_with("2 invalid meshd annotations:\n"),
        "{message}"
    );
    assert!(
        message.contains(
            "Namespace shop: annotation meshd.io/egress = \"shop\": `shop` is not namespace/service"
        ),
        "{message}"
    );
    assert!(
        message.contains("Namespace shop: annotation meshd.io/load-balancer = \"fastest\""),
        "{message}"
    );

    let response = validation(
        &mut client,
        &namespace(json!({"meshd.io/load-balancer": "least-request", "meshd.io/mtls": "STRICT"})),
    )
    .await;
    assert_eq!(response["allowed"], true, "{response}");
}

#[tokio::test]
async fn validation_allows_deletes_and_unchanged_problems_and_names_undecodable_fields() {
    let server = Server::start(None).await;
    let mut client = server.client().await;
    let bad = service(json!({"meshd.io/timeout": "fast"}));

    let mut delete = review_of("uid-del", ("", "v1", "Service"), Value::Null, false);
    delete["request"]["operation"] = json!("DELETE");
    delete["request"]["oldObject"] = bad.clone();
    let response = validation(&mut client, &delete).await;
    assert_eq!(response["allowed"], true, "{response}");

    // Relabelling a Service stored with a bad value before the webhook
    // existed: allowed, with a warning kubectl prints.
    let mut relabelled = bad.clone();
    relabelled["metadata"]["labels"]["team"] = json!("books");
    let mut update = review_of("uid-upd", ("", "v1", "Service"), relabelled, false);
    update["request"]["operation"] = json!("UPDATE");
    update["request"]["oldObject"] = bad.clone();
    let response = validation(&mut client, &update).await;
    assert_eq!(response["allowed"], true, "{response}");
    let warning = response["warnings"][0].as_str().expect("a warning");
    assert!(warning.contains("meshd.io/timeout = \"fast\""), "{warning}");

    // An annotation value that is not a string: a denial naming the field.
    let mut broken = bad;
    broken["metadata"]["annotations"]["meshd.io/retries"] = json!(3);
    let review = review_of("uid-broken", ("", "v1", "Service"), broken, false);
    let message = denial_message(&validation(&mut client, &review).await);
    assert!(
        message.contains("request.object.metadata.annotations.meshd.io/retries"),
        "{message}"
    );
}

/// An HTTPRoute `reviews` in `shop` whose rule splits 90/10 and carries
/// `filters`, attached to `parent_refs`, as `kubectl apply` sends it.
fn http_route(parent_refs: Value, filters: Value) -> Value {
    json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": {"name": "reviews", "namespace": "shop", "generation": 1,
                     "uid": "5b1f0c84-7d0e-4f7c-9c1e-2a1f0a9b8c7d"},
        "spec": {
            "parentRefs": parent_refs,
            "rules": [{
                "matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
                "filters": filters,
                "backendRefs": [{"name": "reviews-v1", "port": 9080, "weight": 90},
                                {"name": "reviews-v2", "port": 9080, "weight": 10}]
            }]
        }
    })
}

#[tokio::test]
async fn an_http_route_on_a_service_is_checked_and_one_on_gateways_only_is_not() {
    let server = Server::start(None).await;
    let mut client = server.client().await;
    let route = ("gateway.networking.k8s.io", "v1", "HTTPRoute");
    let service_parent = json!([{"group": "", "kind": "Service", "name": "reviews", "port": 9080}]);
    let gateway_parent = json!([{"group": "gateway.networking.k8s.io", "kind": "Gateway",
                                 "name": "ingress", "namespace": "edge"}]);
    // ReplacePrefixMatch needs a PathPrefix match; an Exact one has no
    // prefix to replace.
    let rewrite = json!([{"type": "URLRewrite",
                          "urlRewrite": {"path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/v2"}}}]);
    let mut bad = http_route(service_parent.clone(), rewrite.clone());
    bad["spec"]["rules"][0]["matches"][0]["path"] = json!({"type": "Exact", "value": "/reviews"});

    let response = validation(
        &mut client,
        &review_of("uid-route-bad", route, bad.clone(), false),
    )
    .await;
    let message = denial_message(&response);
    assert!(
        message.starts_with(
            "invalid mesh route: HTTPRoute shop/reviews: spec.rules[0].filters: \
             ReplacePrefixMatch needs every match of the rule to be a PathPrefix match; accepted: "
        ),
        "{message}"
    );
    assert_eq!(response["status"]["code"], 400, "{response}");

    // The same defect on a route attached only to a Gateway: another
    // controller's route, allowed without a word.
    let mut gateway_only = bad.clone();
    gateway_only["spec"]["parentRefs"] = gateway_parent;
    let response = validation(
        &mut client,
        &review_of("uid-route-gateway", route, gateway_only, false),
    )
    .await;
    assert_eq!(response["allowed"], true, "{response}");
    assert!(response.get("warnings").is_none(), "{response}");

    // A good mesh route: a 90/10 split with a rewrite, its backends not
    // checked for existence (that is the route's ResolvedRefs condition).
    let response = validation(
        &mut client,
        &review_of(
            "uid-route-good",
            route,
            http_route(service_parent, rewrite),
            false,
        ),
    )
    .await;
    assert_eq!(response["allowed"], true, "{response}");

    // A GRPCRoute on a Service with a filter only HTTPRoutes have.
    let grpc = json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "GRPCRoute",
        "metadata": {"name": "echo", "namespace": "shop"},
        "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "echo", "port": 7070}],
                 "rules": [{"filters": [{"type": "ExtensionRef",
                                         "extensionRef": {"group": "example.com", "kind": "Retry", "name": "r"}}],
                            "backendRefs": [{"name": "echo-v1", "port": 7070}]}]}
    });
    let message = denial_message(
        &validation(
            &mut client,
            &review_of(
                "uid-grpc-bad",
                ("gateway.networking.k8s.io", "v1", "GRPCRoute"),
                grpc,
                false,
            ),
        )
        .await,
    );
    assert!(
        message.starts_with(
            "invalid mesh route: GRPCRoute shop/echo: spec.rules[0].filters[0].type: \
             ExtensionRef is not supported by meshd for GRPCRoute; accepted: "
        ),
        "{message}"
    );
}

#[tokio::test]
async fn validation_answers_bad_envelopes_like_injection() {
    let server = Server::start(None).await;
    let mut client = server.client().await;
    for (body, expected) in [
        ("", "empty"),
        ("{\"apiVersion\": ", "not valid JSON"),
        (
            "{\"apiVersion\": \"admission.k8s.io/v1\", \"kind\": \"AdmissionReview\"}",
            "has no request",
        ),
    ] {
        let (status, answer) = client
            .request("POST", VALIDATE_PATH, body.as_bytes().to_vec())
            .await
            .expect("an HTTP answer");
        let answer = String::from_utf8_lossy(&answer);
        assert_eq!(status, 400, "{answer}");
        assert!(answer.contains(expected), "{expected:?} in {answer:?}");
    }
    let (status, answer) = client
        .request("GET", VALIDATE_PATH, vec![])
        .await
        .expect("an HTTP answer");
    assert_eq!(status, 405);
    assert!(String::from_utf8_lossy(&answer).contains("POST /validate"));
}
