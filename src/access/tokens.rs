//! Bearer tokens for sponsor routes: HS256 JWTs for one host (the
//! audience), pull-scoped to named repositories, short-lived.

use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use super::now;
use crate::state::State;

const ISSUER: &str = "lank8s";
const KEY_NAME: &str = "token-key";
/// How often a replica that could not reach the state store tries again
/// to learn the shared key.
const KEY_RETRY: Duration = Duration::from_secs(30);
/// Clock difference tolerated between replicas.
const LEEWAY_SECS: u64 = 5;

/// One `access` entry of a token: what may be done to which repository.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Permission {
    #[serde(rename = "type")]
    pub kind: String,
    pub name: String,
    pub actions: Vec<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    /// The account; empty for an anonymous token.
    pub sub: String,
    pub aud: String,
    pub exp: u64,
    pub nbf: u64,
    pub iat: u64,
    pub jti: String,
    #[serde(default)]
    pub access: Vec<Permission>,
    /// The limit tier of the account.
    #[serde(default)]
    pub tier: String,
}

impl Claims {
    /// Whether the token lets its holder pull `repository` (the name as
    /// the client wrote it in the path).
    pub fn allows_pull(&self, repository: &str) -> bool {
        self.access.iter().any(|grant| {
            grant.kind == "repository"
                && grant.name == repository
                && grant.actions.iter().any(|a| a == "pull")
        })
    }
}

/// What `/token` answers.
#[derive(Debug, Serialize)]
pub struct IssuedToken {
    pub token: String,
    pub access_token: String,
    pub expires_in: u64,
    pub issued_at: String,
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("the token has expired")]
    Expired,
    #[error("the token is for another host")]
    WrongAudience,
    #[error("the token's signature does not verify")]
    BadSignature,
    #[error("the token is malformed: {0}")]
    Malformed(String),
}

pub struct Tokens {
    state: State,
    ttl: Duration,
    /// Set from configuration: the only key, shared by construction.
    configured: Option<Arc<Key>>,
    /// The key all replicas keep in the state store, once learned.
    shared: RwLock<Option<Arc<Key>>>,
    /// Used while the shared key cannot be learned: tokens it signs are
    /// good on this replica only.
    local: Arc<Key>,
    last_attempt: Mutex<Option<Instant>>,
}

struct Key {
    encoding: EncodingKey,
    decoding: DecodingKey,
}

impl Key {
    fn new(secret: &[u8]) -> Key {
        Key {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
        }
    }
}

impl Tokens {
    pub fn new(state: State, ttl: Duration, signing_key: Option<&str>) -> Tokens {
        let random: [u8; 32] = rand::random();
        Tokens {
            state,
            ttl,
            configured: signing_key.map(|k| Arc::new(Key::new(k.as_bytes()))),
            shared: RwLock::new(None),
            local: Arc::new(Key::new(&random)),
            last_attempt: Mutex::new(None),
        }
    }

    /// Signs a token for `audience` (the host asked).
    pub async fn issue(
        &self,
        audience: &str,
        subject: &str,
        tier: &str,
        access: Vec<Permission>,
    ) -> Result<IssuedToken, TokenError> {
        let key = self.signing_key().await;
        let issued = now();
        let jti: [u8; 12] = rand::random();
        let claims = Claims {
            iss: ISSUER.into(),
            sub: subject.into(),
            aud: audience.into(),
            exp: issued + self.ttl.as_secs(),
            nbf: issued.saturating_sub(LEEWAY_SECS),
            iat: issued,
            jti: hex::encode(jti),
            access,
            tier: tier.into(),
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &key.encoding)
            .map_err(|e| TokenError::Malformed(e.to_string()))?;
        Ok(IssuedToken {
            access_token: token.clone(),
            token,
            expires_in: self.ttl.as_secs(),
            issued_at: humantime::format_rfc3339_seconds(
                std::time::UNIX_EPOCH + Duration::from_secs(issued),
            )
            .to_string(),
        })
    }

    /// Checks signature (HS256 only, so `alg: none` never passes), expiry,
    /// issuer and audience; scope is the caller's to check.
    pub async fn verify(&self, token: &str, audience: &str) -> Result<Claims, TokenError> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_audience(&[audience]);
        validation.set_issuer(&[ISSUER]);
        validation.set_required_spec_claims(&["exp", "aud", "iss", "sub"]);
        validation.leeway = LEEWAY_SECS;
        validation.validate_nbf = true;

        // Read the algorithm first, so that `none` and the rest are refused
        // in one plain sentence rather than a parser's.
        let alg = token
            .split('.')
            .next()
            .and_then(|header| {
                base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(header)
                    .ok()
            })
            .and_then(|header| serde_json::from_slice::<serde_json::Value>(&header).ok())
            .and_then(|header| {
                header
                    .get("alg")
                    .and_then(|a| a.as_str())
                    .map(str::to_owned)
            })
            .ok_or_else(|| TokenError::Malformed("not a JWT".into()))?;
        if alg != "HS256" {
            return Err(TokenError::Malformed(format!(
                "only HS256 tokens are accepted, not {alg:?}"
            )));
        }

        let mut keys = Vec::with_capacity(2);
        match &self.configured {
            Some(key) => keys.push(key.clone()),
            None => {
                if let Some(shared) = self.shared_key().await {
                    keys.push(shared);
                }
                keys.push(self.local.clone());
            }
        }
        let mut failure = TokenError::BadSignature;
        for key in keys {
            match jsonwebtoken::decode::<Claims>(token, &key.decoding, &validation) {
                Ok(data) => return Ok(data.claims),
                Err(e) => {
                    use jsonwebtoken::errors::ErrorKind;
                    failure = match e.kind() {
                        ErrorKind::InvalidSignature => TokenError::BadSignature,
                        ErrorKind::ExpiredSignature | ErrorKind::ImmatureSignature => {
                            TokenError::Expired
                        }
                        ErrorKind::InvalidAudience => TokenError::WrongAudience,
                        ErrorKind::InvalidAlgorithm => {
                            TokenError::Malformed("only HS256 tokens are accepted".into())
                        }
                        _ => TokenError::Malformed(e.to_string()),
                    };
                    // Only a bad signature may mean "try the other key".
                    if !matches!(failure, TokenError::BadSignature) {
                        return Err(failure);
                    }
                }
            }
        }
        Err(failure)
    }

    async fn signing_key(&self) -> Arc<Key> {
        if let Some(key) = &self.configured {
            return key.clone();
        }
        self.shared_key()
            .await
            .unwrap_or_else(|| self.local.clone())
    }

    /// The key every replica signs with: generated by whichever replica
    /// asks first, then read by the rest.
    async fn shared_key(&self) -> Option<Arc<Key>> {
        if let Some(key) = self.read_shared() {
            return Some(key);
        }
        {
            let mut last = self.last_attempt.lock().unwrap_or_else(|e| e.into_inner());
            if last.is_some_and(|at| at.elapsed() < KEY_RETRY) {
                return None;
            }
            *last = Some(Instant::now());
        }
        let engine = base64::engine::general_purpose::STANDARD;
        let candidate: [u8; 32] = rand::random();
        let learned = async {
            self.state
                .put_new(KEY_NAME, engine.encode(candidate).as_bytes(), None)
                .await?;
            self.state.get(KEY_NAME).await
        }
        .await;
        let secret = match learned {
            Ok(Some(text)) => engine.decode(&text).ok()?,
            Ok(None) => return None,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the shared token key; tokens signed now are good on this replica only");
                return None;
            }
        };
        let key = Arc::new(Key::new(&secret));
        *self.shared.write().unwrap_or_else(|e| e.into_inner()) = Some(key.clone());
        Some(key)
    }

    fn read_shared(&self) -> Option<Arc<Key>> {
        self.shared
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// Reads a `scope` value (`repository:<name>:pull,push`) into the pull
/// grant it can give; other resource types and actions are dropped.
pub fn pull_scope(scope: &str) -> Option<Permission> {
    let (kind, rest) = scope.split_once(':')?;
    let (name, actions) = rest.rsplit_once(':')?;
    // Names go into tokens and challenges: keep them to what a repository
    // name (with a registry host and port in front) can hold.
    let plain = name.len() <= 256
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-/:".contains(&b));
    if kind != "repository"
        || !plain
        || name.is_empty()
        || !actions.split(',').any(|a| a == "pull" || a == "*")
    {
        return None;
    }
    Some(Permission {
        kind: kind.into(),
        name: name.into(),
        actions: vec!["pull".into()],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_keep_only_repository_pulls() {
        let grant = pull_scope("repository:library/nginx:pull,push").unwrap();
        assert_eq!(grant.name, "library/nginx");
        assert_eq!(grant.actions, vec!["pull".to_string()]);
        // A registry host with a port stays part of the name.
        assert_eq!(
            pull_scope("repository:gcr.io:443/x:pull").unwrap().name,
            "gcr.io:443/x"
        );
        assert!(pull_scope("repository:x:push").is_none());
        assert!(pull_scope("registry:catalog:*").is_none());
        assert!(pull_scope("repository::pull").is_none());
        assert!(pull_scope("nonsense").is_none());
    }
}
