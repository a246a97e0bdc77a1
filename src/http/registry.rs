//! The /v2 pull API: parse the request, route it, answer from the core,
//! and turn every failure into OCI error JSON.

use std::net::IpAddr;
use std::sync::Arc;

use axum::Extension;
use axum::body::Body;
use axum::extract::State;
use axum::http::header::{
    ACCEPT_RANGES, AUTHORIZATION, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, HOST, RANGE,
    RETRY_AFTER, WARNING, WWW_AUTHENTICATE,
};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};

use super::listing;
use super::range::{self, RangeAnswer};
use super::server::{ClientAddr, LogContext};
use crate::access::limits::Download;
use crate::access::{Admission, Caller};
use crate::cache::CacheResult;
use crate::cache::fill::{Source, read_range};
use crate::dispatch::Decision;
use crate::mirror::Mirror;
use crate::oci::error::RegistryError;
use crate::oci::media::Accept;
use crate::oci::reference::{Digest, Reference};
use crate::routing::{Endpoint, Route, parse_path};
use crate::upstream::Upstream;

/// `GET /v2/`: the API version check. A free host never challenges; a
/// host that serves a sponsor route does, unless the caller may pull.
pub async fn base(
    State(mirror): State<Arc<Mirror>>,
    Extension(ClientAddr(client)): Extension<ClientAddr>,
    method: Method,
    headers: HeaderMap,
) -> Response {
    if method != Method::GET && method != Method::HEAD {
        return error_response(&RegistryError::method_not_allowed());
    }
    let host = headers.get(HOST).and_then(|h| h.to_str().ok());
    let caller = Caller {
        client,
        host: host.unwrap_or_default(),
        authorization: headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok()),
    };
    let upstream = mirror.router.host_upstream(host);
    let mut log = LogContext::default();
    let mut response = match mirror.access.admit_base(&caller, &upstream).await {
        Ok(standing) => {
            log.account = standing.account().map(str::to_owned);
            ([(CONTENT_TYPE, "application/json")], "{}").into_response()
        }
        Err(err) => error_response(&err),
    };
    response.extensions_mut().insert(log);
    response
}

/// Every other /v2 request.
pub async fn handle(
    State(mirror): State<Arc<Mirror>>,
    Extension(ClientAddr(client)): Extension<ClientAddr>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let mut log = LogContext::default();
    let request = Request {
        method: &method,
        uri: &uri,
        headers: &headers,
        client,
    };
    let response = match answer(&mirror, &request, &mut log).await {
        Ok(response) => response,
        Err(err) => error_response(&err),
    };
    let mut response = response;
    if let Some(upstream) = &log.upstream {
        if let Ok(value) = HeaderValue::from_str(upstream) {
            response.headers_mut().insert("oci-namespace", value);
        }
    }
    response.extensions_mut().insert(log);
    response
}

/// What a handler needs to know of the request.
struct Request<'a> {
    method: &'a Method,
    uri: &'a Uri,
    headers: &'a HeaderMap,
    /// The client's address, through trusted proxies.
    client: IpAddr,
}

async fn answer(
    mirror: &Mirror,
    request: &Request<'_>,
    log: &mut LogContext,
) -> Result<Response, RegistryError> {
    let Request {
        method,
        uri,
        headers,
        ..
    } = *request;
    let (name, endpoint) = parse_path(uri.path())
        .ok_or_else(|| RegistryError::unsupported("not a registry API path"))?;
    match endpoint {
        Endpoint::Catalog => {
            return Err(RegistryError::unsupported(
                "this mirror does not list its repositories",
            ));
        }
        Endpoint::BlobUpload => return Err(RegistryError::method_not_allowed()),
        _ if method != Method::GET && method != Method::HEAD => {
            return Err(RegistryError::method_not_allowed());
        }
        _ => {}
    }

    let query = uri.query().unwrap_or_default();
    let ns = query_param(query, "ns");
    let host = headers.get(HOST).and_then(|h| h.to_str().ok());
    let route = mirror.router.route(&name, ns.as_deref(), host)?;
    log.upstream = Some(route.upstream.clone());
    log.repository = Some(route.repository.clone());
    log.via = Some(route.via.as_str());
    let upstream = mirror
        .upstreams
        .get(&route.upstream)
        .ok_or_else(|| RegistryError::internal("routed to an upstream that has no client"))?;

    let caller = Caller {
        client: request.client,
        host: host.unwrap_or_default(),
        authorization: headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok()),
    };
    let admission = mirror
        .access
        .admit(&caller, &route.upstream, &name, &route.repository)
        .await?;
    log.account = admission.standing.account().map(str::to_owned);

    let head = method == Method::HEAD;
    match endpoint {
        Endpoint::Manifest(reference) => {
            log.reference = Some(reference.clone());
            manifest(
                mirror,
                upstream,
                &route,
                &Reference::parse(&reference)?,
                headers,
                head,
                log,
            )
            .await
        }
        Endpoint::Blob(digest) => {
            log.reference = Some(digest.clone());
            blob(
                mirror,
                upstream,
                &route,
                &Digest::parse(&digest)?,
                request,
                &admission,
                log,
            )
            .await
        }
        Endpoint::TagsList => listing::tags_list(upstream, &route, &name, query, log).await,
        Endpoint::Referrers(digest) => {
            log.reference = Some(digest.clone());
            listing::referrers(upstream, &route, &Digest::parse(&digest)?, query, log).await
        }
        Endpoint::Catalog | Endpoint::BlobUpload => unreachable!("answered above"),
    }
}

async fn manifest(
    mirror: &Mirror,
    upstream: &Upstream,
    route: &Route,
    reference: &Reference,
    headers: &HeaderMap,
    head: bool,
    log: &mut LogContext,
) -> Result<Response, RegistryError> {
    let accept = Accept::from_headers(headers);
    let resolved = mirror
        .manifests
        .resolve(upstream, &route.repository, reference, &accept)
        .await?;
    log.cache = Some(resolved.cache);

    let manifest = &resolved.manifest;
    let mut response = Response::new(if head {
        Body::empty()
    } else {
        Body::from(manifest.bytes.clone())
    });
    let h = response.headers_mut();
    h.insert(CONTENT_TYPE, header_value(&manifest.media_type)?);
    h.insert(CONTENT_LENGTH, HeaderValue::from(manifest.bytes.len()));
    h.insert(
        "docker-content-digest",
        header_value(&manifest.digest.to_string())?,
    );
    if let Some(warning) = &resolved.warning {
        h.insert(WARNING, header_value(warning)?);
    }
    Ok(response)
}

async fn blob(
    mirror: &Mirror,
    upstream: &Arc<Upstream>,
    route: &Route,
    digest: &Digest,
    request: &Request<'_>,
    admission: &Admission,
    log: &mut LogContext,
) -> Result<Response, RegistryError> {
    let head = *request.method == Method::HEAD;
    if head {
        let (size, cache) = mirror
            .blobs
            .size(upstream, &route.repository, digest)
            .await?;
        log.cache = Some(cache);
        return Ok(blob_response(
            StatusCode::OK,
            digest,
            Some(size),
            Body::empty(),
        ));
    }

    // A redirect sends the client to a target that already holds the blob
    // (the store, a CDN, a replica), which honours Range itself; otherwise
    // this node streams, filling from upstream if need be.
    if !mirror.dispatcher.streams_first(request.client) {
        let stored_key = mirror.blobs.stored_key(digest).await;
        let decision = mirror
            .dispatcher
            .decide(request.client, digest, stored_key.as_deref())
            .await;
        if let Decision::Redirect { url, target } = decision {
            log.cache = Some(CacheResult::Hit);
            log.redirect = Some(target);
            return redirect(&url);
        }
    }

    // Download limits hold only for bytes this node sends itself.
    let download = mirror.access.download(admission).await?;
    let opened = mirror
        .blobs
        .open(upstream, &route.repository, digest)
        .await?;
    log.cache = Some(opened.cache);
    let range_header = request.headers.get(RANGE).and_then(|r| r.to_str().ok());

    let size = match (opened.size, &opened.source, range_header) {
        (Some(size), _, _) => size,
        // No length from upstream and no range asked for: stream it all as
        // it comes, ending the body only once the fill is verified.
        (None, _, None) => {
            let body = metered(read_range(opened.source, 0, None), None, download);
            return Ok(blob_response(StatusCode::OK, digest, None, body));
        }
        // A range needs the size; wait for the fill to learn it.
        (None, Source::Fill(fill), Some(_)) => fill.finished().await?,
        (None, Source::File(_) | Source::Remote { .. }, Some(_)) => {
            return Err(RegistryError::internal("cached blob of unknown size"));
        }
    };

    match range::answer(range_header, size) {
        RangeAnswer::Full => {
            let body = metered(
                read_range(opened.source, 0, Some(size)),
                Some(size),
                download,
            );
            Ok(blob_response(StatusCode::OK, digest, Some(size), body))
        }
        RangeAnswer::Partial { start, end } => {
            let body = metered(
                read_range(opened.source, start, Some(end)),
                Some(end - start),
                download,
            );
            let mut response =
                blob_response(StatusCode::PARTIAL_CONTENT, digest, Some(end - start), body);
            let content_range = format!("bytes {start}-{}/{size}", end - 1);
            response
                .headers_mut()
                .insert(CONTENT_RANGE, header_value(&content_range)?);
            Ok(response)
        }
        RangeAnswer::Unsatisfiable => {
            let err = RegistryError::range_not_satisfiable(size);
            let mut response = error_response(&err);
            response
                .headers_mut()
                .insert(CONTENT_RANGE, header_value(&format!("bytes */{size}"))?);
            Ok(response)
        }
    }
}

/// A blob body of `length` bytes, paced and counted when the caller's tier
/// has download limits.
fn metered<S>(body: S, length: Option<u64>, download: Option<Download>) -> Body
where
    S: futures_util::Stream<Item = Result<bytes::Bytes, std::io::Error>> + Send + 'static,
{
    match download {
        Some(download) => Body::from_stream(download.meter(body, length)),
        None => Body::from_stream(body),
    }
}

fn redirect(url: &str) -> Result<Response, RegistryError> {
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::TEMPORARY_REDIRECT;
    response.headers_mut().insert(
        axum::http::header::LOCATION,
        HeaderValue::from_str(url)
            .map_err(|_| RegistryError::internal("presigned URL is not a header value"))?,
    );
    Ok(response)
}

fn blob_response(status: StatusCode, digest: &Digest, length: Option<u64>, body: Body) -> Response {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    let h = response.headers_mut();
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if let Some(length) = length {
        h.insert(CONTENT_LENGTH, HeaderValue::from(length));
    }
    if let Ok(value) = HeaderValue::from_str(&digest.to_string()) {
        h.insert("docker-content-digest", value);
    }
    response
}

pub(super) fn query_param(query: &str, key: &str) -> Option<String> {
    url::form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
}

pub(super) fn header_value(text: &str) -> Result<HeaderValue, RegistryError> {
    HeaderValue::from_str(text)
        .map_err(|_| RegistryError::bad_gateway("upstream sent a value that cannot be a header"))
}

/// The one place a `RegistryError` becomes an HTTP response.
pub fn error_response(err: &RegistryError) -> Response {
    let mut response = Response::new(Body::from(err.body()));
    *response.status_mut() = err.status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if let Some(seconds) = err.retry_after {
        response
            .headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from(seconds));
    }
    if let Some(challenge) = err.challenge.as_deref() {
        if let Ok(value) = HeaderValue::from_str(challenge) {
            response.headers_mut().insert(WWW_AUTHENTICATE, value);
        }
    }
    response.extensions_mut().insert(err.clone());
    response
}
