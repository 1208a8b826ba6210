//! Registry fixtures: the Kubernetes-shaped YAML the file source reads.

use std::net::IpAddr;

pub fn namespace(name: &str) -> String {
    format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: {name}}}\n")
}

/// A service with one HTTP port.
pub fn http_service(namespace: &str, name: &str, vip: &str, port: u16) -> String {
    http_service_with(namespace, name, vip, port, &[])
}

/// [`http_service`] with annotations (routing: `meshd.io/timeout`, …).
/// Values are single-quoted, so JSON and commas pass through as written.
pub fn http_service_with(
    namespace: &str,
    name: &str,
    vip: &str,
    port: u16,
    annotations: &[(&str, &str)],
) -> String {
    let mut metadata = format!("metadata:\n  name: {name}\n  namespace: {namespace}\n");
    if !annotations.is_empty() {
        metadata.push_str("  annotations:\n");
        for (key, value) in annotations {
            metadata.push_str(&format!("    {key}: '{}'\n", value.replace('\'', "''")));
        }
    }
    format!(
        "apiVersion: v1\nkind: Service\n{metadata}spec:\n  clusterIP: {vip}\n  ports: [{{name: http, port: {port}}}]\n"
    )
}

/// An EndpointSlice of `service` with one endpoint per `(pod, ip)`, all on
/// `target_port` (the port name `http` matches [`http_service`]).
pub fn slice(
    namespace: &str,
    name: &str,
    service: &str,
    target_port: u16,
    endpoints: &[(&str, IpAddr)],
) -> String {
    let mut eps = String::new();
    for (pod, ip) in endpoints {
        eps.push_str(&format!(
            "- addresses: [\"{ip}\"]\n  targetRef: {{kind: Pod, name: {pod}}}\n"
        ));
    }
    let family = if endpoints.iter().all(|(_, ip)| ip.is_ipv4()) {
        "IPv4"
    } else {
        "IPv6"
    };
    format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}\n  namespace: {namespace}\n  labels: {{kubernetes.io/service-name: {service}}}\naddressType: {family}\nports: [{{name: http, port: {target_port}}}]\nendpoints:\n{eps}"
    )
}

/// A pod; `capture` false marks it `meshd.io/interception: none`. Its
/// service account is named after it.
pub fn pod(namespace: &str, name: &str, ip: IpAddr, capture: bool) -> String {
    pod_with(namespace, name, ip, capture, &[])
}

/// [`pod`] with more annotations (e.g. `meshd.io/mtls`).
pub fn pod_with(
    namespace: &str,
    name: &str,
    ip: IpAddr,
    capture: bool,
    extra: &[(&str, &str)],
) -> String {
    let mut pairs: Vec<String> = extra.iter().map(|(k, v)| format!("{k}: {v}")).collect();
    if !capture {
        pairs.push("meshd.io/interception: none".into());
    }
    let annotations = if pairs.is_empty() {
        String::new()
    } else {
        format!("\n  annotations: {{{}}}", pairs.join(", "))
    };
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {namespace}{annotations}\nspec:\n  serviceAccountName: {name}\n  containers: [{{name: app, image: app}}]\nstatus:\n  podIP: \"{ip}\"\n"
    )
}

/// Joins documents into one multi-document file.
pub fn documents(docs: &[String]) -> String {
    docs.join("---\n")
}
