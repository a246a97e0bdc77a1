//! Helpers shared by the regional dispatch test binaries (dispatch, dispatch_probes): a test image in a real registry, a "CDN" on 127.0.0.2 serving blobs under their store keys, lank8s configured with `[dispatch]` targets and regions behind a trusted proxy, blob requests made as a claimed client address, and request log lines read key by key, so that a key written twice is caught rather than silently collapsed.
// Each test binary uses only part of these helpers.
#![allow(dead_code)]

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use bytes::Bytes;
use reqwest::header::HeaderMap;
use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::{Value, json};

use crate::support::storage::{blob_key, registry_table, s3_tables, settle_log};
use crate::support::{FaultUpstream, Garage, Lank8s, Registry, TestImage, eventually};

/// The repository the test image is pushed to and pulled from.
pub const REPO: &str = "dispatch/app";
/// The image's one layer: 3 MiB and a few bytes.
pub const LAYER_SIZE: usize = 3 * 1024 * 1024 + 17;
/// lank8s trusts the test (on 127.0.0.1) to name the client in `X-Forwarded-For`.
pub const TRUST_TEST: &str = "trusted_proxies = [\"127.0.0.1\"]";
/// A network whose region sends clients to the CDN.
pub const CDN_CLIENT: &str = "192.0.2.10";
/// A network whose region sends clients to the object store.
pub const STORE_CLIENT: &str = "198.51.100.10";
/// An address no region names: streamed by lank8s (mode "stream").
pub const OTHER_CLIENT: &str = "203.0.113.1";

/// A registry holding a small image with one 3 MiB layer at [`REPO`]`:v1`.
pub async fn registry_with_image(seed: u64) -> (Registry, TestImage) {
    let registry = Registry::start().await;
    let image = TestImage::large(seed, LAYER_SIZE);
    image.push(&registry, REPO, "v1").await;
    (registry, image)
}

/// The "CDN": a fake HTTP server on 127.0.0.2, another host from the test's
/// point of view, that serves only what [`cdn_put`] gives it.
pub async fn start_cdn() -> FaultUpstream {
    FaultUpstream::start_on(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2))).await
}

/// `/cdn/<key>`: where the CDN keeps a blob.
pub fn cdn_path(digest: &str) -> String {
    format!("/cdn/{}", blob_key(digest))
}

/// The CDN target's URL template.
pub fn cdn_template(cdn: &FaultUpstream) -> String {
    format!("{}/cdn/{{key}}", cdn.url())
}

/// The URL lank8s redirects to for `digest` on `cdn`.
pub fn cdn_url(cdn: &FaultUpstream, digest: &str) -> String {
    format!("{}{}", cdn.url(), cdn_path(digest))
}

/// The CDN holds `digest` of `image` from now on.
pub fn cdn_put(cdn: &FaultUpstream, image: &TestImage, digest: &str) {
    let bytes = image.blob(digest).expect("a blob of the image").clone();
    cdn.put(&cdn_path(digest), "application/octet-stream", bytes);
}

/// The digests of the image's config and layer, in that order.
pub fn config_and_layer(image: &TestImage) -> (String, String) {
    let layer = image.largest_blob_digest().to_string();
    let config = (image.blobs.iter())
        .map(|(d, _)| d.clone())
        .find(|d| *d != layer)
        .expect("the image has a config blob");
    (config, layer)
}

fn toml_string(s: &str) -> String {
    serde_json::to_string(s).expect("string to JSON")
}

fn toml_list(items: &[&str]) -> String {
    let items: Vec<String> = items.iter().map(|s| toml_string(s)).collect();
    format!("[{}]", items.join(", "))
}

/// `[[dispatch.targets]]` for each (name, url template) and `[[dispatch.regions]]`
/// for each (networks, target names).
pub fn dispatch_tables(targets: &[(&str, &str)], regions: &[(&[&str], &[&str])]) -> String {
    let mut tables = String::new();
    for (name, url) in targets {
        tables.push_str(&format!(
            "[[dispatch.targets]]\nname = {}\nurl = {}\n",
            toml_string(name),
            toml_string(url)
        ));
    }
    for (networks, names) in regions {
        tables.push_str(&format!(
            "[[dispatch.regions]]\nnetworks = {}\ntargets = {}\n",
            toml_list(networks),
            toml_list(names)
        ));
    }
    tables
}

/// lank8s in front of `registry`, with `top_level` keys (e.g. [`TRUST_TEST`]), its
/// cache on `garage` when given (else on local disk), mode "stream", and `dispatch`
/// from [`dispatch_tables`].
pub async fn start_mirror(
    registry: &Registry,
    garage: Option<&Garage>,
    top_level: &str,
    dispatch: &str,
) -> Lank8s {
    let storage = garage.map(|g| s3_tables(g, "stream")).unwrap_or_default();
    let tables = format!("{}{storage}{dispatch}", registry_table(&registry.url()));
    Lank8s::start_with(top_level, &tables).await
}

/// An answer, body read in full, and how long its headers took.
pub struct Answer {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub elapsed: Duration,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The `Location` of a 307 with an empty body; panics on anything else.
    pub fn location(&self) -> &str {
        assert_eq!(
            (self.status, self.body.len()),
            (307, 0),
            "not an empty 307: {:?}",
            self.headers
        );
        self.header("location").expect("a 307 has a Location")
    }
}

/// `method` `url` with `headers`, never following a redirect; at most 60 s.
pub async fn send(method: &str, url: &str, headers: &[(&str, &str)]) -> Answer {
    let client = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(60))
        .build()
        .expect("build reqwest client");
    let method = reqwest::Method::from_bytes(method.as_bytes()).expect("HTTP method");
    let mut request = client.request(method, url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let started = Instant::now();
    let response = (request.send().await).unwrap_or_else(|e| panic!("{url}: {e}"));
    let elapsed = started.elapsed();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = (response.bytes().await).unwrap_or_else(|e| panic!("body of {url}: {e}"));
    Answer {
        status,
        headers,
        body,
        elapsed,
    }
}

/// `/v2/<REPO>/blobs/<digest>` on lank8s.
pub fn blob_url(lank8s: &Lank8s, digest: &str) -> String {
    format!("{}/v2/{REPO}/blobs/{digest}", lank8s.url())
}

/// GET of a blob through lank8s as `client` (sent as `X-Forwarded-For`), or as
/// the test itself when `None`.
pub async fn get_blob(lank8s: &Lank8s, digest: &str, client: Option<&str>) -> Answer {
    let forwarded: Vec<(&str, &str)> = client.map(|c| ("x-forwarded-for", c)).into_iter().collect();
    send("GET", &blob_url(lank8s, digest), &forwarded).await
}

/// Follows a redirect's `Location` as a client would (no credentials) and
/// returns the body, which must come with a 200.
pub async fn follow(location: &str) -> Bytes {
    let answer = send("GET", location, &[]).await;
    assert_eq!(answer.status, 200, "GET {location}: {:?}", answer.body);
    answer.body
}

/// Waits (at most 30 s) until `garage` holds `digest` of `image` under its key
/// with its size: a fill's upload completes just after its client has the bytes.
pub async fn wait_stored(garage: &Garage, image: &TestImage, digest: &str) {
    let key = blob_key(digest);
    let want = vec![(key.clone(), image.blob(digest).unwrap().len() as u64)];
    let stored = eventually(Duration::from_secs(30), || {
        let want = want.clone();
        let key = key.clone();
        async move { (garage.list_objects(&key).await == want).then_some(()) }
    })
    .await;
    assert!(stored.is_some(), "{key} was not stored within 30 s");
}

/// One JSON log line, every key in the order written, duplicates kept.
pub struct LogLine {
    pub raw: String,
    fields: Vec<(String, Value)>,
}

struct Fields(Vec<(String, Value)>);

impl<'de> Deserialize<'de> for Fields {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Fields, D::Error> {
        struct Entries;
        impl<'de> Visitor<'de> for Entries {
            type Value = Fields;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Fields, A::Error> {
                let mut fields = Vec::new();
                while let Some(entry) = map.next_entry::<String, Value>()? {
                    fields.push(entry);
                }
                Ok(Fields(fields))
            }
        }
        deserializer.deserialize_map(Entries)
    }
}

impl LogLine {
    fn parse(raw: &str) -> Option<LogLine> {
        let Fields(fields) = serde_json::from_str(raw).ok()?;
        Some(LogLine {
            raw: raw.to_string(),
            fields,
        })
    }

    /// The value of `key`, which must appear exactly once: a JSON consumer
    /// (jq, serde_json, Python) keeps only one value of a repeated key.
    pub fn field(&self, key: &str) -> &Value {
        let values: Vec<&Value> = (self.fields.iter())
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v)
            .collect();
        assert_eq!(
            values.len(),
            1,
            "request log line has key {key:?} {} times, with values {values:?}; a JSON \
             reader sees only one of them: {}",
            values.len(),
            self.raw
        );
        values[0]
    }

    /// What a dispatch test checks of a blob request's line.
    pub fn summary(&self) -> Value {
        json!({
            "status": self.field("status"),
            "cache": self.field("cache"),
            "redirect": self.field("redirect"),
            "redirect_to": self.field("redirect_to"),
            "client": self.field("client"),
        })
    }
}

/// The per-request lines lank8s has written so far.
pub fn request_lines(lank8s: &Lank8s) -> Vec<LogLine> {
    (lank8s.log().lines())
        .filter_map(LogLine::parse)
        .filter(|l| {
            l.fields
                .iter()
                .any(|(k, v)| k == "message" && v == "request")
        })
        .collect()
}

/// The request lines for `method` of `digest`'s blob, in order, once there are
/// `count` of them (waiting at most 10 s, then settling so that no later line
/// is missed); panics if there are not exactly `count`.
pub async fn blob_lines(lank8s: &Lank8s, method: &str, digest: &str, count: usize) -> Vec<LogLine> {
    let path = format!("/v2/{REPO}/blobs/{digest}");
    let matching = || {
        (request_lines(lank8s).into_iter())
            .filter(|l| l.field("method") == method && l.field("path") == path.as_str())
            .collect::<Vec<_>>()
    };
    let enough = eventually(Duration::from_secs(10), || {
        let done = matching().len() >= count;
        async move { done.then_some(()) }
    })
    .await;
    settle_log(lank8s).await;
    let lines = matching();
    assert!(
        enough.is_some() && lines.len() == count,
        "{method} {path}: {} request lines, not {count}:\n{}",
        lines.len(),
        lank8s.log()
    );
    lines
}

/// The summaries of [`blob_lines`].
pub async fn blob_summaries(
    lank8s: &Lank8s,
    method: &str,
    digest: &str,
    count: usize,
) -> Vec<Value> {
    let lines = blob_lines(lank8s, method, digest, count).await;
    lines.iter().map(LogLine::summary).collect()
}

/// The summary a dispatch test expects.
pub fn expect(status: u16, cache: &str, target: &str, client: &str) -> Value {
    json!({
        "status": status,
        "cache": cache,
        "redirect": !target.is_empty(),
        "redirect_to": target,
        "client": client,
    })
}
