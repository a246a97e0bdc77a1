//! Helpers for the sponsor-access tests: a lank8s configuration with a sponsor route and a free route over one upstream registry, accounts made with the real `lank8s account` CLI, HTTP clients bound to chosen loopback addresses (so that each is a different client to lank8s), logins at `/token`, and two replicas sharing one state store.

use std::net::IpAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use base64::Engine;
use reqwest::{Client, StatusCode};
use serde_json::Value;

use super::Lank8s;

/// The upstream only sponsors may pull through (and the default upstream).
pub const SPONSOR: &str = "sponsored.test";
/// The same registry again, open to anyone: `/v2/free.test/<repo>/…`.
pub const FREE: &str = "free.test";
/// Where a refused client is sent to read about sponsoring.
pub const SPONSOR_INFO: &str = "https://mirror.example/sponsor";

fn toml_string(s: &str) -> String {
    serde_json::to_string(s).expect("string to JSON")
}

/// Top-level keys: the sponsor route as default upstream, and `state` if given.
pub fn top_level(state: Option<&str>) -> String {
    let mut keys = format!("default_upstream = {}\n", toml_string(SPONSOR));
    if let Some(url) = state {
        keys.push_str(&format!("state = {}\n", toml_string(url)));
    }
    keys
}

/// `[upstreams]` for both routes over `upstream_url`, `[access]` with an `http`
/// realm (lank8s serves plain HTTP here), then `extra` tables.
pub fn tables(upstream_url: &str, extra: &str) -> String {
    format!(
        "[upstreams.{sponsor}]\nurl = {url}\ntier = \"sponsor\"\n\
         [upstreams.{free}]\nurl = {url}\ntier = \"free\"\n\
         [access]\nrealm_scheme = \"http\"\nsponsor_info = {info}\n{extra}",
        sponsor = toml_string(SPONSOR),
        free = toml_string(FREE),
        url = toml_string(upstream_url),
        info = toml_string(SPONSOR_INFO),
    )
}

/// Runs `lank8s <args> --config <config>` with `stdin`; (exit code, stdout, stderr).
pub fn cli(config: &Path, args: &[&str], stdin: &str) -> (i32, String, String) {
    let run = super::access::cli(config, args, Some(stdin));
    (run.code.unwrap_or(-1), run.stdout, run.stderr)
}

/// `lank8s account add <name> --password-stdin`: an active sponsor account.
pub fn add_account(config: &Path, name: &str, password: &str) {
    let (code, stdout, stderr) = cli(
        config,
        &["account", "add", name, "--password-stdin"],
        &format!("{password}\n"),
    );
    assert_eq!(code, 0, "account add {name}: {stdout}{stderr}");
    let line = stdout.lines().next().unwrap_or_default();
    assert!(
        line.starts_with(&format!("{name}  tier=sponsor  expires="))
            && line.ends_with("  status=active"),
        "account add printed {stdout:?}"
    );
    assert!(
        !stdout.contains("password:"),
        "a password read from stdin is never printed: {stdout}"
    );
}

/// The lines of `lank8s grants list`.
pub fn grants_list(config: &Path) -> Vec<String> {
    let (code, stdout, stderr) = cli(config, &["grants", "list"], "");
    assert_eq!(code, 0, "grants list: {stdout}{stderr}");
    stdout.lines().map(str::to_string).collect()
}

/// A client whose connections come from `address` (any of 127.0.0.0/8 reaches
/// lank8s on 127.0.0.1), so that lank8s sees a different client per address.
pub fn client_from(address: &str) -> Client {
    super::access::client_at(address.parse().expect("client address"))
}

/// What lank8s answered: status, headers, body.
pub struct Answer {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: bytes::Bytes,
}

impl Answer {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    /// `(code, message)` of the first OCI error in the body.
    pub fn error(&self) -> (String, String) {
        let body = self.json();
        let first = &body["errors"][0];
        (
            first["code"].as_str().unwrap_or("").to_string(),
            first["message"].as_str().unwrap_or("").to_string(),
        )
    }

    pub fn describe(&self) -> String {
        format!(
            "{} {:?} {}",
            self.status,
            self.headers,
            String::from_utf8_lossy(&self.body)
        )
    }
}

/// `GET base_url + path`, with a `Host` header and `Authorization` if given.
pub async fn get(
    client: &Client,
    base_url: &str,
    path: &str,
    host: Option<&str>,
    authorization: Option<&str>,
) -> Answer {
    let mut req = client.get(format!("{base_url}{path}"));
    if let Some(host) = host {
        req = req.header("host", host);
    }
    if let Some(value) = authorization {
        req = req.header("authorization", value);
    }
    let resp = req
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {base_url}{path}: {e}"));
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp.bytes().await.unwrap_or_default();
    Answer {
        status,
        headers,
        body,
    }
}

/// A login at `/token` for pulling `repo`, sent with `Host: host`; the answer as is.
pub async fn login(
    client: &Client,
    base_url: &str,
    host: &str,
    credentials: (&str, &str),
    repo: &str,
) -> Answer {
    let path = format!("/token?service={host}&scope=repository:{repo}:pull");
    let basic = super::basic_auth_header(credentials.0, credentials.1);
    get(client, base_url, &path, Some(host), Some(&basic)).await
}

/// [`login`] that must succeed; the token.
pub async fn token(
    client: &Client,
    base_url: &str,
    host: &str,
    credentials: (&str, &str),
    repo: &str,
) -> String {
    let answer = login(client, base_url, host, credentials, repo).await;
    assert_eq!(answer.status, 200, "login: {}", answer.describe());
    let body = answer.json();
    assert_eq!(body["token"], body["access_token"], "{body}");
    body["token"].as_str().expect("token").to_string()
}

/// The claims of a JWT, read without checking its signature.
pub fn claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).expect("JWT payload");
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .expect("base64url payload");
    serde_json::from_slice(&json).expect("JSON claims")
}

/// The request lines lank8s logged for paths containing `path_contains`.
pub fn lines_for(lank8s: &Lank8s, path_contains: &str) -> Vec<Value> {
    lank8s
        .request_lines()
        .into_iter()
        .filter(|l| {
            l["path"]
                .as_str()
                .is_some_and(|p| p.contains(path_contains))
        })
        .collect()
}

/// Two lank8s replicas on one state store (`state`), each with its own port and
/// data directory; `extra` tables go to both.
pub async fn start_replicas(state: &str, upstream_url: &str, extra: &str) -> (Lank8s, Lank8s) {
    let top = top_level(Some(state));
    let tables = tables(upstream_url, extra);
    let a = Lank8s::start_with(&top, &tables).await;
    let b = Lank8s::start_with(&top, &tables).await;
    (a, b)
}
