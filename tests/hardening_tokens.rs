//! Regression tests for hostile or difficult token realms: a token that claims to live forever, a token answer too large to read, a realm that refuses rotated credentials for a cached tag, and credentials kept to the realm hosts configured for them.

mod support;

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use bytes::Bytes;
use support::fault::{blob_path, error_answer, files_under, manifest_path, upstream_table};
use support::*;

const REPO: &str = "hardening/tokens";
const MIB: usize = 1024 * 1024;
/// Longer than a `tag_ttl` of 1 s, counted in whole seconds.
const PAST_TTL: Duration = Duration::from_millis(1500);

/// GET through lank8s: status, headers and the whole body; status 0 and an
/// empty body when the connection failed (as when lank8s panics).
async fn fetch(lank8s: &Lank8s, path: &str) -> (u16, reqwest::header::HeaderMap, Bytes) {
    let resp = match http_client()
        .get(format!("{}{path}", lank8s.url()))
        .send()
        .await
    {
        Ok(resp) => resp,
        Err(_) => return (0, Default::default(), Bytes::new()),
    };
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.bytes().await.unwrap_or_default();
    (status, headers, body)
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
    found.unwrap_or_else(|| panic!("fewer than {n} lines for {path}\n{}", lank8s.log()))
}

/// A realm on a fault upstream that answers every token request with `body`.
async fn realm_answering(body: Bytes) -> (FaultUpstream, String) {
    let realm = FaultUpstream::start().await;
    realm.put("/token", "application/json", body);
    let url = format!("{}/token", realm.url());
    (realm, url)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_that_claims_to_live_forever_is_used_and_capped() {
    let max = br#"{"token":"t","expires_in":18446744073709551615}"#;
    let (realm, realm_url) = realm_answering(Bytes::from_static(max)).await;
    let fault = FaultUpstream::start().await;
    let image = TestImage::docker_schema2(101);
    fault.serve_image(&image, REPO, "v1");
    fault.require_bearer_token(&realm_url, "hostile", "t");
    let lank8s = Lank8s::start(&upstream_table(&fault.url(), "")).await;

    // The first token is fetched for a cold blob pull, then the same blob is
    // asked for again: a fill that died with the token must not be joined.
    let (first, first_bytes) = image.blobs[0].clone();
    let (second, second_bytes) = image.blobs[1].clone();
    let first_path = blob_path(REPO, &first);
    for what in ["cold", "again"] {
        let (status, _, body) = fetch(&lank8s, &first_path).await;
        assert_eq!(status, 200, "{what} blob: {}", lank8s.log());
        assert_eq!(body, first_bytes, "{what} blob");
    }
    let (status, _, body) = fetch(&lank8s, &manifest_path(REPO, "v1")).await;
    assert_eq!(status, 200, "manifest: {}", lank8s.log());
    assert_eq!(&body, image.top_bytes());
    let (status, _, body) = fetch(&lank8s, &blob_path(REPO, &second)).await;
    assert_eq!(status, 200, "second blob: {}", lank8s.log());
    assert_eq!(body, second_bytes, "second blob");

    assert_eq!(cache_values(&lank8s, &first_path, 2).await, ["miss", "hit"]);
    assert_eq!(
        realm.count_path("GET", "/token"),
        1,
        "the token is kept (for a capped lifetime) and reused"
    );
    let statuses: Vec<u16> = fault
        .requests()
        .iter()
        .filter(|r| r.method == "GET" && r.path == first_path)
        .map(|r| r.status)
        .collect();
    assert_eq!(
        statuses,
        [401, 200],
        "upstream GETs of the blob: the challenge, then one download"
    );
    assert!(!lank8s.log().contains("panicked"), "{}", lank8s.log());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_answer_too_large_to_read_is_502_at_once() {
    // 16 MiB of valid JSON (so that reading it all would succeed), sent chunked
    // 64 KiB every 10 ms: about 2.6 s to read in full.
    let mut body = br#"{"token":"t","expires_in":300,"padding":""#.to_vec();
    body.resize(body.len() + 16 * MIB, b'x');
    body.extend_from_slice(br#""}"#);
    let (realm, realm_url) = realm_answering(Bytes::from(body)).await;
    realm.set(
        "/token",
        Behaviour::Chunked {
            chunk: 64 * 1024,
            every: Duration::from_millis(10),
            wrong_bytes: false,
        },
    );
    let fault = FaultUpstream::start().await;
    let image = TestImage::docker_schema2(102);
    fault.serve_image(&image, REPO, "v1");
    fault.require_bearer_token(&realm_url, "hostile", "t");
    let lank8s = Lank8s::start(&upstream_table(&fault.url(), "timeout = \"20s\"")).await;
    let path = manifest_path(REPO, "v1");

    let started = Instant::now();
    let resp = http_client()
        .get(format!("{}{path}", lank8s.url()))
        .send()
        .await
        .unwrap();
    let e = error_answer(resp).await;
    let elapsed = started.elapsed();
    assert_eq!(
        (e.status, e.code.as_deref()),
        (502, Some("UNAVAILABLE")),
        "{e:?}\n{}",
        lank8s.log()
    );
    assert!(
        elapsed < Duration::from_millis(1500),
        "502 took {elapsed:?}: lank8s read far past the cap"
    );
    assert_eq!(realm.count_path("GET", "/token"), 1);
    let served: Vec<_> = fault
        .requests()
        .into_iter()
        .filter(|r| r.path == path && r.status == 200)
        .collect();
    assert_eq!(served.len(), 0, "no token, so no manifest: {served:#?}");
    assert_eq!(
        files_under(&lank8s.data_dir().join("manifests")),
        Vec::<std::path::PathBuf>::new()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn refused_credentials_serve_an_expired_tag_stale_and_keep_it() {
    let issuer = TokenIssuer::start_with_credentials("puller", "first-secret").await;
    let fault = FaultUpstream::start().await;
    let image = TestImage::docker_schema2(104);
    fault.serve_image(&image, REPO, "v1");
    fault.require_bearer(&issuer.realm(), TokenIssuer::SERVICE);
    let keys = "tag_ttl = \"1s\"\nusername = \"puller\"\npassword = \"first-secret\"\n\
                credential_hosts = [\"127.0.0.1\"]";
    let lank8s = Lank8s::start(&upstream_table(&fault.url(), keys)).await;
    let path = manifest_path(REPO, "v1");
    let tag_file = lank8s
        .data_dir()
        .join(format!("tags/registry.k8s.io/{REPO}/_tags/v1"));

    let (status, headers, body) = fetch(&lank8s, &path).await;
    assert_eq!(status, 200, "{}", lank8s.log());
    assert_eq!(&body, image.top_bytes());
    assert_eq!(headers.get("warning"), None);
    assert_eq!(issuer.granted_requests(), 1);
    assert!(
        tag_file.is_file(),
        "no tag record at {}",
        tag_file.display()
    );

    // The password is rotated and lank8s's token stops working, after the TTL.
    tokio::time::sleep(PAST_TTL).await;
    issuer.set_credentials("puller", "rotated-secret");
    assert_eq!(fault.expire_tokens().len(), 1);

    let (status, headers, body) = fetch(&lank8s, &path).await;
    assert_eq!(
        status,
        200,
        "{}\n{}",
        String::from_utf8_lossy(&body),
        lank8s.log()
    );
    assert_eq!(&body, image.top_bytes());
    assert_eq!(headers["docker-content-digest"], image.top_digest());
    let warning = headers.get("warning").map(|w| w.to_str().unwrap());
    assert!(
        warning.is_some_and(|w| w.starts_with("299 ")),
        "a stale answer needs Warning: 299, got {warning:?}"
    );
    assert_eq!(cache_values(&lank8s, &path, 2).await, ["miss", "stale"]);
    assert!(
        tag_file.is_file(),
        "the tag record was deleted: {}",
        tag_file.display()
    );

    let asked: Vec<(Option<String>, bool)> = issuer
        .requests()
        .into_iter()
        .map(|r| (r.authorization, r.granted))
        .collect();
    let old = Some(basic_auth_header("puller", "first-secret"));
    assert_eq!(
        asked,
        [(old.clone(), true), (old, false)],
        "(Authorization, granted) of the token requests"
    );
}

/// lank8s with credentials for an upstream behind `issuer`, which only hands
/// out tokens for them, and `credential_hosts = [entry]`.
async fn pull_through_issuer_with(entry: &str) -> (u16, Option<String>, Vec<Option<String>>) {
    let issuer = TokenIssuer::start_with_credentials("puller", "pull-secret").await;
    let fault = FaultUpstream::start().await;
    let image = TestImage::docker_schema2(109);
    fault.serve_image(&image, REPO, "v1");
    fault.require_bearer(&issuer.realm(), TokenIssuer::SERVICE);
    let entry = entry.replace("{port}", issuer.url().rsplit(':').next().unwrap());
    let keys = format!(
        "username = \"puller\"\npassword = \"pull-secret\"\ncredential_hosts = [\"{entry}\"]"
    );
    let lank8s = Lank8s::start(&upstream_table(&fault.url(), &keys)).await;
    let resp = http_client()
        .get(format!("{}{}", lank8s.url(), manifest_path(REPO, "v1")))
        .send()
        .await
        .unwrap();
    let e = error_answer(resp).await;
    if e.status == 200 {
        assert_eq!(e.body.as_bytes(), &image.top_bytes()[..]);
    }
    let sent = issuer
        .requests()
        .into_iter()
        .map(|r| r.authorization)
        .collect();
    (e.status, e.code, sent)
}

#[tokio::test(flavor = "multi_thread")]
async fn credential_hosts_name_a_host_or_a_host_and_port() {
    let basic = Some(basic_auth_header("puller", "pull-secret"));
    let unused_port = free_port();
    let cases = [
        ("127.0.0.1".to_string(), (200, None, vec![basic.clone()])),
        ("127.0.0.1:{port}".to_string(), (200, None, vec![basic])),
        (
            format!("127.0.0.1:{unused_port}"),
            (404, Some("NAME_UNKNOWN".to_string()), vec![None]),
        ),
    ];
    for (entry, want) in cases {
        assert_eq!(
            pull_through_issuer_with(&entry).await,
            want,
            "credential_hosts = [{entry:?}]: (status, code, Authorization sent to the realm)"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_realm_on_an_unlisted_host_never_gets_the_credentials() {
    let realm = FaultUpstream::start_on(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2))).await;
    realm.put(
        "/token",
        "application/json",
        Bytes::from_static(br#"{"token":"anonymous-token","expires_in":300}"#),
    );
    let fault = FaultUpstream::start().await;
    let image = TestImage::docker_schema2(119);
    fault.serve_image(&image, REPO, "v1");
    let realm_url = format!("{}/token", realm.url());
    fault.require_bearer_token(&realm_url, "elsewhere", "anonymous-token");
    let keys = "username = \"puller\"\npassword = \"pull-secret\"\n\
                credential_hosts = [\"127.0.0.1\"]";
    let lank8s = Lank8s::start(&upstream_table(&fault.url(), keys)).await;

    let (status, _, body) = fetch(&lank8s, &manifest_path(REPO, "v1")).await;
    assert_eq!(status, 200, "{}", lank8s.log());
    assert_eq!(&body, image.top_bytes());
    let (digest, bytes) = image.blobs[0].clone();
    let (status, _, body) = fetch(&lank8s, &blob_path(REPO, &digest)).await;
    assert_eq!((status, body), (200, bytes));

    let asked = realm.requests();
    assert_eq!(asked.len(), 1, "one token for the repository: {asked:#?}");
    for r in &asked {
        assert_eq!(
            r.headers.get("authorization"),
            None,
            "credentials sent to 127.0.0.2, which is not in credential_hosts: {r:#?}"
        );
    }
}
