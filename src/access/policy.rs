//! Which repositories a route serves: allow and deny patterns per
//! upstream, checked before anything is fetched, by tag or digest alike.

use globset::{GlobSet, GlobSetBuilder};

use crate::config::{RoutePolicy, repository_glob};
use crate::oci::error::RegistryError;

pub struct RepositoryPolicy {
    allow: Option<GlobSet>,
    deny: Option<GlobSet>,
}

impl RepositoryPolicy {
    /// Patterns were validated with the configuration; one that still
    /// fails to build is left out rather than taking the server down.
    pub fn new(policy: &RoutePolicy) -> RepositoryPolicy {
        let set = |patterns: &[String]| {
            if patterns.is_empty() {
                return None;
            }
            let mut builder = GlobSetBuilder::new();
            for pattern in patterns {
                if let Ok(glob) = repository_glob(pattern) {
                    builder.add(glob);
                }
            }
            builder.build().ok()
        };
        RepositoryPolicy {
            allow: set(&policy.allow),
            deny: set(&policy.deny),
        }
    }

    pub fn is_open(&self) -> bool {
        self.allow.is_none() && self.deny.is_none()
    }

    /// `DENIED` with the reason when `repository` is not served.
    pub fn check(&self, upstream: &str, repository: &str) -> Result<(), RegistryError> {
        if let Some(allow) = &self.allow {
            if !allow.is_match(repository) {
                return Err(RegistryError::denied(format!(
                    "{upstream}/{repository} is not served by this mirror: only the repositories on its allow list for {upstream} are"
                )));
            }
        }
        if self
            .deny
            .as_ref()
            .is_some_and(|deny| deny.is_match(repository))
        {
            return Err(RegistryError::denied(format!(
                "{upstream}/{repository} is not served by this mirror: it is on the deny list for {upstream}"
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Tier;

    fn policy(allow: &[&str], deny: &[&str]) -> RepositoryPolicy {
        RepositoryPolicy::new(&RoutePolicy {
            tier: Tier::Free,
            allow: allow.iter().map(|s| s.to_string()).collect(),
            deny: deny.iter().map(|s| s.to_string()).collect(),
        })
    }

    #[test]
    fn allow_lists_and_deny_lists() {
        let only = policy(&["pause", "kube-*", "coredns/**"], &[]);
        assert!(only.check("r", "pause").is_ok());
        assert!(only.check("r", "kube-proxy").is_ok());
        assert!(only.check("r", "coredns/coredns").is_ok());
        // `*` stays within one component.
        assert!(only.check("r", "kube-x/evil").is_err());
        let err = only.check("registry.k8s.io", "etcd").unwrap_err();
        assert_eq!(err.status, http::StatusCode::FORBIDDEN);
        assert!(err.message.contains("allow list"), "{}", err.message);

        let but = policy(&[], &["big/**"]);
        assert!(but.check("r", "pause").is_ok());
        let err = but.check("r", "big/model").unwrap_err();
        assert!(err.message.contains("deny list"), "{}", err.message);
        assert!(policy(&[], &[]).is_open());
    }
}
