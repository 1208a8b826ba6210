//! Fault injection on the serving side: which services' faults each
//! workload's inbound ports inject, as virtual hosts of the inbound route
//! configuration.
//!
//! ```text
//! client app ─> client proxy: router (timeout, retries) ──> server proxy, inbound port 8080
//!                                                            HCM: fault ─> router ─> 127.0.0.1:8080
//!                                                            route config inbound|8080:
//!                                                              vhost reviews (Host reviews, reviews:9080,
//!                                                                reviews.shop, …, the VIP) ── fault
//!                                                              vhost *  ── no fault
//! ```
//!
//! The fault runs in the server's proxy rather than the caller's because
//! the caller's router must see it: Envoy starts a route's timeout in the
//! router, after any filter before it, and an abort answered by a filter
//! before the router is never retried. Injected on the server side, a delay
//! counts against the caller's `meshd.io/timeout` (504 when it is longer)
//! and an abort is a 5xx the caller's `meshd.io/retries` retries.
//!
//! **Which requests a fault applies to.** A proxy does not rewrite `Host`,
//! so a request arrives with the Host of the service the caller addressed,
//! also after a traffic split or a route sent it to another service's pods.
//! A fault on `reviews` therefore applies to requests addressed to
//! `reviews` (by any of its names or its VIP, with or without the port)
//! arriving at the pods behind `reviews` or behind the services its split
//! and routes send to (`reviews-v1`, `reviews-v2`, on the same port), and
//! to nothing else: a request addressed to `reviews-v2` directly gets
//! `reviews-v2`'s fault, if it has one, not `reviews`'. Requests that name
//! no faulted service (a pod IP, another Host) take the `*` virtual host,
//! without a fault.
//!
//! A port gets the fault filter and these virtual hosts only while some
//! service on it has a fault, so ordinary configuration is unchanged;
//! setting or clearing a fault changes only that port's filter chains,
//! which Envoy replaces in place, draining their connections.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use meshd_proto::envoy::config::route::v3::VirtualHost;

use super::clusters::inbound_cluster_name;
use super::routing::{self, route_to, service_hosts};
use crate::model::MeshRouting;
use crate::model::{Mesh, ServiceKey};

/// Per inbound (target) port, the virtual hosts of the services whose
/// faults the port injects, sorted by service.
pub(super) type PortFaults = BTreeMap<u16, Vec<VirtualHost>>;

/// [`PortFaults`] per workload: (namespace, pod).
pub(super) type Faults = HashMap<(String, String), PortFaults>;

/// The fault virtual hosts of every workload that serves a service with a
/// fault. Only services with a fault are looked at, so the cost follows
/// the faults set, not the size of the mesh.
pub(super) fn faults(mesh: &Mesh, mesh_routing: &MeshRouting) -> Faults {
    // (namespace, pod) → target port → faulted service → its ports that
    // reach the target port.
    type Addressed = BTreeMap<ServiceKey, BTreeSet<u16>>;
    let mut by_pod: HashMap<(String, String), BTreeMap<u16, Addressed>> = HashMap::new();
    for svc in mesh.services.values() {
        let routing = mesh_routing.service(&svc.key);
        if !routing.has_fault() {
            continue;
        }
        // The services whose pods receive requests addressed to `svc`.
        let mut receivers = vec![svc];
        for target in routing.targets() {
            let key = ServiceKey::new(svc.key.namespace.clone(), target);
            if let Some(target) = mesh.services.get(&key) {
                receivers.push(target);
            }
        }
        for port in svc.ports.iter().filter(|p| p.protocol.is_http()) {
            for receiver in &receivers {
                let Some(receiving) = receiver.ports.iter().find(|p| p.port == port.port) else {
                    continue;
                };
                for ep in mesh.endpoints_of(&receiver.key) {
                    if let (Some(pod), Some(target)) = (&ep.pod, ep.port_for(receiving)) {
                        by_pod
                            .entry((receiver.key.namespace.clone(), pod.clone()))
                            .or_default()
                            .entry(target)
                            .or_default()
                            .entry(svc.key.clone())
                            .or_default()
                            .insert(port.port);
                    }
                }
            }
        }
    }
    by_pod
        .into_iter()
        .map(|(pod, ports)| {
            let ports = ports
                .into_iter()
                .map(|(target, services)| {
                    (target, virtual_hosts(mesh, mesh_routing, target, services))
                })
                .collect();
            (pod, ports)
        })
        .collect()
}

fn virtual_hosts(
    mesh: &Mesh,
    mesh_routing: &MeshRouting,
    target: u16,
    services: BTreeMap<ServiceKey, BTreeSet<u16>>,
) -> Vec<VirtualHost> {
    // Envoy refuses a route configuration that lists a domain twice (two
    // services given the same VIP by mistake): the first service keeps it.
    let mut claimed = BTreeSet::new();
    let mut vhosts = Vec::with_capacity(services.len());
    for (key, ports) in services {
        let Some(fault) = routing::fault_config(mesh_routing.service(&key)) else {
            continue;
        };
        let vips: Vec<_> = mesh
            .services
            .get(&key)
            .map(|s| s.vips().collect())
            .unwrap_or_default();
        let mut domains = Vec::new();
        // The pod's own namespace: short names resolve to this service.
        for host in service_hosts(&key, vips, &key.namespace) {
            // A caller may leave the port out of Host (capture) or must
            // (a forward proxy on port 80).
            for domain in ports
                .iter()
                .map(|p| format!("{host}:{p}"))
                .chain([host.clone()])
            {
                if claimed.insert(domain.clone()) {
                    domains.push(domain);
                }
            }
        }
        if domains.is_empty() {
            continue;
        }
        vhosts.push(VirtualHost {
            name: format!("inbound|http|{target}|{}", key.fqdn()),
            domains,
            routes: vec![route_to(&inbound_cluster_name(target))],
            typed_per_filter_config: HashMap::from([(routing::FAULT_FILTER.to_string(), fault)]),
            ..Default::default()
        });
    }
    vhosts
}
