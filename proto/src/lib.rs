//! Envoy's xDS API types as the workspace uses them, and (from issue #3 on)
//! the mesh's own gRPC services.
//!
//! Envoy's types come pre-generated from the `envoy-types` crate rather than
//! from compiling Envoy's protos here: that keeps `protoc` and Envoy's proto
//! tree out of the build. Everything else in the workspace imports Envoy types
//! through this crate, so a future bump of `envoy-types` is a one-crate change.

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
}
