//! How a blob leaves lank8s: streamed by this node, or a redirect to the
//! object store, a CDN or a replica bucket, chosen by the client's network
//! and used only when the target holds the blob.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::HeaderMap;
use ipnet::IpNet;

use crate::cache::now_secs;
use crate::cache::store::Store;
use crate::config::{DeliveryMode, DispatchConfig, ForwardedHeader, TARGET_SELF, TARGET_STORE};
use crate::oci::reference::Digest;

/// How long a target's "I have it" is believed.
const PROBE_HIT_TTL: Duration = Duration::from_secs(600);
/// How long a target's "I don't" (or no answer) is believed.
const PROBE_MISS_TTL: Duration = Duration::from_secs(30);
/// How long a probe may take before the target counts as down.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Where a blob GET is sent.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    Stream,
    Redirect { url: String, target: String },
}

pub struct Dispatcher {
    config: DispatchConfig,
    store: Arc<Store>,
    http: reqwest::Client,
    /// Target URL → (holds the blob, when that was learned).
    probes: quick_cache::sync::Cache<String, (bool, Instant)>,
}

impl Dispatcher {
    pub fn new(config: DispatchConfig, store: Arc<Store>) -> Result<Dispatcher, reqwest::Error> {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(PROBE_TIMEOUT)
            .build()?;
        Ok(Dispatcher {
            config,
            store,
            http,
            probes: quick_cache::sync::Cache::new(100_000),
        })
    }

    /// The targets tried for `client`, in order.
    fn order(&self, client: IpAddr) -> Vec<&str> {
        let default = match self.config.mode {
            DeliveryMode::Redirect => TARGET_STORE,
            DeliveryMode::Stream => TARGET_SELF,
        };
        match self
            .config
            .regions
            .iter()
            .find(|region| region.networks.iter().any(|n| n.contains(&client)))
        {
            Some(region) => region.targets.iter().map(String::as_str).collect(),
            None => vec![default],
        }
    }

    /// True when this node streams to `client` without considering any
    /// redirect (the common, cheapest case).
    pub fn streams_first(&self, client: IpAddr) -> bool {
        self.order(client).first().is_none_or(|t| *t == TARGET_SELF)
    }

    /// Picks where `client` gets `digest` from. `stored_key` is the blob's
    /// key when the object store holds it.
    pub async fn decide(
        &self,
        client: IpAddr,
        digest: &Digest,
        stored_key: Option<&str>,
    ) -> Decision {
        for name in self.order(client) {
            match name {
                TARGET_SELF => return Decision::Stream,
                TARGET_STORE => {
                    let Some(key) = stored_key else { continue };
                    match self.store.presign(key, self.config.presign_expiry).await {
                        Ok(url) => {
                            return Decision::Redirect {
                                url,
                                target: TARGET_STORE.to_owned(),
                            };
                        }
                        Err(e) => {
                            tracing::warn!(%digest, error = %e, "cannot presign a blob URL; trying the next target")
                        }
                    }
                }
                name => {
                    let Some(target) = self.config.targets.iter().find(|t| t.name == name) else {
                        continue;
                    };
                    let url = target
                        .url
                        .replace("{key}", &Store::blob_key(digest))
                        .replace("{digest}", &digest.to_string());
                    let signed = match &target.sign_key {
                        Some(key) => sign_type_a(&url, key, now_secs()),
                        None => Some(url.clone()),
                    };
                    let Some(signed) = signed else { continue };
                    if self.holds(&url, &signed).await {
                        return Decision::Redirect {
                            url: signed,
                            target: target.name.clone(),
                        };
                    }
                }
            }
        }
        Decision::Stream
    }

    /// Whether a target answers a HEAD for `url` with success. Answers are
    /// cached, "yes" for long and "no" (or no answer) briefly, so a target
    /// that gets the blob or comes back up is used again soon.
    /// `url` is the target's plain URL, the cache key; `fetch` is what is
    /// actually asked (signed, when the target needs it).
    async fn holds(&self, url: &str, fetch: &str) -> bool {
        if let Some((holds, learned)) = self.probes.get(url) {
            let ttl = if holds { PROBE_HIT_TTL } else { PROBE_MISS_TTL };
            if learned.elapsed() < ttl {
                return holds;
            }
        }
        let holds = match self.http.head(fetch).send().await {
            Ok(response) => response.status().is_success(),
            Err(e) => {
                tracing::warn!(url, error = %e, "redirect target did not answer; skipping it");
                false
            }
        };
        self.probes.insert(url.to_owned(), (holds, Instant::now()));
        holds
    }
}

/// Signs a CDN URL with "type A" URL authentication, as Aliyun and
/// Tencent CDNs check it: `auth_key=<timestamp>-<nonce>-0-<md5>` where the
/// MD5 is over `<path>-<timestamp>-<nonce>-0-<key>`. The CDN decides how
/// long after `timestamp` the URL stays valid.
fn sign_type_a(url: &str, key: &str, timestamp: u64) -> Option<String> {
    use md5::{Digest as _, Md5};
    let mut parsed = url::Url::parse(url).ok()?;
    let nonce = format!("{:016x}", nonce());
    let hash = Md5::digest(format!("{}-{timestamp}-{nonce}-0-{key}", parsed.path()));
    let auth = format!("{timestamp}-{nonce}-0-{}", hex::encode(hash));
    parsed.query_pairs_mut().append_pair("auth_key", &auth);
    Some(parsed.into())
}

/// A nonce that keeps signed URLs distinct, from the standard library's
/// randomly keyed hasher.
fn nonce() -> u64 {
    use std::hash::{BuildHasher as _, Hasher as _};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(now_secs());
    hasher.finish()
}

/// The client's address: the connecting peer, or, when that peer is a
/// trusted proxy, the nearest untrusted address the proxies recorded in
/// `Forwarded` or `X-Forwarded-For`. Addresses a client wrote itself sit
/// further left and are never reached.
pub fn client_address(
    peer: IpAddr,
    headers: &HeaderMap,
    trusted: &[IpNet],
    header: ForwardedHeader,
) -> IpAddr {
    // A dual-stack listener sees IPv4 peers as ::ffff:a.b.c.d.
    let peer = peer.to_canonical();
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|n| n.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let forwarded: Vec<IpAddr> = forwarded_for(headers, header);
    let mut client = peer;
    for hop in forwarded.iter().rev() {
        client = hop.to_canonical();
        if !is_trusted(&client) {
            break;
        }
    }
    client
}

/// The addresses in the one header the proxies are configured to write,
/// left to right; anything unparsable ends the list there. The other header
/// is ignored: a proxy that appends to one passes a client's own copy of the
/// other through untouched.
fn forwarded_for(headers: &HeaderMap, header: ForwardedHeader) -> Vec<IpAddr> {
    let joined = |name: &str| {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect::<Vec<_>>()
            .join(",")
    };
    let values: Vec<String> = match header {
        ForwardedHeader::Forwarded => joined("forwarded")
            .split(',')
            .map(|element| {
                element
                    .split(';')
                    .find_map(|pair| {
                        let (key, value) = pair.trim().split_once('=')?;
                        key.eq_ignore_ascii_case("for")
                            .then(|| value.trim().trim_matches('"').to_owned())
                    })
                    .unwrap_or_default()
            })
            .collect(),
        ForwardedHeader::XForwardedFor => joined("x-forwarded-for")
            .split(',')
            .map(|v| v.trim().to_owned())
            .collect(),
    };
    // A trailing unparsable hop (obfuscated, "unknown") must not let an
    // earlier, client-written value through: keep only the parsable suffix.
    let mut addresses: Vec<IpAddr> = Vec::new();
    for value in values.iter().rev() {
        match parse_node(value) {
            Some(ip) => addresses.push(ip),
            None => break,
        }
    }
    addresses.reverse();
    addresses
}

/// `192.0.2.1`, `192.0.2.1:80`, `[2001:db8::1]`, `[2001:db8::1]:80`, `2001:db8::1`.
fn parse_node(value: &str) -> Option<IpAddr> {
    if let Ok(ip) = value.parse() {
        return Some(ip);
    }
    if let Some(rest) = value.strip_prefix('[') {
        return rest.split_once(']')?.0.parse().ok();
    }
    value.rsplit_once(':')?.0.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(*name, HeaderValue::from_str(value).unwrap());
        }
        headers
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn type_a_signatures_cover_the_path_and_time() {
        let url = "https://cdn.example.com/blobs/sha256/ab/abc?x=1";
        let signed = url::Url::parse(&sign_type_a(url, "secret", 1_700_000_000).unwrap()).unwrap();
        let auth = signed
            .query_pairs()
            .find(|(k, _)| k == "auth_key")
            .unwrap()
            .1
            .into_owned();
        let parts: Vec<&str> = auth.split('-').collect();
        assert_eq!(parts[0], "1700000000");
        assert_eq!(parts[2], "0");
        use md5::{Digest as _, Md5};
        let expected = Md5::digest(format!(
            "/blobs/sha256/ab/abc-1700000000-{}-0-secret",
            parts[1]
        ));
        assert_eq!(parts[3], hex::encode(expected));
        assert!(signed.query_pairs().any(|(k, v)| k == "x" && v == "1"));
    }

    #[test]
    fn forwarded_headers_only_from_trusted_peers() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let client_address = |peer, headers: &HeaderMap, trusted: &[IpNet]| {
            let header = match headers.contains_key("forwarded") {
                true => ForwardedHeader::Forwarded,
                false => ForwardedHeader::XForwardedFor,
            };
            super::client_address(peer, headers, trusted, header)
        };
        let spoofed = headers(&[("x-forwarded-for", "1.2.3.4")]);
        assert_eq!(
            client_address(ip("198.51.100.7"), &spoofed, &trusted),
            ip("198.51.100.7")
        );
        assert_eq!(
            client_address(ip("10.0.0.1"), &spoofed, &trusted),
            ip("1.2.3.4")
        );

        // A client-written value left of the real one is never reached.
        let chain = headers(&[("x-forwarded-for", "6.6.6.6, 203.0.113.9, 10.1.1.1")]);
        assert_eq!(
            client_address(ip("10.0.0.1"), &chain, &trusted),
            ip("203.0.113.9")
        );

        let forwarded = headers(&[(
            "forwarded",
            "for=\"[2001:db8::1]:4711\";proto=https, for=10.2.2.2",
        )]);
        assert_eq!(
            client_address(ip("10.0.0.1"), &forwarded, &trusted),
            ip("2001:db8::1")
        );

        let garbage = headers(&[("x-forwarded-for", "6.6.6.6, unknown")]);
        assert_eq!(
            client_address(ip("10.0.0.1"), &garbage, &trusted),
            ip("10.0.0.1")
        );
        assert_eq!(
            client_address(ip("10.0.0.1"), &HeaderMap::new(), &trusted),
            ip("10.0.0.1")
        );

        // Only the configured header counts, whatever else the client sends.
        let both = headers(&[
            ("forwarded", "for=203.0.113.7"),
            ("x-forwarded-for", "198.51.100.9"),
        ]);
        let mapped = ip("::ffff:10.0.0.1");
        assert_eq!(
            super::client_address(mapped, &both, &trusted, ForwardedHeader::XForwardedFor),
            ip("198.51.100.9")
        );
        assert_eq!(
            super::client_address(mapped, &both, &trusted, ForwardedHeader::Forwarded),
            ip("203.0.113.7")
        );
    }
}
