//! Envoy's xDS API types as the workspace uses them, and the mesh's own gRPC
//! services ([`ca::v1`]).
//!
//! Envoy's types come pre-generated from the `envoy-types` crate rather than
//! from compiling Envoy's protos here: that keeps Envoy's large proto tree
//! (and its compile time) out of the build. Everything else in the workspace
//! imports Envoy types through this crate, so a future bump of `envoy-types`
//! is a one-crate change.
//!
//! The mesh's own services are few and small, so they are compiled here from
//! `proto/meshd/`, with the `protoc` the `protoc-bin-vendored` crate carries
//! (nothing to install, nothing downloaded at build time).

pub use envoy_types::pb;
pub use envoy_types::pb::envoy;
pub use envoy_types::pb::google::protobuf::{Any, BoolValue, Duration, Struct, UInt32Value, Value};

/// The xDS type URLs meshd serves.
pub mod type_url {
    pub const LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
    pub const ROUTE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
    pub const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
    pub const ENDPOINT: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
    pub const SECRET: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";
}

/// The mesh's own gRPC services, compiled from `proto/meshd/` by `build.rs`.
pub mod ca {
    /// The certificate service: workloads that are not Envoy sidecars send a
    /// CSR and get a certificate for their own identity
    /// (`certificate_service_server` / `certificate_service_client`).
    pub mod v1 {
        tonic::include_proto!("meshd.ca.v1");
    }
}

/// Packs a message into a protobuf `Any` under its canonical type URL.
pub fn to_any<M: prost::Name>(message: &M) -> Any {
    Any {
        type_url: M::type_url(),
        value: message.encode_to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Name;

    #[test]
    fn type_urls_match_the_generated_types() {
        use envoy::config;
        assert_eq!(
            type_url::LISTENER,
            config::listener::v3::Listener::type_url()
        );
        assert_eq!(
            type_url::ROUTE,
            config::route::v3::RouteConfiguration::type_url()
        );
        assert_eq!(type_url::CLUSTER, config::cluster::v3::Cluster::type_url());
        assert_eq!(
            type_url::ENDPOINT,
            config::endpoint::v3::ClusterLoadAssignment::type_url()
        );
        assert_eq!(
            type_url::SECRET,
            envoy::extensions::transport_sockets::tls::v3::Secret::type_url()
        );
    }

    /// The wire names clients outside Rust dial, and the TTL's encoding.
    #[test]
    fn the_certificate_service_keeps_its_wire_contract() {
        use prost::Message;
        assert_eq!(
            ca::v1::certificate_service_server::SERVICE_NAME,
            "meshd.ca.v1.CertificateService"
        );
        let request = ca::v1::CreateCertificateRequest {
            csr_pem: "csr".into(),
            requested_ttl: Some(Duration {
                seconds: 600,
                nanos: 0,
            }),
        };
        let bytes = request.encode_to_vec();
        // Field 1 (string), then field 2 (a Duration message holding seconds).
        assert_eq!(bytes[0], 0x0a);
        assert_eq!(bytes[5], 0x12);
        assert_eq!(
            ca::v1::CreateCertificateRequest::decode(bytes.as_slice()).unwrap(),
            request
        );
    }
}
