//! A scriptable in-process fake registry for fault injection: serves a TestImage correctly unless a path is told to misbehave, and records every request.

mod auth;
mod helpers;
mod respond;

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::http::{HeaderMap, Method, header};
use bytes::Bytes;
use tokio::task::JoinHandle;

use super::images::TestImage;
use auth::AuthMode;
pub use helpers::{
    ErrorAnswer, RawAnswer, error_answer, files_under, raw_http10_get, upstream_table,
};
use respond::handle;

/// What a path answers instead of its stored content.
#[derive(Clone, Debug)]
pub enum Behaviour {
    /// The stored content, served correctly (useful to override a broader rule).
    Normal,
    /// Declares the full Content-Length but ends the connection after this many body bytes.
    CutAfter(usize),
    /// Same length, headers and claimed digest, but the bytes are altered.
    WrongBytes,
    /// A captive-portal style HTML page with status 200.
    Html,
    /// 429 with `Retry-After: 7`.
    TooManyRequests,
    /// 500 with a registry-style error body.
    ServerError,
    /// Any status with an empty body.
    Status(u16),
    /// Waits this long before sending anything, then serves normally.
    SlowFirstByte(Duration),
    /// 307 with this `Location` (relative or absolute).
    Redirect(String),
    /// This status if the request carries an `Authorization` header, like object
    /// stores behind signed URLs; otherwise serves normally.
    RejectAuthorization(u16),
    /// The stored content with its full Content-Length, sent `chunk` bytes at a
    /// time with a pause of `every` between chunks, so that a download is
    /// still under way while a test acts.
    Throttle { chunk: usize, every: Duration },
    /// The stored content without a Content-Length (chunked transfer encoding),
    /// `chunk` bytes at a time with a pause of `every` between chunks and before
    /// the end; with `wrong_bytes` its first byte is altered, like
    /// [`Behaviour::WrongBytes`].
    Chunked {
        chunk: usize,
        every: Duration,
        wrong_bytes: bool,
    },
    /// Waits this long, then behaves as the inner behaviour (e.g. a slow redirect).
    Delayed(Duration, Box<Behaviour>),
}

/// One request as received.
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    pub headers: HeaderMap,
    /// The status answered; 0 while the answer is pending or if the client left first.
    pub status: u16,
}

impl RecordedRequest {
    /// The token of an `Authorization: Bearer` header, if any.
    pub fn bearer_token(&self) -> Option<&str> {
        self.headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
    }

    /// Every `Accept` header line, in order.
    pub fn accept_lines(&self) -> Vec<String> {
        self.headers
            .get_all(header::ACCEPT)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(str::to_string)
            .collect()
    }
}

#[derive(Clone)]
struct Content {
    bytes: Bytes,
    content_type: String,
    digest: String,
}

struct Rule {
    method: Option<Method>,
    path: String,
    behaviour: Behaviour,
    /// `None` means forever.
    remaining: Option<usize>,
}

#[derive(Default)]
struct FaultState {
    content: Mutex<HashMap<String, Content>>,
    rules: Mutex<Vec<Rule>>,
    requests: Mutex<Vec<RecordedRequest>>,
    /// What a path serves instead when the request's `Accept` excludes its type.
    fallbacks: Mutex<HashMap<String, Content>>,
    auth: Mutex<Option<AuthMode>>,
    revoked: Mutex<HashSet<String>>,
    /// Paths that answer 404 to requests whose `Accept` excludes the stored type.
    unconvertible: Mutex<HashSet<String>>,
}

pub struct FaultUpstream {
    addr: SocketAddr,
    state: Arc<FaultState>,
    task: JoinHandle<()>,
}

/// `/v2/<repository>/blobs/<digest>`
pub fn blob_path(repository: &str, digest: &str) -> String {
    format!("/v2/{repository}/blobs/{digest}")
}

/// `/v2/<repository>/manifests/<tag or digest>`
pub fn manifest_path(repository: &str, reference: &str) -> String {
    format!("/v2/{repository}/manifests/{reference}")
}

impl FaultUpstream {
    /// Listens on 127.0.0.1.
    pub async fn start() -> FaultUpstream {
        Self::start_on(IpAddr::V4(Ipv4Addr::LOCALHOST)).await
    }

    /// Listens on another loopback address (e.g. 127.0.0.2) so that it is a different
    /// host from clients' point of view, as a CDN behind a redirect would be.
    pub async fn start_on(ip: IpAddr) -> FaultUpstream {
        let listener = tokio::net::TcpListener::bind(SocketAddr::new(ip, 0))
            .await
            .expect("bind fault upstream");
        let addr = listener.local_addr().expect("fault upstream addr");
        let state = Arc::new(FaultState::default());
        let app = Router::new()
            .fallback(handle)
            .with_state(Arc::clone(&state));
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FaultUpstream { addr, state, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// Serves every manifest (by digest, and the top one also by `tag`) and blob of `image`.
    pub fn serve_image(&self, image: &TestImage, repository: &str, tag: &str) {
        let (_, media_type, bytes) = &image.manifests[0];
        self.put(&manifest_path(repository, tag), media_type, bytes.clone());
        for (digest, media_type, bytes) in &image.manifests {
            self.put(
                &manifest_path(repository, digest),
                media_type,
                bytes.clone(),
            );
        }
        for (digest, bytes) in &image.blobs {
            self.put(
                &blob_path(repository, digest),
                "application/octet-stream",
                bytes.clone(),
            );
        }
    }

    /// Serves `bytes` at `path`, with `Docker-Content-Digest` set to their digest.
    pub fn put(&self, path: &str, content_type: &str, bytes: Bytes) {
        let content = Content {
            digest: super::digest_of(&bytes),
            content_type: content_type.to_string(),
            bytes,
        };
        self.state
            .content
            .lock()
            .unwrap()
            .insert(path.to_string(), content);
    }

    /// `path` misbehaves for every method until changed.
    pub fn set(&self, path: &str, behaviour: Behaviour) {
        self.add_rule(None, path, behaviour, None);
    }

    /// `path` misbehaves for the next `times` requests, then serves normally again.
    pub fn set_times(&self, path: &str, behaviour: Behaviour, times: usize) {
        self.add_rule(None, path, behaviour, Some(times));
    }

    /// Only requests with `method` (e.g. "GET", leaving HEAD alone) misbehave.
    pub fn set_for_method(&self, method: &str, path: &str, behaviour: Behaviour) {
        let method = Method::from_bytes(method.as_bytes()).expect("HTTP method");
        self.add_rule(Some(method), path, behaviour, None);
    }

    fn add_rule(
        &self,
        method: Option<Method>,
        path: &str,
        behaviour: Behaviour,
        remaining: Option<usize>,
    ) {
        // Newest rule first, so a later set() overrides an earlier one.
        self.state.rules.lock().unwrap().insert(
            0,
            Rule {
                method,
                path: path.to_string(),
                behaviour,
                remaining,
            },
        );
    }

    /// Drops every rule for `path`.
    pub fn clear(&self, path: &str) {
        self.state.rules.lock().unwrap().retain(|r| r.path != path);
    }

    /// Blob requests for `digest` in `repository` go through a relative redirect to
    /// `/other/<hex>`, then an absolute one to `storage`, which serves the bytes only to
    /// requests without an `Authorization` header (403 otherwise).
    pub fn redirect_blob_via(&self, repository: &str, digest: &str, storage: &FaultUpstream) {
        let path = blob_path(repository, digest);
        let content = self.state.content.lock().unwrap().get(&path).cloned();
        let content = content.unwrap_or_else(|| panic!("no content at {path}; serve_image first"));
        let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
        let other = format!("/other/{hex}");
        let storage_path = format!("/storage/{hex}");
        self.set(&path, Behaviour::Redirect(other.clone()));
        self.set(
            &other,
            Behaviour::Redirect(format!(
                "{}{storage_path}?X-Test-Signature=abc",
                storage.url()
            )),
        );
        storage.put(&storage_path, "application/octet-stream", content.bytes);
        storage.set(&storage_path, Behaviour::RejectAuthorization(403));
    }

    /// Serves `bytes` at `path` instead of its stored content to requests whose
    /// `Accept` names types but neither the stored one nor `*/*`, as registries do
    /// for clients that do not take an index (they answer one platform's manifest).
    pub fn put_fallback(&self, path: &str, content_type: &str, bytes: Bytes) {
        let content = Content {
            digest: super::digest_of(&bytes),
            content_type: content_type.to_string(),
            bytes,
        };
        self.state
            .fallbacks
            .lock()
            .unwrap()
            .insert(path.to_string(), content);
    }

    /// `path` answers 404 (`MANIFEST_UNKNOWN`) to requests whose `Accept` names
    /// types but neither the stored one nor `*/*`, as distribution does when it
    /// cannot convert a manifest to what the client asked for.
    pub fn not_found_unless_accepted(&self, path: &str) {
        self.state
            .unconvertible
            .lock()
            .unwrap()
            .insert(path.to_string());
    }

    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.state.requests.lock().unwrap().clone()
    }

    /// Requests with exactly this method and exactly this path.
    pub fn count_path(&self, method: &str, path: &str) -> usize {
        self.requests()
            .iter()
            .filter(|r| r.method == method && r.path == path)
            .count()
    }

    /// Requests with exactly this method whose path contains `path_contains`.
    pub fn count(&self, method: &str, path_contains: &str) -> usize {
        self.requests()
            .iter()
            .filter(|r| r.method == method && r.path.contains(path_contains))
            .count()
    }
}

impl Drop for FaultUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}
