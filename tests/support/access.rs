//! Helpers for the access-layer tests: lank8s in front of a real registry on a free or a sponsor route, the `account` and `grants` commands, clients bound to a loopback address, hand-made JWTs, and reading OCI error answers.

use std::io::{Read as _, Write as _};
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use bytes::Bytes;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::header::HeaderMap;
use serde_json::{Value, json};

use super::images::TestImage;
use super::lank8s::Lank8s;
use super::registry::Registry;

/// The `access.signing_key` of every mirror these helpers start: tests sign
/// valid tokens with it, and forged ones with anything else.
pub const SIGNING_KEY: &str = "lank8s-access-tests-signing-key-0123456789abcdef0123456789abcdef";
/// The sponsor route's upstream name, and lank8s's `default_upstream`.
pub const SPONSOR_UPSTREAM: &str = "sponsored.test";
pub const SPONSOR_INFO: &str = "https://example.test/sponsor";
/// The repository and tag of the image each mirror's registry holds.
pub const REPO: &str = "access/app";
pub const TAG: &str = "v1";

/// A loopback client address other than 127.0.0.1: lank8s sees each as a
/// different client (and, with the default /32 prefix, a different network).
pub fn loopback(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

/// An HTTP client whose connections come from `address`.
pub fn client_at(address: IpAddr) -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .local_address(address)
        .timeout(Duration::from_secs(60))
        .build()
        .expect("build reqwest client")
}

/// A real registry holding `image` as `access/app:v1`, and lank8s in front of
/// it as the sponsor route `sponsored.test`, its default upstream. The
/// `[access]` table sets `realm_scheme`, `sponsor_info` and `signing_key`;
/// `access` is appended to it (keys, then any further tables), `top_level`
/// to the top-level keys.
pub async fn sponsor_mirror(top_level: &str, access: &str) -> (Registry, Lank8s, TestImage) {
    let registry = Registry::start().await;
    let image = TestImage::docker_schema2(7001);
    image.push(&registry, REPO, TAG).await;
    let top = format!("default_upstream = \"{SPONSOR_UPSTREAM}\"\n{top_level}");
    let tables = format!(
        "[upstreams.\"{SPONSOR_UPSTREAM}\"]\nurl = \"{}\"\ntier = \"sponsor\"\n\
         [access]\nrealm_scheme = \"http\"\nsponsor_info = \"{SPONSOR_INFO}\"\n\
         signing_key = \"{SIGNING_KEY}\"\n{access}",
        registry.url()
    );
    let lank8s = Lank8s::start_with(&top, &tables).await;
    (registry, lank8s, image)
}

/// lank8s in front of `registry` as the free route `registry.k8s.io` (the
/// default upstream), with `access` appended to an `[access]` table that sets
/// the signing key, and `upstream_keys` to the route's table.
pub async fn free_mirror(registry: &Registry, upstream_keys: &str, access: &str) -> Lank8s {
    let tables = format!(
        "[upstreams.\"registry.k8s.io\"]\nurl = \"{}\"\n{upstream_keys}\n\
         [access]\nrealm_scheme = \"http\"\nsigning_key = \"{SIGNING_KEY}\"\n{access}",
        registry.url()
    );
    Lank8s::start(&tables).await
}

pub fn manifest_path(repo: &str, reference: &str) -> String {
    format!("/v2/{repo}/manifests/{reference}")
}

pub fn blob_path(repo: &str, digest: &str) -> String {
    format!("/v2/{repo}/blobs/{digest}")
}

/// The challenge a sponsor route answers on `host`, with `repo`'s pull scope
/// when given, and `error="invalid_token"` when a token was refused.
pub fn challenge(host: &str, repo: Option<&str>, refused: bool) -> String {
    let mut c = format!("Bearer realm=\"http://{host}/token\",service=\"{host}\"");
    if let Some(repo) = repo {
        c.push_str(&format!(",scope=\"repository:{repo}:pull\""));
    }
    if refused {
        c.push_str(",error=\"invalid_token\"");
    }
    c
}

/// The message of a 401 on a sponsor route of `host` with no usable token.
pub fn sponsors_only(host: &str) -> String {
    format!(
        "{host} serves {SPONSOR_UPSTREAM} to sponsors only: log in with a sponsor account, \
         or pull from an address a sponsor has pulled from; see {SPONSOR_INFO}"
    )
}

/// Asserts a 401 challenge for `repo` on `lank8s`; `reason` is the refused
/// token's reason, if one was sent.
pub fn assert_challenged(
    answer: &Reply,
    lank8s: &Lank8s,
    repo: Option<&str>,
    reason: Option<&str>,
) {
    let host = lank8s.host();
    let what = answer.describe();
    assert_eq!(answer.status, 401, "{what}");
    let (code, message) = answer.error();
    assert_eq!(code, "UNAUTHORIZED", "{what}");
    let want = match reason {
        Some(reason) => format!("{reason}. {}", sponsors_only(&host)),
        None => sponsors_only(&host),
    };
    assert_eq!(message, want, "{what}");
    assert_eq!(
        answer.header("www-authenticate"),
        Some(challenge(&host, repo, reason.is_some()).as_str()),
        "{what}"
    );
}

/// What lank8s answered, read whole.
pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }

    /// The OCI error's code and message; panics unless this is OCI error JSON.
    pub fn error(&self) -> (String, String) {
        let what = format!("{} {}", self.status, String::from_utf8_lossy(&self.body));
        assert_eq!(
            self.header("content-type"),
            Some("application/json"),
            "{what}"
        );
        let error = &self.json()["errors"][0];
        let code = error["code"]
            .as_str()
            .unwrap_or_else(|| panic!("no code: {what}"));
        let message = error["message"]
            .as_str()
            .unwrap_or_else(|| panic!("no message: {what}"));
        (code.to_owned(), message.to_owned())
    }

    /// `Retry-After` in seconds; panics if absent or not a number.
    pub fn retry_after(&self) -> u64 {
        self.header("retry-after")
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no numeric Retry-After: {:?}", self.headers))
    }

    /// A short description for assertion messages.
    pub fn describe(&self) -> String {
        let body = String::from_utf8_lossy(&self.body);
        let body: String = body.chars().take(400).collect();
        format!("{} {body}", self.status)
    }
}

/// Sends `request` and reads the whole answer.
pub async fn reply(request: reqwest::RequestBuilder) -> Reply {
    let response = request.send().await.expect("request to lank8s");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.bytes().await.expect("read the body");
    Reply {
        status,
        headers,
        body,
    }
}

/// `GET lank8s<path>` from `client`, with an optional bearer token.
pub async fn get(
    client: &reqwest::Client,
    lank8s: &Lank8s,
    path: &str,
    bearer: Option<&str>,
) -> Reply {
    let mut request = client.get(format!("{}{path}", lank8s.url()));
    if let Some(token) = bearer {
        request = request.bearer_auth(token);
    }
    reply(request).await
}

/// `GET /token` with Basic credentials for a pull of `repo`.
pub async fn token_reply(
    client: &reqwest::Client,
    lank8s: &Lank8s,
    user: &str,
    password: &str,
    repo: &str,
) -> Reply {
    let scope = format!("repository:{repo}:pull");
    let request = client
        .get(format!("{}/token", lank8s.url()))
        .query(&[
            ("service", lank8s.host().as_str()),
            ("scope", scope.as_str()),
        ])
        .basic_auth(user, Some(password));
    reply(request).await
}

/// A token from `/token`; panics unless it answers 200.
pub async fn login(
    client: &reqwest::Client,
    lank8s: &Lank8s,
    user: &str,
    password: &str,
    repo: &str,
) -> String {
    let answer = token_reply(client, lank8s, user, password, repo).await;
    assert_eq!(answer.status, 200, "login {user}: {}", answer.describe());
    answer.json()["token"]
        .as_str()
        .expect("token field")
        .to_owned()
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// The claims lank8s puts in a token of `account` for `audience` (the Host)
/// allowing a pull of `repo`, valid for five minutes.
pub fn claims(account: &str, audience: &str, repo: &str) -> Value {
    let now = unix_now();
    json!({
        "iss": "lank8s",
        "sub": account,
        "aud": audience,
        "exp": now + 300,
        "nbf": now - 5,
        "iat": now,
        "jti": "0123456789abcdef01234567",
        "access": [{ "type": "repository", "name": repo, "actions": ["pull"] }],
        "tier": "sponsor",
    })
}

/// `claims` signed with `key` by `algorithm` (an HMAC one).
pub fn sign_with(claims: &Value, key: &str, algorithm: Algorithm) -> String {
    jsonwebtoken::encode(
        &Header::new(algorithm),
        claims,
        &EncodingKey::from_secret(key.as_bytes()),
    )
    .expect("sign a JWT")
}

/// `claims` signed with the mirror's key, HS256: a token lank8s must accept.
pub fn sign(claims: &Value) -> String {
    sign_with(claims, SIGNING_KEY, Algorithm::HS256)
}

/// An unsigned JWT: header `{"alg":"none","typ":"JWT"}`, the claims, and an
/// empty signature.
pub fn unsigned(claims: &Value) -> String {
    let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let header = engine.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let payload = engine.encode(serde_json::to_vec(claims).expect("claims JSON"));
    format!("{header}.{payload}.")
}

/// The claims of a token lank8s issued, checked with the mirror's key.
pub fn decode(token: &str, audience: &str) -> Value {
    let mut validation = jsonwebtoken::Validation::new(Algorithm::HS256);
    validation.set_audience(&[audience]);
    jsonwebtoken::decode::<Value>(
        token,
        &jsonwebtoken::DecodingKey::from_secret(SIGNING_KEY.as_bytes()),
        &validation,
    )
    .unwrap_or_else(|e| panic!("token {token} does not verify with the configured key: {e}"))
    .claims
}

/// The first request line after the first `mark` lines whose path is
/// `path`; lank8s writes a line just after the response ends.
pub async fn line_after(lank8s: &Lank8s, mark: usize, path: &str) -> Value {
    let found = super::eventually(Duration::from_secs(5), || {
        let line = lank8s
            .request_lines()
            .into_iter()
            .skip(mark)
            .find(|l| l["path"] == path);
        async move { line }
    })
    .await;
    found.unwrap_or_else(|| {
        panic!(
            "no request line for {path} after line {mark}:\n{}",
            lank8s.log()
        )
    })
}

/// What a `lank8s` command did.
#[derive(Debug)]
pub struct CliRun {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `lank8s <args> --config <config>`, writing `stdin` to its standard
/// input; kills it (by its own handle) if it has not exited within 30 s.
pub fn cli(config: &Path, args: &[&str], stdin: Option<&str>) -> CliRun {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_lank8s"));
    cmd.args(args).arg("--config").arg(config);
    super::scrub_proxy_env(&mut cmd);
    run_to_end(cmd, stdin, Duration::from_secs(30))
}

/// Runs a `lank8s` command to its end with `LANK8S_LOG` unset, writing
/// `stdin` (if any) to it; kills it (by its own handle) if it is still
/// running after `limit`.
pub fn run_to_end(mut cmd: Command, stdin: Option<&str>, limit: Duration) -> CliRun {
    cmd.env_remove("LANK8S_LOG")
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn lank8s");
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("stdin pipe");
        pipe.write_all(input.as_bytes()).expect("write stdin");
    }
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for lank8s") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} was still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut run = CliRun {
        code: status.code(),
        stdout: String::new(),
        stderr: String::new(),
    };
    let _ = child.stdout.take().unwrap().read_to_string(&mut run.stdout);
    let _ = child.stderr.take().unwrap().read_to_string(&mut run.stderr);
    run
}

/// As [`cli`], panicking unless it exits 0; returns standard output.
pub fn cli_ok(config: &Path, args: &[&str], stdin: Option<&str>) -> String {
    let run = cli(config, args, stdin);
    assert_eq!(run.code, Some(0), "lank8s {args:?}: {run:?}");
    run.stdout
}

/// `lank8s account add <name> --password-stdin <extra>` against `lank8s`'s state.
pub fn add_account(lank8s: &Lank8s, name: &str, password: &str, extra: &[&str]) -> String {
    let mut args = vec!["account", "add", name, "--password-stdin"];
    args.extend_from_slice(extra);
    cli_ok(lank8s.config_path(), &args, Some(&format!("{password}\n")))
}

/// The lines of `lank8s grants list` for `lank8s`'s state.
pub fn grants_list(lank8s: &Lank8s) -> Vec<String> {
    cli_ok(lank8s.config_path(), &["grants", "list"], None)
        .lines()
        .map(str::to_owned)
        .collect()
}
