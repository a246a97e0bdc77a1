//! Listing endpoints and refusals against a real distribution registry: tag lists and their paging links, referrers, the catalog and write methods.

mod api_support;
mod support;

use api_support::{mirror_of, send};
use serde_json::json;
use support::*;

/// Pages through `path?n=<n>` by its `Link: rel="next"`, checking that every page has
/// `n` tags (fewer only on the last), that each link is the client's own
/// `path` with `last`, `n` and `ns` (when given), and that all tags arrive.
async fn page_through(lank8s: &Lank8s, path: &str, ns: Option<&str>, n: usize, all: &[&str]) {
    let mut url = match ns {
        Some(ns) => format!("{path}?n={n}&ns={ns}"),
        None => format!("{path}?n={n}"),
    };
    let mut seen: Vec<String> = Vec::new();
    for _ in 0..=all.len() {
        let a = send("GET", &format!("{}{url}", lank8s.url()), &[]).await;
        assert_eq!(a.status, 200, "{url}: {:?}", a.body);
        let tags: Vec<String> = serde_json::from_value(a.json()["tags"].clone()).expect("tags");
        assert_eq!(
            tags.len(),
            n.min(all.len() - seen.len()),
            "{url} gave {tags:?}"
        );
        seen.extend(tags);
        let Some(link) = a.header("link") else {
            seen.sort();
            assert_eq!(seen, all, "paging from {path} ended early");
            return;
        };
        assert!(
            seen.len() < all.len(),
            "{url}: a next link after the last tag: {link}"
        );
        let target = link
            .strip_prefix('<')
            .and_then(|l| l.strip_suffix(">; rel=\"next\""));
        let target = target.unwrap_or_else(|| panic!("{url}: malformed Link {link:?}"));
        let (link_path, query) = target.split_once('?').expect("Link has a query");
        assert_eq!(link_path, path, "{url}: Link {link:?}");
        let mut pairs: Vec<(String, String)> = url::form_urlencoded::parse(query.as_bytes())
            .into_owned()
            .collect();
        pairs.sort();
        let mut want = vec![
            ("last".into(), seen.last().unwrap().clone()),
            ("n".into(), n.to_string()),
        ];
        want.extend(ns.map(|ns| ("ns".to_string(), ns.to_string())));
        assert_eq!(pairs, want, "{url}: Link {link:?}");
        url = target.to_owned();
    }
    panic!("paging from {path} never ended");
}

const TAGS: [&str; 6] = ["latest", "v1", "v2", "v3", "v4", "v5"];

#[tokio::test(flavor = "multi_thread")]
async fn tags_list_from_the_registry_is_complete_and_pages() {
    let image = TestImage::docker_schema2(41);
    let pushes: Vec<_> = TAGS.iter().map(|t| ("api/tags", *t, &image)).collect();
    let (_registry, lank8s) = mirror_of(&pushes, "").await;
    for path in [
        "/v2/api/tags/tags/list",
        "/v2/registry.k8s.io/api/tags/tags/list",
    ] {
        let a = send("GET", &format!("{}{path}", lank8s.url()), &[]).await;
        assert_eq!(a.status, 200, "{path}");
        assert_eq!(a.header("content-type"), Some("application/json"), "{path}");
        let body = a.json();
        assert_eq!(body["name"], "api/tags", "{path}");
        let mut tags: Vec<String> = serde_json::from_value(body["tags"].clone()).expect("tags");
        tags.sort();
        assert_eq!(tags, TAGS, "{path}");
    }
    for path in [
        "/v2/api/tags/tags/list",
        "/v2/registry.k8s.io/api/tags/tags/list",
    ] {
        page_through(&lank8s, path, None, 2, &TAGS).await;
    }
}

/// An upstream that pages tag lists as distribution 3 does; distribution 2.8 ignores `n`.
async fn paging_upstream(repo: &'static str) -> String {
    use axum::response::IntoResponse;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await;
    let listener = listener.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let app = axum::Router::new().fallback(move |uri: axum::http::Uri| async move {
        if uri.path() != format!("/v2/{repo}/tags/list") {
            return (axum::http::StatusCode::NOT_FOUND, "{}").into_response();
        }
        let query = uri.query().unwrap_or("");
        let (mut n, mut last) = (usize::MAX, String::new());
        for (key, value) in url::form_urlencoded::parse(query.as_bytes()) {
            match &*key {
                "n" => n = value.parse().unwrap(),
                "last" => last = value.into_owned(),
                _ => {}
            }
        }
        let rest: Vec<&str> = TAGS.into_iter().filter(|t| **t > *last).collect();
        let page = &rest[..n.min(rest.len())];
        let body = json!({ "name": repo, "tags": page }).to_string();
        let mut response = ([("content-type", "application/json")], body).into_response();
        if let Some(last) = page.last().filter(|_| page.len() < rest.len()) {
            let link = format!("</v2/{repo}/tags/list?last={last}&n={n}>; rel=\"next\"");
            response.headers_mut().insert("link", link.parse().unwrap());
        }
        response
    });
    tokio::spawn(async move { axum::serve(listener, app).await.ok() });
    format!("http://{addr}")
}

#[tokio::test(flavor = "multi_thread")]
async fn tags_list_link_is_rewritten_to_the_client_path() {
    let url = paging_upstream("api/paged").await;
    let lank8s = Lank8s::start(&format!(
        "[upstreams.\"registry.k8s.io\"]\nurl = \"{url}\"\n"
    ))
    .await;
    let prefixed = "/v2/registry.k8s.io/api/paged/tags/list";
    for (path, ns) in [
        ("/v2/api/paged/tags/list", None),
        (prefixed, None),
        (prefixed, Some("registry.k8s.io")),
    ] {
        page_through(&lank8s, path, ns, 2, &TAGS).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn referrers_404_from_upstream_stays_404() {
    let image = TestImage::docker_schema2(42);
    let (registry, lank8s) = mirror_of(&[("api/ref", "v1", &image)], "").await;
    let path = format!("/v2/api/ref/referrers/{}", image.top_digest());
    let a = send("GET", &format!("{}{path}", lank8s.url()), &[]).await;
    assert_eq!(a.status, 404, "{:?}", a.body);
    assert_eq!(a.error_code(), "MANIFEST_UNKNOWN");
    registry.settle().await;
    assert_eq!(
        registry.count_requests("GET", &path),
        1,
        "the request was not passed through"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn catalog_and_writes_are_refused_without_asking_upstream() {
    let image = TestImage::docker_schema2(43);
    let (registry, lank8s) = mirror_of(&[("api/ro", "v1", &image)], "").await;
    registry.settle().await;
    let before = registry.access_entries().len();
    let a = send("GET", &format!("{}/v2/_catalog", lank8s.url()), &[]).await;
    assert_eq!((a.status, a.error_code().as_str()), (404, "UNSUPPORTED"));
    let digest = image.blobs[0].0.as_str();
    let targets = [
        "manifests/v1".to_owned(),
        format!("blobs/{digest}"),
        "blobs/uploads/".into(),
        "blobs/uploads/0d1e-uuid".into(),
    ];
    for target in &targets {
        for method in ["PUT", "POST", "PATCH", "DELETE"] {
            let url = format!("{}/v2/api/ro/{target}", lank8s.url());
            let a = send(method, &url, &[]).await;
            assert_eq!(
                (a.status, a.error_code().as_str()),
                (405, "UNSUPPORTED"),
                "{method} {url}"
            );
        }
    }
    registry.settle().await;
    assert_eq!(
        registry.access_entries()[before..],
        [],
        "upstream was asked"
    );
}
