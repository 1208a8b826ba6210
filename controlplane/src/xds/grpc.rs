//! The ADS endpoint on HTTP/2, framed by hand: request messages are decoded
//! from the request body as they arrive, and responses are encoded lazily,
//! one bounded chunk at a time, straight from the snapshot's shared
//! resources.
//!
//! Why not tonic's generated server: its encoder writes each response whole
//! into one buffer per stream and keeps that buffer, grown to the largest
//! response it ever sent (a 1 MB EDS response at sync leaves ~2 MiB), for
//! the life of the stream; its decoder does the same with the largest
//! request (a State-of-the-World EDS request names every cluster). With
//! thousands of proxies those buffers were most of the control plane's
//! memory. Here a stream holds its pending responses as lists of
//! `Arc<Resource>` (shared with the snapshot and every other stream), and
//! the response bytes encoded but not yet written to a connection, across
//! *all* streams, are capped by one budget ([`SEND_BUDGET`]): a chunk's
//! share of the budget comes back when the connection has written the
//! chunk, so a push to thousands of proxies goes out a few megabytes at a
//! time instead of all at once, and a proxy that stops reading holds at
//! most what HTTP/2 flow control lets it. Requests are bounded the same
//! way: a message larger than a small per-stream allowance is read only
//! once its whole length fits in the server's request budget
//! ([`REQUEST_BUDGET`]), so a thousand State-of-the-World proxies
//! answering one push with their ~40 KB EDS subscriptions are read at most
//! 16 MiB at a time, not all at once.
//!
//! ```text
//! stream task ──Outgoing (head + Arc<Resource>…)──> channel ──> ResponseBody::poll_frame
//!     ≤ CHUNK bytes per frame, each holding budget permits ──> h2 ──> TLS ──> proxy
//! ```

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http_body::Frame;
use http_body_util::BodyExt;
use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::time::Instant;
use tokio_util::sync::PollSemaphore;
use tonic::Status;
use tonic::body::Body;

use crate::translate::Resource;

/// The gRPC service name.
pub const SERVICE: &str = "envoy.service.discovery.v3.AggregatedDiscoveryService";
pub(crate) const SOTW_PATH: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources";
pub(crate) const DELTA_PATH: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources";

/// The largest request message accepted. A State-of-the-World EDS request
/// naming every cluster of a 10,000-service mesh is about 1 MB.
pub const MAX_REQUEST_BYTES: usize = 16 << 20;

/// A request buffer grown past this is dropped once its message is read,
/// so one large request does not cost its stream memory for its whole
/// life. A message larger than this is read only under the request budget.
const KEEP_REQUEST_BUFFER: usize = 16 << 10;

/// Bytes of request messages larger than [`KEEP_REQUEST_BUFFER`] being
/// read at once, across all streams of one server: what buffering large
/// requests can cost, whatever the number of proxies (without it, every
/// State-of-the-World proxy answering a new cluster set with a ~40 KB EDS
/// subscription at once held ~85 MB at 1,000 such proxies). A message is
/// admitted whole, so one of [`MAX_REQUEST_BYTES`] always fits and a
/// stream never waits for budget while holding some.
pub const REQUEST_BUDGET: usize = MAX_REQUEST_BYTES;

/// How long the request budget may hold a large message back, and how
/// long an admitted message may hold its budget: either way the message
/// is then read on without budget. The budget evens out bursts of large
/// requests (it is not a hard bound); it never makes a proxy wait long,
/// so a client that announces a large message and stalls, or trickles
/// it, cannot hold the others up, and a stream is never ended for being
/// slow when meshd itself is slow to read it (at 10,000 proxies a large
/// request takes many round trips of the 8 KiB connection window).
pub const REQUEST_BUDGET_PATIENCE: Duration = Duration::from_secs(5);

/// Room made ahead of a message's bytes as its length prefix announces
/// them, at most: a subscription of every cluster (~40 KB at 1,000
/// services) in one allocation, while a prefix announcing 16 MiB that is
/// never sent costs no more than this.
const RESERVE_AHEAD: usize = 64 << 10;

/// The most response bytes one HTTP/2 DATA frame source yields at a time:
/// with [`PREFIX_ROOM`], one 32 KiB allocation, the largest size jemalloc
/// keeps in its per-thread caches, so that a chunk's memory is reused by
/// the next chunk rather than taken from (and faulted into) fresh pages.
const CHUNK: usize = (32 << 10) - PREFIX_ROOM;

/// Room for the prefix of a resource entry begun just before the limit.
const PREFIX_ROOM: usize = 512;

/// Response bytes encoded but not yet written to a connection, across all
/// streams of one server.
pub const SEND_BUDGET: usize = 32 << 20;

/// The shared send budget of one ADS server.
pub(crate) fn send_budget() -> Arc<Semaphore> {
    Arc::new(Semaphore::new(SEND_BUDGET))
}

/// The shared request budget of one ADS server.
pub(crate) fn request_budget() -> Arc<Semaphore> {
    Arc::new(Semaphore::new(REQUEST_BUDGET))
}

/// Reads gRPC-framed request messages off a request body.
///
/// A message of up to [`KEEP_REQUEST_BUFFER`] bytes is read as it comes
/// (acknowledgements, Delta subscriptions). A larger one waits, once its
/// length prefix is in, for its whole length of the server's request
/// budget, in turn (the semaphore is fair) and for at most
/// [`REQUEST_BUDGET_PATIENCE`]; meanwhile its stream reads no more of it,
/// so HTTP/2 flow control holds the rest at the proxy (and, once ~8 KiB
/// are unread, the connection's other streams: see
/// `serving::H2_CONNECTION_WINDOW`), and the stream goes on sending
/// responses. The limits hold only while the reader is polled: a stream
/// busy elsewhere calls [`RequestReader::budget_expiry`] and
/// [`RequestReader::yield_budget`].
pub(crate) struct RequestReader {
    body: Body,
    buf: BytesMut,
    budget: PollSemaphore,
    /// Where the message being read stands with the budget.
    admission: Admission,
}

/// Where a message stands with the request budget.
#[derive(Debug, Default)]
enum Admission {
    /// Small, or its length not known yet.
    #[default]
    Unasked,
    /// Waiting for budget, until this instant at the latest.
    Waiting(Instant),
    /// Holding its length of budget (given back when dropped) until
    /// `until` at the latest, however fast or slow its bytes come.
    Admitted {
        _permit: OwnedSemaphorePermit,
        until: Instant,
    },
    /// Read without budget: it waited for it, or held it, as long as it
    /// may, or its stream was busy elsewhere when that time was up.
    Without,
}

/// How far reading the next message has come.
enum Progress<M> {
    Message(M),
    /// The length prefix is in: the message's length.
    Announced(usize),
    /// Not even the prefix.
    Started,
}

impl RequestReader {
    pub(crate) fn new(body: Body, budget: Arc<Semaphore>) -> Self {
        RequestReader {
            body,
            buf: BytesMut::new(),
            budget: PollSemaphore::new(budget),
            admission: Admission::Unasked,
        }
    }

    /// The next message, `None` once the client has closed its side.
    /// Cancel-safe: bytes read are kept until a whole message is there, and
    /// a message waiting for budget keeps its place in the queue.
    pub(crate) async fn message<M>(
        &mut self,
        mut decode: impl FnMut(&[u8]) -> Result<M, prost::DecodeError>,
    ) -> Result<Option<M>, Status> {
        loop {
            let len = match self.decode(&mut decode)? {
                Progress::Message(message) => return Ok(Some(message)),
                Progress::Announced(len) => Some(len),
                Progress::Started => None,
            };
            if let Some(len) = len {
                if 5 + len > KEEP_REQUEST_BUFFER {
                    self.admit(len).await?;
                }
                self.buf
                    .reserve((5 + len).saturating_sub(self.buf.len()).min(RESERVE_AHEAD));
            }
            let frame = match &mut self.admission {
                Admission::Admitted { until, .. } => {
                    let Ok(frame) = tokio::time::timeout_at(*until, self.body.frame()).await else {
                        // Held long enough: the budget goes back; the
                        // message is read on without it.
                        self.admission = Admission::Without;
                        continue;
                    };
                    frame
                }
                _ => self.body.frame().await,
            };
            match frame {
                None if self.buf.is_empty() => return Ok(None),
                None => {
                    return Err(Status::invalid_argument(
                        "the request stream ended in the middle of a message",
                    ));
                }
                // The request body fails only when the proxy's stream or
                // connection is gone (Envoy shutting down, a reset): that is
                // the end of the stream, not a protocol error to report.
                Some(Err(status)) => {
                    tracing::debug!("request stream closed: {}", status.message());
                    return Ok(None);
                }
                Some(Ok(frame)) => {
                    // Trailers carry nothing a request needs.
                    if let Ok(data) = frame.into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                }
            }
        }
    }

    /// When what the message in progress has of the budget (a place in
    /// its queue, or permits) runs out, if it has any.
    pub(crate) fn budget_expiry(&self) -> Option<Instant> {
        match self.admission {
            Admission::Waiting(until) | Admission::Admitted { until, .. } => Some(until),
            Admission::Unasked | Admission::Without => None,
        }
    }

    /// Gives up what the message in progress has of the budget, once
    /// [`RequestReader::budget_expiry`] has passed while the stream was
    /// busy elsewhere (a push to a proxy that reads no responses can wait
    /// indefinitely): its queued wait would be handed permits nobody
    /// takes, and everyone queued after it would wait too.
    pub(crate) fn yield_budget(&mut self) {
        if !matches!(self.admission, Admission::Unasked) {
            self.budget = PollSemaphore::new(self.budget.clone_inner());
            self.admission = Admission::Without;
        }
    }

    /// Waits for a large message's budget (`len` bytes), for at most
    /// [`REQUEST_BUDGET_PATIENCE`] in all, however often it is cancelled.
    async fn admit(&mut self, len: usize) -> Result<(), Status> {
        let until = match self.admission {
            Admission::Unasked => Instant::now() + REQUEST_BUDGET_PATIENCE,
            Admission::Waiting(until) => until,
            Admission::Admitted { .. } | Admission::Without => return Ok(()),
        };
        self.admission = Admission::Waiting(until);
        // At most MAX_REQUEST_BYTES: it fits in a u32.
        let permits = u32::try_from(len).unwrap_or(u32::MAX);
        let acquire = std::future::poll_fn(|cx| self.budget.poll_acquire_many(cx, permits));
        self.admission = match tokio::time::timeout_at(until, acquire).await {
            Ok(Some(permit)) => Admission::Admitted {
                _permit: permit,
                until: Instant::now() + REQUEST_BUDGET_PATIENCE,
            },
            // The budget is never closed.
            Ok(None) => return Err(Status::internal("request budget closed")),
            Err(_) => {
                self.yield_budget();
                return Ok(());
            }
        };
        Ok(())
    }

    fn decode<M>(
        &mut self,
        decode: &mut impl FnMut(&[u8]) -> Result<M, prost::DecodeError>,
    ) -> Result<Progress<M>, Status> {
        let Some(prefix) = self.buf.get(..5) else {
            return Ok(Progress::Started);
        };
        if prefix[0] != 0 {
            return Err(Status::unimplemented(
                "compressed request messages are not accepted (this server offers no grpc-encoding)",
            ));
        }
        let len = u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]) as usize;
        if len > MAX_REQUEST_BYTES {
            return Err(Status::resource_exhausted(format!(
                "a request message of {len} bytes is over the limit of {MAX_REQUEST_BYTES} bytes"
            )));
        }
        let end = 5 + len;
        if self.buf.len() < end {
            return Ok(Progress::Announced(len));
        }
        let message = decode(&self.buf[5..end])
            .map_err(|e| Status::invalid_argument(format!("cannot decode the request: {e}")))?;
        self.buf.advance(end);
        self.admission = Admission::Unasked;
        // `capacity` counts only the room past the read position (none
        // once a message filled its buffer to the last byte); whether the
        // allocation itself is large shows in whether that much can be
        // reclaimed. Without this, a buffer that held a large message
        // stayed until the stream's next message. What is left (the start
        // of the next message, in the same frame) moves to a buffer of its
        // own size.
        if self.buf.len() <= KEEP_REQUEST_BUFFER / 2
            && self.buf.try_reclaim(KEEP_REQUEST_BUFFER + 1)
        {
            self.buf = BytesMut::from(&self.buf[..]);
        }
        Ok(Progress::Message(message))
    }
}

/// One response message, encoded only as it is sent.
///
/// `DiscoveryResponse` and `DeltaDiscoveryResponse` both carry their
/// resources in field 2; every other field is small and encoded up front
/// (`head`). A State-of-the-World resource is the `Any` itself; a Delta one
/// is a `Resource` message holding the name, the version and the `Any`.
#[derive(Debug)]
pub(crate) struct Outgoing {
    head: Vec<u8>,
    resources: Vec<Arc<Resource>>,
    delta: bool,
}

const RESOURCES_FIELD: u32 = 2;

/// What a stream task sends its response body: a message, or the status
/// that ends the stream. Both boxed: the channel allocates its slots 32 at
/// a time when it is made, whatever its capacity, so a slot's size is
/// paid 32 times per stream (~1.8 KiB with the message inline).
pub(crate) type Message = Result<Box<Outgoing>, Box<Status>>;

impl Outgoing {
    /// `head` is the response with no resources, as prost encodes it.
    pub(crate) fn new(head: Vec<u8>, resources: Vec<Arc<Resource>>, delta: bool) -> Self {
        Outgoing {
            head,
            resources,
            delta,
        }
    }

    /// The encoded length of one resource entry's message (without the
    /// field key and length that frame it).
    fn entry_len(&self, r: &Resource) -> usize {
        let any = any_len(r);
        if self.delta {
            field_len(3, r.name.len()) + field_len(1, r.version.len()) + field_len(2, any)
        } else {
            any
        }
    }

    /// The encoded length of the whole message.
    fn len(&self) -> usize {
        self.head.len()
            + self
                .resources
                .iter()
                .map(|r| field_len(RESOURCES_FIELD, self.entry_len(r)))
                .sum::<usize>()
    }

    /// Writes everything of resource entry `r` that precedes the bytes of
    /// its body.
    fn entry_prefix(&self, r: &Resource, out: &mut Vec<u8>) {
        encode_key(RESOURCES_FIELD, WireType::LengthDelimited, out);
        encode_varint(self.entry_len(r) as u64, out);
        if self.delta {
            encode_bytes_field(3, r.name.as_bytes(), out);
            encode_bytes_field(1, r.version.as_bytes(), out);
            encode_key(2, WireType::LengthDelimited, out);
            encode_varint(any_len(r) as u64, out);
        }
        encode_bytes_field(1, r.body.type_url.as_bytes(), out);
        encode_key(2, WireType::LengthDelimited, out);
        encode_varint(r.body.value.len() as u64, out);
    }
}

fn field_len(tag: u32, len: usize) -> usize {
    key_len(tag) + encoded_len_varint(len as u64) + len
}

fn any_len(r: &Resource) -> usize {
    field_len(1, r.body.type_url.len()) + field_len(2, r.body.value.len())
}

fn encode_bytes_field(tag: u32, bytes: &[u8], out: &mut Vec<u8>) {
    encode_key(tag, WireType::LengthDelimited, out);
    encode_varint(bytes.len() as u64, out);
    out.extend_from_slice(bytes);
}

/// Where the encoding of one message stands.
#[derive(Debug)]
struct Encoding {
    message: Outgoing,
    /// The message's encoded length.
    len: usize,
    /// Bytes of the gRPC frame (prefix included) not yet produced.
    remaining: usize,
    started: bool,
    /// The resource being written, and how much of its body is written.
    next: usize,
    body_at: Option<usize>,
}

impl Encoding {
    fn new(message: Outgoing) -> Self {
        let len = message.len();
        Encoding {
            message,
            len,
            remaining: 5 + len,
            started: false,
            next: 0,
            body_at: None,
        }
    }

    /// Appends the next bytes of the frame to `out`, up to about `limit`
    /// (one resource's prefix may go a little past it).
    fn fill(&mut self, out: &mut Vec<u8>, limit: usize) {
        let start = out.len();
        if !self.started {
            self.started = true;
            let len = u32::try_from(self.len).unwrap_or(u32::MAX);
            out.push(0);
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(&self.message.head);
        }
        while out.len() < limit {
            let Some(r) = self.message.resources.get(self.next) else {
                break;
            };
            let at = match self.body_at {
                Some(at) => at,
                None => {
                    self.message.entry_prefix(r, out);
                    0
                }
            };
            let body = &r.body.value;
            let n = (body.len() - at).min(limit.saturating_sub(out.len()));
            out.extend_from_slice(&body[at..at + n]);
            if at + n == body.len() {
                self.next += 1;
                self.body_at = None;
            } else {
                self.body_at = Some(at + n);
            }
        }
        self.remaining = self.remaining.saturating_sub(out.len() - start);
    }

    fn finished(&self) -> bool {
        self.started && self.next == self.message.resources.len()
    }
}

/// A chunk of response bytes holding its share of the send budget until
/// the connection has written it (and drops it).
struct Chunk {
    bytes: Vec<u8>,
    _permit: OwnedSemaphorePermit,
}

impl AsRef<[u8]> for Chunk {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

/// The body of an ADS response: the stream task's messages, then the
/// trailers with the stream's status (see [`Message`]).
pub(crate) struct ResponseBody {
    messages: mpsc::Receiver<Message>,
    current: Option<Encoding>,
    budget: PollSemaphore,
    done: bool,
}

impl ResponseBody {
    pub(crate) fn new(messages: mpsc::Receiver<Message>, budget: Arc<Semaphore>) -> Self {
        ResponseBody {
            messages,
            current: None,
            budget: PollSemaphore::new(budget),
            done: false,
        }
    }
}

impl http_body::Body for ResponseBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = &mut *self;
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            if let Some(encoding) = &mut this.current {
                let want = encoding.remaining.clamp(1, CHUNK);
                let permits = u32::try_from(want).unwrap_or(u32::MAX);
                // The budget is never closed.
                let Some(permit) = ready!(this.budget.poll_acquire_many(cx, permits)) else {
                    return Poll::Ready(Some(Err(Status::internal("send budget closed"))));
                };
                let mut bytes = Vec::with_capacity(want + PREFIX_ROOM);
                encoding.fill(&mut bytes, want);
                if encoding.finished() {
                    this.current = None;
                }
                let chunk = Bytes::from_owner(Chunk {
                    bytes,
                    _permit: permit,
                });
                return Poll::Ready(Some(Ok(Frame::data(chunk))));
            }
            match ready!(this.messages.poll_recv(cx)) {
                Some(Ok(message)) => this.current = Some(Encoding::new(*message)),
                Some(Err(status)) => {
                    this.done = true;
                    return Poll::Ready(Some(Ok(Frame::trailers(trailers(&status)))));
                }
                None => {
                    this.done = true;
                    let ok = Status::new(tonic::Code::Ok, "");
                    return Poll::Ready(Some(Ok(Frame::trailers(trailers(&ok)))));
                }
            }
        }
    }
}

fn trailers(status: &Status) -> http::HeaderMap {
    let mut map = http::HeaderMap::new();
    if status.add_header(&mut map).is_err() {
        // Only an unencodable message fails; the code alone still says it.
        map.insert("grpc-status", http::HeaderValue::from(status.code() as i32));
    }
    map
}

/// The response headers of an ADS stream; the body follows.
pub(crate) fn response(body: ResponseBody) -> http::Response<Body> {
    let mut response = http::Response::new(Body::new(body));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/grpc"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(
        bytes: &[u8],
    ) -> Result<meshd_proto::envoy::service::discovery::v3::DiscoveryRequest, prost::DecodeError>
    {
        prost::Message::decode(bytes)
    }
    use meshd_proto::envoy::config::endpoint::v3::ClusterLoadAssignment;
    use meshd_proto::envoy::service::discovery::v3::{DeltaDiscoveryResponse, DiscoveryResponse};
    use prost::Message;

    fn resource(name: &str, size: usize) -> Arc<Resource> {
        // A load assignment whose cluster name pads it to about `size`.
        let padded = format!("{name}{}", "x".repeat(size));
        Resource::new(
            name.to_string(),
            &ClusterLoadAssignment {
                cluster_name: padded,
                ..Default::default()
            },
            Vec::new(),
        )
    }

    /// Encodes `message` through the body in chunks and returns the frame.
    async fn through_body(message: Outgoing, budget: usize) -> (Vec<u8>, usize) {
        let (tx, rx) = mpsc::channel(1);
        tx.send(Ok(Box::new(message))).await.unwrap();
        drop(tx);
        let mut body = ResponseBody::new(rx, Arc::new(Semaphore::new(budget)));
        let mut bytes = Vec::new();
        let mut chunks = 0;
        let mut trailers = None;
        while let Some(frame) = body.frame().await {
            let frame = frame.unwrap();
            match frame.into_data() {
                Ok(data) => {
                    assert!(data.len() <= CHUNK + PREFIX_ROOM, "chunk of {}", data.len());
                    chunks += 1;
                    bytes.extend_from_slice(&data);
                    // Written: the chunk's budget comes back.
                    drop(data);
                }
                Err(frame) => trailers = frame.into_trailers().ok(),
            }
        }
        assert_eq!(trailers.unwrap()["grpc-status"], "0");
        (bytes, chunks)
    }

    fn sizes() -> Vec<Arc<Resource>> {
        [0, 10, 200, 40_000, 100_000, 3]
            .iter()
            .enumerate()
            .map(|(i, size)| resource(&format!("r{i}"), *size))
            .collect()
    }

    #[tokio::test]
    async fn a_state_of_the_world_response_encodes_as_prost_does() {
        let resources = sizes();
        let head = DiscoveryResponse {
            version_info: "v1".into(),
            type_url: "t".into(),
            nonce: "7".into(),
            ..Default::default()
        };
        let expected = DiscoveryResponse {
            resources: resources.iter().map(|r| r.body.clone()).collect(),
            ..head.clone()
        };
        let (frame, chunks) =
            through_body(Outgoing::new(head.encode_to_vec(), resources, false), CHUNK).await;
        assert!(chunks > 4, "large responses go in several chunks: {chunks}");
        assert_eq!(frame[0], 0);
        // Same fields, in another order than prost's (resources last).
        assert_eq!(
            u32::from_be_bytes(frame[1..5].try_into().unwrap()) as usize,
            expected.encoded_len()
        );
        assert!(DiscoveryResponse::decode(&frame[5..]).unwrap() == expected);
    }

    #[tokio::test]
    async fn a_delta_response_encodes_as_prost_does() {
        use meshd_proto::envoy::service::discovery::v3::Resource as DeltaResource;
        let resources = sizes();
        let head = DeltaDiscoveryResponse {
            system_version_info: "3".into(),
            type_url: "t".into(),
            nonce: "9".into(),
            removed_resources: vec!["gone".into()],
            ..Default::default()
        };
        let (frame, _) = through_body(
            Outgoing::new(head.encode_to_vec(), resources.clone(), true),
            CHUNK,
        )
        .await;
        let decoded = DeltaDiscoveryResponse::decode(&frame[5..]).unwrap();
        let expected = DeltaDiscoveryResponse {
            resources: resources
                .iter()
                .map(|r| DeltaResource {
                    name: r.name.clone(),
                    version: r.version.clone(),
                    resource: Some(r.body.clone()),
                    ..Default::default()
                })
                .collect(),
            ..head
        };
        assert!(decoded == expected);
    }

    #[tokio::test]
    async fn requests_split_across_frames_decode_and_large_buffers_are_let_go() {
        use meshd_proto::envoy::service::discovery::v3::DiscoveryRequest;
        let big = DiscoveryRequest {
            resource_names: (0..2_000)
                .map(|i| format!("outbound|80||svc-{i}"))
                .collect(),
            ..Default::default()
        };
        let small = DiscoveryRequest {
            response_nonce: "1".into(),
            ..Default::default()
        };
        let mut wire = Vec::new();
        for m in [&big, &small] {
            let bytes = m.encode_to_vec();
            wire.push(0);
            wire.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
            wire.extend_from_slice(&bytes);
        }
        // Frames of 1,000 bytes, as a slow client might send them.
        let frames: Vec<Result<Frame<Bytes>, Status>> = wire
            .chunks(1_000)
            .map(|c| Ok(Frame::data(Bytes::copy_from_slice(c))))
            .collect();
        let body = http_body_util::StreamBody::new(futures::stream::iter(frames));
        let mut reader = RequestReader::new(Body::new(body), request_budget());
        let first = reader.message(decode).await.unwrap().unwrap();
        assert_eq!(first, big);
        let second = reader.message(decode).await.unwrap().unwrap();
        assert_eq!(second, small);
        assert!(reader.buf.capacity() <= KEEP_REQUEST_BUFFER);
        // Not just what is left past the read position: the allocation
        // itself is gone (`try_reclaim` finds room in it only if kept).
        assert!(!reader.buf.try_reclaim(KEEP_REQUEST_BUFFER + 1));
        assert!(reader.message(decode).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn a_proxy_that_goes_away_ends_its_stream_without_an_error() {
        // What the body yields when the connection under it is reset.
        let frames: Vec<Result<Frame<Bytes>, Status>> = vec![
            Ok(Frame::data(Bytes::from_static(&[0, 0, 0]))),
            Err(Status::unknown(
                "h2 protocol error: error reading a body from connection",
            )),
        ];
        let body = http_body_util::StreamBody::new(futures::stream::iter(frames));
        let mut reader = RequestReader::new(Body::new(body), request_budget());
        let next = reader.message(decode).await;
        assert!(matches!(next, Ok(None)), "{next:?}");
    }

    #[tokio::test]
    async fn a_large_announced_request_costs_only_what_arrives() {
        let mut wire = vec![0];
        wire.extend_from_slice(&(MAX_REQUEST_BYTES as u32).to_be_bytes());
        wire.extend_from_slice(&[0; 100]);
        let frames: Vec<Result<Frame<Bytes>, Status>> = vec![Ok(Frame::data(wire.into()))];
        let body = http_body_util::StreamBody::new(futures::stream::iter(frames));
        let mut reader = RequestReader::new(Body::new(body), request_budget());
        // The client announces 16 MiB, sends 100 bytes and stops.
        let err = reader.message(decode).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
        assert!(
            reader.buf.capacity() <= 2 * RESERVE_AHEAD,
            "{} bytes reserved",
            reader.buf.capacity()
        );
    }

    /// A gRPC-framed request of `names` resource names.
    fn framed(names: usize) -> Vec<u8> {
        let request = meshd_proto::envoy::service::discovery::v3::DiscoveryRequest {
            resource_names: (0..names)
                .map(|i| format!("outbound|80||svc-{i:04}"))
                .collect(),
            ..Default::default()
        };
        let bytes = request.encode_to_vec();
        let mut wire = vec![0];
        wire.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
        wire.extend_from_slice(&bytes);
        wire
    }

    type Frames = futures::channel::mpsc::UnboundedSender<Result<Frame<Bytes>, Status>>;

    /// A reader on a body the test feeds frame by frame.
    fn fed(budget: &Arc<Semaphore>) -> (RequestReader, Frames) {
        let (tx, rx) = futures::channel::mpsc::unbounded();
        let body = http_body_util::StreamBody::new(rx);
        (RequestReader::new(Body::new(body), budget.clone()), tx)
    }

    fn send(frames: &Frames, bytes: &[u8]) {
        let frame = Frame::data(Bytes::copy_from_slice(bytes));
        frames.unbounded_send(Ok(frame)).unwrap();
    }

    #[tokio::test]
    async fn large_requests_are_read_in_turn_under_the_budget_and_small_ones_never_wait() {
        use futures::FutureExt;
        let large = framed(1_500);
        assert!(large.len() > 2 * KEEP_REQUEST_BUFFER, "{}", large.len());
        let budget = Arc::new(Semaphore::new(large.len() + large.len() / 2));
        let full = budget.available_permits();
        let first_frame = 8 << 10;

        // A: admitted as soon as its prefix is in, then waits for its bytes.
        let (mut a, a_frames) = fed(&budget);
        send(&a_frames, &large[..first_frame]);
        assert!(a.message(decode).now_or_never().is_none());
        assert_eq!(budget.available_permits(), full - (large.len() - 5));

        // B: the rest of the budget is too little; it reads no further than
        // its first frame, though the proxy has sent the whole message.
        let (mut b, b_frames) = fed(&budget);
        send(&b_frames, &large[..first_frame]);
        send(&b_frames, &large[first_frame..]);
        assert!(b.message(decode).now_or_never().is_none());
        assert_eq!(b.buf.len(), first_frame);

        // C: a small message is never held up by the budget.
        let (mut c, c_frames) = fed(&budget);
        send(&c_frames, &framed(3));
        let small = c.message(decode).now_or_never().expect("not held up");
        assert_eq!(small.unwrap().unwrap().resource_names.len(), 3);

        // A's message completes and gives its budget back; B goes on.
        send(&a_frames, &large[first_frame..]);
        let got = a.message(decode).await.unwrap().unwrap();
        assert_eq!(got.resource_names.len(), 1_500);
        let got = b.message(decode).await.unwrap().unwrap();
        assert_eq!(got.resource_names.len(), 1_500);
        assert_eq!(budget.available_permits(), full);
    }

    /// A State-of-the-World proxy's last request after a push is often a
    /// large one (an EDS ACK names every cluster), and the next comes only
    /// with the next push: its buffer must not wait for that to be let go.
    #[tokio::test]
    async fn a_large_message_read_to_its_last_byte_leaves_no_buffer_behind() {
        let budget = request_budget();
        let (mut reader, frames) = fed(&budget);
        let large = framed(1_500);
        for chunk in large.chunks(8 << 10) {
            send(&frames, chunk);
        }
        let got = reader.message(decode).await.unwrap().unwrap();
        assert_eq!(got.resource_names.len(), 1_500);
        // Nothing is left past the read position either way: whether the
        // allocation is kept shows only in whether it can be reclaimed.
        assert!(reader.buf.is_empty());
        assert!(!reader.buf.try_reclaim(KEEP_REQUEST_BUFFER + 1), "kept");
    }

    // (Time is paused in these two: the runtime moves it on whenever
    // every task waits, so nothing here waits for real.)
    #[tokio::test(start_paused = true)]
    async fn a_large_message_that_stalls_gives_its_budget_back_and_is_still_read() {
        let large = framed(1_500);
        let budget = request_budget();
        let (mut reader, frames) = fed(&budget);
        // The prefix and a little, a little more half the patience later,
        // then nothing (the sender stays open): a trickle keeps the budget
        // no longer than a stall.
        send(&frames, &large[..100]);
        let read = tokio::time::timeout(REQUEST_BUDGET_PATIENCE / 2, reader.message(decode));
        assert!(read.await.is_err(), "no message without its bytes");
        assert_eq!(
            budget.available_permits(),
            REQUEST_BUDGET - (large.len() - 5)
        );
        send(&frames, &large[100..200]);
        let read = tokio::time::timeout(REQUEST_BUDGET_PATIENCE * 3 / 4, reader.message(decode));
        assert!(read.await.is_err(), "no message without its bytes");
        assert_eq!(budget.available_permits(), REQUEST_BUDGET);
        // The stream is not ended: the rest, late, is read.
        send(&frames, &large[200..]);
        let got = reader.message(decode).await.unwrap().unwrap();
        assert_eq!(got.resource_names.len(), 1_500);
    }

    /// Every permit of the budget, held elsewhere (by a client that
    /// stalls, say).
    fn all_of(budget: &Arc<Semaphore>) -> tokio::sync::OwnedSemaphorePermit {
        let held = budget.clone().try_acquire_many_owned(REQUEST_BUDGET as u32);
        held.expect("the budget is untouched")
    }

    #[tokio::test(start_paused = true)]
    async fn a_large_message_waits_for_budget_only_a_while_and_takes_none_after() {
        let large = framed(1_500);
        let budget = request_budget();
        let held = all_of(&budget);
        let (mut reader, frames) = fed(&budget);
        // Two frames: the length is known before the message is in.
        send(&frames, &large[..100]);
        send(&frames, &large[100..]);
        let read = tokio::time::timeout(2 * REQUEST_BUDGET_PATIENCE, reader.message(decode));
        let got = read.await.expect("read without budget").unwrap().unwrap();
        assert_eq!(got.resource_names.len(), 1_500);
        // It left the queue: the permits given back are all there, none
        // handed to a waiter that is gone.
        drop(held);
        assert_eq!(budget.available_permits(), REQUEST_BUDGET);
    }

    #[tokio::test]
    async fn a_large_buffer_goes_also_when_the_next_message_has_begun_in_it() {
        let budget = request_budget();
        let (mut reader, frames) = fed(&budget);
        let large = framed(1_500);
        let small = framed(2);
        send(&frames, &large[..100]);
        // The rest of the large message and the start of the next.
        let mut rest = large[100..].to_vec();
        rest.extend_from_slice(&small[..10]);
        send(&frames, &rest);
        let got = reader.message(decode).await.unwrap().unwrap();
        assert_eq!(got.resource_names.len(), 1_500);
        assert_eq!(reader.buf.len(), 10);
        assert!(!reader.buf.try_reclaim(KEEP_REQUEST_BUFFER + 1), "kept");
        send(&frames, &small[10..]);
        let got = reader.message(decode).await.unwrap().unwrap();
        assert_eq!(got.resource_names.len(), 2);
    }

    /// What a stream busy pushing does when its message's time is up.
    #[tokio::test]
    async fn a_stream_busy_elsewhere_yields_its_place_and_its_permits() {
        use futures::FutureExt;
        let large = framed(1_500);
        let budget = request_budget();
        let held = all_of(&budget);
        // Queued behind the permits held elsewhere, then busy elsewhere.
        let (mut waiting, waiting_frames) = fed(&budget);
        send(&waiting_frames, &large[..100]);
        assert!(waiting.message(decode).now_or_never().is_none());
        assert!(waiting.budget_expiry().is_some());
        waiting.yield_budget();
        assert!(waiting.budget_expiry().is_none());
        drop(held);
        // Nothing was handed to the wait it gave up.
        assert_eq!(budget.available_permits(), REQUEST_BUDGET);

        // Admitted, then busy elsewhere: the permits come back at once.
        let (mut admitted, admitted_frames) = fed(&budget);
        send(&admitted_frames, &large[..100]);
        assert!(admitted.message(decode).now_or_never().is_none());
        assert!(budget.available_permits() < REQUEST_BUDGET);
        admitted.yield_budget();
        assert_eq!(budget.available_permits(), REQUEST_BUDGET);
        // Both messages are still read, without budget.
        send(&waiting_frames, &large[100..]);
        send(&admitted_frames, &large[100..]);
        for reader in [&mut waiting, &mut admitted] {
            let got = reader.message(decode).await.unwrap().unwrap();
            assert_eq!(got.resource_names.len(), 1_500);
        }
        assert_eq!(budget.available_permits(), REQUEST_BUDGET);
    }

    #[tokio::test]
    async fn an_oversized_request_is_refused_before_it_arrives() {
        let mut prefix = vec![0];
        prefix.extend_from_slice(&u32::MAX.to_be_bytes());
        let frames: Vec<Result<Frame<Bytes>, Status>> = vec![Ok(Frame::data(prefix.into()))];
        let body = http_body_util::StreamBody::new(futures::stream::iter(frames));
        let mut reader = RequestReader::new(Body::new(body), request_budget());
        let err = reader.message(decode).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::ResourceExhausted);
    }

    #[tokio::test]
    async fn bytes_in_flight_are_capped_by_the_budget() {
        let budget = Arc::new(Semaphore::new(CHUNK));
        let (tx, rx) = mpsc::channel(1);
        tx.send(Ok(Box::new(Outgoing::new(Vec::new(), sizes(), false))))
            .await
            .unwrap();
        let mut body = ResponseBody::new(rx, budget.clone());
        let held = body.frame().await.unwrap().unwrap().into_data().unwrap();
        // The whole budget is in the unwritten chunk: the next one waits.
        let next = tokio::time::timeout(std::time::Duration::from_millis(50), body.frame()).await;
        assert!(next.is_err(), "a second chunk was produced over budget");
        drop(held);
        assert!(body.frame().await.unwrap().unwrap().is_data());
    }
}
