//! The listener: plain HTTP or TLS through one server (axum-server on hyper), with the bounds a
//! slow or flooding client meets:
//! - a header-read timeout, which is also the idle time allowed between requests on a kept-alive
//!   connection (hyper starts it whenever it waits for a request head);
//! - a first-request timeout (it also covers hyper's protocol detection) and, on TLS, a
//!   handshake timeout, all `header_read_timeout`;
//! - a cap on open connections (`max_connections`, REST and agent links together): beyond it a
//!   new connection is closed at once, with a log line at most every 10 s;
//! - after shutdown, a bounded drain of in-flight requests.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::extract::connect_info::IntoMakeServiceWithConnectInfo;
use axum::Router;
use axum_server::accept::{Accept, DefaultAcceptor};
use axum_server::Handle;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::RunError;

/// How long in-flight requests may take to finish after shutdown is asked.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Least time between two "connection limit reached" log lines.
const LIMIT_LOG_EVERY: Duration = Duration::from_secs(10);

/// The app as the listener serves it (each request knows its peer address).
pub type App = IntoMakeServiceWithConnectInfo<Router, SocketAddr>;

/// Serves `app` on `listener` until `shutdown`, then drains for at most [`DRAIN_TIMEOUT`].
pub async fn serve(
    listener: std::net::TcpListener,
    app: App,
    config: &Config,
    shutdown: &CancellationToken,
) -> Result<(), RunError> {
    let capped = Capped::new(DefaultAcceptor, config.max_connections);
    let handle: Handle<SocketAddr> = Handle::new();
    let server = axum_server::from_tcp(listener)
        .map_err(|e| RunError::Serve(e.to_string()))?
        .handle(handle.clone())
        .first_request_timeout(config.header_read_timeout);
    let served = match &config.tls {
        None => {
            let mut server = server.acceptor(capped);
            tune(&mut server, config);
            Box::pin(server.serve(app)) as Pin<Box<dyn Future<Output = io::Result<()>> + Send>>
        }
        Some(tls) => {
            let _ = rustls::crypto::ring::default_provider().install_default();
            let tls_config =
                axum_server::tls_rustls::RustlsConfig::from_pem_file(&tls.cert, &tls.key)
                    .await
                    .map_err(|e| {
                        RunError::Tls(format!(
                            "{} / {}: {e}",
                            tls.cert.display(),
                            tls.key.display()
                        ))
                    })?;
            let acceptor = axum_server::tls_rustls::RustlsAcceptor::new(tls_config)
                .handshake_timeout(config.header_read_timeout)
                .acceptor(capped);
            let mut server = server.acceptor(acceptor);
            tune(&mut server, config);
            Box::pin(server.serve(app))
        }
    };
    let mut served = served;
    let result = tokio::select! {
        result = &mut served => result,
        _ = shutdown.cancelled() => {
            handle.graceful_shutdown(Some(DRAIN_TIMEOUT));
            served.await
        }
    };
    result.map_err(|e| RunError::Serve(e.to_string()))
}

/// The protocol bounds: header read (and keep-alive idle) timeout for HTTP/1; pings for HTTP/2.
fn tune<A: axum_server::Address, Acc>(server: &mut axum_server::Server<A, Acc>, config: &Config) {
    let builder = server.http_builder();
    builder
        .http1()
        .header_read_timeout(Some(config.header_read_timeout));
    builder
        .http2()
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(config.header_read_timeout);
}

/// An acceptor that holds one of `max` permits for each connection's life, and closes
/// connections beyond.
#[derive(Clone)]
pub struct Capped<A> {
    inner: A,
    permits: Arc<Semaphore>,
    max: usize,
    refused: Arc<AtomicU64>,
    last_log: Arc<Mutex<Option<Instant>>>,
}

impl<A> Capped<A> {
    pub fn new(inner: A, max: usize) -> Capped<A> {
        Capped {
            inner,
            permits: Arc::new(Semaphore::new(max)),
            max,
            refused: Arc::new(AtomicU64::new(0)),
            last_log: Arc::new(Mutex::new(None)),
        }
    }

    fn refuse(&self) {
        let refused = self.refused.fetch_add(1, Ordering::Relaxed) + 1;
        let mut last = self.last_log.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_none_or(|t| t.elapsed() >= LIMIT_LOG_EVERY) {
            *last = Some(Instant::now());
            tracing::warn!(
                max_connections = self.max,
                refused_so_far = refused,
                "connection limit reached: closing new connections (max_connections)"
            );
        }
    }
}

type Accepted<St, Sv> = Pin<Box<dyn Future<Output = io::Result<(St, Sv)>> + Send>>;

impl<A, I, S> Accept<I, S> for Capped<A>
where
    A: Accept<I, S>,
    A::Future: Send + 'static,
    A::Stream: Send + 'static,
    A::Service: Send + 'static,
{
    type Stream = Counted<A::Stream>;
    type Service = A::Service;
    type Future = Accepted<Self::Stream, Self::Service>;

    fn accept(&self, stream: I, service: S) -> Self::Future {
        match self.permits.clone().try_acquire_owned() {
            Ok(permit) => {
                let accepting = self.inner.accept(stream, service);
                Box::pin(async move {
                    let (stream, service) = accepting.await?;
                    Ok((
                        Counted {
                            inner: stream,
                            _permit: permit,
                        },
                        service,
                    ))
                })
            }
            Err(_) => {
                self.refuse();
                drop(stream);
                Box::pin(std::future::ready(Err(io::Error::other(
                    "connection limit reached",
                ))))
            }
        }
    }
}

/// A connection's stream, holding its place under the cap until it closes.
pub struct Counted<S> {
    inner: S,
    _permit: OwnedSemaphorePermit,
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
