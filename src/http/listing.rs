//! Listings passed through from upstream without caching: tag lists (with
//! paging lank8s enforces itself when upstream ignores it) and referrers.

use axum::body::Body;
use axum::http::header::{CONTENT_TYPE, LINK};
use axum::http::{HeaderValue, StatusCode};
use axum::response::Response;
use reqwest::Method;

use super::registry::{header_value, query_param};
use super::server::LogContext;
use crate::cache::CacheResult;
use crate::oci::error::{ErrorCode, Fault, RegistryError};
use crate::oci::media::OCI_INDEX;
use crate::oci::reference::Digest;
use crate::routing::Route;
use crate::upstream::Upstream;
use crate::upstream::client::read_body;

/// The largest tag list or referrers index passed through.
const MAX_LISTING_BYTES: usize = 16 << 20;

#[derive(serde::Deserialize, serde::Serialize)]
struct TagList {
    name: String,
    #[serde(default)]
    tags: Vec<String>,
}

/// `GET /v2/<name>/tags/list[?n=&last=]`. `client_name` is the name as the
/// client wrote it, so that a next-page link leads back the same way.
pub async fn tags_list(
    upstream: &Upstream,
    route: &Route,
    client_name: &str,
    query: &str,
    log: &mut LogContext,
) -> Result<Response, RegistryError> {
    log.cache = Some(CacheResult::Pass);
    let n = match query_param(query, "n") {
        Some(n) => Some(n.parse::<usize>().map_err(|_| {
            RegistryError::new(
                Fault::Client,
                StatusCode::BAD_REQUEST,
                ErrorCode::Unsupported,
                "n must be a whole number",
            )
        })?),
        None => None,
    };
    let last = query_param(query, "last");
    let ns = query_param(query, "ns");

    // Paging keys are rebuilt, not forwarded raw, so nothing else a client
    // wrote reaches upstream.
    let forwarded = {
        let mut forwarded = url::form_urlencoded::Serializer::new(String::new());
        if let Some(n) = n {
            forwarded.append_pair("n", &n.to_string());
        }
        if let Some(last) = &last {
            forwarded.append_pair("last", last);
        }
        forwarded.finish()
    };
    let tail = match forwarded.is_empty() {
        true => "tags/list".to_owned(),
        false => format!("tags/list?{forwarded}"),
    };

    let response = upstream
        .fetch(
            Method::GET,
            &route.repository,
            &tail,
            None,
            ErrorCode::NameUnknown,
        )
        .await?;
    let upstream_next = response
        .headers()
        .get(LINK)
        .and_then(|l| l.to_str().ok())
        .and_then(paging_of_link);
    let body = read_body(response, MAX_LISTING_BYTES, "a listing", upstream.name()).await?;
    let mut list: TagList = serde_json::from_slice(&body).map_err(|_| {
        RegistryError::bad_gateway(format!(
            "{} sent a tag list that is not one",
            upstream.name()
        ))
    })?;

    // Some registries ignore `n` and `last`; applying them again is
    // harmless when upstream did page.
    let more = page_tags(&mut list.tags, n, last.as_deref());
    let next = match (more, n, list.tags.last()) {
        (true, Some(n), Some(last)) => Some((n.to_string(), last.clone())),
        _ => upstream_next,
    };

    let mut answer = Response::new(Body::from(serde_json::to_vec(&list).unwrap_or_default()));
    answer
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if let Some((n, last)) = next {
        let link = next_link(client_name, &n, &last, ns.as_deref());
        answer.headers_mut().insert(LINK, header_value(&link)?);
    }
    Ok(answer)
}

/// Sorts `tags`, keeps those after `last`, and cuts the list at `n`.
/// Returns whether tags were cut off.
fn page_tags(tags: &mut Vec<String>, n: Option<usize>, last: Option<&str>) -> bool {
    tags.sort();
    tags.dedup();
    if let Some(last) = last {
        tags.retain(|t| t.as_str() > last);
    }
    match n {
        Some(n) if tags.len() > n => {
            tags.truncate(n);
            n > 0
        }
        _ => false,
    }
}

/// The `n` and `last` of an upstream `Link: </v2/...?n=..&last=..>; rel="next"`.
fn paging_of_link(link: &str) -> Option<(String, String)> {
    let target = link.split_once('<')?.1.split_once('>')?.0;
    let query = target.split_once('?')?.1;
    let mut n = None;
    let mut last = None;
    for (key, value) in url::form_urlencoded::parse(query.as_bytes()) {
        match &*key {
            "n" => n = Some(value.into_owned()),
            "last" => last = Some(value.into_owned()),
            _ => {}
        }
    }
    Some((n.unwrap_or_default(), last?))
}

fn next_link(client_name: &str, n: &str, last: &str, ns: Option<&str>) -> String {
    let mut query = url::form_urlencoded::Serializer::new(String::new());
    if !n.is_empty() {
        query.append_pair("n", n);
    }
    query.append_pair("last", last);
    if let Some(ns) = ns {
        query.append_pair("ns", ns);
    }
    format!(
        "</v2/{client_name}/tags/list?{}>; rel=\"next\"",
        query.finish()
    )
}

/// `GET /v2/<name>/referrers/<digest>[?artifactType=]`, passed through.
pub async fn referrers(
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
    let response = upstream
        .fetch(
            Method::GET,
            &route.repository,
            &tail,
            Some(OCI_INDEX),
            ErrorCode::ManifestUnknown,
        )
        .await?;
    let filtered = response.headers().get("oci-filters-applied").cloned();
    let body = read_body(response, MAX_LISTING_BYTES, "a listing", upstream.name()).await?;

    let mut answer = Response::new(Body::from(body));
    answer
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(OCI_INDEX));
    if let Some(filtered) = filtered {
        answer.headers_mut().insert("oci-filters-applied", filtered);
    }
    Ok(answer)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags(list: &[&str]) -> Vec<String> {
        list.iter().map(|t| t.to_string()).collect()
    }

    #[test]
    fn pages_are_cut_from_a_sorted_list() {
        let mut t = tags(&["v3", "latest", "v1", "v2"]);
        assert!(page_tags(&mut t, Some(2), None));
        assert_eq!(t, ["latest", "v1"]);

        let mut t = tags(&["v3", "latest", "v1", "v2"]);
        assert!(!page_tags(&mut t, Some(2), Some("v1")));
        assert_eq!(t, ["v2", "v3"]);

        let mut t = tags(&["b", "a"]);
        assert!(!page_tags(&mut t, None, None));
        assert_eq!(t, ["a", "b"]);
    }

    #[test]
    fn links_lead_back_the_way_the_client_came() {
        let upstream = "</v2/library/nginx/tags/list?last=1.25&n=2&evil=x>; rel=\"next\"";
        let (n, last) = paging_of_link(upstream).unwrap();
        assert_eq!(
            next_link("docker.io/nginx", &n, &last, Some("docker.io")),
            "</v2/docker.io/nginx/tags/list?n=2&last=1.25&ns=docker.io>; rel=\"next\""
        );
        assert_eq!(paging_of_link("garbage"), None);
    }
}
