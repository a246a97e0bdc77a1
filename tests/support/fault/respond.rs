//! How the fault upstream answers a request: it records it, checks credentials, applies the first matching rule's behaviour, and otherwise serves the stored content (ranges included) or a registry-style 404.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::Response;
use bytes::Bytes;
use futures_util::StreamExt;

use super::auth::{authorized, unauthorized};
use super::{Behaviour, Content, FaultState, RecordedRequest};

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

pub(super) async fn handle(State(state): State<Arc<FaultState>>, req: Request) -> Response {
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
    let unconvertible = state.unconvertible.lock().unwrap().contains(&path);
    if let (true, Some(c)) = (unconvertible, &content) {
        if !accepts(headers, &c.content_type) {
            return not_found(&path);
        }
    }
    let mut behaviour = take_behaviour(state, &method, &path);
    while let Behaviour::Delayed(delay, inner) = behaviour {
        tokio::time::sleep(delay).await;
        behaviour = *inner;
    }
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
                Body::from_stream(paced(c.bytes.clone(), chunk, every, false))
            };
            content_headers(&c, len).body(body).unwrap()
        }
        Behaviour::Chunked {
            chunk,
            every,
            wrong_bytes,
        } => {
            if wrong_bytes {
                let mut altered = c.bytes.to_vec();
                if let Some(b) = altered.first_mut() {
                    *b ^= 0xff;
                }
                c.bytes = Bytes::from(altered);
            }
            // A streamed body without Content-Length goes out chunked. Its end
            // comes `every` after the last chunk, so that a reader downstream
            // has had time to pass on every byte before anything can fail.
            let body = if head {
                Body::empty()
            } else {
                Body::from_stream(paced(c.bytes.clone(), chunk, every, true))
            };
            Response::builder()
                .header(header::CONTENT_TYPE, c.content_type.as_str())
                .header("docker-content-digest", c.digest.as_str())
                .header("docker-distribution-api-version", "registry/2.0")
                .body(body)
                .unwrap()
        }
        _ => serve(&c, headers, head),
    }
}

/// `bytes`, `chunk` bytes at a time, pausing `every` between chunks and, with
/// `pause_at_end`, once more before the end.
fn paced(
    bytes: Bytes,
    chunk: usize,
    every: Duration,
    pause_at_end: bool,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> + Send {
    let chunk = chunk.max(1);
    futures_util::stream::unfold(0usize, move |pos| {
        let bytes = bytes.clone();
        async move {
            if pos >= bytes.len() {
                if pause_at_end && pos > 0 {
                    tokio::time::sleep(every).await;
                }
                return None;
            }
            if pos > 0 {
                tokio::time::sleep(every).await;
            }
            let end = (pos + chunk).min(bytes.len());
            Some((Ok::<_, std::io::Error>(bytes.slice(pos..end)), end))
        }
    })
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

pub(super) fn reply(status: u16, content_type: &str, body: String) -> Response {
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
