//! Regional dispatch, probing targets: a target that lacks the blob, refuses connections or stays silent is skipped for the next one in the region's order (self or the store), a "no" is believed without a new probe, a "yes" is probed once for many clients, and a client's HEAD is always answered by lank8s. Choosing targets by network is in dispatch.rs.

mod dispatch_support;
mod support;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use dispatch_support::*;
use support::storage::{blob_key, object_path};
use support::*;

#[tokio::test(flavor = "multi_thread")]
async fn a_target_without_the_blob_is_skipped_and_its_no_believed() {
    let (registry, image) = registry_with_image(1200).await;
    let (config, layer) = config_and_layer(&image);
    // The CDN holds the config but not the layer.
    let cdn = start_cdn().await;
    cdn_put(&cdn, &image, &config);
    let dispatch = dispatch_tables(
        &[("cdn", &cdn_template(&cdn))],
        &[(&["192.0.2.0/24"], &["cdn", "self"])],
    );
    let lank8s = start_mirror(&registry, None, TRUST_TEST, &dispatch).await;
    let bytes = image.blob(&layer).unwrap();

    let probed = Instant::now();
    for client in [CDN_CLIENT, "192.0.2.11"] {
        let answer = get_blob(&lank8s, &layer, Some(client)).await;
        assert_eq!(answer.status, 200, "{client}: {:?}", answer.headers);
        assert_eq!(&answer.body, bytes, "{client}");
    }
    assert!(
        probed.elapsed() < Duration::from_secs(25),
        "too slow to show that a \"no\" is kept for 30 s"
    );
    // A blob the CDN holds still goes there.
    let answer = get_blob(&lank8s, &config, Some(CDN_CLIENT)).await;
    assert_eq!(answer.location(), cdn_url(&cdn, &config));

    let seen: Vec<(String, String, u16)> = (cdn.requests().into_iter())
        .map(|r| (r.method, r.path, r.status))
        .collect();
    assert_eq!(
        seen,
        [
            ("HEAD".to_string(), cdn_path(&layer), 404),
            ("HEAD".to_string(), cdn_path(&config), 200),
        ]
    );

    assert_eq!(
        blob_summaries(&lank8s, "GET", &layer, 2).await,
        [
            expect(200, "miss", "", CDN_CLIENT),
            expect(200, "hit", "", "192.0.2.11"),
        ]
    );
    assert_eq!(
        blob_summaries(&lank8s, "GET", &config, 1).await,
        [expect(307, "hit", "cdn", CDN_CLIENT)]
    );
}

/// A port on 127.0.0.2 where nothing listens.
async fn closed_port() -> u16 {
    let listener =
        tokio::net::TcpListener::bind(SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)), 0))
            .await
            .expect("bind 127.0.0.2:0");
    listener.local_addr().unwrap().port()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_target_that_is_down_or_silent_is_skipped_for_the_next() {
    let garage = Garage::start().await;
    let (registry, image) = registry_with_image(1300).await;
    let (_, layer) = config_and_layer(&image);
    let bytes = image.blob(&layer).unwrap();
    let down = format!("http://127.0.0.2:{}/cdn/{{key}}", closed_port().await);
    // Holds the layer but never answers a HEAD within lank8s's 2 s.
    let silent = start_cdn().await;
    cdn_put(&silent, &image, &layer);
    let slow = Behaviour::SlowFirstByte(Duration::from_secs(20));
    silent.set_for_method("HEAD", &cdn_path(&layer), slow);
    let dispatch = dispatch_tables(
        &[("cdn", &down), ("silent", &cdn_template(&silent))],
        &[
            (&["192.0.2.0/25"], &["cdn", "self"]),
            (&["192.0.2.128/25"], &["cdn", "store", "self"]),
            (&["198.51.100.0/24"], &["silent", "self"]),
        ],
    );
    let lank8s = start_mirror(&registry, Some(&garage), TRUST_TEST, &dispatch).await;

    let warm_up = get_blob(&lank8s, &layer, None).await;
    assert_eq!((warm_up.status, &warm_up.body), (200, bytes));
    wait_stored(&garage, &image, &layer).await;

    // Connection refused: the next target at once.
    let streamed = get_blob(&lank8s, &layer, Some(CDN_CLIENT)).await;
    assert_eq!((streamed.status, &streamed.body), (200, bytes));
    assert!(
        streamed.elapsed < Duration::from_millis(2500),
        "{:?}",
        streamed.elapsed
    );
    let to_store = get_blob(&lank8s, &layer, Some("192.0.2.200")).await;
    assert!(
        to_store.elapsed < Duration::from_millis(2500),
        "{:?}",
        to_store.elapsed
    );
    let location = to_store.location();
    let prefix = format!(
        "{}{}?",
        garage.endpoint(),
        object_path(&garage, &blob_key(&layer))
    );
    assert!(location.starts_with(&prefix), "{location} is not {prefix}…");
    assert_eq!(&follow(location).await, bytes);

    // No answer: the next target once the 2 s probe timeout has passed, and
    // for the next 30 s without asking again.
    let after_timeout = get_blob(&lank8s, &layer, Some(STORE_CLIENT)).await;
    assert_eq!((after_timeout.status, &after_timeout.body), (200, bytes));
    let waited = after_timeout.elapsed;
    assert!(
        waited >= Duration::from_secs(2) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
    let believed = get_blob(&lank8s, &layer, Some("198.51.100.11")).await;
    assert_eq!((believed.status, &believed.body), (200, bytes));
    assert!(
        believed.elapsed < Duration::from_millis(1500),
        "{:?}",
        believed.elapsed
    );
    assert_eq!(silent.requests().len(), 1, "{:?}", silent.requests());
    assert_eq!(silent.count_path("HEAD", &cdn_path(&layer)), 1);

    assert_eq!(
        blob_summaries(&lank8s, "GET", &layer, 5).await,
        [
            expect(200, "miss", "", "127.0.0.1"),
            expect(200, "hit", "", CDN_CLIENT),
            expect(307, "hit", "store", "192.0.2.200"),
            expect(200, "hit", "", STORE_CLIENT),
            expect(200, "hit", "", "198.51.100.11"),
        ]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_target_holding_the_blob_is_probed_once_and_head_is_never_redirected() {
    let (registry, image) = registry_with_image(1400).await;
    let (_, layer) = config_and_layer(&image);
    let bytes = image.blob(&layer).unwrap();
    let cdn = start_cdn().await;
    cdn_put(&cdn, &image, &layer);
    let dispatch = dispatch_tables(
        &[("cdn", &cdn_template(&cdn))],
        &[(&["192.0.2.0/24"], &["cdn", "self"])],
    );
    let lank8s = start_mirror(&registry, None, TRUST_TEST, &dispatch).await;

    for client in [CDN_CLIENT, "192.0.2.11"] {
        let answer = get_blob(&lank8s, &layer, Some(client)).await;
        assert_eq!(answer.location(), cdn_url(&cdn, &layer), "{client}");
        assert_eq!(&follow(answer.location()).await, bytes, "{client}");
    }
    let path = cdn_path(&layer);
    assert_eq!(
        (cdn.count_path("HEAD", &path), cdn.count_path("GET", &path)),
        (1, 2)
    );

    let head = send(
        "HEAD",
        &blob_url(&lank8s, &layer),
        &[("x-forwarded-for", CDN_CLIENT)],
    )
    .await;
    let length = bytes.len().to_string();
    assert_eq!(
        (
            head.status,
            head.header("content-length"),
            head.header("location")
        ),
        (200, Some(length.as_str()), None)
    );
    assert_eq!(head.header("docker-content-digest"), Some(layer.as_str()));
    assert_eq!(head.body.len(), 0);
    assert_eq!(cdn.requests().len(), 3, "{:?}", cdn.requests());
    registry.settle().await;
    assert_eq!(
        registry.count_requests("GET", "/blobs/"),
        0,
        "a redirect made lank8s fetch the blob"
    );

    assert_eq!(
        blob_summaries(&lank8s, "GET", &layer, 2).await,
        [
            expect(307, "hit", "cdn", CDN_CLIENT),
            expect(307, "hit", "cdn", "192.0.2.11"),
        ]
    );
    assert_eq!(
        blob_summaries(&lank8s, "HEAD", &layer, 1).await,
        [expect(200, "pass", "", CDN_CLIENT)]
    );
}
