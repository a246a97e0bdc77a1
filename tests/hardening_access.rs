//! Adversarial regression tests for the access layer: concurrent logins against the failure limit and Argon2's memory, a dual-stack listener and client-written Forwarded headers behind a trusted proxy, aliases past allow/deny lists, the account CLI with far-future dates, damaged state files and long passwords, grants after re-enabling and revoking by network, hostile Host and Authorization headers, huge scope lists, login timing, a restarted or black-holed Redis, and the limits under concurrency.

mod support;

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use serde_json::json;
use support::access::*;
use support::hardening_access::*;
use support::redis::Redis;
use support::*;

const PASSWORD: &str = ALICE_PASSWORD;
const KIB: usize = 1024;

/// A sponsor mirror (see `sponsor_mirror`) with the account `alice`.
async fn mirror(top_level: &str, access: &str) -> (Registry, Lank8s) {
    let (registry, lank8s, _image) = sponsor_mirror(top_level, access).await;
    add_account(&lank8s, "alice", PASSWORD, &[]);
    (registry, lank8s)
}

/// A blob of `image` other than its largest (the config).
fn small_blob(image: &TestImage) -> String {
    let layer = image.largest_blob_digest();
    let (digest, _) = image
        .blobs
        .iter()
        .find(|(d, _)| d != layer)
        .expect("config");
    digest.clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_wrong_logins_stay_within_the_failure_limit() {
    let (_registry, lank8s) = mirror("", "login_failures_per_minute = 3").await;
    let client = client_at(loopback(1));
    let guesses: Vec<String> = (0..30).map(|i| format!("guess-{i:04}")).collect();
    let logins = guesses
        .iter()
        .map(|g| token_reply(&client, &lank8s, "alice", g, REPO));
    let answers = join_all(logins).await;
    let checked = answers.iter().filter(|a| a.status == 401).count();
    let limited = answers.iter().filter(|a| a.status == 429).count();
    assert_eq!(checked + limited, 30, "only 401 and 429 are expected");
    assert!(
        checked <= 3,
        "{checked} of 30 concurrent wrong passwords from one address were checked (401) with \
         login_failures_per_minute = 3: the limit is peeked before Argon2 and counted after, \
         so a burst is never limited"
    );
    assert_no_panic(&lank8s.log());
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_logins_from_many_addresses_do_not_each_hold_argon2_memory() {
    let server = Server::sponsor("127.0.0.1", "", "http://127.0.0.1:9").await;
    let url = server.url();
    // One login first, so that the baseline holds one verification's memory.
    let warm = login_at(&client_at(loopback(9)), &url, "alice", "warm-up").await;
    assert_eq!(warm.status, 401, "{}", warm.describe());
    let before = server.peak_rss_kib();
    let logins = (0..64u8).map(|i| {
        let (client, url) = (client_at(loopback(10 + i)), url.clone());
        async move { login_at(&client, &url, "alice", "not-it").await.status }
    });
    let statuses = join_all(logins).await;
    assert!(statuses.iter().all(|s| *s == 401), "{statuses:?}");
    let grown_mib = server.peak_rss_kib().saturating_sub(before) / 1024;
    assert!(
        grown_mib < 256,
        "64 concurrent logins (each the first failure of its address) raised lank8s's peak \
         memory by {grown_mib} MiB: each Argon2 verification takes 19 MiB and nothing but the \
         512-thread blocking pool bounds how many run at once"
    );
    assert_no_panic(&server.log());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dual_stack_listener_still_trusts_its_ipv4_proxy() {
    let registry = Registry::start().await;
    TestImage::docker_schema2(7301)
        .push(&registry, REPO, TAG)
        .await;
    let trusted = "trusted_proxies = [\"127.0.0.1\"]";
    let server = Server::sponsor("[::]", trusted, &registry.url()).await;
    let token = sign(&claims("alice", &server.host(), REPO));
    let proxy = client_at(loopback(1));
    let path = manifest_path(REPO, TAG);
    let url = format!("{}{path}", server.url());
    // The proxy (127.0.0.1, trusted) forwards a sponsor's pull, then a stranger's.
    let sponsor = proxy.get(&url).bearer_auth(&token);
    let sponsor = reply(sponsor.header("x-forwarded-for", "203.0.113.7")).await;
    assert_eq!(sponsor.status, 200, "{}", sponsor.describe());
    let stranger = reply(proxy.get(&url).header("x-forwarded-for", "198.51.100.9")).await;
    let clients = eventually(Duration::from_secs(5), || {
        let lines: Vec<String> = (server.request_lines().iter())
            .filter(|l| l["path"] == path.as_str())
            .map(|l| l["client"].as_str().unwrap_or_default().to_owned())
            .collect();
        async move { (lines.len() == 2).then_some(lines) }
    })
    .await
    .expect("two request lines");
    assert_eq!(
        (clients, stranger.status),
        (vec!["203.0.113.7".into(), "198.51.100.9".into()], 401),
        "listening on [::], the proxy's peer address is ::ffff:127.0.0.1, which trusted_proxies = \
         [\"127.0.0.1\"] does not match: X-Forwarded-For is ignored, the sponsor's grant goes to \
         the proxy, and everyone behind it pulls as the sponsor"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_forwarded_header_from_the_client_does_not_beat_the_proxys_x_forwarded_for() {
    let (_registry, lank8s) = mirror("trusted_proxies = [\"127.0.0.1\"]", "").await;
    let token = sign(&claims("alice", &lank8s.host(), REPO));
    let proxy = client_at(loopback(1));
    let url = format!("{}{}", lank8s.url(), manifest_path(REPO, TAG));
    // A proxy that appends X-Forwarded-For (nginx's proxy_add_x_forwarded_for)
    // and passes other headers on: first the sponsor at 203.0.113.7 pulls...
    let sponsor = proxy.get(&url).bearer_auth(&token);
    let sponsor = reply(sponsor.header("x-forwarded-for", "203.0.113.7")).await;
    assert_eq!(sponsor.status, 200, "{}", sponsor.describe());
    // ...then 198.51.100.9 claims the sponsor's address in a header of its own.
    let spoofed = proxy.get(&url).header("forwarded", "for=203.0.113.7");
    let answer = reply(spoofed.header("x-forwarded-for", "198.51.100.9")).await;
    assert_eq!(
        answer.status, 401,
        "with both headers present lank8s believes Forwarded, which the client wrote and the \
         proxy passed on, over the X-Forwarded-For the proxy wrote: anyone behind such a proxy \
         can pull as any granted address (and dodge every per-address limit)"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_alias_never_fetches_a_repository_the_lists_refuse() {
    let registry = Registry::start().await;
    let image = TestImage::docker_schema2(7302);
    image.push(&registry, "coredns/coredns", TAG).await;
    let fetched = |registry: &Registry| {
        let path = "/v2/coredns/coredns/manifests/";
        registry.count_requests("GET", path) + registry.count_requests("HEAD", path)
    };
    // registry.k8s.io aliases coredns to coredns/coredns by default.
    let mut leaks = Vec::new();
    for policy in [
        "deny = [\"coredns/**\"]",
        "allow = [\"coredns\", \"pause\"]",
    ] {
        let lank8s = free_mirror(&registry, policy, "").await;
        let client = client_at(loopback(1));
        let direct = get(
            &client,
            &lank8s,
            &manifest_path("coredns/coredns", TAG),
            None,
        )
        .await;
        assert_eq!(direct.status, 403, "{policy}: {}", direct.describe());
        registry.settle().await;
        let before = fetched(&registry);
        let aliased = get(&client, &lank8s, &manifest_path("coredns", TAG), None).await;
        registry.settle().await;
        let asked = fetched(&registry) - before;
        if aliased.status == 200 || asked > 0 {
            let status = aliased.status;
            leaks.push(format!(
                "{policy}: upstream asked {asked} times; /v2/coredns: {status}"
            ));
        }
    }
    assert!(
        leaks.is_empty(),
        "the lists are checked on the name asked, not on the alias fetched, so coredns/coredns \
         is served as coredns:\n{}",
        leaks.join("\n")
    );
}

#[test]
fn a_far_future_expiry_is_refused_or_shown_never_a_crash() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = cli_config(dir.path());
    let cases: [(&str, &[&str]); 3] = [
        ("far", &["--days", "3000000"]),
        ("last", &["--until", "9999-12-31"]),
        ("max", &["--days", "18446744073709551615"]),
    ];
    let mut crashes = Vec::new();
    for (name, expiry) in cases {
        let args = [&["account", "add", name, "--password-stdin"], expiry].concat();
        let run = cli(&config, &args, Some("far-future-password\n"));
        if !matches!(run.code, Some(0 | 2)) || run.stderr.contains("panicked") {
            let why = panic_summary(&run.stderr);
            crashes.push(format!("add {name} {expiry:?}: {:?} {why}", run.code));
        }
    }
    let run = cli(&config, &["account", "list"], None);
    if run.code != Some(0) || run.stderr.contains("panicked") {
        crashes.push(format!(
            "list: {:?} {}",
            run.code,
            panic_summary(&run.stderr)
        ));
    }
    assert!(
        crashes.is_empty(),
        "an expiry past year 9999 is stored, then formatting it panics (in add, and in every \
         later `account list`):\n{}",
        crashes.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_redis_restart_mid_download_leaves_no_spare_download_slot() {
    let mut redis = Redis::start().await;
    let registry = Registry::start().await;
    let image = TestImage::large(7303, 192 * KIB);
    image.push(&registry, REPO, TAG).await;
    let tables = format!(
        "[upstreams.\"registry.k8s.io\"]\nurl = \"{}\"\n[access]\nrealm_scheme = \"http\"\n\
         [access.limits.anonymous]\nconcurrent_downloads = 1\nbytes_per_second = \"64 KiB\"",
        registry.url()
    );
    let lank8s = Lank8s::start_with(&format!("state = \"{}0\"", redis.url()), &tables).await;
    let here = client_at(loopback(1));
    let layer_url = format!(
        "{}{}",
        lank8s.url(),
        blob_path(REPO, image.largest_blob_digest())
    );

    let first = here.get(&layer_url).send().await.expect("first download");
    assert_eq!(first.status(), 200);
    redis.restart().await;
    let body = first.bytes().await.expect("first body");
    assert_eq!(body.len(), 192 * KIB);

    let second = here.get(&layer_url).send().await.expect("second download");
    assert_eq!(second.status(), 200, "nothing else runs");
    let third = get(&here, &lank8s, &blob_path(REPO, &small_blob(&image)), None).await;
    assert_eq!(
        third.status,
        429,
        "a second concurrent download was let through with concurrent_downloads = 1: the slot \
         taken before Redis restarted was given back after it (to an empty Redis, or to the \
         local fallback), leaving the counter at -1 (lank8s logged an outage: {})",
        lank8s.log().contains("redis unavailable")
    );
    drop(second);
    assert_no_panic(&lank8s.log());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_redis_that_never_answers_costs_each_request_at_most_its_deadline() {
    let blackhole = Blackhole::start().await;
    let top = format!("state = \"redis://127.0.0.1:{}/0\"", blackhole.port());
    let limits = "[access.limits.anonymous]\nrequests_per_minute = 1000";
    let (_registry, lank8s, _image) = sponsor_mirror(&top, limits).await;
    let token = sign(&claims("alice", &lank8s.host(), REPO));
    let (base, path) = (lank8s.url(), manifest_path(REPO, TAG));
    let mut slow = Vec::new();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(6) {
        let round = (0..4u8).map(|kind| {
            let client = client_at(loopback(1 + kind));
            let request = match kind {
                0 => client.get(format!("{base}/v2/")),
                1 => client.get(format!("{base}{path}")).bearer_auth(&token),
                2 => client.get(format!("{base}{path}")),
                _ => client
                    .get(format!("{base}/token"))
                    .basic_auth("alice", Some(PASSWORD)),
            };
            async move {
                let sent = Instant::now();
                let status = request.send().await.map(|r| r.status().as_u16());
                (kind, status.ok(), sent.elapsed())
            }
        });
        for (kind, status, took) in join_all(round).await {
            if status.is_none() || took > Duration::from_millis(1500) {
                slow.push(format!("request {kind}: {status:?} after {took:?}"));
            }
        }
    }
    assert!(
        slow.is_empty(),
        "with Redis black-holed:\n{}",
        slow.join("\n")
    );
    assert_no_panic(&lank8s.log());
}

#[test]
fn a_damaged_state_file_is_a_clear_error_naming_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = cli_config(dir.path());
    let add = ["account", "add", "alice", "--password-stdin"];
    cli_ok(&config, &add, Some(&format!("{PASSWORD}\n")));
    let state = dir.path().join("data").join("state.redb");
    let whole = std::fs::read(&state).expect("state file");
    let garbage: Vec<u8> = (0..100_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let mut problems = Vec::new();
    for (damage, bytes) in [("truncated", whole[..4096].to_vec()), ("garbage", garbage)] {
        std::fs::write(&state, &bytes).expect("damage the state file");
        let listed = cli(&config, &["account", "list"], None);
        let (code, stderr) = serve_exit(&config);
        for (what, code, stderr) in [
            ("account list", listed.code, listed.stderr),
            ("serve", code, stderr),
        ] {
            // redb asserts on a truncated file rather than returning an error;
            // its panic message may show, but the error must name the file.
            let clear = stderr.contains(&state.display().to_string())
                && (!stderr.contains("panicked") || stderr.contains("the file is damaged"));
            if code != Some(1) || !clear {
                problems.push(format!(
                    "{damage}, {what}: exit {code:?}: {}",
                    panic_summary(&stderr)
                ));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "a damaged state.redb must be reported (naming the file) with exit 1:\n{}",
        problems.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_password_too_long_for_stdin_is_refused_not_cut() {
    let (_registry, lank8s, _image) = sponsor_mirror("", "").await;
    let long = "0123456789abcdef".repeat(320);
    let args = ["account", "add", "long", "--password-stdin"];
    let added = cli(lank8s.config_path(), &args, Some(&format!("{long}\n")));
    if added.code == Some(0) {
        let answer = token_reply(&client_at(loopback(1)), &lank8s, "long", &long, REPO).await;
        assert_eq!(
            answer.status,
            200,
            "`account add --password-stdin` took a {}-character password and exited 0, but it \
             kept only the first 4096 bytes: logging in with the password given fails",
            long.len()
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reenabled_accounts_next_pull_grants_its_address_again() {
    let (_registry, lank8s) = mirror("", "").await;
    let (here, path) = (client_at(loopback(1)), manifest_path(REPO, TAG));
    let token = sign(&claims("alice", &lank8s.host(), REPO));
    let status_is = |bearer: Option<&str>, want: u16| {
        let (here, lank8s, path, bearer) = (&here, &lank8s, &path, bearer.map(str::to_owned));
        eventually(Duration::from_secs(5), move || {
            let bearer = bearer.clone();
            async move {
                (get(here, lank8s, path, bearer.as_deref()).await.status == want).then_some(())
            }
        })
    };
    assert!(
        status_is(Some(&token), 200).await.is_some(),
        "a sponsor pull"
    );
    assert!(status_is(None, 200).await.is_some(), "granted");
    cli_ok(lank8s.config_path(), &["account", "disable", "alice"], None);
    assert!(status_is(Some(&token), 401).await.is_some(), "disabled");
    cli_ok(lank8s.config_path(), &["account", "enable", "alice"], None);
    assert!(
        status_is(Some(&token), 200).await.is_some(),
        "enabled again"
    );
    // Past the 2 s the server trusts an earlier grant lookup.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let anonymous = get(&here, &lank8s, &path, None).await;
    assert_eq!(
        anonymous.status,
        200,
        "alice pulled with a valid token after `account enable`, yet her address stays \
         ungranted (grants: {:?}): the grant is rewritten at most once a minute per (network, \
         account), even when `disable` (or `grants revoke`) removed it meanwhile",
        grants_list(&lank8s)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn grants_revoke_takes_any_address_or_network_inside_a_grant() {
    let (_registry, lank8s) = mirror("", "grant_prefix_v4 = 24").await;
    let token = sign(&claims("alice", &lank8s.host(), REPO));
    for third in 1..=3 {
        let client = client_at(IpAddr::V4(Ipv4Addr::new(127, 0, third, 1)));
        let pulled = get(&client, &lank8s, &manifest_path(REPO, TAG), Some(&token)).await;
        assert_eq!(pulled.status, 200, "{}", pulled.describe());
    }
    assert_eq!(grants_list(&lank8s).len(), 3, "{:?}", grants_list(&lank8s));
    let mut refused = Vec::new();
    for form in ["127.0.1.77/24", "127.0.2.9/32", "::ffff:127.0.3.1"] {
        let run = cli(lank8s.config_path(), &["grants", "revoke", form], None);
        if run.code != Some(0) {
            refused.push(format!("{form}: exit {:?} {}", run.code, run.stderr.trim()));
        }
    }
    assert_eq!(
        (refused, grants_list(&lank8s)),
        (Vec::<String>::new(), vec!["no grants".to_owned()]),
        "each form names an address or network inside one of the /24 grants"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_host_headers_cannot_reshape_the_challenge() {
    let (_registry, lank8s, _image) = sponsor_mirror("", "").await;
    let head = format!(
        "GET {} HTTP/1.1\r\nConnection: close\r\n",
        manifest_path(REPO, TAG)
    );
    let requests: [(&str, Vec<u8>); 3] = [
        (
            "quotes",
            format!("{head}Host: a.example\", realm=\"http://evil.example/x\r\n\r\n").into(),
        ),
        (
            "no Host",
            head.replace("HTTP/1.1", "HTTP/1.0")
                .replace("Connection: close\r\n", "\r\n")
                .into(),
        ),
        (
            "non-UTF-8 Host",
            [head.as_bytes(), b"Host: a\xffb\r\n\r\n"].concat(),
        ),
    ];
    let mut broken = Vec::new();
    for (what, request) in requests {
        let answer = raw_exchange(lank8s.port(), &request).await;
        let status = raw_status(&answer);
        let challenge = raw_header(&answer, "www-authenticate").unwrap_or_default();
        let params = challenge_params(&challenge).unwrap_or_default();
        let value = |key: &str| {
            params
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.clone())
        };
        let keys: Vec<&str> = params.iter().map(|(k, _)| k.as_str()).collect();
        let service = value("service").unwrap_or_default();
        let sound = status == 401
            && keys == ["realm", "service", "scope"]
            && !service.is_empty()
            && !service.contains(['"', ',', '/', '\\', ' '])
            && value("realm") == Some(format!("http://{service}/token"));
        if status != 400 && !sound {
            broken.push(format!("{what}: {status} WWW-Authenticate: {challenge}"));
        }
    }
    assert!(
        broken.is_empty(),
        "the Host header goes into the challenge unchecked and unescaped (a 400, or a challenge \
         naming a real host, is expected):\n{}",
        broken.join("\n")
    );
    assert_no_panic(&lank8s.log());
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_authorization_is_refused_cleanly() {
    let (_registry, lank8s) = mirror("", "").await;
    let (client, host) = (client_at(loopback(1)), lank8s.host());
    let manifest = format!("{}{}", lank8s.url(), manifest_path(REPO, TAG));
    let login = format!("{}/token?scope=repository:{REPO}:pull", lank8s.url());
    let (m, t) = (manifest.as_str(), login.as_str());
    let mut aud_array = claims("alice", &host, REPO);
    aud_array["aud"] = json!([host]);
    let mut negative = claims("alice", &host, REPO);
    negative["exp"] = json!(-1);
    let huge = "A".repeat(100 * KIB);
    let no_colon = format!("Basic {}", base64_encode(b"alice"));
    let cases = [
        ("basic without a colon", m, no_colon.clone()),
        ("empty bearer", m, "Bearer ".into()),
        ("huge bearer", m, format!("Bearer {huge}")),
        ("lowercase junk bearer", m, "bearer a.b.c".into()),
        ("aud as an array", m, format!("Bearer {}", sign(&aud_array))),
        ("negative exp", m, format!("Bearer {}", sign(&negative))),
        ("login without a colon", t, no_colon),
        (
            "huge login",
            t,
            format!("Basic {}", base64_encode(huge.as_bytes())),
        ),
    ];
    let mut wrong = Vec::new();
    for (what, url, authorization) in cases {
        let answer = reply(client.get(url).header("authorization", authorization)).await;
        if !matches!(answer.status, 400 | 401 | 431) {
            wrong.push(format!("{what}: {}", answer.describe()));
        }
    }
    for (scheme, url) in [("Bearer", m), ("Basic", t)] {
        let head = format!(
            "GET {} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n",
            path_of(url)
        );
        let request = [
            head.as_bytes(),
            b"Authorization: ",
            scheme.as_bytes(),
            b" \xff\xfe\r\n\r\n",
        ]
        .concat();
        let status = raw_status(&raw_exchange(lank8s.port(), &request).await);
        if !matches!(status, 400 | 401) {
            wrong.push(format!("non-UTF-8 {scheme} to {url}: {status}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    assert_no_panic(&lank8s.log());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_bearer_scheme_is_read_case_insensitively() {
    let (_registry, lank8s) = mirror("", "").await;
    let token = sign(&claims("alice", &lank8s.host(), REPO));
    let url = format!("{}{}", lank8s.url(), manifest_path(REPO, TAG));
    let request = client_at(loopback(1)).get(&url);
    let answer = reply(request.header("authorization", format!("BEARER {token}"))).await;
    assert_eq!(
        answer.status,
        200,
        "RFC 7235 auth schemes are case-insensitive, but only \"Bearer \" and \"bearer \" are \
         read; a valid token sent as \"BEARER\" is ignored without a word: {}",
        answer.describe()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_for_hundreds_of_scopes_is_refused_or_kept_small() {
    let registry = Registry::start().await;
    let lank8s = free_mirror(&registry, "", "").await;
    let scopes: Vec<(&str, String)> = (0..500)
        .map(|i| ("scope", format!("repository:library/image-{i:04}:pull")))
        .collect();
    let request = client_at(loopback(1)).get(format!("{}/token", lank8s.url()));
    let answer = reply(request.query(&scopes)).await;
    if answer.status == 200 {
        let token = answer.json()["token"].as_str().unwrap_or_default().len();
        assert!(
            token <= 16 * KIB,
            "an anonymous /token for 500 scopes answered a {token}-byte token (and the body has \
             it twice): too big for the Authorization header it is meant for, and an \
             unauthenticated amplification (a 1.7 MB POST answers 7.7 MB)"
        );
    } else {
        assert!((400..500).contains(&answer.status), "{}", answer.describe());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_users_and_wrong_passwords_take_about_as_long() {
    let (_registry, lank8s) = mirror("", "login_failures_per_minute = 1000").await;
    let client = client_at(loopback(1));
    let timed = |user: String| {
        let (client, lank8s) = (&client, &lank8s);
        async move {
            let sent = Instant::now();
            let answer = token_reply(client, lank8s, &user, "not-the-password", REPO).await;
            assert_eq!(answer.status, 401, "{}", answer.describe());
            sent.elapsed()
        }
    };
    timed("warm-up".into()).await;
    let (mut wrong, mut unknown) = (Vec::new(), Vec::new());
    for i in 0..7 {
        wrong.push(timed("alice".into()).await);
        unknown.push(timed(format!("nobody-{i}")).await);
    }
    wrong.sort();
    unknown.sort();
    let (w, u) = (wrong[3].as_secs_f64(), unknown[3].as_secs_f64());
    assert!(
        w / u < 2.0 && u / w < 2.0,
        "median login time: wrong password {w:.3} s, unknown user {u:.3} s"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn paced_downloads_from_one_address_share_one_rate() {
    let registry = Registry::start().await;
    let image = TestImage::large(7304, 128 * KIB);
    image.push(&registry, REPO, TAG).await;
    let limits = "[access.limits.anonymous]\nbytes_per_second = \"256 KiB\"";
    let lank8s = free_mirror(&registry, "", limits).await;
    let url = format!(
        "{}{}",
        lank8s.url(),
        blob_path(REPO, image.largest_blob_digest())
    );
    // Cached first, from another address (with a pace of its own).
    assert_eq!(reply(client_at(loopback(9)).get(&url)).await.status, 200);
    let here = client_at(loopback(1));
    let started = Instant::now();
    let bodies = join_all((0..4).map(|_| reply(here.get(&url)))).await;
    let took = started.elapsed();
    assert!(
        bodies
            .iter()
            .all(|b| b.status == 200 && b.body.len() == 128 * KIB)
    );
    // 512 KiB at 256 KiB/s, less the tenth of a second a new pace may start with.
    assert!(
        took >= Duration::from_millis(1700),
        "four concurrent downloads of 128 KiB from one address at 256 KiB/s took {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_range_request_takes_a_download_slot_and_head_does_not() {
    let registry = Registry::start().await;
    let image = TestImage::large(7305, 256 * KIB);
    image.push(&registry, REPO, TAG).await;
    let limits =
        "[access.limits.anonymous]\nconcurrent_downloads = 1\nbytes_per_second = \"64 KiB\"";
    let lank8s = free_mirror(&registry, "", limits).await;
    let here = client_at(loopback(1));
    let config_url = format!("{}{}", lank8s.url(), blob_path(REPO, &small_blob(&image)));
    let layer_url = format!(
        "{}{}",
        lank8s.url(),
        blob_path(REPO, image.largest_blob_digest())
    );
    let running = here.get(&layer_url).send().await.expect("download");
    assert_eq!(running.status(), 200);
    let head = reply(here.head(&config_url)).await;
    assert_eq!(head.status, 200, "a HEAD is not a download");
    let ranged = reply(here.get(&config_url).header("range", "bytes=0-9")).await;
    assert_eq!(
        ranged.status,
        429,
        "a Range GET is a download: {}",
        ranged.describe()
    );
    drop(running);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_burst_of_concurrent_requests_gets_exactly_the_limit() {
    let registry = Registry::start().await;
    TestImage::docker_schema2(7306)
        .push(&registry, REPO, TAG)
        .await;
    let limits = "[access.limits.anonymous]\nrequests_per_minute = 10";
    let lank8s = free_mirror(&registry, "", limits).await;
    let (here, path) = (client_at(loopback(1)), manifest_path(REPO, TAG));
    let answers = join_all((0..40).map(|_| get(&here, &lank8s, &path, None))).await;
    let allowed = answers.iter().filter(|a| a.status == 200).count();
    let limited = answers.iter().filter(|a| a.status == 429).count();
    assert_eq!(
        (allowed, limited),
        (10, 30),
        "a burst of 40 at requests_per_minute = 10"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn login_failures_per_minute_of_zero_never_locks_out_a_right_password() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("zero.toml");
    std::fs::write(&file, "[access]\nlogin_failures_per_minute = 0\n").expect("write");
    let check = std::process::Command::new(env!("CARGO_BIN_EXE_lank8s"))
        .args(["config", "check"])
        .arg(&file)
        .output()
        .expect("config check");
    if check.status.success() {
        let (_registry, lank8s) = mirror("", "login_failures_per_minute = 0").await;
        let answer = token_reply(&client_at(loopback(1)), &lank8s, "alice", PASSWORD, REPO).await;
        assert_eq!(
            answer.status,
            200,
            "`config check` accepts login_failures_per_minute = 0, and then nobody can log in, \
             not even with the right password: {}",
            answer.describe()
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn account_names_passwords_and_extensions_from_the_cli() {
    let (_registry, lank8s, _image) = sponsor_mirror("", "").await;
    let config = lank8s.config_path();
    for name in ["a/b", "ünï", "", &"x".repeat(65), "a:b"] {
        let args = ["account", "add", name, "--password-stdin"];
        let run = cli(config, &args, Some("password-12345\n"));
        let refused = run.code == Some(1) && run.stderr.contains("is not an account name");
        assert!(refused, "{name:?}: {run:?}");
    }
    // A CRLF line end is not part of the password.
    add_account(&lank8s, "crlf", "crlf-password\r", &[]);
    let here = client_at(loopback(1));
    login(&here, &lank8s, "crlf", "crlf-password", REPO).await;
    // An expired account, extended, logs in again.
    add_account(&lank8s, "old", "old-password-1", &["--until", "2020-01-01"]);
    let expired = token_reply(&here, &lank8s, "old", "old-password-1", REPO).await;
    assert_eq!(expired.status, 401, "{}", expired.describe());
    cli_ok(config, &["account", "extend", "old", "--days", "1"], None);
    login(&here, &lank8s, "old", "old-password-1", REPO).await;
    assert_no_panic(&lank8s.log());
}
