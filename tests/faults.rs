//! Upstream faults through lank8s: a cut blob stream, wrong bytes, HTML with 200, 429, 5xx and 404, a slow and an unreachable upstream; nothing bad is served or cached, and each failure keeps its meaning.

mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use support::fault::{blob_path, error_answer, files_under, manifest_path, upstream_table};
use support::*;

const REPO: &str = "faults/app";
const MIB: usize = 1024 * 1024;

/// A GET as the client saw it, whose body may have failed part way.
struct Outcome {
    status: u16,
    declared: Option<u64>,
    body: Result<Bytes, String>,
}

async fn get(url: &str) -> Outcome {
    match http_client()
        .get(url)
        .header("accept", BROAD_ACCEPT)
        .send()
        .await
    {
        Err(e) => Outcome {
            status: 0,
            declared: None,
            body: Err(format!("request failed: {e}")),
        },
        Ok(resp) => Outcome {
            status: resp.status().as_u16(),
            declared: resp
                .headers()
                .get("content-length")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok()),
            body: resp.bytes().await.map_err(|e| format!("{e:?}")),
        },
    }
}

fn describe(outcome: &Outcome) -> String {
    let body = match &outcome.body {
        Ok(b) => format!("{} bytes, digest {}", b.len(), digest_of(b)),
        Err(e) => format!("body error {e}"),
    };
    format!(
        "status {} content-length {:?}: {body}",
        outcome.status, outcome.declared
    )
}

/// Asks for a blob whose upstream misbehaves, then checks that the client never got
/// a complete-looking answer, nothing reached the cache, and a clean retry works.
async fn blob_fault_is_neither_served_nor_cached(behaviour: Behaviour, seed: u64) {
    let fault = FaultUpstream::start().await;
    let image = TestImage::large(seed, 3 * MIB + 7);
    fault.serve_image(&image, REPO, "v1");
    let digest = image.largest_blob_digest().to_string();
    let expected = image.blob(&digest).unwrap().clone();
    let path = blob_path(REPO, &digest);
    fault.set(&path, behaviour.clone());
    let lank8s = Lank8s::start(&upstream_table(&fault.url(), "")).await;
    let url = format!("{}{path}", lank8s.url());

    let outcome = get(&url).await;
    // Upstream never delivered the right bytes, so any body that ends cleanly at its
    // declared length (or without one) would be a lie to the client.
    let complete = outcome.status == 200
        && outcome
            .body
            .as_ref()
            .is_ok_and(|b| outcome.declared.is_none_or(|d| d == b.len() as u64));
    assert!(
        !complete,
        "{behaviour:?}: lank8s answered a complete body: {}\n{}",
        describe(&outcome),
        lank8s.log()
    );
    if let Ok(body) = &outcome.body {
        assert_ne!(digest_of(body), digest, "{behaviour:?}: full body arrived");
    }
    if outcome.status == 200 {
        // The access log must say the response was cut short, not that it completed.
        let line = lank8s
            .wait_for_log_line(Duration::from_secs(5), |l| {
                l["message"] == "request" && l["path"] == path.as_str()
            })
            .await
            .unwrap_or_else(|| panic!("no request log line for {path}\n{}", lank8s.log()));
        assert_eq!(line["outcome"], "aborted", "{behaviour:?}: {line}");
        assert!(
            line["bytes"]
                .as_u64()
                .is_some_and(|b| b < expected.len() as u64),
            "{behaviour:?}: {line}"
        );
    }

    let data = lank8s.data_dir();
    let tmp_empty = eventually(Duration::from_secs(5), || {
        let left = files_under(&data.join("tmp"));
        async move { left.is_empty().then_some(()) }
    })
    .await;
    assert!(
        tmp_empty.is_some(),
        "{behaviour:?}: tmp/ still holds {:?} after the fill ended",
        files_under(&data.join("tmp"))
    );
    assert_eq!(
        files_under(&data.join("blobs")),
        Vec::<std::path::PathBuf>::new(),
        "{behaviour:?}: a blob was cached from a bad download"
    );
    let gets = fault.count_path("GET", &path);
    assert!(gets >= 1, "{behaviour:?}: upstream never saw the blob GET");

    fault.clear(&path);
    let again = get(&url).await;
    assert_eq!(again.status, 200, "retry: {}", describe(&again));
    let body = again.body.as_ref().expect("retry body");
    assert_eq!(body.len(), expected.len(), "retry length");
    assert_eq!(digest_of(body), digest, "retry digest");
    assert_eq!(
        fault.count_path("GET", &path),
        gets + 1,
        "{behaviour:?}: the retry after the fault must fetch the blob again, once"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn cut_blob_stream_is_not_served_complete_nor_cached() {
    blob_fault_is_neither_served_nor_cached(Behaviour::CutAfter(MIB), 1).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_blob_bytes_are_not_served_complete_nor_cached() {
    blob_fault_is_neither_served_nor_cached(Behaviour::WrongBytes, 2).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn html_with_200_for_a_manifest_is_502_and_not_cached() {
    let fault = FaultUpstream::start().await;
    let image = TestImage::docker_schema2(3);
    fault.serve_image(&image, REPO, "v1");
    let path = manifest_path(REPO, "v1");
    fault.set(&path, Behaviour::Html);
    let lank8s = Lank8s::start(&upstream_table(&fault.url(), "")).await;
    let url = format!("{}{path}", lank8s.url());

    let resp = http_client()
        .get(&url)
        .header("accept", BROAD_ACCEPT)
        .send()
        .await
        .unwrap();
    let e = error_answer(resp).await;
    assert_eq!(
        (e.status, e.code.as_deref()),
        (502, Some("UNAVAILABLE")),
        "{e:?}"
    );
    assert!(e.content_type.starts_with("application/json"), "{e:?}");
    let data = lank8s.data_dir();
    assert_eq!(
        files_under(&data.join("manifests")),
        Vec::<std::path::PathBuf>::new()
    );
    assert_eq!(
        files_under(&data.join("tags")),
        Vec::<std::path::PathBuf>::new()
    );

    fault.clear(&path);
    let resp = http_client()
        .get(&url)
        .header("accept", BROAD_ACCEPT)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["docker-content-digest"],
        image.top_digest(),
        "digest after the fault cleared"
    );
    assert_eq!(resp.headers()["content-type"], image.top_media_type());
    assert_eq!(&resp.bytes().await.unwrap(), image.top_bytes());
    assert_eq!(
        fault.count_path("GET", &path),
        2,
        "the clean fetch must go upstream"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_429_is_429_with_retry_after() {
    let fault = FaultUpstream::start().await;
    let image = TestImage::docker_schema2(4);
    fault.serve_image(&image, REPO, "v1");
    let path = manifest_path(REPO, "v1");
    fault.set(&path, Behaviour::TooManyRequests);
    let lank8s = Lank8s::start(&upstream_table(&fault.url(), "")).await;

    let resp = http_client()
        .get(format!("{}{path}", lank8s.url()))
        .header("accept", BROAD_ACCEPT)
        .send()
        .await
        .unwrap();
    let e = error_answer(resp).await;
    assert_eq!(
        (e.status, e.code.as_deref()),
        (429, Some("TOOMANYREQUESTS")),
        "{e:?}"
    );
    assert_eq!(
        e.headers.get("retry-after").map(|v| v.to_str().unwrap()),
        Some("7"),
        "{e:?}"
    );
    assert_eq!(
        files_under(&lank8s.data_dir().join("manifests")),
        Vec::<std::path::PathBuf>::new()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_500_is_502_after_retry_and_404_stays_404() {
    let fault = FaultUpstream::start().await;
    let image = TestImage::docker_schema2(5);
    fault.serve_image(&image, REPO, "v1");
    let lank8s = Lank8s::start(&upstream_table(&fault.url(), "")).await;
    let ask = |path: String| {
        let url = format!("{}{path}", lank8s.url());
        async move {
            let resp = http_client()
                .get(url)
                .header("accept", BROAD_ACCEPT)
                .send()
                .await
                .unwrap();
            error_answer(resp).await
        }
    };

    let broken = manifest_path(REPO, "v1");
    fault.set(&broken, Behaviour::ServerError);
    let e = ask(broken.clone()).await;
    assert_eq!(
        (e.status, e.code.as_deref()),
        (502, Some("UNAVAILABLE")),
        "{e:?}"
    );
    assert_eq!(
        fault.count_path("GET", &broken),
        2,
        "one GET and retries = 1 more"
    );

    let missing = manifest_path(REPO, "missing");
    fault.set(&missing, Behaviour::Status(404));
    let e = ask(missing.clone()).await;
    assert_eq!(
        (e.status, e.code.as_deref()),
        (404, Some("MANIFEST_UNKNOWN")),
        "{e:?}"
    );
    assert_eq!(fault.count_path("GET", &missing), 1, "a 404 is not retried");

    let blob = blob_path(REPO, image.largest_blob_digest());
    fault.set(&blob, Behaviour::Status(404));
    let e = ask(blob.clone()).await;
    assert_eq!(
        (e.status, e.code.as_deref()),
        (404, Some("BLOB_UNKNOWN")),
        "{e:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_upstream_is_504_within_the_timeout() {
    let fault = FaultUpstream::start().await;
    let image = TestImage::docker_schema2(6);
    fault.serve_image(&image, REPO, "v1");
    let manifest = manifest_path(REPO, "v1");
    let blob = blob_path(REPO, image.largest_blob_digest());
    for path in [&manifest, &blob] {
        fault.set(path, Behaviour::SlowFirstByte(Duration::from_secs(5)));
    }
    let lank8s = Lank8s::start(&upstream_table(&fault.url(), "timeout = \"1s\"")).await;

    for path in [&manifest, &blob] {
        let started = Instant::now();
        let resp = http_client()
            .get(format!("{}{path}", lank8s.url()))
            .header("accept", BROAD_ACCEPT)
            .send()
            .await
            .unwrap();
        let e = error_answer(resp).await;
        let elapsed = started.elapsed();
        assert_eq!(
            (e.status, e.code.as_deref()),
            (504, Some("UNAVAILABLE")),
            "{path}: {e:?}"
        );
        assert!(
            elapsed < Duration::from_secs(4),
            "{path}: 504 took {elapsed:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn unreachable_upstream_is_502_quickly() {
    let url = format!("http://127.0.0.1:{}", free_port());
    let lank8s = Lank8s::start(&upstream_table(&url, "")).await;
    let digest = digest_of(b"nothing here");
    for path in [manifest_path(REPO, "v1"), blob_path(REPO, &digest)] {
        let started = Instant::now();
        let resp = http_client()
            .get(format!("{}{path}", lank8s.url()))
            .header("accept", BROAD_ACCEPT)
            .send()
            .await
            .unwrap();
        let e = error_answer(resp).await;
        let elapsed = started.elapsed();
        assert_eq!(
            (e.status, e.code.as_deref()),
            (502, Some("UNAVAILABLE")),
            "{path}: {e:?}"
        );
        assert!(e.content_type.starts_with("application/json"), "{e:?}");
        assert!(
            elapsed < Duration::from_secs(3),
            "{path}: 502 took {elapsed:?}"
        );
    }
}
