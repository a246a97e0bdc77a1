//! Typed configuration: the TOML file's keys, their embedded defaults, and
//! validation whose messages name the offending key.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use url::Url;

mod access;

pub use access::{
    AccessConfig, Limits, Refusal, RoutePolicy, StateConfig, TIER_ANONYMOUS, TIER_GRANTED,
    TIER_SPONSOR, Tier,
};

/// The registries mirrored out of the box: (name, url, other names, library prefix).
const BUILTIN_UPSTREAMS: &[(&str, &str, &[&str], bool)] = &[
    ("registry.k8s.io", "https://registry.k8s.io", &[], false),
    ("k8s.gcr.io", "https://registry.k8s.io", &[], false),
    ("gcr.io", "https://gcr.io", &[], false),
    (
        "us-central1-docker.pkg.dev",
        "https://us-central1-docker.pkg.dev",
        &[],
        false,
    ),
    (
        "docker.io",
        "https://registry-1.docker.io",
        &["registry-1.docker.io", "index.docker.io"],
        true,
    ),
    ("quay.io", "https://quay.io", &[], false),
    ("ghcr.io", "https://ghcr.io", &[], false),
];

/// Repositories answered from another repository of the same upstream when
/// upstream has no such name. kubeadm asks a custom image repository for a
/// flat `coredns`, while registry.k8s.io keeps new CoreDNS releases only
/// under `coredns/coredns`.
const BUILTIN_ALIASES: &[(&str, &str, &str)] = &[
    ("registry.k8s.io", "coredns", "coredns/coredns"),
    ("k8s.gcr.io", "coredns", "coredns/coredns"),
];

/// Subdomains of `domain` and the upstream each serves; `@` is the apex.
const BUILTIN_HOSTS: &[(&str, &str)] = &[
    ("@", "registry.k8s.io"),
    ("registry", "registry.k8s.io"),
    ("gcr", "gcr.io"),
    ("k8s", "k8s.gcr.io"),
    ("docker", "docker.io"),
    ("us-central1-docker.pkgdev", "us-central1-docker.pkg.dev"),
];

/// The most extra attempts an upstream request may make.
const MAX_RETRIES: u32 = 10;

pub const DEFAULT_LISTEN: &str = "0.0.0.0:5000";
pub const DEFAULT_DATA_DIR: &str = "lank8s-data";

/// A configuration that could not be used; the message names the key.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(String);

fn invalid(key: &str, why: impl std::fmt::Display) -> ConfigError {
    ConfigError(format!("{key}: {why}"))
}

/// The effective configuration after defaults and validation.
#[derive(Clone, Debug)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    /// Peers whose `X-Forwarded-For` / `Forwarded` headers are believed.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// The one header those proxies write.
    pub forwarded_header: ForwardedHeader,
    pub domain: Option<String>,
    pub default_upstream: String,
    pub hosts: BTreeMap<String, String>,
    pub log: LogConfig,
    pub cache: CacheConfig,
    pub storage: StorageConfig,
    pub dispatch: DispatchConfig,
    pub upstreams: BTreeMap<String, UpstreamConfig>,
    /// Where accounts, grants, limit counters and token keys live.
    pub state: StateConfig,
    pub access: AccessConfig,
}

/// Where cached content lives.
#[derive(Clone, Debug)]
pub enum StorageConfig {
    /// `data_dir` on local disk.
    Fs,
    S3(ObjectStoreConfig),
    Oss(ObjectStoreConfig),
    Gcs(ObjectStoreConfig),
}

/// An object store bucket. Unset credentials come from the service's usual
/// environment variables (`AWS_ACCESS_KEY_ID`, `GOOGLE_APPLICATION_CREDENTIALS`, …).
#[derive(Clone)]
pub struct ObjectStoreConfig {
    pub bucket: String,
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub root: String,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    pub credential_path: Option<String>,
    pub virtual_host_style: bool,
}

impl std::fmt::Debug for ObjectStoreConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectStoreConfig")
            .field("bucket", &self.bucket)
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("root", &self.root)
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

/// How a blob leaves lank8s.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeliveryMode {
    /// lank8s sends the bytes.
    Stream,
    /// A stored blob is answered with a 307 to a presigned URL.
    Redirect,
}

#[derive(Clone, Debug)]
pub struct DispatchConfig {
    pub mode: DeliveryMode,
    pub presign_expiry: Duration,
    /// Named places a client may be sent to besides the store: a CDN or a
    /// replica bucket, as a URL template with `{key}` and `{digest}`.
    pub targets: Vec<TargetConfig>,
    /// Client networks and the ordered targets tried for them.
    pub regions: Vec<RegionConfig>,
}

/// The built-in target names: `store` (a presigned URL of the object
/// store) and `self` (this node streams the bytes).
pub const TARGET_STORE: &str = "store";
pub const TARGET_SELF: &str = "self";

#[derive(Clone)]
pub struct TargetConfig {
    pub name: String,
    pub url: String,
    /// The key for CDN URL authentication ("type A": an `auth_key` query
    /// parameter of timestamp, nonce and an MD5 over the path and this key).
    pub sign_key: Option<String>,
}

impl std::fmt::Debug for TargetConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TargetConfig")
            .field("name", &self.name)
            .field("url", &self.url)
            .field("signed", &self.sign_key.is_some())
            .finish()
    }
}

#[derive(Clone, Debug)]
pub struct RegionConfig {
    pub networks: Vec<ipnet::IpNet>,
    pub targets: Vec<String>,
}

/// Which header trusted proxies put the client's address in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ForwardedHeader {
    XForwardedFor,
    Forwarded,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Debug)]
pub struct LogConfig {
    pub format: LogFormat,
    pub level: String,
}

#[derive(Clone, Debug)]
pub struct CacheConfig {
    /// Bytes of manifests kept in memory in front of the disk cache.
    pub manifest_memory_bytes: u64,
}

#[derive(Clone, Debug)]
pub struct UpstreamConfig {
    pub name: String,
    pub url: Url,
    /// Other names clients use for this registry in `ns=` or a path prefix.
    pub names: Vec<String>,
    /// Docker Hub style: a one-component name means `library/<name>`.
    pub library_prefix: bool,
    /// How long a tag → digest answer is trusted before it is revalidated.
    pub tag_ttl: Duration,
    pub connect_timeout: Duration,
    /// Longest wait for response headers, and for each read of a body.
    pub timeout: Duration,
    /// Extra attempts for idempotent requests after a connect error or 5xx.
    pub retries: u32,
    pub credentials: Option<Credentials>,
    /// Token realm hosts (besides the upstream's own) allowed to receive
    /// the credentials.
    pub credential_hosts: Vec<String>,
    /// Repository → repositories tried in order when upstream answers 404.
    pub aliases: BTreeMap<String, Vec<String>>,
    /// Tag TTL for signature and attestation tags (`sha256-<hex>.sig` …).
    pub signature_tag_ttl: Duration,
    /// Who may pull through this upstream, and which repositories.
    pub policy: RoutePolicy,
}

#[derive(Clone)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Credentials {{ username: {:?}, password: <hidden> }}",
            self.username
        )
    }
}

// === the file as written ===

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    listen: Option<String>,
    trusted_proxies: Option<Vec<String>>,
    forwarded_header: Option<String>,
    data_dir: Option<PathBuf>,
    domain: Option<String>,
    default_upstream: Option<String>,
    #[serde(default)]
    hosts: BTreeMap<String, String>,
    #[serde(default)]
    log: RawLog,
    #[serde(default)]
    cache: RawCache,
    #[serde(default)]
    storage: RawStorage,
    #[serde(default)]
    dispatch: RawDispatch,
    #[serde(default)]
    upstreams: BTreeMap<String, RawUpstream>,
    state: Option<String>,
    #[serde(default)]
    access: access::RawAccess,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStorage {
    backend: Option<String>,
    bucket: Option<String>,
    endpoint: Option<String>,
    region: Option<String>,
    root: Option<String>,
    access_key_id: Option<String>,
    secret_access_key: Option<String>,
    credential_path: Option<String>,
    virtual_host_style: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDispatch {
    mode: Option<String>,
    #[serde(default, with = "humantime_serde")]
    presign_expiry: Option<Duration>,
    #[serde(default)]
    targets: Vec<RawTarget>,
    #[serde(default)]
    regions: Vec<RawRegion>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTarget {
    name: String,
    url: String,
    sign_key: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRegion {
    networks: Vec<String>,
    targets: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLog {
    format: Option<String>,
    level: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCache {
    manifest_memory_mib: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpstream {
    url: Option<String>,
    names: Option<Vec<String>>,
    library_prefix: Option<bool>,
    #[serde(default, with = "humantime_serde")]
    tag_ttl: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    connect_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    timeout: Option<Duration>,
    retries: Option<u32>,
    username: Option<String>,
    password: Option<String>,
    credential_hosts: Option<Vec<String>>,
    aliases: Option<BTreeMap<String, Vec<String>>>,
    #[serde(default, with = "humantime_serde")]
    signature_tag_ttl: Option<Duration>,
    tier: Option<String>,
    allow: Option<Vec<String>>,
    deny: Option<Vec<String>>,
}

impl Config {
    /// The configuration used when no file is given.
    pub fn embedded() -> Config {
        Config::from_raw(RawConfig::default()).expect("the embedded defaults are valid")
    }

    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("{}: cannot read: {e}", path.display())))?;
        Config::parse(&text)
    }

    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        // The path to a bad value (`upstreams."gcr.io".tag_ttl`) is what the
        // reader needs; the TOML error adds the line and column.
        let raw: RawConfig = serde_path_to_error::deserialize(toml::Deserializer::new(text))
            .map_err(|e| {
                let key = key_of(e.path());
                let why = e.into_inner().to_string();
                match key.is_empty() {
                    true => ConfigError(why),
                    false => ConfigError(format!("{key}: {why}")),
                }
            })?;
        Config::from_raw(raw)
    }

    fn from_raw(raw: RawConfig) -> Result<Config, ConfigError> {
        let listen = raw.listen.as_deref().unwrap_or(DEFAULT_LISTEN);
        let listen = listen
            .parse()
            .map_err(|e| invalid("listen", format!("{listen:?} is not an address:port ({e})")))?;

        let upstreams = resolve_upstreams(raw.upstreams)?;
        let exists = |name: &str| upstreams.contains_key(name);

        let default_upstream = raw
            .default_upstream
            .unwrap_or_else(|| "registry.k8s.io".into());
        if !exists(&default_upstream) {
            return Err(invalid(
                "default_upstream",
                format!("no upstream named {default_upstream:?}"),
            ));
        }

        let mut hosts: BTreeMap<String, String> = BUILTIN_HOSTS
            .iter()
            .map(|(sub, up)| (sub.to_string(), up.to_string()))
            .collect();
        for (sub, upstream) in raw.hosts {
            if !exists(&upstream) {
                return Err(invalid(
                    &format!("hosts.{sub:?}"),
                    format!("no upstream named {upstream:?}"),
                ));
            }
            hosts.insert(sub.to_ascii_lowercase(), upstream);
        }
        // A builtin host whose upstream was renamed away would route nowhere.
        hosts.retain(|_, upstream| exists(upstream));

        let domain = raw
            .domain
            .map(|d| d.trim_end_matches('.').to_ascii_lowercase());
        if domain
            .as_deref()
            .is_some_and(|d| d.is_empty() || d.contains('/'))
        {
            return Err(invalid(
                "domain",
                "must be a host name such as \"mirror.example.com\"",
            ));
        }

        let format = match raw.log.format.as_deref().unwrap_or("text") {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => {
                return Err(invalid(
                    "log.format",
                    format!("{other:?} is not \"text\" or \"json\""),
                ));
            }
        };
        let level = raw.log.level.unwrap_or_else(|| "info".into());
        // A bare word that is no level parses as a target name and would
        // silence every other line, so each part must be a level or a
        // `target=level` directive.
        const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];
        let directives_ok = level.split(',').all(|part| {
            let part = part.trim();
            part.contains('=') || LEVELS.contains(&part.to_ascii_lowercase().as_str())
        });
        if !directives_ok || tracing_subscriber::EnvFilter::try_new(&level).is_err() {
            return Err(invalid(
                "log.level",
                format!("{level:?} is not a level such as \"info\""),
            ));
        }

        let trusted_proxies = raw
            .trusted_proxies
            .unwrap_or_default()
            .iter()
            .map(|n| parse_network(n).map_err(|why| invalid("trusted_proxies", why)))
            .collect::<Result<Vec<_>, _>>()?;
        let forwarded_header = match raw.forwarded_header.as_deref() {
            None | Some("x-forwarded-for") => ForwardedHeader::XForwardedFor,
            Some("forwarded") => ForwardedHeader::Forwarded,
            Some(other) => {
                return Err(invalid(
                    "forwarded_header",
                    format!("{other:?} is not \"x-forwarded-for\" or \"forwarded\""),
                ));
            }
        };
        let storage = resolve_storage(raw.storage)?;
        let dispatch = resolve_dispatch(raw.dispatch, &storage)?;

        let manifest_memory_mib = raw.cache.manifest_memory_mib.unwrap_or(64);
        let state = access::resolve_state(raw.state)?;
        let access = access::resolve_access(raw.access)?;
        Ok(Config {
            listen,
            data_dir: raw.data_dir.unwrap_or_else(|| DEFAULT_DATA_DIR.into()),
            trusted_proxies,
            forwarded_header,
            domain,
            default_upstream,
            hosts,
            log: LogConfig { format, level },
            cache: CacheConfig {
                manifest_memory_bytes: manifest_memory_mib.saturating_mul(1 << 20),
            },
            storage,
            dispatch,
            upstreams,
            state,
            access,
        })
    }
}

fn resolve_storage(raw: RawStorage) -> Result<StorageConfig, ConfigError> {
    let backend = raw.backend.as_deref().unwrap_or("fs");
    if backend == "fs" {
        let stray = [&raw.bucket, &raw.endpoint, &raw.region, &raw.access_key_id]
            .iter()
            .any(|v| v.is_some());
        if stray {
            return Err(invalid(
                "storage.backend",
                "\"fs\" keeps content in data_dir; bucket settings need \"s3\", \"oss\" or \"gcs\"",
            ));
        }
        return Ok(StorageConfig::Fs);
    }
    let bucket = raw.bucket.filter(|b| !b.is_empty()).ok_or_else(|| {
        invalid(
            "storage.bucket",
            format!("missing; backend \"{backend}\" needs a bucket"),
        )
    })?;
    if let Some(endpoint) = &raw.endpoint {
        parse_base_url(endpoint).map_err(|why| invalid("storage.endpoint", why))?;
    }
    if raw.access_key_id.is_some() != raw.secret_access_key.is_some() {
        return Err(invalid(
            "storage.access_key_id",
            "access_key_id and secret_access_key go together",
        ));
    }
    let store = ObjectStoreConfig {
        bucket,
        endpoint: raw.endpoint,
        region: raw.region,
        root: raw.root.unwrap_or_else(|| "/".into()),
        access_key_id: raw.access_key_id,
        secret_access_key: raw.secret_access_key,
        credential_path: raw.credential_path,
        virtual_host_style: raw.virtual_host_style.unwrap_or(false),
    };
    match backend {
        "s3" => Ok(StorageConfig::S3(store)),
        "oss" => Ok(StorageConfig::Oss(store)),
        "gcs" => Ok(StorageConfig::Gcs(store)),
        other => Err(invalid(
            "storage.backend",
            format!("{other:?} is not one of \"fs\", \"s3\", \"oss\", \"gcs\""),
        )),
    }
}

fn resolve_dispatch(
    raw: RawDispatch,
    storage: &StorageConfig,
) -> Result<DispatchConfig, ConfigError> {
    let mode = match raw.mode.as_deref().unwrap_or("stream") {
        "stream" => DeliveryMode::Stream,
        "redirect" => DeliveryMode::Redirect,
        other => {
            return Err(invalid(
                "dispatch.mode",
                format!("{other:?} is not \"stream\" or \"redirect\""),
            ));
        }
    };
    if mode == DeliveryMode::Redirect && matches!(storage, StorageConfig::Fs) {
        return Err(invalid(
            "dispatch.mode",
            "\"redirect\" sends clients to object storage; set storage.backend too",
        ));
    }
    let presign_expiry = raw.presign_expiry.unwrap_or(Duration::from_secs(600));
    if presign_expiry < Duration::from_secs(10)
        || presign_expiry > Duration::from_secs(7 * 24 * 3600)
    {
        return Err(invalid(
            "dispatch.presign_expiry",
            "must be between 10s and 7 days",
        ));
    }

    let mut targets = Vec::new();
    for (i, target) in raw.targets.into_iter().enumerate() {
        let key = |field: &str| format!("dispatch.targets[{i}].{field}");
        let reserved = [TARGET_STORE, TARGET_SELF].contains(&target.name.as_str());
        if target.name.is_empty()
            || reserved
            || targets.iter().any(|t: &TargetConfig| t.name == target.name)
        {
            return Err(invalid(
                &key("name"),
                format!("{:?} is empty, reserved or used twice", target.name),
            ));
        }
        if !target.url.contains("{key}") && !target.url.contains("{digest}") {
            return Err(invalid(&key("url"), "must contain {key} or {digest}"));
        }
        let example = target.url.replace("{key}", "k").replace("{digest}", "d");
        match Url::parse(&example) {
            Ok(url) if matches!(url.scheme(), "http" | "https") && url.host_str().is_some() => {}
            _ => {
                return Err(invalid(
                    &key("url"),
                    format!("{:?} is not an http(s) URL template", target.url),
                ));
            }
        }
        if target.sign_key.as_deref().is_some_and(str::is_empty) {
            return Err(invalid(&key("sign_key"), "must not be empty"));
        }
        targets.push(TargetConfig {
            name: target.name,
            url: target.url,
            sign_key: target.sign_key,
        });
    }

    let mut regions = Vec::new();
    for (i, region) in raw.regions.into_iter().enumerate() {
        let key = |field: &str| format!("dispatch.regions[{i}].{field}");
        let networks = region
            .networks
            .iter()
            .map(|n| parse_network(n).map_err(|why| invalid(&key("networks"), why)))
            .collect::<Result<Vec<_>, _>>()?;
        for name in &region.targets {
            let known = name == TARGET_SELF
                || (name == TARGET_STORE && !matches!(storage, StorageConfig::Fs))
                || targets.iter().any(|t| t.name == *name);
            if !known {
                return Err(invalid(
                    &key("targets"),
                    format!("no target named {name:?} (\"store\" needs an object store)"),
                ));
            }
        }
        regions.push(RegionConfig {
            networks,
            targets: region.targets,
        });
    }
    Ok(DispatchConfig {
        mode,
        presign_expiry,
        targets,
        regions,
    })
}

/// A network such as `10.0.0.0/8`, or one address (a /32 or /128).
fn parse_network(text: &str) -> Result<ipnet::IpNet, String> {
    text.parse::<ipnet::IpNet>()
        .or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .map_err(|_| format!("{text:?} is not an address or network such as 10.0.0.0/8"))
}

/// A key path written the way the rest of lank8s writes it: names with a
/// dot in quotes, as in `upstreams."gcr.io".tag_ttl`.
fn key_of(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut parts = Vec::new();
    for segment in path.iter() {
        match segment {
            Segment::Map { key } | Segment::Enum { variant: key } if key.contains('.') => {
                parts.push(format!("{key:?}"))
            }
            Segment::Map { key } | Segment::Enum { variant: key } => parts.push(key.clone()),
            Segment::Seq { index } => parts.push(index.to_string()),
            Segment::Unknown => {}
        }
    }
    parts.join(".")
}

fn resolve_upstreams(
    raw: BTreeMap<String, RawUpstream>,
) -> Result<BTreeMap<String, UpstreamConfig>, ConfigError> {
    let mut raw = raw;
    let mut resolved = BTreeMap::new();

    for (name, url, names, library_prefix) in BUILTIN_UPSTREAMS {
        let overrides = raw.remove(*name).unwrap_or_default();
        let defaults = UpstreamDefaults {
            url,
            names,
            library_prefix: *library_prefix,
        };
        resolved.insert(
            name.to_string(),
            resolve_upstream(name, overrides, Some(defaults))?,
        );
    }
    for (name, overrides) in raw {
        let upstream = resolve_upstream(&name, overrides, None)?;
        resolved.insert(name, upstream);
    }

    // Every name a client may use must lead to exactly one upstream.
    let mut seen = BTreeMap::new();
    for upstream in resolved.values() {
        for alias in std::iter::once(&upstream.name).chain(&upstream.names) {
            if let Some(first) = seen.insert(alias.clone(), upstream.name.clone()) {
                let key = format!("upstreams.{:?}.names", upstream.name);
                return Err(invalid(
                    &key,
                    format!("{alias:?} already names upstream {first:?}"),
                ));
            }
        }
    }
    Ok(resolved)
}

struct UpstreamDefaults<'a> {
    url: &'a str,
    names: &'a [&'a str],
    library_prefix: bool,
}

fn resolve_upstream(
    name: &str,
    raw: RawUpstream,
    defaults: Option<UpstreamDefaults>,
) -> Result<UpstreamConfig, ConfigError> {
    let key = |field: &str| format!("upstreams.{name:?}.{field}");

    // The name becomes a directory of the cache and of `lank8s hosts`'
    // output, so it is held to what a registry host[:port] can be.
    let host_like = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b".-:".contains(&b))
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric());
    if !host_like {
        return Err(invalid(
            &format!("upstreams.{name:?}"),
            "an upstream's name is a lowercase registry host",
        ));
    }
    let url = match (raw.url, &defaults) {
        (Some(url), _) => url,
        (None, Some(d)) => d.url.to_owned(),
        (None, None) => return Err(invalid(&key("url"), "missing; a new upstream needs a url")),
    };
    let url = parse_base_url(&url).map_err(|why| invalid(&key("url"), why))?;

    let credentials = match (raw.username, raw.password) {
        (Some(username), Some(password)) => Some(Credentials { username, password }),
        (None, None) => None,
        _ => {
            return Err(invalid(
                &key("username"),
                "username and password go together",
            ));
        }
    };

    let names = raw.names.unwrap_or_else(|| {
        defaults
            .as_ref()
            .map(|d| d.names.iter().map(|n| n.to_string()).collect())
            .unwrap_or_default()
    });
    let names = names.into_iter().map(|n| n.to_ascii_lowercase()).collect();

    let policy = access::resolve_route_policy(name, raw.tier, raw.allow, raw.deny)?;
    let aliases = match raw.aliases {
        Some(aliases) => aliases,
        None => {
            let mut builtin: BTreeMap<String, Vec<String>> = BTreeMap::new();
            for (_, from, to) in BUILTIN_ALIASES.iter().filter(|(u, _, _)| *u == name) {
                builtin
                    .entry(from.to_string())
                    .or_default()
                    .push(to.to_string());
            }
            builtin
        }
    };
    for (from, targets) in &aliases {
        for repository in std::iter::once(from).chain(targets) {
            if crate::oci::reference::validate_repository(repository).is_err() {
                return Err(invalid(
                    &key("aliases"),
                    format!("{repository:?} is not a repository name"),
                ));
            }
        }
    }

    // An alias never fetches a repository the route's patterns refuse.
    let aliases = aliases
        .into_iter()
        .map(|(from, targets)| {
            let served = targets
                .into_iter()
                .filter(|target| policy.refusal(target).is_none())
                .collect::<Vec<_>>();
            (from, served)
        })
        .filter(|(_, targets)| !targets.is_empty())
        .collect();

    let retries = raw.retries.unwrap_or(2);
    if retries > MAX_RETRIES {
        return Err(invalid(&key("retries"), format!("at most {MAX_RETRIES}")));
    }

    let tag_ttl = raw.tag_ttl.unwrap_or(Duration::from_secs(300));
    let connect_timeout = raw.connect_timeout.unwrap_or(Duration::from_secs(5));
    let timeout = raw.timeout.unwrap_or(Duration::from_secs(30));
    for (field, value) in [("connect_timeout", connect_timeout), ("timeout", timeout)] {
        if value.is_zero() {
            return Err(invalid(&key(field), "must be longer than zero"));
        }
    }

    Ok(UpstreamConfig {
        name: name.to_owned(),
        url,
        names,
        library_prefix: raw
            .library_prefix
            .unwrap_or(defaults.as_ref().is_some_and(|d| d.library_prefix)),
        tag_ttl,
        connect_timeout,
        timeout,
        retries,
        credentials,
        credential_hosts: raw.credential_hosts.unwrap_or_default(),
        aliases,
        signature_tag_ttl: raw.signature_tag_ttl.unwrap_or(Duration::from_secs(60)),
        policy,
    })
}

/// An upstream URL: http or https with a host, normalised to end in `/` so
/// that `v2/...` joins onto it.
fn parse_base_url(text: &str) -> Result<Url, String> {
    let mut url = Url::parse(text).map_err(|e| format!("{text:?} is not a URL ({e})"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(format!(
            "{text:?} must be an http:// or https:// URL with a host"
        ));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not carry credentials; use username and password".into());
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!("{text:?} must not have a query or fragment"));
    }
    if !url.path().ends_with('/') {
        let path = format!("{}/", url.path());
        url.set_path(&path);
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_defaults_mirror_the_usual_registries() {
        let config = Config::embedded();
        assert_eq!(config.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(config.default_upstream, "registry.k8s.io");
        assert_eq!(
            config.upstreams["k8s.gcr.io"].url.as_str(),
            "https://registry.k8s.io/"
        );
        assert!(config.upstreams["docker.io"].library_prefix);
        assert_eq!(config.hosts["@"], "registry.k8s.io");
        assert_eq!(config.hosts["gcr"], "gcr.io");
        assert_eq!(
            config.upstreams["registry.k8s.io"].aliases["coredns"],
            ["coredns/coredns"]
        );
        assert!(config.upstreams["gcr.io"].aliases.is_empty());
    }

    #[test]
    fn aliases_can_be_replaced_and_are_checked() {
        let config = Config::parse(
            "[upstreams.\"registry.k8s.io\".aliases]\nkube-dns = [\"dns/kube-dns\", \"k8s-dns/kube-dns\"]\n",
        )
        .unwrap();
        let aliases = &config.upstreams["registry.k8s.io"].aliases;
        assert_eq!(aliases["kube-dns"], ["dns/kube-dns", "k8s-dns/kube-dns"]);
        assert!(!aliases.contains_key("coredns"));
        let err = Config::parse("[upstreams.\"gcr.io\".aliases]\nx = [\"../y\"]\n").unwrap_err();
        assert!(err.to_string().contains("upstreams.\"gcr.io\".aliases"));
    }

    #[test]
    fn an_override_keeps_the_other_defaults() {
        let config = Config::parse(
            "[upstreams.\"docker.io\"]\nurl = \"http://127.0.0.1:5001\"\ntag_ttl = \"10s\"\n",
        )
        .unwrap();
        let hub = &config.upstreams["docker.io"];
        assert_eq!(hub.url.as_str(), "http://127.0.0.1:5001/");
        assert_eq!(hub.tag_ttl, Duration::from_secs(10));
        assert!(hub.library_prefix);
        assert_eq!(hub.names, ["registry-1.docker.io", "index.docker.io"]);
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            ("listen = \"nowhere\"", "listen"),
            ("default_upstream = \"nope.io\"", "default_upstream"),
            (
                "[upstreams.\"new.io\"]\nretries = 1",
                "upstreams.\"new.io\".url",
            ),
            (
                "[upstreams.\"gcr.io\"]\nurl = \"ftp://x\"",
                "upstreams.\"gcr.io\".url",
            ),
            (
                "[upstreams.\"gcr.io\"]\ntag_ttl = \"soon\"",
                "upstreams.\"gcr.io\".tag_ttl",
            ),
            (
                "[upstreams.\"gcr.io\"]\nretries = 11",
                "upstreams.\"gcr.io\".retries",
            ),
            (
                "[upstreams.\"gcr.io\"]\nusername = \"u\"",
                "upstreams.\"gcr.io\".username",
            ),
            ("[log]\nformat = \"xml\"", "log.format"),
            ("[log]\nlevel = \"verbose!!\"", "log.level"),
            ("[log]\nlevel = \"info,loud\"", "log.level"),
            ("[storage]\nbackend = \"s3\"", "storage.bucket"),
            (
                "[storage]\nbackend = \"ftp\"\nbucket = \"b\"",
                "storage.backend",
            ),
            ("[storage]\nbucket = \"b\"", "storage.backend"),
            ("[dispatch]\nmode = \"redirect\"", "dispatch.mode"),
            (
                "[storage]\nbackend = \"s3\"\nbucket = \"b\"\naccess_key_id = \"k\"",
                "storage.access_key_id",
            ),
            ("[hosts]\nfoo = \"nope.io\"", "hosts.\"foo\""),
            ("lissten = \"x\"", "lissten"),
            ("[upstreams.\"gcr.io\"]\nnames = [\"quay.io\"]", "names"),
            ("[upstreams.\"..\"]\nurl = \"http://x\"", "upstreams.\"..\""),
            (
                "[upstreams.\"a/b\"]\nurl = \"http://x\"",
                "upstreams.\"a/b\"",
            ),
            (
                "[upstreams.\"x.io\"]\nurl = \"http://u:p@x\"",
                "upstreams.\"x.io\".url",
            ),
        ];
        for (text, key) in cases {
            let err = Config::parse(text).unwrap_err().to_string();
            assert!(
                err.contains(key),
                "{text:?} gave {err:?}, which does not name {key}"
            );
        }
    }

    #[test]
    fn object_storage_and_redirects() {
        let config = Config::parse(
            "[storage]\nbackend = \"s3\"\nbucket = \"b\"\nendpoint = \"http://127.0.0.1:3900\"\nsecret_access_key = \"hidden\"\naccess_key_id = \"k\"\n[dispatch]\nmode = \"redirect\"\n",
        )
        .unwrap();
        assert!(
            matches!(&config.storage, StorageConfig::S3(s) if s.bucket == "b" && s.root == "/")
        );
        assert_eq!(config.dispatch.mode, DeliveryMode::Redirect);
        assert_eq!(config.dispatch.presign_expiry, Duration::from_secs(600));
        assert!(!format!("{config:?}").contains("hidden"));
        assert!(matches!(Config::embedded().storage, StorageConfig::Fs));
    }

    #[test]
    fn regions_name_known_targets() {
        let config = Config::parse(
            "trusted_proxies = [\"10.0.0.0/8\", \"127.0.0.1\"]\n[storage]\nbackend = \"s3\"\nbucket = \"b\"\n[[dispatch.targets]]\nname = \"cdn\"\nurl = \"https://cdn.example.com/{key}\"\n[[dispatch.regions]]\nnetworks = [\"192.0.2.0/24\"]\ntargets = [\"cdn\", \"store\", \"self\"]\n",
        )
        .unwrap();
        assert_eq!(config.trusted_proxies.len(), 2);
        assert_eq!(config.dispatch.regions[0].targets, ["cdn", "store", "self"]);
        let cases = [
            (
                "[[dispatch.regions]]\nnetworks = [\"x\"]\ntargets = []",
                "dispatch.regions[0].networks",
            ),
            (
                "[[dispatch.regions]]\nnetworks = [\"10.0.0.0/8\"]\ntargets = [\"nope\"]",
                "dispatch.regions[0].targets",
            ),
            (
                "[[dispatch.regions]]\nnetworks = [\"10.0.0.0/8\"]\ntargets = [\"store\"]",
                "dispatch.regions[0].targets",
            ),
            (
                "[[dispatch.targets]]\nname = \"store\"\nurl = \"https://x/{key}\"",
                "dispatch.targets[0].name",
            ),
            (
                "[[dispatch.targets]]\nname = \"c\"\nurl = \"https://x/fixed\"",
                "dispatch.targets[0].url",
            ),
            ("trusted_proxies = [\"everyone\"]", "trusted_proxies"),
        ];
        for (text, key) in cases {
            let err = Config::parse(text).unwrap_err().to_string();
            assert!(
                err.contains(key),
                "{text:?} gave {err:?}, which does not name {key}"
            );
        }
    }

    #[test]
    fn credentials_are_not_printed() {
        let config =
            Config::parse("[upstreams.\"gcr.io\"]\nusername = \"u\"\npassword = \"s3cret\"\n")
                .unwrap();
        assert!(!format!("{config:?}").contains("s3cret"));
    }
}
