//! Serving HTTP on meshd's listeners (xDS, the admission webhook, the debug
//! endpoints) so that no client, slow or hostile, can hold the process:
//! every phase of a connection has a deadline, each listener has its own
//! bound on open connections (so a flood on one port never takes the file
//! descriptors another port needs), and a full listener makes room by
//! closing the connection that has gone longest without a request in
//! progress rather than by turning new clients away.
//!
//! ```text
//! accept ──> a permit (max_connections; when none is free, the connection idle
//!            longest is closed, or the listener waits for one to end)
//!        ──> task: TLS handshake .................... handshake_timeout
//!                  first request head (HTTP/2: preface) header_read_timeout
//!                  each request:
//!                    Content-Length over max_body_bytes ──> 413 at once, body unread
//!                    the body, once the head is in ..... body_timeout (HTTP/1)
//!                  no request in progress ............. idle_timeout
//!                    (HTTP/1: to the next complete head; HTTP/2: GOAWAY)
//!                  a response write that makes no progress for idle_timeout
//! ```
//!
//! "Idle" is what may be closed to make room: a connection still in its
//! handshake, one that has not finished sending a request (head or body),
//! and one between requests. A connection whose request is complete and
//! being answered, or which holds an open stream (an ADS stream), is never
//! closed to make room.
//!
//! Requests carry the connection's details in their extensions, as axum
//! and tonic expect them: [`axum::extract::ConnectInfo`] with the peer's
//! address, and tonic's `TlsConnectInfo` (the client's certificates, which
//! xDS and the CSR service authenticate by) or `TcpConnectInfo`.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;
use tonic::transport::server::{Connected, TcpConnectInfo, TlsConnectInfo};
use tower_service::Service;
use tracing::Instrument;

mod coalesce;
use coalesce::{Sender, coalesce};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A TLS handshake is a few round trips: milliseconds in a cluster, well
/// under a second across regions. Ten seconds leaves room for a loaded
/// peer while bounding what a client that never finishes can hold.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A client dials because it has a request to send: the API server and
/// Envoy send theirs right after the handshake.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Above the 90 s after which Kubernetes' HTTP clients (Go's net/http as
/// client-go configures it) drop an idle connection themselves: the client
/// closes first, so a new request never races the server's close (a POST,
/// as a review is, is not retried on a connection closed under it).
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// The API server stops waiting for a webhook after at most 30 s
/// (`timeoutSeconds` ≤ 30): a body still arriving after that is answered
/// to nobody.
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(30);

/// Envoy keeps its ADS stream for hours: probe the connection so a
/// vanished proxy frees its stream and its file descriptor.
pub const H2_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// How long a keepalive ping may go unanswered.
pub const H2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// Streams one HTTP/2 connection may hold open: Envoy opens one ADS
/// stream per connection and a CSR client a few unary calls; 100 is the
/// HTTP/2 specification's recommended minimum, and bounds the sessions one
/// connection can cost.
pub const H2_MAX_CONCURRENT_STREAMS: u32 = 100;
/// What a client may send on one stream before meshd has taken it in (the
/// stream's HTTP/2 flow-control window): HTTP/2's initial 64 KiB, where
/// hyper's default is 1 MiB. It bounds what h2 buffers of a stream's
/// request data that no one has read (the request reader then holds at
/// most the message being assembled, `xds::MAX_REQUEST_BYTES`).
///
/// Not less than the protocol's default: a client may send that much before
/// it has read meshd's SETTINGS, and Envoy does (its first request, ~60 KB
/// with its node's list of extensions). When such a request had been read
/// before the SETTINGS were acknowledged, a smaller window shrank by the
/// difference on the acknowledgement, while h2 (0.4) kept back the
/// WINDOW_UPDATE of the request's last part: Envoy was left with no room
/// to send its next request and waited for its endpoints forever (seen in
/// CI with an 8 KiB window; `a_first_request_read_before_the_settings_are_
/// acknowledged_leaves_room_for_the_next` in tests/ads.rs plays it frame by
/// frame). That smaller window had kept h2's frame reader at 8 KiB for the
/// load tool's proxies, whose first request was small; Envoy's first
/// request comes in 16 KiB frames before the SETTINGS, and the reader
/// reserves room for a whole frame, so with Envoy it grows to 16 KiB
/// whatever the window.
pub const H2_STREAM_WINDOW: u32 = 65_535;
/// The window of a whole connection once its first 64 KiB are spent
/// (hyper's default is 1 MiB): what all its streams together may send
/// ahead of what meshd has read. A connection's window starts at 64 KiB
/// whatever the settings, and only WINDOW_UPDATEs move it, so this cannot
/// fall foul of the SETTINGS race above; h2 holds updates back until the
/// window is down to ~5 KiB and then tops it up to this. It bounds what a
/// burst of requests parks in meshd: at a service addition every
/// State-of-the-World proxy sends an EDS request naming every cluster
/// (~40 KB at 1,000 services) at once, and h2 could hold up to 64 KiB of
/// each unread. Measured together with the slim reading of requests
/// (`xds::request`, whose savings are freed at once anyway), it took
/// ~9 KiB per proxy off the settled memory at 2,000 proxies and little off
/// the peak (BENCHMARKS.md). Past the first 64 KiB, DATA frames are no
/// larger than this, the size h2's frame reader starts at. The streams of
/// a connection share it: an ADS stream's task does not read requests
/// while it waits to push, nor the rest of a large request while it waits
/// for the request budget (at most `xds::REQUEST_BUDGET_PATIENCE`), so a
/// client that stops reading an ADS stream's
/// responses can hold up its own other calls on that connection (a CSR)
/// once ~8 KiB of requests are unread. Envoy opens one ADS stream per
/// connection, and no client's window touches another's connection.
pub const H2_CONNECTION_WINDOW: u32 = 8 * 1024 - 9;
/// How much of a stream's response h2 queues before the body is asked for
/// more (hyper's default is 400 KiB): two of the xDS server's 32 KiB
/// chunks. A connection writes at most 64 KiB a poll anyway (`coalesce`),
/// and h2 keeps the slab behind its queue of frames at the length of the
/// longest queue it ever had, for the connection's life.
pub const H2_SEND_BUFFER: usize = 64 * 1024;

/// One connection per proxy: 10,000 proxies on a replica with room for as
/// many again, for when another replica drains and its proxies move here.
/// [`ConnectionCaps::for_fd_limit`] lowers it to what the process's file
/// descriptors allow.
pub const DEFAULT_XDS_MAX_CONNECTIONS: usize = 32_768;
/// The API servers keep a few keep-alive connections each, one per review
/// in flight: a thousand is far above what a control plane's API servers
/// open.
pub const DEFAULT_WEBHOOK_MAX_CONNECTIONS: usize = 1_024;
/// Probes, a Prometheus scraper or two, an operator.
pub const DEFAULT_DEBUG_MAX_CONNECTIONS: usize = 128;
/// The debug endpoints take no request body worth the name.
pub const DEBUG_MAX_BODY_BYTES: u64 = 64 * 1024;

/// The bounds of one listener.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Open connections at most (each holds a file descriptor).
    pub max_connections: usize,
    /// From accept to a finished TLS handshake.
    pub handshake_timeout: Duration,
    /// From the handshake to the first complete request head (on HTTP/2:
    /// the connection preface and the first request's headers).
    pub header_read_timeout: Duration,
    /// The longest a connection stays open with no request in progress
    /// (HTTP/1: until the next complete request head, so it bounds slow
    /// heads too; HTTP/2: with no open stream, then GOAWAY), and the longest
    /// a response write may make no progress.
    pub idle_timeout: Duration,
    /// HTTP/1: from a request's head to the end of its body. HTTP/2 streams
    /// (ADS) are long-lived and have no such bound.
    pub body_timeout: Duration,
    /// A request announcing a longer body (`Content-Length`) is answered
    /// 413 before any of it is read. Bodies without a length are the
    /// handler's to bound as they arrive.
    pub max_body_bytes: Option<u64>,
}

impl Limits {
    /// The xDS port: long-lived HTTP/2 connections, one per proxy.
    pub fn xds() -> Self {
        Limits {
            max_connections: DEFAULT_XDS_MAX_CONNECTIONS,
            max_body_bytes: None,
            ..Self::http(0)
        }
    }

    /// The debug endpoints (health, readiness, metrics, debug views).
    pub fn debug() -> Self {
        Limits {
            max_connections: DEFAULT_DEBUG_MAX_CONNECTIONS,
            max_body_bytes: Some(DEBUG_MAX_BODY_BYTES),
            ..Self::http(0)
        }
    }

    /// An HTTP/1 listener with the default timeouts, at most
    /// `max_connections` open (the webhook uses
    /// [`DEFAULT_WEBHOOK_MAX_CONNECTIONS`]).
    pub fn http(max_connections: usize) -> Self {
        Limits {
            max_connections,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            body_timeout: DEFAULT_BODY_TIMEOUT,
            max_body_bytes: None,
        }
    }
}

/// How many connections each listener of `meshd run` may hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionCaps {
    pub xds: usize,
    pub webhook: usize,
    pub debug: usize,
}

impl ConnectionCaps {
    /// The defaults, shrunk to fit a process allowed `fd_limit` open
    /// files: a reserve stays free for everything else the process opens
    /// (files, watches, API connections, the listeners themselves), the
    /// rest is shared with at most an eighth for the debug port and a
    /// quarter for the webhook, so the caps together never exceed the
    /// limit and a flood on one port cannot exhaust the descriptors of the
    /// others.
    pub fn for_fd_limit(fd_limit: u64) -> Self {
        let fd_limit = usize::try_from(fd_limit).unwrap_or(usize::MAX);
        let reserve = (fd_limit / 4).min(256);
        let budget = fd_limit - reserve;
        let debug = (budget / 8).clamp(1, DEFAULT_DEBUG_MAX_CONNECTIONS);
        let webhook = (budget / 4).clamp(1, DEFAULT_WEBHOOK_MAX_CONNECTIONS);
        let xds = budget
            .saturating_sub(debug + webhook)
            .clamp(1, DEFAULT_XDS_MAX_CONNECTIONS);
        ConnectionCaps {
            xds,
            webhook,
            debug,
        }
    }
}

/// What a listener speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.1 (the webhook, the debug endpoints).
    Http1,
    /// HTTP/2 with prior knowledge or ALPN `h2` (gRPC: xDS).
    Http2,
}

/// The error a request body yields when it has not arrived within the
/// listener's [`Limits::body_timeout`].
#[derive(Debug)]
pub struct BodyTimedOut(pub Duration);

impl std::fmt::Display for BodyTimedOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the request body did not arrive within {} s of its head",
            self.0.as_secs_f64()
        )
    }
}

impl std::error::Error for BodyTimedOut {}

/// Whether `error`, or an error it wraps, is a [`BodyTimedOut`].
pub fn is_body_timeout(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(error) = next {
        if error.is::<BodyTimedOut>() {
            return true;
        }
        next = error.source();
    }
    false
}

/// One listener and how to serve it.
pub struct Server {
    name: &'static str,
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    protocol: Protocol,
    limits: Limits,
    handshake_failures: Family<HandshakeFailureLabels, Counter>,
}

impl Server {
    /// `name` names the listener in logs (`xDS`, `webhook`, `debug`).
    pub fn new(
        name: &'static str,
        listener: TcpListener,
        protocol: Protocol,
        limits: Limits,
    ) -> Self {
        Server {
            name,
            listener,
            tls: None,
            protocol,
            limits,
            handshake_failures: Family::default(),
        }
    }

    /// Count failed TLS handshakes in `counter`, by reason.
    pub fn count_handshake_failures(
        mut self,
        counter: Family<HandshakeFailureLabels, Counter>,
    ) -> Self {
        self.handshake_failures = counter;
        self
    }

    /// Serve over TLS with `config`.
    pub fn tls(mut self, config: Arc<rustls::ServerConfig>) -> Self {
        self.tls = Some(tokio_rustls::TlsAcceptor::from(config));
        self
    }

    /// Serves `service` until `shutdown` completes, then stops accepting,
    /// asks every connection to finish (HTTP/2: GOAWAY, open streams go
    /// on; HTTP/1: the request in progress is answered) and returns once
    /// they all have ended. Dropping the future closes every connection at
    /// once.
    pub async fn serve<S, B>(self, service: S, shutdown: impl Future<Output = ()>)
    where
        S: Service<Request<RequestBody>, Response = Response<B>, Error = Infallible>
            + Clone
            + Send
            + 'static,
        S::Future: Send + 'static,
        B: Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<BoxError>,
    {
        let Server {
            name,
            listener,
            tls,
            protocol,
            limits,
            handshake_failures,
        } = self;
        let max_connections = limits.max_connections.max(1);
        let permits = Arc::new(Semaphore::new(max_connections));
        let tracker = Arc::new(Tracker::default());
        let stop = CancellationToken::new();
        let shared = Arc::new(Shared {
            name,
            tls,
            protocol,
            limits,
            handshake_failures,
            handshake_log: Mutex::default(),
        });
        let mut tasks = JoinSet::new();
        let mut shutdown = std::pin::pin!(shutdown);
        let mut accept_errors = Throttled::default();
        let mut full = Throttled::default();
        loop {
            let accepted = tokio::select! {
                () = &mut shutdown => break,
                Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
                accepted = listener.accept() => accepted,
            };
            let (tcp, peer) = match accepted {
                Ok(accepted) => {
                    accept_errors.reset();
                    accepted
                }
                // The client gave up before we took its connection.
                Err(e) if is_per_connection(&e) => continue,
                Err(e) => {
                    // Out of file descriptors and the like: nothing is
                    // accepted until some close. Free what can be freed,
                    // back off, and say so now and then, not per attempt.
                    tracker.close_idle_longest();
                    let pause = accept_errors.failure();
                    if accept_errors.should_log() {
                        tracing::warn!(
                            listener = name,
                            failures = accept_errors.count,
                            "accept failed: {e}; retrying in {pause:?}"
                        );
                    }
                    tokio::select! {
                        () = &mut shutdown => break,
                        () = tokio::time::sleep(pause) => continue,
                    }
                }
            };
            let permit = match permits.clone().try_acquire_owned() {
                Ok(permit) => permit,
                Err(_) => {
                    let closed = tracker.close_idle_longest();
                    full.failure();
                    if full.should_log() {
                        tracing::warn!(
                            listener = name,
                            max_connections,
                            times = full.count,
                            "listener full: {}",
                            if closed {
                                "closing the connection idle longest to make room"
                            } else {
                                "every connection is busy with a request; new ones wait"
                            }
                        );
                    }
                    tokio::select! {
                        () = &mut shutdown => break,
                        permit = permits.clone().acquire_owned() => match permit {
                            Ok(permit) => permit,
                            Err(_) => unreachable!("the semaphore is never closed"),
                        },
                    }
                }
            };
            let connection = Connection::new(tracker.clone());
            let span = tracing::debug_span!("connection", listener = name, %peer);
            tasks.spawn(
                serve_connection(
                    tcp,
                    peer,
                    shared.clone(),
                    service.clone(),
                    connection,
                    permit,
                    stop.clone(),
                )
                .instrument(span),
            );
        }
        // Stop accepting first: the kernel refuses new connections at once
        // instead of queueing them behind a server that will not serve.
        drop(listener);
        stop.cancel();
        while tasks.join_next().await.is_some() {}
    }
}

/// What every connection of a listener shares.
struct Shared {
    name: &'static str,
    tls: Option<tokio_rustls::TlsAcceptor>,
    protocol: Protocol,
    limits: Limits,
    handshake_failures: Family<HandshakeFailureLabels, Counter>,
    /// Per reason, so one noisy client cannot hide another reason.
    handshake_log: Mutex<BTreeMap<&'static str, Throttled>>,
}

impl Shared {
    /// Counts a failed handshake and logs it, each reason at most every
    /// [`Throttled::LOG_EVERY`] with how many there were since: a client
    /// that retries a refused handshake in a loop (Envoy does, every
    /// second or so) must not write a line per attempt.
    fn handshake_failed(&self, peer: SocketAddr, reason: HandshakeFailure, detail: &str) {
        let name = self.name;
        let reason_label = reason.label();
        self.handshake_failures
            .get_or_create(&HandshakeFailureLabels {
                reason: reason_label,
            })
            .inc();
        let mut log = self.handshake_log.lock().unwrap_or_else(|p| p.into_inner());
        let throttle = log.entry(reason_label).or_default();
        throttle.count += 1;
        if !throttle.should_log() {
            return;
        }
        let times = std::mem::take(&mut throttle.count);
        if reason.is_certificate() {
            tracing::warn!(
                %peer,
                reason = reason_label,
                times,
                "refused a {name} connection: TLS handshake failed: {detail}{}",
                reason.hint()
            );
        } else {
            tracing::info!(
                %peer,
                reason = reason_label,
                times,
                "refused a {name} connection: TLS handshake failed: {detail}"
            );
        }
    }
}

/// The labels of `meshd_xds_tls_handshake_failures_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HandshakeFailureLabels {
    pub reason: &'static str,
}

/// Why a TLS handshake failed, as few kinds as an operator acts on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HandshakeFailure {
    /// The client's certificate is not from a trusted root.
    UnknownCa,
    /// The client's certificate is expired or not yet valid.
    CertificateExpired,
    /// Some other problem with the client's certificate.
    BadCertificate,
    /// The client sent no certificate (one is required).
    NoCertificate,
    /// The client refused our certificate: it does not trust its root.
    PeerUnknownCa,
    /// The client refused our certificate for another reason.
    PeerBadCertificate,
    /// Not TLS, or TLS the two sides could not agree on.
    Protocol,
    /// The client went away mid-handshake.
    Closed,
    /// The handshake did not finish within `handshake_timeout`.
    Timeout,
    Other,
}

impl HandshakeFailure {
    /// The failure behind an error of `TlsAcceptor::accept`.
    pub fn of(error: &std::io::Error) -> Self {
        use rustls::{AlertDescription as Alert, CertificateError as Cert};
        let Some(tls) = error
            .get_ref()
            .and_then(|e| e.downcast_ref::<rustls::Error>())
        else {
            return match error.kind() {
                std::io::ErrorKind::UnexpectedEof
                | std::io::ErrorKind::ConnectionReset
                | std::io::ErrorKind::ConnectionAborted
                | std::io::ErrorKind::BrokenPipe => HandshakeFailure::Closed,
                _ => HandshakeFailure::Other,
            };
        };
        match tls {
            // Every root meshd generates has the same name, so a
            // certificate from another mesh's root (or a retired one)
            // finds an issuer of the right name whose signature does not
            // match, rather than no issuer: the same thing to an operator.
            rustls::Error::InvalidCertificate(Cert::UnknownIssuer | Cert::BadSignature) => {
                HandshakeFailure::UnknownCa
            }
            rustls::Error::InvalidCertificate(
                Cert::Expired
                | Cert::ExpiredContext { .. }
                | Cert::NotValidYet
                | Cert::NotValidYetContext { .. },
            ) => HandshakeFailure::CertificateExpired,
            rustls::Error::InvalidCertificate(_) => HandshakeFailure::BadCertificate,
            rustls::Error::NoCertificatesPresented => HandshakeFailure::NoCertificate,
            rustls::Error::AlertReceived(Alert::UnknownCA) => HandshakeFailure::PeerUnknownCa,
            // A client that finds a root of the right name with another key
            // (see above) fails our certificate's signature: DecryptError.
            rustls::Error::AlertReceived(
                Alert::BadCertificate
                | Alert::DecryptError
                | Alert::CertificateExpired
                | Alert::CertificateUnknown
                | Alert::UnsupportedCertificate
                | Alert::CertificateRevoked,
            ) => HandshakeFailure::PeerBadCertificate,
            rustls::Error::InappropriateMessage { .. }
            | rustls::Error::InappropriateHandshakeMessage { .. }
            | rustls::Error::InvalidMessage(_)
            | rustls::Error::PeerIncompatible(_)
            | rustls::Error::PeerMisbehaved(_)
            | rustls::Error::AlertReceived(_)
            | rustls::Error::NoApplicationProtocol => HandshakeFailure::Protocol,
            _ => HandshakeFailure::Other,
        }
    }

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            HandshakeFailure::UnknownCa => "unknown_ca",
            HandshakeFailure::CertificateExpired => "certificate_expired",
            HandshakeFailure::BadCertificate => "bad_certificate",
            HandshakeFailure::NoCertificate => "no_certificate",
            HandshakeFailure::PeerUnknownCa => "peer_unknown_ca",
            HandshakeFailure::PeerBadCertificate => "peer_bad_certificate",
            HandshakeFailure::Protocol => "protocol",
            HandshakeFailure::Closed => "closed",
            HandshakeFailure::Timeout => "timeout",
            HandshakeFailure::Other => "other",
        }
    }

    /// A certificate problem: a proxy locked out, worth a warning.
    fn is_certificate(self) -> bool {
        matches!(
            self,
            HandshakeFailure::UnknownCa
                | HandshakeFailure::CertificateExpired
                | HandshakeFailure::BadCertificate
                | HandshakeFailure::NoCertificate
                | HandshakeFailure::PeerUnknownCa
                | HandshakeFailure::PeerBadCertificate
        )
    }

    /// What usually causes it.
    fn hint(self) -> &'static str {
        match self {
            HandshakeFailure::UnknownCa => {
                " (a bootstrap identity from a root this control plane no longer trusts, or from another mesh)"
            }
            HandshakeFailure::PeerUnknownCa => {
                " (the client does not trust this control plane's root: its bootstrap trust bundle predates a root rotation, or is another mesh's)"
            }
            HandshakeFailure::CertificateExpired => {
                " (an expired bootstrap identity, or a clock off)"
            }
            _ => "",
        }
    }
}

/// Accept errors that concern one connection, not the listener.
fn is_per_connection(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionAborted | ConnectionReset | ConnectionRefused | Interrupted | WouldBlock
    )
}

/// A condition that repeats (accept failures, a full listener): backs off
/// and is logged at most every [`Throttled::LOG_EVERY`].
#[derive(Default)]
struct Throttled {
    count: u64,
    consecutive: u32,
    logged: Option<Instant>,
}

impl Throttled {
    const LOG_EVERY: Duration = Duration::from_secs(10);

    /// Records one more; the pause before trying again (10 ms doubling to 1 s).
    fn failure(&mut self) -> Duration {
        self.count += 1;
        self.consecutive = self.consecutive.saturating_add(1);
        Duration::from_millis(10 << self.consecutive.min(7)).min(Duration::from_secs(1))
    }

    fn reset(&mut self) {
        self.consecutive = 0;
    }

    fn should_log(&mut self) -> bool {
        let now = Instant::now();
        if self
            .logged
            .is_some_and(|logged| now.duration_since(logged) < Self::LOG_EVERY)
        {
            return false;
        }
        self.logged = Some(now);
        true
    }
}

// ---- connections and which of them may be closed to make room -----------

/// The open connections of one listener and, oldest first, those with no
/// request in progress.
#[derive(Default)]
struct Tracker {
    state: Mutex<TrackerState>,
}

#[derive(Default)]
struct TrackerState {
    next: u64,
    /// Per open connection: requests in progress, and its key in `idle`.
    open: HashMap<u64, Slot>,
    /// Connections with no request in progress, by when they became so.
    idle: BTreeMap<u64, Arc<Notify>>,
}

struct Slot {
    busy: usize,
    idle_key: Option<u64>,
}

impl TrackerState {
    fn key(&mut self) -> u64 {
        self.next += 1;
        self.next
    }
}

impl Tracker {
    fn lock(&self) -> MutexGuard<'_, TrackerState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Closes the connection that has gone longest without a request in
    /// progress, if there is one.
    fn close_idle_longest(&self) -> bool {
        let Some((_, close)) = self.lock().idle.pop_first() else {
            return false;
        };
        // `notify_one` keeps the wake-up for a task not yet waiting.
        close.notify_one();
        true
    }
}

/// One open connection, shared by its task and its requests.
struct Connection {
    id: u64,
    tracker: Arc<Tracker>,
    /// Notified to close the connection to make room.
    close: Arc<Notify>,
    /// Notified on the first request and whenever the connection turns
    /// idle or busy.
    activity: Notify,
    requested: AtomicBool,
}

impl Connection {
    fn new(tracker: Arc<Tracker>) -> Arc<Self> {
        let close = Arc::new(Notify::new());
        let id = {
            let mut state = tracker.lock();
            let id = state.key();
            let idle_key = state.key();
            state.idle.insert(idle_key, close.clone());
            state.open.insert(
                id,
                Slot {
                    busy: 0,
                    idle_key: Some(idle_key),
                },
            );
            id
        };
        Arc::new(Connection {
            id,
            tracker,
            close,
            activity: Notify::new(),
            requested: AtomicBool::new(false),
        })
    }

    /// A request head arrived.
    fn request_started(&self) {
        if !self.requested.swap(true, Ordering::Relaxed) {
            self.activity.notify_one();
        }
    }

    /// A request is complete and being answered (or, on HTTP/2, a stream
    /// is open): the connection may not be closed to make room.
    fn begin(&self) {
        let mut state = self.tracker.lock();
        let Some(slot) = state.open.get_mut(&self.id) else {
            return;
        };
        slot.busy += 1;
        if let Some(key) = slot.idle_key.take() {
            state.idle.remove(&key);
        }
        drop(state);
        self.activity.notify_one();
    }

    /// The answer to a request begun with [`Connection::begin`] is done.
    fn end(&self) {
        let mut state = self.tracker.lock();
        let key = state.key();
        let Some(slot) = state.open.get_mut(&self.id) else {
            return;
        };
        slot.busy = slot.busy.saturating_sub(1);
        if slot.busy == 0 && slot.idle_key.is_none() {
            slot.idle_key = Some(key);
            state.idle.insert(key, self.close.clone());
        }
        drop(state);
        self.activity.notify_one();
    }

    fn is_idle(&self) -> bool {
        self.tracker
            .lock()
            .open
            .get(&self.id)
            .is_none_or(|slot| slot.busy == 0)
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        let mut state = self.tracker.lock();
        if let Some(slot) = state.open.remove(&self.id)
            && let Some(key) = slot.idle_key
        {
            state.idle.remove(&key);
        }
    }
}

/// Why a connection's watchdog fired.
enum Expired {
    /// No request head within `header_read_timeout` of the handshake.
    NoRequest,
    /// HTTP/2: no open stream for `idle_timeout`.
    Idle,
}

/// Fires when the connection has gone too long without a request.
async fn watchdog(connection: &Connection, limits: &Limits, protocol: Protocol) -> Expired {
    if !connection.requested.load(Ordering::Relaxed) {
        let deadline = tokio::time::sleep(limits.header_read_timeout);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                () = &mut deadline => return Expired::NoRequest,
                () = connection.activity.notified() => {
                    if connection.requested.load(Ordering::Relaxed) {
                        break;
                    }
                }
            }
        }
    }
    if protocol == Protocol::Http1 {
        // hyper's header read timeout (set to idle_timeout) covers the
        // time between requests.
        return std::future::pending().await;
    }
    loop {
        while !connection.is_idle() {
            connection.activity.notified().await;
        }
        tokio::select! {
            () = tokio::time::sleep(limits.idle_timeout) => {
                if connection.is_idle() {
                    return Expired::Idle;
                }
            }
            () = connection.activity.notified() => {}
        }
    }
}

/// The TLS records a connection may hold unsent (see `serve_connection`):
/// one full record.
const TLS_SEND_BUFFER: usize = 16 * 1024 + 256;

async fn serve_connection<S, B>(
    tcp: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    service: S,
    connection: Arc<Connection>,
    permit: OwnedSemaphorePermit,
    stop: CancellationToken,
) where
    S: Service<Request<RequestBody>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    // Released when the connection is closed, whatever closes it.
    let _permit = permit;
    // Small request/response exchanges: never wait for Nagle.
    let _ = tcp.set_nodelay(true);
    // Written once per poll of the connection (HTTP/2, after the
    // handshake): see `coalesce`.
    let (tcp, sender) = coalesce(tcp);
    let Some(acceptor) = shared.tls.clone() else {
        let info = ConnInfo {
            peer,
            tls: None,
            tcp: Some(tcp.connect_info()),
        };
        return serve_http(tcp, sender, info, &shared, service, connection, &stop).await;
    };
    let handshake = tokio::time::timeout(shared.limits.handshake_timeout, acceptor.accept(tcp));
    let tls = tokio::select! {
        handshake = handshake => match handshake {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                shared.handshake_failed(peer, HandshakeFailure::of(&e), &e.to_string());
                return;
            }
            Err(_) => {
                let detail = format!("not finished within {:?}", shared.limits.handshake_timeout);
                shared.handshake_failed(peer, HandshakeFailure::Timeout, &detail);
                return;
            }
        },
        () = connection.close.notified() => {
            tracing::debug!("closed during its TLS handshake to make room");
            return;
        }
        () = stop.cancelled() => return,
    };
    // Boxed, as the connection is (see `drive`): the TLS stream (~1.2 KiB,
    // rustls' state) is then in the task once, not once per async frame
    // it is moved through.
    let mut tls = Box::new(tls);
    // What rustls keeps of records the socket has not taken yet. HTTP/2
    // hands it data as fast as it accepts it; at rustls' default (64 KiB)
    // a push of hundreds of kilobytes to thousands of proxies parked most
    // of it here, outside the server's send budget.
    tls.get_mut().1.set_buffer_limit(Some(TLS_SEND_BUFFER));
    let info = ConnInfo {
        peer,
        tls: Some(tls.connect_info()),
        tcp: None,
    };
    serve_http(tls, sender, info, &shared, service, connection, &stop).await;
}

/// The connection's details, put into each request's extensions.
#[derive(Clone)]
struct ConnInfo {
    peer: SocketAddr,
    tls: Option<TlsConnectInfo<TcpConnectInfo>>,
    tcp: Option<TcpConnectInfo>,
}

/// A hyper connection of either protocol.
trait HttpConnection: Future<Output = Result<(), hyper::Error>> {
    fn graceful_shutdown(self: Pin<&mut Self>);
}

impl<I, S, B> HttpConnection for hyper::server::conn::http1::Connection<I, S>
where
    S: hyper::service::HttpService<Incoming, ResBody = B>,
    S::Error: Into<BoxError>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    B: Body + 'static,
    B::Error: Into<BoxError>,
{
    fn graceful_shutdown(self: Pin<&mut Self>) {
        hyper::server::conn::http1::Connection::graceful_shutdown(self);
    }
}

impl<I, S, B, E> HttpConnection for hyper::server::conn::http2::Connection<I, S, E>
where
    S: hyper::service::HttpService<Incoming, ResBody = B>,
    S::Error: Into<BoxError>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    B: Body + 'static,
    B::Error: Into<BoxError>,
    E: hyper::rt::bounds::Http2ServerConnExec<S::Future, B>,
{
    fn graceful_shutdown(self: Pin<&mut Self>) {
        hyper::server::conn::http2::Connection::graceful_shutdown(self);
    }
}

async fn serve_http<I, S, B>(
    io: I,
    sender: Sender<TcpStream>,
    info: ConnInfo,
    shared: &Shared,
    service: S,
    connection: Arc<Connection>,
    stop: &CancellationToken,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: Service<Request<RequestBody>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    let limits = &shared.limits;
    let io = TokioIo::new(StallGuard::new(io, limits.idle_timeout));
    let service = ConnService {
        inner: service,
        connection: connection.clone(),
        info: Arc::new(info),
        protocol: shared.protocol,
        max_body_bytes: limits.max_body_bytes,
        body_timeout: limits.body_timeout,
    };
    match shared.protocol {
        Protocol::Http1 => {
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                // Counts from the end of the previous response: the idle
                // timeout between requests, slow heads included.
                .header_read_timeout(limits.idle_timeout);
            let conn = Box::pin(builder.serve_connection(io, service));
            drive(conn, &sender, &connection, shared, stop).await;
        }
        Protocol::Http2 => {
            let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
            builder
                .timer(TokioTimer::new())
                .keep_alive_interval(H2_KEEPALIVE_INTERVAL)
                .keep_alive_timeout(H2_KEEPALIVE_TIMEOUT)
                .max_concurrent_streams(H2_MAX_CONCURRENT_STREAMS)
                .initial_stream_window_size(H2_STREAM_WINDOW)
                .initial_connection_window_size(H2_CONNECTION_WINDOW)
                .max_send_buf_size(H2_SEND_BUFFER);
            let conn = Box::pin(builder.serve_connection(io, service));
            // h2 writes and flushes a frame at a time: from here on what
            // it writes during a poll goes out together when the poll is
            // over (`drive`).
            sender.start();
            drive(conn, &sender, &connection, shared, stop).await;
        }
    }
}

/// Runs `conn` until it ends, its watchdog fires, it is closed to make
/// room, or the server stops (then gracefully).
///
/// `conn` comes boxed: hyper's connection (its HTTP/2 state and the TLS
/// stream under it, ~2.7 KiB) is then in the task once. Moved by value
/// through this function and its callers, each async frame kept a slot
/// of its own for it, and a connection's task was ~9 KiB.
async fn drive<C: HttpConnection>(
    mut conn: Pin<Box<C>>,
    sender: &Sender<TcpStream>,
    connection: &Connection,
    shared: &Shared,
    stop: &CancellationToken,
) {
    let limits = &shared.limits;
    let watchdog = watchdog(connection, limits, shared.protocol);
    let mut watchdog = std::pin::pin!(watchdog);
    let mut watching = true;
    let mut stopping = false;
    loop {
        // What the poll wrote is sent when it is over (see `coalesce`).
        let polled = std::future::poll_fn(|cx| {
            let polled = conn.as_mut().poll(cx);
            let _ = sender.poll_send(cx);
            polled
        });
        tokio::select! {
            ended = polled => {
                if let Err(e) = ended {
                    tracing::debug!("connection ended: {e}");
                }
                return;
            }
            expired = &mut watchdog, if watching => {
                watching = false;
                match expired {
                    Expired::NoRequest => {
                        tracing::debug!(
                            "closed: no request within {:?} of connecting",
                            limits.header_read_timeout
                        );
                        return;
                    }
                    Expired::Idle => {
                        tracing::debug!("closing: no open stream for {:?}", limits.idle_timeout);
                        conn.as_mut().graceful_shutdown();
                    }
                }
            }
            () = connection.close.notified() => {
                tracing::debug!("closed to make room for a new connection");
                return;
            }
            () = stop.cancelled(), if !stopping => {
                stopping = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

// ---- per request ---------------------------------------------------------

/// The service of one connection: the 413 check, the connection's details
/// in the request, and the accounting of requests in progress.
struct ConnService<S> {
    inner: S,
    connection: Arc<Connection>,
    info: Arc<ConnInfo>,
    protocol: Protocol,
    max_body_bytes: Option<u64>,
    body_timeout: Duration,
}

type ServedFuture<B> =
    Pin<Box<dyn Future<Output = Result<Response<ResponseBody<B>>, Infallible>> + Send>>;

impl<S, B> hyper::service::Service<Request<Incoming>> for ConnService<S>
where
    S: Service<Request<RequestBody>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<ResponseBody<B>>;
    type Error = Infallible;
    type Future = ServedFuture<B>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        self.connection.request_started();
        let http1 = self.protocol == Protocol::Http1;
        if let Some(limit) = self.max_body_bytes
            && let Some(announced) = announced_length(request.headers())
            && announced > limit
        {
            tracing::debug!(announced, limit, "refused a request body before reading it");
            return Box::pin(std::future::ready(Ok(too_large(announced, limit, http1))));
        }
        let state = Arc::new(RequestState {
            connection: self.connection.clone(),
            phase: AtomicU8::new(PENDING),
        });
        // An HTTP/1 request counts as in progress once its body is in (a
        // body still arriving is a client that owes us bytes); an HTTP/2
        // stream as soon as it opens (an ADS request body never ends).
        let complete = !http1 || request.body().is_end_stream();
        if complete {
            state.begin();
        }
        let deadline = (http1 && !complete).then(|| Instant::now() + self.body_timeout);
        let mut request = request.map(|body| RequestBody {
            inner: body,
            deadline,
            timeout: self.body_timeout,
            sleep: None,
            state: (!complete).then(|| state.clone()),
        });
        let extensions = request.extensions_mut();
        extensions.insert(axum::extract::ConnectInfo(self.info.peer));
        if let Some(tls) = &self.info.tls {
            extensions.insert(tls.clone());
        }
        if let Some(tcp) = &self.info.tcp {
            extensions.insert(tcp.clone());
        }
        // Created here, not in the future: a stream reset before its
        // future first runs still ends the request.
        let guard = RequestGuard(state);
        let mut inner = self.inner.clone();
        Box::pin(async move {
            let response = match std::future::poll_fn(|cx| inner.poll_ready(cx)).await {
                Ok(()) => inner.call(request).await,
                Err(never) => match never {},
            };
            let response = match response {
                Ok(response) => response,
                Err(never) => match never {},
            };
            Ok(response.map(|body| ResponseBody {
                kind: Kind::Served(body),
                _request: Some(guard),
            }))
        })
    }
}

/// The body length a request announces.
fn announced_length(headers: &http::HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// `bytes` as people write limits.
fn size(bytes: u64) -> String {
    const KIB: u64 = 1024;
    const MIB: u64 = 1024 * 1024;
    if bytes >= MIB && bytes.is_multiple_of(MIB) {
        format!("{} MiB", bytes / MIB)
    } else if bytes >= KIB && bytes.is_multiple_of(KIB) {
        format!("{} KiB", bytes / KIB)
    } else {
        format!("{bytes} bytes")
    }
}

fn too_large<B>(announced: u64, limit: u64, http1: bool) -> Response<ResponseBody<B>> {
    let message = format!(
        "the request body ({announced} bytes) is larger than {}, the most this endpoint accepts\n",
        size(limit)
    );
    let mut response = Response::new(ResponseBody {
        kind: Kind::Local(Some(Bytes::from(message))),
        _request: None,
    });
    *response.status_mut() = StatusCode::PAYLOAD_TOO_LARGE;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if http1 {
        // The body was never read: the connection cannot be reused.
        headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

const PENDING: u8 = 0;
const BUSY: u8 = 1;
const DONE: u8 = 2;

/// Where one request is: still arriving, being answered, answered.
struct RequestState {
    connection: Arc<Connection>,
    phase: AtomicU8,
}

impl RequestState {
    fn begin(&self) {
        if self
            .phase
            .compare_exchange(PENDING, BUSY, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.connection.begin();
        }
    }

    fn end(&self) {
        if self.phase.swap(DONE, Ordering::AcqRel) == BUSY {
            self.connection.end();
        }
    }
}

/// Ends the request when its response is done (or dropped).
struct RequestGuard(Arc<RequestState>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.0.end();
    }
}

/// A request body as the handlers see it: hyper's, with the listener's
/// deadline for its arrival (HTTP/1).
pub struct RequestBody {
    inner: Incoming,
    deadline: Option<Instant>,
    timeout: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
    /// Told when the body is complete.
    state: Option<Arc<RequestState>>,
}

impl RequestBody {
    fn complete(&mut self) {
        if let Some(state) = self.state.take() {
            state.begin();
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(None) => {
                this.complete();
                Poll::Ready(None)
            }
            Poll::Ready(Some(Ok(frame))) => {
                if this.inner.is_end_stream() {
                    this.complete();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Pending => {
                if let Some(deadline) = this.deadline {
                    let sleep = this
                        .sleep
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                    if sleep.as_mut().poll(cx).is_ready() {
                        this.deadline = None;
                        return Poll::Ready(Some(Err(Box::new(BodyTimedOut(this.timeout)))));
                    }
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response body: the service's, or one written here (413).
pub struct ResponseBody<B> {
    kind: Kind<B>,
    _request: Option<RequestGuard>,
}

enum Kind<B> {
    Served(B),
    Local(Option<Bytes>),
}

impl<B> Body for ResponseBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match &mut self.kind {
            Kind::Served(body) => Pin::new(body).poll_frame(cx).map_err(Into::into),
            Kind::Local(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Served(body) => body.is_end_stream(),
            Kind::Local(bytes) => bytes.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Served(body) => body.size_hint(),
            Kind::Local(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
        }
    }
}

/// A connection's socket, which fails a write that makes no progress for
/// `stall` (a client that stops reading its response).
struct StallGuard<I> {
    io: I,
    stall: Duration,
    stalled: Option<Pin<Box<Sleep>>>,
}

impl<I> StallGuard<I> {
    fn new(io: I, stall: Duration) -> Self {
        StallGuard {
            io,
            stall,
            stalled: None,
        }
    }

    fn guard<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<std::io::Result<T>>,
    ) -> Poll<std::io::Result<T>> {
        if polled.is_ready() {
            self.stalled = None;
            return polled;
        }
        let stall = self.stall;
        let stalled = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(stall)));
        ready!(stalled.as_mut().poll(cx));
        Poll::Ready(Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("the client read nothing for {stall:?}"),
        )))
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for StallGuard<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for StallGuard<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write(cx, buf);
        self.guard(cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.guard(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let polled = Pin::new(&mut self.io).poll_flush(cx);
        self.guard(cx, polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let polled = Pin::new(&mut self.io).poll_shutdown(cx);
        self.guard(cx, polled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_fit_the_descriptor_limit_and_keep_a_reserve() {
        for limit in [16, 64, 256, 1024, 4096, 20_000, 65_536, 1 << 20, u64::MAX] {
            let caps = ConnectionCaps::for_fd_limit(limit);
            let total = (caps.xds + caps.webhook + caps.debug) as u64;
            assert!(total < limit, "{limit}: {caps:?}");
            assert!(caps.xds >= caps.webhook, "{limit}: {caps:?}");
            assert!(caps.debug >= 1, "{limit}: {caps:?}");
        }
        // The process limit the issue was reported with.
        let caps = ConnectionCaps::for_fd_limit(256);
        assert!(caps.xds + caps.webhook + caps.debug <= 192, "{caps:?}");
        // Plenty of descriptors: the defaults.
        assert_eq!(
            ConnectionCaps::for_fd_limit(1 << 20),
            ConnectionCaps {
                xds: DEFAULT_XDS_MAX_CONNECTIONS,
                webhook: DEFAULT_WEBHOOK_MAX_CONNECTIONS,
                debug: DEFAULT_DEBUG_MAX_CONNECTIONS,
            }
        );
    }

    #[test]
    fn limits_are_named_as_people_write_them() {
        assert_eq!(size(4 * 1024 * 1024), "4 MiB");
        assert_eq!(size(64 * 1024), "64 KiB");
        assert_eq!(size(1000), "1000 bytes");
    }

    #[test]
    fn a_timed_out_body_is_recognised_through_wrapping_errors() {
        #[derive(Debug)]
        struct Wrapper(BodyTimedOut);
        impl std::fmt::Display for Wrapper {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "wrapped")
            }
        }
        impl std::error::Error for Wrapper {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        assert!(is_body_timeout(&Wrapper(BodyTimedOut(Duration::ZERO))));
        assert!(!is_body_timeout(&std::io::Error::other("no")));
    }
}
