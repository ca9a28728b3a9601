//! The HTTP edge: hyper 1.x on a plain accept loop, the route table, graceful shutdown. It
//! parses, calls the engine (or `db/` for admin reads and writes) and renders; no business
//! rule lives here.

pub mod call;
pub mod campaign_input;
pub mod cart_answer;
pub mod cart_input;
mod connections;
pub mod coupon_input;
pub mod error;
pub mod guard;
pub mod handlers;
pub mod request;
pub mod response;
pub mod routes;
pub mod set_answer;
pub mod stack_answer;

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::time::Sleep;

use crate::config::{HoldSettings, HttpSettings, Secret};
use crate::db::batch_jobs::BatchJobs;
use crate::db::health::DatabaseHealth;
use crate::db::listener::ListenerStatus;
use crate::db::shipper::ShippingStatus;
use crate::db::validation_log::ValidationLog;
use crate::engine::Engine;
use crate::http::connections::{Arriving, Connections, Registration};
use crate::journal::rejected::Rejected;
use crate::metrics::Metrics;

/// What request handlers need; shared by every connection.
#[derive(Debug)]
pub struct State {
    pub engine: Arc<Engine>,
    pub metrics: Arc<Metrics>,
    /// The background parts `/health` and the admin stats report on.
    pub ops: Operations,
    /// For the admin routes only; the public routes never touch it.
    pub pool: sqlx::PgPool,
    pub admin_token: Secret,
    pub api_token: Secret,
    /// Requests being handled; `try_acquire` failing means overload (503 at once).
    pub in_flight: tokio::sync::Semaphore,
    pub guard: guard::LookupGuard,
    pub http: HttpSettings,
    pub hold: HoldSettings,
    /// Bulk codes assign-next may hand one user per campaign.
    pub assigned_codes_per_user: u32,
    /// What a cart in a request is checked against (API.md §9).
    pub cart: cart_input::CartLimits,
    /// Batches of bulk codes this instance is writing.
    pub batch_jobs: BatchJobs,
}

/// The background parts of the service, as far as requests report on them.
#[derive(Debug)]
pub struct Operations {
    pub database: Arc<DatabaseHealth>,
    pub listener: Arc<ListenerStatus>,
    pub validation_log: ValidationLog,
    pub shipping: Arc<ShippingStatus>,
    pub rejected: Arc<Rejected>,
    pub started: Instant,
}

/// What a connection past `max_connections` is told before it is closed.
const OVER_CAPACITY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
retry-after: 1\r\nx-content-type-options: nosniff\r\nconnection: close\r\ncontent-length: 85\r\n\r\n\
{\"error\":{\"code\":\"OVERLOADED\",\"message\":\"the service is at capacity; retry shortly\"}}";

/// Accepts connections until `shutdown` resolves, then lets in-flight requests finish for
/// at most the shutdown timeout and returns.
pub async fn serve(listener: TcpListener, state: Arc<State>, shutdown: impl Future<Output = ()>) {
    let settings = state.http.clone();
    let mut builder = hyper::server::conn::http1::Builder::new();
    // Without a timer hyper silently disables the header timeout.
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(settings.header_read_timeout)
        .max_buf_size(settings.max_header_bytes)
        .keep_alive(true);
    let places = Arc::new(tokio::sync::Semaphore::new(settings.max_connections));
    let exempt: Vec<IpAddr> =
        settings.connection_cap_exempt.iter().chain(state.guard.trusted_proxies()).copied().collect();
    let open = Connections::new(settings.max_connections_per_address, exempt);
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    let Some(registration) = open.register(peer.ip()) else {
                        tokio::spawn(refuse(stream));
                        continue;
                    };
                    let connection = Connection {
                        stream,
                        peer,
                        registration,
                        state: state.clone(),
                        builder: builder.clone(),
                        watcher: graceful.watcher(),
                        write_timeout: settings.response_write_timeout,
                    };
                    match places.clone().try_acquire_owned() {
                        Ok(place) => {
                            tokio::spawn(connection.serve(place));
                        }
                        // Every place is taken: the connection idle the longest (else the
                        // slowest body) makes room, if one may.
                        Err(_) if open.close_for_room() => {
                            let places = places.clone();
                            tokio::spawn(async move {
                                match tokio::time::timeout(Duration::from_millis(500), places.acquire_owned()).await {
                                    Ok(Ok(place)) => connection.serve(place).await,
                                    _ => refuse(connection.stream).await,
                                }
                            });
                        }
                        Err(_) => {
                            tokio::spawn(refuse(connection.stream));
                        }
                    }
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
    if tokio::time::timeout(settings.shutdown_timeout, graceful.shutdown()).await.is_err() {
        tracing::warn!(timeout = ?settings.shutdown_timeout, "connections still open after the shutdown timeout; closing them");
    }
}

/// An accepted connection with its place among the open ones, about to be served.
struct Connection {
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    registration: Registration,
    state: Arc<State>,
    builder: hyper::server::conn::http1::Builder,
    watcher: hyper_util::server::graceful::Watcher,
    write_timeout: Duration,
}

impl Connection {
    /// Serves the connection until it ends, or until the server wants its place while it has
    /// no request in flight.
    async fn serve(self, place: tokio::sync::OwnedSemaphorePermit) {
        let Connection { stream, peer, mut registration, state, builder, watcher, write_timeout } = self;
        registration.activity.serving();
        let activity = Arc::clone(&registration.activity);
        let service = service_fn(move |req| {
            let (state, activity) = (state.clone(), Arc::clone(&activity));
            async move {
                activity.begin();
                let req = req.map(|body| Arriving::new(body, Arc::clone(&activity)));
                let response = routes::handle(&state, req, peer.ip()).await;
                activity.end();
                Ok::<_, Infallible>(response)
            }
        });
        let io = TokioIo::new(WriteDeadline::new(stream, write_timeout));
        let connection = watcher.watch(builder.serve_connection(io, service));
        tokio::pin!(connection);
        let mut asked_to_close = false;
        loop {
            tokio::select! {
                ended = &mut connection => {
                    if let Err(err) = ended {
                        tracing::debug!(error = %err, "connection ended with an error");
                    }
                    break;
                }
                Ok(()) = &mut registration.closing, if !asked_to_close => {
                    asked_to_close = true;
                    // Closed by dropping it: nothing is in flight to answer, or a slow body
                    // that is not yet a request.
                    if registration.activity.idle() || registration.activity.arriving() {
                        break;
                    }
                }
            }
        }
        drop(place);
    }
}

/// Tells a connection over the limit to come back later, and closes it.
async fn refuse(mut stream: tokio::net::TcpStream) {
    use tokio::io::AsyncWriteExt;
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(OVER_CAPACITY)).await;
    let _ = stream.shutdown().await;
}

/// A stream whose writes fail once one has waited longer than `timeout`: a client that
/// stops reading its response cannot hold the connection (and its slot) for ever.
struct WriteDeadline<S> {
    inner: S,
    timeout: Duration,
    waiting: Option<Pin<Box<Sleep>>>,
}

impl<S> WriteDeadline<S> {
    fn new(inner: S, timeout: Duration) -> WriteDeadline<S> {
        WriteDeadline { inner, timeout, waiting: None }
    }

    /// Called when a write could not proceed: fails it once the deadline has passed.
    fn overdue(&mut self, cx: &mut Context<'_>) -> bool {
        let timeout = self.timeout;
        let waiting = self.waiting.get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        waiting.as_mut().poll(cx).is_ready()
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for WriteDeadline<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WriteDeadline<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write(cx, buf) {
            Poll::Pending if self.overdue(cx) => Poll::Ready(Err(io::ErrorKind::TimedOut.into())),
            Poll::Pending => Poll::Pending,
            ready => {
                self.waiting = None;
                ready
            }
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match Pin::new(&mut self.inner).poll_flush(cx) {
            Poll::Pending if self.overdue(cx) => Poll::Ready(Err(io::ErrorKind::TimedOut.into())),
            Poll::Pending => Poll::Pending,
            ready => {
                self.waiting = None;
                ready
            }
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
