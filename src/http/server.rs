//! The HTTP server: routes, the access log (one line per request, written
//! when the body has been sent or abandoned), and graceful shutdown.

use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use http_body::{Body as _, Frame};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;

use super::{registry, token};
use crate::cache::CacheResult;
use crate::config::Config;
use crate::mirror::{Mirror, StartError};
use crate::oci::error::RegistryError;

/// What a handler learned about a request, for its access-log line.
#[derive(Clone, Debug, Default)]
pub struct LogContext {
    pub upstream: Option<String>,
    pub repository: Option<String>,
    pub reference: Option<String>,
    pub via: Option<&'static str>,
    pub cache: Option<CacheResult>,
    /// The redirect target a blob was sent to, if any.
    pub redirect: Option<String>,
    /// The sponsor account behind the request (by token or IP grant).
    pub account: Option<String>,
}

/// How long a client may take to send its request headers.
const HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
/// Connections served at once; further ones wait in the listen backlog.
const MAX_CONNECTIONS: usize = 16_384;

/// How long downloads in flight may finish after SIGTERM.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Start(#[from] StartError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

pub fn app(mirror: Arc<Mirror>) -> Router {
    Router::new()
        .route("/v2", any(registry::base))
        .route("/v2/", any(registry::base))
        .route("/v2/{*rest}", any(registry::handle))
        // Docker puts a mirror's path prefix before /v2.
        .route("/{registry}/v2", any(registry::base))
        .route("/{registry}/v2/", any(registry::base))
        .route("/{registry}/v2/{*rest}", any(registry::handle))
        .route("/token", any(token::token))
        .route("/healthz", get(|| async { "ok\n" }))
        .fallback(|| async { (StatusCode::NOT_FOUND, "not found\n") })
        .layer(middleware::from_fn_with_state(mirror.clone(), access_log))
        .with_state(mirror)
}

/// Runs the mirror until SIGINT or SIGTERM.
pub async fn serve(config: Config) -> Result<(), ServeError> {
    let mirror = Arc::new(Mirror::open(&config).await?);
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| ServeError::Listen {
            addr: config.listen,
            source,
        })?;
    let addr = listener.local_addr().unwrap_or(config.listen);
    tracing::info!(%addr, data_dir = %config.data_dir.display(), default_upstream = %config.default_upstream, "lank8s listening");

    let router = app(mirror);
    // A client must send its request headers within HEADER_READ_TIMEOUT,
    // so connections that trickle or idle cannot pile up without bound.
    let mut connection = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    connection
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    connection
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(HEADER_READ_TIMEOUT);
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));

    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot,
            _ = &mut shutdown => break,
        };
        let Ok(slot) = slot else { break };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, typically: wait, don't spin.
                    tracing::warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let service = tower::Layer::layer(&axum::Extension(ConnectInfo(peer)), router.clone());
        let served = connection.serve_connection_with_upgrades(
            TokioIo::new(stream),
            TowerToHyperService::new(service),
        );
        let served = graceful.watch(served.into_owned());
        tokio::spawn(async move {
            let _ = served.await;
            drop(slot);
        });
    }

    // Stop accepting and let downloads in flight finish, but not forever:
    // a slow client must not hold up a rollout.
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(SHUTDOWN_GRACE) => {
            tracing::warn!(grace = ?SHUTDOWN_GRACE, "downloads still running at shutdown were cut off");
        }
    }
    Ok(())
}

async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = interrupt => {}
        _ = terminate => {}
    }
    tracing::info!("shutting down");
}

/// The client's address as lank8s believes it: the peer, or what trusted
/// proxies forwarded.
#[derive(Clone, Copy, Debug)]
pub struct ClientAddr(pub IpAddr);

async fn access_log(
    State(mirror): State<Arc<Mirror>>,
    mut request: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let method = request.method().to_string();
    let path = request.uri().path().to_owned();
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.ip())
        .unwrap_or(IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED));
    let client_ip = crate::dispatch::client_address(
        peer,
        request.headers(),
        &mirror.trusted_proxies,
        mirror.forwarded_header,
    );
    request.extensions_mut().insert(ClientAddr(client_ip));
    let client = client_ip.to_string();

    // If the client goes away before the handler answers, the future is
    // dropped here and the pending line is still written.
    let mut pending = PendingLine(Some(AccessLine {
        method,
        path,
        client,
        status: 499,
        context: LogContext::default(),
        error: None,
        started,
    }));
    let mut response = next.run(request).await;
    response.headers_mut().insert(
        "docker-distribution-api-version",
        HeaderValue::from_static("registry/2.0"),
    );
    let mut line = pending.0.take().expect("the pending line is taken once");
    line.status = response.status().as_u16();
    line.context = response
        .extensions_mut()
        .remove::<LogContext>()
        .unwrap_or_default();
    line.error = response
        .extensions_mut()
        .remove::<RegistryError>()
        .map(|e| e.message);
    let head = line.method == "HEAD";
    let declared = response
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let (parts, body) = response.into_parts();
    Response::from_parts(
        parts,
        Body::new(LoggedBody {
            inner: body,
            line: Some(line),
            bytes: 0,
            declared,
            head,
        }),
    )
    .into_response()
}

/// An access line for a request whose handler has not answered yet.
struct PendingLine(Option<AccessLine>);

impl Drop for PendingLine {
    fn drop(&mut self) {
        if let Some(line) = self.0.take() {
            line.emit(0, "client gone");
        }
    }
}

struct AccessLine {
    method: String,
    path: String,
    client: String,
    status: u16,
    context: LogContext,
    error: Option<String>,
    started: Instant,
}

impl AccessLine {
    fn emit(self, bytes: u64, outcome: &str) {
        let c = &self.context;
        tracing::info!(
            target: "lank8s::access",
            method = %self.method,
            path = %self.path,
            upstream = c.upstream.as_deref().unwrap_or("-"),
            repository = c.repository.as_deref().unwrap_or("-"),
            reference = c.reference.as_deref().unwrap_or("-"),
            via = c.via.unwrap_or("-"),
            status = self.status,
            cache = c.cache.map_or("none", CacheResult::as_str),
            bytes,
            duration_ms = self.started.elapsed().as_millis() as u64,
            client = %self.client,
            outcome,
            redirect = c.redirect.is_some(),
            redirect_to = c.redirect.as_deref().unwrap_or(""),
            account = c.account.as_deref().unwrap_or("-"),
            error = self.error.as_deref().unwrap_or(""),
            "request"
        );
    }
}

/// A response body that counts what it sends and writes the access line
/// when it ends, fails, or is dropped because the client went away.
struct LoggedBody {
    inner: Body,
    line: Option<AccessLine>,
    bytes: u64,
    /// The Content-Length sent; the server stops polling once it is reached.
    declared: Option<u64>,
    /// A HEAD answer has no body to send, whatever its headers say.
    head: bool,
}

impl http_body::Body for LoggedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.bytes += data.len() as u64;
                }
            }
            Poll::Ready(Some(Err(_))) => self.finish("aborted"),
            Poll::Ready(None) => self.finish("complete"),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl LoggedBody {
    fn finish(&mut self, outcome: &str) {
        if let Some(line) = self.line.take() {
            line.emit(self.bytes, outcome);
        }
    }
}

impl Drop for LoggedBody {
    fn drop(&mut self) {
        // The server stops polling a body once its declared length is sent,
        // and may never poll an empty one (HEAD) at all.
        let complete = self.head || self.inner.is_end_stream() || self.declared == Some(self.bytes);
        let outcome = if complete { "complete" } else { "client gone" };
        self.finish(outcome);
    }
}
