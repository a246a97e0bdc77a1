//! Regression tests for blob fills under hostile conditions: a failing fill on another route is not joined, a second process on the same data_dir leaves a fill alone, a chunked blob with wrong bytes never arrives whole, and a slow redirect chain shares one deadline.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use support::fault::{blob_path, error_answer, files_under, raw_http10_get, upstream_table};
use support::*;

const REPO: &str = "hardening/blobs";
const MIB: usize = 1024 * 1024;

/// GET `url`: status and the body, or how reading it failed.
async fn get(url: String) -> (u16, Result<Bytes, String>) {
    match http_client().get(&url).send().await {
        Err(e) => (0, Err(format!("request failed: {e}"))),
        Ok(resp) => {
            let status = resp.status().as_u16();
            (status, resp.bytes().await.map_err(|e| format!("{e:?}")))
        }
    }
}

/// Where lank8s keeps a sha256 blob.
fn blob_file(data_dir: &Path, digest: &str) -> PathBuf {
    let hex = digest.strip_prefix("sha256:").unwrap();
    data_dir.join(format!("blobs/sha256/{}/{hex}", &hex[..2]))
}

/// The request lines for `path`, once there are `n`.
async fn request_lines(lank8s: &Lank8s, path: &str, n: usize) -> Vec<serde_json::Value> {
    let lines = || {
        lank8s
            .request_lines()
            .into_iter()
            .filter(|l| l["path"] == path)
            .collect::<Vec<_>>()
    };
    let found = eventually(Duration::from_secs(5), || {
        let v = lines();
        async move { (v.len() >= n).then_some(v) }
    })
    .await;
    found.unwrap_or_else(|| panic!("fewer than {n} lines for {path}\n{}", lank8s.log()))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_fill_through_another_repository_is_not_joined() {
    let fault = FaultUpstream::start().await;
    let image = TestImage::docker_schema2(103);
    fault.serve_image(&image, "good/app", "v1");
    let digest = image.largest_blob_digest().to_string();
    let expected = image.blob(&digest).unwrap().clone();
    let (good, bad) = (
        blob_path("good/app", &digest),
        blob_path("bad/app", &digest),
    );
    // Nothing is stored under bad/app: after half a second it answers 404.
    fault.set(&bad, Behaviour::SlowFirstByte(Duration::from_millis(500)));
    let lank8s = Lank8s::start(&upstream_table(&fault.url(), "")).await;

    let failing = tokio::spawn(get(format!("{}{bad}", lank8s.url())));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(fault.count_path("GET", &bad), 1, "the failing fill started");
    let (status, body) = get(format!("{}{good}", lank8s.url())).await;
    let overlapped = !failing.is_finished();
    assert_eq!(status, 200, "{body:?}\n{}", lank8s.log());
    assert_eq!(body.unwrap(), expected);
    assert!(
        overlapped,
        "the failing request ended before the good one was answered; nothing was tested"
    );

    let (status, body) = failing.await.unwrap();
    let body = body.unwrap();
    let code = serde_json::from_slice::<serde_json::Value>(&body).unwrap()["errors"][0]["code"]
        .as_str()
        .map(str::to_string);
    assert_eq!((status, code.as_deref()), (404, Some("BLOB_UNKNOWN")));
    assert_eq!(fault.count_path("GET", &good), 1);
    let line = &request_lines(&lank8s, &good, 1).await[0];
    assert_eq!(line["cache"], "miss", "{line}");
    assert!(blob_file(&lank8s.data_dir(), &digest).is_file());
}

/// A second lank8s process on another port, sharing a data_dir, killed on drop.
struct Sibling {
    _dir: tempfile::TempDir,
    log_path: PathBuf,
    child: Option<Child>,
}

impl Sibling {
    async fn start(data_dir: &Path, tables: &str) -> Sibling {
        let dir = tempfile::Builder::new()
            .prefix("lank8s-sibling-")
            .tempdir()
            .unwrap();
        let port = free_port();
        let config = format!(
            "listen = \"127.0.0.1:{port}\"\ndata_dir = {}\n[log]\nformat = \"json\"\n{tables}\n",
            serde_json::to_string(&data_dir.display().to_string()).unwrap()
        );
        let config_path = dir.path().join("lank8s.toml");
        std::fs::write(&config_path, config).unwrap();
        let log_path = dir.path().join("lank8s.log");
        let log = std::fs::File::create(&log_path).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_lank8s"));
        cmd.arg("serve")
            .arg("--config")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        support::scrub_proxy_env(&mut cmd);
        let mut child = cmd.spawn().expect("spawn the second lank8s");
        let ready = support::wait_until_ready(
            &format!("http://127.0.0.1:{port}/healthz"),
            |s| s == 200,
            &mut child,
            &log_path,
            Duration::from_secs(10),
        )
        .await;
        let mut sibling = Sibling {
            _dir: dir,
            log_path,
            child: Some(child),
        };
        if let Err(e) = ready {
            support::kill_child(&mut sibling.child);
            panic!("the second lank8s did not start: {e}");
        }
        sibling
    }
}

impl Drop for Sibling {
    fn drop(&mut self) {
        support::kill_child(&mut self.child);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_process_on_the_same_data_dir_leaves_a_fill_alone() {
    let fault = FaultUpstream::start().await;
    let image = TestImage::large(106, 4 * MIB + 5);
    fault.serve_image(&image, REPO, "v1");
    let digest = image.largest_blob_digest().to_string();
    let expected = image.blob(&digest).unwrap().clone();
    let path = blob_path(REPO, &digest);
    // 65 chunks 50 ms apart: over 3 s to download.
    let every = Duration::from_millis(50);
    fault.set(
        &path,
        Behaviour::Throttle {
            chunk: 64 * 1024,
            every,
        },
    );
    let tables = upstream_table(&fault.url(), "");
    let a = Lank8s::start(&tables).await;
    let data = a.data_dir();

    let download = tokio::spawn(get(format!("{}{path}", a.url())));
    let temp_files = eventually(Duration::from_secs(5), || {
        let files = files_under(&data.join("tmp"));
        async move { (!files.is_empty()).then_some(files) }
    })
    .await
    .expect("the fill never created its temporary file");
    let b = Sibling::start(&data, &tables).await;
    assert!(
        !download.is_finished(),
        "the download ended before the second process started; nothing was tested"
    );
    let removed: Vec<_> = temp_files.iter().filter(|f| !f.is_file()).collect();

    let (status, body) = download.await.unwrap();
    assert_eq!(status, 200, "{}", a.log());
    let body = body.unwrap_or_else(|e| panic!("download failed: {e}\n{}", a.log()));
    assert_eq!(body.len(), expected.len());
    assert_eq!(digest_of(&body), digest);
    assert_eq!(
        removed,
        Vec::<&PathBuf>::new(),
        "starting a second process removed the first one's temporary files\n{}",
        support::read_lossy(&b.log_path)
    );
    let committed = blob_file(&data, &digest);
    let found = eventually(Duration::from_secs(5), || {
        let ok = committed.is_file();
        async move { ok.then_some(()) }
    })
    .await;
    assert!(
        found.is_some(),
        "not committed: {}\n{}",
        committed.display(),
        a.log()
    );

    let (status, body) = get(format!("{}{path}", a.url())).await;
    assert_eq!(status, 200);
    assert_eq!(digest_of(&body.unwrap()), digest);
    let cache: Vec<_> = request_lines(&a, &path, 2)
        .await
        .iter()
        .map(|l| l["cache"].as_str().unwrap_or("?").to_string())
        .collect();
    assert_eq!(cache, ["miss", "hit"], "{}", a.log());
    assert_eq!(fault.count_path("GET", &path), 1);
    drop(b);
}

/// A chunked (no Content-Length) blob from upstream, read by an HTTP/1.0 client.
async fn chunked_blob_over_http10(wrong_bytes: bool, seed: u64) -> (Lank8s, Bytes, String) {
    let fault = FaultUpstream::start().await;
    let image = TestImage::large(seed, MIB + 3);
    fault.serve_image(&image, REPO, "v1");
    let digest = image.largest_blob_digest().to_string();
    let expected = image.blob(&digest).unwrap().clone();
    let path = blob_path(REPO, &digest);
    // About half a second in all, so that a client keeps up with the fill.
    let every = Duration::from_millis(50);
    let chunk = 128 * 1024;
    fault.set(
        &path,
        Behaviour::Chunked {
            chunk,
            every,
            wrong_bytes,
        },
    );
    let lank8s = Lank8s::start(&upstream_table(&fault.url(), "")).await;

    let answer = raw_http10_get(&lank8s.host(), &path, Duration::from_secs(30))
        .await
        .unwrap_or_else(|| panic!("no header block from lank8s\n{}", lank8s.log()));
    assert_eq!(answer.status, 200, "{answer:?}");
    // Nothing but the end of the connection delimits the body.
    assert_eq!(
        answer.header("content-length"),
        None,
        "{:?}",
        answer.headers
    );
    assert_eq!(
        answer.header("transfer-encoding"),
        None,
        "{:?}",
        answer.headers
    );
    let mut sent = expected.to_vec();
    if wrong_bytes {
        sent[0] ^= 0xff;
    }
    let got = answer.body.len();
    assert!(got <= sent.len(), "{got} bytes of {}", sent.len());
    assert_eq!(
        &answer.body[..],
        &sent[..got],
        "the bytes sent are upstream's"
    );
    assert_eq!(fault.count_path("GET", &path), 1);
    (lank8s, Bytes::from(answer.body), digest)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_chunked_blob_with_wrong_bytes_never_arrives_whole() {
    let (lank8s, body, digest) = chunked_blob_over_http10(true, 107).await;
    let size = MIB + 3;
    assert!(
        body.len() < size,
        "an HTTP/1.0 client got all {size} bytes of a blob that failed verification"
    );
    let path = blob_path(REPO, &digest);
    let line = &request_lines(&lank8s, &path, 1).await[0];
    assert_eq!(line["outcome"], "aborted", "{line}");
    assert_eq!(line["bytes"], body.len() as u64, "{line}");

    let data = lank8s.data_dir();
    let tmp_empty = eventually(Duration::from_secs(5), || {
        let left = files_under(&data.join("tmp"));
        async move { left.is_empty().then_some(()) }
    })
    .await;
    assert!(tmp_empty.is_some(), "{:?}", files_under(&data.join("tmp")));
    assert_eq!(files_under(&data.join("blobs")), Vec::<PathBuf>::new());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_chunked_blob_with_right_bytes_arrives_whole() {
    let (lank8s, body, digest) = chunked_blob_over_http10(false, 108).await;
    assert_eq!(body.len(), MIB + 3);
    assert_eq!(digest_of(&body), digest);
    let path = blob_path(REPO, &digest);
    let line = &request_lines(&lank8s, &path, 1).await[0];
    assert_eq!(line["outcome"], "complete", "{line}");
    let data = lank8s.data_dir();
    assert_eq!(
        files_under(&data.join("blobs")),
        [blob_file(&data, &digest)]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_redirect_chain_shares_one_deadline() {
    let fault = FaultUpstream::start().await;
    let image = TestImage::docker_schema2(110);
    fault.serve_image(&image, REPO, "v1");
    let digest = image.largest_blob_digest().to_string();
    let path = blob_path(REPO, &digest);
    let hex = digest.strip_prefix("sha256:").unwrap();
    let store = format!("/store/{hex}");
    fault.put(
        &store,
        "application/octet-stream",
        image.blob(&digest).unwrap().clone(),
    );
    // path → /hop/1 → … → /hop/5 → /store/<hex>: six redirects of 0.8 s each,
    // every one within the 2 s timeout, 4.8 s in all.
    let hop = Duration::from_millis(800);
    let mut from = path.clone();
    for i in 1..=6 {
        let to = if i == 6 {
            store.clone()
        } else {
            format!("/hop/{i}")
        };
        fault.set(
            &from,
            Behaviour::Delayed(hop, Box::new(Behaviour::Redirect(to.clone()))),
        );
        from = to;
    }
    let lank8s = Lank8s::start(&upstream_table(&fault.url(), "timeout = \"2s\"")).await;

    let started = Instant::now();
    let resp = http_client()
        .get(format!("{}{path}", lank8s.url()))
        .send()
        .await
        .unwrap();
    let e = error_answer(resp).await;
    let elapsed = started.elapsed();
    assert!(
        matches!(e.status, 502 | 504) && e.code.as_deref() == Some("UNAVAILABLE"),
        "after {elapsed:?}: {e:?}\n{}",
        lank8s.log()
    );
    assert!(
        elapsed < Duration::from_millis(3500),
        "{} after {elapsed:?}: each hop got its own timeout",
        e.status
    );
    assert_eq!(
        fault.count_path("GET", &store),
        0,
        "lank8s followed the whole chain"
    );
    assert_eq!(
        files_under(&lank8s.data_dir().join("blobs")),
        Vec::<PathBuf>::new()
    );
}
