//! The /v2 pull API: parse the request, route it, answer from the core,
//! and turn every failure into OCI error JSON.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::header::{
    ACCEPT_RANGES, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, HOST, LINK, RANGE, RETRY_AFTER,
    WARNING,
};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use reqwest::Method as UpstreamMethod;

use super::range::{self, RangeAnswer};
use super::server::LogContext;
use crate::cache::CacheResult;
use crate::cache::fill::{Source, read_range};
use crate::mirror::Mirror;
use crate::oci::error::{ErrorCode, Fault, RegistryError};
use crate::oci::media::{Accept, OCI_INDEX};
use crate::oci::reference::{Digest, Reference};
use crate::routing::{Endpoint, Route, parse_path};
use crate::upstream::Upstream;

/// The largest tag list or referrers index passed through.
const MAX_LISTING_BYTES: usize = 16 << 20;

/// `GET /v2/`: the API version check. A free mirror never challenges.
pub async fn base(method: Method) -> Response {
    if method != Method::GET && method != Method::HEAD {
        return error_response(&RegistryError::method_not_allowed());
    }
    ([(CONTENT_TYPE, "application/json")], "{}").into_response()
}

/// Every other /v2 request.
pub async fn handle(
    State(mirror): State<Arc<Mirror>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let mut log = LogContext::default();
    let response = match answer(&mirror, &method, &uri, &headers, &mut log).await {
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

async fn answer(
    mirror: &Mirror,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    log: &mut LogContext,
) -> Result<Response, RegistryError> {
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
                headers,
                head,
                log,
            )
            .await
        }
        Endpoint::TagsList => tags_list(upstream, &route, &name, query, log).await,
        Endpoint::Referrers(digest) => {
            log.reference = Some(digest.clone());
            referrers(upstream, &route, &Digest::parse(&digest)?, query, log).await
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
    headers: &HeaderMap,
    head: bool,
    log: &mut LogContext,
) -> Result<Response, RegistryError> {
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

    let opened = mirror
        .blobs
        .open(upstream, &route.repository, digest)
        .await?;
    log.cache = Some(opened.cache);
    let range_header = headers.get(RANGE).and_then(|r| r.to_str().ok());

    let size = match (opened.size, &opened.source, range_header) {
        (Some(size), _, _) => size,
        // No length from upstream and no range asked for: stream it all as
        // it comes, ending the body only once the fill is verified.
        (None, _, None) => {
            let body = Body::from_stream(read_range(opened.source, 0, None));
            return Ok(blob_response(StatusCode::OK, digest, None, body));
        }
        // A range needs the size; wait for the fill to learn it.
        (None, Source::Fill(fill), Some(_)) => fill.finished().await?,
        (None, Source::File(_), Some(_)) => {
            return Err(RegistryError::internal("cached blob of unknown size"));
        }
    };

    match range::answer(range_header, size) {
        RangeAnswer::Full => {
            let body = Body::from_stream(read_range(opened.source, 0, Some(size)));
            Ok(blob_response(StatusCode::OK, digest, Some(size), body))
        }
        RangeAnswer::Partial { start, end } => {
            let body = Body::from_stream(read_range(opened.source, start, Some(end)));
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

/// Tag lists are passed through, not cached: they change and are rarely
/// asked for. Paging keys are rebuilt rather than forwarded raw, and the
/// next-page link is rewritten to the path this client used.
async fn tags_list(
    upstream: &Upstream,
    route: &Route,
    client_name: &str,
    query: &str,
    log: &mut LogContext,
) -> Result<Response, RegistryError> {
    log.cache = Some(CacheResult::Pass);
    let forwarded = {
        let mut forwarded = url::form_urlencoded::Serializer::new(String::new());
        if let Some(n) = query_param(query, "n") {
            let n: u32 = n.parse().map_err(|_| {
                RegistryError::new(
                    Fault::Client,
                    StatusCode::BAD_REQUEST,
                    ErrorCode::Unsupported,
                    "n must be a number",
                )
            })?;
            forwarded.append_pair("n", &n.to_string());
        }
        if let Some(last) = query_param(query, "last") {
            forwarded.append_pair("last", &last);
        }
        forwarded.finish()
    };
    let tail = if forwarded.is_empty() {
        "tags/list".to_owned()
    } else {
        format!("tags/list?{forwarded}")
    };

    let upstream_response = upstream
        .fetch(
            UpstreamMethod::GET,
            &route.repository,
            &tail,
            None,
            ErrorCode::NameUnknown,
        )
        .await?;
    let link = upstream_response
        .headers()
        .get(LINK)
        .and_then(|l| l.to_str().ok())
        .and_then(|l| next_link(l, client_name, query_param(query, "ns").as_deref()));
    let body = read_limited(upstream_response, upstream.name()).await?;

    let mut response = Response::new(Body::from(body));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if let Some(link) = link {
        response.headers_mut().insert(LINK, header_value(&link)?);
    }
    Ok(response)
}

/// Rebuilds an upstream `Link: </v2/<repo>/tags/list?last=x&n=y>; rel="next"`
/// for this client's own path, keeping only the paging keys.
fn next_link(upstream_link: &str, client_name: &str, ns: Option<&str>) -> Option<String> {
    let target = upstream_link.split_once('<')?.1.split_once('>')?.0;
    let upstream_query = target.split_once('?')?.1;
    let mut query = url::form_urlencoded::Serializer::new(String::new());
    for (key, value) in url::form_urlencoded::parse(upstream_query.as_bytes()) {
        if key == "n" || key == "last" {
            query.append_pair(&key, &value);
        }
    }
    if let Some(ns) = ns {
        query.append_pair("ns", ns);
    }
    Some(format!(
        "</v2/{client_name}/tags/list?{}>; rel=\"next\"",
        query.finish()
    ))
}

async fn referrers(
    upstream: &Upstream,
    route: &Route,
    digest: &Digest,
    query: &str,
    log: &mut LogContext,
) -> Result<Response, RegistryError> {
    log.cache = Some(CacheResult::Pass);
    let tail = match query_param(query, "artifactType") {
        Some(artifact_type) => {
            let query = url::form_urlencoded::Serializer::new(String::new())
                .append_pair("artifactType", &artifact_type)
                .finish();
            format!("referrers/{digest}?{query}")
        }
        None => format!("referrers/{digest}"),
    };
    let upstream_response = upstream
        .fetch(
            UpstreamMethod::GET,
            &route.repository,
            &tail,
            Some(OCI_INDEX),
            ErrorCode::ManifestUnknown,
        )
        .await?;
    let filtered = upstream_response
        .headers()
        .get("oci-filters-applied")
        .cloned();
    let body = read_limited(upstream_response, upstream.name()).await?;

    let mut response = Response::new(Body::from(body));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(OCI_INDEX));
    if let Some(filtered) = filtered {
        response
            .headers_mut()
            .insert("oci-filters-applied", filtered);
    }
    Ok(response)
}

async fn read_limited(
    mut response: reqwest::Response,
    name: &str,
) -> Result<Vec<u8>, RegistryError> {
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| RegistryError::bad_gateway(format!("reading from {name} failed: {e}")))?
    {
        body.extend_from_slice(&chunk);
        if body.len() > MAX_LISTING_BYTES {
            return Err(RegistryError::bad_gateway(format!(
                "{name} sent a listing over {MAX_LISTING_BYTES} bytes"
            )));
        }
    }
    Ok(body)
}

fn query_param(query: &str, key: &str) -> Option<String> {
    url::form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
}

fn header_value(text: &str) -> Result<HeaderValue, RegistryError> {
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
    response.extensions_mut().insert(err.clone());
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_link_is_rewritten_for_the_client_path() {
        let link = next_link(
            "</v2/library/nginx/tags/list?last=1.25&n=2&evil=x>; rel=\"next\"",
            "docker.io/nginx",
            Some("docker.io"),
        );
        assert_eq!(
            link.as_deref(),
            Some("</v2/docker.io/nginx/tags/list?last=1.25&n=2&ns=docker.io>; rel=\"next\"")
        );
        assert_eq!(next_link("garbage", "x", None), None);
    }
}
