//! Manifest media types and the `Accept` negotiation between what a client
//! will take and what is stored.

use http::HeaderMap;
use http::header::ACCEPT;

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";
pub const DOCKER_SCHEMA1_PLAIN: &str = "application/vnd.docker.distribution.manifest.v1+json";

/// Every manifest type lank8s asks upstreams for, best first, so that what
/// it caches for a tag is the richest form (the index, not one platform).
pub const ALL_MANIFESTS: &str = "application/vnd.oci.image.index.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.v2+json, \
application/vnd.docker.distribution.manifest.v1+prettyjws, \
application/vnd.oci.artifact.manifest.v1+json";

/// The media types a client said it accepts. Clients send them as several
/// header lines or comma-joined in one, with or without parameters.
#[derive(Clone, Debug, Default)]
pub struct Accept {
    types: Vec<String>,
}

impl Accept {
    pub fn from_headers(headers: &HeaderMap) -> Accept {
        let types = headers
            .get_all(ACCEPT)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .filter_map(|item| {
                let mut parts = item.split(';');
                let media_type = parts.next()?.trim().to_ascii_lowercase();
                let refused = parts.any(|p| {
                    let p = p.trim();
                    p.strip_prefix("q=")
                        .and_then(|q| q.trim().parse::<f32>().ok())
                        .is_some_and(|q| q == 0.0)
                });
                (!media_type.is_empty() && !refused).then_some(media_type)
            })
            .collect();
        Accept { types }
    }

    /// True when the client will take `media_type`: it named it, named a
    /// wildcard covering it, or named nothing at all.
    pub fn allows(&self, media_type: &str) -> bool {
        if self.types.is_empty() {
            return true;
        }
        let media_type = media_type.to_ascii_lowercase();
        let family = media_type.split('/').next().unwrap_or_default();
        self.types.iter().any(|t| {
            t == "*/*" || *t == media_type || t.strip_suffix("/*").is_some_and(|f| f == family)
        })
    }

    /// The header value to send upstream when a client's wishes must be
    /// passed on as they are.
    pub fn header_value(&self) -> Option<String> {
        (!self.types.is_empty()).then(|| self.types.join(", "))
    }
}

/// Whether a `Content-Type` names something that can be a manifest: any
/// JSON flavour. An HTML error page served with 200 is not one.
pub fn looks_like_manifest_type(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or_default().trim();
    essence == DOCKER_SCHEMA1 || essence.ends_with("+json") || essence == "application/json"
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn accept(lines: &[&str]) -> Accept {
        let mut headers = HeaderMap::new();
        for line in lines {
            headers.append(ACCEPT, HeaderValue::from_str(line).unwrap());
        }
        Accept::from_headers(&headers)
    }

    #[test]
    fn several_lines_and_comma_joined_agree() {
        let lines = accept(&[OCI_INDEX, DOCKER_MANIFEST]);
        let joined = accept(&[&format!("{OCI_INDEX}, {DOCKER_MANIFEST}")]);
        for a in [lines, joined] {
            assert!(a.allows(OCI_INDEX));
            assert!(a.allows(DOCKER_MANIFEST));
            assert!(!a.allows(DOCKER_LIST));
        }
    }

    #[test]
    fn absent_or_wildcard_allows_everything() {
        assert!(accept(&[]).allows(DOCKER_LIST));
        assert!(accept(&[&format!("{DOCKER_MANIFEST}, */*")]).allows(OCI_INDEX));
        assert!(accept(&["application/*"]).allows(OCI_INDEX));
    }

    #[test]
    fn q_zero_excludes() {
        let a = accept(&[&format!("{OCI_INDEX};q=0, {DOCKER_MANIFEST};q=0.5")]);
        assert!(!a.allows(OCI_INDEX));
        assert!(a.allows(DOCKER_MANIFEST));
    }

    #[test]
    fn html_is_not_a_manifest() {
        assert!(looks_like_manifest_type(OCI_MANIFEST));
        assert!(looks_like_manifest_type("application/json; charset=utf-8"));
        assert!(!looks_like_manifest_type("text/html; charset=utf-8"));
    }
}
