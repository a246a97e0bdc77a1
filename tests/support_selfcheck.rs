//! Checks the test harness itself against the real registry, token service and skopeo, without lank8s, so harness bugs are not mistaken for server bugs.

mod support;

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use support::fault::{blob_path, manifest_path};
use support::*;

async fn pull_and_compare(src: &str, image: &TestImage, creds: Option<(&str, &str)>) {
    let out = tempfile::tempdir().expect("tempdir");
    let dest = out.path().join("image");
    skopeo_copy_all_with_creds(src, &dest, creds)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    compare_dir_with_image(&dest, image);
}

#[tokio::test(flavor = "multi_thread")]
async fn anonymous_registry_push_pull_and_access_log() {
    let mut registry = Registry::start().await;
    let images = [
        ("selfcheck/oci", TestImage::oci_index(1)),
        ("selfcheck/list", TestImage::docker_list(1)),
        ("selfcheck/schema2", TestImage::docker_schema2(1)),
    ];
    for (repo, image) in &images {
        image.push(&registry, repo, "v1").await;
    }
    for (repo, image) in &images {
        let by_tag = format!("docker://{}/{repo}:v1", registry.host());
        pull_and_compare(&by_tag, image, None).await;
        let by_digest = format!("docker://{}/{repo}@{}", registry.host(), image.top_digest());
        pull_and_compare(&by_digest, image, None).await;
    }
    registry.settle().await;
    let (repo, oci) = &images[0];
    let layer = oci.largest_blob_digest();
    assert_eq!(
        registry.count_requests("GET", &format!("/v2/{repo}/blobs/{layer}")),
        2,
        "one GET per pull of the layer; access log:\n{}",
        registry.access_log()
    );
    assert!(registry.count_requests("PUT", "/manifests/v1") == 3);

    registry.stop();
    let out = tempfile::tempdir().unwrap();
    let src = format!("docker://{}/{repo}:v1", registry.host());
    assert!(skopeo_copy_all(&src, &out.path().join("x")).await.is_err());
    registry.restart().await;
    pull_and_compare(&src, oci, None).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn token_auth_registry_with_credentials() {
    let issuer = TokenIssuer::start_with_credentials("alice", "s3cret").await;
    let registry = Registry::start_with_token_auth(&issuer).await;
    let image = TestImage::oci_index(7);
    image.push(&registry, "private/app", "v1").await;
    assert!(
        issuer
            .scopes()
            .contains(&"repository:private/app:pull,push".to_string())
    );

    let client = http_client();
    let resp = client
        .get(format!("{}/v2/private/app/manifests/v1", registry.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let challenge = resp.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(challenge.starts_with("Bearer realm="), "{challenge}");
    assert!(challenge.contains(&issuer.realm()), "{challenge}");

    let refused = client.get(issuer.realm()).send().await.unwrap();
    assert_eq!(refused.status(), 401, "issuer must demand credentials");

    let before = issuer.granted_requests();
    let src = format!("docker://{}/private/app:v1", registry.host());
    pull_and_compare(&src, &image, Some(("alice", "s3cret"))).await;
    assert!(issuer.granted_requests() > before);
    assert!(
        issuer
            .scopes()
            .contains(&"repository:private/app:pull".to_string())
    );

    let out = tempfile::tempdir().unwrap();
    let err = skopeo_copy_all_with_creds(&src, &out.path().join("x"), Some(("alice", "wrong")))
        .await
        .expect_err("wrong password must fail");
    assert!(err.contains("401") || err.contains("unauthorized"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn anonymous_token_issuer_and_token_lifetime() {
    let issuer = TokenIssuer::start().await;
    let registry = Registry::start_with_token_auth(&issuer).await;
    let image = TestImage::docker_schema2(3);
    image.push(&registry, "public/app", "v1").await;
    let src = format!("docker://{}/public/app:v1", registry.host());
    pull_and_compare(&src, &image, None).await;

    issuer.set_token_lifetime(Duration::from_secs(1));
    let token = issuer.issue(&["repository:public/app:pull"]);
    let url = format!("{}/v2/public/app/manifests/v1", registry.url());
    let accept = image.top_media_type().to_string();
    let get = |t: String| {
        let client = http_client();
        let url = url.clone();
        let accept = accept.clone();
        async move {
            let resp = client
                .get(url)
                .bearer_auth(t)
                .header("accept", accept)
                .send()
                .await;
            resp.unwrap().status().as_u16()
        }
    };
    assert_eq!(get(token.clone()).await, 200, "fresh token must work");
    assert_eq!(get(issuer.issue(&["repository:other/app:pull"])).await, 401);
    // distribution 2.8 allows 60 s of clock skew on exp; an expired token is only
    // refused once that has passed, which is too slow to check here.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        get(token).await,
        200,
        "expired-within-leeway token still accepted"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn dir_comparison_detects_tampering() {
    let registry = Registry::start().await;
    let image = TestImage::oci_index(5);
    image.push(&registry, "selfcheck/tamper", "v1").await;
    let out = tempfile::tempdir().unwrap();
    let dest = out.path().join("image");
    let src = format!("docker://{}/selfcheck/tamper:v1", registry.host());
    skopeo_copy_all(&src, &dest).await.unwrap();
    check_dir_against_image(&dest, &image).expect("untouched copy matches");
    let layer = image.largest_blob_digest().strip_prefix("sha256:").unwrap();
    let mut bytes = std::fs::read(dest.join(layer)).unwrap();
    bytes[0] ^= 1;
    std::fs::write(dest.join(layer), bytes).unwrap();
    let err = check_dir_against_image(&dest, &image).expect_err("tampered blob");
    assert!(err.contains(layer), "{err}");
    let other = TestImage::oci_index(6);
    assert!(check_dir_against_image(&dest, &other).is_err());
}

#[test]
fn images_are_deterministic_and_distinct() {
    assert_eq!(
        TestImage::oci_index(1).top_digest(),
        TestImage::oci_index(1).top_digest()
    );
    assert_ne!(
        TestImage::oci_index(1).top_digest(),
        TestImage::oci_index(2).top_digest()
    );
    assert_ne!(
        TestImage::docker_list(1).top_digest(),
        TestImage::oci_index(1).top_digest()
    );
    let large = TestImage::large(1, 3 * 1024 * 1024 + 7);
    assert_eq!(
        large.blob(large.largest_blob_digest()).unwrap().len(),
        3 * 1024 * 1024 + 7
    );
    for image in [TestImage::oci_index(9), TestImage::docker_list(9)] {
        assert_eq!(image.manifests.len(), 3);
        let top: serde_json::Value = serde_json::from_slice(image.top_bytes()).unwrap();
        assert_eq!(top["manifests"].as_array().unwrap().len(), 2);
    }
    assert_eq!(base64_encode(b"ab"), "YWI=");
    assert_eq!(base64_encode(b"abc"), "YWJj");
    assert_eq!(base64_encode(b"a"), "YQ==");
}

#[tokio::test(flavor = "multi_thread")]
async fn fault_upstream_serves_images_and_faults() {
    let fault = FaultUpstream::start().await;
    let image = TestImage::oci_index(11);
    fault.serve_image(&image, "f/app", "v1");
    pull_and_compare(&format!("docker://{}/f/app:v1", fault.host()), &image, None).await;

    let client = http_client();
    let layer = image.largest_blob_digest().to_string();
    let path = blob_path("f/app", &layer);
    let url = format!("{}{path}", fault.url());

    fault.set_times(&path, Behaviour::CutAfter(10), 1);
    let resp = client.get(&url).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let cut = resp
        .bytes()
        .await
        .expect_err("a cut body must fail to read completely");
    eprintln!("cut error: {cut:?}");
    // The cut connection must not be reused from the pool.
    let client = http_client();
    assert_eq!(
        client
            .get(&url)
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap(),
        image.blob(&layer).unwrap()
    );

    let ranged = client
        .get(&url)
        .header("range", "bytes=10-")
        .send()
        .await
        .unwrap();
    assert_eq!(ranged.status(), 206);
    assert_eq!(
        ranged.bytes().await.unwrap(),
        image.blob(&layer).unwrap().slice(10..)
    );

    fault.set(&path, Behaviour::TooManyRequests);
    let resp = client.get(&url).send().await.unwrap();
    assert_eq!(
        (
            resp.status().as_u16(),
            resp.headers()["retry-after"].to_str().unwrap()
        ),
        (429, "7")
    );
    fault.set(&path, Behaviour::WrongBytes);
    let wrong = client
        .get(&url)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_ne!(digest_of(&wrong), layer);
    fault.set(&path, Behaviour::Html);
    let resp = client.get(&url).send().await.unwrap();
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    fault.set(&path, Behaviour::SlowFirstByte(Duration::from_millis(300)));
    let start = std::time::Instant::now();
    client.get(&url).send().await.unwrap();
    assert!(start.elapsed() >= Duration::from_millis(300));
    fault.clear(&path);

    let cdn = FaultUpstream::start_on(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2))).await;
    fault.redirect_blob_via("f/app", &layer, &cdn);
    let following = reqwest::Client::builder().no_proxy().build().unwrap();
    // reqwest drops Authorization when a redirect changes host, as registry clients should.
    let resp = following.get(&url).bearer_auth("t").send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.bytes().await.unwrap(), image.blob(&layer).unwrap());
    assert_eq!(fault.count("GET", "/other/"), 1);
    let storage = cdn.requests().pop().unwrap();
    assert!(!storage.headers.contains_key("authorization"));
    let direct = format!("{}{}", cdn.url(), storage.path);
    let denied = client.get(&direct).bearer_auth("t").send().await.unwrap();
    assert_eq!(denied.status(), 403);

    let head = client
        .head(format!("{}{}", fault.url(), manifest_path("f/app", "v1")))
        .send()
        .await
        .unwrap();
    assert_eq!(
        head.headers()["docker-content-digest"].to_str().unwrap(),
        image.top_digest()
    );
    assert_eq!(
        head.headers()["content-length"].to_str().unwrap(),
        image.top_bytes().len().to_string()
    );
}
