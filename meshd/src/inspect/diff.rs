//! `meshd proxy-config --diff`: what the control plane sent a proxy against
//! what its Envoy holds (`/config_dump?include_eds`).
//!
//! Resources are matched by name. The control plane renders the fields an
//! operator reads (see `controlplane/src/xds/dump.rs`), exactly as Envoy
//! renders them; each of those must be equal in Envoy's dump, which holds
//! more (every field Envoy shows). Private keys are never compared (Envoy
//! redacts them too). For a Delta proxy, versions are compared as well:
//! Envoy keeps each resource's own version; a State-of-the-World proxy
//! keeps the version of the response that last changed the resource, which
//! says nothing per resource.

use serde_json::Value;

use super::tables::{apply_filter, entries, layout};
use super::{ConfigType, Filter};

/// One resource that is not the same on both sides.
#[derive(Debug, PartialEq, Eq)]
pub struct Difference {
    pub r#type: &'static str,
    pub name: String,
    pub what: String,
}

/// A resource Envoy holds: name, body, version, and whether it is warming
/// (not yet in use; compared too, and said to be warming).
type Held = (String, Value, Option<String>, bool);

/// Envoy's dynamic resources of `t`.
fn envoy_resources(envoy: &Value, t: ConfigType) -> Vec<Held> {
    let part = envoy["configs"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["@type"] == t.dump_type());
    let Some(part) = part else { return Vec::new() };
    let mut out = Vec::new();
    let version = |v: &Value| v.as_str().map(str::to_string);
    match t {
        ConfigType::Cluster => {
            for (key, warming) in [
                ("dynamic_active_clusters", false),
                ("dynamic_warming_clusters", true),
            ] {
                for e in part[key].as_array().into_iter().flatten() {
                    out.push((
                        e["cluster"]["name"].as_str().unwrap_or("").to_string(),
                        e["cluster"].clone(),
                        version(&e["version_info"]),
                        warming,
                    ));
                }
            }
        }
        ConfigType::Endpoint => {
            for e in part["dynamic_endpoint_configs"]
                .as_array()
                .into_iter()
                .flatten()
            {
                out.push((
                    e["endpoint_config"]["cluster_name"]
                        .as_str()
                        .unwrap_or("")
                        .to_string(),
                    e["endpoint_config"].clone(),
                    None,
                    false,
                ));
            }
        }
        ConfigType::Listener => {
            for e in part["dynamic_listeners"].as_array().into_iter().flatten() {
                let (state, warming) = match e["active_state"].is_object() {
                    true => (&e["active_state"], false),
                    false => (&e["warming_state"], true),
                };
                out.push((
                    e["name"].as_str().unwrap_or("").to_string(),
                    state["listener"].clone(),
                    version(&state["version_info"]),
                    warming,
                ));
            }
        }
        ConfigType::Route => {
            for e in part["dynamic_route_configs"]
                .as_array()
                .into_iter()
                .flatten()
            {
                out.push((
                    e["route_config"]["name"].as_str().unwrap_or("").to_string(),
                    e["route_config"].clone(),
                    version(&e["version_info"]),
                    false,
                ));
            }
        }
        ConfigType::Secret | ConfigType::All => {
            for (key, warming) in [
                ("dynamic_active_secrets", false),
                ("dynamic_warming_secrets", true),
            ] {
                for e in part[key].as_array().into_iter().flatten() {
                    out.push((
                        e["name"].as_str().unwrap_or("").to_string(),
                        e["secret"].clone(),
                        version(&e["version_info"]),
                        warming,
                    ));
                }
            }
        }
    }
    out
}

/// Envoy's resources of the types shown, filtered as the control plane's.
fn envoy_filtered(envoy: &Value, t: ConfigType, filter: &Filter) -> Vec<Held> {
    let resources = envoy_resources(envoy, t);
    // Filter through the same code as the control plane's side, on a dump
    // of the control plane's shape.
    let (key, _, _) = layout(t);
    let entries: Vec<Value> = resources
        .iter()
        .map(|(name, body, _, _)| match t {
            ConfigType::Cluster => serde_json::json!({ "cluster": body }),
            ConfigType::Endpoint => serde_json::json!({ "endpoint_config": body }),
            ConfigType::Listener => {
                serde_json::json!({ "name": name, "active_state": { "listener": body } })
            }
            ConfigType::Route => serde_json::json!({ "route_config": body }),
            _ => serde_json::json!({ "name": name, "secret": body }),
        })
        .collect();
    let mut shaped = serde_json::json!({ "config_dump": { "configs": [
        { "@type": t.dump_type(), key: entries }
    ] } });
    apply_filter(&mut shaped, filter);
    let kept: Vec<String> = super::tables::entries(&shaped["config_dump"], t)
        .into_iter()
        .map(|e| (layout(t).2)(e))
        .collect();
    resources
        .into_iter()
        .filter(|(name, ..)| kept.contains(name))
        .collect()
}

/// Every difference, by type and name.
pub fn differences(
    config: &Value,
    envoy: &Value,
    shown: &[ConfigType],
    filter: &Filter,
) -> Vec<Difference> {
    let delta = config["protocol"] == "delta";
    let mut out = Vec::new();
    for &t in shown {
        let (_, resource, name_of) = layout(t);
        let ours: Vec<(String, &Value, &Value)> = entries(&config["config_dump"], t)
            .into_iter()
            .map(|e| {
                let version = match t {
                    ConfigType::Listener => &e["active_state"]["version_info"],
                    _ => &e["version_info"],
                };
                (name_of(e), resource(e), version)
            })
            .collect();
        let theirs = envoy_filtered(envoy, t, filter);
        let difference = |name: &str, what: String| Difference {
            r#type: t.xds(),
            name: name.to_string(),
            what,
        };
        for (name, body, version) in &ours {
            match theirs.iter().find(|(n, ..)| n == name) {
                None => out.push(difference(
                    name,
                    "sent by the control plane, not held by Envoy".into(),
                )),
                Some((_, held, held_version, warming)) => {
                    let warming = match warming {
                        true => " (warming in Envoy)",
                        false => "",
                    };
                    if let Some(what) = first_difference(body, held, "") {
                        out.push(difference(name, format!("{what}{warming}")));
                    } else if delta
                        && matches!(
                            t,
                            ConfigType::Cluster | ConfigType::Listener | ConfigType::Route
                        )
                        && let (Some(sent), Some(held)) = (version.as_str(), held_version)
                        && sent != held
                    {
                        out.push(difference(
                            name,
                            format!("version: the control plane sent {sent}, Envoy holds {held}{warming}"),
                        ));
                    }
                }
            }
        }
        for (name, ..) in &theirs {
            if !ours.iter().any(|(n, ..)| n == name) && !elsewhere(config, t, name) {
                out.push(difference(
                    name,
                    "held by Envoy, not sent by the control plane (left from an earlier stream, or from another control plane)".into(),
                ));
            }
        }
    }
    out
}

/// Whether Envoy holds `name` of type `t` from somewhere other than the
/// control plane's stream of that type: Envoy's endpoint dump lists the
/// hosts of every cluster (an original-destination or DNS cluster's too),
/// and its secret dump the bootstrap's file-based secrets (the xDS
/// client's own identity); the control plane serves only `default` and
/// `ROOTCA` over SDS.
fn elsewhere(config: &Value, t: ConfigType, name: &str) -> bool {
    match t {
        ConfigType::Endpoint => entries(&config["config_dump"], ConfigType::Cluster)
            .into_iter()
            .any(|e| e["cluster"]["name"] == name && e["cluster"]["type"] != "EDS"),
        ConfigType::Secret => !matches!(name, "default" | "ROOTCA"),
        _ => false,
    }
}

fn same_scalar(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::String(y)) | (Value::String(y), Value::Number(x)) => {
            y.parse::<f64>().ok() == x.as_f64()
        }
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        _ => a == b,
    }
}

fn short(v: &Value) -> String {
    let text = v.to_string();
    match text.char_indices().nth(120) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text,
    }
}

/// The first field of `ours` that `theirs` does not have equal.
pub fn first_difference(ours: &Value, theirs: &Value, path: &str) -> Option<String> {
    match (ours, theirs) {
        (Value::Object(a), Value::Object(b)) => {
            for (key, value) in a {
                // Neither side shows a key; nothing to compare.
                if key == "private_key" {
                    continue;
                }
                let here = format!("{path}.{key}");
                match b.get(key) {
                    None => {
                        return Some(format!(
                            "{here}: the control plane sent {}, Envoy has none",
                            short(value)
                        ));
                    }
                    Some(other) => {
                        if let Some(d) = first_difference(value, other, &here) {
                            return Some(d);
                        }
                    }
                }
            }
            None
        }
        (Value::Array(a), Value::Array(b)) => {
            if a.len() != b.len() {
                return Some(format!(
                    "{path}: the control plane sent {} entries, Envoy holds {}",
                    a.len(),
                    b.len()
                ));
            }
            a.iter()
                .zip(b)
                .enumerate()
                .find_map(|(i, (x, y))| first_difference(x, y, &format!("{path}[{i}]")))
        }
        (a, b) if same_scalar(a, b) => None,
        (a, b) => Some(format!(
            "{}: the control plane sent {}, Envoy holds {}",
            if path.is_empty() { "." } else { path },
            short(a),
            short(b)
        )),
    }
}

/// The human report.
pub fn report(
    proxy: &str,
    replica: &str,
    admin: &str,
    shown: &[ConfigType],
    differences: &[Difference],
) -> String {
    let types: Vec<&str> = shown.iter().map(|t| t.xds()).collect();
    let mut out = format!(
        "{proxy}: the control plane at {replica} against Envoy's /config_dump at {admin} ({})\n",
        types.join(", ")
    );
    if differences.is_empty() {
        out.push_str("no differences\n");
    }
    for d in differences {
        out.push_str(&format!("{} {}: {}\n", d.r#type, d.name, d.what));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ours(cluster: Value) -> Value {
        json!({"protocol": "sotw", "config_dump": {"configs": [
            {"@type": ConfigType::Cluster.dump_type(), "dynamic_active_clusters": [
                {"version_info": "v1", "cluster": cluster}]}]}})
    }

    fn envoy(clusters: Vec<Value>) -> Value {
        json!({"configs": [{"@type": ConfigType::Cluster.dump_type(),
            "dynamic_active_clusters": clusters.into_iter().map(|c| json!({"version_info": "x", "cluster": c})).collect::<Vec<_>>()}]})
    }

    #[test]
    fn equal_fields_agree_and_extra_envoy_fields_are_fine() {
        let c = json!({"name": "a", "type": "EDS", "connect_timeout": "5s"});
        let held =
            json!({"name": "a", "type": "EDS", "connect_timeout": "5s", "eds_cluster_config": {}});
        let d = differences(
            &ours(c),
            &envoy(vec![held]),
            &[ConfigType::Cluster],
            &Filter::default(),
        );
        assert!(d.is_empty(), "{d:?}");
    }

    #[test]
    fn missing_extra_and_changed_resources_are_named() {
        let c = json!({"name": "a", "type": "EDS", "connect_timeout": "5s"});
        let d = differences(
            &ours(c),
            &envoy(vec![
                json!({"name": "a", "type": "STRICT_DNS", "connect_timeout": "5s"}),
                json!({"name": "b"}),
            ]),
            &[ConfigType::Cluster],
            &Filter::default(),
        );
        assert_eq!(d.len(), 2, "{d:?}");
        assert!(
            d[0].what
                .contains(".type: the control plane sent \"EDS\", Envoy holds \"STRICT_DNS\""),
            "{d:?}"
        );
        assert_eq!(d[1].name, "b");
        assert!(d[1].what.starts_with("held by Envoy"), "{d:?}");
        let d = differences(
            &ours(json!({"name": "a"})),
            &envoy(vec![]),
            &[ConfigType::Cluster],
            &Filter::default(),
        );
        assert!(d[0].what.starts_with("sent by the control plane"), "{d:?}");
    }

    #[test]
    fn numbers_envoy_prints_as_strings_are_equal() {
        assert_eq!(
            first_difference(&json!({"n": 5}), &json!({"n": "5"}), ""),
            None
        );
        assert!(first_difference(&json!([1, 2]), &json!([1]), "").is_some());
    }
}
