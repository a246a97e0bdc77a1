//! The pull API against a real distribution registry: the base endpoint, manifests and Accept, error JSON, stale tags and the request log. Blobs and ranges are in api_blobs.rs, tag lists, referrers and refusals in api_listing.rs.

mod api_support;
mod support;

use std::time::Duration;

use api_support::{mirror_of, send};
use bytes::Bytes;
use serde_json::{Value, json};
use support::images::{DOCKER_LIST, DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST};
use support::*;

type MakeImage = fn(u64) -> TestImage;

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
