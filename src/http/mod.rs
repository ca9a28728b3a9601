//! The HTTP edge: hyper 1.x on a plain accept loop, our own router, graceful shutdown.

pub mod admin;
pub mod coupon_input;
pub mod error;
pub mod guard;
pub mod redemption;
pub mod request;
pub mod response;
pub mod router;

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

use crate::cache::Cache;
use crate::config::HttpSettings;
use crate::config::Secret;
use crate::db::health::DatabaseHealth;
use crate::db::listener::ListenerStatus;
use crate::db::validation_log::ValidationLog;
use crate::journal::Journal;
use crate::metrics::Metrics;

/// What request handlers need; shared by every connection.
#[derive(Debug)]
pub struct State {
    pub cache: Arc<Cache>,
    pub validation_log: ValidationLog,
    pub metrics: Arc<Metrics>,
    pub database: Arc<DatabaseHealth>,
    pub listener: Arc<ListenerStatus>,
    pub journal: Journal,
    /// For the admin routes only; the request path never touches it.
    pub pool: sqlx::PgPool,
    pub admin_token: Secret,
    pub started: Instant,
    /// Requests being handled; `try_acquire` failing means overload (503 at once).
    pub in_flight: tokio::sync::Semaphore,
    pub guard: guard::LookupGuard,
    pub admin_timeout: Duration,
}

/// What a connection past `max_connections` is told before it is closed.
const OVER_CAPACITY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
retry-after: 1\r\nconnection: close\r\ncontent-length: 85\r\n\r\n\
{\"error\":{\"code\":\"OVERLOADED\",\"message\":\"the service is at capacity; retry shortly\"}}";

/// Accepts connections until `shutdown` resolves, then lets in-flight requests finish for
/// at most `shutdown_timeout_ms` and returns.
pub async fn serve(
    listener: TcpListener,
    state: Arc<State>,
    settings: &HttpSettings,
    shutdown: impl Future<Output = ()>,
) {
    let mut builder = hyper::server::conn::http1::Builder::new();
    // Without a timer hyper silently disables the header timeout (TECH-NOTES §3).
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_millis(settings.header_read_timeout_ms))
        .max_buf_size(settings.max_header_bytes)
        .keep_alive(true);
    let connections = Arc::new(tokio::sync::Semaphore::new(settings.max_connections));
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    let Ok(permit) = connections.clone().try_acquire_owned() else {
                        tokio::spawn(refuse(stream));
                        continue;
                    };
                    let state = state.clone();
                    let service = service_fn(move |req| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(router::handle(&state, req, peer.ip()).await) }
                    });
                    let connection = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
                    tokio::spawn(async move {
                        if let Err(err) = connection.await {
                            tracing::debug!(error = %err, "connection ended with an error");
                        }
                        drop(permit);
                    });
                }
                Err(err) => {
                    // Out of file descriptors and the like: back off rather than spin.
                    tracing::warn!(error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    let timeout = Duration::from_millis(settings.shutdown_timeout_ms);
    if tokio::time::timeout(timeout, graceful.shutdown()).await.is_err() {
        tracing::warn!(
            timeout_ms = settings.shutdown_timeout_ms,
            "connections still open after the shutdown timeout; closing them"
        );
    }
}

/// Tells a connection over the limit to come back later, and closes it.
async fn refuse(mut stream: tokio::net::TcpStream) {
    use tokio::io::AsyncWriteExt;
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(OVER_CAPACITY)).await;
    let _ = stream.shutdown().await;
}
