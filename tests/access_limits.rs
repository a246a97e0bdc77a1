//! Fair-use limits per tier and client network (requests per minute, concurrent downloads, bytes per second and per day) and repository allow/deny lists, on a free route in front of a real registry.

mod support;

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use support::access::*;
use support::*;

const KIB: usize = 1024;

/// A blob GET read chunk by chunk, timed.
struct Timed {
    status: u16,
    /// From sending the request to having the status and headers.
    headers_after: Duration,
    body: Vec<u8>,
    /// From the headers to the end of the body.
    body_took: Duration,
    /// The longest wait for the next chunk of the body.
    longest_gap: Duration,
}

async fn timed_get(client: &reqwest::Client, url: &str) -> Timed {
    let sent = Instant::now();
    let response = client.get(url).send().await.expect("request to lank8s");
    let status = response.status().as_u16();
    let headers_at = Instant::now();
    let mut stream = response.bytes_stream();
    let mut body = Vec::new();
    let mut last = headers_at;
    let mut longest_gap = Duration::ZERO;
    while let Some(chunk) = stream.next().await {
        body.extend_from_slice(&chunk.expect("body chunk"));
        longest_gap = longest_gap.max(last.elapsed());
        last = Instant::now();
    }
    Timed {
        status,
        headers_after: headers_at - sent,
        body,
        body_took: last - headers_at,
        longest_gap,
    }
}

/// Asserts a 429 whose message starts with `limit` and that names `network`.
fn assert_limited(answer: &Reply, limit: &str, network: &str) {
    let what = answer.describe();
    assert_eq!(answer.status, 429, "{what}");
    let (code, message) = answer.error();
    assert_eq!(code, "TOOMANYREQUESTS", "{what}");
    assert!(message.starts_with(limit), "{what}");
    assert!(message.contains(&format!("reached by {network}")), "{what}");
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_per_minute_holds_per_network_and_tier() {
    let registry = Registry::start().await;
    let image = TestImage::docker_schema2(7101);
    image.push(&registry, REPO, TAG).await;
    let limits = "[access.limits.anonymous]\nrequests_per_minute = 5";
    let lank8s = free_mirror(&registry, "", limits).await;
    add_account(&lank8s, "patron", "patron-password", &[]);
    let here = client_at(loopback(1));
    let path = manifest_path(REPO, TAG);

    for n in 1..=5 {
        let answer = get(&here, &lank8s, &path, None).await;
        assert_eq!(answer.status, 200, "request {n}: {}", answer.describe());
        assert_eq!(&answer.body, image.top_bytes());
    }
    let answer = get(&here, &lank8s, &path, None).await;
    assert_limited(
        &answer,
        "requests_per_minute limit of 5 for anonymous clients reached by 127.0.0.1/32; retry in ",
        "127.0.0.1/32",
    );
    let retry = answer.retry_after();
    assert!(
        (1..=12).contains(&retry),
        "Retry-After {retry} (one request per 12 s)"
    );

    // Another client address has its own allowance.
    let elsewhere = client_at(loopback(2));
    for n in 1..=5 {
        let answer = get(&elsewhere, &lank8s, &path, None).await;
        assert_eq!(
            answer.status,
            200,
            "127.0.0.2 request {n}: {}",
            answer.describe()
        );
    }

    // A sponsor's token puts the same address in the sponsor tier, which
    // has no limit configured.
    let token = login(&here, &lank8s, "patron", "patron-password", REPO).await;
    for n in 1..=8 {
        let mark = lank8s.request_lines().len();
        let answer = get(&here, &lank8s, &path, Some(&token)).await;
        assert_eq!(
            answer.status,
            200,
            "sponsor request {n}: {}",
            answer.describe()
        );
        let line = line_after(&lank8s, mark, &path).await;
        assert_eq!(line["account"], "patron", "{line}");
    }
}

/// The README: limits hold "per tier and client network". A sponsor who
/// logs in from an address that anonymous pulls have used up still has the
/// sponsor tier's own allowance.
#[tokio::test(flavor = "multi_thread")]
async fn each_tier_has_its_own_allowance_on_one_network() {
    let registry = Registry::start().await;
    let image = TestImage::docker_schema2(7104);
    image.push(&registry, REPO, TAG).await;
    let limits = "[access.limits.anonymous]\nrequests_per_minute = 5\n\
                  [access.limits.sponsor]\nrequests_per_minute = 30";
    let lank8s = free_mirror(&registry, "", limits).await;
    add_account(&lank8s, "patron", "patron-password", &[]);
    let here = client_at(loopback(1));
    let path = manifest_path(REPO, TAG);
    for n in 1..=5 {
        let answer = get(&here, &lank8s, &path, None).await;
        assert_eq!(
            answer.status,
            200,
            "anonymous request {n}: {}",
            answer.describe()
        );
    }
    let answer = get(&here, &lank8s, &path, None).await;
    assert_limited(
        &answer,
        "requests_per_minute limit of 5 for anonymous clients",
        "127.0.0.1/32",
    );

    let token = login(&here, &lank8s, "patron", "patron-password", REPO).await;
    for n in 1..=5 {
        let answer = get(&here, &lank8s, &path, Some(&token)).await;
        assert_eq!(
            answer.status,
            200,
            "sponsor request {n} of the sponsor tier's 30 a minute: {}",
            answer.describe()
        );
        assert_eq!(&answer.body, image.top_bytes());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_downloads_hold_while_a_download_runs() {
    let registry = Registry::start().await;
    let image = TestImage::large(7102, 256 * KIB);
    image.push(&registry, REPO, TAG).await;
    let limits =
        "[access.limits.anonymous]\nconcurrent_downloads = 1\nbytes_per_second = \"64 KiB\"";
    let lank8s = free_mirror(&registry, "", limits).await;
    let layer = image.largest_blob_digest().to_owned();
    let (config, config_bytes) = image
        .blobs
        .iter()
        .find(|(d, _)| *d != layer)
        .cloned()
        .expect("a config blob");
    let here = client_at(loopback(1));
    let layer_url = format!("{}{}", lank8s.url(), blob_path(REPO, &layer));
    let config_path = blob_path(REPO, &config);

    // The first download holds the one slot for about 4 s; lank8s takes the
    // slot before it sends the headers.
    let response = here.get(&layer_url).send().await.expect("first download");
    assert_eq!(response.status(), 200);
    let first = tokio::spawn(async move {
        let mut body = Vec::new();
        let mut stream = response.bytes_stream();
        while let Some(chunk) = stream.next().await {
            body.extend_from_slice(&chunk.expect("body chunk"));
        }
        body
    });
    let second = get(&here, &lank8s, &config_path, None).await;
    assert_limited(
        &second,
        "concurrent_downloads limit of 1 for anonymous clients reached by 127.0.0.1/32",
        "127.0.0.1/32",
    );
    assert_eq!(second.retry_after(), 1);
    assert!(
        !first.is_finished(),
        "the first download ended too soon for this test"
    );
    // Another network has its own slot.
    let other = get(&client_at(loopback(2)), &lank8s, &config_path, None).await;
    assert_eq!(other.status, 200, "{}", other.describe());
    assert_eq!(other.body, config_bytes);

    let first = first.await.expect("first download task");
    assert_eq!(digest_of(&first), layer, "the first download's bytes");
    // Once it has ended, the slot is free again (released just after).
    let after = eventually(Duration::from_secs(2), || {
        let (client, lank8s, path) = (here.clone(), &lank8s, &config_path);
        async move {
            let answer = get(&client, lank8s, path, None).await;
            (answer.status == 200).then_some(answer)
        }
    })
    .await
    .expect("the slot was not released within 2 s of the download's end");
    assert_eq!(after.body, config_bytes);

    // A client that gives up mid-download frees its slot too. (The slot of
    // the download just made is released asynchronously, as above.)
    let response = eventually(Duration::from_secs(2), || {
        let request = here.get(&layer_url).send();
        async move {
            let response = request.await.expect("abandoned download");
            (response.status() == 200).then_some(response)
        }
    })
    .await
    .expect("the slot was not released within 2 s of the download's end");
    let held = get(&here, &lank8s, &config_path, None).await;
    assert_eq!(
        held.status,
        429,
        "control: the slot is taken: {}",
        held.describe()
    );
    drop(response);
    let freed = eventually(Duration::from_secs(2), || {
        let (client, lank8s, path) = (here.clone(), &lank8s, &config_path);
        async move {
            let answer = get(&client, lank8s, path, None).await;
            (answer.status == 200).then_some(answer)
        }
    })
    .await
    .expect("an abandoned download kept its slot for more than 2 s");
    assert_eq!(freed.body, config_bytes);
}

/// A client that reads each blob to its end before asking for the next never
/// has two downloads running, so `concurrent_downloads = 1` must never
/// refuse it.
#[tokio::test(flavor = "multi_thread")]
async fn sequential_downloads_are_never_refused_as_concurrent() {
    let registry = Registry::start().await;
    let image = TestImage::large(7105, 64 * KIB);
    image.push(&registry, REPO, TAG).await;
    let limits = "[access.limits.anonymous]\nconcurrent_downloads = 1";
    let lank8s = free_mirror(&registry, "", limits).await;
    let here = client_at(loopback(1));
    let mut refused = Vec::new();
    for (n, (digest, bytes)) in image.blobs.iter().cycle().take(30).enumerate() {
        let answer = get(&here, &lank8s, &blob_path(REPO, digest), None).await;
        match answer.status {
            200 => assert_eq!(&answer.body, bytes, "download {n}"),
            _ => refused.push(format!("download {n}: {}", answer.describe())),
        }
    }
    assert_eq!(
        refused,
        Vec::<String>::new(),
        "30 downloads one after another, each read to its end"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn bytes_per_second_paces_the_body_steadily() {
    let registry = Registry::start().await;
    let size = 512 * KIB;
    let image = TestImage::large(7103, size);
    image.push(&registry, REPO, TAG).await;
    let rate = 128 * KIB;
    let limits = "[access.limits.anonymous]\nbytes_per_second = \"128 KiB\"";
    let lank8s = free_mirror(&registry, "", limits).await;
    let layer = image.largest_blob_digest().to_owned();
    let url = format!("{}{}", lank8s.url(), blob_path(REPO, &layer));
    let client = client_at(loopback(1));
    let expected = Duration::from_secs_f64(size as f64 / rate as f64);

    // Cold (filled from upstream as it streams), then from the cache.
    for pass in ["cold", "cached"] {
        let got = timed_get(&client, &url).await;
        assert_eq!(got.status, 200, "{pass}");
        assert!(
            got.headers_after < Duration::from_secs(1),
            "{pass}: headers after {:?}",
            got.headers_after
        );
        assert_eq!(got.body.len(), size, "{pass}");
        assert_eq!(digest_of(&got.body), layer, "{pass}: bytes");
        assert!(
            got.body_took >= expected.mul_f64(0.8) && got.body_took <= expected.mul_f64(1.5),
            "{pass}: {size} bytes at {rate}/s took {:?}, expected about {expected:?}",
            got.body_took
        );
        assert!(
            got.longest_gap <= Duration::from_secs(1),
            "{pass}: progress stalled for {:?}",
            got.longest_gap
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn bytes_per_day_refuses_new_downloads_once_spent() {
    let registry = Registry::start().await;
    let layer_size = 400 * KIB;
    let images: Vec<TestImage> = (0..3)
        .map(|i| TestImage::large(7110 + i, layer_size))
        .collect();
    for (i, image) in images.iter().enumerate() {
        image.push(&registry, REPO, &format!("day-{i}")).await;
    }
    let limits = "[access.limits.anonymous]\nbytes_per_day = \"1 MiB\"";
    let lank8s = free_mirror(&registry, "", limits).await;
    let here = client_at(loopback(1));

    // 400 KiB, 800 KiB, then one that starts under 1 MiB and ends over it:
    // it is not cut.
    for (i, image) in images.iter().enumerate() {
        let layer = image.largest_blob_digest();
        let answer = get(&here, &lank8s, &blob_path(REPO, layer), None).await;
        assert_eq!(answer.status, 200, "layer {i}: {}", answer.describe());
        assert_eq!(answer.body.len(), layer_size, "layer {i}");
        assert_eq!(digest_of(&answer.body), layer, "layer {i}");
    }
    // The counter is added to as each download ends; the next start is refused.
    let (config, config_bytes) = images[0]
        .blobs
        .iter()
        .find(|(d, _)| d != images[0].largest_blob_digest())
        .cloned()
        .expect("a config blob");
    let config_path = blob_path(REPO, &config);
    let refused = eventually(Duration::from_secs(2), || {
        let (client, lank8s, path) = (here.clone(), &lank8s, &config_path);
        async move {
            let answer = get(&client, lank8s, path, None).await;
            (answer.status != 200).then_some(answer)
        }
    })
    .await
    .expect("downloads still start after 1.2 MiB of a 1 MiB day");
    assert_limited(
        &refused,
        "bytes_per_day limit of 1.0 MiB for anonymous clients reached by 127.0.0.1/32; it resets at 00:00 UTC, in ",
        "127.0.0.1/32",
    );
    let retry = refused.retry_after();
    assert!((1..=86_400).contains(&retry), "Retry-After {retry}");

    // Manifests are not blob downloads; another network has its own day.
    for (i, image) in images.iter().enumerate() {
        let answer = get(
            &here,
            &lank8s,
            &manifest_path(REPO, &format!("day-{i}")),
            None,
        )
        .await;
        assert_eq!(answer.status, 200, "manifest {i}: {}", answer.describe());
        assert_eq!(&answer.body, image.top_bytes());
    }
    let other = get(&client_at(loopback(2)), &lank8s, &config_path, None).await;
    assert_eq!(other.status, 200, "{}", other.describe());
    assert_eq!(other.body, config_bytes);
}

/// As for requests: a network's anonymous day is its own, not what a
/// sponsor of the sponsor tier downloaded from the same address.
#[tokio::test(flavor = "multi_thread")]
async fn a_sponsors_bytes_do_not_spend_the_anonymous_day() {
    let registry = Registry::start().await;
    let layer_size = 400 * KIB;
    let images: Vec<TestImage> = (0..3)
        .map(|i| TestImage::large(7115 + i, layer_size))
        .collect();
    for (i, image) in images.iter().enumerate() {
        image.push(&registry, REPO, &format!("day-{i}")).await;
    }
    let limits = "[access.limits.anonymous]\nbytes_per_day = \"1 MiB\"\n\
                  [access.limits.sponsor]\nbytes_per_day = \"100 MiB\"";
    let lank8s = free_mirror(&registry, "", limits).await;
    add_account(&lank8s, "patron", "patron-password", &[]);
    let here = client_at(loopback(1));
    let token = login(&here, &lank8s, "patron", "patron-password", REPO).await;
    for (i, image) in images.iter().enumerate() {
        let layer = image.largest_blob_digest();
        let answer = get(&here, &lank8s, &blob_path(REPO, layer), Some(&token)).await;
        assert_eq!(
            answer.status,
            200,
            "sponsor layer {i}: {}",
            answer.describe()
        );
        assert_eq!(digest_of(&answer.body), layer, "sponsor layer {i}");
    }
    // The sponsor's pulls granted the address; revoke that so the next
    // requests are anonymous ones.
    let out = cli_ok(
        lank8s.config_path(),
        &["grants", "revoke", "127.0.0.1"],
        None,
    );
    assert!(out.contains("revoked the grant of 127.0.0.1/32"), "{out}");
    let (config, config_bytes) = images[0]
        .blobs
        .iter()
        .find(|(d, _)| d != images[0].largest_blob_digest())
        .cloned()
        .expect("a config blob");
    let path = blob_path(REPO, &config);
    let anonymous = eventually(Duration::from_secs(5), || {
        let (client, lank8s, path) = (here.clone(), &lank8s, &path);
        async move {
            let mark = lank8s.request_lines().len();
            let answer = get(&client, lank8s, path, None).await;
            let line = line_after(lank8s, mark, path).await;
            (line["account"] == "-").then_some(answer)
        }
    })
    .await
    .expect("requests from 127.0.0.1 were still granted 5 s after the revoke");
    assert_eq!(
        anonymous.status,
        200,
        "the first anonymous download of the day: {}",
        anonymous.describe()
    );
    assert_eq!(anonymous.body, config_bytes);
}

#[tokio::test(flavor = "multi_thread")]
async fn allow_and_deny_lists_refuse_before_asking_upstream() {
    let registry = Registry::start().await;
    let repos = ["allowed/app", "other/app", "allowed/secret"];
    let images: Vec<TestImage> = (0..3)
        .map(|i| TestImage::docker_schema2(7120 + i))
        .collect();
    for (repo, image) in repos.iter().zip(&images) {
        image.push(&registry, repo, TAG).await;
    }
    let keys = "allow = [\"allowed/**\"]\ndeny = [\"allowed/secret\"]";
    let lank8s = free_mirror(&registry, keys, "").await;
    let client = client_at(loopback(1));
    registry.settle().await;
    let before = registry.access_entries().len();

    let allow_list = "registry.k8s.io/other/app is not served by this mirror: \
                      only the repositories on its allow list for registry.k8s.io are";
    let deny_list = "registry.k8s.io/allowed/secret is not served by this mirror: \
                     it is on the deny list for registry.k8s.io";
    for (repo, image, message) in [
        ("other/app", &images[1], allow_list),
        ("allowed/secret", &images[2], deny_list),
    ] {
        let paths = [
            manifest_path(repo, TAG),
            manifest_path(repo, image.top_digest()),
            blob_path(repo, image.largest_blob_digest()),
            format!("/v2/{repo}/tags/list"),
        ];
        for path in paths {
            let answer = get(&client, &lank8s, &path, None).await;
            assert_eq!(answer.status, 403, "{path}: {}", answer.describe());
            assert_eq!(answer.error(), ("DENIED".into(), message.into()), "{path}");
        }
    }
    // The allowed repository pulls.
    let manifest = get(&client, &lank8s, &manifest_path("allowed/app", TAG), None).await;
    assert_eq!(manifest.status, 200, "{}", manifest.describe());
    assert_eq!(&manifest.body, images[0].top_bytes());
    let digest = images[0].largest_blob_digest();
    let blob = get(&client, &lank8s, &blob_path("allowed/app", digest), None).await;
    assert_eq!(blob.status, 200, "{}", blob.describe());
    assert_eq!(digest_of(&blob.body), digest);

    registry.settle().await;
    let asked: Vec<String> = registry.access_entries()[before..]
        .iter()
        .map(|e| format!("{} {}", e.method, e.path))
        .collect();
    assert!(
        asked.iter().any(|a| a.contains("/v2/allowed/app/")),
        "control: the allowed pull reached upstream: {asked:?}"
    );
    let denied: Vec<&String> = asked
        .iter()
        .filter(|a| a.contains("/v2/other/") || a.contains("/v2/allowed/secret/"))
        .collect();
    assert_eq!(
        denied,
        Vec::<&String>::new(),
        "upstream was asked for denied repositories"
    );
}
