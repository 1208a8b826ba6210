//! A connection's socket, written once per poll of its connection rather
//! than once per HTTP/2 frame.
//!
//! h2 writes each DATA frame and then flushes: a 55 KiB listener pushed to
//! a proxy was four frames, four TLS writes and four `writev`s, and over
//! loopback each of those also pays the receiving side's TCP processing.
//! On a service addition at 2,000 proxies, socket writes were a quarter of
//! meshd's CPU, at 7.3 `writev`s per proxy.
//!
//! Below TLS, [`Coalesce`] keeps what the connection writes in one buffer,
//! and its [`Sender`] sends it when the poll of the connection is over
//! (`serving::drive`): whatever h2 wrote in that poll leaves in one write.
//!
//! ```text
//! drive: poll hyper's connection ──> h2 ──> TLS ──> Coalesce (buffered; a flush waits only on a full socket)
//!        then Sender::poll_send ─────────────────────> socket (one write)
//! ```
//!
//! Memory: a connection holds a buffer only during a poll, and it is its
//! worker thread's, reused poll after poll ([`MAX_BUFFERED`] each). A
//! socket that does not take all of it (a proxy that reads slower than it
//! is sent to) is congested: the connection keeps a copy of the leftover
//! and, until that is sent, every write waits for it first, so it holds no
//! more than the leftover, as rustls would hold an unsent record.
//!
//! Until [`Sender::start`] every call goes straight to the socket: during
//! the TLS handshake, which `drive` does not poll, and on HTTP/1
//! connections, whose writes hyper already gathers into one buffer.

use std::cell::Cell;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::Connected;

/// The most bytes held back from the socket: a 55 KiB listener, as h2's
/// 16 KiB frames in TLS records, with room to spare.
pub(super) const MAX_BUFFERED: usize = 64 * 1024;

/// The socket, as the connection (hyper, through TLS) writes and reads it.
pub(super) struct Coalesce<I> {
    shared: Arc<Mutex<Buffered<I>>>,
}

/// Sends what the connection wrote during a poll, once the poll is over.
pub(super) struct Sender<I> {
    shared: Arc<Mutex<Buffered<I>>>,
}

struct Buffered<I> {
    io: I,
    /// Whether writes are buffered (after [`Sender::start`]).
    on: bool,
    /// Bytes written and not yet sent, from `sent` on; empty, with no
    /// allocation, once all are sent.
    buffered: Vec<u8>,
    sent: usize,
    /// The last send left bytes behind: the socket is full.
    congested: bool,
    /// A send after a poll failed: the connection's next read or write
    /// fails with it.
    failed: Option<io::Error>,
}

/// The socket `io`, and the handle that sends what is buffered in it.
pub(super) fn coalesce<I>(io: I) -> (Coalesce<I>, Sender<I>) {
    let shared = Arc::new(Mutex::new(Buffered {
        io,
        on: false,
        buffered: Vec::new(),
        sent: 0,
        congested: false,
        failed: None,
    }));
    (
        Coalesce {
            shared: shared.clone(),
        },
        Sender { shared },
    )
}

fn lock<I>(shared: &Mutex<Buffered<I>>) -> MutexGuard<'_, Buffered<I>> {
    // Only the connection's own task takes it: never contended, and a
    // panic there ends the connection, not this state's use.
    shared.lock().unwrap_or_else(|e| e.into_inner())
}

impl<I: AsyncWrite + Unpin> Buffered<I> {
    fn unsent(&self) -> usize {
        self.buffered.len() - self.sent
    }

    /// Sends every buffered byte; `Pending` (the socket's) until it has.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.buffered.len() {
            let written = Pin::new(&mut self.io).poll_write(cx, &self.buffered[self.sent..]);
            let n = match written {
                Poll::Pending => {
                    self.congested = true;
                    if self.buffered.capacity() == MAX_BUFFERED {
                        // Held until the proxy reads: the connection keeps
                        // a copy of the leftover, the thread its buffer.
                        let leftover = self.buffered[self.sent..].to_vec();
                        give_back(std::mem::replace(&mut self.buffered, leftover));
                        self.sent = 0;
                    }
                    return Poll::Pending;
                }
                Poll::Ready(n) => n?,
            };
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        // Idle connections keep no buffer.
        give_back(std::mem::take(&mut self.buffered));
        self.sent = 0;
        self.congested = false;
        Poll::Ready(Ok(()))
    }

    fn take_failure(&mut self) -> io::Result<()> {
        self.failed.take().map_or(Ok(()), Err)
    }

    /// Buffers `bufs` (`len` bytes, which fit: see `poll_write_vectored`).
    fn buffer(&mut self, bufs: &[io::IoSlice<'_>], len: usize) {
        if self.buffered.capacity() == 0 {
            self.buffered = take_spare();
        }
        debug_assert!(self.buffered.len() + len <= self.buffered.capacity());
        for buf in bufs {
            self.buffered.extend_from_slice(buf);
        }
    }
}

thread_local! {
    /// The buffer of the connection being polled on this thread: a
    /// connection holds one only during its poll (or, congested, a copy of
    /// what is left), so each worker thread needs about one, reused
    /// without touching the allocator.
    static SPARE: Cell<Vec<u8>> = const { Cell::new(Vec::new()) };
}

fn take_spare() -> Vec<u8> {
    let spare = SPARE.take();
    if spare.capacity() == MAX_BUFFERED {
        spare
    } else {
        Vec::with_capacity(MAX_BUFFERED)
    }
}

fn give_back(mut buffer: Vec<u8>) {
    if buffer.capacity() == MAX_BUFFERED {
        buffer.clear();
        SPARE.set(buffer);
    }
}

impl<I: AsyncWrite + Unpin> Sender<I> {
    /// From now on the connection's writes are buffered until
    /// [`Sender::poll_send`].
    pub(super) fn start(&self) {
        lock(&self.shared).on = true;
    }

    /// Sends what the connection has buffered. `Pending` registers the
    /// task for when the socket takes more; a failure is kept for the
    /// connection's next read or write.
    pub(super) fn poll_send(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut buffered = lock(&self.shared);
        match ready!(buffered.poll_send(cx)) {
            Ok(()) => {}
            Err(e) => buffered.failed = Some(e),
        }
        Poll::Ready(())
    }
}

impl<I: AsyncRead + AsyncWrite + Unpin> AsyncRead for Coalesce<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let mut buffered = lock(&self.shared);
        buffered.take_failure()?;
        Pin::new(&mut buffered.io).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Coalesce<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[io::IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let mut buffered = lock(&self.shared);
        buffered.take_failure()?;
        let len: usize = bufs.iter().map(|b| b.len()).sum();
        if buffered.unsent() > 0 && (buffered.congested || buffered.unsent() + len > MAX_BUFFERED) {
            ready!(buffered.poll_send(cx))?;
        }
        if !buffered.on || (buffered.unsent() == 0 && len >= MAX_BUFFERED) {
            // Nothing to join it with, and more than a burst's worth.
            return Pin::new(&mut buffered.io).poll_write_vectored(cx, bufs);
        }
        buffered.buffer(bufs, len);
        Poll::Ready(Ok(len))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut buffered = lock(&self.shared);
        buffered.take_failure()?;
        if buffered.on {
            // The sender sends it all when this poll of the connection is
            // over: h2 flushes after every frame it writes. A full socket
            // is waited for, as it would be without the buffer (the
            // connection's stall guard counts from there).
            if buffered.congested {
                ready!(buffered.poll_send(cx))?;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut buffered.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut buffered = lock(&self.shared);
        buffered.take_failure()?;
        ready!(buffered.poll_send(cx))?;
        Pin::new(&mut buffered.io).poll_shutdown(cx)
    }
}

impl<I: Connected> Connected for Coalesce<I> {
    type ConnectInfo = I::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        lock(&self.shared).io.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A socket that records each write it takes, and takes at most
    /// `room` bytes before it is full.
    #[derive(Default)]
    struct Socket {
        writes: Vec<Vec<u8>>,
        room: Option<usize>,
        fail: bool,
    }

    impl Socket {
        fn bytes(&self) -> Vec<u8> {
            self.writes.concat()
        }
    }

    impl AsyncRead for Socket {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Poll::Pending
        }
    }

    impl AsyncWrite for Socket {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            if self.fail {
                return Poll::Ready(Err(io::ErrorKind::ConnectionReset.into()));
            }
            let n = self.room.map_or(buf.len(), |room| room.min(buf.len()));
            if n == 0 {
                return Poll::Pending;
            }
            if let Some(room) = &mut self.room {
                *room -= n;
            }
            self.writes.push(buf[..n].to_vec());
            Poll::Ready(Ok(n))
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    fn cx() -> Context<'static> {
        Context::from_waker(std::task::Waker::noop())
    }

    /// Writes `frame` and flushes, as h2 does for each frame.
    fn write_frame(io: &mut Coalesce<Socket>, frame: &[u8]) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut *io).poll_write(&mut cx(), frame);
        if let Poll::Ready(Ok(_)) = written {
            assert!(Pin::new(&mut *io).poll_flush(&mut cx()).is_ready());
        }
        written
    }

    fn socket(io: &Coalesce<Socket>) -> MutexGuard<'_, Buffered<Socket>> {
        lock(&io.shared)
    }

    #[test]
    fn the_frames_of_one_poll_leave_in_one_write() {
        let (mut io, sender) = coalesce(Socket::default());
        sender.start();
        let frames = [
            vec![1u8; 9],
            vec![2; 16 * 1024 + 29],
            vec![3; 16 * 1024 + 29],
            vec![4; 700],
        ];
        for frame in &frames {
            assert!(matches!(write_frame(&mut io, frame), Poll::Ready(Ok(n)) if n == frame.len()));
        }
        assert!(
            socket(&io).io.writes.is_empty(),
            "sent before the poll was over"
        );
        assert!(sender.poll_send(&mut cx()).is_ready());
        let sent = socket(&io);
        assert_eq!(sent.io.writes.len(), 1);
        assert_eq!(sent.io.bytes(), frames.concat());
        assert_eq!(
            sent.buffered.capacity(),
            0,
            "an idle connection keeps a buffer"
        );
    }

    #[test]
    fn until_started_every_write_goes_straight_to_the_socket() {
        let (mut io, _sender) = coalesce(Socket::default());
        for frame in [&b"client hello"[..], b"finished"] {
            assert!(write_frame(&mut io, frame).is_ready());
        }
        assert_eq!(
            socket(&io).io.writes,
            [b"client hello".to_vec(), b"finished".to_vec()]
        );
    }

    #[test]
    fn a_full_buffer_is_sent_before_more_is_taken() {
        let (mut io, sender) = coalesce(Socket::default());
        sender.start();
        let frame = vec![7u8; 20_000];
        for _ in 0..4 {
            assert!(write_frame(&mut io, &frame).is_ready());
        }
        // Three frames fit in the buffer; the fourth sent them first.
        assert_eq!(socket(&io).io.writes.len(), 1);
        assert!(socket(&io).unsent() <= MAX_BUFFERED);
        assert!(sender.poll_send(&mut cx()).is_ready());
        assert_eq!(socket(&io).io.bytes(), frame.repeat(4));
        // A write larger than the buffer, with nothing to join it with,
        // is not copied.
        let large = vec![8u8; MAX_BUFFERED + 1];
        assert!(write_frame(&mut io, &large).is_ready());
        assert_eq!(socket(&io).io.writes.last(), Some(&large));
    }

    #[test]
    fn a_congested_connection_keeps_only_its_leftover_and_waits_for_it() {
        let (mut io, sender) = coalesce(Socket {
            room: Some(10_000),
            ..Socket::default()
        });
        sender.start();
        let frames = [vec![1u8; 16_000], vec![2u8; 16_000]];
        for frame in &frames {
            assert!(write_frame(&mut io, frame).is_ready());
        }
        assert!(sender.poll_send(&mut cx()).is_pending());
        {
            let held = socket(&io);
            assert!(held.congested);
            assert_eq!(held.unsent(), 22_000);
            assert_eq!(
                held.buffered.capacity(),
                22_000,
                "kept more than the leftover"
            );
        }
        // Until the leftover is out, a write or a flush waits for the
        // socket.
        assert!(write_frame(&mut io, &[3; 100]).is_pending());
        assert!(Pin::new(&mut io).poll_flush(&mut cx()).is_pending());
        socket(&io).io.room = None;
        assert!(write_frame(&mut io, &[3; 100]).is_ready());
        assert!(sender.poll_send(&mut cx()).is_ready());
        let mut expected = frames.concat();
        expected.extend([3; 100]);
        assert_eq!(socket(&io).io.bytes(), expected, "bytes lost or reordered");
        assert!(!socket(&io).congested);
    }

    #[test]
    fn a_failed_send_fails_the_connections_next_read_or_write() {
        let (mut io, sender) = coalesce(Socket::default());
        sender.start();
        assert!(write_frame(&mut io, b"data").is_ready());
        socket(&io).io.fail = true;
        assert!(sender.poll_send(&mut cx()).is_ready());
        let mut buf = [0u8; 8];
        let read = Pin::new(&mut io).poll_read(&mut cx(), &mut ReadBuf::new(&mut buf));
        assert!(matches!(read, Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::ConnectionReset));
    }
}
