//! Tag caching against a scriptable upstream: stale-if-error (but never for a deleted tag), revalidation with HEAD after the TTL, a moved tag, and Accept negotiation for a cached index.

mod support;

use std::time::Duration;

use support::fault::{error_answer, manifest_path, upstream_table};
use support::images::{DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST};
use support::*;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const REPO: &str = "cache/app";
/// Longer than a `tag_ttl` of 1 s, counted in whole seconds.
const PAST_TTL: Duration = Duration::from_millis(1500);

/// GET of a manifest through lank8s with every manifest type accepted.
async fn get_manifest(lank8s: &Lank8s, path: &str) -> reqwest::Response {
    http_client()
        .get(format!("{}{path}", lank8s.url()))
        .header(
            "accept",
            format!("{OCI_INDEX}, {OCI_MANIFEST}, {DOCKER_MANIFEST}"),
        )
        .send()
        .await
        .unwrap()
}

async fn assert_serves(resp: reqwest::Response, image: &TestImage, what: &str) {
    assert_eq!(resp.status(), 200, "{what}");
    assert_eq!(
        resp.headers()["docker-content-digest"],
        image.top_digest(),
        "{what}"
    );
    assert_eq!(&resp.bytes().await.unwrap(), image.top_bytes(), "{what}");
}

/// The `cache` field of every GET request line for `path`, once there are `n`.
async fn cache_values(lank8s: &Lank8s, path: &str, n: usize) -> Vec<String> {
    let values = || {
        lank8s
            .request_lines()
            .iter()
            .filter(|l| l["method"] == "GET" && l["path"] == path)
            .map(|l| l["cache"].as_str().unwrap_or("?").to_string())
            .collect::<Vec<_>>()
    };
    let found = eventually(Duration::from_secs(5), || {
        let v = values();
        async move { (v.len() >= n).then_some(v) }
    })
    .await;
    found.unwrap_or_else(|| {
        panic!(
            "fewer than {n} request lines for {path}: {:?}\n{}",
            values(),
            lank8s.log()
        )
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn stale_tag_is_served_when_upstream_fails_but_a_deleted_tag_is_not() {
    let fault = FaultUpstream::start().await;
    let image = TestImage::docker_schema2(21);
    fault.serve_image(&image, REPO, "v1");
    fault.serve_image(&image, REPO, "gone");
    let lank8s = Lank8s::start(&upstream_table(&fault.url(), "tag_ttl = \"1s\"")).await;
    let (v1, gone) = (manifest_path(REPO, "v1"), manifest_path(REPO, "gone"));
    for path in [&v1, &gone] {
        assert_serves(get_manifest(&lank8s, path).await, &image, path).await;
    }
    tokio::time::sleep(PAST_TTL).await;

    fault.set(&v1, Behaviour::ServerError);
    let resp = get_manifest(&lank8s, &v1).await;
    let warning = resp
        .headers()
        .get("warning")
        .map(|w| w.to_str().unwrap().to_string());
    assert!(
        warning.as_deref().is_some_and(|w| w.starts_with("299 ")),
        "stale answer needs Warning: 299, got {warning:?}"
    );
    assert_serves(resp, &image, "stale v1").await;
    assert_eq!(cache_values(&lank8s, &v1, 2).await, ["miss", "stale"]);

    fault.set(&gone, Behaviour::Status(404));
    let e = error_answer(get_manifest(&lank8s, &gone).await).await;
    assert_eq!(
        (e.status, e.code.as_deref()),
        (404, Some("MANIFEST_UNKNOWN")),
        "a tag deleted upstream must not be served stale: {e:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn expired_tag_is_revalidated_with_head_and_a_moved_tag_is_followed() {
    let fault = FaultUpstream::start().await;
    let (first, second) = (TestImage::docker_schema2(22), TestImage::docker_schema2(23));
    fault.serve_image(&first, REPO, "v1");
    let lank8s = Lank8s::start(&upstream_table(&fault.url(), "tag_ttl = \"1s\"")).await;
    let path = manifest_path(REPO, "v1");

    assert_serves(get_manifest(&lank8s, &path).await, &first, "cold").await;
    tokio::time::sleep(PAST_TTL).await;
    assert_serves(get_manifest(&lank8s, &path).await, &first, "revalidated").await;
    assert_eq!(
        fault.count_path("GET", &path),
        1,
        "an unchanged tag costs no second GET"
    );
    assert!(
        fault.count_path("HEAD", &path) >= 1,
        "an expired tag is revalidated with HEAD"
    );
    assert_eq!(
        cache_values(&lank8s, &path, 2).await,
        ["miss", "revalidated"]
    );

    fault.serve_image(&second, REPO, "v1");
    tokio::time::sleep(PAST_TTL).await;
    assert_serves(get_manifest(&lank8s, &path).await, &second, "moved tag").await;
}

/// A response read off a raw HTTP/1.1 connection, so that the request carries
/// exactly the `Accept` lines given (reqwest adds `Accept: */*` when none is set).
struct Raw {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Raw {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

async fn raw_request(lank8s: &Lank8s, method: &str, path: &str, accept: &[&str]) -> Raw {
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n",
        lank8s.host()
    );
    for line in accept {
        request.push_str(&format!("Accept: {line}\r\n"));
    }
    request.push_str("\r\n");
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(lank8s.host()).await?;
        stream.write_all(request.as_bytes()).await?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await?;
        Ok::<_, std::io::Error>(answer)
    };
    let answer = tokio::time::timeout(Duration::from_secs(30), exchange)
        .await
        .expect("raw request timed out")
        .expect("raw request");
    let split = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("end of headers");
    let head = String::from_utf8_lossy(&answer[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    let mut raw = Raw {
        status,
        headers,
        body: answer[split + 4..].to_vec(),
    };
    if raw.header("transfer-encoding") == Some("chunked") {
        raw.body = dechunk(&raw.body);
    }
    raw
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(end) = data.windows(2).position(|w| w == b"\r\n") {
        let size_text = String::from_utf8_lossy(&data[..end]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16).unwrap();
        if size == 0 {
            break;
        }
        out.extend_from_slice(&data[end + 2..end + 2 + size]);
        data = &data[end + 2 + size + 2..];
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn accept_decides_whether_a_cached_index_is_served() {
    let fault = FaultUpstream::start().await;
    let image = TestImage::oci_index(24);
    fault.serve_image(&image, REPO, "v1");
    let path = manifest_path(REPO, "v1");
    // Upstream answers a client that does not take an index with one platform.
    let (child_digest, child_type, child_bytes) = image.manifests[1].clone();
    assert_eq!(child_type, OCI_MANIFEST);
    fault.put_fallback(&path, OCI_MANIFEST, child_bytes.clone());
    let lank8s = Lank8s::start(&upstream_table(&fault.url(), "")).await;

    // A broad client caches the index under the tag.
    let broad = format!("{OCI_INDEX}, {OCI_MANIFEST}");
    let r = raw_request(&lank8s, "GET", &path, &[&broad]).await;
    assert_eq!((r.status, r.header("content-type")), (200, Some(OCI_INDEX)));
    assert_eq!(&r.body[..], &image.top_bytes()[..]);

    // A client that takes only an image manifest must not get the index.
    let r = raw_request(&lank8s, "GET", &path, &[OCI_MANIFEST]).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_ne!(r.header("content-type"), Some(OCI_INDEX));
    assert_eq!(r.header("content-type"), Some(OCI_MANIFEST));
    assert_eq!(
        r.header("docker-content-digest"),
        Some(child_digest.as_str())
    );
    assert_eq!(&r.body[..], &child_bytes[..]);
    let asked: Vec<Vec<String>> = fault
        .requests()
        .iter()
        .filter(|q| q.method == "GET" && q.path == path)
        .map(|q| q.accept_lines())
        .collect();
    assert!(
        asked
            .iter()
            .any(|lines| !lines.is_empty() && lines.iter().all(|l| !l.contains(OCI_INDEX))),
        "upstream was never asked with the client's Accept; it saw {asked:?}"
    );

    // Every client that takes the index gets it, byte-identical, from the cache.
    let gets_before = fault.count_path("GET", &path);
    let joined = format!("{DOCKER_MANIFEST}, {OCI_INDEX}, {OCI_MANIFEST}");
    let cases: [(&str, Vec<&str>); 4] = [
        ("no Accept", vec![]),
        ("*/*", vec!["*/*"]),
        ("several lines", vec![OCI_MANIFEST, OCI_INDEX]),
        ("comma-joined", vec![&joined]),
    ];
    let length = image.top_bytes().len().to_string();
    for (what, accept) in &cases {
        for method in ["HEAD", "GET"] {
            let r = raw_request(&lank8s, method, &path, accept).await;
            let what = format!("{method} with {what}");
            assert_eq!(r.status, 200, "{what}");
            assert_eq!(r.header("content-type"), Some(OCI_INDEX), "{what}");
            assert_eq!(
                r.header("docker-content-digest"),
                Some(image.top_digest()),
                "{what}"
            );
            assert_eq!(r.header("content-length"), Some(length.as_str()), "{what}");
            let body: &[u8] = if method == "GET" {
                image.top_bytes()
            } else {
                b""
            };
            assert_eq!(&r.body[..], body, "{what}");
        }
    }
    assert_eq!(
        fault.count_path("GET", &path),
        gets_before,
        "a cached tag within its TTL is served without upstream"
    );
}
