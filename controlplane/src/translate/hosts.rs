//! The virtual hosts of the outbound route configurations, encoded once per
//! snapshot and shared by every caller namespace.
//!
//! Each caller namespace has its own route configurations (a Service's
//! short name is a host only in its own namespace), and a snapshot builds
//! them for each namespace that has proxies: twenty namespaces, twenty
//! times every Service's virtual host. But a virtual host depends on the
//! caller only through whether the caller is in the Service's namespace
//! (and through a Gateway API consumer route of the caller's namespace,
//! which is built apart). So each is built and encoded at most twice per
//! snapshot, and a caller's configuration is put together from the encoded
//! hosts: at 1,000 Services in twenty namespaces, building the route
//! configurations of a snapshot was about 15 % of meshd's CPU on a service
//! addition.
//!
//! ```text
//! (Service, port, caller in its namespace?, interception) ──> SharedHost (encoded once)
//! caller namespace: [SharedHost…] per configuration ──> route_configuration (bytes joined)
//! ```

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::BufMut;
use meshd_proto::BoolValue;
use meshd_proto::envoy::config::route::v3::{RouteConfiguration, VirtualHost};
use prost::Message;
use prost::encoding::{WireType, encode_key, encode_varint};

use super::resource::Resource;
use crate::model::{Interception, ServiceKey};

/// One virtual host, encoded, and the clusters its routes use.
pub(super) struct SharedHost {
    encoded: Vec<u8>,
    pub clusters: Vec<String>,
}

impl SharedHost {
    pub fn new(host: &VirtualHost, clusters: Vec<String>) -> Arc<Self> {
        Arc::new(SharedHost {
            encoded: host.encode_to_vec(),
            clusters,
        })
    }
}

/// What a shared virtual host is made for: the Service port, whether the
/// caller is in the Service's namespace, and the callers' interception.
pub(super) type HostKey = (ServiceKey, u16, bool, Interception);

/// The virtual hosts of one snapshot, built as caller namespaces need them.
#[derive(Default)]
pub(super) struct SharedHosts(pub(super) Mutex<HashMap<HostKey, Arc<SharedHost>>>);

/// Never the bodies, as for every resource.
impl std::fmt::Debug for SharedHosts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedHosts")
            .field("built", &self.built().len())
            .finish()
    }
}

impl SharedHosts {
    fn built(&self) -> MutexGuard<'_, HashMap<HostKey, Arc<SharedHost>>> {
        // A panic while building leaves the map as it was.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn get_or_build(
        &self,
        key: HostKey,
        build: impl FnOnce() -> Arc<SharedHost>,
    ) -> Arc<SharedHost> {
        if let Some(host) = self.built().get(&key) {
            return host.clone();
        }
        let host = build();
        self.built().insert(key, host.clone());
        host
    }
}

/// The route configuration `name` with these virtual hosts, in order:
/// the bytes prost would encode for the same `RouteConfiguration` (name,
/// virtual hosts, `validate_clusters`; nothing else is set).
pub(super) fn route_configuration(
    name: String,
    hosts: &[Arc<SharedHost>],
    validate_clusters: Option<BoolValue>,
    cluster_refs: Vec<String>,
) -> Arc<Resource> {
    let head = RouteConfiguration {
        name: name.clone(),
        ..Default::default()
    };
    let tail = validate_clusters.map(|v| RouteConfiguration {
        validate_clusters: Some(v),
        ..Default::default()
    });
    let hosts_len: usize = hosts
        .iter()
        .map(|h| 1 + prost::encoding::encoded_len_varint(h.encoded.len() as u64) + h.encoded.len())
        .sum();
    let mut encoded = Vec::with_capacity(
        head.encoded_len() + hosts_len + tail.as_ref().map_or(0, |t| t.encoded_len()),
    );
    head.encode(&mut encoded).expect("the buffer is sized");
    for host in hosts {
        encode_key(2, WireType::LengthDelimited, &mut encoded);
        encode_varint(host.encoded.len() as u64, &mut encoded);
        encoded.put_slice(&host.encoded);
    }
    if let Some(tail) = tail {
        tail.encode(&mut encoded).expect("the buffer is sized");
    }
    Resource::encoded::<RouteConfiguration>(name, encoded, cluster_refs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshd_proto::envoy::config::route::v3::Route;

    #[test]
    fn joined_hosts_are_what_prost_encodes() {
        let hosts: Vec<VirtualHost> = (0..3)
            .map(|i| VirtualHost {
                name: format!("svc-{i}.shop.svc.cluster.local:80"),
                domains: vec![format!("svc-{i}.shop"), format!("198.19.0.{i}")],
                routes: vec![Route {
                    name: format!("route-{i}"),
                    ..Default::default()
                }],
                ..Default::default()
            })
            .collect();
        for validate_clusters in [None, Some(BoolValue { value: false })] {
            let shared: Vec<_> = hosts.iter().map(|h| SharedHost::new(h, vec![])).collect();
            let joined = route_configuration("80|shop".into(), &shared, validate_clusters, vec![]);
            let whole = Resource::new(
                "80|shop".into(),
                &RouteConfiguration {
                    name: "80|shop".into(),
                    virtual_hosts: hosts.clone(),
                    validate_clusters,
                    ..Default::default()
                },
                vec![],
            );
            assert_eq!(joined.body, whole.body);
            assert_eq!(joined.version, whole.version);
        }
    }
}
