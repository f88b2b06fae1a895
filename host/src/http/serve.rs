//! Serving the API on a TCP listener, plain or TLS, under the bounds that
//! keep slow or hostile clients from tying the server up:
//!
//! - at most `connections_max` connections are open; one more is closed at
//!   once and counted (`plugbus_http_connections_refused_total`);
//! - a TLS handshake, and a request's headers, must arrive within
//!   `header_timeout` of the connection being ready for them (an idle
//!   keep-alive connection included), else the connection is closed;
//! - a request's body must arrive within `body_timeout` (the handlers read
//!   bodies under it and answer 408: `http::read_body`).
//!
//! Each refusal is counted in `plugbus_http_refused_total{reason}`. On
//! shutdown the listener closes, connections finish the request they are
//! in, and idle ones are closed.
//!
//! It knows nothing of routes or tokens: it serves the router it is given.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use super::tls::ReloadingCert;
use crate::metrics::Metrics;

/// The default `connections_max`.
pub const CONNECTIONS_MAX_DEFAULT: usize = 512;
/// The default `header_timeout`, in ms.
pub const HEADER_TIMEOUT_MS_DEFAULT: u64 = 10_000;
/// The default `body_timeout`, in ms: a 1 MiB body at 35 KiB/s.
pub const BODY_TIMEOUT_MS_DEFAULT: u64 = 30_000;

/// How long shutdown waits for open connections to finish their request.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// The bounds of the listener.
#[derive(Clone)]
pub struct ServeOptions {
    /// Connections open at once.
    pub connections_max: usize,
    /// Time for a TLS handshake, and for a request's headers.
    pub header_timeout: Duration,
    /// Serve TLS with this certificate.
    pub tls: Option<Arc<ReloadingCert>>,
}

/// Serve `app` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    app: axum::Router,
    options: ServeOptions,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), super::tls::TlsError> {
    let acceptor = match &options.tls {
        Some(cert) => Some(tokio_rustls::TlsAcceptor::from(cert.server_config()?)),
        None => None,
    };
    let permits = Arc::new(Semaphore::new(options.connections_max));
    let graceful = GracefulShutdown::new();
    let service = TowerToHyperService::new(app);
    let slow_headers = metrics.http_refused("headers");
    let slow_tls = metrics.http_refused("tls_handshake");
    tokio::pin!(shutdown);
    loop {
        let (stream, _peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, or a connection reset before
                    // it was accepted: wait a little rather than spin.
                    tracing::warn!("accepting an HTTP connection failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            metrics.http_connections_refused.inc();
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let watcher = graceful.watcher();
        let (service, acceptor) = (service.clone(), acceptor.clone());
        let (open, slow_headers, slow_tls) = (
            metrics.http_connections_open.clone(),
            slow_headers.clone(),
            slow_tls.clone(),
        );
        let header_timeout = options.header_timeout;
        tokio::spawn(async move {
            open.inc();
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(TokioTimer::new())
                .header_read_timeout(header_timeout);
            let served = match acceptor {
                None => {
                    let conn = http.serve_connection(TokioIo::new(stream), service);
                    watcher.watch(conn).await
                }
                Some(acceptor) => {
                    match tokio::time::timeout(header_timeout, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let conn = http.serve_connection(TokioIo::new(tls), service);
                            watcher.watch(conn).await
                        }
                        Ok(Err(e)) => {
                            tracing::debug!("TLS handshake failed: {e}");
                            Ok(())
                        }
                        Err(_) => {
                            slow_tls.inc();
                            Ok(())
                        }
                    }
                }
            };
            if let Err(e) = served {
                if e.is_timeout() {
                    slow_headers.inc();
                } else {
                    tracing::debug!("HTTP connection ended: {e}");
                }
            }
            open.dec();
            drop(permit);
        });
    }
    drop(listener);
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            "HTTP connections still open after {SHUTDOWN_GRACE:?} of shutdown were closed"
        );
    }
    Ok(())
}
