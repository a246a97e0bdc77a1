//! Regression tests for what clients and operators meet: Accept negotiation remembered and never a 404, manifests that are not JSON refused, access-log lines for clients that leave early and for HEAD errors, and configuration that carries credentials in a URL or a path-like upstream name refused.

mod support;

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use support::fault::{error_answer, files_under, manifest_path, upstream_table};
use support::images::{DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST};
use support::*;

const REPO: &str = "hardening/http";

/// GET of a manifest with exactly this `Accept`: status, Content-Type, digest, body.
async fn get_manifest(lank8s: &Lank8s, path: &str, accept: &str) -> (u16, String, String, Bytes) {
    let resp = http_client()
        .get(format!("{}{path}", lank8s.url()))
        .header("accept", accept)
        .send()
        .await
        .unwrap();
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default()
    };
    let (content_type, digest) = (header("content-type"), header("docker-content-digest"));
    let status = resp.status().as_u16();
    (status, content_type, digest, resp.bytes().await.unwrap())
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
async fn a_negotiated_manifest_is_remembered_and_accept_never_makes_a_404() {
    let fault = FaultUpstream::start().await;
    let image = TestImage::oci_index(105);
    fault.serve_image(&image, REPO, "v1");
    fault.serve_image(&image, REPO, "v2");
    let (v1, v2) = (manifest_path(REPO, "v1"), manifest_path(REPO, "v2"));
    // v1: a client that does not take an index gets one platform's manifest.
    let (child_digest, child_type, child_bytes) = image.manifests[1].clone();
    assert_eq!(child_type, OCI_MANIFEST);
    fault.put_fallback(&v1, OCI_MANIFEST, child_bytes.clone());
    // v2: such a client gets 404, as from distribution when it cannot convert.
    fault.not_found_unless_accepted(&v2);
    let lank8s = Lank8s::start(&upstream_table(&fault.url(), "")).await;
    let index = (
        200,
        OCI_INDEX.to_string(),
        image.top_digest().to_string(),
        image.top_bytes().clone(),
    );
    for path in [&v1, &v2] {
        assert_eq!(get_manifest(&lank8s, path, BROAD_ACCEPT).await, index);
    }

    let child = (200, child_type, child_digest, child_bytes);
    for i in 0..5 {
        let answer = get_manifest(&lank8s, &v1, OCI_MANIFEST).await;
        assert_eq!(answer, child, "request {i}\n{}", lank8s.log());
    }
    let asked: Vec<Vec<String>> = fault
        .requests()
        .iter()
        .filter(|r| r.method == "GET" && r.path == v1)
        .map(|r| r.accept_lines())
        .collect();
    // lank8s asks with its own broad Accept first, then once with the client's.
    assert_eq!(asked.len(), 2, "upstream GETs of the tag: {asked:?}");
    assert!(asked[0].iter().any(|l| l.contains(OCI_INDEX)), "{asked:?}");
    assert_eq!(asked[1], [OCI_MANIFEST], "the negotiated GET");
    let cache: Vec<_> = request_lines(&lank8s, &v1, 6).await[1..]
        .iter()
        .map(|l| l["cache"].as_str().unwrap_or("?").to_string())
        .collect();
    assert_eq!(cache, ["pass", "hit", "hit", "hit", "hit"]);

    let answer = get_manifest(&lank8s, &v2, DOCKER_MANIFEST).await;
    assert_eq!(
        answer,
        index,
        "what the tag holds, not a 404\n{}",
        lank8s.log()
    );
    let refused: Vec<(Vec<String>, u16)> = fault
        .requests()
        .iter()
        .filter(|r| r.method == "GET" && r.path == v2)
        .skip(1)
        .map(|r| (r.accept_lines(), r.status))
        .collect();
    assert_eq!(
        refused,
        [(vec![DOCKER_MANIFEST.to_string()], 404)],
        "upstream GETs of v2 after the broad one: (Accept lines, status)"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_manifest_that_is_not_a_json_object_is_502_and_not_cached() {
    let fault = FaultUpstream::start().await;
    let garbage = Bytes::from_static(b"this is not a manifest\n");
    let by_digest = digest_of(&garbage);
    let cases = [
        ("empty", DOCKER_MANIFEST, Bytes::new()),
        ("garbage", OCI_MANIFEST, garbage.clone()),
        ("array", OCI_INDEX, Bytes::from_static(b"[]")),
        (by_digest.as_str(), OCI_MANIFEST, garbage),
    ];
    for (reference, media_type, body) in &cases {
        fault.put(&manifest_path(REPO, reference), media_type, body.clone());
    }
    let lank8s = Lank8s::start(&upstream_table(&fault.url(), "")).await;

    for (reference, _, _) in &cases {
        let path = manifest_path(REPO, reference);
        let resp = http_client()
            .get(format!("{}{path}", lank8s.url()))
            .header("accept", BROAD_ACCEPT)
            .send()
            .await
            .unwrap();
        let e = error_answer(resp).await;
        assert_eq!(
            (e.status, e.code.as_deref()),
            (502, Some("UNAVAILABLE")),
            "{reference}: {e:?}"
        );
        assert_eq!(fault.count_path("GET", &path), 1, "{reference}");
    }
    let data = lank8s.data_dir();
    assert_eq!(files_under(&data.join("manifests")), Vec::<PathBuf>::new());
    assert_eq!(files_under(&data.join("tags")), Vec::<PathBuf>::new());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_leaves_before_the_answer_gets_one_log_line() {
    let fault = FaultUpstream::start().await;
    let path = manifest_path(REPO, "never");
    fault.set(&path, Behaviour::SlowFirstByte(Duration::from_secs(60)));
    let lank8s = Lank8s::start(&upstream_table(&fault.url(), "timeout = \"30s\"")).await;

    let impatient = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    let gave_up = impatient
        .get(format!("{}{path}", lank8s.url()))
        .send()
        .await;
    assert!(
        gave_up.as_ref().is_err_and(|e| e.is_timeout()),
        "{gave_up:?}"
    );
    assert_eq!(
        fault.count_path("GET", &path),
        1,
        "lank8s was waiting on upstream"
    );

    let line = request_lines(&lank8s, &path, 1).await[0].clone();
    assert_eq!(line["method"], "GET", "{line}");
    assert_eq!(line["outcome"], "client gone", "{line}");
    assert_eq!(line["bytes"], 0, "{line}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let lines = request_lines(&lank8s, &path, 1).await;
    assert_eq!(lines.len(), 1, "{lines:#?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_head_answered_with_an_error_is_logged_complete() {
    let fault = FaultUpstream::start().await;
    let lank8s = Lank8s::start(&upstream_table(&fault.url(), "")).await;
    let manifest = manifest_path(REPO, "missing");
    let blob = support::fault::blob_path(REPO, &digest_of(b"missing"));

    for path in [&manifest, &blob] {
        let resp = http_client()
            .head(format!("{}{path}", lank8s.url()))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 404, "{path}");
        let line = request_lines(&lank8s, path, 1).await[0].clone();
        assert_eq!(
            (&line["method"], &line["status"], &line["outcome"]),
            (&"HEAD".into(), &404.into(), &"complete".into()),
            "{line}"
        );
    }
}

struct Run {
    code: Option<i32>,
    output: String,
}

/// Runs lank8s with `args`, killing it (by its own handle) after ten seconds.
fn run_lank8s(args: &[&str], cwd: &Path) -> Run {
    let mut child = Command::new(env!("CARGO_BIN_EXE_lank8s"))
        .args(args)
        .current_dir(cwd)
        .env_remove("LANK8S_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn lank8s");
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("lank8s {args:?} was still running after 10s");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut output = String::new();
    let _ = child.stdout.take().unwrap().read_to_string(&mut output);
    let _ = child.stderr.take().unwrap().read_to_string(&mut output);
    Run {
        code: status.code(),
        output,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn credentials_in_a_url_and_a_path_like_upstream_name_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("lank8s.toml");
    let file_arg = file.to_str().unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    // (file, key the message must name, text it must never print)
    let cases = [
        (
            "[upstreams.\"x.io\"]\nurl = \"http://puller:Zq9pw0rdLeak@registry.x.io\"\n",
            "upstreams.\"x.io\".url",
            "Zq9pw0rdLeak",
        ),
        (
            "[upstreams.\"..\"]\nurl = \"http://127.0.0.1:5999\"\n",
            "upstreams.\"..\"",
            "",
        ),
    ];
    for (text, key, secret) in cases {
        std::fs::write(&file, text).unwrap();
        let check = ["config", "check", file_arg];
        let serve = ["serve", "--config", file_arg, "--listen", &listen];
        for args in [&check[..], &serve[..]] {
            let run = run_lank8s(args, dir.path());
            assert_eq!(run.code, Some(2), "{args:?} with {text:?}: {}", run.output);
            assert!(run.output.contains(key), "{args:?}: {}", run.output);
            if !secret.is_empty() {
                assert!(!run.output.contains(secret), "{args:?}: {}", run.output);
                assert!(!run.output.contains("puller:"), "{args:?}: {}", run.output);
            }
        }
    }
}
