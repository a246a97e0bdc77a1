//! A scriptable in-process fake registry for fault injection: serves a TestImage correctly unless a path is told to misbehave, and records every request.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::Response;
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::task::JoinHandle;

use super::images::TestImage;
use super::token::TokenIssuer;

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

/// What requests to `/v2/...` must carry; anything else gets 401 with a challenge.
#[derive(Clone, Debug)]
enum AuthMode {
    /// Exactly this `Authorization` value (`Basic ...`).
    Basic { expected: String },
    /// A bearer token from the test [`TokenIssuer`] for `service` (its claims are
    /// checked, not its signature), granting pull on the repository asked for,
    /// unexpired and not revoked.
    Bearer { realm: String, service: String },
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

    /// From now on every request to `/v2/...` needs `Authorization: Basic` with these
    /// credentials; without them it gets 401 with `WWW-Authenticate: Basic realm="fault"`.
    /// Other paths (the `/other/` hop of [`FaultUpstream::redirect_blob_via`]) stay open.
    pub fn require_basic(&self, user: &str, pass: &str) {
        *self.state.auth.lock().unwrap() = Some(AuthMode::Basic {
            expected: super::basic_auth_header(user, pass),
        });
    }

    /// From now on every request to `/v2/...` needs a bearer token from the test
    /// issuer whose realm is `realm`: issued for `service`, unexpired, not revoked by
    /// [`FaultUpstream::expire_tokens`], and granting pull on the repository in the path.
    /// Otherwise 401 with `WWW-Authenticate: Bearer realm=..,service=..,scope=..`.
    pub fn require_bearer(&self, realm: &str, service: &str) {
        *self.state.auth.lock().unwrap() = Some(AuthMode::Bearer {
            realm: realm.to_string(),
            service: service.to_string(),
        });
    }

    /// Every bearer token seen so far is refused from now on, as if it had expired.
    /// Returns them.
    pub fn expire_tokens(&self) -> HashSet<String> {
        let seen: HashSet<String> = self
            .requests()
            .iter()
            .filter_map(|r| r.bearer_token().map(str::to_string))
            .collect();
        self.state
            .revoked
            .lock()
            .unwrap()
            .extend(seen.iter().cloned());
        seen
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
    let index = {
        let mut requests = state.requests.lock().unwrap();
        requests.push(RecordedRequest {
            method: method.to_string(),
            path: path.clone(),
            query: req.uri().query().map(str::to_string),
            headers: headers.clone(),
            status: 0,
        });
        requests.len() - 1
    };
    let response = respond(&state, &method, &path, &headers).await;
    state.requests.lock().unwrap()[index].status = response.status().as_u16();
    response
}

async fn respond(state: &FaultState, method: &Method, path: &str, headers: &HeaderMap) -> Response {
    let (method, path) = (method.clone(), path.to_string());
    let auth = state.auth.lock().unwrap().clone();
    if let Some(auth) = &auth {
        if (path == "/v2" || path.starts_with("/v2/")) && !authorized(state, auth, &path, headers) {
            return unauthorized(auth, &path);
        }
    }
    if path == "/v2/" || path == "/v2" {
        return reply(200, "application/json", "{}".into());
    }
    let head = method == Method::HEAD;
    let mut content = state.content.lock().unwrap().get(&path).cloned();
    let fallback = state.fallbacks.lock().unwrap().get(&path).cloned();
    if let (Some(c), Some(fallback)) = (&content, fallback) {
        if !accepts(headers, &c.content_type) {
            content = Some(fallback);
        }
    }
    let mut behaviour = take_behaviour(state, &method, &path);
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
        if status == 401 {
            if let Some(auth) = &auth {
                return unauthorized(auth, &path);
            }
        }
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
            serve(&c, headers, head)
        }
        Behaviour::Throttle { chunk, every } => {
            let len = c.bytes.len();
            let body = if head {
                Body::empty()
            } else {
                let bytes = c.bytes.clone();
                let chunk = chunk.max(1);
                let chunks = futures_util::stream::unfold(0usize, move |pos| {
                    let bytes = bytes.clone();
                    async move {
                        if pos >= bytes.len() {
                            return None;
                        }
                        if pos > 0 {
                            tokio::time::sleep(every).await;
                        }
                        let end = (pos + chunk).min(bytes.len());
                        Some((Ok::<_, std::io::Error>(bytes.slice(pos..end)), end))
                    }
                });
                Body::from_stream(chunks)
            };
            content_headers(&c, len).body(body).unwrap()
        }
        _ => serve(&c, headers, head),
    }
}

/// Whether the request's `Accept` (several lines or comma-joined) takes `media_type`;
/// no `Accept` at all takes anything.
fn accepts(headers: &HeaderMap, media_type: &str) -> bool {
    let types: Vec<String> = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| {
            t.split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase()
        })
        .filter(|t| !t.is_empty())
        .collect();
    types.is_empty() || types.iter().any(|t| t == "*/*" || t == media_type)
}

/// The repository named by a `/v2/<name>/<endpoint>` path, as a registry parses it.
fn repository_of(path: &str) -> Option<String> {
    let segments: Vec<&str> = path.strip_prefix("/v2/")?.split('/').collect();
    let n = segments.len();
    let end = match segments.as_slice() {
        [.., "tags", "list"] if n > 2 => n - 2,
        [.., "manifests" | "blobs" | "referrers", _] if n > 2 => n - 2,
        _ => return None,
    };
    Some(segments[..end].join("/"))
}

fn authorized(state: &FaultState, auth: &AuthMode, path: &str, headers: &HeaderMap) -> bool {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    match auth {
        AuthMode::Basic { expected } => given == Some(expected.as_str()),
        AuthMode::Bearer { service, .. } => {
            let Some(token) = given.and_then(|g| g.strip_prefix("Bearer ")) else {
                return false;
            };
            !state.revoked.lock().unwrap().contains(token)
                && token_grants_pull(token, service, repository_of(path).as_deref())
        }
    }
}

/// Reads the claims of a JWT from the test issuer (the signature is the registry's
/// business; here the claims decide): issuer, audience, expiry, and pull access.
fn token_grants_pull(token: &str, service: &str, repository: Option<&str>) -> bool {
    use base64::Engine as _;
    let Some(payload) = token.split('.').nth(1) else {
        return false;
    };
    let Ok(json) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload) else {
        return false;
    };
    let Ok(claims) = serde_json::from_slice::<serde_json::Value>(&json) else {
        return false;
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    let grants = |name: &str| {
        claims["access"].as_array().is_some_and(|access| {
            access.iter().any(|a| {
                a["type"] == "repository"
                    && a["name"] == name
                    && a["actions"]
                        .as_array()
                        .is_some_and(|actions| actions.iter().any(|x| x == "pull"))
            })
        })
    };
    claims["iss"] == TokenIssuer::ISSUER
        && claims["aud"] == service
        && claims["exp"].as_u64().is_some_and(|exp| exp > now)
        && repository.is_none_or(grants)
}

fn unauthorized(auth: &AuthMode, path: &str) -> Response {
    let challenge = match auth {
        AuthMode::Basic { .. } => r#"Basic realm="fault""#.to_string(),
        AuthMode::Bearer { realm, service } => {
            let mut challenge = format!(r#"Bearer realm="{realm}",service="{service}""#);
            if let Some(repository) = repository_of(path) {
                challenge.push_str(&format!(r#",scope="repository:{repository}:pull""#));
            }
            challenge
        }
    };
    let body = r#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#;
    let mut response = reply(401, "application/json", body.into());
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, challenge.parse().unwrap());
    response
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

/// The config table that points lank8s's default upstream (`registry.k8s.io`) at
/// `url`, with `timeout = "2s"` and `retries = 1` unless `keys` (TOML lines for the
/// same table, e.g. `tag_ttl = "1s"`) sets them.
pub fn upstream_table(url: &str, keys: &str) -> String {
    let sets = |key: &str| {
        keys.lines()
            .any(|l| l.split('=').next().map(str::trim) == Some(key))
    };
    let mut table = format!("[upstreams.\"registry.k8s.io\"]\nurl = \"{url}\"\n");
    if !sets("timeout") {
        table.push_str("timeout = \"2s\"\n");
    }
    if !sets("retries") {
        table.push_str("retries = 1\n");
    }
    table.push_str(keys);
    table.push('\n');
    table
}

/// Every file (not directory) below `dir`, recursively; empty when `dir` is missing.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// An error answer as a client sees it: status, headers, and the OCI error code
/// of a `{"errors":[{"code":..}]}` body (`None` when the body is not that).
#[derive(Debug)]
pub struct ErrorAnswer {
    pub status: u16,
    pub headers: HeaderMap,
    pub content_type: String,
    pub code: Option<String>,
    pub body: String,
}

pub async fn error_answer(response: reqwest::Response) -> ErrorAnswer {
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let body = response.text().await.unwrap_or_default();
    let code = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["errors"][0]["code"].as_str().map(str::to_string));
    ErrorAnswer {
        status,
        headers,
        content_type,
        code,
        body,
    }
}
