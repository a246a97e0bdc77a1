//! Blobs through lank8s against a real distribution registry: full and ranged GET and HEAD, cold and warm, and a range beyond the end.

mod api_support;
mod support;

use std::time::Duration;

use api_support::{mirror_of, send};
use bytes::Bytes;
use support::*;

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
