//! Two lank8s replicas sharing one real redis-server: a grant earned on one opens the other, a token signed by one (with the key generated once and kept in Redis) is accepted by the other, a per-address request limit holds across both, a cold blob pulled through both at once is fetched from upstream once (shared Garage bucket), and while Redis is down both keep serving with local limits, warning once, until Redis is back and state is shared again.

mod support;

use std::time::{Duration, Instant};

use serde_json::Value;
use support::redis::Redis;
use support::replicas::*;
use support::*;

const PASSWORD: &str = "correct-horse-battery";
const REPO: &str = "team/app";
/// The Host both replicas are reached by in a real deployment (behind one name).
const SHARED_HOST: &str = "mirror.test";

/// An upstream registry holding a small image as `team/app:v1`.
async fn upstream(seed: u64) -> (Registry, TestImage) {
    let registry = Registry::start().await;
    let image = TestImage::docker_schema2(seed);
    image.push(&registry, REPO, "v1").await;
    (registry, image)
}

fn manifest_path(reference: &str) -> String {
    format!("/v2/{REPO}/manifests/{reference}")
}

/// The same manifest through the free route, by digest (cached after one pull).
fn free_manifest_path(image: &TestImage) -> String {
    format!("/v2/{FREE}/{REPO}/manifests/{}", image.top_digest())
}

/// The exact refusal of an anonymous pull of `team/app:v1` from `lank8s` on its own Host.
fn assert_challenged(answer: &Answer, lank8s: &Lank8s, reason: Option<&str>) {
    let host = lank8s.host();
    assert_eq!(answer.status, 401, "{}", answer.describe());
    let invalid = if reason.is_some() {
        ",error=\"invalid_token\""
    } else {
        ""
    };
    assert_eq!(
        answer.header("www-authenticate"),
        format!(
            "Bearer realm=\"http://{host}/token\",service=\"{host}\",scope=\"repository:{REPO}:pull\"{invalid}"
        )
    );
    let why = reason.map(|r| format!("{r}. ")).unwrap_or_default();
    assert_eq!(
        answer.error(),
        (
            "UNAUTHORIZED".to_string(),
            format!(
                "{why}{host} serves {SPONSOR} to sponsors only: log in with a sponsor account, or \
                 pull from an address a sponsor has pulled from; see {SPONSOR_INFO}"
            )
        )
    );
}

/// The request line `lank8s` logged for the last request from `client` to `path`.
async fn last_line(lank8s: &Lank8s, client: &str, path: &str) -> Value {
    support::storage::settle_log(lank8s).await;
    lank8s
        .request_lines()
        .into_iter()
        .rev()
        .find(|l| l["client"] == client && l["path"] == path)
        .unwrap_or_else(|| panic!("no line for {client} {path}:\n{}", lank8s.log()))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_grant_and_a_token_from_one_replica_open_the_other() {
    let redis = Redis::start().await;
    let (registry, image) = upstream(601).await;
    let (a, mut b) = start_replicas(&redis.url(), &registry.url(), "").await;
    add_account(a.config_path(), "dana", PASSWORD);
    let x = client_from("127.0.0.2");
    let y = client_from("127.0.0.3");
    let path = manifest_path("v1");

    // Before any grant, B refuses 127.0.0.2.
    assert_challenged(&get(&x, &b.url(), &path, None, None).await, &b, None);

    // A signs a token (with the key it generated and stored in Redis) for the shared host.
    let token = token(&x, &a.url(), SHARED_HOST, ("dana", PASSWORD), REPO).await;
    let claims = claims(&token);
    assert_eq!(
        (
            &claims["iss"],
            &claims["sub"],
            &claims["aud"],
            &claims["tier"]
        ),
        (
            &"lank8s".into(),
            &"dana".into(),
            &SHARED_HOST.into(),
            &"sponsor".into()
        ),
        "{claims}"
    );
    assert_eq!(
        claims["access"],
        serde_json::json!([{"type": "repository", "name": REPO, "actions": ["pull"]}])
    );
    let bearer = format!("Bearer {token}");

    // B accepts it (from another address, so that the grant below is A's doing).
    let on_b = get(&y, &b.url(), &path, Some(SHARED_HOST), Some(&bearer)).await;
    assert_eq!(on_b.status, 200, "A's token on B: {}", on_b.describe());
    assert_eq!(last_line(&b, "127.0.0.3", &path).await["account"], "dana");
    // A restarted B knows no key of its own: it reads the one in Redis.
    b.restart().await;
    let on_b = get(&y, &b.url(), &path, Some(SHARED_HOST), Some(&bearer)).await;
    assert_eq!(
        on_b.status,
        200,
        "A's token on restarted B: {}",
        on_b.describe()
    );
    // Controls, from an address no grant covers: B checks the audience and the signature.
    let z = client_from("127.0.0.4");
    let wrong_host = get(&z, &b.url(), &path, None, Some(&bearer)).await;
    assert_challenged(&wrong_host, &b, Some("the token is for another host"));
    let forged = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(b"not-the-key-the-replicas-share-0123456789"),
    )
    .expect("sign");
    let forged = get(&z, &b.url(), &path, None, Some(&format!("Bearer {forged}"))).await;
    assert_challenged(&forged, &b, Some("the token's signature does not verify"));

    // 127.0.0.2 is still refused by B (which now remembers that for 2 s), then pulls
    // through A with the token: A grants it, in Redis.
    assert_challenged(&get(&x, &b.url(), &path, None, None).await, &b, None);
    let on_a = get(&x, &a.url(), &path, Some(SHARED_HOST), Some(&bearer)).await;
    assert_eq!(on_a.status, 200, "{}", on_a.describe());

    // B lets 127.0.0.2 in without credentials within its 2 s cache.
    let granted_at = Instant::now();
    let opened = eventually(Duration::from_secs(5), || async {
        let answer = get(&x, &b.url(), &path, None, None).await;
        (answer.status == 200).then_some(answer)
    })
    .await;
    let waited = granted_at.elapsed();
    let opened = opened.unwrap_or_else(|| panic!("B never honoured A's grant:\n{}", b.log()));
    assert_eq!(opened.header("docker-content-digest"), image.top_digest());
    assert_eq!(last_line(&b, "127.0.0.2", &path).await["account"], "dana");
    eprintln!("B honoured A's grant after {waited:?}");
    let grants = grants_list(b.config_path());
    assert_eq!(grants.len(), 2, "{grants:?}");
    assert!(
        grants[0].starts_with("127.0.0.2/32  account=dana  "),
        "{grants:?}"
    );
    assert!(
        grants[1].starts_with("127.0.0.3/32  account=dana  "),
        "{grants:?}"
    );
    // Control: an address nobody granted is still refused by both.
    for replica in [&a, &b] {
        assert_challenged(
            &get(&z, &replica.url(), &path, None, None).await,
            replica,
            None,
        );
    }
}

/// The 429 lank8s answers `client` once its anonymous limit of `limit` is used up.
fn assert_rate_limited(answer: &Answer, client: &str, limit: u32) {
    assert_eq!(answer.status, 429, "{}", answer.describe());
    let (code, message) = answer.error();
    assert_eq!(code, "TOOMANYREQUESTS");
    let expected = format!(
        "requests_per_minute limit of {limit} for anonymous clients reached by {client}/32; retry in "
    );
    assert!(message.starts_with(&expected), "{message:?}");
    // At most one emission interval (60 s / limit), rounded up to whole seconds.
    let retry: u32 = answer.header("retry-after").parse().expect("Retry-After");
    assert!(
        (1..=60u32.div_ceil(limit)).contains(&retry),
        "Retry-After {retry}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_limit_holds_across_both_replicas() {
    let redis = Redis::start().await;
    let (registry, image) = upstream(602).await;
    let limits = "[access.limits.anonymous]\nrequests_per_minute = 40\n";
    let (a, b) = start_replicas(&redis.url(), &registry.url(), limits).await;
    let path = free_manifest_path(&image);
    // Cached on both, from an address of its own.
    let primer = client_from("127.0.0.9");
    for replica in [&a, &b] {
        let answer = get(&primer, &replica.url(), &path, None, None).await;
        assert_eq!(answer.status, 200, "{}", answer.describe());
    }

    let client = client_from("127.0.0.2");
    let (mut ok, mut refused) = ([0u32; 2], 0u32);
    let started = Instant::now();
    for i in 0..120 {
        let replica = [&a, &b][i % 2];
        let answer = get(&client, &replica.url(), &path, None, None).await;
        if answer.status == 200 {
            assert_eq!(&answer.body, image.top_bytes());
            ok[i % 2] += 1;
        } else {
            assert_rate_limited(&answer, "127.0.0.2", 40);
            refused += 1;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let total = ok[0] + ok[1];
    // A burst of 40 from idle, then 40 per 60 s.
    let allowance = 40.0 + elapsed * 40.0 / 60.0;
    eprintln!(
        "{ok:?} let through ({total}), {refused} refused, in {elapsed:.2} s; allowance {allowance:.1}"
    );
    assert_eq!(total + refused, 120);
    assert!(total >= 40, "only {total} of the burst of 40 passed");
    assert!(
        f64::from(total) <= allowance + 1.0
            && (f64::from(total) - allowance).abs() <= allowance * 0.1,
        "{total} passed in {elapsed:.2} s; the shared limit allows {allowance:.1}"
    );
    assert!(
        ok[0] < 40 && ok[1] < 40 && ok[0] > 0 && ok[1] > 0,
        "each replica let through {ok:?}: the limit is not shared"
    );
    // The limit is 127.0.0.2's alone.
    let other = client_from("127.0.0.4");
    for replica in [&a, &b] {
        assert_eq!(
            get(&other, &replica.url(), &path, None, None).await.status,
            200
        );
    }
}

/// The Garage binary the object-storage tests use, if it has been built.
fn garage_binary() -> Option<std::path::PathBuf> {
    let path = std::env::var_os("LANK8S_GARAGE")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| "/var/cache/lank8s-tools/bin/garage".into());
    path.is_file().then_some(path)
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_cold_pulls_through_both_replicas_fetch_the_blob_once() {
    if garage_binary().is_none() {
        eprintln!(
            "SKIPPED: no Garage binary (LANK8S_GARAGE unset and \
             /var/cache/lank8s-tools/bin/garage missing); run scripts/garage.sh install"
        );
        return;
    }
    let redis = Redis::start().await;
    let garage = Garage::start().await;
    let registry = Registry::start().await;
    let image = TestImage::large(603, 48 * 1024 * 1024 + 77);
    image.push(&registry, "team/big", "v1").await;
    let s3 = support::storage::s3_tables(&garage, "stream");
    let (a, b) = start_replicas(&redis.url(), &registry.url(), &s3).await;
    let digest = image.largest_blob_digest().to_string();
    let path = format!("/v2/{FREE}/team/big/blobs/{digest}");

    // Four GETs at each replica, all at once.
    let mut pulls = tokio::task::JoinSet::new();
    for i in 0..8 {
        let url = format!("{}{path}", [&a, &b][i % 2].url());
        pulls.spawn(async move {
            let resp = http_client().get(&url).send().await.expect("blob GET");
            let status = resp.status();
            let body = resp.bytes().await.expect("blob body");
            (i % 2, status, body.len(), digest_of(&body))
        });
    }
    let size = image.blob(&digest).unwrap().len();
    for (replica, status, len, got) in pulls.join_all().await {
        assert_eq!(
            (status.as_u16(), len, got.as_str()),
            (200, size, digest.as_str()),
            "replica {replica}"
        );
    }

    // One replica filled (one miss); the other waited for it (joined), never fetched.
    let mut caches = Vec::new();
    for replica in [&a, &b] {
        support::storage::settle_log(replica).await;
        let lines = lines_for(replica, &path);
        for l in &lines {
            eprintln!(
                "{} {} cache={} duration_ms={}",
                replica.host(),
                l["timestamp"],
                l["cache"],
                l["duration_ms"]
            );
        }
        let mut cache: Vec<String> = lines
            .iter()
            .map(|l| l["cache"].as_str().unwrap_or("").to_string())
            .collect();
        cache.sort();
        assert_eq!(cache.len(), 4, "{lines:#?}");
        assert!(
            lines
                .iter()
                .all(|l| l["status"] == 200 && l["bytes"] == size)
        );
        caches.push(cache);
    }
    eprintln!("cache results: A {:?}, B {:?}", caches[0], caches[1]);
    registry.settle().await;
    let upstream_gets = registry.count_requests("GET", &format!("/v2/team/big/blobs/{digest}"));
    assert_eq!(
        upstream_gets, 1,
        "the blob was fetched from upstream {upstream_gets} times; cache results A {:?}, B {:?}",
        caches[0], caches[1]
    );
    let misses = |c: &Vec<String>| c.iter().filter(|r| *r == "miss").count();
    assert_eq!(misses(&caches[0]) + misses(&caches[1]), 1, "{caches:?}");
    let other = &caches[usize::from(misses(&caches[0]) == 1)];
    assert!(
        other.iter().any(|r| r == "joined"),
        "the other replica never waited on the fill: {caches:?}"
    );
    let key = support::storage::blob_key(&digest);
    assert_eq!(garage.list_objects(&key).await, vec![(key, size as u64)]);
}

/// A GET that must answer within 1.5 s.
async fn quick_get(client: &reqwest::Client, lank8s: &Lank8s, path: &str) -> Answer {
    let started = Instant::now();
    let answer = get(client, &lank8s.url(), path, None, None).await;
    let took = started.elapsed();
    assert!(
        took <= Duration::from_millis(1500),
        "{path} on {} took {took:?}",
        lank8s.host()
    );
    answer
}

/// Warnings that mention Redis.
fn redis_warnings(lank8s: &Lank8s) -> Vec<Value> {
    lank8s
        .log_lines()
        .into_iter()
        .filter(|l| l["level"] == "WARN" && l.to_string().to_lowercase().contains("redis"))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn with_redis_down_both_keep_serving_and_share_again_once_it_is_back() {
    let mut redis = Redis::start().await;
    let (registry, image) = upstream(604).await;
    let limits = "[access.limits.anonymous]\nrequests_per_minute = 20\n";
    let (a, b) = start_replicas(&redis.url(), &registry.url(), limits).await;
    add_account(a.config_path(), "erin", PASSWORD);
    let free = free_manifest_path(&image);
    let sponsor = manifest_path(image.top_digest());
    let primer = client_from("127.0.0.9");
    for replica in [&a, &b] {
        assert_eq!(
            get(&primer, &replica.url(), &free, None, None).await.status,
            200
        );
    }
    // 127.0.0.2 is granted through A; both replicas look the grant up.
    let granted = client_from("127.0.0.2");
    let token = token(&granted, &a.url(), &a.host(), ("erin", PASSWORD), REPO).await;
    let bearer = format!("Bearer {token}");
    let pulled = get(&granted, &a.url(), &sponsor, None, Some(&bearer)).await;
    assert_eq!(pulled.status, 200, "{}", pulled.describe());
    for replica in [&a, &b] {
        let opened = eventually(Duration::from_secs(5), || async {
            let answer = get(&granted, &replica.url(), &sponsor, None, None).await;
            (answer.status == 200).then_some(())
        })
        .await;
        assert!(
            opened.is_some(),
            "{} never honoured the grant",
            replica.host()
        );
    }
    assert!(redis_warnings(&a).is_empty() && redis_warnings(&b).is_empty());

    redis.stop();
    // For 3 s (beyond the 2 s caches): free pulls and the granted address's sponsor
    // pulls on both replicas, each answered 200 and quickly.
    let anonymous = client_from("127.0.0.3");
    let outage = Instant::now();
    let mut requests = 0;
    while outage.elapsed() < Duration::from_secs(3) {
        for replica in [&a, &b] {
            let answer = quick_get(&anonymous, replica, &free).await;
            assert_eq!(answer.status, 200, "free pull: {}", answer.describe());
            let answer = quick_get(&granted, replica, &sponsor).await;
            assert_eq!(answer.status, 200, "granted pull: {}", answer.describe());
            assert_eq!(&answer.body, image.top_bytes());
            requests += 2;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    for replica in [&a, &b] {
        assert_eq!(
            last_line(replica, "127.0.0.2", &sponsor).await["account"],
            "erin"
        );
    }
    // Limits hold per replica meanwhile: 127.0.0.4 spends A's 20, yet B lets it in.
    let limited = client_from("127.0.0.4");
    let started = Instant::now();
    let mut ok = 0;
    for _ in 0..30 {
        let answer = quick_get(&limited, &a, &free).await;
        match answer.status.as_u16() {
            200 => ok += 1,
            _ => assert_rate_limited(&answer, "127.0.0.4", 20),
        }
    }
    let refill = (started.elapsed().as_secs_f64() / 3.0).ceil() as u32;
    assert!((20..=20 + refill).contains(&ok), "{ok} of 30 passed on A");
    assert_eq!(quick_get(&limited, &b, &free).await.status, 200);
    requests += 31;
    // Told once, not per request.
    for replica in [&a, &b] {
        let warnings = redis_warnings(replica);
        eprintln!(
            "{} over {requests} requests without Redis, warned: {:?}",
            replica.host(),
            warnings.iter().map(|w| &w["message"]).collect::<Vec<_>>()
        );
        assert!(
            (1..=3).contains(&warnings.len()),
            "{} warned {} times about Redis over {requests} requests: {warnings:#?}",
            replica.host(),
            warnings.len()
        );
    }

    // Redis is back, empty (it keeps nothing on disk): the account is added again, and
    // a grant earned through A opens B again.
    redis.restart().await;
    add_account(a.config_path(), "erin", PASSWORD);
    let back = Instant::now();
    let newcomer = client_from("127.0.0.5");
    let shared = eventually(Duration::from_secs(10), || async {
        let login = login(&newcomer, &a.url(), &a.host(), ("erin", PASSWORD), REPO).await;
        let token = login.json()["token"].as_str()?.to_string();
        let auth = format!("Bearer {token}");
        let pulled = get(&newcomer, &a.url(), &sponsor, None, Some(&auth)).await;
        (pulled.status == 200).then_some(())?;
        let on_b = get(&newcomer, &b.url(), &sponsor, None, None).await;
        (on_b.status == 200).then_some(())
    })
    .await;
    assert!(
        shared.is_some(),
        "no shared grant 10 s after Redis came back:\n{}",
        b.log()
    );
    eprintln!("grants shared again {:?} after the restart", back.elapsed());
    // And a limit: 127.0.0.6 spends its 20 on A, and B refuses it.
    let spender = client_from("127.0.0.6");
    for _ in 0..20 {
        assert_eq!(quick_get(&spender, &a, &free).await.status, 200);
    }
    assert_rate_limited(&quick_get(&spender, &b, &free).await, "127.0.0.6", 20);
    for replica in [&a, &b] {
        let back = replica
            .wait_for_log_line(Duration::from_secs(5), |l| {
                l["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("redis answers again"))
            })
            .await;
        assert!(
            back.is_some(),
            "{} never said Redis was back",
            replica.host()
        );
    }
}
