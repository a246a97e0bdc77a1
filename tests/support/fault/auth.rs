//! Credentials the fault upstream demands: Basic or bearer tokens from the test issuer (claims checked, tokens revocable), and the 401 challenge otherwise.

use std::collections::HashSet;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::http::{HeaderMap, header};
use axum::response::Response;

use super::super::token::TokenIssuer;
use super::respond::reply;
use super::{FaultState, FaultUpstream};

/// What requests to `/v2/...` must carry; anything else gets 401 with a challenge.
#[derive(Clone, Debug)]
pub(super) enum AuthMode {
    /// Exactly this `Authorization` value (`Basic ...`).
    Basic { expected: String },
    /// A bearer token from the test [`TokenIssuer`] for `service` (its claims are
    /// checked, not its signature), granting pull on the repository asked for,
    /// unexpired and not revoked.
    Bearer { realm: String, service: String },
    /// Exactly this opaque bearer token, whatever issued it (a token service
    /// that is not the test issuer, e.g. one sending hostile answers).
    BearerToken {
        realm: String,
        service: String,
        token: String,
    },
}

impl FaultUpstream {
    /// From now on every request to `/v2/...` needs `Authorization: Basic` with these
    /// credentials; without them it gets 401 with `WWW-Authenticate: Basic realm="fault"`.
    /// Other paths (the `/other/` hop of [`FaultUpstream::redirect_blob_via`]) stay open.
    pub fn require_basic(&self, user: &str, pass: &str) {
        *self.state.auth.lock().unwrap() = Some(AuthMode::Basic {
            expected: super::super::basic_auth_header(user, pass),
        });
    }

    /// From now on every request to `/v2/...` needs a bearer token from the test
    /// issuer whose realm is `realm`: issued for `service`, unexpired, not revoked by
    /// [`FaultUpstream::expire_tokens`], and granting pull on the repository in the path.
    /// Otherwise 401 with `WWW-Authenticate: Bearer realm=..,service=..,scope=..`.
    pub fn require_bearer(&self, realm: &str, service: &str) {
        *self.state.auth.lock().unwrap() = Some(AuthMode::Bearer {
            realm: realm.to_string(),
            service: service.to_string(),
        });
    }

    /// From now on every request to `/v2/...` needs `Authorization: Bearer <token>`
    /// with exactly this token; otherwise 401 with the same challenge as
    /// [`FaultUpstream::require_bearer`], naming `realm` and `service`.
    pub fn require_bearer_token(&self, realm: &str, service: &str, token: &str) {
        *self.state.auth.lock().unwrap() = Some(AuthMode::BearerToken {
            realm: realm.to_string(),
            service: service.to_string(),
            token: token.to_string(),
        });
    }

    /// Every bearer token seen so far is refused from now on, as if it had expired.
    /// Returns them.
    pub fn expire_tokens(&self) -> HashSet<String> {
        let seen: HashSet<String> = self
            .requests()
            .iter()
            .filter_map(|r| r.bearer_token().map(str::to_string))
            .collect();
        self.state
            .revoked
            .lock()
            .unwrap()
            .extend(seen.iter().cloned());
        seen
    }
}

/// The repository named by a `/v2/<name>/<endpoint>` path, as a registry parses it.
fn repository_of(path: &str) -> Option<String> {
    let segments: Vec<&str> = path.strip_prefix("/v2/")?.split('/').collect();
    let n = segments.len();
    let end = match segments.as_slice() {
        [.., "tags", "list"] if n > 2 => n - 2,
        [.., "manifests" | "blobs" | "referrers", _] if n > 2 => n - 2,
        _ => return None,
    };
    Some(segments[..end].join("/"))
}

pub(super) fn authorized(
    state: &FaultState,
    auth: &AuthMode,
    path: &str,
    headers: &HeaderMap,
) -> bool {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    match auth {
        AuthMode::Basic { expected } => given == Some(expected.as_str()),
        AuthMode::Bearer { service, .. } => {
            let Some(token) = given.and_then(|g| g.strip_prefix("Bearer ")) else {
                return false;
            };
            !state.revoked.lock().unwrap().contains(token)
                && token_grants_pull(token, service, repository_of(path).as_deref())
        }
        AuthMode::BearerToken { token, .. } => {
            given.and_then(|g| g.strip_prefix("Bearer ")) == Some(token.as_str())
        }
    }
}

/// Reads the claims of a JWT from the test issuer (the signature is the registry's
/// business; here the claims decide): issuer, audience, expiry, and pull access.
fn token_grants_pull(token: &str, service: &str, repository: Option<&str>) -> bool {
    use base64::Engine as _;
    let Some(payload) = token.split('.').nth(1) else {
        return false;
    };
    let Ok(json) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload) else {
        return false;
    };
    let Ok(claims) = serde_json::from_slice::<serde_json::Value>(&json) else {
        return false;
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    let grants = |name: &str| {
        claims["access"].as_array().is_some_and(|access| {
            access.iter().any(|a| {
                a["type"] == "repository"
                    && a["name"] == name
                    && a["actions"]
                        .as_array()
                        .is_some_and(|actions| actions.iter().any(|x| x == "pull"))
            })
        })
    };
    claims["iss"] == TokenIssuer::ISSUER
        && claims["aud"] == service
        && claims["exp"].as_u64().is_some_and(|exp| exp > now)
        && repository.is_none_or(grants)
}

pub(super) fn unauthorized(auth: &AuthMode, path: &str) -> Response {
    let challenge = match auth {
        AuthMode::Basic { .. } => r#"Basic realm="fault""#.to_string(),
        AuthMode::Bearer { realm, service } | AuthMode::BearerToken { realm, service, .. } => {
            let mut challenge = format!(r#"Bearer realm="{realm}",service="{service}""#);
            if let Some(repository) = repository_of(path) {
                challenge.push_str(&format!(r#",scope="repository:{repository}:pull""#));
            }
            challenge
        }
    };
    let body = r#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#;
    let mut response = reply(401, "application/json", body.into());
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, challenge.parse().unwrap());
    response
}
