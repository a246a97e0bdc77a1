//! The Redis state store against a real redis-server: every operation, expiry and
//! scan; limits and counters shared by two handles (two replicas); and an outage,
//! during which counters stay local and fast, then sharing again once Redis is back.

mod support;

use std::ops::Range;
use std::path::Path;
use std::time::{Duration, Instant};

use lank8s::state::{RateLimit, State, StateError, StateKind};
use support::free_port;
use support::redis::Redis;

/// How long the store leaves Redis alone after a failure, plus scheduling slack.
const BREAKER_INTERVAL: Duration = Duration::from_millis(2200);

async fn open(url: &str) -> State {
    // The data directory is not used with Redis.
    match State::open(Some(url), Path::new("/nonexistent/lank8s")).await {
        Ok(state) => state,
        Err(e) => panic!("open {url}: {e}"),
    }
}

/// The value of a key as stored in Redis itself, bypassing the store.
async fn raw_get(redis: &Redis, key: &str) -> Option<Vec<u8>> {
    let client = redis::Client::open(redis.url()).expect("client");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    redis::cmd("GET")
        .arg(key)
        .query_async(&mut conn)
        .await
        .expect("GET")
}

fn limit(count: u32, period: Duration) -> RateLimit {
    RateLimit { count, period }
}

#[tokio::test]
async fn open_succeeds_when_nothing_listens() {
    let url = format!("redis://127.0.0.1:{}/", free_port());
    let state = open(&url).await;
    assert_eq!(state.kind(), StateKind::Redis);

    let started = Instant::now();
    let err = state.get("k").await.expect_err("nothing listens");
    assert!(err.to_string().starts_with("redis: "), "{err}");
    assert_eq!(state.add("c", 2, Duration::from_secs(10)).await, 2);
    assert!(
        state
            .rate("r", limit(1, Duration::from_secs(60)), 1)
            .await
            .allowed
    );
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn open_refuses_a_malformed_url() {
    let err = State::open(Some("http://127.0.0.1/"), Path::new("/nonexistent"))
        .await
        .expect_err("not a redis URL");
    assert!(matches!(err, StateError::RedisUrl(_)), "{err}");
}

#[tokio::test]
async fn durable_operations_and_expiry() {
    let redis = Redis::start().await;
    let state = open(&redis.url()).await;
    let short = Some(Duration::from_millis(200));

    assert_eq!(state.get("a").await.expect("get"), None);
    state.put("a", b"1", None).await.expect("put");
    state.put("b", b"\x00binary\xff", short).await.expect("put");
    assert_eq!(state.get("a").await.expect("get"), Some(b"1".to_vec()));
    assert_eq!(
        state.get("b").await.expect("get"),
        Some(b"\x00binary\xff".to_vec())
    );
    assert_eq!(raw_get(&redis, "lank8s:a").await, Some(b"1".to_vec()));

    assert!(state.put_new("lock", b"me", short).await.expect("put_new"));
    assert!(!state.put_new("lock", b"you", short).await.expect("put_new"));

    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(state.get("b").await.expect("get"), None);
    assert!(
        state
            .put_new("lock", b"you", None)
            .await
            .expect("put_new after expiry")
    );

    assert!(state.delete("a").await.expect("delete"));
    assert!(!state.delete("a").await.expect("delete again"));
    assert_eq!(state.get("a").await.expect("get"), None);
}

#[tokio::test]
async fn delete_if_and_renew_if_compare_values() {
    let redis = Redis::start().await;
    let state = open(&redis.url()).await;
    let ttl = Duration::from_millis(300);
    state.put("lock", b"me", Some(ttl)).await.expect("put");

    assert!(!state.delete_if("lock", b"you").await.expect("delete_if"));
    assert!(!state.renew_if("lock", b"you", ttl).await.expect("renew_if"));
    assert!(
        !state
            .renew_if("absent", b"me", ttl)
            .await
            .expect("renew_if")
    );

    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(state.renew_if("lock", b"me", ttl).await.expect("renew_if"));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(state.get("lock").await.expect("get"), Some(b"me".to_vec()));

    assert!(state.delete_if("lock", b"me").await.expect("delete_if"));
    assert_eq!(state.get("lock").await.expect("get"), None);
}

#[tokio::test]
async fn scan_by_prefix_is_sorted_literal_and_skips_expired() {
    let redis = Redis::start().await;
    let state = open(&redis.url()).await;
    for key in [
        "acct/c", "acct/a", "acct/b", "acctx", "grant/a", "g*/x", "g*",
    ] {
        state.put(key, key.as_bytes(), None).await.expect("put");
    }
    let short = Some(Duration::from_millis(100));
    state.put("acct/aa", b"short", short).await.expect("put");
    tokio::time::sleep(Duration::from_millis(200)).await;

    let found = state.scan("acct/").await.expect("scan");
    let keys: Vec<&str> = found.iter().map(|(key, _)| key.as_str()).collect();
    assert_eq!(keys, ["acct/a", "acct/b", "acct/c"]);
    assert_eq!(found[2].1, b"acct/c");

    // A glob character in the prefix is a literal, not a wildcard.
    let found = state.scan("g*").await.expect("scan");
    let keys: Vec<&str> = found.iter().map(|(key, _)| key.as_str()).collect();
    assert_eq!(keys, ["g*", "g*/x"]);
    assert!(state.scan("zzz").await.expect("scan none").is_empty());
}

#[tokio::test]
async fn scan_sees_many_keys() {
    let redis = Redis::start().await;
    let state = open(&redis.url()).await;
    for i in 0..1200 {
        state
            .put(&format!("many/{i:05}"), b"x", None)
            .await
            .expect("put");
    }
    let found = state.scan("many/").await.expect("scan");
    assert_eq!(found.len(), 1200);
    assert!(found.windows(2).all(|pair| pair[0].0 < pair[1].0));
}

/// Two handles stand for two replicas sharing one Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rate_admits_exactly_count_across_two_replicas() {
    let redis = Redis::start().await;
    let replicas = [open(&redis.url()).await, open(&redis.url()).await];
    let limit = limit(50, Duration::from_secs(60));

    let mut calls = Vec::new();
    for state in &replicas {
        for _ in 0..100 {
            let state = state.clone();
            calls.push(tokio::spawn(async move {
                state.rate("rate/ip", limit, 1).await
            }));
        }
    }
    let mut allowed = 0;
    for call in calls {
        allowed += usize::from(call.await.expect("task").allowed);
    }
    assert_eq!(allowed, 50);

    // A peek answers like a request would, and consumes nothing.
    let peek = replicas[1].rate("rate/ip", limit, 0).await;
    assert!(!peek.allowed);
    // One request's worth (1.2 s) minus the time spent since the burst.
    assert!(
        peek.retry_after > Duration::from_millis(600)
            && peek.retry_after <= Duration::from_millis(1200),
        "{:?}",
        peek.retry_after
    );
    assert!(replicas[0].rate("rate/other", limit, 0).await.allowed);
    assert!(replicas[0].rate("rate/other", limit, 50).await.allowed);
    assert!(!replicas[1].rate("rate/other", limit, 1).await.allowed);

    let too_big = replicas[0].rate("rate/big", limit, 51).await;
    assert!(!too_big.allowed);
    assert_eq!(too_big.retry_after, Duration::from_secs(60));
    let never = RateLimit {
        count: 0,
        period: Duration::from_secs(5),
    };
    let none = replicas[0].rate("rate/none", never, 1).await;
    assert!(!none.allowed);
    assert_eq!(none.retry_after, Duration::from_secs(5));
}

#[tokio::test]
async fn rate_refills_at_the_steady_rate() {
    let redis = Redis::start().await;
    let state = open(&redis.url()).await;
    let limit = limit(5, Duration::from_millis(500));
    for _ in 0..5 {
        assert!(state.rate("rate/steady", limit, 1).await.allowed);
    }
    let refused = state.rate("rate/steady", limit, 1).await;
    assert!(!refused.allowed);
    tokio::time::sleep(refused.retry_after + Duration::from_millis(20)).await;
    assert!(state.rate("rate/steady", limit, 1).await.allowed);
    assert!(!state.rate("rate/steady", limit, 1).await.allowed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn add_from_two_replicas_sums_and_expires() {
    let redis = Redis::start().await;
    let replicas = [open(&redis.url()).await, open(&redis.url()).await];
    let ttl = Duration::from_secs(30);

    let mut calls = Vec::new();
    for state in &replicas {
        for _ in 0..50 {
            let state = state.clone();
            calls.push(tokio::spawn(
                async move { state.add("conn/ip", 1, ttl).await },
            ));
        }
    }
    for call in calls {
        call.await.expect("task");
    }
    assert_eq!(replicas[1].add("conn/ip", 0, ttl).await, 100);
    assert_eq!(replicas[0].add("conn/ip", -100, ttl).await, 0);

    assert_eq!(
        replicas[0]
            .add("conn/short", 3, Duration::from_millis(200))
            .await,
        3
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(replicas[1].add("conn/short", 1, ttl).await, 1);
}

/// Rounds of add + rate + get through `state` while Redis is out: counters answer from
/// this process (continuing across calls), durable calls fail, each round in well under
/// a second. Returns how long the rounds took.
async fn during_outage(state: &State, rounds: Range<usize>) -> Duration {
    let limit = limit(3, Duration::from_secs(60));
    let started = Instant::now();
    for round in rounds {
        let call = Instant::now();
        let count = state.add("out/count", 1, Duration::from_secs(60)).await;
        assert_eq!(count, round as i64 + 1);
        let decision = state.rate("out/rate", limit, 1).await;
        assert_eq!(decision.allowed, round < 3, "round {round}");
        assert!(state.get("out/key").await.is_err());
        assert!(
            call.elapsed() < Duration::from_secs(1),
            "{:?}",
            call.elapsed()
        );
    }
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_outage_falls_back_locally_then_shares_again() {
    let mut redis = Redis::start().await;
    let a = open(&redis.url()).await;
    let b = open(&redis.url()).await;
    a.put("before", b"1", None).await.expect("put");
    assert_eq!(b.get("before").await.expect("get"), Some(b"1".to_vec()));

    redis.stop();
    for state in [&a, &b] {
        // The first round meets the failure; the next 20 do not ask Redis at all.
        during_outage(state, 0..1).await;
        let rest = during_outage(state, 1..21).await;
        assert!(rest < Duration::from_secs(1), "20 rounds took {rest:?}");
    }

    redis.restart().await;
    tokio::time::sleep(BREAKER_INTERVAL).await;
    a.put("after", b"2", None).await.expect("put after restart");
    assert_eq!(
        b.get("after").await.expect("get after restart"),
        Some(b"2".to_vec())
    );
    assert_eq!(a.add("shared", 1, Duration::from_secs(30)).await, 1);
    assert_eq!(b.add("shared", 1, Duration::from_secs(30)).await, 2);
}

/// A Redis that accepts connections but never answers costs one deadline, after which
/// the breaker keeps requests away from it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stalled_redis_costs_one_deadline_then_nothing() {
    let redis = Redis::start().await;
    let state = open(&redis.url()).await;
    assert_eq!(
        state.add("stall/count", 1, Duration::from_secs(60)).await,
        1
    );

    redis.pause();
    let first = Instant::now();
    assert_eq!(
        state.add("stall/count", 1, Duration::from_secs(60)).await,
        1
    );
    let first = first.elapsed();
    assert!(first < Duration::from_secs(1), "first call took {first:?}");

    let rest = Instant::now();
    for _ in 0..20 {
        state.add("stall/count", 1, Duration::from_secs(60)).await;
        assert!(state.get("stall/key").await.is_err());
    }
    assert!(
        rest.elapsed() < Duration::from_millis(200),
        "{:?}",
        rest.elapsed()
    );

    redis.resume();
    tokio::time::sleep(BREAKER_INTERVAL).await;
    // Back on Redis (this process alone would say 23). The add that timed out may
    // still have run once Redis woke up, so Redis says 2 or 3.
    let count = state.add("stall/count", 1, Duration::from_secs(60)).await;
    assert!(matches!(count, 2 | 3), "{count}");
}
