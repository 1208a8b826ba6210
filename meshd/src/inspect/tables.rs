//! The readable forms: status lines and per-type tables, from the debug
//! endpoints' JSON.

use serde_json::{Value, json};

use super::{ConfigType, Filter};

/// How `meshd proxy-config` prints.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    #[default]
    Table,
    Json,
    Yaml,
}

/// Left-aligned columns, two spaces apart.
struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    fn new(headers: &[&str]) -> Self {
        Table {
            rows: vec![headers.iter().map(|h| h.to_string()).collect()],
        }
    }

    fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    fn render(&self) -> String {
        let columns = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let widths: Vec<usize> = (0..columns)
            .map(|c| {
                self.rows
                    .iter()
                    .filter_map(|r| r.get(c))
                    .map(|s| s.chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut out = String::new();
        for row in &self.rows {
            let mut line = String::new();
            for (c, cell) in row.iter().enumerate() {
                if c + 1 == row.len() {
                    line.push_str(cell);
                } else {
                    line.push_str(&format!("{cell:<width$}  ", width = widths[c]));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn protocol(p: &Value) -> &'static str {
    match p.as_str() {
        Some("delta") => "Delta",
        Some("sotw") => "SotW",
        _ => "?",
    }
}

const TYPES: [&str; 5] = ["CDS", "EDS", "LDS", "RDS", "SDS"];

fn type_status(proxy: &Value, t: &str) -> String {
    proxy["types"][t]["status"]
        .as_str()
        .unwrap_or("NOT SENT")
        .to_string()
}

fn identity(proxy: &Value) -> String {
    proxy["certificate"]["spiffe_id"]
        .as_str()
        .or(proxy["peer_identity"].as_str())
        .unwrap_or("-")
        .to_string()
}

/// One line per proxy (sorted by proxy, then replica), then each NACK.
pub fn status_list(rows: &mut [(String, Value)]) -> String {
    rows.sort_by(|a, b| (a.1["node_id"].as_str(), &a.0).cmp(&(b.1["node_id"].as_str(), &b.0)));
    let mut table = Table::new(&[
        "NAME",
        "IDENTITY",
        "PROTOCOL",
        "REPLICA",
        "CDS",
        "EDS",
        "LDS",
        "RDS",
        "SDS",
        "CERT NOT AFTER",
    ]);
    let mut nacks = String::new();
    for (replica, p) in rows.iter() {
        let node = text(&p["node_id"]);
        let mut cells = vec![
            node.clone(),
            identity(p),
            protocol(&p["protocol"]).into(),
            replica.clone(),
        ];
        for t in TYPES {
            let status = type_status(p, t);
            if status == "NACKED" {
                nacks.push_str(&format!(
                    "{node} {t} NACKED: {}\n",
                    text(&p["types"][t]["last_nack_message"])
                ));
            }
            cells.push(status);
        }
        cells.push(text(&p["certificate"]["not_after"]));
        table.row(cells);
    }
    let mut out = table.render();
    if rows.is_empty() {
        out.push_str("(no proxies connected)\n");
    }
    out.push_str(&nacks);
    out
}

/// One proxy in detail.
pub fn status_detail(replica: &str, p: &Value) -> String {
    let mut out = String::new();
    out.push_str(&format!("Proxy:        {}\n", text(&p["node_id"])));
    out.push_str(&format!("Replica:      {replica}\n"));
    out.push_str(&format!("Protocol:     {}\n", protocol(&p["protocol"])));
    out.push_str(&format!("Identity:     {}\n", identity(p)));
    out.push_str(&format!(
        "In the mesh:  {}\n",
        match p["known_workload"].as_bool() {
            Some(true) => "yes",
            _ => "no (no workload with this node id yet: nothing is sent)",
        }
    ));
    match p["certificate"].is_object() {
        true => out.push_str(&format!(
            "Certificate:  serial {}, not after {}\n",
            text(&p["certificate"]["serial"]),
            text(&p["certificate"]["not_after"])
        )),
        false => out.push_str("Certificate:  none issued\n"),
    }
    out.push('\n');
    let mut table = Table::new(&["TYPE", "STATUS", "SENT", "ACKNOWLEDGED", "RESOURCES"]);
    for t in TYPES {
        let s = &p["types"][t];
        table.row(vec![
            t.into(),
            type_status(p, t),
            text(&s["sent_version"]).replace("\"\"", "-"),
            text(&s["acked_version"]),
            text(&s["resources"]),
        ]);
    }
    out.push_str(&table.render());
    for t in TYPES {
        let s = &p["types"][t];
        if let Some(message) = s["last_nack_message"].as_str() {
            out.push_str(&format!(
                "\nLast {t} NACK (version {}): {message}\n",
                text(&s["last_nack_version"])
            ));
        }
    }
    out
}

/// Where a type's resources sit in its config dump: the list, and in each
/// entry the resource and its name.
pub type Layout = (&'static str, fn(&Value) -> &Value, fn(&Value) -> String);

pub fn layout(t: ConfigType) -> Layout {
    match t {
        ConfigType::Cluster => (
            "dynamic_active_clusters",
            |e| &e["cluster"],
            |e| text(&e["cluster"]["name"]),
        ),
        ConfigType::Endpoint => (
            "dynamic_endpoint_configs",
            |e| &e["endpoint_config"],
            |e| text(&e["endpoint_config"]["cluster_name"]),
        ),
        ConfigType::Listener => (
            "dynamic_listeners",
            |e| &e["active_state"]["listener"],
            |e| text(&e["name"]),
        ),
        ConfigType::Route => (
            "dynamic_route_configs",
            |e| &e["route_config"],
            |e| text(&e["route_config"]["name"]),
        ),
        ConfigType::Secret | ConfigType::All => (
            "dynamic_active_secrets",
            |e| &e["secret"],
            |e| text(&e["name"]),
        ),
    }
}

/// The entries of type `t` in a config dump (`{"configs": [...]}`).
pub fn entries(dump: &Value, t: ConfigType) -> Vec<&Value> {
    let (key, _, _) = layout(t);
    dump["configs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["@type"] == t.dump_type())
        .flat_map(|c| c[key].as_array().into_iter().flatten())
        .collect()
}

/// The parts of the dump of the types shown.
pub fn dump_of(config: &Value, shown: &[ConfigType]) -> Value {
    let configs: Vec<&Value> = config["config_dump"]["configs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| shown.iter().any(|t| c["@type"] == t.dump_type()))
        .collect();
    json!({ "configs": configs })
}

fn cluster_port(name: &str) -> Option<u16> {
    name.split('|').nth(1).and_then(|p| p.parse().ok())
}

fn cluster_host(name: &str) -> &str {
    name.rsplit('|').next().unwrap_or(name)
}

/// Where a filter chain sends traffic: its route configuration or cluster.
fn chain_destinations(chain: &Value) -> Vec<String> {
    chain["filters"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|f| {
            let c = &f["typed_config"];
            if let Some(route) = c["rds"]["route_config_name"].as_str() {
                Some(format!("route {route}"))
            } else if let Some(route) = c["route_config"]["name"].as_str() {
                Some(format!("route {route} (inline)"))
            } else {
                c["cluster"].as_str().map(|c| format!("cluster {c}"))
            }
        })
        .collect()
}

fn chains(listener: &Value) -> Vec<(String, &Value)> {
    let mut chains: Vec<(String, &Value)> = listener["filter_chains"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
        .map(|(i, c)| {
            (
                c["name"].as_str().map_or(format!("#{i}"), str::to_string),
                c,
            )
        })
        .collect();
    if listener["default_filter_chain"].is_object() {
        chains.push(("(default)".into(), &listener["default_filter_chain"]));
    }
    chains
}

fn matches(t: ConfigType, name: &str, resource: &Value, filter: &Filter) -> bool {
    if filter.name.as_deref().is_some_and(|n| n != name) {
        return false;
    }
    match t {
        ConfigType::Cluster | ConfigType::Endpoint => {
            filter
                .fqdn
                .as_deref()
                .is_none_or(|f| cluster_host(name) == f)
                && filter.port.is_none_or(|p| cluster_port(name) == Some(p))
        }
        ConfigType::Listener => {
            let port = resource["address"]["socket_address"]["port_value"].as_u64();
            let chains = chains(resource);
            filter.fqdn.as_deref().is_none_or(|f| {
                chains.iter().any(|(n, c)| {
                    n.contains(f) || chain_destinations(c).iter().any(|d| d.contains(f))
                })
            }) && filter.port.is_none_or(|p| {
                port == Some(p.into())
                    || chains
                        .iter()
                        .any(|(_, c)| c["filter_chain_match"]["destination_port"] == p)
            })
        }
        // Virtual hosts are filtered inside ([`apply_filter`]).
        ConfigType::Route | ConfigType::Secret | ConfigType::All => true,
    }
}

fn vhost_matches(vh: &Value, filter: &Filter) -> bool {
    let domains: Vec<&str> = vh["domains"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    filter.fqdn.as_deref().is_none_or(|f| {
        domains
            .iter()
            .any(|d| *d == f || d.strip_prefix(f).is_some_and(|rest| rest.starts_with(':')))
    }) && filter.port.is_none_or(|p| {
        let suffix = format!(":{p}");
        domains.iter().any(|d| d.ends_with(&suffix))
    })
}

/// Keeps, in `config`'s dump, what `filter` asks for.
pub fn apply_filter(config: &mut Value, filter: &Filter) {
    let Some(configs) = config
        .pointer_mut("/config_dump/configs")
        .and_then(Value::as_array_mut)
    else {
        return;
    };
    for part in configs {
        let Some(t) = ConfigType::EACH
            .into_iter()
            .find(|t| part["@type"] == t.dump_type())
        else {
            continue;
        };
        let (key, resource, name) = layout(t);
        let Some(list) = part.get_mut(key).and_then(Value::as_array_mut) else {
            continue;
        };
        list.retain(|e| matches(t, &name(e), resource(e), filter));
        if t == ConfigType::Route && (filter.fqdn.is_some() || filter.port.is_some()) {
            for entry in list.iter_mut() {
                if let Some(vhs) = entry
                    .pointer_mut("/route_config/virtual_hosts")
                    .and_then(Value::as_array_mut)
                {
                    vhs.retain(|vh| vhost_matches(vh, filter));
                }
            }
            list.retain(|e| {
                e["route_config"]["virtual_hosts"]
                    .as_array()
                    .is_some_and(|v| !v.is_empty())
            });
        }
    }
}

/// Every table asked for, each under a line with its type's status.
pub fn config_tables(config: &Value, shown: &[ConfigType]) -> String {
    let dump = &config["config_dump"];
    let mut out = format!(
        "Proxy {} ({}), as the control plane sent it\n",
        text(&config["node_id"]),
        protocol(&config["protocol"])
    );
    for &t in shown {
        let status = &config["types"][t.xds()];
        out.push_str(&format!(
            "\n{} {}: sent {}, acknowledged {}\n",
            t.xds(),
            status["status"].as_str().unwrap_or("NOT SENT"),
            text(&status["sent_version"]),
            if status["acked_version"] == "" {
                "-".into()
            } else {
                text(&status["acked_version"])
            },
        ));
        if let Some(m) = status["last_nack_message"].as_str() {
            out.push_str(&format!("last NACK: {m}\n"));
        }
        let table = match t {
            ConfigType::Cluster => clusters(dump),
            ConfigType::Endpoint => endpoints(dump),
            ConfigType::Listener => listeners(dump, &config["acknowledged"]["LDS"]),
            ConfigType::Route => routes(dump, &config["acknowledged"]["RDS"]),
            ConfigType::Secret | ConfigType::All => secrets(config),
        };
        out.push_str(&table.render());
        if t == ConfigType::Listener {
            out.push_str(&authorization(&config["authorization"]));
        }
    }
    out
}

/// Who may call the workload, by the Services it serves: what its inbound
/// listener's RBAC filters enforce, in the annotations' terms.
fn authorization(a: &Value) -> String {
    if !a.is_object() {
        return String::new();
    }
    let mut out = format!(
        "
Authorization (inbound); ports no Service declares: {}
",
        text(&a["undeclared_ports"])
    );
    let rules = |v: &Value| {
        let rules: Vec<String> = v.as_array().into_iter().flatten().map(text).collect();
        match rules.is_empty() {
            true => "-".to_string(),
            false => rules.join("; "),
        }
    };
    let mut table = Table::new(&["SERVICE", "MODE", "DEFAULT", "ALLOW", "DENY"]);
    for s in a["services"].as_array().into_iter().flatten() {
        table.row(vec![
            text(&s["service"]),
            text(&s["mode"]),
            text(&s["default"]),
            rules(&s["allow"]),
            rules(&s["deny"]),
        ]);
    }
    out.push_str(&table.render());
    out
}

/// The proxy's authorization denials by caller and port, from its
/// Prometheus text at `admin` (`envoy_authorization_denied` and, in
/// dry-run, `_would_deny`; see the README's "What is counted").
pub fn denials(admin: &str, prometheus: &str) -> String {
    // (service, caller, port) -> (denied, would deny)
    let mut counts: std::collections::BTreeMap<(String, String, String), (u64, u64)> =
        std::collections::BTreeMap::new();
    for line in prometheus.lines() {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let (would, labels) = if let Some(rest) = series.strip_prefix("envoy_authorization_denied{")
        {
            (false, rest)
        } else if let Some(rest) = series.strip_prefix("envoy_authorization_would_deny{") {
            (true, rest)
        } else {
            continue;
        };
        let label = |name: &str| {
            labels
                .split(&format!("{name}=\""))
                .nth(1)
                .and_then(|rest| rest.split('"').next())
                .unwrap_or_default()
                .to_string()
        };
        let Ok(value) = value.parse::<u64>() else {
            continue;
        };
        let entry = counts
            .entry((
                label("destination_service"),
                label("caller_identity"),
                label("destination_port"),
            ))
            .or_default();
        match would {
            false => entry.0 += value,
            true => entry.1 += value,
        }
    }
    let mut out = format!("\nDenied by caller (the proxy's own counters, at {admin}):\n");
    if counts.is_empty() {
        out.push_str("none counted\n");
        return out;
    }
    let mut table = Table::new(&[
        "SERVICE",
        "CALLER",
        "PORT",
        "DENIED",
        "WOULD DENY (DRY-RUN)",
    ]);
    for ((service, caller, port), (denied, would)) in counts {
        let caller = match caller.is_empty() {
            true => "(plaintext, no identity)".to_string(),
            false => caller,
        };
        table.row(vec![
            service,
            caller,
            port,
            denied.to_string(),
            would.to_string(),
        ]);
    }
    out.push_str(&table.render());
    out
}

fn clusters(dump: &Value) -> Table {
    let endpoint_counts: std::collections::BTreeMap<String, usize> =
        entries(dump, ConfigType::Endpoint)
            .into_iter()
            .map(|e| {
                let cla = &e["endpoint_config"];
                (text(&cla["cluster_name"]), lb_endpoints(cla).len())
            })
            .collect();
    let mut table = Table::new(&["NAME", "TYPE", "MTLS", "ENDPOINTS"]);
    for e in entries(dump, ConfigType::Cluster) {
        let c = &e["cluster"];
        let name = text(&c["name"]);
        let kind = c["type"]
            .as_str()
            .or(c["cluster_type"]["name"].as_str())
            .unwrap_or("STATIC")
            .to_string();
        let tls = c["transport_socket"]["typed_config"]["@type"]
            .as_str()
            .is_some_and(|t| t.contains("TlsContext"));
        let mtls = match (tls, c["transport_socket_matches"].is_array()) {
            (true, true) => "yes (plaintext to marked endpoints)",
            (true, false) => "yes",
            (false, _) => "no",
        };
        let endpoints = match kind.as_str() {
            "EDS" => {
                let service = c["eds_cluster_config"]["service_name"]
                    .as_str()
                    .map_or(name.clone(), str::to_string);
                endpoint_counts
                    .get(&service)
                    .map_or("-".into(), ToString::to_string)
            }
            "ORIGINAL_DST" => "-".into(),
            _ => lb_endpoints(&c["load_assignment"]).len().to_string(),
        };
        table.row(vec![name, kind, mtls.into(), endpoints]);
    }
    table
}

fn lb_endpoints(cla: &Value) -> Vec<&Value> {
    cla["endpoints"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|l| l["lb_endpoints"].as_array().into_iter().flatten())
        .collect()
}

fn socket(address: &Value) -> String {
    let s = &address["socket_address"];
    match s["address"].as_str() {
        Some(a) => format!("{a}:{}", s["port_value"].as_u64().unwrap_or(0)),
        None => "-".into(),
    }
}

fn endpoints(dump: &Value) -> Table {
    let mut table = Table::new(&["CLUSTER", "ADDRESS", "HEALTH"]);
    for e in entries(dump, ConfigType::Endpoint) {
        let cla = &e["endpoint_config"];
        for lb in lb_endpoints(cla) {
            table.row(vec![
                text(&cla["cluster_name"]),
                socket(&lb["endpoint"]["address"]),
                lb["health_status"].as_str().unwrap_or("UNKNOWN").into(),
            ]);
        }
    }
    table
}

fn acked_cell(acknowledged: &Value, name: &str, version: &Value) -> String {
    match acknowledged.get(name) {
        Some(v) if v == version => "yes".into(),
        Some(_) => "older version".into(),
        None => "no".into(),
    }
}

fn chain_match(m: &Value) -> String {
    let mut parts = Vec::new();
    if let Some(p) = m["destination_port"].as_u64() {
        parts.push(format!("port {p}"));
    }
    for r in m["prefix_ranges"].as_array().into_iter().flatten() {
        parts.push(format!(
            "{}/{}",
            text(&r["address_prefix"]),
            r["prefix_len"].as_u64().unwrap_or(0)
        ));
    }
    if let Some(t) = m["transport_protocol"].as_str() {
        parts.push(t.to_string());
    }
    for key in ["server_names", "application_protocols"] {
        if let Some(v) = m[key].as_array() {
            let v: Vec<String> = v.iter().map(text).collect();
            parts.push(v.join(","));
        }
    }
    match parts.is_empty() {
        true => "any".into(),
        false => parts.join(" "),
    }
}

fn listeners(dump: &Value, acknowledged: &Value) -> Table {
    let mut table = Table::new(&["NAME", "ADDRESS", "ACKED", "CHAIN", "MATCH", "DESTINATION"]);
    for e in entries(dump, ConfigType::Listener) {
        let l = &e["active_state"]["listener"];
        let name = text(&e["name"]);
        let acked = acked_cell(acknowledged, &name, &e["active_state"]["version_info"]);
        let chains = chains(l);
        if chains.is_empty() {
            table.row(vec![name.clone(), socket(&l["address"]), acked.clone()]);
        }
        for (chain, c) in chains {
            table.row(vec![
                name.clone(),
                socket(&l["address"]),
                acked.clone(),
                chain,
                chain_match(&c["filter_chain_match"]),
                chain_destinations(c).join(", "),
            ]);
        }
    }
    table
}

fn route_match(m: &Value) -> String {
    let mut parts = Vec::new();
    for key in ["prefix", "path", "path_separated_prefix"] {
        if let Some(p) = m[key].as_str() {
            parts.push(format!("{key} {p}"));
        }
    }
    if let Some(r) = m["safe_regex"]["regex"].as_str() {
        parts.push(format!("regex {r}"));
    }
    for h in m["headers"].as_array().into_iter().flatten() {
        let s = &h["string_match"];
        let value = ["exact", "prefix", "suffix", "contains"]
            .into_iter()
            .find_map(|k| s[k].as_str().map(|v| format!("{k} {v}")))
            .unwrap_or_else(|| "present".into());
        parts.push(format!("header {} {value}", text(&h["name"])));
    }
    parts.join(", ")
}

fn backends(route: &Value) -> String {
    if let Some(c) = route["cluster"].as_str() {
        return c.to_string();
    }
    let clusters: Vec<String> = route["weighted_clusters"]["clusters"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| format!("{} ({})", text(&c["name"]), text(&c["weight"])))
        .collect();
    match clusters.is_empty() {
        true => "-".into(),
        false => clusters.join(", "),
    }
}

fn routes(dump: &Value, acknowledged: &Value) -> Table {
    let mut table = Table::new(&[
        "ROUTE CONFIG",
        "ACKED",
        "VIRTUAL HOST",
        "DOMAINS",
        "MATCH",
        "BACKENDS",
        "TIMEOUT",
        "RETRIES",
    ]);
    for e in entries(dump, ConfigType::Route) {
        let rc = &e["route_config"];
        let name = text(&rc["name"]);
        let acked = acked_cell(acknowledged, &name, &e["version_info"]);
        for vh in rc["virtual_hosts"].as_array().into_iter().flatten() {
            let domains: Vec<String> = vh["domains"]
                .as_array()
                .into_iter()
                .flatten()
                .map(text)
                .collect();
            let domains = match domains.len() {
                0..=3 => domains.join(","),
                n => format!("{} +{} more", domains[..3].join(","), n - 3),
            };
            for r in vh["routes"].as_array().into_iter().flatten() {
                let action = &r["route"];
                let retries = match action["retry_policy"].is_object() {
                    true => format!(
                        "{} on {}",
                        text(&action["retry_policy"]["num_retries"]),
                        text(&action["retry_policy"]["retry_on"])
                    ),
                    false => "-".into(),
                };
                let backends = match r["direct_response"]["status"].as_u64() {
                    Some(status) => format!("direct response {status}"),
                    None => backends(action),
                };
                table.row(vec![
                    name.clone(),
                    acked.clone(),
                    text(&vh["name"]),
                    domains.clone(),
                    route_match(&r["match"]),
                    backends,
                    text(&action["timeout"]),
                    retries,
                ]);
            }
        }
    }
    table
}

fn secrets(config: &Value) -> Table {
    let mut table = Table::new(&["NAME", "SERIAL", "SPIFFE ID", "ISSUER", "NOT AFTER"]);
    let names: Vec<String> = entries(&config["config_dump"], ConfigType::Secret)
        .into_iter()
        .map(|e| text(&e["name"]))
        .collect();
    for c in config["certificates"].as_array().into_iter().flatten() {
        if !names.contains(&text(&c["secret"])) {
            continue;
        }
        table.row(vec![
            text(&c["secret"]),
            text(&c["serial"]),
            text(&c["spiffe_id"]),
            text(&c["issuer"]),
            text(&c["not_after"]),
        ]);
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Value {
        json!({
            "node_id": "client-0.shop",
            "protocol": "delta",
            "types": {
                "CDS": {"status": "SYNCED", "sent_version": "a1", "acked_version": "a1"},
                "RDS": {"status": "NACKED", "sent_version": "b2", "acked_version": "b1",
                        "last_nack_message": "bad route"},
            },
            "acknowledged": {"RDS": {"80": "r1"}},
            "config_dump": {"configs": [
                {"@type": "type.googleapis.com/envoy.admin.v3.ClustersConfigDump",
                 "dynamic_active_clusters": [
                    {"version_info": "c1", "cluster": {"name": "outbound|80||web.shop.svc.cluster.local",
                        "type": "EDS", "transport_socket": {"name": "envoy.transport_sockets.tls",
                        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"}}}},
                    {"version_info": "c2", "cluster": {"name": "outbound|5432||db.shop.svc.cluster.local", "type": "EDS"}}
                 ]},
                {"@type": "type.googleapis.com/envoy.admin.v3.EndpointsConfigDump",
                 "dynamic_endpoint_configs": [
                    {"version_info": "e1", "endpoint_config": {"cluster_name": "outbound|80||web.shop.svc.cluster.local",
                     "endpoints": [{"lb_endpoints": [
                        {"endpoint": {"address": {"socket_address": {"address": "198.18.0.3", "port_value": 8080}}}, "health_status": "HEALTHY"},
                        {"endpoint": {"address": {"socket_address": {"address": "198.18.0.4", "port_value": 8080}}}}]}]}}
                 ]},
                {"@type": "type.googleapis.com/envoy.admin.v3.RoutesConfigDump",
                 "dynamic_route_configs": [
                    {"version_info": "r2", "route_config": {"name": "80", "virtual_hosts": [
                        {"name": "web", "domains": ["web.shop.svc.cluster.local", "web.shop.svc.cluster.local:80"],
                         "routes": [{"match": {"prefix": "/", "headers": [{"name": "x-version", "string_match": {"exact": "v2"}}]},
                                     "route": {"weighted_clusters": {"clusters": [{"name": "a", "weight": 90}, {"name": "b", "weight": 10}]},
                                               "timeout": "0s", "retry_policy": {"retry_on": "5xx", "num_retries": 2}}}]},
                        {"name": "db", "domains": ["db.shop.svc.cluster.local"], "routes": []}
                    ]}}
                 ]}
            ]},
            "certificates": []
        })
    }

    #[test]
    fn clusters_show_type_mtls_and_endpoint_counts() {
        let out = config_tables(&config(), &[ConfigType::Cluster]);
        let web = out
            .lines()
            .find(|l| l.starts_with("outbound|80||web"))
            .unwrap();
        let cells: Vec<&str> = web.split("  ").filter(|c| !c.is_empty()).collect();
        assert_eq!(
            cells.iter().map(|c| c.trim()).collect::<Vec<_>>(),
            ["outbound|80||web.shop.svc.cluster.local", "EDS", "yes", "2"],
            "{out}"
        );
        assert!(
            out.contains("CDS SYNCED: sent a1, acknowledged a1"),
            "{out}"
        );
    }

    #[test]
    fn routes_show_matches_backends_timeouts_retries_and_the_nack() {
        let out = config_tables(&config(), &[ConfigType::Route]);
        assert!(out.contains("header x-version exact v2"), "{out}");
        assert!(out.contains("a (90), b (10)"), "{out}");
        assert!(out.contains("2 on 5xx"), "{out}");
        assert!(out.contains("last NACK: bad route"), "{out}");
        assert!(out.contains("older version"), "{out}");
    }

    #[test]
    fn listeners_end_with_who_may_call_the_workload() {
        let mut c = config();
        c["authorization"] = json!({
            "undeclared_ports": "closed",
            "services": [{"service": "shop/web", "mode": "dry-run", "default": "deny-all",
                          "allow": ["shop/client GET /api/*", "unauthenticated GET /healthz"],
                          "deny": []}]
        });
        let out = config_tables(&c, &[ConfigType::Listener]);
        assert!(
            out.contains("Authorization (inbound); ports no Service declares: closed"),
            "{out}"
        );
        let row = out.lines().find(|l| l.starts_with("shop/web")).unwrap();
        let cells: Vec<&str> = row
            .split("  ")
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .collect();
        assert_eq!(
            cells,
            [
                "shop/web",
                "dry-run",
                "deny-all",
                "shop/client GET /api/*; unauthenticated GET /healthz",
                "-"
            ],
            "{out}"
        );
        // Other types, and a proxy not yet known as a workload: nothing.
        assert!(!config_tables(&c, &[ConfigType::Cluster]).contains("Authorization"));
        assert!(!config_tables(&config(), &[ConfigType::Listener]).contains("Authorization"));
    }

    #[test]
    fn denials_are_shown_by_caller_and_port() {
        let scrape = concat!(
            "# TYPE envoy_authorization_denied counter\n",
            "envoy_authorization_denied{workload=\"web\",workload_namespace=\"shop\",destination_service=\"web\",caller_identity=\"spiffe://cluster.local/ns/batch/sa/batch\",destination_port=\"8080\"} 3\n",
            "envoy_authorization_denied{workload=\"web\",workload_namespace=\"shop\",destination_service=\"web\",caller_identity=\"\",destination_port=\"8080\"} 1\n",
            "envoy_authorization_would_deny{workload=\"web\",workload_namespace=\"shop\",destination_service=\"web\",caller_identity=\"spiffe://cluster.local/ns/batch/sa/batch\",destination_port=\"8080\"} 2\n",
            "envoy_http_rbac_denied{envoy_http_conn_manager_prefix=\"inbound_8080_mtls\"} 4\n",
        );
        let shown = denials("127.0.0.1:15000", scrape);
        let lines: Vec<&str> = shown.lines().collect();
        assert_eq!(
            lines[1],
            "Denied by caller (the proxy's own counters, at 127.0.0.1:15000):"
        );
        assert!(lines[2].starts_with("SERVICE"), "{shown}");
        let row = |caller: &str| {
            lines
                .iter()
                .find(|l| l.contains(caller))
                .map(|l| l.split_whitespace().collect::<Vec<_>>())
                .unwrap_or_default()
        };
        assert_eq!(
            row("spiffe://cluster.local/ns/batch/sa/batch"),
            [
                "web",
                "spiffe://cluster.local/ns/batch/sa/batch",
                "8080",
                "3",
                "2"
            ]
        );
        assert_eq!(
            row("(plaintext"),
            ["web", "(plaintext,", "no", "identity)", "8080", "1", "0"]
        );
        assert!(denials("a:1", "").ends_with("none counted\n"));
    }

    #[test]
    fn filters_keep_what_they_name() {
        let mut c = config();
        apply_filter(
            &mut c,
            &Filter {
                fqdn: Some("web.shop.svc.cluster.local".into()),
                ..Filter::default()
            },
        );
        let dump = &c["config_dump"];
        assert_eq!(entries(dump, ConfigType::Cluster).len(), 1);
        let routes = entries(dump, ConfigType::Route);
        assert_eq!(
            routes[0]["route_config"]["virtual_hosts"]
                .as_array()
                .unwrap()
                .len(),
            1
        );
        let mut c = config();
        apply_filter(
            &mut c,
            &Filter {
                port: Some(5432),
                ..Filter::default()
            },
        );
        let clusters = entries(&c["config_dump"], ConfigType::Cluster);
        assert_eq!(
            clusters[0]["cluster"]["name"],
            "outbound|5432||db.shop.svc.cluster.local"
        );
    }

    #[test]
    fn the_status_list_names_each_nack() {
        let mut rows = vec![(
            "127.0.0.1:15014".to_string(),
            json!({"node_id": "web-0.shop", "protocol": "sotw",
                   "certificate": {"spiffe_id": "spiffe://cluster.local/ns/shop/sa/web", "not_after": "2030-01-01T00:00:00Z"},
                   "types": {"CDS": {"status": "SYNCED"}, "LDS": {"status": "NACKED", "last_nack_message": "cannot bind"}}}),
        )];
        let out = status_list(&mut rows);
        let line = out.lines().nth(1).unwrap();
        for cell in [
            "web-0.shop",
            "spiffe://cluster.local/ns/shop/sa/web",
            "SotW",
            "127.0.0.1:15014",
            "SYNCED",
            "NOT SENT",
            "NACKED",
            "2030-01-01T00:00:00Z",
        ] {
            assert!(line.contains(cell), "{cell} in {line}");
        }
        assert!(out.contains("web-0.shop LDS NACKED: cannot bind"), "{out}");
    }
}
