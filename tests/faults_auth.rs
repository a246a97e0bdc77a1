//! Credentials against a scriptable upstream: Basic auth kept off a redirect target on another host, and a bearer token refused mid-pull replaced by a fresh one.

mod support;

use std::net::{IpAddr, Ipv4Addr};

use support::fault::{blob_path, manifest_path, upstream_table};
use support::*;

const REPO: &str = "auth/app";

#[tokio::test(flavor = "multi_thread")]
async fn redirected_blob_is_fetched_without_sending_credentials_to_storage() {
    let fault = FaultUpstream::start().await;
    let storage = FaultUpstream::start_on(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2))).await;
    let image = TestImage::docker_schema2(31);
    fault.serve_image(&image, REPO, "v1");
    let layer = image.largest_blob_digest().to_string();
    // Relative 307 to /other/<hex>, then absolute 307 to the storage host, which
    // refuses (403) any request carrying Authorization.
    fault.redirect_blob_via(REPO, &layer, &storage);
    fault.require_basic("puller", "pull-secret");
    let lank8s = Lank8s::start(&upstream_table(
        &fault.url(),
        "username = \"puller\"\npassword = \"pull-secret\"",
    ))
    .await;

    let out = tempfile::tempdir().unwrap();
    let dest = out.path().join("image");
    let src = format!("docker://{}/{REPO}:v1", lank8s.host());
    if let Err(e) = skopeo_copy_all(&src, &dest).await {
        panic!(
            "{e}\nlank8s log:\n{}\nupstream saw: {:#?}\nstorage saw: {:#?}",
            lank8s.log(),
            fault.requests(),
            storage.requests()
        );
    }
    compare_dir_with_image(&dest, &image);

    let expected = basic_auth_header("puller", "pull-secret");
    let layer_path = blob_path(REPO, &layer);
    let layer_gets: Vec<_> = fault
        .requests()
        .into_iter()
        .filter(|r| r.method == "GET" && r.path == layer_path && r.status != 401)
        .collect();
    assert!(
        !layer_gets.is_empty(),
        "the upstream never answered the layer GET"
    );
    for r in &layer_gets {
        assert_eq!(
            r.headers.get("authorization").map(|v| v.to_str().unwrap()),
            Some(expected.as_str()),
            "the upstream's own host gets the credentials"
        );
        assert_eq!(r.status, 307);
    }
    assert!(
        fault.count("GET", "/other/") >= 1,
        "the relative redirect was not followed"
    );
    let stored: Vec<_> = storage.requests();
    assert!(
        stored
            .iter()
            .any(|r| r.method == "GET" && r.path.starts_with("/storage/") && r.status == 200),
        "the storage host never served the layer: {stored:#?}"
    );
    for r in &stored {
        assert!(
            !r.headers.contains_key("authorization"),
            "Authorization sent to the storage host: {r:#?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_refused_mid_pull_is_replaced() {
    let issuer = TokenIssuer::start().await;
    let fault = FaultUpstream::start().await;
    let image = TestImage::oci_index(32);
    fault.serve_image(&image, REPO, "v1");
    fault.require_bearer(&issuer.realm(), TokenIssuer::SERVICE);
    let lank8s = Lank8s::start(&upstream_table(&fault.url(), "")).await;
    let fetch = |path: String| {
        let url = format!("{}{path}", lank8s.url());
        async move {
            let resp = http_client().get(url).send().await.unwrap();
            let status = resp.status().as_u16();
            (status, resp.bytes().await.unwrap())
        }
    };
    let blob = |i: usize| {
        let (digest, bytes) = &image.blobs[i];
        (blob_path(REPO, digest), bytes.clone())
    };

    let (status, body) = fetch(manifest_path(REPO, "v1")).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(&body, image.top_bytes());
    let (path, bytes) = blob(0);
    let (status, body) = fetch(path).await;
    assert_eq!((status, body), (200, bytes));
    assert_eq!(
        issuer.granted_requests(),
        1,
        "one token serves the repository while it is valid"
    );

    // The token lank8s holds stops being accepted, as when it expires mid-pull.
    let expired = fault.expire_tokens();
    assert_eq!(expired.len(), 1, "{expired:?}");
    let (path, bytes) = blob(1);
    let (status, body) = fetch(path.clone()).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(digest_of(&body), digest_of(&bytes));
    assert_eq!(
        issuer.granted_requests(),
        2,
        "a 401 for a cached token fetches a new one"
    );
    let asked: Vec<_> = fault
        .requests()
        .into_iter()
        .filter(|r| r.path == path)
        .collect();
    let statuses: Vec<(u16, bool)> = asked
        .iter()
        .map(|r| {
            let old = r.bearer_token().is_some_and(|t| expired.contains(t));
            (r.status, old)
        })
        .collect();
    assert_eq!(
        statuses,
        [(401, true), (200, false)],
        "(status, carried the expired token) of the upstream blob requests"
    );

    // A one-off 401 to a valid token (a token service that rotated its keys) is
    // answered the same way.
    let (path, bytes) = blob(2);
    fault.set_times(&path, Behaviour::Status(401), 1);
    let (status, body) = fetch(path.clone()).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(body, bytes);
    assert_eq!(issuer.granted_requests(), 3);
    assert_eq!(fault.count_path("GET", &path), 2);
}
