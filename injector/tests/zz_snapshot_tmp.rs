//! TEMPORARY (not to be committed): records webhook answers for comparison.
#[path = "webhook_support/mod.rs"]
mod webhook_support;
use serde_json::{json, Value};
use webhook_support::{FakeProvisioner, Server, pod, review_of};
use std::sync::Arc;

fn shapes() -> Vec<Value> {
    let mut v = vec![pod("app-00", "app-00"), pod("web", "web")];
    let mut p = pod("a", "a");
    p["metadata"]["annotations"]["meshd.io/native-sidecar"] = json!("false");
    v.push(p.clone());
    p["metadata"]["annotations"]["meshd.io/interception"] = json!("none");
    v.push(p.clone());
    p["spec"]["initContainers"] = json!([]);
    v.push(p.clone());
    let mut q = pod("b", "b");
    q["metadata"].as_object_mut().unwrap().remove("labels");
    q["metadata"].as_object_mut().unwrap().remove("annotations");
    q["spec"].as_object_mut().unwrap().remove("volumes");
    q["metadata"]["annotations"] = json!({"meshd.io/proxy-cpu": "200m", "meshd.io/log-level": "debug", "meshd.io/exclude-outbound-ports": "5432"});
    v.push(q.clone());
    q["metadata"]["labels"] = json!({"meshd.io/proxy": "false", "x": "y"});
    q["metadata"]["annotations"]["kubectl.kubernetes.io/default-container"] = json!("other");
    q["metadata"]["annotations"]["meshd.io/native-sidecar"] = json!("false");
    v.push(q.clone());
    let mut r = pod("c", "c");
    r["metadata"]["labels"]["meshd.io/inject"] = json!("false");
    v.push(r);
    let mut r = pod("d", "d");
    r["metadata"]["annotations"]["meshd.io/proxy-cpu"] = json!("9");
    v.push(r);
    v
}

#[tokio::test]
async fn snapshot() {
    let dir = std::env::var("SNAP_DIR").unwrap();
    std::fs::create_dir_all(&dir).unwrap();
    let server = Server::start(Some(Arc::new(FakeProvisioner::default()))).await;
    let mut client = server.client().await;
    for (i, p) in shapes().into_iter().enumerate() {
        let review = review_of(&format!("uid-{i}"), ("", "v1", "Pod"), p, false);
        let (status, raw) = client.post_review(&review).await.unwrap();
        std::fs::write(format!("{dir}/{i}.txt"), format!("{status}\n{}", String::from_utf8_lossy(&raw))).unwrap();
    }
}
