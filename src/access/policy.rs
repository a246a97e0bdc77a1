//! What a caller is told when a route's allow or deny patterns refuse a
//! repository; checked before anything is fetched, by tag or digest alike.

use crate::config::{Refusal, RoutePolicy};
use crate::oci::error::RegistryError;

/// `DENIED` with the reason when `repository` is not served.
pub fn check(policy: &RoutePolicy, upstream: &str, repository: &str) -> Result<(), RegistryError> {
    let reason = match policy.refusal(repository) {
        None => return Ok(()),
        Some(Refusal::NotAllowed) => {
            format!("only the repositories on its allow list for {upstream} are")
        }
        Some(Refusal::Denied) => format!("it is on the deny list for {upstream}"),
    };
    Err(RegistryError::denied(format!(
        "{upstream}/{repository} is not served by this mirror: {reason}"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Tier;

    fn policy(allow: &[&str], deny: &[&str]) -> RoutePolicy {
        let strings =
            |patterns: &[&str]| patterns.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        RoutePolicy::new(Tier::Free, &strings(allow), &strings(deny)).unwrap()
    }

    #[test]
    fn allow_lists_and_deny_lists() {
        let only = policy(&["pause", "kube-*", "coredns/**"], &[]);
        assert!(check(&only, "r", "pause").is_ok());
        assert!(check(&only, "r", "kube-proxy").is_ok());
        assert!(check(&only, "r", "coredns/coredns").is_ok());
        // `*` stays within one component.
        assert!(check(&only, "r", "kube-x/evil").is_err());
        let err = check(&only, "registry.k8s.io", "etcd").unwrap_err();
        assert_eq!(err.status, http::StatusCode::FORBIDDEN);
        assert!(err.message.contains("allow list"), "{}", err.message);

        let but = policy(&[], &["big/**"]);
        assert!(check(&but, "r", "pause").is_ok());
        let err = check(&but, "r", "big/model").unwrap_err();
        assert!(err.message.contains("deny list"), "{}", err.message);
        assert!(policy(&[], &[]).is_open());
    }

    #[test]
    fn aliases_the_patterns_refuse_are_dropped() {
        let config = crate::config::Config::parse(
            "[upstreams.\"registry.k8s.io\"]\ndeny = [\"coredns/**\"]\n",
        )
        .unwrap();
        assert!(config.upstreams["registry.k8s.io"].aliases.is_empty());
        assert_eq!(
            crate::config::Config::embedded().upstreams["registry.k8s.io"].aliases["coredns"],
            vec!["coredns/coredns".to_string()]
        );
    }
}
