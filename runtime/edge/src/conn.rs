//! Client connections: accepting within the connection limit, the PROXY
//! header, the TLS handshake, choosing HTTP/1.1 or h2, and the per-connection
//! watchdog that enforces the header-read and idle timeouts.
//!
//! hyper has no server-side idle timeout and its HTTP/1 header timer also
//! runs between keep-alive requests, so both timers live here instead: the
//! IO wrapper [`Tracked`] notes when bytes move, the service notes when a
//! request starts and its body ends, and [`ConnState::expiry`] turns that into
//! one sleep per connection.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, watch};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, warn};

use crate::client_addr::is_trusted;
use crate::node::Shared;
use crate::proxy_protocol;
use crate::service;

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// One bound public listener.
pub struct Listener {
    pub name: String,
    pub socket: TcpListener,
    pub tls: Option<TlsAcceptor>,
    pub proxy_protocol: bool,
}

/// The parts of a listener its connections need (not the socket, which
/// closes when the accept loop ends).
struct ListenerInfo {
    name: String,
    tls: Option<TlsAcceptor>,
    proxy_protocol: bool,
}

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listener")
            .field("name", &self.name)
            .field("tls", &self.tls.is_some())
            .field("proxy_protocol", &self.proxy_protocol)
            .finish()
    }
}

/// What a request knows about the connection it arrived on.
#[derive(Debug)]
pub struct ConnInfo {
    /// The TCP peer, or the source named by a trusted PROXY header.
    pub peer: SocketAddr,
    pub tls: bool,
    pub state: ConnState,
}

/// Accepts until `shutdown` flips, each connection on its own task.
pub async fn accept_loop(
    listener: Listener,
    shared: Arc<Shared>,
    permits: Arc<Semaphore>,
    mut shutdown: watch::Receiver<bool>,
) {
    let Listener {
        name,
        socket,
        tls,
        proxy_protocol,
    } = listener;
    let listener = Arc::new(ListenerInfo {
        name,
        tls,
        proxy_protocol,
    });
    loop {
        // Wait for room before accepting: excess connections queue in the
        // kernel's backlog instead of being accepted and dropped.
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
            _ = shutdown.changed() => return,
        };
        let (stream, peer) = tokio::select! {
            r = socket.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off briefly rather than spin.
                    warn!(listener = %listener.name, error = %e, "accept failed");
                    shared.metrics.connection_error(&listener.name, "accept");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        let listener = listener.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            shared.metrics.open_connections.inc();
            serve(stream, peer, &listener, shared.clone(), shutdown, permit).await;
            shared.metrics.open_connections.dec();
        });
    }
}

async fn serve(
    mut stream: TcpStream,
    tcp_peer: SocketAddr,
    listener: &ListenerInfo,
    shared: Arc<Shared>,
    shutdown: watch::Receiver<bool>,
    _permit: OwnedSemaphorePermit,
) {
    let limits = &shared.limits;
    let handshake_deadline = Instant::now() + limits.header_read_timeout;
    let mut peer = tcp_peer;
    let mut prefix = Vec::new();
    let mut step = Step {
        shared: &shared,
        listener,
        peer,
        deadline: handshake_deadline,
    };

    if listener.proxy_protocol {
        if !is_trusted(tcp_peer.ip().to_canonical(), &shared.trusted_proxies) {
            debug!(listener = %listener.name, peer = %tcp_peer, "PROXY header expected from an untrusted peer; closing");
            shared
                .metrics
                .connection_error(&listener.name, "proxy_untrusted");
            return;
        }
        let Some(header) = step
            .run(
                proxy_protocol::read_header(&mut stream),
                "proxy_header",
                "proxy_timeout",
            )
            .await
        else {
            return;
        };
        if let Some(source) = header.source {
            peer = source;
            step.peer = source;
        }
        prefix = header.rest;
    }
    let io = Rewind::new(prefix, stream);

    match &listener.tls {
        // Boxed: the handshake and TLS session state are several KiB that
        // a cleartext connection's task should not carry for its lifetime.
        Some(acceptor) => {
            let conn_shared = shared.clone();
            Box::pin(async move {
                let Some(tls) = step
                    .run(acceptor.accept(io), "tls_handshake", "tls_timeout")
                    .await
                else {
                    return;
                };
                let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
                serve_http(tls, peer, true, h2, listener, conn_shared, shutdown).await;
            })
            .await
        }
        None => {
            let mut io = io;
            let Some(h2) = step
                .run(sniff_h2(&mut io), "preface", "header_timeout")
                .await
            else {
                return;
            };
            serve_http(io, peer, false, h2, listener, shared, shutdown).await;
        }
    }
}

/// One step of connection setup (PROXY header, TLS handshake, protocol
/// sniff), bounded by the handshake deadline; a failure or timeout is
/// counted under its reason and ends the connection.
struct Step<'a> {
    shared: &'a Shared,
    listener: &'a ListenerInfo,
    peer: SocketAddr,
    deadline: Instant,
}

impl Step<'_> {
    async fn run<T, E: std::fmt::Display>(
        &self,
        fut: impl Future<Output = Result<T, E>>,
        failed: &'static str,
        timed_out: &'static str,
    ) -> Option<T> {
        let reason = match tokio::time::timeout_at(self.deadline, fut).await {
            Ok(Ok(value)) => return Some(value),
            Ok(Err(e)) => {
                debug!(listener = %self.listener.name, peer = %self.peer, error = %e, step = failed, "connection setup failed");
                failed
            }
            Err(_) => timed_out,
        };
        self.shared
            .metrics
            .connection_error(&self.listener.name, reason);
        None
    }
}

/// Reads just enough of a cleartext connection to tell the h2 preface
/// (prior knowledge) from HTTP/1; the bytes are replayed to hyper.
async fn sniff_h2<T: AsyncRead + Unpin>(io: &mut Rewind<T>) -> io::Result<bool> {
    while io.prefix.len() < H2_PREFACE.len() {
        if !H2_PREFACE.starts_with(&io.prefix) {
            return Ok(false);
        }
        let mut chunk = [0u8; 24];
        let n = io.inner.read(&mut chunk).await?;
        if n == 0 {
            return Ok(false);
        }
        io.prefix.extend_from_slice(&chunk[..n]);
    }
    Ok(io.prefix.starts_with(H2_PREFACE))
}

async fn serve_http<IO>(
    io: IO,
    peer: SocketAddr,
    tls: bool,
    h2: bool,
    listener: &ListenerInfo,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let limits = shared.limits.clone();
    let info = Arc::new(ConnInfo {
        peer,
        tls,
        state: ConnState::new(!h2),
    });
    let io = TokioIo::new(Tracked {
        inner: io,
        info: info.clone(),
    });
    let svc_shared = shared.clone();
    let svc_info = info.clone();
    // hyper keeps a slot for the request future for the whole connection,
    // sized like the future; boxed, an idle connection holds a pointer
    // instead of the largest request path's state (some KiB).
    let svc = hyper::service::service_fn(move |req| {
        let shared = svc_shared.clone();
        let info = svc_info.clone();
        Box::pin(async move {
            Ok::<_, std::convert::Infallible>(service::handle(shared, info, req).await)
        })
    });

    let result = if h2 {
        let mut builder = http2::Builder::new(TokioExecutor::new());
        builder
            .timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
            .max_concurrent_streams(256);
        // Boxed, as the TLS path is: most connections are HTTP/1.
        let mut conn = Box::pin(builder.serve_connection(io, svc));
        drive(conn.as_mut(), &info, &limits, &mut shutdown, |c| {
            c.graceful_shutdown()
        })
        .await
    } else {
        let mut builder = http1::Builder::new();
        builder
            .header_read_timeout(None)
            .max_header_size(limits.max_header_bytes)
            .max_buf_size(limits.max_header_bytes.max(8192).max(64 * 1024));
        if limits.max_headers != 100 {
            builder.max_headers(limits.max_headers);
        }
        let conn = builder.serve_connection(io, svc).with_upgrades();
        tokio::pin!(conn);
        drive(conn, &info, &limits, &mut shutdown, |c| {
            c.graceful_shutdown()
        })
        .await
    };
    if let Err(e) = result {
        if e.is_timeout() {
            shared
                .metrics
                .connection_error(&listener.name, "header_timeout");
        } else if !e.is_incomplete_message() && !e.is_canceled() {
            debug!(listener = %listener.name, peer = %peer, error = %e, "connection error");
        }
    }
}

/// Runs a hyper connection to completion while watching the timers and the
/// node's shutdown signal.
async fn drive<C, F>(
    mut conn: Pin<&mut C>,
    info: &ConnInfo,
    limits: &cathedral_config::Limits,
    shutdown: &mut watch::Receiver<bool>,
    graceful: F,
) -> Result<(), hyper::Error>
where
    C: Future<Output = Result<(), hyper::Error>>,
    F: Fn(Pin<&mut C>),
{
    let mut closing = *shutdown.borrow();
    if closing {
        graceful(conn.as_mut());
    }
    loop {
        tokio::select! {
            r = conn.as_mut() => return r,
            expiry = info.state.expiry(limits.header_read_timeout, limits.idle_timeout), if !closing => {
                match expiry {
                    // A client that never finishes its request head gets no
                    // polite goodbye.
                    Expiry::HeaderTimeout => return Ok(()),
                    Expiry::Idle => {
                        closing = true;
                        graceful(conn.as_mut());
                    }
                }
            }
            _ = shutdown.changed(), if !closing => {
                closing = true;
                graceful(conn.as_mut());
            }
        }
    }
}

impl ConnInfo {
    /// A request head arrived; the returned guard ends the request when
    /// dropped (after its response body is done).
    pub fn request_started(self: &Arc<Self>) -> InFlight {
        let state = &self.state;
        state.in_flight.fetch_add(1, Ordering::Relaxed);
        state.head_started.store(0, Ordering::Relaxed);
        state.served.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }
}

pub enum Expiry {
    HeaderTimeout,
    Idle,
}

/// Activity bookkeeping for one connection. Times are milliseconds since
/// the connection was accepted; 0 means "not set".
#[derive(Debug)]
pub struct ConnState {
    start: Instant,
    in_flight: AtomicUsize,
    head_started: AtomicU64,
    last_activity: AtomicU64,
    served: AtomicU64,
    /// HTTP/1 times every request head; h2 only the first (later idle
    /// bytes are pings and window updates, not slow requests).
    time_every_head: bool,
    wake: Notify,
}

impl ConnState {
    fn new(time_every_head: bool) -> Self {
        Self {
            start: Instant::now(),
            in_flight: AtomicUsize::new(0),
            head_started: AtomicU64::new(0),
            last_activity: AtomicU64::new(1),
            served: AtomicU64::new(0),
            time_every_head,
            wake: Notify::new(),
        }
    }

    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64 + 1
    }

    fn at(&self, ms: u64) -> Instant {
        self.start + Duration::from_millis(ms.saturating_sub(1))
    }

    fn on_read(&self) {
        let now = self.now_ms();
        self.last_activity.store(now, Ordering::Relaxed);
        if self.in_flight.load(Ordering::Relaxed) == 0
            && (self.time_every_head || self.served.load(Ordering::Relaxed) == 0)
            && self
                .head_started
                .compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.wake.notify_one();
        }
    }

    fn on_write(&self) {
        self.last_activity.store(self.now_ms(), Ordering::Relaxed);
    }

    /// Resolves when the connection should be closed for a timeout.
    async fn expiry(&self, header_timeout: Duration, idle_timeout: Duration) -> Expiry {
        loop {
            let notified = self.wake.notified();
            let now = self.now_ms();
            let deadline = if self.in_flight.load(Ordering::Relaxed) > 0 {
                now + idle_timeout.as_millis() as u64
            } else {
                let head = self.head_started.load(Ordering::Relaxed);
                if head != 0 {
                    let d = head + header_timeout.as_millis() as u64;
                    if now >= d {
                        return Expiry::HeaderTimeout;
                    }
                    d
                } else {
                    let d = self.last_activity.load(Ordering::Relaxed)
                        + idle_timeout.as_millis() as u64;
                    if now >= d {
                        return Expiry::Idle;
                    }
                    d
                }
            };
            tokio::select! {
                _ = tokio::time::sleep_until(self.at(deadline)) => {}
                _ = notified => {}
            }
        }
    }
}

/// Marks one request in flight on its connection.
#[derive(Debug)]
pub struct InFlight(Arc<ConnInfo>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let state = &self.0.state;
        state.last_activity.store(state.now_ms(), Ordering::Relaxed);
        state.in_flight.fetch_sub(1, Ordering::Relaxed);
        state.wake.notify_one();
    }
}

pin_project_lite::pin_project! {
    /// Replays bytes read ahead (PROXY header leftovers, the h2 sniff)
    /// before reading from the socket.
    #[derive(Debug)]
    pub struct Rewind<T> {
        prefix: Vec<u8>,
        pos: usize,
        error: Option<io::Error>,
        #[pin]
        inner: T,
    }
}

impl<T> Rewind<T> {
    fn new(prefix: Vec<u8>, inner: T) -> Self {
        Self {
            prefix,
            pos: 0,
            error: None,
            inner,
        }
    }
}

impl<T: AsyncRead> AsyncRead for Rewind<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let mut this = self.project();
        if *this.pos < this.prefix.len() {
            let rest = &this.prefix[*this.pos..];
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            *this.pos += n;
            if *this.pos == this.prefix.len() {
                *this.prefix = Vec::new();
                *this.pos = 0;
                // Fill the rest of the caller's buffer from the socket in
                // the same read: hyper would otherwise parse the sniffed
                // bytes alone and grow its 8 KiB read buffer to 16 KiB
                // for the rest of the request head, for the life of the
                // connection. Nothing there yet is fine (the waker is
                // registered); an error is kept for the next read.
                if buf.remaining() > 0
                    && let Poll::Ready(Err(e)) = this.inner.as_mut().poll_read(cx, buf)
                {
                    *this.error = Some(e);
                }
            }
            return Poll::Ready(Ok(()));
        }
        if let Some(e) = this.error.take() {
            return Poll::Ready(Err(e));
        }
        this.inner.poll_read(cx, buf)
    }
}

impl<T: AsyncWrite> AsyncWrite for Rewind<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.project().inner.poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.project().inner.poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

pin_project_lite::pin_project! {
    /// Notes read and write progress for the connection's timers.
    struct Tracked<T> {
        #[pin]
        inner: T,
        info: Arc<ConnInfo>,
    }
}

impl<T: AsyncRead> AsyncRead for Tracked<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let r = this.inner.poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.info.state.on_read();
        }
        r
    }
}

impl<T: AsyncWrite> AsyncWrite for Tracked<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let r = this.inner.poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            this.info.state.on_write();
        }
        r
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let r = this.inner.poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            this.info.state.on_write();
        }
        r
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn rewind_replays_the_prefix_and_fills_the_read_from_the_socket() {
        let mut io = Rewind::new(b"GET ".to_vec(), &b"/ HTTP/1.1\r\n\r\n"[..]);
        let mut buf = [0u8; 64];
        let n = io.read(&mut buf).await.expect("read");
        assert_eq!(&buf[..n], b"GET / HTTP/1.1\r\n\r\n");

        // A read smaller than the prefix takes only prefix bytes.
        let mut io = Rewind::new(b"GET ".to_vec(), &b"/"[..]);
        let mut small = [0u8; 2];
        assert_eq!(io.read(&mut small).await.expect("read"), 2);
        assert_eq!(&small, b"GE");
        let n = io.read(&mut buf).await.expect("read");
        assert_eq!(&buf[..n], b"T /");
    }

    #[tokio::test]
    async fn rewind_keeps_a_socket_error_for_the_next_read() {
        let mut io = Rewind::new(b"GET ".to_vec(), FailOnce(false));
        let mut buf = [0u8; 64];
        assert_eq!(io.read(&mut buf).await.expect("prefix"), 4);
        let err = io.read(&mut buf).await.expect_err("the kept error");
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
        assert_eq!(io.read(&mut buf).await.expect("then the end"), 0);
    }

    /// A socket whose first read fails and whose later reads see the end.
    struct FailOnce(bool);

    impl AsyncRead for FailOnce {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            _buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            if std::mem::replace(&mut self.0, true) {
                return Poll::Ready(Ok(()));
            }
            Poll::Ready(Err(io::ErrorKind::ConnectionReset.into()))
        }
    }
}
