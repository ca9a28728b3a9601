//! The HTTP edge: hyper 1.x on a plain accept loop, our own router, graceful shutdown.

pub mod admin;
pub mod coupon_input;
pub mod error;
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
}

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
        .keep_alive(true);
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
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
