//! A real S3-compatible object store for the object-storage tests: a single-node Garage (AGPL, run only as a separate process) on loopback, with one bucket and one key, a minimal AWS SigV4 client, and its request log parsed for assertions.
//!
//! The binary comes from `LANK8S_GARAGE`, else `/var/cache/lank8s-tools/bin/garage`;
//! `scripts/garage.sh install` builds it once. The configuration is written for Garage
//! 2.x (`replication_factor`, the `/v2/` admin API). Setup goes through the admin HTTP
//! API rather than the `garage` CLI: every CLI call is another process that opens an RPC
//! connection (~50 ms) and prints text meant for people, where the admin API answers JSON.
//!
//! Garage logs one line per API request when the request arrives (not when it ends),
//! at `INFO` under the target `garage_api_common::generic_server`:
//! `127.0.0.1:41234 (key GK…) GET /lank8s/some/key`. The key is named only
//! for header-signed requests, not for presigned URLs. Successful responses are not
//! logged; errors are, as a second line `error 404 Not Found, Key not found in response to
//! <same request>`.
//! [`Garage::s3_requests`] parses the first kind, [`Garage::s3_errors`] the second.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use rand::Rng;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tempfile::TempDir;

const REGION: &str = "garage";
const BUCKET: &str = "lank8s";
const KEY_NAME: &str = "lank8s-test";
/// Start-up, layout and first successful S3 request; a cold start takes well under a second.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_BINARY: &str = "/var/cache/lank8s-tools/bin/garage";
/// The tracing target of the line Garage logs for every API request.
const REQUEST_LOG_TARGET: &str = "garage_api_common::generic_server: ";

/// One S3 request as Garage logged it on arrival.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct S3Request {
    pub method: String,
    /// The request URI as sent: `/<bucket>/<key>` (percent-encoded) and any query string.
    pub path: String,
    /// The access key of a header-signed request; `None` for presigned and anonymous ones.
    pub key_id: Option<String>,
}

/// An S3 request Garage answered with an error (it logs only errors, not successes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct S3Error {
    pub status: u16,
    pub request: S3Request,
}

pub struct Garage {
    dir: TempDir,
    binary: PathBuf,
    config_path: PathBuf,
    log_path: PathBuf,
    s3_port: u16,
    admin_port: u16,
    admin_token: String,
    access_key_id: String,
    secret_access_key: String,
    child: Option<Child>,
}

impl Garage {
    /// Starts a fresh single-node Garage with bucket [`Garage::bucket`] and a key that may
    /// read, write and own it. Panics (with Garage's log) if it does not come up.
    pub async fn start() -> Garage {
        let binary = std::env::var_os("LANK8S_GARAGE")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_BINARY));
        if !binary.is_file() {
            panic!(
                "Garage binary {} not found: run `scripts/garage.sh install` \
                 (or set LANK8S_GARAGE to a garage 2.x binary)",
                binary.display()
            );
        }
        let dir = tempfile::Builder::new()
            .prefix("lank8s-garage-")
            .tempdir()
            .expect("create garage tempdir");
        let s3_port = super::free_port();
        let admin_port = super::free_port();
        let rpc_port = super::free_port();
        let mut rng = rand::thread_rng();
        let rpc_secret = hex::encode(rng.r#gen::<[u8; 32]>());
        let admin_token = hex::encode(rng.r#gen::<[u8; 16]>());
        let config_path = dir.path().join("garage.toml");
        // No compression and no scrub: tests want plain, quiet storage.
        let config = format!(
            "metadata_dir = \"{meta}\"\n\
             data_dir = \"{data}\"\n\
             db_engine = \"lmdb\"\n\
             replication_factor = 1\n\
             compression_level = \"none\"\n\
             disable_scrub = true\n\
             rpc_bind_addr = \"127.0.0.1:{rpc_port}\"\n\
             rpc_public_addr = \"127.0.0.1:{rpc_port}\"\n\
             rpc_secret = \"{rpc_secret}\"\n\
             \n\
             [s3_api]\n\
             api_bind_addr = \"127.0.0.1:{s3_port}\"\n\
             s3_region = \"{REGION}\"\n\
             root_domain = \".s3.garage.localhost\"\n\
             \n\
             [admin]\n\
             api_bind_addr = \"127.0.0.1:{admin_port}\"\n\
             admin_token = \"{admin_token}\"\n",
            meta = dir.path().join("meta").display(),
            data = dir.path().join("data").display(),
        );
        std::fs::write(&config_path, config).expect("write garage config");
        let mut garage = Garage {
            log_path: dir.path().join("garage.log"),
            dir,
            binary,
            config_path,
            s3_port,
            admin_port,
            admin_token,
            access_key_id: String::new(),
            secret_access_key: String::new(),
            child: None,
        };
        garage.spawn(true).await;
        garage
    }

    async fn spawn(&mut self, first: bool) {
        let log = super::append_log(&self.log_path);
        let mut cmd = Command::new(&self.binary);
        cmd.arg("-c")
            .arg(&self.config_path)
            .arg("server")
            .env("RUST_LOG", "netapp=info,garage=info")
            .env("NO_COLOR", "1")
            .env_remove("GARAGE_LOG_FORMAT")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log);
        super::scrub_proxy_env(&mut cmd);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", self.binary.display()));
        self.child = Some(child);
        let deadline = Instant::now() + READY_TIMEOUT;
        if let Err(e) = self.become_ready(first, deadline).await {
            super::kill_child(&mut self.child);
            panic!("garage did not start: {e}; log:\n{}", self.log());
        }
    }

    /// Waits for the admin API, lays out the cluster, key and bucket on the first start,
    /// then waits until a signed S3 request on the bucket succeeds.
    async fn become_ready(&mut self, first: bool, deadline: Instant) -> Result<(), String> {
        let status = self
            .admin_retrying("GET", "GetClusterStatus", None, deadline)
            .await?;
        if first {
            let node = status["nodes"][0]["id"]
                .as_str()
                .ok_or_else(|| format!("no node id in {status}"))?
                .to_string();
            let role = json!({"id": node, "zone": "dc1", "capacity": 1_000_000_000u64, "tags": []});
            self.admin(
                "POST",
                "UpdateClusterLayout",
                Some(json!({"roles": [role]})),
            )
            .await?;
            self.admin("POST", "ApplyClusterLayout", Some(json!({"version": 1})))
                .await?;
            let key = self
                .admin_retrying(
                    "POST",
                    "CreateKey",
                    Some(json!({"name": KEY_NAME})),
                    deadline,
                )
                .await?;
            let field = |name: &str| {
                key[name]
                    .as_str()
                    .map(str::to_string)
                    .ok_or_else(|| format!("no {name} in {key}"))
            };
            self.access_key_id = field("accessKeyId")?;
            self.secret_access_key = field("secretAccessKey")?;
            let bucket = self
                .admin_retrying(
                    "POST",
                    "CreateBucket",
                    Some(json!({"globalAlias": BUCKET})),
                    deadline,
                )
                .await?;
            let bucket_id = bucket["id"]
                .as_str()
                .ok_or_else(|| format!("no bucket id in {bucket}"))?;
            let grant = json!({
                "bucketId": bucket_id,
                "accessKeyId": self.access_key_id,
                "permissions": {"read": true, "write": true, "owner": true},
            });
            self.admin("POST", "AllowBucketKey", Some(grant)).await?;
        }
        // The S3 API itself, through the key: proves layout, bucket and grant are in place.
        let mut last;
        loop {
            self.check_running()?;
            match self
                .send(
                    "GET",
                    "",
                    &[("list-type", "2"), ("max-keys", "1")],
                    Vec::new(),
                )
                .await
            {
                Ok(resp) if resp.status().is_success() => return Ok(()),
                Ok(resp) => {
                    last = format!(
                        "ListObjectsV2 answered {}: {}",
                        resp.status(),
                        resp.text().await.unwrap_or_default()
                    )
                }
                Err(e) => last = format!("ListObjectsV2: {e}"),
            }
            if Instant::now() > deadline {
                return Err(format!("S3 API not ready: {last}"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn check_running(&mut self) -> Result<(), String> {
        match self.child.as_mut().map(Child::try_wait) {
            Some(Ok(Some(status))) => Err(format!("garage exited with {status}")),
            Some(Ok(None)) => Ok(()),
            Some(Err(e)) => Err(format!("garage wait: {e}")),
            None => Err("garage is stopped".into()),
        }
    }

    /// One admin API v2 call; its JSON answer on success.
    async fn admin(&self, method: &str, op: &str, body: Option<Value>) -> Result<Value, String> {
        let url = format!("http://127.0.0.1:{}/v2/{op}", self.admin_port);
        let mut req = client(Duration::from_secs(10))
            .request(method.parse().expect("method"), &url)
            .bearer_auth(&self.admin_token);
        if let Some(body) = body {
            req = req
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        let resp = req.send().await.map_err(|e| format!("{op}: {e}"))?;
        let status = resp.status();
        let text = resp.text().await.map_err(|e| format!("{op}: {e}"))?;
        if !status.is_success() {
            return Err(format!("{op} answered {status}: {text}"));
        }
        serde_json::from_str(&text).map_err(|e| format!("{op}: {e}: {text}"))
    }

    /// [`Garage::admin`] retried until `deadline`, for calls made while Garage is starting.
    async fn admin_retrying(
        &mut self,
        method: &str,
        op: &str,
        body: Option<Value>,
        deadline: Instant,
    ) -> Result<Value, String> {
        loop {
            self.check_running()?;
            match self.admin(method, op, body.clone()).await {
                Ok(v) => return Ok(v),
                Err(e) if Instant::now() > deadline => return Err(e),
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }

    /// `http://127.0.0.1:<port>`; buckets are addressed path-style (`/<bucket>/<key>`).
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.s3_port)
    }

    pub fn port(&self) -> u16 {
        self.s3_port
    }

    pub fn region(&self) -> &str {
        REGION
    }

    pub fn bucket(&self) -> &str {
        BUCKET
    }

    pub fn access_key_id(&self) -> &str {
        &self.access_key_id
    }

    pub fn secret_access_key(&self) -> &str {
        &self.secret_access_key
    }

    /// The admin API (`/v2/...`, bearer [`Garage::admin_token`]).
    pub fn admin_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.admin_port)
    }

    pub fn admin_token(&self) -> &str {
        &self.admin_token
    }

    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// Sends [`Garage::request`]; the response is returned whatever its status.
    pub async fn send(
        &self,
        method: &str,
        key: &str,
        query: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Result<reqwest::Response, reqwest::Error> {
        self.request(method, key, query, body).send().await
    }

    /// A header-signed (SigV4) S3 request on `key` in the bucket (`""` for the bucket
    /// itself), ready to send. `query` pairs are sent and signed as given; headers added
    /// to the builder (`Range`, say) are sent unsigned, which S3 accepts.
    pub fn request(
        &self,
        method: &str,
        key: &str,
        query: &[(&str, &str)],
        body: Vec<u8>,
    ) -> reqwest::RequestBuilder {
        let path = object_path(BUCKET, key);
        let canonical_query = canonical_query(query);
        let payload_hash = hex::encode(Sha256::digest(&body));
        let (amz_date, date) = amz_dates(SystemTime::now());
        let host = format!("127.0.0.1:{}", self.s3_port);
        let signed_headers = "host;x-amz-content-sha256;x-amz-date";
        let canonical_request = format!(
            "{method}\n{path}\n{canonical_query}\n\
             host:{host}\nx-amz-content-sha256:{payload_hash}\nx-amz-date:{amz_date}\n\n\
             {signed_headers}\n{payload_hash}"
        );
        let scope = format!("{date}/{REGION}/s3/aws4_request");
        let signature = self.signature(&canonical_request, &amz_date, &date, &scope);
        let authorization = format!(
            "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={signed_headers}, Signature={signature}",
            self.access_key_id
        );
        let mut url = format!("{}{path}", self.endpoint());
        if !canonical_query.is_empty() {
            url = format!("{url}?{canonical_query}");
        }
        client(Duration::from_secs(120))
            .request(method.parse().expect("method"), url)
            .header("x-amz-date", &amz_date)
            .header("x-amz-content-sha256", &payload_hash)
            .header("authorization", authorization)
            .body(body)
    }

    /// A presigned `GET` URL for `key`, valid for `expires` (as a client would follow in a
    /// redirect: no headers needed).
    pub fn presigned_get_url(&self, key: &str, expires: Duration) -> String {
        self.presigned_url_at("GET", key, expires, SystemTime::now())
    }

    /// A presigned URL for `method` on `key`, signed as of `at` (for expiry tests).
    pub fn presigned_url_at(
        &self,
        method: &str,
        key: &str,
        expires: Duration,
        at: SystemTime,
    ) -> String {
        let path = object_path(BUCKET, key);
        let (amz_date, date) = amz_dates(at);
        let scope = format!("{date}/{REGION}/s3/aws4_request");
        let credential = format!("{}/{scope}", self.access_key_id);
        let expires = expires.as_secs().to_string();
        let query = canonical_query(&[
            ("X-Amz-Algorithm", "AWS4-HMAC-SHA256"),
            ("X-Amz-Credential", &credential),
            ("X-Amz-Date", &amz_date),
            ("X-Amz-Expires", &expires),
            ("X-Amz-SignedHeaders", "host"),
        ]);
        let host = format!("127.0.0.1:{}", self.s3_port);
        let canonical_request =
            format!("{method}\n{path}\n{query}\nhost:{host}\n\nhost\nUNSIGNED-PAYLOAD");
        let signature = self.signature(&canonical_request, &amz_date, &date, &scope);
        format!(
            "{}{path}?{query}&X-Amz-Signature={signature}",
            self.endpoint()
        )
    }

    fn signature(
        &self,
        canonical_request: &str,
        amz_date: &str,
        date: &str,
        scope: &str,
    ) -> String {
        let string_to_sign = format!(
            "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
            hex::encode(Sha256::digest(canonical_request.as_bytes()))
        );
        let key = signing_key(&self.secret_access_key, date, REGION, "s3");
        hex::encode(hmac_sha256(&key, string_to_sign.as_bytes()))
    }

    /// Stores `body` under `key`; panics unless Garage accepts it.
    pub async fn put_object(&self, key: &str, body: impl Into<Vec<u8>>) {
        let resp = self
            .send("PUT", key, &[], body.into())
            .await
            .unwrap_or_else(|e| panic!("PUT {key}: {e}"));
        let status = resp.status();
        assert!(
            status.is_success(),
            "PUT {key} answered {status}: {}",
            resp.text().await.unwrap_or_default()
        );
    }

    /// The object's bytes, or `None` if it does not exist; panics on any other failure.
    pub async fn get_object(&self, key: &str) -> Option<Vec<u8>> {
        let resp = self
            .send("GET", key, &[], Vec::new())
            .await
            .unwrap_or_else(|e| panic!("GET {key}: {e}"));
        match resp.status().as_u16() {
            200 => Some(resp.bytes().await.expect("read object body").to_vec()),
            404 => None,
            status => panic!(
                "GET {key} answered {status}: {}",
                resp.text().await.unwrap_or_default()
            ),
        }
    }

    /// Deletes `key` (S3 answers 204 whether or not it existed).
    pub async fn delete_object(&self, key: &str) {
        let resp = self
            .send("DELETE", key, &[], Vec::new())
            .await
            .unwrap_or_else(|e| panic!("DELETE {key}: {e}"));
        assert!(
            resp.status().is_success(),
            "DELETE {key}: {}",
            resp.status()
        );
    }

    /// Every object whose key starts with `prefix`, as (key, size), in key order
    /// (ListObjectsV2, following continuation tokens).
    pub async fn list_objects(&self, prefix: &str) -> Vec<(String, u64)> {
        let mut objects = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut query = vec![("list-type", "2"), ("prefix", prefix)];
            if let Some(t) = &token {
                query.push(("continuation-token", t));
            }
            let resp = self
                .send("GET", "", &query, Vec::new())
                .await
                .unwrap_or_else(|e| panic!("ListObjectsV2 {prefix}: {e}"));
            let status = resp.status();
            let xml = resp.text().await.expect("read ListObjectsV2 body");
            assert!(
                status.is_success(),
                "ListObjectsV2 answered {status}: {xml}"
            );
            for contents in xml.split("<Contents>").skip(1) {
                let key = xml_text(contents, "Key").expect("Key in Contents");
                let size = xml_text(contents, "Size")
                    .and_then(|s| s.parse().ok())
                    .expect("Size in Contents");
                objects.push((key, size));
            }
            token = match xml_text(&xml, "IsTruncated").as_deref() {
                Some("true") => Some(xml_text(&xml, "NextContinuationToken").expect("token")),
                _ => break,
            };
        }
        objects
    }

    /// Everything Garage wrote, across restarts.
    pub fn log(&self) -> String {
        super::read_lossy(&self.log_path)
    }

    /// The S3 requests Garage received, in order, across restarts (admin API calls left out).
    /// Each start adds the harness's own readiness probe, `GET /lank8s?list-type=2&max-keys=1`,
    /// so count requests by path rather than in total.
    pub fn s3_requests(&self) -> Vec<S3Request> {
        self.log()
            .lines()
            .filter_map(|l| l.split_once(REQUEST_LOG_TARGET))
            .filter_map(|(_, rest)| parse_request(rest))
            .filter(|r| !is_admin_path(&r.path))
            .collect()
    }

    /// The requests Garage answered with an error, with the status it sent.
    pub fn s3_errors(&self) -> Vec<S3Error> {
        self.log()
            .lines()
            .filter_map(|l| l.split_once(REQUEST_LOG_TARGET))
            .filter_map(|(_, rest)| {
                let rest = rest.strip_prefix("error ")?;
                let (status, rest) = rest.split_once(", ")?;
                let (_, request) = rest.rsplit_once(" in response to ")?;
                Some(S3Error {
                    // `404 Not Found`
                    status: status.split(' ').next()?.parse().ok()?,
                    request: parse_request(request)?,
                })
            })
            .filter(|e| !is_admin_path(&e.request.path))
            .collect()
    }

    /// S3 requests with exactly this method whose URI contains `path_contains`.
    pub fn count_requests(&self, method: &str, path_contains: &str) -> usize {
        self.s3_requests()
            .iter()
            .filter(|r| r.method == method && r.path.contains(path_contains))
            .count()
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// The server's process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills Garage (SIGKILL, by its PID) and waits for it to exit. Its data stays.
    pub fn stop(&mut self) {
        super::kill_child(&mut self.child);
    }

    /// Starts Garage again with the same configuration, ports, data, bucket and key, and
    /// waits until the bucket answers.
    pub async fn restart(&mut self) {
        self.stop();
        self.spawn(false).await;
    }

    /// The temporary directory holding the configuration, data and log.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Garage {
    fn drop(&mut self) {
        super::kill_child(&mut self.child);
    }
}

fn client(timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(timeout)
        .build()
        .expect("build reqwest client")
}

/// `/<bucket>/<key>` with every byte outside the SigV4 unreserved set percent-encoded,
/// `/` kept; `/<bucket>` for an empty key.
fn object_path(bucket: &str, key: &str) -> String {
    if key.is_empty() {
        format!("/{bucket}")
    } else {
        format!("/{bucket}/{}", uri_encode(key, false))
    }
}

/// SigV4 URI encoding: unreserved bytes as they are, everything else `%XX` (uppercase).
pub fn uri_encode(s: &str, encode_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) || (b == b'/' && !encode_slash) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The canonical query string: encoded names and values, sorted.
fn canonical_query(query: &[(&str, &str)]) -> String {
    let mut pairs: Vec<(String, String)> = query
        .iter()
        .map(|(k, v)| (uri_encode(k, true), uri_encode(v, true)))
        .collect();
    pairs.sort();
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

/// (`20250102T030405Z`, `20250102`) for `at`, in UTC.
fn amz_dates(at: SystemTime) -> (String, String) {
    let rfc3339 = humantime::format_rfc3339_seconds(at).to_string();
    let amz_date: String = rfc3339.chars().filter(|c| *c != '-' && *c != ':').collect();
    let date = amz_date[..8].to_string();
    (amz_date, date)
}

/// HMAC-SHA256 (RFC 2104) over `sha2`, which lank8s already depends on.
pub fn hmac_sha256(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut block = [0u8; 64];
    if key.len() > block.len() {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(block.map(|b| b ^ 0x36));
    inner.update(data);
    let mut outer = Sha256::new();
    outer.update(block.map(|b| b ^ 0x5c));
    outer.update(inner.finalize());
    outer.finalize().into()
}

/// The SigV4 signing key for one day, region and service.
pub fn signing_key(secret: &str, date: &str, region: &str, service: &str) -> [u8; 32] {
    let k = hmac_sha256(format!("AWS4{secret}").as_bytes(), date.as_bytes());
    let k = hmac_sha256(&k, region.as_bytes());
    let k = hmac_sha256(&k, service.as_bytes());
    hmac_sha256(&k, b"aws4_request")
}

/// `<source> [(key <id>) ]<METHOD> <uri>` as Garage logs a request.
fn parse_request(line: &str) -> Option<S3Request> {
    let mut rest = line.split_once(' ')?.1;
    // A forwarded request reads `<ip> (via <addr>) ...`.
    if let Some(r) = rest.strip_prefix("(via ") {
        rest = r.split_once(") ")?.1;
    }
    let mut key_id = None;
    if let Some(r) = rest.strip_prefix("(key ") {
        let (key, r) = r.split_once(") ")?;
        key_id = Some(key.to_string());
        rest = r;
    }
    let (method, path) = rest.split_once(' ')?;
    if !method.bytes().all(|b| b.is_ascii_uppercase()) || !path.starts_with('/') {
        return None;
    }
    Some(S3Request {
        method: method.into(),
        path: path.into(),
        key_id,
    })
}

/// Requests to the admin API share the log target; no bucket can be named like these.
fn is_admin_path(path: &str) -> bool {
    path.starts_with("/v2/")
        || path.starts_with("/v1/")
        || path.starts_with("/v0/")
        || ["/health", "/metrics", "/check"]
            .iter()
            .any(|p| path == *p || path.starts_with(&format!("{p}?")))
}

/// The unescaped text of the first `<tag>…</tag>` in `xml`.
fn xml_text(xml: &str, tag: &str) -> Option<String> {
    let open = format!("<{tag}>");
    let start = xml.find(&open)? + open.len();
    let end = start + xml[start..].find(&format!("</{tag}>"))?;
    Some(
        xml[start..end]
            .replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&quot;", "\"")
            .replace("&apos;", "'")
            .replace("&amp;", "&"),
    )
}
