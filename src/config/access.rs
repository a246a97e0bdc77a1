//! The access keys: which routes are for sponsors, the token service, IP
//! grants, fair-use limits per tier, and repository allow/deny patterns.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, invalid};

/// Upstreams that are for sponsors unless configured otherwise.
fn sponsor_by_default(upstream: &str) -> bool {
    upstream == "gcr.io" || upstream.ends_with(".pkg.dev")
}

/// The limit tiers every configuration has; accounts may name more.
pub const TIER_ANONYMOUS: &str = "anonymous";
pub const TIER_GRANTED: &str = "granted";
pub const TIER_SPONSOR: &str = "sponsor";

/// Who may pull through an upstream's routes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tier {
    /// Anyone; the mirror never challenges.
    Free,
    /// Sponsors: a token from `/token`, or an address they have pulled from.
    Sponsor,
}

impl Tier {
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Free => "free",
            Tier::Sponsor => "sponsor",
        }
    }
}

#[derive(Clone, Debug)]
pub struct AccessConfig {
    /// Scheme of the token realm in challenges: `https` behind TLS, `http`
    /// for a plain-HTTP mirror.
    pub realm_scheme: String,
    /// Where a refused client can read about sponsoring; default
    /// `https://<host>/`.
    pub sponsor_info: Option<String>,
    pub token_ttl: Duration,
    /// HS256 secret shared by all replicas; unset, one is generated once
    /// and kept in the state store.
    pub signing_key: Option<String>,
    pub grant_ttl: Duration,
    pub grant_prefix_v4: u8,
    pub grant_prefix_v6: u8,
    /// Failed logins allowed per client address and minute.
    pub login_failures_per_minute: u32,
    /// Limits by tier name: `anonymous`, `granted`, `sponsor` and any tier
    /// accounts are given.
    pub limits: BTreeMap<String, Limits>,
}

/// Fair-use limits of one tier; `None` is unlimited.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Limits {
    pub requests_per_minute: Option<u32>,
    pub concurrent_downloads: Option<u32>,
    pub bytes_per_second: Option<u64>,
    pub bytes_per_day: Option<u64>,
}

impl AccessConfig {
    pub fn limits(&self, tier: &str) -> Limits {
        self.limits.get(tier).copied().unwrap_or_default()
    }
}

/// How an upstream's routes are guarded.
#[derive(Clone, Debug)]
pub struct RoutePolicy {
    pub tier: Tier,
    /// Repository patterns served; none set serves all.
    allow: Option<globset::GlobSet>,
    /// Repository patterns refused, even if allowed.
    deny: Option<globset::GlobSet>,
}

/// Why a route does not serve a repository.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    NotAllowed,
    Denied,
}

impl RoutePolicy {
    pub fn new(tier: Tier, allow: &[String], deny: &[String]) -> Result<RoutePolicy, String> {
        Ok(RoutePolicy {
            tier,
            allow: glob_set(allow)?,
            deny: glob_set(deny)?,
        })
    }

    pub fn is_open(&self) -> bool {
        self.allow.is_none() && self.deny.is_none()
    }

    /// Whether the allow and deny patterns let `repository` through.
    pub fn refusal(&self, repository: &str) -> Option<Refusal> {
        if self
            .allow
            .as_ref()
            .is_some_and(|allow| !allow.is_match(repository))
        {
            return Some(Refusal::NotAllowed);
        }
        if self
            .deny
            .as_ref()
            .is_some_and(|deny| deny.is_match(repository))
        {
            return Some(Refusal::Denied);
        }
        None
    }
}

fn glob_set(patterns: &[String]) -> Result<Option<globset::GlobSet>, String> {
    if patterns.is_empty() {
        return Ok(None);
    }
    let mut builder = globset::GlobSetBuilder::new();
    for pattern in patterns {
        builder.add(repository_glob(pattern)?);
    }
    builder.build().map(Some).map_err(|e| e.to_string())
}

// === the file as written ===

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAccess {
    realm_scheme: Option<String>,
    sponsor_info: Option<String>,
    #[serde(default, with = "humantime_serde")]
    token_ttl: Option<Duration>,
    signing_key: Option<String>,
    #[serde(default, with = "humantime_serde")]
    grant_ttl: Option<Duration>,
    grant_prefix_v4: Option<u8>,
    grant_prefix_v6: Option<u8>,
    login_failures_per_minute: Option<u32>,
    #[serde(default)]
    limits: BTreeMap<String, RawLimits>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    requests_per_minute: Option<u32>,
    concurrent_downloads: Option<u32>,
    bytes_per_second: Option<bytesize::ByteSize>,
    bytes_per_day: Option<bytesize::ByteSize>,
}

pub(super) fn resolve_access(raw: RawAccess) -> Result<AccessConfig, ConfigError> {
    let realm_scheme = raw.realm_scheme.unwrap_or_else(|| "https".into());
    if realm_scheme != "https" && realm_scheme != "http" {
        return Err(invalid(
            "access.realm_scheme",
            format!("{realm_scheme:?} is not \"https\" or \"http\""),
        ));
    }
    if let Some(info) = &raw.sponsor_info {
        url::Url::parse(info)
            .map_err(|e| invalid("access.sponsor_info", format!("not a URL ({e})")))?;
    }
    if raw.signing_key.as_ref().is_some_and(|k| k.len() < 32) {
        return Err(invalid(
            "access.signing_key",
            "must be at least 32 characters of random text",
        ));
    }

    let token_ttl = raw.token_ttl.unwrap_or(Duration::from_secs(300));
    let grant_ttl = raw.grant_ttl.unwrap_or(Duration::from_secs(30 * 86_400));
    for (key, value) in [("token_ttl", token_ttl), ("grant_ttl", grant_ttl)] {
        if value < Duration::from_secs(1) {
            return Err(invalid(&format!("access.{key}"), "must be at least 1s"));
        }
    }
    let grant_prefix_v4 = raw.grant_prefix_v4.unwrap_or(32);
    if !(8..=32).contains(&grant_prefix_v4) {
        return Err(invalid("access.grant_prefix_v4", "must be from 8 to 32"));
    }
    let grant_prefix_v6 = raw.grant_prefix_v6.unwrap_or(64);
    if !(16..=128).contains(&grant_prefix_v6) {
        return Err(invalid("access.grant_prefix_v6", "must be from 16 to 128"));
    }

    let login_failures_per_minute = raw.login_failures_per_minute.unwrap_or(10);
    if login_failures_per_minute == 0 {
        return Err(invalid(
            "access.login_failures_per_minute",
            "must be at least 1: with 0 nobody could ever log in",
        ));
    }

    let mut limits: BTreeMap<String, Limits> = [TIER_ANONYMOUS, TIER_GRANTED, TIER_SPONSOR]
        .iter()
        .map(|tier| (tier.to_string(), Limits::default()))
        .collect();
    for (tier, raw) in raw.limits {
        let key = |field: &str| format!("access.limits.{tier}.{field}");
        if tier.is_empty() || !tier.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return Err(invalid(
                &format!("access.limits.{tier:?}"),
                "a tier name is letters, digits and '-'",
            ));
        }
        // Zero would refuse everything; an operator who means that denies
        // the repositories instead.
        let positive = |field: &str, value: Option<u64>| match value {
            Some(0) => Err(invalid(
                &key(field),
                "must be above zero; leave it out for no limit",
            )),
            other => Ok(other),
        };
        let requests_per_minute = positive(
            "requests_per_minute",
            raw.requests_per_minute.map(u64::from),
        )?;
        let concurrent_downloads = positive(
            "concurrent_downloads",
            raw.concurrent_downloads.map(u64::from),
        )?;
        let bytes_per_second =
            positive("bytes_per_second", raw.bytes_per_second.map(|b| b.as_u64()))?;
        if bytes_per_second.is_some_and(|b| b < 1024) {
            return Err(invalid(&key("bytes_per_second"), "must be at least 1 KiB"));
        }
        let bytes_per_day = positive("bytes_per_day", raw.bytes_per_day.map(|b| b.as_u64()))?;
        limits.insert(
            tier.clone(),
            Limits {
                requests_per_minute: requests_per_minute.map(|n| n as u32),
                concurrent_downloads: concurrent_downloads.map(|n| n as u32),
                bytes_per_second,
                bytes_per_day,
            },
        );
    }

    Ok(AccessConfig {
        realm_scheme,
        sponsor_info: raw.sponsor_info,
        token_ttl,
        signing_key: raw.signing_key,
        grant_ttl,
        grant_prefix_v4,
        grant_prefix_v6,
        login_failures_per_minute,
        limits,
    })
}

pub(super) fn resolve_route_policy(
    upstream: &str,
    tier: Option<String>,
    allow: Option<Vec<String>>,
    deny: Option<Vec<String>>,
) -> Result<RoutePolicy, ConfigError> {
    let key = |field: &str| format!("upstreams.{upstream:?}.{field}");
    let tier = match tier.as_deref() {
        None if sponsor_by_default(upstream) => Tier::Sponsor,
        None | Some("free") => Tier::Free,
        Some("sponsor") => Tier::Sponsor,
        Some(other) => {
            return Err(invalid(
                &key("tier"),
                format!("{other:?} is not \"free\" or \"sponsor\""),
            ));
        }
    };
    let allow = allow.unwrap_or_default();
    let deny = deny.unwrap_or_default();
    for (field, patterns) in [("allow", &allow), ("deny", &deny)] {
        for pattern in patterns {
            repository_glob(pattern).map_err(|why| invalid(&key(field), why))?;
        }
    }
    RoutePolicy::new(tier, &allow, &deny).map_err(|why| invalid(&key("allow"), why))
}

/// A repository pattern: `*` stays within one path component, `**` spans
/// several (`kube-*`, `distroless/**`).
fn repository_glob(pattern: &str) -> Result<globset::Glob, String> {
    globset::GlobBuilder::new(pattern)
        .literal_separator(true)
        .build()
        .map_err(|e| format!("{pattern:?} is not a repository pattern ({e})"))
}

/// Where replicas keep shared state.
#[derive(Clone, PartialEq, Eq)]
pub enum StateConfig {
    /// A file in `data_dir`.
    Embedded,
    /// A Redis server, as a `redis://` URL.
    Redis(String),
}

impl StateConfig {
    /// The Redis URL, or `None` for the embedded store.
    pub fn redis_url(&self) -> Option<&str> {
        match self {
            StateConfig::Embedded => None,
            StateConfig::Redis(url) => Some(url),
        }
    }
}

impl std::fmt::Debug for StateConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StateConfig::Embedded => write!(f, "Embedded"),
            // The URL may carry a password.
            StateConfig::Redis(_) => write!(f, "Redis(<url>)"),
        }
    }
}

pub(super) fn resolve_state(raw: Option<String>) -> Result<StateConfig, ConfigError> {
    let Some(text) = raw.filter(|t| t != "embedded") else {
        return Ok(StateConfig::Embedded);
    };
    let url = url::Url::parse(&text)
        .map_err(|_| invalid("state", "is not \"embedded\" or a redis://host:port URL"))?;
    if url.scheme() != "redis" || url.host_str().is_none() {
        return Err(invalid(
            "state",
            "is not \"embedded\" or a redis://host:port URL",
        ));
    }
    Ok(StateConfig::Redis(text))
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, Tier};

    #[test]
    fn sponsor_routes_by_default_as_on_a_public_mirror() {
        let config = Config::embedded();
        let tier = |name: &str| config.upstreams[name].policy.tier;
        assert_eq!(tier("registry.k8s.io"), Tier::Free);
        assert_eq!(tier("k8s.gcr.io"), Tier::Free);
        assert_eq!(tier("docker.io"), Tier::Free);
        assert_eq!(tier("gcr.io"), Tier::Sponsor);
        assert_eq!(tier("us-central1-docker.pkg.dev"), Tier::Sponsor);
        assert_eq!(config.state, super::StateConfig::Embedded);
        assert_eq!(config.access.limits.len(), 3);
        assert!(
            config
                .access
                .limits
                .values()
                .all(|l| *l == super::Limits::default())
        );
    }

    #[test]
    fn limits_take_sizes_with_units() {
        let config = Config::parse(
            "state = \"redis://127.0.0.1:6379/0\"\n\
             [access.limits.anonymous]\nrequests_per_minute = 60\nbytes_per_second = \"20 MiB\"\nbytes_per_day = 1048576\n\
             [access.limits.gold]\nconcurrent_downloads = 4\n\
             [upstreams.\"gcr.io\"]\ntier = \"free\"\nallow = [\"distroless/**\"]\n",
        )
        .unwrap();
        let anonymous = config.access.limits("anonymous");
        assert_eq!(anonymous.requests_per_minute, Some(60));
        assert_eq!(anonymous.bytes_per_second, Some(20 << 20));
        assert_eq!(anonymous.bytes_per_day, Some(1 << 20));
        assert_eq!(config.access.limits("gold").concurrent_downloads, Some(4));
        assert_eq!(config.upstreams["gcr.io"].policy.tier, Tier::Free);
        assert!(matches!(config.state, super::StateConfig::Redis(_)));
        // The URL may hold a password; Debug never shows it.
        assert!(!format!("{:?}", config.state).contains("6379"));
    }

    #[test]
    fn access_errors_name_the_key() {
        for (text, key) in [
            ("state = \"mysql://x\"", "state"),
            ("[access]\nrealm_scheme = \"ftp\"", "access.realm_scheme"),
            ("[access]\nsigning_key = \"short\"", "access.signing_key"),
            ("[access]\ngrant_prefix_v6 = 200", "access.grant_prefix_v6"),
            ("[access]\ntoken_ttl = \"0s\"", "access.token_ttl"),
            (
                "[access.limits.anonymous]\nrequests_per_minute = 0",
                "access.limits.anonymous.requests_per_minute",
            ),
            (
                "[access.limits.anonymous]\nbytes_per_second = \"lots\"",
                "access.limits.anonymous.bytes_per_second",
            ),
            (
                "[access.limits.anonymous]\nrpm = 5",
                "access.limits.anonymous",
            ),
            (
                "[upstreams.\"gcr.io\"]\ntier = \"gold\"",
                "upstreams.\"gcr.io\".tier",
            ),
            (
                "[upstreams.\"gcr.io\"]\ndeny = [\"a[\"]",
                "upstreams.\"gcr.io\".deny",
            ),
        ] {
            let err = Config::parse(text).unwrap_err().to_string();
            assert!(
                err.starts_with(key),
                "{text:?} gave {err:?}, expected it to name {key}"
            );
        }
    }
}
