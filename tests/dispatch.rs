//! Regional dispatch by client network: clients of two networks are redirected to a CDN and to presigned store URLs while others are streamed; the client address comes from X-Forwarded-For or Forwarded only when the peer is a trusted proxy; a cold blob streams from lank8s even for a redirect region, then goes to the store once stored. Probing of targets (absent blobs, dead or silent targets, cached answers, HEAD) is in dispatch_probes.rs.

mod dispatch_support;
mod support;

use dispatch_support::*;
use support::storage::{blob_key, object_path};
use support::*;

/// A presigned GET URL of `digest`'s object on `garage`.
fn assert_presigned(garage: &Garage, location: &str, digest: &str) {
    let prefix = format!(
        "{}{}?",
        garage.endpoint(),
        object_path(garage, &blob_key(digest))
    );
    assert!(location.starts_with(&prefix), "{location} is not {prefix}…");
    for param in ["X-Amz-Credential=", "X-Amz-Signature=", "X-Amz-Expires=600"] {
        assert!(location.contains(param), "{location} lacks {param}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn two_client_networks_get_the_cdn_and_the_store_and_others_are_streamed() {
    let garage = Garage::start().await;
    let (registry, image) = registry_with_image(1100).await;
    let cdn = start_cdn().await;
    for (digest, _) in &image.blobs {
        cdn_put(&cdn, &image, digest);
    }
    let dispatch = dispatch_tables(
        &[("cdn", &cdn_template(&cdn))],
        &[
            (&["192.0.2.0/24"], &["cdn", "self"]),
            (&["198.51.100.0/24"], &["store", "self"]),
        ],
    );
    let lank8s = start_mirror(&registry, Some(&garage), TRUST_TEST, &dispatch).await;

    // Warm-up: a pull from the test's own address, which no region names,
    // streams every blob (no probe) and leaves it in the store.
    let out = tempfile::tempdir().unwrap();
    let dest = out.path().join("image");
    let src = format!("docker://{}/{REPO}:v1", lank8s.host());
    if let Err(e) = skopeo_copy_all(&src, &dest).await {
        panic!("warm-up pull: {e}\n{}", lank8s.log());
    }
    compare_dir_with_image(&dest, &image);
    for (digest, _) in &image.blobs {
        wait_stored(&garage, &image, digest).await;
    }
    assert_eq!(
        cdn.requests().len(),
        0,
        "the CDN was asked during the warm-up"
    );

    for (digest, bytes) in &image.blobs {
        let to_cdn = get_blob(&lank8s, digest, Some(CDN_CLIENT)).await;
        assert_eq!(to_cdn.location(), cdn_url(&cdn, digest));
        assert_eq!(&follow(to_cdn.location()).await, bytes);

        let to_store = get_blob(&lank8s, digest, Some(STORE_CLIENT)).await;
        assert_presigned(&garage, to_store.location(), digest);
        assert_eq!(&follow(to_store.location()).await, bytes);

        let streamed = get_blob(&lank8s, digest, Some(OTHER_CLIENT)).await;
        let length = bytes.len().to_string();
        assert_eq!(
            (streamed.status, streamed.header("content-length")),
            (200, Some(length.as_str()))
        );
        assert_eq!(&streamed.body, bytes);

        // One probe, and the one GET the test made by following the redirect.
        let path = cdn_path(digest);
        let cdn_calls = (cdn.count_path("HEAD", &path), cdn.count_path("GET", &path));
        assert_eq!(cdn_calls, (1, 1), "CDN requests for {digest}");
    }
    assert_eq!(cdn.requests().len(), 2 * image.blobs.len());
    registry.settle().await;
    assert_eq!(
        registry.count_requests("GET", "/blobs/"),
        image.blobs.len(),
        "each blob is fetched upstream once, by the warm-up"
    );

    for (digest, _) in &image.blobs {
        assert_eq!(
            blob_summaries(&lank8s, "GET", digest, 4).await,
            [
                expect(200, "miss", "", "127.0.0.1"),
                expect(307, "hit", "cdn", CDN_CLIENT),
                expect(307, "hit", "store", STORE_CLIENT),
                expect(200, "hit", "", OTHER_CLIENT),
            ],
            "log lines for {digest}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn forwarded_addresses_count_only_when_the_peer_is_a_trusted_proxy() {
    let (registry, image) = registry_with_image(1500).await;
    let cdn = start_cdn().await;
    let (_, layer) = config_and_layer(&image);
    cdn_put(&cdn, &image, &layer);
    let bytes = image.blob(&layer).unwrap();
    let dispatch = dispatch_tables(
        &[("cdn", &cdn_template(&cdn))],
        &[(&["192.0.2.0/24"], &["cdn", "self"])],
    );

    // The test (127.0.0.1) is no trusted proxy here: what it claims is ignored.
    let untrusting = start_mirror(
        &registry,
        None,
        "trusted_proxies = [\"10.9.9.9\"]",
        &dispatch,
    )
    .await;
    let url = blob_url(&untrusting, &layer);
    for header in [
        ("x-forwarded-for", CDN_CLIENT),
        ("forwarded", "for=192.0.2.10"),
    ] {
        let answer = send("GET", &url, &[header]).await;
        assert_eq!(answer.status, 200, "{header:?}: {:?}", answer.headers);
        assert_eq!(&answer.body, bytes, "{header:?}");
    }
    assert_eq!(
        cdn.requests().len(),
        0,
        "an untrusted claim made lank8s probe"
    );

    // Trusted: X-Forwarded-For names the client; a Forwarded header the
    // client wrote itself, which such a proxy passes through, does not.
    let trusting = start_mirror(&registry, None, TRUST_TEST, &dispatch).await;
    let url = blob_url(&trusting, &layer);
    let answer = send("GET", &url, &[("x-forwarded-for", CDN_CLIENT)]).await;
    assert_eq!(answer.location(), cdn_url(&cdn, &layer));
    let answer = send(
        "GET",
        &url,
        &[
            ("forwarded", "for=192.0.2.11"),
            ("x-forwarded-for", OTHER_CLIENT),
        ],
    )
    .await;
    assert_eq!(answer.status, 200, "{:?}", answer.headers);
    // An address the client wrote left of the one the proxy recorded is never
    // reached: the client is 203.0.113.1, which no region names.
    let chain = format!("192.0.2.12, {OTHER_CLIENT}");
    let answer = send("GET", &url, &[("x-forwarded-for", &chain)]).await;
    assert_eq!(answer.status, 200, "{:?}", answer.headers);
    assert_eq!(&answer.body, bytes);
    assert_eq!(cdn.count_path("HEAD", &cdn_path(&layer)), 1);
    assert_eq!(cdn.requests().len(), 1);

    assert_eq!(
        blob_summaries(&untrusting, "GET", &layer, 2).await,
        [
            expect(200, "miss", "", "127.0.0.1"),
            expect(200, "hit", "", "127.0.0.1"),
        ]
    );
    assert_eq!(
        blob_summaries(&trusting, "GET", &layer, 3).await,
        [
            expect(307, "hit", "cdn", CDN_CLIENT),
            expect(200, "miss", "", OTHER_CLIENT),
            expect(200, "hit", "", OTHER_CLIENT),
        ]
    );

    // Proxies that write Forwarded instead are named with forwarded_header.
    let top_level = format!("{TRUST_TEST}\nforwarded_header = \"forwarded\"");
    let forwarding = start_mirror(&registry, None, &top_level, &dispatch).await;
    let url = blob_url(&forwarding, &layer);
    let answer = send("GET", &url, &[("forwarded", "for=192.0.2.11")]).await;
    assert_eq!(answer.location(), cdn_url(&cdn, &layer));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cold_blob_streams_to_a_redirect_region_then_goes_to_the_store() {
    let garage = Garage::start().await;
    let (registry, image) = registry_with_image(1600).await;
    // The CDN holds nothing.
    let cdn = start_cdn().await;
    let dispatch = dispatch_tables(
        &[("cdn", &cdn_template(&cdn))],
        &[(&["192.0.2.0/24"], &["cdn", "store", "self"])],
    );
    let lank8s = start_mirror(&registry, Some(&garage), TRUST_TEST, &dispatch).await;
    let (_, layer) = config_and_layer(&image);
    let bytes = image.blob(&layer).unwrap();

    let cold = get_blob(&lank8s, &layer, Some(CDN_CLIENT)).await;
    let length = bytes.len().to_string();
    assert_eq!(
        (cold.status, cold.header("content-length")),
        (200, Some(length.as_str())),
        "{:?}",
        cold.headers
    );
    assert_eq!(&cold.body, bytes);
    assert_eq!(cdn.count_path("HEAD", &cdn_path(&layer)), 1);

    // Once stored, the same client goes to the store; the CDN's "no" is still
    // believed, so it is not asked again.
    wait_stored(&garage, &image, &layer).await;
    let warm = get_blob(&lank8s, &layer, Some(CDN_CLIENT)).await;
    assert_presigned(&garage, warm.location(), &layer);
    assert_eq!(&follow(warm.location()).await, bytes);
    assert_eq!(cdn.requests().len(), 1, "{:?}", cdn.requests());
    registry.settle().await;
    assert_eq!(
        registry.count_requests("GET", &format!("/blobs/{layer}")),
        1
    );

    assert_eq!(
        blob_summaries(&lank8s, "GET", &layer, 2).await,
        [
            expect(200, "miss", "", CDN_CLIENT),
            expect(307, "hit", "store", CDN_CLIENT),
        ]
    );
}
