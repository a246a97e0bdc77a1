//! The access layer: may this caller pull this? It decides who the caller
//! is (an account's token, an address a sponsor pulled from, or anyone),
//! applies the route's tier and repository patterns, and the tier's limits.

pub mod accounts;
pub mod grants;
pub mod limits;
pub mod policy;
pub mod tokens;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use accounts::{Accounts, LoginError};
use grants::{Grant, Grants};
use limits::{Download, Limiter};
use tokens::{IssuedToken, Permission, TokenError, Tokens};

use crate::config::{AccessConfig, Config, RoutePolicy, TIER_ANONYMOUS, TIER_GRANTED, Tier};
use crate::oci::error::RegistryError;
use crate::routing::Router;
use crate::state::{RateLimit, State};

/// Seconds since the Unix epoch.
pub(crate) fn now() -> u64 {
    crate::cache::now_secs()
}

/// Seconds since the epoch as an RFC 3339 date, for expiries people read.
pub fn date(seconds: u64) -> String {
    // Past the year 9999 the format has no way to say it.
    const LAST_SECOND_OF_9999: u64 = 253_402_300_799;
    match seconds {
        0..=LAST_SECOND_OF_9999 => {
            humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_secs(seconds))
                .to_string()
        }
        _ => "after 9999-12-31".into(),
    }
}

/// What the access layer needs to know of a request.
pub struct Caller<'a> {
    /// The client's address, through trusted proxies.
    pub client: IpAddr,
    /// The Host the request was sent to: the token audience.
    pub host: &'a str,
    pub authorization: Option<&'a str>,
}

/// Who a caller turned out to be.
#[derive(Clone, Debug)]
pub enum Standing {
    Anonymous,
    /// From an address a sponsor pulled from.
    Granted(Grant),
    /// With a valid token of an active account.
    Sponsor {
        account: String,
        tier: String,
    },
}

impl Standing {
    /// The tier whose limits apply.
    pub fn tier(&self) -> &str {
        match self {
            Standing::Anonymous => TIER_ANONYMOUS,
            Standing::Granted(_) => TIER_GRANTED,
            Standing::Sponsor { tier, .. } => tier,
        }
    }

    /// The account behind the request, for the access log.
    pub fn account(&self) -> Option<&str> {
        match self {
            Standing::Anonymous => None,
            Standing::Granted(grant) => Some(&grant.account),
            Standing::Sponsor { account, .. } => Some(account),
        }
    }
}

/// A request let through, and what it may still be held to.
pub struct Admission {
    pub standing: Standing,
    client: IpAddr,
}

pub struct Access {
    config: AccessConfig,
    policies: HashMap<String, RoutePolicy>,
    pub accounts: Accounts,
    pub tokens: Tokens,
    pub grants: Grants,
    limiter: Arc<Limiter>,
    state: State,
    login_turns: Vec<tokio::sync::Mutex<()>>,
}

/// Logins are serialised per network through this many locks.
const LOGIN_STRIPES: usize = 64;

fn login_stripe(network: ipnet::IpNet) -> usize {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    network.hash(&mut hasher);
    (hasher.finish() % LOGIN_STRIPES as u64) as usize
}

impl Access {
    pub fn new(config: &Config, state: State) -> Access {
        let access = &config.access;
        let policies = config
            .upstreams
            .iter()
            .map(|(name, upstream)| (name.clone(), upstream.policy.clone()))
            .collect();
        Access {
            config: access.clone(),
            policies,
            accounts: Accounts::new(state.clone()),
            tokens: Tokens::new(
                state.clone(),
                access.token_ttl,
                access.signing_key.as_deref(),
            ),
            grants: Grants::new(state.clone(), access),
            limiter: Arc::new(Limiter::new(state.clone(), access.limits.clone())),
            state,
            login_turns: (0..LOGIN_STRIPES)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
        }
    }

    fn tier_of(&self, upstream: &str) -> Tier {
        self.policies
            .get(upstream)
            .map_or(Tier::Free, |policy| policy.tier)
    }

    /// A /v2 request for `name` (as written in the path), routed to
    /// `repository` of `upstream`: rate limit, tier, then repository patterns.
    pub async fn admit(
        &self,
        caller: &Caller<'_>,
        upstream: &str,
        name: &str,
        repository: &str,
    ) -> Result<Admission, RegistryError> {
        let tier = self.tier_of(upstream);
        // On a free route with no limits, who the caller is changes nothing.
        let identified = if tier == Tier::Free && !self.limiter.any() {
            Ok(Standing::Anonymous)
        } else {
            self.identify(caller, Some(name)).await
        };
        let standing = match identified {
            Ok(standing) => standing,
            Err(_) if tier == Tier::Free => Standing::Anonymous,
            Err(refusal) => {
                self.count_request(caller, TIER_ANONYMOUS).await?;
                return Err(self.challenge(caller.host, upstream, Some(name), Some(refusal)));
            }
        };
        self.count_request(caller, standing.tier()).await?;
        if tier == Tier::Sponsor && matches!(standing, Standing::Anonymous) {
            return Err(self.challenge(caller.host, upstream, Some(name), None));
        }
        if let Some(policy) = self.policies.get(upstream) {
            policy::check(policy, upstream, repository)?;
        }
        Ok(Admission {
            standing,
            client: caller.client,
        })
    }

    /// `GET /v2/` on a host: it challenges only where the host itself serves
    /// a sponsor route, so that a free host never asks anyone to log in.
    pub async fn admit_base(
        &self,
        caller: &Caller<'_>,
        host_upstream: &str,
    ) -> Result<Standing, RegistryError> {
        if self.tier_of(host_upstream) == Tier::Free && !self.limiter.any() {
            return Ok(Standing::Anonymous);
        }
        let standing = self.identify(caller, None).await;
        let tier = standing.as_ref().map_or(TIER_ANONYMOUS, Standing::tier);
        self.count_request(caller, tier).await?;
        match standing {
            Ok(Standing::Anonymous) if self.tier_of(host_upstream) == Tier::Sponsor => {
                Err(self.challenge(caller.host, host_upstream, None, None))
            }
            Err(refusal) if self.tier_of(host_upstream) == Tier::Sponsor => {
                Err(self.challenge(caller.host, host_upstream, None, Some(refusal)))
            }
            Ok(standing) => Ok(standing),
            Err(_) => Ok(Standing::Anonymous),
        }
    }

    /// Starts a blob download this node streams; `None` when the tier has
    /// no download limits.
    pub async fn download(&self, admission: &Admission) -> Result<Option<Download>, RegistryError> {
        let network = self.grants.network_of(admission.client);
        self.limiter
            .download(network, admission.standing.tier())
            .await
    }

    async fn count_request(&self, caller: &Caller<'_>, tier: &str) -> Result<(), RegistryError> {
        let network = self.grants.network_of(caller.client);
        self.limiter.request(network, tier).await
    }

    /// A valid token of an active account makes a sponsor (and renews the
    /// address's grant); otherwise a grant on the address; otherwise anyone.
    /// A token that fails is the refusal's reason.
    async fn identify(&self, caller: &Caller<'_>, name: Option<&str>) -> Result<Standing, String> {
        // The scheme is case-insensitive (RFC 7235).
        let token = caller
            .authorization
            .and_then(|value| value.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim());
        let mut refusal = None;
        if let Some(token) = token {
            match self.sponsor(caller, token, name).await {
                Ok(standing) => return Ok(standing),
                Err(why) => refusal = Some(why),
            }
        }
        if let Some(grant) = self.grants.lookup(caller.client).await {
            let active = self
                .accounts
                .cached(&grant.account)
                .await
                .is_some_and(|a| a.is_active(now()));
            if active {
                return Ok(Standing::Granted(grant));
            }
        }
        match refusal {
            Some(why) => Err(why),
            None => Ok(Standing::Anonymous),
        }
    }

    async fn sponsor(
        &self,
        caller: &Caller<'_>,
        token: &str,
        name: Option<&str>,
    ) -> Result<Standing, String> {
        let claims = self
            .tokens
            .verify(token, caller.host)
            .await
            .map_err(|e: TokenError| e.to_string())?;
        if claims.sub.is_empty() {
            return Err("an anonymous token does not open sponsor routes".into());
        }
        if let Some(name) = name {
            if !claims.allows_pull(name) {
                return Err(format!("the token does not allow pulling {name}"));
            }
        }
        let account = self
            .accounts
            .cached(&claims.sub)
            .await
            .filter(|a| a.is_active(now()))
            .ok_or_else(|| format!("account {:?} is not active", claims.sub))?;
        // Only a pull, not the login's /v2/ check, earns the address a grant.
        if name.is_some() {
            self.grants.grant(caller.client, &account).await;
        }
        Ok(Standing::Sponsor {
            account: account.name,
            tier: account.tier,
        })
    }

    /// 401 for a sponsor route, with where to log in and where to read more;
    /// 400 if the Host cannot be put in a challenge.
    fn challenge(
        &self,
        host: &str,
        upstream: &str,
        name: Option<&str>,
        refusal: Option<String>,
    ) -> RegistryError {
        if !is_host(host) {
            return bad_host();
        }
        let realm = format!("{}://{host}/token", self.config.realm_scheme);
        let mut challenge = format!("Bearer realm=\"{realm}\",service=\"{host}\"");
        if let Some(name) = name {
            challenge.push_str(&format!(",scope=\"repository:{name}:pull\""));
        }
        if refusal.is_some() {
            challenge.push_str(",error=\"invalid_token\"");
        }
        let info = self
            .config
            .sponsor_info
            .clone()
            .unwrap_or_else(|| format!("{}://{host}/", self.config.realm_scheme));
        let why = refusal.map(|r| format!("{r}. ")).unwrap_or_default();
        RegistryError::unauthorized(
            format!(
                "{why}{host} serves {upstream} to sponsors only: log in with a sponsor account, or pull from an address a sponsor has pulled from; see {info}"
            ),
            challenge,
        )
    }

    /// `/token`: a login (Basic credentials or an OAuth password grant) or
    /// an anonymous request, for the scopes asked.
    pub async fn token(
        &self,
        router: &Router,
        request: TokenRequest<'_>,
    ) -> Result<IssuedToken, RegistryError> {
        if !is_host(request.host) {
            return Err(bad_host());
        }
        if request.scopes.len() > MAX_SCOPES {
            return Err(RegistryError::new(
                crate::oci::error::Fault::Client,
                http::StatusCode::BAD_REQUEST,
                crate::oci::error::ErrorCode::Unsupported,
                format!("at most {MAX_SCOPES} scopes may be asked for at once"),
            ));
        }
        let permissions: Vec<Permission> = request
            .scopes
            .iter()
            .filter_map(|scope| tokens::pull_scope(scope))
            .collect();

        let Some((user, password)) = request.credentials else {
            // Anonymous tokens open nothing; they exist for clients that
            // always ask, and only for free routes.
            for permission in &permissions {
                let upstream = router
                    .route(&permission.name, None, Some(request.host))
                    .map(|route| route.upstream)?;
                if self.tier_of(&upstream) == Tier::Sponsor {
                    return Err(self.login_required(request.host, &upstream));
                }
            }
            return self
                .tokens
                .issue(request.host, "", TIER_ANONYMOUS, permissions)
                .await
                .map_err(|e| RegistryError::internal(e.to_string()));
        };

        let network = self.grants.network_of(request.client);
        // One login per network at a time on this replica, so that a burst
        // cannot check many passwords before the first failure is counted.
        let _turn = self.login_turns[login_stripe(network)].lock().await;
        let failures_key = format!("login-failures/{network}");
        let failures = RateLimit {
            count: self.config.login_failures_per_minute,
            period: Duration::from_secs(60),
        };
        let peek = self.state.rate(&failures_key, failures, 0).await;
        if !peek.allowed {
            return Err(RegistryError::too_many_requests(
                format!(
                    "too many failed logins from {network} (login_failures_per_minute is {}); retry later",
                    failures.count
                ),
                peek.retry_after,
            ));
        }
        let account = match self.accounts.verify(user, password).await {
            Ok(account) => account,
            Err(LoginError::Unavailable) => {
                return Err(RegistryError::new(
                    crate::oci::error::Fault::Internal,
                    http::StatusCode::SERVICE_UNAVAILABLE,
                    crate::oci::error::ErrorCode::Unavailable,
                    LoginError::Unavailable.to_string(),
                )
                .with_retry_after(5));
            }
            Err(refused) => {
                self.state.rate(&failures_key, failures, 1).await;
                tracing::info!(user, %network, reason = %refused, "login refused");
                return Err(RegistryError::unauthorized(
                    refused.to_string(),
                    "Basic realm=\"lank8s\"".into(),
                ));
            }
        };
        self.tokens
            .issue(request.host, &account.name, &account.tier, permissions)
            .await
            .map_err(|e| RegistryError::internal(e.to_string()))
    }

    fn login_required(&self, host: &str, upstream: &str) -> RegistryError {
        let mut err = self.challenge(host, upstream, None, None);
        err.challenge = Some("Basic realm=\"lank8s\"".into());
        err
    }
}

/// Scopes one `/token` request may ask for; a pull asks for one or two.
const MAX_SCOPES: usize = 32;

/// Whether `host` (a Host header) can be an audience and go into a
/// challenge: a name or address with an optional port, nothing to quote.
fn is_host(host: &str) -> bool {
    (1..=255).contains(&host.len())
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
}

fn bad_host() -> RegistryError {
    RegistryError::new(
        crate::oci::error::Fault::Client,
        http::StatusCode::BAD_REQUEST,
        crate::oci::error::ErrorCode::Unsupported,
        "the Host header must be a host name or address, with an optional port",
    )
}

/// A `/token` request as the HTTP layer read it.
pub struct TokenRequest<'a> {
    pub client: IpAddr,
    pub host: &'a str,
    pub credentials: Option<(&'a str, &'a str)>,
    pub scopes: Vec<String>,
}
