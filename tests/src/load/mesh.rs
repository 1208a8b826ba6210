//! The generated mesh as a file registry: a file of namespaces, then one
//! file per service holding its Service, its EndpointSlice and its pods, so
//! that an endpoint change rewrites one small file.
//!
//! ```text
//! namespaces.yaml            ns-00 … ns-NN
//! svc-0000.yaml … svc-NNNN   Service (VIP 198.19.x.y) + EndpointSlice + Pods (198.18.x.y)
//! ```
//!
//! Service `i` lives in namespace `i % namespaces`; every tenth is a TCP
//! database on 5432, the others HTTP on port 80 (the shape of the
//! in-process benchmark's mesh, so the figures compare). Addresses come
//! from 198.18.0.0/15, which nothing ever connects to: only the xDS
//! traffic on loopback is real.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use super::ProtocolMix;
use super::protocol::{Flavour, ProxySpec};

/// Every tenth service is a database behind a TCP port.
const TCP_EVERY: usize = 10;
const TARGET_PORT: u16 = 8080;
const HTTP_PORT: u16 = 80;
const TCP_PORT: u16 = 5432;
/// Addresses per /16: pods take 198.18.0.0/16, service VIPs 198.19.0.0/16.
const ADDRESSES: usize = 65_534;

#[derive(Clone, Debug)]
pub struct Mesh {
    pub dir: PathBuf,
    pub services: usize,
    pub namespaces: usize,
    pub endpoints: usize,
    pub trust_domain: String,
    /// Readiness of the endpoints of services whose files were rewritten.
    ready: HashMap<usize, Vec<bool>>,
    /// The `meshd.io/allow` value of services given one.
    allow: HashMap<usize, String>,
}

/// A service's port as meshd names its cluster (`outbound|<port>||<fqdn>`).
pub struct ServicePort {
    pub name: &'static str,
    pub port: u16,
}

impl Mesh {
    pub fn new(
        dir: &Path,
        services: usize,
        namespaces: usize,
        endpoints: usize,
        extra_services: usize,
        trust_domain: &str,
    ) -> anyhow::Result<Mesh> {
        if services == 0 || namespaces == 0 || endpoints == 0 {
            bail!("--services, --namespaces and --endpoints-per-service must be at least 1");
        }
        // Added services skip the TCP slots, so they take up to twice their
        // number of slots.
        let extra_services = extra_services * 2;
        if (services + extra_services) * endpoints > ADDRESSES {
            bail!(
                "{} pods do not fit in 198.18.0.0/16: lower --services or --endpoints-per-service",
                (services + extra_services) * endpoints
            );
        }
        if services + extra_services > ADDRESSES {
            bail!("{services} services do not fit in 198.19.0.0/16");
        }
        Ok(Mesh {
            dir: dir.to_path_buf(),
            services,
            namespaces,
            endpoints,
            trust_domain: trust_domain.to_string(),
            ready: HashMap::new(),
            allow: HashMap::new(),
        })
    }

    /// The `n`th added service: the next HTTP service after the mesh's
    /// own (an HTTP service has a route, which the measurement waits for).
    pub fn added_service(&self, n: usize) -> usize {
        (self.services..)
            .filter(|s| !s.is_multiple_of(TCP_EVERY))
            .nth(n)
            .expect("an endless range")
    }

    pub fn namespace_of(&self, service: usize) -> String {
        format!("ns-{:02}", service % self.namespaces)
    }

    pub fn service_name(service: usize) -> String {
        format!("svc-{service:04}")
    }

    pub fn port_of(service: usize) -> ServicePort {
        if service.is_multiple_of(TCP_EVERY) {
            ServicePort {
                name: "tcp-db",
                port: TCP_PORT,
            }
        } else {
            ServicePort {
                name: "http",
                port: HTTP_PORT,
            }
        }
    }

    pub fn fqdn(&self, service: usize) -> String {
        format!(
            "{}.{}.svc.cluster.local",
            Self::service_name(service),
            self.namespace_of(service)
        )
    }

    /// The EDS cluster of the service's port, named as meshd names it.
    pub fn cluster(&self, service: usize) -> String {
        format!(
            "outbound|{}||{}",
            Self::port_of(service).port,
            self.fqdn(service)
        )
    }

    pub fn vip(service: usize) -> Ipv4Addr {
        address(198, 19, service + 1)
    }

    fn pod_ip(&self, service: usize, k: usize) -> Ipv4Addr {
        address(198, 18, service * self.endpoints + k + 1)
    }

    fn file(&self, service: usize) -> PathBuf {
        self.dir
            .join(format!("{}.yaml", Self::service_name(service)))
    }

    /// Writes the whole mesh, every endpoint ready.
    pub fn write_all(&self) -> anyhow::Result<()> {
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("creating {}", self.dir.display()))?;
        let namespaces: Vec<String> = (0..self.namespaces)
            .map(|n| format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: ns-{n:02}}}\n"))
            .collect();
        write_atomically(&self.dir.join("namespaces.yaml"), &namespaces.join("---\n"))?;
        for service in 0..self.services {
            write_atomically(&self.file(service), &self.service_yaml(service))?;
        }
        Ok(())
    }

    /// The namespaces, as API objects.
    pub fn namespace_objects(&self) -> Vec<serde_json::Value> {
        (0..self.namespaces)
            .map(|n| {
                serde_json::json!({
                    "apiVersion": "v1",
                    "kind": "Namespace",
                    "metadata": {"name": format!("ns-{n:02}")},
                })
            })
            .collect()
    }

    /// Service `service` as API objects: the same Service, EndpointSlice
    /// and pods as its file.
    pub fn service_objects(&self, service: usize) -> anyhow::Result<Vec<serde_json::Value>> {
        let text = self.service_yaml(service);
        serde_yaml::Deserializer::from_str(&text)
            .map(|document| {
                serde::Deserialize::deserialize(document)
                    .with_context(|| format!("{}: not YAML", Self::service_name(service)))
            })
            .collect()
    }

    /// Service `service`'s file: the Service, its EndpointSlice (readiness
    /// as last set) and its pods.
    pub fn service_yaml(&self, service: usize) -> String {
        let namespace = self.namespace_of(service);
        let name = Self::service_name(service);
        let port = Self::port_of(service);
        let vip = Self::vip(service);
        let mut docs = Vec::with_capacity(self.endpoints + 2);
        let annotations = self.allow.get(&service).map_or(String::new(), |allow| {
            format!(", annotations: {{meshd.io/allow: \"{allow}\"}}")
        });
        docs.push(format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {namespace}{annotations}}}\nspec:\n  clusterIP: {vip}\n  ports: [{{name: {pname}, port: {pport}}}]\n",
            pname = port.name,
            pport = port.port,
        ));
        let mut slice = format!(
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}-1\n  namespace: {namespace}\n  labels: {{kubernetes.io/service-name: {name}}}\naddressType: IPv4\nports: [{{name: {pname}, port: {TARGET_PORT}}}]\nendpoints:\n",
            pname = port.name,
        );
        for k in 0..self.endpoints {
            slice.push_str(&format!(
                "- addresses: [\"{ip}\"]\n  conditions: {{ready: {ready}}}\n  targetRef: {{kind: Pod, name: {name}-{k}}}\n",
                ip = self.pod_ip(service, k),
                ready = self.is_ready(service, k),
            ));
        }
        docs.push(slice);
        for k in 0..self.endpoints {
            docs.push(format!(
                "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}-{k}, namespace: {namespace}, labels: {{app: {name}}}}}\nspec:\n  serviceAccountName: {name}\n  containers: [{{name: app, image: app}}]\nstatus:\n  podIP: \"{ip}\"\n",
                ip = self.pod_ip(service, k),
            ));
        }
        docs.join("---\n")
    }

    fn is_ready(&self, service: usize, k: usize) -> bool {
        self.ready.get(&service).is_none_or(|r| r[k])
    }

    pub fn ready_count(&self, service: usize) -> usize {
        (0..self.endpoints)
            .filter(|&k| self.is_ready(service, k))
            .count()
    }

    /// Flips endpoint `k` of `service` between ready and not ready in
    /// memory; [`Mesh::write_service`] puts it in the registry.
    pub fn flip(&mut self, service: usize, k: usize) {
        let endpoints = self.endpoints;
        let ready = self
            .ready
            .entry(service)
            .or_insert_with(|| vec![true; endpoints]);
        ready[k] = !ready[k];
    }

    /// Sets the service's `meshd.io/allow` in memory; [`Mesh::write_service`]
    /// puts it in the registry.
    pub fn set_allow(&mut self, service: usize, rules: String) {
        self.allow.insert(service, rules);
    }

    /// How many of the fleet's first `proxies` proxies are pods of
    /// `service` (see [`Mesh::proxies`]).
    pub fn proxies_of(&self, service: usize, proxies: usize) -> usize {
        (0..proxies)
            .filter(|j| j % self.services == service)
            .count()
    }

    /// Rewrites (or adds) the service's file at once: the watcher never
    /// reads half a file. Returns when the new file is in place.
    pub fn write_service(&self, service: usize) -> anyhow::Result<()> {
        write_atomically(&self.file(service), &self.service_yaml(service))
    }

    /// The fleet: proxy `j` is pod `j / services` of service `j % services`,
    /// so consecutive proxies sit in different services and namespaces.
    pub fn proxies(&self, count: usize, mix: ProtocolMix) -> anyhow::Result<Vec<ProxySpec>> {
        if count > self.services * self.endpoints {
            bail!(
                "--proxies {count}: the mesh has only {} pods; raise --services or --endpoints-per-service",
                self.services * self.endpoints
            );
        }
        Ok((0..count)
            .map(|j| {
                let service = j % self.services;
                let name = Self::service_name(service);
                ProxySpec {
                    index: j as u32,
                    namespace: self.namespace_of(service),
                    pod: format!("{name}-{}", j / self.services),
                    service_account: name,
                    flavour: match mix {
                        ProtocolMix::Delta => Flavour::Delta,
                        ProtocolMix::Sotw => Flavour::Sotw,
                        ProtocolMix::Mix if j % 2 == 0 => Flavour::Delta,
                        ProtocolMix::Mix => Flavour::Sotw,
                    },
                }
            })
            .collect())
    }
}

/// The `n`th address (1-based) of `a.b.0.0/16`.
fn address(a: u8, b: u8, n: usize) -> Ipv4Addr {
    let [hi, lo] = u16::try_from(n).expect("checked to fit").to_be_bytes();
    Ipv4Addr::new(a, b, hi, lo)
}

/// Writes a hidden temporary file in the same directory (the registry
/// ignores hidden files) and renames it over `path`.
pub fn write_atomically(path: &Path, text: &str) -> anyhow::Result<()> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .context("a registry file has a name")?;
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small(dir: &Path) -> Mesh {
        Mesh::new(dir, 20, 3, 2, 1, "cluster.local").unwrap()
    }

    /// Every generated file is one the registry accepts: a service file
    /// holds the Service, its EndpointSlice and one Pod per endpoint.
    #[test]
    fn generated_files_parse_as_the_registry_reads_them() {
        use meshd_controlplane::discovery::file::parse;
        let dir = tempfile::tempdir().unwrap();
        let mut mesh = small(dir.path());
        mesh.write_all().unwrap();
        mesh.flip(3, 1);
        mesh.write_service(3).unwrap();
        let mut files = 0;
        for entry in std::fs::read_dir(dir.path()).unwrap() {
            let path = entry.unwrap().path();
            let text = std::fs::read_to_string(&path).unwrap();
            let objects = parse(&text).unwrap_or_else(|e| panic!("{}: {e:?}", path.display()));
            let expected = if path.ends_with("namespaces.yaml") {
                3
            } else {
                2 + 2
            };
            assert_eq!(objects.len(), expected, "{}", path.display());
            files += 1;
        }
        assert_eq!(files, 21, "no temporary file is left behind");
        let yaml = std::fs::read_to_string(dir.path().join("svc-0003.yaml")).unwrap();
        assert_eq!(yaml.matches("ready: false").count(), 1);
        assert_eq!(mesh.ready_count(3), 1);
        assert_eq!(
            mesh.cluster(3),
            "outbound|80||svc-0003.ns-00.svc.cluster.local"
        );
        assert_eq!(
            mesh.cluster(10),
            "outbound|5432||svc-0010.ns-01.svc.cluster.local"
        );
    }

    #[test]
    fn proxies_are_pods_spread_over_services_and_namespaces() {
        let dir = tempfile::tempdir().unwrap();
        let mesh = small(dir.path());
        let proxies = mesh.proxies(40, ProtocolMix::Mix).unwrap();
        assert_eq!(proxies[0].node_id(), "svc-0000-0.ns-00");
        assert_eq!(proxies[21].node_id(), "svc-0001-1.ns-01");
        assert_eq!(proxies[1].flavour, Flavour::Sotw);
        assert!(mesh.proxies(41, ProtocolMix::Delta).is_err());
    }
}
