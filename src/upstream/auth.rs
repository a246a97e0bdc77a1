//! The Docker registry auth handshake: reading `WWW-Authenticate`
//! challenges and caching bearer tokens per scope until they expire.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A parsed `WWW-Authenticate` challenge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Challenge {
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
    Basic,
}

/// Reads a challenge such as
/// `Bearer realm="https://auth.example/token",service="x",scope="repository:a:pull"`.
pub fn parse_challenge(header: &str) -> Option<Challenge> {
    let header = header.trim();
    let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
    if scheme.eq_ignore_ascii_case("basic") {
        return Some(Challenge::Basic);
    }
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let mut params = parse_params(rest);
    Some(Challenge::Bearer {
        realm: params.remove("realm")?,
        service: params.remove("service"),
        scope: params.remove("scope"),
    })
}

/// Parses `key=value` pairs separated by commas, where a value may be a
/// quoted string containing commas and escaped quotes.
fn parse_params(text: &str) -> HashMap<String, String> {
    let mut params = HashMap::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.next_if(|c| *c == ',' || c.is_whitespace()).is_some() {}
        let key: String =
            std::iter::from_fn(|| chars.next_if(|c| *c != '=' && *c != ',')).collect();
        if key.is_empty() || chars.next() != Some('=') {
            return params;
        }
        let mut value = String::new();
        if chars.next_if_eq(&'"').is_some() {
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next()),
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            value.extend(std::iter::from_fn(|| chars.next_if(|c| *c != ',')));
        }
        params.insert(key.trim().to_ascii_lowercase(), value.trim().to_owned());
    }
}

/// The longest a token is kept, whatever its realm says.
const MAX_TOKEN_LIFETIME_SECS: u64 = 24 * 60 * 60;

/// The answer of a token endpoint; registries differ in which name they use.
#[derive(serde::Deserialize)]
pub struct TokenResponse {
    token: Option<String>,
    access_token: Option<String>,
    expires_in: Option<u64>,
}

impl TokenResponse {
    /// The token and how long it may be used. The spec says to assume 60
    /// seconds when a realm does not say; a margin keeps us from sending a
    /// token that expires in flight.
    pub fn into_token(self) -> Option<(String, Duration)> {
        let token = self.access_token.or(self.token).filter(|t| !t.is_empty())?;
        // A realm may claim any lifetime; a day is plenty and keeps the
        // expiry arithmetic far from overflowing.
        let lifetime = self
            .expires_in
            .unwrap_or(60)
            .clamp(10, MAX_TOKEN_LIFETIME_SECS);
        Some((token, Duration::from_secs(lifetime - lifetime / 10)))
    }
}

/// Bearer tokens by scope, dropped once they expire.
#[derive(Default)]
pub struct TokenCache {
    tokens: Mutex<HashMap<String, (String, Instant)>>,
}

impl TokenCache {
    pub fn get(&self, scope: &str) -> Option<String> {
        let tokens = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        let (token, expires) = tokens.get(scope)?;
        (Instant::now() < *expires).then(|| token.clone())
    }

    pub fn put(&self, scope: &str, token: String, lifetime: Duration) {
        let mut tokens = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        tokens.retain(|_, (_, expires)| *expires > now);
        tokens.insert(scope.to_owned(), (token, now + lifetime));
    }

    pub fn forget(&self, scope: &str) {
        let mut tokens = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        tokens.remove(scope);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_challenge_with_quoted_commas() {
        let c = parse_challenge(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/nginx:pull,push""#,
        );
        assert_eq!(
            c,
            Some(Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
                scope: Some("repository:library/nginx:pull,push".into()),
            })
        );
    }

    #[test]
    fn other_challenges() {
        assert_eq!(parse_challenge("Basic realm=\"x\""), Some(Challenge::Basic));
        assert_eq!(parse_challenge("Bearer service=\"x\""), None);
        assert_eq!(parse_challenge("Negotiate"), None);
        assert_eq!(
            parse_challenge("bearer realm=http://a/token"),
            Some(Challenge::Bearer {
                realm: "http://a/token".into(),
                service: None,
                scope: None
            })
        );
    }

    #[test]
    fn tokens_expire() {
        let cache = TokenCache::default();
        cache.put("s", "t".into(), Duration::from_secs(60));
        assert_eq!(cache.get("s").as_deref(), Some("t"));
        cache.put("gone", "t".into(), Duration::ZERO);
        assert_eq!(cache.get("gone"), None);
        cache.forget("s");
        assert_eq!(cache.get("s"), None);
    }

    #[test]
    fn token_response_prefers_access_token() {
        let r: TokenResponse =
            serde_json::from_str(r#"{"token":"a","access_token":"b","expires_in":300}"#).unwrap();
        assert_eq!(r.into_token(), Some(("b".into(), Duration::from_secs(270))));
        let r: TokenResponse = serde_json::from_str(r#"{"token":""}"#).unwrap();
        assert_eq!(r.into_token(), None);
        let r: TokenResponse =
            serde_json::from_str(r#"{"token":"a","expires_in":18446744073709551615}"#).unwrap();
        let (_, lifetime) = r.into_token().unwrap();
        assert!(lifetime <= Duration::from_secs(24 * 60 * 60));
    }
}
