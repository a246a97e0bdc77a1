//! Which upstream and repository a /v2 request is for: from `?ns=`, the Host
//! header, a registry-named first path component, or the default upstream.

use std::collections::HashMap;

use crate::config::Config;
use crate::oci::error::RegistryError;
use crate::oci::reference::validate_repository;

/// What a /v2 path asks for, after the repository name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Manifest(String),
    Blob(String),
    BlobUpload,
    TagsList,
    Referrers(String),
    Catalog,
}

/// Splits `/v2/<name>/<endpoint>` into the raw name and the endpoint. The
/// name may itself contain slashes, so the endpoint is found from the end.
/// Docker (25 and later) puts a mirror's path prefix before `/v2`:
/// `/<registry>/v2/<name>/...` is read as `/v2/<registry>/<name>/...`.
pub fn parse_path(path: &str) -> Option<(String, Endpoint)> {
    let prefixed;
    let rest = match path.strip_prefix("/v2/") {
        Some(rest) => rest,
        None => {
            let (registry, rest) = path.strip_prefix('/')?.split_once("/v2/")?;
            if registry.is_empty() || registry.contains('/') {
                return None;
            }
            prefixed = format!("{registry}/{rest}");
            &prefixed
        }
    };
    if rest == "_catalog" {
        return Some((String::new(), Endpoint::Catalog));
    }
    let segments: Vec<&str> = rest.split('/').collect();
    let n = segments.len();
    let name = |end: usize| segments[..end].join("/");
    match segments.as_slice() {
        [.., "tags", "list"] if n > 2 => Some((name(n - 2), Endpoint::TagsList)),
        [.., "manifests", reference] if n > 2 => {
            Some((name(n - 2), Endpoint::Manifest(reference.to_string())))
        }
        [.., "referrers", digest] if n > 2 => {
            Some((name(n - 2), Endpoint::Referrers(digest.to_string())))
        }
        [.., "blobs", "uploads", _] if n > 3 => Some((name(n - 3), Endpoint::BlobUpload)),
        [.., "blobs", "uploads"] if n > 2 => Some((name(n - 2), Endpoint::BlobUpload)),
        [.., "blobs", digest] if n > 2 => Some((name(n - 2), Endpoint::Blob(digest.to_string()))),
        _ => None,
    }
}

/// How the upstream was chosen, for the access log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    Ns,
    Host,
    Prefix,
    Default,
}

impl Via {
    pub fn as_str(self) -> &'static str {
        match self {
            Via::Ns => "ns",
            Via::Host => "host",
            Via::Prefix => "prefix",
            Via::Default => "default",
        }
    }
}

/// Where a request goes: the canonical upstream name and the repository as
/// that upstream knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub upstream: String,
    pub repository: String,
    pub via: Via,
}

/// The routing table built from configuration.
pub struct Router {
    /// Every name a client may use for a registry → canonical upstream name.
    names: HashMap<String, String>,
    library_prefix: HashMap<String, bool>,
    domain: Option<String>,
    hosts: HashMap<String, String>,
    default_upstream: String,
}

impl Router {
    pub fn new(config: &Config) -> Router {
        let mut names = HashMap::new();
        let mut library_prefix = HashMap::new();
        for upstream in config.upstreams.values() {
            names.insert(upstream.name.clone(), upstream.name.clone());
            for alias in &upstream.names {
                names.insert(alias.clone(), upstream.name.clone());
            }
            library_prefix.insert(upstream.name.clone(), upstream.library_prefix);
        }
        Router {
            names,
            library_prefix,
            domain: config.domain.clone(),
            hosts: config.hosts.clone().into_iter().collect(),
            default_upstream: config.default_upstream.clone(),
        }
    }

    /// Resolves a request. `name` is the raw name from the path, `ns` the
    /// decoded `ns` query parameter, `host` the Host header.
    pub fn route(
        &self,
        name: &str,
        ns: Option<&str>,
        host: Option<&str>,
    ) -> Result<Route, RegistryError> {
        let (first, rest) = match name.split_once('/') {
            Some((first, rest)) => (first, Some(rest)),
            None => (name, None),
        };
        let prefix_upstream = rest.and_then(|_| self.names.get(&first.to_ascii_lowercase()));

        let chosen = if let Some(ns) = ns.filter(|ns| !ns.is_empty()) {
            let ns = ns.to_ascii_lowercase();
            let upstream = self
                .names
                .get(&ns)
                .ok_or_else(|| RegistryError::unknown_registry(&ns))?;
            Some((upstream.clone(), Via::Ns))
        } else {
            self.upstream_for_host(host).map(|u| (u, Via::Host))
        };

        let (upstream, repository, via) = match (chosen, prefix_upstream) {
            // A client that both names the registry and prefixes the path with
            // it (containerd's override_path) means the same thing twice.
            (Some((upstream, via)), Some(prefixed)) if *prefixed == upstream => {
                (upstream, rest.unwrap_or_default().to_owned(), via)
            }
            (Some((upstream, via)), _) => (upstream, name.to_owned(), via),
            (None, Some(prefixed)) => (
                prefixed.clone(),
                rest.unwrap_or_default().to_owned(),
                Via::Prefix,
            ),
            (None, None) if rest.is_some() && looks_like_registry_host(first) => {
                return Err(RegistryError::unknown_registry(first));
            }
            (None, None) => (self.default_upstream.clone(), name.to_owned(), Via::Default),
        };

        validate_repository(&repository)?;
        let repository = if self.library_prefix[&upstream] && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository
        };
        Ok(Route {
            upstream,
            repository,
            via,
        })
    }

    /// The upstream a host serves by itself, as `GET /v2/` on it is asked:
    /// its subdomain's upstream, else the default.
    pub fn host_upstream(&self, host: Option<&str>) -> String {
        self.upstream_for_host(host)
            .unwrap_or_else(|| self.default_upstream.clone())
    }

    fn upstream_for_host(&self, host: Option<&str>) -> Option<String> {
        let domain = self.domain.as_deref()?;
        let host = host?.to_ascii_lowercase();
        let host = strip_port(&host).trim_end_matches('.');
        let sub = if host == domain {
            "@"
        } else {
            host.strip_suffix(domain)?.strip_suffix('.')?
        };
        self.hosts.get(sub).cloned()
    }
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.split_once(']').map_or(host, |(h, _)| &h[1..]);
    }
    host.rsplit_once(':').map_or(host, |(h, _)| h)
}

/// A first path component that can only be meant as a registry host, as
/// Docker reads image names: it has a dot or a port, or is `localhost`.
fn looks_like_registry_host(component: &str) -> bool {
    component.contains('.') || component.contains(':') || component == "localhost"
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router() -> Router {
        let config = Config::parse(
            "domain = \"lank8s.example\"\n[upstreams.\"host:5000\"]\nurl = \"http://127.0.0.1:5000\"\n",
        )
        .unwrap();
        Router::new(&config)
    }

    fn route(name: &str, ns: Option<&str>, host: Option<&str>) -> (String, String, Via) {
        let r = router().route(name, ns, host).unwrap();
        (r.upstream, r.repository, r.via)
    }

    #[test]
    fn paths_split_from_the_end() {
        assert_eq!(
            parse_path("/v2/a/manifests/b/manifests/v1"),
            Some(("a/manifests/b".into(), Endpoint::Manifest("v1".into())))
        );
        assert_eq!(
            parse_path("/v2/gcr.io/x/blobs/sha256:ab"),
            Some(("gcr.io/x".into(), Endpoint::Blob("sha256:ab".into())))
        );
        assert_eq!(
            parse_path("/v2/x/tags/list"),
            Some(("x".into(), Endpoint::TagsList))
        );
        assert_eq!(
            parse_path("/v2/x/blobs/uploads/"),
            Some(("x".into(), Endpoint::BlobUpload))
        );
        assert_eq!(
            parse_path("/v2/_catalog"),
            Some((String::new(), Endpoint::Catalog))
        );
        assert_eq!(parse_path("/v2/manifests/x"), None);
        assert_eq!(
            parse_path("/docker.io/v2/library/nginx/manifests/latest"),
            Some((
                "docker.io/library/nginx".into(),
                Endpoint::Manifest("latest".into())
            ))
        );
        assert_eq!(parse_path("/a/b/v2/x/manifests/y"), None);
        assert_eq!(parse_path("/v3/x/manifests/y"), None);
    }

    #[test]
    fn ns_comes_first_and_hub_names_agree() {
        for hub in [
            "docker.io",
            "index.docker.io",
            "registry-1.docker.io",
            "Docker.IO",
        ] {
            assert_eq!(
                route("nginx", Some(hub), None),
                ("docker.io".into(), "library/nginx".into(), Via::Ns)
            );
        }
        assert_eq!(route("x/y", Some("host:5000"), None).0, "host:5000");
        assert_eq!(
            route("registry.k8s.io/pause", Some("registry.k8s.io"), None),
            ("registry.k8s.io".into(), "pause".into(), Via::Ns)
        );
        assert_eq!(
            route("pause", Some("gcr.io"), Some("k8s.lank8s.example")).0,
            "gcr.io"
        );
    }

    #[test]
    fn unknown_registries_are_refused_not_contacted() {
        let err = router().route("x", Some("evil.example"), None).unwrap_err();
        assert_eq!(err.code.as_str(), "NAME_UNKNOWN");
        let err = router().route("evil.example/x", None, None).unwrap_err();
        assert_eq!(err.code.as_str(), "NAME_UNKNOWN");
        let err = router().route("localhost/x", None, None).unwrap_err();
        assert_eq!(err.code.as_str(), "NAME_UNKNOWN");
        let err = router().route("other:5000/x", None, None).unwrap_err();
        assert_eq!(err.code.as_str(), "NAME_UNKNOWN");
    }

    #[test]
    fn host_header_maps_subdomains() {
        let cases = [
            ("lank8s.example", "registry.k8s.io"),
            ("registry.lank8s.example:443", "registry.k8s.io"),
            ("gcr.lank8s.example", "gcr.io"),
            ("k8s.lank8s.example", "k8s.gcr.io"),
            ("docker.lank8s.example", "docker.io"),
            (
                "us-central1-docker.pkgdev.lank8s.example",
                "us-central1-docker.pkg.dev",
            ),
        ];
        for (host, upstream) in cases {
            let (u, _, via) = route("pause", None, Some(host));
            assert_eq!((u.as_str(), via), (upstream, Via::Host), "{host}");
        }
        assert_eq!(route("pause", None, Some("other.example")).2, Via::Default);
        assert_eq!(
            route("pause", None, Some("nope.lank8s.example")).2,
            Via::Default
        );
    }

    #[test]
    fn path_prefix_then_default() {
        assert_eq!(
            route("gcr.io/distroless/static", None, None),
            ("gcr.io".into(), "distroless/static".into(), Via::Prefix)
        );
        assert_eq!(route("docker.io/nginx", None, None).1, "library/nginx");
        assert_eq!(
            route("pause", None, None),
            ("registry.k8s.io".into(), "pause".into(), Via::Default)
        );
        assert_eq!(route("coredns/coredns", None, None).1, "coredns/coredns");
    }

    #[test]
    fn repository_is_validated_after_routing() {
        assert!(router().route("gcr.io/../x", None, None).is_err());
        assert!(router().route("UPPER", None, None).is_err());
    }
}
