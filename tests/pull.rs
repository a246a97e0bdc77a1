//! End-to-end proof of the main behaviour: every kind of image, pulled through lank8s from an anonymous and a token-auth upstream, by tag and by digest, arrives byte-identical, and warm pulls fetch no blobs upstream.

mod support;

use support::*;

/// Over 100 MiB, and not a multiple of any likely chunk size.
const LARGE_LAYER: usize = 105 * 1024 * 1024 + 123;

type MakeImage = fn(u64) -> TestImage;

struct Case {
    repo: String,
    tag: &'static str,
    image: TestImage,
    /// Which reference form makes the cold pull; the other is only ever pulled warm.
    digest_first: bool,
}

/// Small images in both orders, so that both a cold tag pull and a cold digest pull
/// happen for every manifest kind; the large image once, in the order given.
fn cases(seed: u64, large_digest_first: bool) -> Vec<Case> {
    let mut cases = Vec::new();
    let kinds: [(&str, MakeImage); 3] = [
        ("oci-index", TestImage::oci_index),
        ("docker-list", TestImage::docker_list),
        ("docker-schema2", TestImage::docker_schema2),
    ];
    for (i, (name, make)) in kinds.into_iter().enumerate() {
        for digest_first in [false, true] {
            let suffix = if digest_first { "-by-digest" } else { "" };
            cases.push(Case {
                repo: format!("e2e/{name}{suffix}"),
                tag: "v1",
                image: make(seed + 2 * i as u64 + u64::from(digest_first)),
                digest_first,
            });
        }
    }
    cases.push(Case {
        repo: "e2e/large".into(),
        tag: "v1",
        image: TestImage::large(seed + 10, LARGE_LAYER),
        digest_first: large_digest_first,
    });
    cases
}

struct Route<'a> {
    registry: &'a Registry,
    issuer: Option<&'a TokenIssuer>,
    /// Path prefix that selects the upstream in lank8s ("" for the default upstream).
    prefix: &'static str,
}

impl Route<'_> {
    fn by_tag(&self, lank8s: &Lank8s, case: &Case) -> String {
        format!(
            "docker://{}/{}{}:{}",
            lank8s.host(),
            self.prefix,
            case.repo,
            case.tag
        )
    }

    fn by_digest(&self, lank8s: &Lank8s, case: &Case) -> String {
        format!(
            "docker://{}/{}{}@{}",
            lank8s.host(),
            self.prefix,
            case.repo,
            case.image.top_digest()
        )
    }
}

async fn pull_and_compare(src: &str, image: &TestImage, diagnostics: impl Fn() -> String) {
    let out = tempfile::tempdir().expect("tempdir");
    let dest = out.path().join("image");
    if let Err(e) = skopeo_copy_all(src, &dest).await {
        panic!("{e}\n{}", diagnostics());
    }
    compare_dir_with_image(&dest, image);
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// What the server, the upstream and its token service last saw, for failure messages.
fn diagnostics(lank8s: &Lank8s, route: &Route<'_>) -> String {
    let mut out = format!(
        "lank8s log (last 30 lines):\n{}\nupstream {} access log (last 15 lines):\n{}",
        tail(&lank8s.log(), 30),
        route.registry.url(),
        tail(&route.registry.access_log(), 15)
    );
    if let Some(issuer) = route.issuer {
        let requests = issuer.requests();
        let last = &requests[requests.len().saturating_sub(5)..];
        out.push_str(&format!(
            "\ntoken requests (last 5 of {}): {last:#?}",
            requests.len()
        ));
    }
    out
}

/// Upstream blob GETs made while `pull` ran.
async fn upstream_blob_gets_during(
    registry: &Registry,
    pull: impl Future<Output = ()>,
) -> Vec<AccessEntry> {
    registry.settle().await;
    let before = registry.access_entries().len();
    pull.await;
    registry.settle().await;
    registry.access_entries()[before..]
        .iter()
        .filter(|e| e.method == "GET" && e.path.contains("/blobs/"))
        .cloned()
        .collect()
}

async fn pull_cold_then_warm(lank8s: &Lank8s, route: &Route<'_>, case: &Case) {
    let (first, second) = if case.digest_first {
        (route.by_digest(lank8s, case), route.by_tag(lank8s, case))
    } else {
        (route.by_tag(lank8s, case), route.by_digest(lank8s, case))
    };
    let cold = upstream_blob_gets_during(
        route.registry,
        pull_and_compare(&first, &case.image, || diagnostics(lank8s, route)),
    )
    .await;
    assert!(
        !cold.is_empty(),
        "cold pull of {first} fetched no blobs upstream; is it routed to {}?",
        route.registry.url()
    );
    for warm in [&first, &second, &first] {
        let fetched = upstream_blob_gets_during(
            route.registry,
            pull_and_compare(warm, &case.image, || diagnostics(lank8s, route)),
        )
        .await;
        assert!(
            fetched.is_empty(),
            "warm pull of {warm} fetched blobs upstream: {fetched:#?}\n{}",
            diagnostics(lank8s, route)
        );
    }
}

fn lank8s_config(anonymous: &Registry, authed: &Registry) -> String {
    format!(
        r#"
[upstreams."registry.k8s.io"]
url = "{}"

[upstreams."auth.test"]
url = "{}"
username = "puller"
password = "pull-secret"
# The token service listens on another port, so it is another origin.
credential_hosts = ["127.0.0.1"]
"#,
        anonymous.url(),
        authed.url()
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn pulls_are_byte_identical_and_warm_pulls_skip_upstream_blobs() {
    let issuer = TokenIssuer::start_with_credentials("puller", "pull-secret").await;
    let mut anonymous = Registry::start().await;
    let authed = Registry::start_with_token_auth(&issuer).await;

    // Distinct content per upstream, so that a cache shared across upstreams cannot
    // turn the second upstream's cold pulls into warm ones.
    let anonymous_cases = cases(100, false);
    let authed_cases = cases(200, true);
    for case in &anonymous_cases {
        case.image.push(&anonymous, &case.repo, case.tag).await;
    }
    for case in &authed_cases {
        case.image.push(&authed, &case.repo, case.tag).await;
    }

    let mut lank8s = Lank8s::start(&lank8s_config(&anonymous, &authed)).await;
    let token_requests_before = issuer.granted_requests();

    let default_route = Route {
        registry: &anonymous,
        issuer: None,
        prefix: "",
    };
    for case in &anonymous_cases {
        pull_cold_then_warm(&lank8s, &default_route, case).await;
    }
    let auth_route = Route {
        registry: &authed,
        issuer: Some(&issuer),
        prefix: "auth.test/",
    };
    for case in &authed_cases {
        pull_cold_then_warm(&lank8s, &auth_route, case).await;
    }
    assert!(
        issuer.granted_requests() > token_requests_before,
        "lank8s never obtained a token for the auth upstream"
    );
    assert!(
        issuer
            .scopes()
            .iter()
            .any(|s| s == "repository:e2e/large:pull"),
        "lank8s should ask for a pull scope on the upstream repository name; asked: {:?}",
        issuer.scopes()
    );

    // Content addressed by digest is immutable, so the cache must serve it without the upstream.
    anonymous.stop();
    for case in &anonymous_cases {
        let src = format!(
            "docker://{}/{}@{}",
            lank8s.host(),
            case.repo,
            case.image.top_digest()
        );
        pull_and_compare(&src, &case.image, || tail(&lank8s.log(), 30)).await;
    }

    // The cache is on disk: a restarted server still serves it with the upstream down.
    lank8s.restart().await;
    let case = &anonymous_cases[0];
    let src = format!(
        "docker://{}/{}@{}",
        lank8s.host(),
        case.repo,
        case.image.top_digest()
    );
    pull_and_compare(&src, &case.image, || tail(&lank8s.log(), 30)).await;
    assert_request_log_shape(&lank8s, &case.repo);
}

/// The per-request log lines carry the documented fields.
fn assert_request_log_shape(lank8s: &Lank8s, repo: &str) {
    let lines = lank8s.request_lines();
    let blob_line = lines
        .iter()
        .rev()
        .find(|l| l["path"].as_str().is_some_and(|p| p.contains("/blobs/")))
        .unwrap_or_else(|| {
            panic!(
                "no request log line for a blob\n{}",
                tail(&lank8s.log(), 30)
            )
        });
    for field in [
        "method",
        "path",
        "upstream",
        "repository",
        "reference",
        "status",
        "cache",
        "bytes",
        "duration_ms",
        "client",
    ] {
        assert!(
            blob_line.get(field).is_some(),
            "request log line lacks {field}: {blob_line}"
        );
    }
    assert_eq!(blob_line["repository"], repo, "{blob_line}");
    assert_eq!(blob_line["cache"], "hit", "{blob_line}");
    assert_eq!(blob_line["upstream"], "registry.k8s.io", "{blob_line}");
}
