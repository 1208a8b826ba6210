//! Discovery requests as a stream reads them: the fields meshd acts on and
//! no others.
//!
//! A stream's first request carries the proxy's node, and Envoy's node is
//! ~60 KB, most of it the list of the extensions compiled into it (some
//! 470 entries of a name, a category and type URLs). meshd reads the
//! node's id alone; decoded into Envoy's `Node`, the list cost every
//! connecting proxy ~1,900 allocations, freed as soon as the request was
//! read. These messages have the tags of `DeltaDiscoveryRequest` and
//! `DiscoveryRequest` for the fields they keep; prost steps over the rest
//! (resource locators too: xdstp names are not served).

use std::collections::HashMap;

/// `config.core.v3.Node`: its id.
#[derive(Clone, PartialEq, prost::Message)]
pub struct NodeId {
    #[prost(string, tag = "1")]
    pub id: String,
}

/// `google.rpc.Status`: its message, a NACK's reason.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ErrorDetail {
    #[prost(string, tag = "2")]
    pub message: String,
}

/// `service.discovery.v3.DeltaDiscoveryRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct DeltaRequest {
    #[prost(message, optional, tag = "1")]
    pub node: Option<NodeId>,
    #[prost(string, tag = "2")]
    pub type_url: String,
    #[prost(string, repeated, tag = "3")]
    pub resource_names_subscribe: Vec<String>,
    #[prost(string, repeated, tag = "4")]
    pub resource_names_unsubscribe: Vec<String>,
    #[prost(map = "string, string", tag = "5")]
    pub initial_resource_versions: HashMap<String, String>,
    #[prost(string, tag = "6")]
    pub response_nonce: String,
    #[prost(message, optional, tag = "7")]
    pub error_detail: Option<ErrorDetail>,
}

/// `service.discovery.v3.DiscoveryRequest` (its `version_info` is not
/// read: the nonce says what a request answers).
#[derive(Clone, PartialEq, prost::Message)]
pub struct SotwRequestFields {
    #[prost(message, optional, tag = "2")]
    pub node: Option<NodeId>,
    #[prost(string, repeated, tag = "3")]
    pub resource_names: Vec<String>,
    #[prost(string, tag = "4")]
    pub type_url: String,
    #[prost(string, tag = "5")]
    pub response_nonce: String,
    #[prost(message, optional, tag = "6")]
    pub error_detail: Option<ErrorDetail>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshd_proto::envoy::config::core::v3::{Extension, Node};
    use meshd_proto::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest};
    use meshd_proto::pb::google::rpc::Status;
    use prost::Message;

    /// A node as Envoy sends it: the id, and much that meshd does not read.
    fn node() -> Node {
        Node {
            id: "web-0.shop".into(),
            cluster: "web".into(),
            user_agent_name: "envoy".into(),
            extensions: (0..500)
                .map(|i| Extension {
                    name: format!("envoy.filters.http.extension_{i}"),
                    category: "envoy.filters.http".into(),
                    type_urls: vec![format!(
                        "envoy.extensions.filters.http.extension_{i}.v3.Config"
                    )],
                    ..Default::default()
                })
                .collect(),
            client_features: vec!["envoy.lb.does_not_support_overprovisioning".into()],
            ..Default::default()
        }
    }

    fn nack() -> Option<Status> {
        Some(Status {
            code: 3,
            message: "cluster 'x': bad".into(),
            details: Vec::new(),
        })
    }

    #[test]
    fn a_delta_request_keeps_every_field_meshd_acts_on() {
        let full = DeltaDiscoveryRequest {
            node: Some(node()),
            type_url: "type.googleapis.com/envoy.config.cluster.v3.Cluster".into(),
            resource_names_subscribe: vec!["a".into(), "b".into()],
            resource_names_unsubscribe: vec!["c".into()],
            initial_resource_versions: HashMap::from([("a".into(), "1".into())]),
            response_nonce: "4".into(),
            error_detail: nack(),
            ..Default::default()
        };
        let read = DeltaRequest::decode(full.encode_to_vec().as_slice()).unwrap();
        assert_eq!(
            read,
            DeltaRequest {
                node: Some(NodeId {
                    id: "web-0.shop".into()
                }),
                type_url: full.type_url.clone(),
                resource_names_subscribe: full.resource_names_subscribe.clone(),
                resource_names_unsubscribe: full.resource_names_unsubscribe.clone(),
                initial_resource_versions: full.initial_resource_versions.clone(),
                response_nonce: "4".into(),
                error_detail: Some(ErrorDetail {
                    message: "cluster 'x': bad".into()
                }),
            }
        );
    }

    #[test]
    fn a_state_of_the_world_request_keeps_every_field_meshd_acts_on() {
        let full = DiscoveryRequest {
            version_info: "7".into(),
            node: Some(node()),
            resource_names: vec!["a".into()],
            type_url: "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment".into(),
            response_nonce: "3".into(),
            error_detail: nack(),
            ..Default::default()
        };
        let read = SotwRequestFields::decode(full.encode_to_vec().as_slice()).unwrap();
        assert_eq!(
            read,
            SotwRequestFields {
                node: Some(NodeId {
                    id: "web-0.shop".into()
                }),
                resource_names: vec!["a".into()],
                type_url: full.type_url.clone(),
                response_nonce: "3".into(),
                error_detail: Some(ErrorDetail {
                    message: "cluster 'x': bad".into()
                }),
            }
        );
    }
}
