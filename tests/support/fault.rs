//! A scriptable in-process fake registry for fault injection: serves a TestImage correctly unless a path is told to misbehave, and records every request.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::Response;
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::task::JoinHandle;

use super::images::TestImage;

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
}

/// One request as received.
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    pub headers: HeaderMap,
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

    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.state.requests.lock().unwrap().clone()
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

fn take_behaviour(state: &FaultState, method: &Method, path: &str) -> Behaviour {
    let mut rules = state.rules.lock().unwrap();
    let Some(i) = rules
        .iter()
        .position(|r| r.path == path && r.method.as_ref().is_none_or(|m| m == method))
    else {
        return Behaviour::Normal;
    };
    let behaviour = rules[i].behaviour.clone();
    if let Some(n) = rules[i].remaining.as_mut() {
        *n -= 1;
        if *n == 0 {
            rules.remove(i);
        }
    }
    behaviour
}

async fn handle(State(state): State<Arc<FaultState>>, req: Request) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let headers = req.headers().clone();
    state.requests.lock().unwrap().push(RecordedRequest {
        method: method.to_string(),
        path: path.clone(),
        query: req.uri().query().map(str::to_string),
        headers: headers.clone(),
    });
    if path == "/v2/" || path == "/v2" {
        return reply(200, "application/json", "{}".into());
    }
    let head = method == Method::HEAD;
    let content = state.content.lock().unwrap().get(&path).cloned();
    let mut behaviour = take_behaviour(&state, &method, &path);
    if let Behaviour::SlowFirstByte(delay) = behaviour {
        tokio::time::sleep(delay).await;
        behaviour = Behaviour::Normal;
    }
    if let Behaviour::RejectAuthorization(status) = behaviour {
        if headers.contains_key(header::AUTHORIZATION) {
            let body = "Authorization header not allowed with a signed URL";
            return reply(status, "text/plain", body.into());
        }
        behaviour = Behaviour::Normal;
    }
    let (status, content_type, body) = match &behaviour {
        Behaviour::Html => (200, "text/html; charset=utf-8", HTML),
        Behaviour::TooManyRequests => (429, "application/json", TOO_MANY),
        Behaviour::ServerError => (500, "application/json", SERVER_ERROR),
        Behaviour::Status(status) => (*status, "text/plain", ""),
        Behaviour::Redirect(_) => (307, "text/plain", ""),
        _ => (0, "", ""),
    };
    if status != 0 {
        let mut response = reply(status, content_type, body.to_string());
        let extra = match behaviour {
            Behaviour::TooManyRequests => Some((header::RETRY_AFTER, "7".to_string())),
            Behaviour::Redirect(location) => Some((header::LOCATION, location)),
            _ => None,
        };
        if let Some((name, value)) = extra {
            response.headers_mut().insert(name, value.parse().unwrap());
        }
        return response;
    }
    let Some(mut c) = content else {
        return not_found(&path);
    };
    match behaviour {
        Behaviour::CutAfter(n) => {
            let len = c.bytes.len();
            let body = if head {
                Body::empty()
            } else {
                let prefix = c.bytes.slice(..n.min(len));
                // The pause lets hyper flush headers and prefix; an immediate error
                // would abort the connection before anything reached the client.
                let cut = futures_util::stream::once(async {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    Err(std::io::Error::other("injected cut"))
                });
                let head = futures_util::stream::iter([Ok::<_, std::io::Error>(prefix)]);
                Body::from_stream(head.chain(cut))
            };
            content_headers(&c, len).body(body).unwrap()
        }
        Behaviour::WrongBytes => {
            let mut altered = c.bytes.to_vec();
            if let Some(b) = altered.first_mut() {
                *b ^= 0xff;
            }
            c.bytes = Bytes::from(altered);
            serve(&c, &headers, head)
        }
        _ => serve(&c, &headers, head),
    }
}

const HTML: &str = "<!DOCTYPE html><html><body><h1>Please log in to the network</h1></body></html>";
const TOO_MANY: &str = r#"{"errors":[{"code":"TOOMANYREQUESTS","message":"slow down"}]}"#;
const SERVER_ERROR: &str = r#"{"errors":[{"code":"UNKNOWN","message":"injected failure"}]}"#;

fn content_headers(c: &Content, len: usize) -> axum::http::response::Builder {
    Response::builder()
        .header(header::CONTENT_TYPE, c.content_type.as_str())
        .header(header::CONTENT_LENGTH, len)
        .header("docker-content-digest", c.digest.as_str())
        .header("docker-distribution-api-version", "registry/2.0")
        .header(header::ACCEPT_RANGES, "bytes")
}

/// Serves content, honouring a single `Range: bytes=start-[end]` so that resumption can be tested.
fn serve(c: &Content, headers: &HeaderMap, head: bool) -> Response {
    let total = c.bytes.len();
    let range = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("bytes="))
        .and_then(|v| v.split_once('-'))
        .and_then(|(s, e)| {
            let start: usize = s.parse().ok()?;
            let end: usize = if e.is_empty() {
                total.checked_sub(1)?
            } else {
                e.parse().ok()?
            };
            (start <= end && end < total).then_some((start, end))
        });
    let (status, body) = match range {
        Some((start, end)) => (StatusCode::PARTIAL_CONTENT, c.bytes.slice(start..=end)),
        None => (StatusCode::OK, c.bytes.clone()),
    };
    let mut builder = content_headers(c, body.len()).status(status);
    if let Some((start, end)) = range {
        builder = builder.header(
            header::CONTENT_RANGE,
            format!("bytes {start}-{end}/{total}"),
        );
    }
    builder
        .body(if head {
            Body::empty()
        } else {
            Body::from(body)
        })
        .unwrap()
}

fn reply(status: u16, content_type: &str, body: String) -> Response {
    Response::builder()
        .status(StatusCode::from_u16(status).expect("valid status"))
        .header(header::CONTENT_TYPE, content_type)
        .header("docker-distribution-api-version", "registry/2.0")
        .body(Body::from(body))
        .unwrap()
}

fn not_found(path: &str) -> Response {
    let code = if path.contains("/manifests/") {
        "MANIFEST_UNKNOWN"
    } else if path.contains("/blobs/") {
        "BLOB_UNKNOWN"
    } else {
        "NAME_UNKNOWN"
    };
    let body = format!(r#"{{"errors":[{{"code":"{code}","message":"{path} not found"}}]}}"#);
    reply(404, "application/json", body)
}
