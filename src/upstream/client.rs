//! One upstream registry: sends a request for a repository, answers its
//! auth challenge, follows redirects and retries, and maps what comes back
//! to a response or a `RegistryError`.

use std::time::Duration;

use reqwest::header::{
    ACCEPT, AUTHORIZATION, HeaderValue, LOCATION, RETRY_AFTER, WWW_AUTHENTICATE,
};
use reqwest::{Method, Response, StatusCode};
use url::Url;

use super::auth::{Challenge, TokenCache, TokenResponse, parse_challenge};
use crate::config::UpstreamConfig;
use crate::oci::error::{ErrorCode, Fault, RegistryError};

/// How many redirects one request may follow.
const MAX_REDIRECTS: usize = 10;
/// The most of an error body read to find its OCI error code.
const MAX_ERROR_BODY: usize = 64 * 1024;
/// The largest token answer accepted from a realm.
const MAX_TOKEN_BODY: usize = 256 * 1024;

pub struct Upstream {
    config: UpstreamConfig,
    http: reqwest::Client,
    tokens: TokenCache,
    /// Set once the upstream has asked for Basic credentials directly.
    wants_basic: std::sync::atomic::AtomicBool,
}

/// What went wrong sending one request, before any status is looked at.
enum SendError {
    Connect(String),
    Timeout(String),
    Other(String),
}

impl Upstream {
    pub fn new(config: UpstreamConfig) -> Result<Upstream, reqwest::Error> {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(config.connect_timeout)
            .read_timeout(config.timeout)
            .user_agent(concat!("lank8s/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Upstream {
            config,
            http,
            tokens: TokenCache::default(),
            wants_basic: Default::default(),
        })
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    pub fn config(&self) -> &UpstreamConfig {
        &self.config
    }

    /// Sends `method` for `/v2/<repository>/<tail>` and returns a 2xx
    /// response; anything else becomes an error whose code defaults to
    /// `not_found` for a 404 that names none. On a 404, the repository's
    /// configured aliases are tried in order.
    pub async fn fetch(
        &self,
        method: Method,
        repository: &str,
        tail: &str,
        accept: Option<&str>,
        not_found: ErrorCode,
    ) -> Result<Response, RegistryError> {
        let mut result = self
            .fetch_from(method.clone(), repository, tail, accept, not_found)
            .await;
        let aliases = self.config.aliases.get(repository).into_iter().flatten();
        for alias in aliases {
            match &result {
                Err(err) if err.status == StatusCode::NOT_FOUND => {
                    tracing::debug!(upstream = self.name(), repository, alias, "trying alias");
                    result = self
                        .fetch_from(method.clone(), alias, tail, accept, not_found)
                        .await;
                }
                _ => break,
            }
        }
        result
    }

    async fn fetch_from(
        &self,
        method: Method,
        repository: &str,
        tail: &str,
        accept: Option<&str>,
        not_found: ErrorCode,
    ) -> Result<Response, RegistryError> {
        let url = self
            .config
            .url
            .join(&format!("v2/{repository}/{tail}"))
            .map_err(|e| RegistryError::internal(format!("cannot build upstream URL: {e}")))?;
        let scope = format!("repository:{repository}:pull");

        let mut authorization = self.cached_authorization(&scope);
        let mut answered_challenge = false;
        loop {
            let response = self
                .send_with_retries(&method, &url, authorization.as_ref(), accept)
                .await
                .map_err(|e| self.send_error(e))?;

            // A 401 means no token yet, or one that expired mid-pull: answer
            // the challenge once, then take the next answer as final.
            if response.status() == StatusCode::UNAUTHORIZED && !answered_challenge {
                answered_challenge = true;
                self.tokens.forget(&scope);
                if let Some(header) = self.authorize(&response, &scope).await? {
                    authorization = Some(header);
                    continue;
                }
            }
            return self.check_status(response, not_found).await;
        }
    }

    fn cached_authorization(&self, scope: &str) -> Option<HeaderValue> {
        if let Some(token) = self.tokens.get(scope) {
            return HeaderValue::from_str(&format!("Bearer {token}")).ok();
        }
        if self.wants_basic.load(std::sync::atomic::Ordering::Relaxed) {
            return self.basic_authorization();
        }
        None
    }

    fn basic_authorization(&self) -> Option<HeaderValue> {
        use base64::Engine as _;
        let credentials = self.config.credentials.as_ref()?;
        let pair = format!("{}:{}", credentials.username, credentials.password);
        let mut value = HeaderValue::from_str(&format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(pair.as_bytes())
        ))
        .ok()?;
        value.set_sensitive(true);
        Some(value)
    }

    /// Answers a 401's challenge: fetches a bearer token from the realm, or
    /// switches to Basic. `None` when there is nothing we can answer with.
    async fn authorize(
        &self,
        response: &Response,
        scope: &str,
    ) -> Result<Option<HeaderValue>, RegistryError> {
        let challenge = response
            .headers()
            .get(WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_challenge);
        let (realm, service, challenged_scope) = match challenge {
            Some(Challenge::Bearer {
                realm,
                service,
                scope,
            }) => (realm, service, scope),
            Some(Challenge::Basic) => {
                self.wants_basic
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                return Ok(self.basic_authorization());
            }
            None => return Ok(None),
        };

        let mut realm = Url::parse(&realm).map_err(|_| {
            RegistryError::bad_gateway(format!(
                "{} sent an unusable token realm {realm:?}",
                self.name()
            ))
        })?;
        if !matches!(realm.scheme(), "http" | "https") {
            return Err(RegistryError::bad_gateway(format!(
                "{} sent a non-HTTP token realm",
                self.name()
            )));
        }
        {
            let mut query = realm.query_pairs_mut();
            if let Some(service) = &service {
                query.append_pair("service", service);
            }
            query.append_pair("scope", challenged_scope.as_deref().unwrap_or(scope));
        }

        let mut request = self.http.get(realm.clone()).timeout(self.config.timeout);
        let mut sent_credentials = false;
        if self.may_receive_credentials(&realm) {
            if let Some(basic) = self.basic_authorization() {
                request = request.header(AUTHORIZATION, basic);
                sent_credentials = true;
            }
        }
        let token_response = request.send().await.map_err(|e| {
            RegistryError::bad_gateway(format!("token request to {} failed: {e}", host_of(&realm)))
        })?;
        let status = token_response.status();
        let refused = status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN;
        if refused && sent_credentials {
            // Our configured credentials no longer work: an operator's
            // problem, not a sign that the image is gone, so cached copies
            // may still be served.
            return Err(RegistryError::bad_gateway(format!(
                "token service {} refused the configured credentials ({status})",
                host_of(&realm)
            )));
        }
        if refused {
            return Ok(None);
        }
        if !status.is_success() {
            return Err(RegistryError::bad_gateway(format!(
                "token service {} answered {status}",
                host_of(&realm)
            )));
        }
        let token = read_body(
            token_response,
            MAX_TOKEN_BODY,
            "a token answer",
            &host_of(&realm),
        )
        .await
        .ok()
        .and_then(|body| serde_json::from_slice::<TokenResponse>(&body).ok())
        .and_then(TokenResponse::into_token)
        .ok_or_else(|| {
            RegistryError::bad_gateway(format!("token service {} sent no token", host_of(&realm)))
        })?;

        let (token, lifetime) = token;
        let header = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
            RegistryError::bad_gateway("token service sent a token that is not a header value")
        })?;
        self.tokens.put(scope, token, lifetime);
        Ok(Some(header))
    }

    /// Credentials go to the upstream's own origin and to the realm hosts
    /// the configuration names (`host`, any port, or `host:port`), over the
    /// same scheme as the upstream: never downgraded to plain HTTP.
    fn may_receive_credentials(&self, realm: &Url) -> bool {
        if same_origin(realm, &self.config.url) {
            return true;
        }
        let host = realm.host_str().unwrap_or_default();
        let host_port = host_of(realm);
        realm.scheme() == self.config.url.scheme()
            && self
                .config
                .credential_hosts
                .iter()
                .any(|h| *h == host_port || *h == host)
    }

    async fn send_with_retries(
        &self,
        method: &Method,
        url: &Url,
        authorization: Option<&HeaderValue>,
        accept: Option<&str>,
    ) -> Result<Response, SendError> {
        // Retries share one budget: a client hears back within `timeout`
        // plus one connect attempt, however many tries that allows.
        let started = std::time::Instant::now();
        let mut attempt = 0;
        loop {
            let result = self
                .send_following_redirects(method, url, authorization, accept)
                .await;
            let retryable = match &result {
                Ok(response) => {
                    response.status().is_server_error()
                        && response.status() != StatusCode::NOT_IMPLEMENTED
                }
                Err(SendError::Connect(_)) => true,
                Err(_) => false,
            };
            let backoff = Duration::from_millis(100) * 2u32.pow(attempt + 1);
            let out_of_time = started.elapsed() + backoff >= self.config.timeout;
            if !retryable || attempt >= self.config.retries || out_of_time {
                return result;
            }
            attempt += 1;
            tokio::time::sleep(backoff).await;
        }
    }

    /// Follows redirects here rather than in the HTTP library so that the
    /// `Authorization` header is only ever sent to the upstream's own origin.
    async fn send_following_redirects(
        &self,
        method: &Method,
        url: &Url,
        authorization: Option<&HeaderValue>,
        accept: Option<&str>,
    ) -> Result<Response, SendError> {
        let mut url = url.clone();
        // One deadline for the whole chain, not one per hop.
        let deadline = tokio::time::Instant::now() + self.config.timeout;
        for _ in 0..=MAX_REDIRECTS {
            let mut request = self.http.request(method.clone(), url.clone());
            if let Some(accept) = accept {
                request = request.header(ACCEPT, accept);
            }
            if let Some(authorization) =
                authorization.filter(|_| same_origin(&url, &self.config.url))
            {
                request = request.header(AUTHORIZATION, authorization.clone());
            }
            let send = request.send();
            let response = match tokio::time::timeout_at(deadline, send).await {
                Err(_) => {
                    return Err(SendError::Timeout(format!(
                        "no answer from {} within {:?}",
                        host_of(&url),
                        self.config.timeout
                    )));
                }
                Ok(Err(e)) if e.is_connect() => {
                    return Err(SendError::Connect(format!(
                        "cannot connect to {}: {}",
                        host_of(&url),
                        root_cause(&e)
                    )));
                }
                Ok(Err(e)) if e.is_timeout() => {
                    return Err(SendError::Timeout(format!(
                        "{} timed out: {}",
                        host_of(&url),
                        root_cause(&e)
                    )));
                }
                Ok(Err(e)) => {
                    return Err(SendError::Other(format!(
                        "request to {} failed: {}",
                        host_of(&url),
                        root_cause(&e)
                    )));
                }
                Ok(Ok(response)) => response,
            };
            if !response.status().is_redirection() || response.status() == StatusCode::NOT_MODIFIED
            {
                return Ok(response);
            }
            let location = response
                .headers()
                .get(LOCATION)
                .and_then(|l| l.to_str().ok())
                .ok_or_else(|| {
                    SendError::Other(format!("{} redirected without a Location", host_of(&url)))
                })?;
            url = url.join(location).map_err(|_| {
                SendError::Other(format!(
                    "{} redirected to an unusable Location",
                    host_of(&url)
                ))
            })?;
            if !matches!(url.scheme(), "http" | "https") {
                return Err(SendError::Other("redirected to a non-HTTP URL".into()));
            }
        }
        Err(SendError::Other(format!(
            "more than {MAX_REDIRECTS} redirects"
        )))
    }

    fn send_error(&self, error: SendError) -> RegistryError {
        match error {
            SendError::Connect(m) | SendError::Other(m) => RegistryError::bad_gateway(m),
            SendError::Timeout(m) => RegistryError::gateway_timeout(m),
        }
    }

    /// Maps an upstream's final answer: success passes, the rest keeps its
    /// meaning (a 5xx never becomes a 404, nor a 404 a 500).
    async fn check_status(
        &self,
        response: Response,
        not_found: ErrorCode,
    ) -> Result<Response, RegistryError> {
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let name = self.name().to_owned();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        let upstream_code = read_error_code(response).await;

        let error = match status {
            StatusCode::NOT_FOUND => RegistryError::not_found(
                upstream_code
                    .filter(|c| is_not_found_code(*c))
                    .unwrap_or(not_found),
                format!("{name} has no such {}", describe(not_found)),
            ),
            // Registries such as Docker Hub answer 401 for repositories that
            // do not exist; without further credentials it is the same to us.
            StatusCode::UNAUTHORIZED => RegistryError::not_found(
                ErrorCode::NameUnknown,
                format!(
                    "{name} refused access: the repository does not exist or needs credentials"
                ),
            ),
            StatusCode::FORBIDDEN => RegistryError::new(
                Fault::Upstream,
                StatusCode::FORBIDDEN,
                ErrorCode::Denied,
                format!("{name} denied access"),
            ),
            StatusCode::TOO_MANY_REQUESTS => RegistryError::new(
                Fault::Upstream,
                StatusCode::TOO_MANY_REQUESTS,
                ErrorCode::TooManyRequests,
                format!("{name} is rate limiting this mirror"),
            )
            .with_retry_after(retry_after.unwrap_or(60)),
            StatusCode::SERVICE_UNAVAILABLE => {
                let error = RegistryError::new(
                    Fault::Upstream,
                    StatusCode::SERVICE_UNAVAILABLE,
                    ErrorCode::Unavailable,
                    format!("{name} is unavailable"),
                );
                match retry_after {
                    Some(seconds) => error.with_retry_after(seconds),
                    None => error,
                }
            }
            s if s.is_server_error() => RegistryError::bad_gateway(format!("{name} answered {s}")),
            s => RegistryError::bad_gateway(format!("{name} answered an unexpected {s}")),
        };
        Err(error)
    }
}

async fn read_error_code(response: Response) -> Option<ErrorCode> {
    let body = read_body(response, MAX_ERROR_BODY, "an error body", "upstream")
        .await
        .ok()?;
    let value: serde_json::Value = serde_json::from_slice(&body).ok()?;
    ErrorCode::parse(value["errors"][0]["code"].as_str()?)
}

/// A whole small body, refused as soon as it grows past `limit`, so an
/// upstream cannot make lank8s hold more. `what` and `from` name the body
/// and its sender in errors.
pub async fn read_body(
    mut response: Response,
    limit: usize,
    what: &str,
    from: &str,
) -> Result<Vec<u8>, RegistryError> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| {
        RegistryError::bad_gateway(format!("reading {what} from {from} failed: {e}"))
    })? {
        body.extend_from_slice(&chunk);
        if body.len() > limit {
            return Err(RegistryError::bad_gateway(format!(
                "{from} sent {what} over {limit} bytes"
            )));
        }
    }
    Ok(body)
}

fn is_not_found_code(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::BlobUnknown | ErrorCode::ManifestUnknown | ErrorCode::NameUnknown
    )
}

fn describe(code: ErrorCode) -> &'static str {
    match code {
        ErrorCode::BlobUnknown => "blob",
        ErrorCode::ManifestUnknown => "manifest",
        _ => "repository",
    }
}

fn same_origin(a: &Url, b: &Url) -> bool {
    a.scheme() == b.scheme()
        && a.host_str() == b.host_str()
        && a.port_or_known_default() == b.port_or_known_default()
}

fn host_of(url: &Url) -> String {
    match url.port() {
        Some(port) => format!("{}:{port}", url.host_str().unwrap_or_default()),
        None => url.host_str().unwrap_or_default().to_owned(),
    }
}

/// The innermost cause of an HTTP library error, which is the part that
/// says what actually happened (refused, reset, timed out).
fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = error;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn upstream(url: &str) -> Upstream {
        let config = Config::parse(&format!(
            "[upstreams.\"x.io\"]\nurl = \"{url}\"\nusername = \"u\"\npassword = \"p\"\ncredential_hosts = [\"auth.x.io\", \"tokens.x.io:8443\"]\n"
        ))
        .unwrap();
        Upstream::new(config.upstreams["x.io"].clone()).unwrap()
    }

    #[test]
    fn credentials_stay_with_their_hosts_and_scheme() {
        let up = upstream("https://x.io");
        let may = |realm: &str| up.may_receive_credentials(&Url::parse(realm).unwrap());
        assert!(may("https://x.io/token"));
        assert!(may("https://auth.x.io/token"));
        assert!(may("https://auth.x.io:444/token"));
        assert!(may("https://tokens.x.io:8443/token"));
        // Never downgraded to plain HTTP, never another port than listed.
        assert!(!may("http://auth.x.io/token"));
        assert!(!may("http://x.io/token"));
        assert!(!may("https://tokens.x.io/token"));
        assert!(!may("https://evil.io/token"));
    }
}
