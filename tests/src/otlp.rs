//! A minimal OpenTelemetry collector: the OTLP/gRPC trace service on a
//! listener the caller bound, keeping every span it is sent with the
//! service that sent it. The tracing e2e test and the demo point the
//! mesh's `--tracing-collector` at it.
//!
//! ```text
//! Envoy (opentelemetry tracer) ──OTLP/gRPC Export──> Collector::serve(listener) ──> Collector::spans()
//! ```

use std::sync::{Arc, Mutex};

use anyhow::Context;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value;
pub use opentelemetry_proto::tonic::trace::v1::span::SpanKind;

/// A span as the collector received it, with the service that sent it.
#[derive(Clone, Debug)]
pub struct ReceivedSpan {
    /// The resource's `service.name`: the workload the proxy serves.
    pub service: String,
    /// What Envoy calls the operation: the upstream cluster or host and
    /// path.
    pub name: String,
    pub trace_id: Vec<u8>,
    pub span_id: Vec<u8>,
    /// Empty for the root of a trace.
    pub parent_span_id: Vec<u8>,
    pub kind: SpanKind,
}

/// The collector: keeps every span it is sent, in arrival order.
#[derive(Clone, Default)]
pub struct Collector {
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
}

impl Collector {
    /// Every span received so far.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.spans.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Serves OTLP/gRPC on `listener` from a runtime of its own, which
    /// the caller keeps for as long as the collector should run.
    pub fn serve(
        listener: std::net::TcpListener,
    ) -> anyhow::Result<(Collector, tokio::runtime::Runtime)> {
        let collector = Collector::default();
        let rt = tokio::runtime::Runtime::new().context("starting the collector's runtime")?;
        listener.set_nonblocking(true)?;
        let incoming = {
            let _entered = rt.enter();
            tonic::transport::server::TcpIncoming::from(tokio::net::TcpListener::from_std(
                listener,
            )?)
        };
        rt.spawn(
            tonic::transport::Server::builder()
                .add_service(TraceServiceServer::new(collector.clone()))
                .serve_with_incoming(incoming),
        );
        Ok((collector, rt))
    }
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut received = Vec::new();
        for resource_spans in request.into_inner().resource_spans {
            let service = resource_spans
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|a| a.key == "service.name")
                .and_then(|a| match a.value.as_ref()?.value.as_ref()? {
                    any_value::Value::StringValue(s) => Some(s.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            for span in resource_spans.scope_spans.into_iter().flat_map(|s| s.spans) {
                received.push(ReceivedSpan {
                    service: service.clone(),
                    name: span.name,
                    kind: SpanKind::try_from(span.kind).unwrap_or(SpanKind::Unspecified),
                    trace_id: span.trace_id,
                    span_id: span.span_id,
                    parent_span_id: span.parent_span_id,
                });
            }
        }
        self.spans
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(received);
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// Lowercase hex, as `traceparent` writes ids.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
