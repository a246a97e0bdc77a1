//! The single-flight blob fill: concurrent cold clients share one upstream download and stream as it arrives, a client that leaves does not stop it, ranges work cold and warm, and a cold HEAD downloads nothing.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt as _;
use rand::{RngCore as _, SeedableRng as _};
use sha2::{Digest as _, Sha256};
use support::fault::{blob_path, files_under, upstream_table};
use support::*;

const MIB: usize = 1024 * 1024;
/// Over 100 MiB, and not a multiple of any likely chunk size.
const LARGE: usize = 105 * MIB + 123;
const CLIENTS: usize = 20;
const REPO: &str = "fill/app";

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(240))
        .build()
        .expect("build reqwest client")
}

/// One client's streamed download.
#[derive(Debug)]
struct Download {
    status: u16,
    first_chunk: Option<Instant>,
    length: usize,
    digest: String,
    error: Option<String>,
}

/// GETs `url`, hashing the body as it streams in; stops after `stop_after` bytes
/// when given, dropping the response as a client that goes away would.
async fn download(url: String, stop_after: Option<usize>) -> Download {
    let mut result = Download {
        status: 0,
        first_chunk: None,
        length: 0,
        digest: String::new(),
        error: None,
    };
    let resp = match client().get(&url).send().await {
        Ok(resp) => resp,
        Err(e) => {
            result.error = Some(e.to_string());
            return result;
        }
    };
    result.status = resp.status().as_u16();
    let mut hasher = Sha256::new();
    let mut body = resp.bytes_stream();
    while let Some(chunk) = body.next().await {
        match chunk {
            Ok(chunk) if chunk.is_empty() => {}
            Ok(chunk) => {
                result.first_chunk.get_or_insert_with(Instant::now);
                result.length += chunk.len();
                hasher.update(&chunk);
                if stop_after.is_some_and(|n| result.length >= n) {
                    return result;
                }
            }
            Err(e) => {
                result.error = Some(format!("{e:?}"));
                break;
            }
        }
    }
    result.digest = format!("sha256:{}", hex::encode(hasher.finalize()));
    result
}

/// The request log lines for `path`, once there are `n` of them.
async fn request_lines_for(lank8s: &Lank8s, path: &str, n: usize) -> Vec<serde_json::Value> {
    let lines = || {
        lank8s
            .request_lines()
            .into_iter()
            .filter(|l| l["path"] == path)
            .collect::<Vec<_>>()
    };
    let found = eventually(Duration::from_secs(10), || {
        let l = lines();
        async move { (l.len() >= n).then_some(l) }
    })
    .await;
    found.unwrap_or_else(|| panic!("fewer than {n} log lines for {path}: {:#?}", lines()))
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_cold_clients_share_one_upstream_get_and_stream_early() {
    let registry = Registry::start().await;
    let image = TestImage::large(51, LARGE);
    image.push(&registry, REPO, "v1").await;
    let table = format!(
        "[upstreams.\"registry.k8s.io\"]\nurl = \"{}\"\n",
        registry.url()
    );
    let lank8s = Lank8s::start(&table).await;
    let digest = image.largest_blob_digest().to_string();
    let path = blob_path(REPO, &digest);
    registry.settle().await;
    let gets_before = registry.count_requests("GET", &format!("/blobs/{digest}"));

    let barrier = Arc::new(tokio::sync::Barrier::new(CLIENTS));
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (barrier, url) = (barrier.clone(), format!("{}{path}", lank8s.url()));
            tokio::spawn(async move {
                barrier.wait().await;
                download(url, None).await
            })
        })
        .collect();
    let all = tokio::time::timeout(
        Duration::from_secs(300),
        futures_util::future::join_all(tasks),
    )
    .await
    .expect("downloads finished in time");
    let downloads: Vec<Download> = all.into_iter().map(|d| d.unwrap()).collect();

    for (i, d) in downloads.iter().enumerate() {
        assert_eq!(
            (d.status, d.length, d.digest.as_str(), &d.error),
            (200, LARGE, digest.as_str(), &None),
            "client {i}"
        );
    }
    let firsts: Vec<Instant> = downloads.iter().map(|d| d.first_chunk.unwrap()).collect();
    let earliest = *firsts.iter().min().unwrap();
    let lags: Vec<Duration> = firsts.iter().map(|f| *f - earliest).collect();
    assert!(
        lags.iter().all(|l| *l <= Duration::from_millis(1500)),
        "every client's first byte within 1.5 s of the first client's; lags {lags:?}"
    );

    registry.settle().await;
    assert_eq!(
        registry.count_requests("GET", &format!("/blobs/{digest}")) - gets_before,
        1,
        "exactly one upstream GET of the blob"
    );
    let lines = request_lines_for(&lank8s, &path, CLIENTS).await;
    let count = |cache: &str| lines.iter().filter(|l| l["cache"] == cache).count();
    assert_eq!(
        (count("miss"), count("joined")),
        (1, CLIENTS - 1),
        "{lines:#?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_leaving_mid_fill_does_not_stop_it() {
    let fault = FaultUpstream::start().await;
    let image = TestImage::large(52, 8 * MIB + 5);
    fault.serve_image(&image, REPO, "v1");
    let digest = image.largest_blob_digest().to_string();
    let path = blob_path(REPO, &digest);
    // About a second for the whole blob, so the fill is under way when a client leaves.
    fault.set(
        &path,
        Behaviour::Throttle {
            chunk: 256 * 1024,
            every: Duration::from_millis(30),
        },
    );
    let lank8s = Lank8s::start(&upstream_table(&fault.url(), "")).await;
    let url = format!("{}{path}", lank8s.url());

    let barrier = Arc::new(tokio::sync::Barrier::new(2));
    let start = |stop_after: Option<usize>| {
        let (barrier, url) = (barrier.clone(), url.clone());
        tokio::spawn(async move {
            barrier.wait().await;
            download(url, stop_after).await
        })
    };
    let (leaver, stayer) = (start(Some(MIB)), start(None));
    let leaver = leaver.await.unwrap();
    let stayer = tokio::time::timeout(Duration::from_secs(60), stayer)
        .await
        .expect("the staying client finished")
        .unwrap();
    assert_eq!(leaver.status, 200);
    assert!(leaver.length >= MIB && leaver.length < image.blob(&digest).unwrap().len());
    assert_eq!(
        (
            stayer.status,
            stayer.length,
            stayer.digest.as_str(),
            &stayer.error
        ),
        (200, 8 * MIB + 5, digest.as_str(), &None)
    );

    let third = download(url.clone(), None).await;
    assert_eq!(
        (third.status, third.length, third.digest.as_str()),
        (200, 8 * MIB + 5, digest.as_str())
    );
    let lines = request_lines_for(&lank8s, &path, 3).await;
    let third_line = lines
        .iter()
        .find(|l| l["cache"] == "hit")
        .unwrap_or_else(|| panic!("no cache hit for the third GET: {lines:#?}"));
    assert_eq!(third_line["outcome"], "complete", "{third_line}");
    assert_eq!(fault.count_path("GET", &path), 1, "one upstream GET in all");
    let gone: Vec<_> = lines
        .iter()
        .filter(|l| l["outcome"] == "client gone")
        .collect();
    assert_eq!(gone.len(), 1, "the leaving client is logged: {lines:#?}");
}

fn random_blob(seed: u64, size: usize) -> Bytes {
    let mut bytes = vec![0u8; size];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut bytes);
    Bytes::from(bytes)
}

async fn ranged(url: &str, range: &str) -> (u16, Option<String>, Option<String>, Bytes) {
    let resp = client()
        .get(url)
        .header("range", range)
        .send()
        .await
        .unwrap();
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
    };
    let (status, content_range, length) = (
        resp.status().as_u16(),
        header("content-range"),
        header("content-length"),
    );
    (status, content_range, length, resp.bytes().await.unwrap())
}

/// `bytes=1000-1999`, `bytes=-10`, or `bytes=<size>-` on `blob`, as `which` says.
async fn check_range(url: &str, blob: &Bytes, which: &str, when: &str) {
    let size = blob.len();
    let (range, start, end) = match which {
        "middle" => ("bytes=1000-1999".to_string(), 1000, 2000),
        "suffix" => ("bytes=-10".to_string(), size - 10, size),
        _ => (format!("bytes={size}-"), 0, 0),
    };
    let (status, content_range, length, body) = ranged(url, &range).await;
    if which == "past end" {
        assert_eq!(
            (status, content_range.as_deref()),
            (416, Some(format!("bytes */{size}").as_str())),
            "{when} {range}"
        );
        return;
    }
    assert_eq!(
        (status, content_range, length),
        (
            206,
            Some(format!("bytes {start}-{}/{size}", end - 1)),
            Some((end - start).to_string())
        ),
        "{when} {range}"
    );
    assert_eq!(body, blob.slice(start..end), "{when} {range}");
}

#[tokio::test(flavor = "multi_thread")]
async fn ranges_are_answered_cold_and_warm() {
    let fault = FaultUpstream::start().await;
    let lank8s = Lank8s::start(&upstream_table(&fault.url(), "")).await;
    let size = 3 * MIB + 17;
    let checks = ["middle", "past end", "suffix"];
    let blobs: Vec<(String, Bytes)> = (0..checks.len() as u64)
        .map(|i| {
            let bytes = random_blob(60 + i, size);
            let path = blob_path(REPO, &digest_of(&bytes));
            fault.put(&path, "application/octet-stream", bytes.clone());
            (format!("{}{path}", lank8s.url()), bytes)
        })
        .collect();

    // Each check on a blob nobody has asked for yet.
    for ((url, blob), which) in blobs.iter().zip(checks) {
        check_range(url, blob, which, "cold").await;
    }
    // Warm them all, then every check on every blob comes from the cache.
    for (url, blob) in &blobs {
        let full = download(url.clone(), None).await;
        assert_eq!((full.status, full.digest), (200, digest_of(blob)));
    }
    let requests_before = fault.requests().len();
    for (url, blob) in &blobs {
        for which in checks {
            check_range(url, blob, which, "warm").await;
        }
    }
    assert_eq!(
        fault.requests().len(),
        requests_before,
        "warm ranges are served from the cache"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn cold_head_of_a_blob_downloads_nothing() {
    let fault = FaultUpstream::start().await;
    let lank8s = Lank8s::start(&upstream_table(&fault.url(), "")).await;
    let bytes = random_blob(70, 2 * MIB + 3);
    let digest = digest_of(&bytes);
    let path = blob_path(REPO, &digest);
    fault.put(&path, "application/octet-stream", bytes.clone());

    let resp = client()
        .head(format!("{}{path}", lank8s.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let length = bytes.len().to_string();
    assert_eq!(
        (
            resp.headers()
                .get("content-length")
                .map(|v| v.to_str().unwrap()),
            resp.headers()
                .get("docker-content-digest")
                .map(|v| v.to_str().unwrap())
        ),
        (Some(length.as_str()), Some(digest.as_str()))
    );
    // Give a background download, if one were started, time to show.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        (
            fault.count_path("HEAD", &path),
            fault.count_path("GET", &path)
        ),
        (1, 0),
        "(HEAD, GET) upstream"
    );
    assert_eq!(
        files_under(&lank8s.data_dir().join("blobs")),
        Vec::<std::path::PathBuf>::new()
    );
}
