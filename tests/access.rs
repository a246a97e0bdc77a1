//! Sponsor routes with the embedded state store: challenges, /token logins and refusals, forged tokens, IP grants (their expiry, revocation and the client address behind proxies).

mod support;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jsonwebtoken::Algorithm;
use serde_json::{Value, json};
use support::access::*;
use support::*;

const ALICE_PASSWORD: &str = "alice-password-1";

#[tokio::test(flavor = "multi_thread")]
async fn a_free_route_never_challenges() {
    let registry = Registry::start().await;
    let image = TestImage::docker_schema2(7002);
    image.push(&registry, REPO, TAG).await;
    // gcr.io stays a sponsor route: the mirror has sponsor routes, but the
    // host's own upstream (registry.k8s.io) is free.
    let lank8s = free_mirror(&registry, "", &format!("sponsor_info = \"{SPONSOR_INFO}\"")).await;
    let client = client_at(loopback(1));
    for path in ["/v2/", "/v2"] {
        let base = get(&client, &lank8s, path, None).await;
        assert_eq!(base.status, 200, "{path}: {}", base.describe());
        assert_eq!(&base.body[..], b"{}", "{path}");
        assert_eq!(base.header("www-authenticate"), None, "{path}");
    }
    let path = manifest_path(REPO, TAG);
    let mark = lank8s.request_lines().len();
    let pulled = get(&client, &lank8s, &path, None).await;
    assert_eq!(pulled.status, 200, "{}", pulled.describe());
    assert_eq!(&pulled.body, image.top_bytes());
    assert_eq!(pulled.header("www-authenticate"), None);
    let line = line_after(&lank8s, mark, &path).await;
    assert_eq!(
        (&line["status"], &line["account"]),
        (&json!(200), &json!("-")),
        "{line}"
    );

    // Anonymous /token for a free route answers a token (that opens nothing).
    let anonymous = reply(
        client
            .get(format!("{}/token", lank8s.url()))
            .query(&[("scope", format!("repository:{REPO}:pull"))]),
    )
    .await;
    assert_eq!(anonymous.status, 200, "{}", anonymous.describe());
    assert_eq!(
        decode(anonymous.json()["token"].as_str().unwrap(), &lank8s.host())["sub"],
        ""
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sponsor_route_challenges_with_where_to_log_in() {
    let (registry, lank8s, _image) = sponsor_mirror("", "").await;
    let client = client_at(loopback(1));
    for path in ["/v2/", "/v2"] {
        let base = get(&client, &lank8s, path, None).await;
        assert_challenged(&base, &lank8s, None, None);
    }
    for reference in [TAG.to_owned(), digest_of(b"any digest")] {
        let answer = get(&client, &lank8s, &manifest_path(REPO, &reference), None).await;
        assert_challenged(&answer, &lank8s, Some(REPO), None);
    }
    // Anonymous /token for a sponsor route is refused too: there is no
    // anonymous way in.
    let anonymous = reply(
        client
            .get(format!("{}/token", lank8s.url()))
            .query(&[("scope", format!("repository:{REPO}:pull"))]),
    )
    .await;
    assert_eq!(anonymous.status, 401, "{}", anonymous.describe());
    assert_eq!(
        anonymous.error(),
        ("UNAUTHORIZED".into(), sponsors_only(&lank8s.host()))
    );
    registry.settle().await;
    assert_eq!(
        registry.count_requests("GET", &format!("/v2/{REPO}/")),
        0,
        "upstream was asked for a refused pull"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_login_pull_grants_its_address_and_only_it() {
    let (_registry, lank8s, image) = sponsor_mirror("", "token_ttl = \"7m\"").await;
    add_account(&lank8s, "alice", ALICE_PASSWORD, &["--days", "30"]);
    let here = client_at(loopback(1));
    let elsewhere = client_at(loopback(2));
    let path = manifest_path(REPO, TAG);

    // Before any sponsor pulled from it, 127.0.0.1 is challenged like anyone.
    let before = get(&here, &lank8s, &path, None).await;
    assert_challenged(&before, &lank8s, Some(REPO), None);

    let answer = token_reply(&here, &lank8s, "alice", ALICE_PASSWORD, REPO).await;
    assert_eq!(answer.status, 200, "{}", answer.describe());
    assert_eq!(answer.header("cache-control"), Some("no-store"));
    let body = answer.json();
    let token = body["token"].as_str().expect("token").to_owned();
    assert_eq!(body["access_token"], json!(token), "{body}");
    assert_eq!(body["expires_in"], json!(420), "token_ttl = 7m: {body}");
    let issued = humantime::parse_rfc3339(body["issued_at"].as_str().expect("issued_at"))
        .expect("issued_at is RFC 3339");
    let skew = SystemTime::now().duration_since(issued).unwrap_or_default();
    assert!(skew < Duration::from_secs(10), "issued_at {issued:?}");
    let claims = decode(&token, &lank8s.host());
    assert_eq!(
        (&claims["sub"], &claims["aud"], &claims["access"]),
        (
            &json!("alice"),
            &json!(lank8s.host()),
            &json!([{ "type": "repository", "name": REPO, "actions": ["pull"] }])
        ),
        "{claims}"
    );

    // docker login checks the token on /v2/; that alone grants nothing.
    let base = get(&here, &lank8s, "/v2/", Some(&token)).await;
    assert_eq!(base.status, 200, "{}", base.describe());
    let still = get(&here, &lank8s, &path, None).await;
    assert_challenged(&still, &lank8s, Some(REPO), None);
    assert_eq!(grants_list(&lank8s), ["no grants"]);

    let mark = lank8s.request_lines().len();
    let pulled = get(&here, &lank8s, &path, Some(&token)).await;
    assert_eq!(pulled.status, 200, "{}", pulled.describe());
    assert_eq!(&pulled.body, image.top_bytes());
    let line = line_after(&lank8s, mark, &path).await;
    assert_eq!(
        (&line["account"], &line["client"]),
        (&json!("alice"), &json!("127.0.0.1")),
        "{line}"
    );

    // The address is granted: anonymous pulls from it work, as alice's.
    let mark = lank8s.request_lines().len();
    let granted = get(&here, &lank8s, &path, None).await;
    assert_eq!(granted.status, 200, "{}", granted.describe());
    assert_eq!(&granted.body, image.top_bytes());
    let line = line_after(&lank8s, mark, &path).await;
    assert_eq!(line["account"], "alice", "{line}");
    // Another address is not.
    let other = get(&elsewhere, &lank8s, &path, None).await;
    assert_challenged(&other, &lank8s, Some(REPO), None);

    let grants = grants_list(&lank8s);
    assert_eq!(grants.len(), 1, "{grants:?}");
    assert!(
        grants[0].starts_with("127.0.0.1/32  account=alice  expires="),
        "{grants:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn token_refusals_say_why_and_failed_logins_are_limited() {
    let (_registry, lank8s, _image) = sponsor_mirror("", "login_failures_per_minute = 3").await;
    add_account(&lank8s, "alice", ALICE_PASSWORD, &[]);
    add_account(&lank8s, "bob", "bob-password-1", &[]);
    add_account(&lank8s, "old", "old-password-1", &["--until", "2020-01-01"]);
    let refused = |answer: &Reply, message: &str| {
        let what = answer.describe();
        assert_eq!(answer.status, 401, "{what}");
        assert_eq!(
            answer.error(),
            ("UNAUTHORIZED".into(), message.to_owned()),
            "{what}"
        );
        assert_eq!(
            answer.header("www-authenticate"),
            Some("Basic realm=\"lank8s\""),
            "{what}"
        );
    };

    // bob logs in, then is disabled; old expired long ago (from 127.0.0.3).
    let third = client_at(loopback(3));
    login(&third, &lank8s, "bob", "bob-password-1", REPO).await;
    cli_ok(lank8s.config_path(), &["account", "disable", "bob"], None);
    let answer = token_reply(&third, &lank8s, "bob", "bob-password-1", REPO).await;
    refused(&answer, "account \"bob\" is disabled");
    let answer = token_reply(&third, &lank8s, "old", "old-password-1", REPO).await;
    refused(&answer, "account \"old\" expired on 2020-01-02T00:00:00Z");

    // From 127.0.0.1: two failures, a good login in between, a third failure.
    let here = client_at(loopback(1));
    let wrong = "wrong user name or password";
    refused(
        &token_reply(&here, &lank8s, "alice", "not-her-password", REPO).await,
        wrong,
    );
    refused(
        &token_reply(&here, &lank8s, "nobody", ALICE_PASSWORD, REPO).await,
        wrong,
    );
    login(&here, &lank8s, "alice", ALICE_PASSWORD, REPO).await;
    refused(
        &token_reply(&here, &lank8s, "alice", "still-not-it", REPO).await,
        wrong,
    );
    // The fourth failed attempt is not even checked.
    for password in ["guess-number-4", ALICE_PASSWORD] {
        let answer = token_reply(&here, &lank8s, "alice", password, REPO).await;
        let what = answer.describe();
        assert_eq!(answer.status, 429, "{password}: {what}");
        let (code, message) = answer.error();
        assert_eq!(code, "TOOMANYREQUESTS", "{what}");
        assert!(
            message.starts_with(
                "too many failed logins from 127.0.0.1/32 (login_failures_per_minute is 3)"
            ),
            "{what}"
        );
        let retry = answer.retry_after();
        assert!((1..=60).contains(&retry), "Retry-After {retry}");
    }
    // Another network is still told the plain truth.
    let elsewhere = client_at(loopback(2));
    refused(
        &token_reply(&elsewhere, &lank8s, "alice", "not-her-password", REPO).await,
        wrong,
    );
    login(&elsewhere, &lank8s, "alice", ALICE_PASSWORD, REPO).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn post_token_takes_only_the_password_grant() {
    let (_registry, lank8s, image) = sponsor_mirror("", "").await;
    add_account(&lank8s, "alice", ALICE_PASSWORD, &[]);
    let client = client_at(loopback(1));
    let host = lank8s.host();
    let scope = format!("repository:{REPO}:pull");
    let post = |form: Vec<(&'static str, String)>| {
        reply(client.post(format!("{}/token", lank8s.url())).form(&form))
    };

    let answer = post(vec![
        ("grant_type", "password".into()),
        ("username", "alice".into()),
        ("password", ALICE_PASSWORD.into()),
        ("scope", scope.clone()),
        ("service", host.clone()),
        ("client_id", "lank8s-tests".into()),
    ])
    .await;
    assert_eq!(answer.status, 200, "{}", answer.describe());
    let token = answer.json()["access_token"]
        .as_str()
        .expect("access_token")
        .to_owned();
    assert_eq!(decode(&token, &host)["sub"], "alice");
    let pulled = get(&client, &lank8s, &manifest_path(REPO, TAG), Some(&token)).await;
    assert_eq!(pulled.status, 200, "{}", pulled.describe());
    assert_eq!(&pulled.body, image.top_bytes());

    // A refresh token was never issued; the client must fall back to GET
    // (containerd does on 404).
    let answer = post(vec![
        ("grant_type", "refresh_token".into()),
        ("refresh_token", token.clone()),
        ("scope", scope),
        ("service", host),
    ])
    .await;
    assert_eq!(answer.status, 404, "{}", answer.describe());
    let (code, message) = answer.error();
    assert_eq!(code, "UNSUPPORTED");
    assert!(
        message.starts_with("only the password grant is supported"),
        "{message}"
    );
}

type Forge = fn(&mut Value) -> String;

#[tokio::test(flavor = "multi_thread")]
async fn forged_tokens_are_refused_each_for_its_reason() {
    let (_registry, lank8s, image) = sponsor_mirror("", "").await;
    add_account(&lank8s, "alice", ALICE_PASSWORD, &[]);
    let host = lank8s.host();
    let path = manifest_path(REPO, TAG);
    let cases: [(&str, Forge, String); 9] = [
        (
            "wrong key",
            |c| {
                sign_with(
                    c,
                    "another-key-of-sufficient-length-0123456789abcdef",
                    Algorithm::HS256,
                )
            },
            "the token's signature does not verify".into(),
        ),
        // jsonwebtoken cannot even read `none` as an algorithm.
        (
            "alg none",
            |c| unsigned(c),
            "the token is malformed: ".into(),
        ),
        (
            "HS256 header, no signature",
            |c| {
                let signed = sign(c);
                format!("{}.", &signed[..signed.rfind('.').unwrap()])
            },
            "the token's signature does not verify".into(),
        ),
        (
            "HS512 with the right key",
            |c| sign_with(c, SIGNING_KEY, Algorithm::HS512),
            "the token is malformed: only HS256 tokens are accepted".into(),
        ),
        (
            "expired an hour ago",
            |c| {
                let now = unix_now();
                c["exp"] = json!(now - 3600);
                c["iat"] = json!(now - 3900);
                c["nbf"] = json!(now - 3900);
                sign(c)
            },
            "the token has expired".into(),
        ),
        (
            "for another host",
            |c| {
                c["aud"] = json!("mirror.elsewhere.test");
                sign(c)
            },
            "the token is for another host".into(),
        ),
        (
            "anonymous (no account)",
            |c| {
                c["sub"] = json!("");
                sign(c)
            },
            "an anonymous token does not open sponsor routes".into(),
        ),
        (
            "of an account that does not exist",
            |c| {
                c["sub"] = json!("mallory");
                sign(c)
            },
            "account \"mallory\" is not active".into(),
        ),
        (
            "for another repository",
            |c| {
                c["access"][0]["name"] = json!("access/other");
                sign(c)
            },
            format!("the token does not allow pulling {REPO}"),
        ),
    ];
    for (i, (what, forge, reason)) in cases.iter().enumerate() {
        // Each case from its own address: the control's pull grants it.
        let client = client_at(loopback(10 + i as u8));
        let forged = forge(&mut claims("alice", &host, REPO));
        let answer = get(&client, &lank8s, &path, Some(&forged)).await;
        assert_eq!(answer.status, 401, "{what}: {}", answer.describe());
        let (code, message) = answer.error();
        assert_eq!(code, "UNAUTHORIZED", "{what}");
        assert!(
            message.starts_with(reason.as_str()) && message.ends_with(&sponsors_only(&host)),
            "{what}: {message}"
        );
        assert_eq!(
            answer.header("www-authenticate"),
            Some(challenge(&host, Some(REPO), true).as_str()),
            "{what}"
        );
        // The control: the same request with a token signed as lank8s signs.
        let valid = sign(&claims("alice", &host, REPO));
        let answer = get(&client, &lank8s, &path, Some(&valid)).await;
        assert_eq!(answer.status, 200, "{what} control: {}", answer.describe());
        assert_eq!(&answer.body, image.top_bytes(), "{what} control");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_valid_token_of_a_disabled_account_stops_working() {
    let (_registry, lank8s, image) = sponsor_mirror("", "").await;
    add_account(&lank8s, "carol", "carol-password-1", &[]);
    let client = client_at(loopback(1));
    let path = manifest_path(REPO, TAG);
    let token = sign(&claims("carol", &lank8s.host(), REPO));
    let answer = get(&client, &lank8s, &path, Some(&token)).await;
    assert_eq!(answer.status, 200, "{}", answer.describe());
    assert_eq!(&answer.body, image.top_bytes());

    let out = cli_ok(lank8s.config_path(), &["account", "disable", "carol"], None);
    assert!(
        out.contains("status=disabled") && out.contains("revoked 1 grants"),
        "{out}"
    );
    let disabled_at = Instant::now();
    let refused = eventually(Duration::from_secs(5), || {
        let client = client.clone();
        let (lank8s, path, token) = (&lank8s, &path, &token);
        async move {
            let answer = get(&client, lank8s, path, Some(token)).await;
            (answer.status != 200).then_some(answer)
        }
    })
    .await
    .unwrap_or_else(|| {
        panic!(
            "carol's token still works 5 s after disable:\n{}",
            lank8s.log()
        )
    });
    assert_challenged(
        &refused,
        &lank8s,
        Some(REPO),
        Some("account \"carol\" is not active"),
    );
    assert!(disabled_at.elapsed() <= Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread")]
async fn forwarded_for_counts_only_from_trusted_proxies() {
    let path = manifest_path(REPO, TAG);
    let here = client_at(loopback(1));
    let other = client_at(loopback(2));

    // No trusted proxies: a claim to be the granted address is ignored.
    let (_registry, lank8s, image) = sponsor_mirror("", "").await;
    add_account(&lank8s, "alice", ALICE_PASSWORD, &[]);
    let token = login(&here, &lank8s, "alice", ALICE_PASSWORD, REPO).await;
    assert_eq!(get(&here, &lank8s, &path, Some(&token)).await.status, 200);
    let granted = get(&here, &lank8s, &path, None).await;
    assert_eq!(
        granted.status, 200,
        "control: the grant holds for 127.0.0.1"
    );
    let mark = lank8s.request_lines().len();
    let spoofed = reply(
        other
            .get(format!("{}{path}", lank8s.url()))
            .header("x-forwarded-for", "127.0.0.1"),
    )
    .await;
    assert_challenged(&spoofed, &lank8s, Some(REPO), None);
    let line = line_after(&lank8s, mark, &path).await;
    assert_eq!(
        (&line["client"], &line["status"]),
        (&json!("127.0.0.2"), &json!(401)),
        "{line}"
    );

    // 127.0.0.1 is a trusted proxy: it speaks for its clients, and a
    // client is granted by its own address, not the proxy's.
    let trusted = "trusted_proxies = [\"127.0.0.1\"]";
    let (_registry, lank8s, _) = sponsor_mirror(trusted, "").await;
    add_account(&lank8s, "alice", ALICE_PASSWORD, &[]);
    let token = login(&other, &lank8s, "alice", ALICE_PASSWORD, REPO).await;
    assert_eq!(get(&other, &lank8s, &path, Some(&token)).await.status, 200);
    assert!(
        grants_list(&lank8s)[0].starts_with("127.0.0.2/32  account=alice"),
        "{:?}",
        grants_list(&lank8s)
    );
    for (forwarded, status, account) in [("203.0.113.9", 401, "-"), ("127.0.0.2", 200, "alice")] {
        let mark = lank8s.request_lines().len();
        let answer = reply(
            here.get(format!("{}{path}", lank8s.url()))
                .header("x-forwarded-for", forwarded),
        )
        .await;
        assert_eq!(
            answer.status,
            status,
            "for {forwarded}: {}",
            answer.describe()
        );
        if status == 401 {
            assert_challenged(&answer, &lank8s, Some(REPO), None);
        } else {
            assert_eq!(&answer.body, image.top_bytes());
        }
        let line = line_after(&lank8s, mark, &path).await;
        assert_eq!(
            (&line["client"], &line["account"]),
            (&json!(forwarded), &json!(account)),
            "{line}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_grant_expires_on_time() {
    let (_registry, lank8s, _image) = sponsor_mirror("", "grant_ttl = \"3s\"").await;
    add_account(&lank8s, "alice", ALICE_PASSWORD, &[]);
    let client = client_at(loopback(1));
    let path = manifest_path(REPO, TAG);
    let token = login(&client, &lank8s, "alice", ALICE_PASSWORD, REPO).await;
    // Grants expire on whole seconds: pull just after one starts, so that
    // the grant's 3 s are not cut short by up to a second.
    let into_second = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_millis();
    tokio::time::sleep(Duration::from_millis(u64::from(1000 - into_second) + 20)).await;
    let granted_at = Instant::now();
    let answer = get(&client, &lank8s, &path, Some(&token)).await;
    assert_eq!(answer.status, 200, "{}", answer.describe());

    // Poll anonymous pulls until the grant no longer opens the route.
    let mut last_ok = None;
    let (at, answer) = loop {
        let answer = get(&client, &lank8s, &path, None).await;
        let at = granted_at.elapsed();
        if answer.status != 200 {
            break (at, answer);
        }
        last_ok = Some(at);
        assert!(at < Duration::from_secs(8), "the grant never expired");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_challenged(&answer, &lank8s, Some(REPO), None);
    let last_ok = last_ok.expect("no anonymous pull succeeded while granted");
    assert!(
        last_ok >= Duration::from_millis(2500),
        "granted only until {last_ok:?}"
    );
    assert!(
        (Duration::from_millis(2500)..=Duration::from_secs(7)).contains(&at),
        "refused again {at:?} after the grant"
    );
    assert_eq!(grants_list(&lank8s), ["no grants"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn disabling_an_account_ends_its_grants() {
    let (_registry, lank8s, image) = sponsor_mirror("", "").await;
    add_account(&lank8s, "alice", ALICE_PASSWORD, &[]);
    let client = client_at(loopback(1));
    let path = manifest_path(REPO, TAG);
    let token = login(&client, &lank8s, "alice", ALICE_PASSWORD, REPO).await;
    assert_eq!(get(&client, &lank8s, &path, Some(&token)).await.status, 200);
    let granted = get(&client, &lank8s, &path, None).await;
    assert_eq!(granted.status, 200, "{}", granted.describe());
    assert_eq!(&granted.body, image.top_bytes());
    assert_eq!(grants_list(&lank8s).len(), 1);

    let out = cli_ok(lank8s.config_path(), &["account", "disable", "alice"], None);
    assert!(out.contains("revoked 1 grants"), "{out}");
    let disabled_at = Instant::now();
    let refused = eventually(Duration::from_secs(5), || {
        let client = client.clone();
        let (lank8s, path) = (&lank8s, &path);
        async move {
            let answer = get(&client, lank8s, path, None).await;
            (answer.status != 200).then_some(answer)
        }
    })
    .await
    .unwrap_or_else(|| panic!("the grant still works 5 s after disable:\n{}", lank8s.log()));
    assert!(disabled_at.elapsed() <= Duration::from_secs(5));
    assert_challenged(&refused, &lank8s, Some(REPO), None);
    assert_eq!(grants_list(&lank8s), ["no grants"]);
}
