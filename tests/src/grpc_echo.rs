//! A gRPC echo app and client, the shape of the Gateway API conformance
//! suite's `gateway_api_conformance.echo_basic.grpcecho.GrpcEcho`: every
//! unary call is answered OK with which pod answered and the request
//! headers (metadata) and authority it saw, so a test can tell where a
//! GRPCRoute sent a call and what its filters did on the way.
//!
//! ```text
//! client (tonic, h2c) ──/gateway_api_conformance.echo_basic.grpcecho.GrpcEcho/Echo──> Envoy … ──> GrpcEcho (pod, namespace)
//!                     <── EchoResponse { assertions: { headers, authority, context: { namespace, pod } } }
//! ```
//!
//! The messages are written out with prost's derive (field numbers as in
//! the conformance images' `grpcecho.proto`), and the server and client
//! use tonic's generic `Grpc` with a small prost codec, as generated code
//! would, so no build step is needed.

use std::convert::Infallible;
use std::marker::PhantomData;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::Context as _;
use prost::Message;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::{Body, BoxFuture, Service, StdError, http};
use tonic::metadata::{Ascii, MetadataKey, MetadataValue};
use tonic::{Request, Response, Status};

/// The service every call goes to, as the conformance suite names it.
pub const SERVICE: &str = "gateway_api_conformance.echo_basic.grpcecho.GrpcEcho";
/// Its unary method `Echo`, the one the mesh conformance tests call.
pub const ECHO: &str = "/gateway_api_conformance.echo_basic.grpcecho.GrpcEcho/Echo";

#[derive(Clone, PartialEq, Message)]
pub struct EchoRequest {}

#[derive(Clone, PartialEq, Message)]
pub struct EchoResponse {
    #[prost(message, optional, tag = "1")]
    pub assertions: Option<EchoAssertions>,
}

/// What the server saw of the call.
#[derive(Clone, PartialEq, Message)]
pub struct EchoAssertions {
    #[prost(message, repeated, tag = "1")]
    pub headers: Vec<Header>,
    #[prost(string, tag = "2")]
    pub authority: String,
    #[prost(message, optional, tag = "3")]
    pub context: Option<EchoContext>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Header {
    #[prost(string, tag = "1")]
    pub key: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

/// Where the answering server runs.
#[derive(Clone, PartialEq, Message)]
pub struct EchoContext {
    #[prost(string, tag = "1")]
    pub namespace: String,
    #[prost(string, tag = "2")]
    pub ingress: String,
    #[prost(string, tag = "3")]
    pub service_name: String,
    #[prost(string, tag = "4")]
    pub pod: String,
}

impl EchoResponse {
    /// The pod that answered ("" when the answer says none).
    pub fn pod(&self) -> &str {
        self.assertions
            .as_ref()
            .and_then(|a| a.context.as_ref())
            .map_or("", |c| c.pod.as_str())
    }

    /// Every value of request header `name` the server saw (any case), in
    /// order.
    pub fn request_header(&self, name: &str) -> Vec<&str> {
        self.assertions
            .iter()
            .flat_map(|a| &a.headers)
            .filter(|h| h.key.eq_ignore_ascii_case(name))
            .map(|h| h.value.as_str())
            .collect()
    }
}

/// Encodes `E`, decodes `D` (tonic's own prost codec lives in another
/// crate; this is all of it that is needed). The probes test's gRPC
/// health service uses it too.
pub struct ProstCodec<E, D>(PhantomData<fn(E) -> D>);

impl<E, D> Default for ProstCodec<E, D> {
    fn default() -> Self {
        ProstCodec(PhantomData)
    }
}

pub struct ProstEncoder<E>(PhantomData<fn(E)>);
pub struct ProstDecoder<D>(PhantomData<fn() -> D>);

impl<E, D> Codec for ProstCodec<E, D>
where
    E: Message + Send + 'static,
    D: Message + Default + Send + 'static,
{
    type Encode = E;
    type Decode = D;
    type Encoder = ProstEncoder<E>;
    type Decoder = ProstDecoder<D>;

    fn encoder(&mut self) -> ProstEncoder<E> {
        ProstEncoder(PhantomData)
    }

    fn decoder(&mut self) -> ProstDecoder<D> {
        ProstDecoder(PhantomData)
    }
}

impl<E: Message> Encoder for ProstEncoder<E> {
    type Item = E;
    type Error = Status;

    fn encode(&mut self, item: E, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        item.encode(dst)
            .map_err(|e| Status::internal(e.to_string()))
    }
}

impl<D: Message + Default> Decoder for ProstDecoder<D> {
    type Item = D;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<D>, Status> {
        D::decode(src)
            .map(Some)
            .map_err(|e| Status::internal(e.to_string()))
    }
}

/// The app: answers every unary call of [`SERVICE`] with an
/// [`EchoResponse`] naming `pod` and `namespace`.
#[derive(Clone)]
pub struct GrpcEcho {
    context: Arc<EchoContext>,
}

impl GrpcEcho {
    /// Serves h2c on `listener` (already bound, possibly inside a network
    /// namespace) from a background thread for the life of the process,
    /// like [`crate::http::App::serve`].
    pub fn serve(pod: &str, namespace: &str, listener: TcpListener) -> anyhow::Result<SocketAddr> {
        let addr = listener.local_addr()?;
        listener.set_nonblocking(true)?;
        let echo = GrpcEcho {
            context: Arc::new(EchoContext {
                namespace: namespace.to_string(),
                pod: pod.to_string(),
                ..Default::default()
            }),
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let incoming = {
            let _entered = rt.enter();
            tonic::transport::server::TcpIncoming::from(tokio::net::TcpListener::from_std(
                listener,
            )?)
        };
        std::thread::spawn(move || {
            let served = rt.block_on(
                tonic::transport::Server::builder()
                    .add_service(echo)
                    .serve_with_incoming(incoming),
            );
            if let Err(e) = served {
                tracing::warn!("gRPC echo on {addr} stopped: {e}");
            }
        });
        Ok(addr)
    }
}

impl tonic::server::NamedService for GrpcEcho {
    const NAME: &'static str = SERVICE;
}

/// One call: what the server answers, from what it saw of the HTTP/2
/// request (the metadata tonic gives a handler leaves the authority out).
struct Echo {
    context: Arc<EchoContext>,
    authority: String,
    headers: Vec<Header>,
}

impl tonic::server::UnaryService<EchoRequest> for Echo {
    type Response = EchoResponse;
    type Future = BoxFuture<Response<EchoResponse>, Status>;

    fn call(&mut self, _: Request<EchoRequest>) -> Self::Future {
        let response = EchoResponse {
            assertions: Some(EchoAssertions {
                headers: std::mem::take(&mut self.headers),
                authority: std::mem::take(&mut self.authority),
                context: Some((*self.context).clone()),
            }),
        };
        Box::pin(async move { Ok(Response::new(response)) })
    }
}

impl<B> Service<http::Request<B>> for GrpcEcho
where
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let echo = Echo {
            context: self.context.clone(),
            authority: request
                .uri()
                .authority()
                .map(|a| a.to_string())
                .unwrap_or_default(),
            headers: request
                .headers()
                .iter()
                .map(|(k, v)| Header {
                    key: k.as_str().to_string(),
                    value: String::from_utf8_lossy(v.as_bytes()).to_string(),
                })
                .collect(),
        };
        Box::pin(async move {
            let codec = ProstCodec::<EchoResponse, EchoRequest>::default();
            let mut grpc = tonic::server::Grpc::new(codec);
            Ok(grpc.unary(echo, request).await)
        })
    }
}

/// `calls` unary calls of [`ECHO`] to `target` on one HTTP/2 connection,
/// with `:authority` `authority` (as a client that called that name) and
/// `metadata`. Each call's answer or gRPC status. Runs its own runtime on
/// the calling thread, so the socket is created where the caller runs
/// (inside a pod's network namespace).
pub fn call(
    target: SocketAddr,
    authority: &str,
    metadata: &[(&str, &str)],
    calls: usize,
) -> anyhow::Result<Vec<Result<EchoResponse, Status>>> {
    let origin: http::Uri = format!("http://{authority}")
        .parse()
        .with_context(|| format!("authority {authority:?}"))?;
    let mut pairs = Vec::new();
    for (name, value) in metadata {
        let key = MetadataKey::from_bytes(name.as_bytes())
            .with_context(|| format!("metadata name {name:?}"))?;
        let value: MetadataValue<Ascii> = value
            .parse()
            .with_context(|| format!("metadata value {value:?}"))?;
        pairs.push((key, value));
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{target}"))?
            .origin(origin)
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(10))
            .connect()
            .await
            .with_context(|| format!("connecting to {target}"))?;
        let mut grpc = tonic::client::Grpc::new(channel);
        let mut answers = Vec::with_capacity(calls);
        for _ in 0..calls {
            grpc.ready().await?;
            let mut request = Request::new(EchoRequest {});
            for (key, value) in &pairs {
                request.metadata_mut().append(key.clone(), value.clone());
            }
            let codec = ProstCodec::<EchoRequest, EchoResponse>::default();
            let path = http::uri::PathAndQuery::from_static(ECHO);
            let answer = grpc.unary(request, path, codec).await;
            answers.push(answer.map(Response::into_inner));
        }
        Ok(answers)
    })
}
