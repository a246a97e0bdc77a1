//! The pull API against a real distribution registry: the base endpoint, manifests and Accept, blobs and ranges, tag lists and paging, referrers, refusals, error JSON, stale tags and the request log.

mod support;

use std::time::Duration;

use bytes::Bytes;
use reqwest::header::HeaderMap;
use serde_json::{Value, json};
use support::images::{DOCKER_LIST, DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST};
use support::*;

type MakeImage = fn(u64) -> TestImage;

struct Answer {
    status: u16,
    headers: HeaderMap,
    body: Bytes,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Checks that this is an OCI error answer and returns its code.
    fn error_code(&self) -> String {
        let what = format!("{} {:?}", self.status, self.body);
        assert_eq!(
            self.header("content-type"),
            Some("application/json"),
            "{what}"
        );
        let error = &self.json()["errors"][0];
        assert!(error["message"].is_string(), "no message: {what}");
        error["code"].as_str().expect(&what).to_owned()
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("{e}: {:?}", self.body))
    }
}

async fn send(method: &str, url: &str, headers: &[(&str, &str)]) -> Answer {
    let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
    let mut request = http_client().request(method, url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.timeout(Duration::from_secs(30)).send().await;
    let response = response.expect(url);
    let (status, headers) = (response.status().as_u16(), response.headers().clone());
    let body = response.bytes().await.expect(url);
    Answer {
        status,
        headers,
        body,
    }
}

/// A real registry holding `images` as `<repo>:<tag>`, and lank8s in front of it.
async fn mirror_of(images: &[(&str, &str, &TestImage)], extra: &str) -> (Registry, Lank8s) {
    let registry = Registry::start().await;
    for (repo, tag, image) in images {
        image.push(&registry, repo, tag).await;
    }
    let url = registry.url();
    let lank8s = Lank8s::start(&format!(
        "[upstreams.\"registry.k8s.io\"]\nurl = \"{url}\"\n{extra}"
    ))
    .await;
    (registry, lank8s)
}

#[tokio::test(flavor = "multi_thread")]
async fn base_endpoint_answers_without_a_challenge() {
    let (_registry, lank8s) = mirror_of(&[], "").await;
    for path in ["/v2/", "/v2"] {
        let a = send("GET", &format!("{}{path}", lank8s.url()), &[]).await;
        assert_eq!(a.status, 200, "{path}");
        assert_eq!(&a.body[..], b"{}", "{path}");
        assert_eq!(
            a.header("docker-distribution-api-version"),
            Some("registry/2.0")
        );
        assert_eq!(a.header("www-authenticate"), None, "{path}");
    }
}

/// One manifest request through lank8s, checked against what was pushed.
async fn check_manifest(url: &str, method: &str, accept: &[&str], want: &(String, String, Bytes)) {
    let (digest, media_type, bytes) = want;
    let headers: Vec<(&str, &str)> = accept.iter().map(|a| ("accept", *a)).collect();
    let a = send(method, url, &headers).await;
    let what = format!("{method} {url} accept {accept:?}");
    assert_eq!(a.status, 200, "{what}: {:?}", a.body);
    assert_eq!(
        a.header("content-type"),
        Some(media_type.as_str()),
        "{what}"
    );
    assert_eq!(
        a.header("docker-content-digest"),
        Some(digest.as_str()),
        "{what}"
    );
    let length = bytes.len().to_string();
    assert_eq!(a.header("content-length"), Some(length.as_str()), "{what}");
    assert_eq!(a.header("oci-namespace"), Some("registry.k8s.io"), "{what}");
    if method == "HEAD" {
        assert!(a.body.is_empty(), "{what}: HEAD with a body");
    } else {
        assert!(
            a.body == *bytes,
            "{what}: body differs from what was pushed"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn manifests_by_tag_and_digest_are_served_exactly() {
    let kinds: [(&str, MakeImage); 3] = [
        ("oci-index", TestImage::oci_index),
        ("docker-list", TestImage::docker_list),
        ("docker-schema2", TestImage::docker_schema2),
    ];
    // Four repositories (and images, as manifests are cached by digest) per kind,
    // so that each (reference, method) pair once makes the cold request.
    let repos: Vec<(String, TestImage)> = kinds
        .iter()
        .flat_map(|(kind, make)| (0..4).map(move |i| (format!("api/{kind}-{i}"), make(10 + i))))
        .collect();
    let pushes: Vec<_> = repos.iter().map(|(r, i)| (r.as_str(), "v1", i)).collect();
    let (_registry, lank8s) = mirror_of(&pushes, "").await;
    for (i, (repo, image)) in repos.iter().enumerate() {
        let top = &image.manifests[0];
        let mut order = vec![
            ("v1", "GET"),
            ("v1", "HEAD"),
            (top.0.as_str(), "GET"),
            (top.0.as_str(), "HEAD"),
        ];
        order.rotate_left(i % 4);
        for (reference, method) in order {
            let url = format!("{}/v2/{repo}/manifests/{reference}", lank8s.url());
            check_manifest(&url, method, &[], top).await;
        }
        for child in &image.manifests[1..] {
            let url = format!("{}/v2/{repo}/manifests/{}", lank8s.url(), child.0);
            check_manifest(&url, "HEAD", &[], child).await;
            check_manifest(&url, "GET", &[], child).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn accept_variants_that_include_the_list_get_the_list() {
    let image = TestImage::docker_list(21);
    let joined = format!("{OCI_MANIFEST}, {DOCKER_LIST};q=0.9, {DOCKER_MANIFEST}");
    let variants: [(&str, Vec<&str>); 4] = [
        ("absent", vec![]),
        ("wildcard", vec!["*/*"]),
        ("lines", vec![DOCKER_MANIFEST, DOCKER_LIST, OCI_INDEX]),
        ("joined", vec![joined.as_str()]),
    ];
    let pushes: Vec<_> = variants
        .iter()
        .map(|(t, _)| ("api/accept", *t, &image))
        .collect();
    let (_registry, lank8s) = mirror_of(&pushes, "").await;
    for (tag, accept) in &variants {
        // Its own tag cold, then warm; then the tag another variant cached.
        for tag in [*tag, *tag, "absent"] {
            let url = format!("{}/v2/api/accept/manifests/{tag}", lank8s.url());
            check_manifest(&url, "GET", accept, &image.manifests[0]).await;
        }
    }
}

/// The README: a client whose Accept excludes the tag's form gets what upstream
/// answers for that Accept (distribution picks linux/amd64), cold or warm.
#[tokio::test(flavor = "multi_thread")]
async fn accept_excluding_the_list_gets_what_upstream_answers() {
    let image = TestImage::docker_list(22);
    let pushes = [
        ("api/narrow", "cold", &image),
        ("api/narrow", "warm", &image),
    ];
    let (registry, lank8s) = mirror_of(&pushes, "").await;
    let direct = send(
        "GET",
        &format!("{}/v2/api/narrow/manifests/cold", registry.url()),
        &[("accept", DOCKER_MANIFEST)],
    )
    .await;
    assert_eq!(
        direct.header("content-type"),
        Some(DOCKER_MANIFEST),
        "distribution's own answer"
    );
    let want = image
        .manifest(direct.header("docker-content-digest").unwrap())
        .expect("a child")
        .clone();
    let warm = format!("{}/v2/api/narrow/manifests/warm", lank8s.url());
    check_manifest(&warm, "GET", &[], &image.manifests[0]).await;
    for tag in ["warm", "cold"] {
        let url = format!("{}/v2/api/narrow/manifests/{tag}", lank8s.url());
        check_manifest(&url, "GET", &[DOCKER_MANIFEST], &want).await;
    }
}

type Blob<'a> = (&'a str, &'a str, &'a Bytes);

/// Sends `method` with the Range that `case` names and checks the answer:
/// `full`, a literal `bytes=...`, or `beyond` (starting at the blob's end).
async fn check_blob(lank8s: &Lank8s, (repo, digest, bytes): Blob<'_>, method: &str, case: &str) {
    let len = bytes.len();
    let partial = |s: usize, e: usize| (206, Some(format!("bytes {s}-{}/{len}", e - 1)), s..e);
    let (status, content_range, slice) = match case {
        "bytes=0-9" => partial(0, 10),
        "bytes=5-" => partial(5, len),
        "bytes=-4" => partial(len - 4, len),
        "beyond" => (416, Some(format!("bytes */{len}")), 0..0),
        _ => (200, None, 0..len),
    };
    let range = match case {
        "beyond" => format!("bytes={len}-"),
        "full" => String::new(),
        literal => literal.to_owned(),
    };
    let mut headers = vec![("accept-encoding", "gzip")];
    headers.extend(Some(("range", range.as_str())).filter(|_| !range.is_empty()));
    let url = format!("{}/v2/{repo}/blobs/{digest}", lank8s.url());
    let a = send(method, &url, &headers).await;
    let what = format!("{method} {url} range {range:?}");
    assert_eq!(a.status, status, "{what}: {:?}", a.body);
    assert_eq!(
        a.header("content-range"),
        content_range.as_deref(),
        "{what}"
    );
    if status == 416 {
        return assert_eq!(a.error_code(), "RANGE_INVALID", "{what}");
    }
    assert_eq!(a.header("docker-content-digest"), Some(digest), "{what}");
    assert_eq!(a.header("content-encoding"), None, "{what}");
    let length = slice.len().to_string();
    assert_eq!(a.header("content-length"), Some(length.as_str()), "{what}");
    let want = if method == "HEAD" {
        Bytes::new()
    } else {
        bytes.slice(slice)
    };
    assert!(a.body == want, "{what}: wrong bytes");
}

#[tokio::test(flavor = "multi_thread")]
async fn blobs_and_ranges_cold_and_warm() {
    let (a, b) = (TestImage::oci_index(31), TestImage::docker_list(32));
    let images = [("api/blobs-a", &a), ("api/blobs-b", &b)];
    let pushes: Vec<_> = images.iter().map(|(repo, i)| (*repo, "v1", *i)).collect();
    let (registry, lank8s) = mirror_of(&pushes, "").await;
    let blobs: Vec<Blob> = images
        .iter()
        .flat_map(|(repo, i)| i.blobs.iter().map(|(d, bytes)| (*repo, d.as_str(), bytes)))
        .collect();
    let cases = [
        ("GET", "full"),
        ("HEAD", "full"),
        ("GET", "bytes=0-9"),
        ("GET", "bytes=5-"),
        ("GET", "bytes=-4"),
        ("GET", "beyond"),
    ];
    assert!(blobs.len() >= cases.len(), "need a fresh blob per case");
    // A fresh blob per case, so that each case is once cold.
    for (blob, (method, case)) in blobs.into_iter().zip(cases) {
        check_blob(&lank8s, blob, method, case).await;
        if method == "HEAD" {
            registry.settle().await;
            let gets = registry.count_requests("GET", blob.1);
            assert_eq!(gets, 0, "a cold HEAD downloaded {}", blob.1);
        }
        check_blob(&lank8s, blob, "GET", "full").await;
        let hex = blob.1.strip_prefix("sha256:").unwrap();
        let path = lank8s
            .data_dir()
            .join("blobs/sha256")
            .join(&hex[..2])
            .join(hex);
        let cached = eventually(Duration::from_secs(10), || {
            let exists = path.exists();
            async move { exists.then_some(()) }
        });
        assert!(cached.await.is_some(), "{} never reached the cache", blob.1);
        check_blob(&lank8s, blob, method, case).await;
    }
}

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

#[tokio::test(flavor = "multi_thread")]
async fn errors_are_oci_json_with_the_right_codes() {
    let image = TestImage::docker_schema2(44);
    let (registry, lank8s) = mirror_of(&[("api/err", "v1", &image)], "").await;
    registry.settle().await;
    let before = registry.access_entries().len();
    let md5 = "md5:d41d8cd98f00b204e9800998ecf8427e";
    let refused = [
        ("/v2/UPPER/manifests/x".to_owned(), "NAME_INVALID"),
        ("/v2/x/blobs/sha256:zz".into(), "DIGEST_INVALID"),
        (format!("/v2/x/blobs/{md5}"), "UNSUPPORTED"),
        (format!("/v2/x/manifests/{md5}"), "UNSUPPORTED"),
    ];
    for (path, code) in &refused {
        let a = send("GET", &format!("{}{path}", lank8s.url()), &[]).await;
        assert_eq!((a.status, a.error_code().as_str()), (400, *code), "{path}");
    }
    registry.settle().await;
    assert_eq!(
        registry.access_entries()[before..],
        [],
        "upstream was asked"
    );

    let unknown_repo = "/v2/no/such/manifests/v1";
    let direct = send("GET", &format!("{}{unknown_repo}", registry.url()), &[]).await;
    let upstream_code = direct.json()["errors"][0]["code"]
        .as_str()
        .expect("code")
        .to_owned();
    let absent = digest_of(b"never pushed");
    let not_found = [
        ("/v2/api/err/manifests/nope".to_owned(), "MANIFEST_UNKNOWN"),
        (format!("/v2/api/err/blobs/{absent}"), "BLOB_UNKNOWN"),
        (unknown_repo.into(), upstream_code.as_str()),
    ];
    for (path, code) in &not_found {
        let a = send("GET", &format!("{}{path}", lank8s.url()), &[]).await;
        assert_eq!((a.status, a.error_code().as_str()), (404, *code), "{path}");
    }
    let head = send(
        "HEAD",
        &format!("{}/v2/api/err/blobs/{absent}", lank8s.url()),
        &[],
    )
    .await;
    assert_eq!(head.status, 404);
}

async fn pull(src: &str, image: &TestImage) {
    let out = tempfile::tempdir().expect("tempdir");
    let dest = out.path().join("image");
    skopeo_copy_all(src, &dest)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    compare_dir_with_image(&dest, image);
}

#[tokio::test(flavor = "multi_thread")]
async fn cached_images_survive_upstream_loss_as_stale_tags() {
    let kinds = [
        ("api/stale-oci", TestImage::oci_index(45)),
        ("api/stale-list", TestImage::docker_list(46)),
        ("api/stale-schema2", TestImage::docker_schema2(47)),
    ];
    let pushes: Vec<_> = kinds.iter().map(|(r, i)| (*r, "v1", i)).collect();
    let (mut registry, lank8s) = mirror_of(&pushes, "tag_ttl = \"1s\"").await;
    let host = lank8s.host();
    for (repo, image) in &kinds {
        pull(&format!("docker://{host}/{repo}:v1"), image).await;
    }
    registry.stop();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let before = lank8s.request_lines().len();
    for (repo, image) in &kinds {
        pull(&format!("docker://{host}/{repo}:v1"), image).await;
        pull(
            &format!("docker://{host}/{repo}@{}", image.top_digest()),
            image,
        )
        .await;
    }
    let lines = lank8s.request_lines();
    for (repo, _) in &kinds {
        let path = format!("/v2/{repo}/manifests/v1");
        let tag_lines: Vec<&Value> = lines[before..]
            .iter()
            .filter(|l| l["path"] == path)
            .collect();
        assert!(!tag_lines.is_empty(), "no log line for {path}");
        for line in tag_lines {
            assert_eq!(
                (&line["cache"], &line["status"]),
                (&"stale".into(), &200.into()),
                "{line}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn request_log_line_describes_a_manifest_get() {
    let image = TestImage::docker_schema2(48);
    let (_registry, lank8s) = mirror_of(&[("api/log", "v1", &image)], "").await;
    let path = "/v2/api/log/manifests/v1";
    for (n, cache) in [(1, "miss"), (2, "hit")] {
        let a = send("GET", &format!("{}{path}", lank8s.url()), &[]).await;
        assert_eq!(a.status, 200);
        let line = eventually(Duration::from_secs(5), || {
            let line = lank8s
                .request_lines()
                .into_iter()
                .filter(|l| l["path"] == path)
                .nth(n - 1);
            async move { line }
        });
        let line = line
            .await
            .unwrap_or_else(|| panic!("no log line {n}:\n{}", lank8s.log()));
        let want = json!({
            "method": "GET", "path": path, "upstream": "registry.k8s.io", "repository": "api/log",
            "reference": "v1", "status": 200, "cache": cache, "bytes": a.body.len(), "client": "127.0.0.1",
        });
        for (key, value) in want.as_object().unwrap() {
            assert_eq!(&line[key], value, "{key}: {line}");
        }
        assert!(line["duration_ms"].is_u64(), "{line}");
    }
}
