//! IP grants: once a sponsor pulls with a token, the network of its address
//! (a /32 or an IPv6 /64 by default) may pull from sponsor routes without
//! logging in, until the grant expires or the account stops being active.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::accounts::Account;
use super::now;
use crate::config::AccessConfig;
use crate::state::{State, StateError, StateKind};

const KEY_PREFIX: &str = "grant/";

/// How long the request path trusts a lookup; a revoke takes effect within it.
const CACHE_TTL: Duration = Duration::from_secs(2);
/// An address keeps pulling with tokens; its grant is rewritten at most this
/// often.
const RENEW_EVERY: Duration = Duration::from_secs(60);
/// Lookups remembered at most; beyond, the cache starts over.
const CACHE_ENTRIES: usize = 100_000;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    pub network: String,
    pub account: String,
    pub granted_at: u64,
    pub expires_at: u64,
}

pub struct Grants {
    state: State,
    ttl: Duration,
    prefix_v4: u8,
    prefix_v6: u8,
    lookups: Lookups,
    /// Every grant, as last read from an embedded store.
    snapshot: tokio::sync::Mutex<(Option<Instant>, HashMap<IpNet, Grant>)>,
}

impl Grants {
    /// Grants as `access` configures them: their lifetime and networks.
    pub fn new(state: State, access: &AccessConfig) -> Grants {
        Grants {
            state,
            ttl: access.grant_ttl,
            prefix_v4: access.grant_prefix_v4,
            prefix_v6: access.grant_prefix_v6,
            lookups: Mutex::new(HashMap::new()),
            snapshot: tokio::sync::Mutex::new((None, HashMap::new())),
        }
    }

    /// The network a grant (and a limit) covers for this address.
    pub fn network_of(&self, address: IpAddr) -> IpNet {
        let address = canonical(address);
        let prefix = match address {
            IpAddr::V4(_) => self.prefix_v4,
            IpAddr::V6(_) => self.prefix_v6,
        };
        IpNet::new(address, prefix)
            .map(|net| net.trunc())
            .unwrap_or_else(|_| IpNet::from(address))
    }

    /// The live grant covering `address`, if any. While the state store is
    /// unreachable the last answer stands (until the grant's own expiry).
    pub async fn lookup(&self, address: IpAddr) -> Option<Grant> {
        let network = self.network_of(address);
        if self.state.kind() == StateKind::Embedded {
            return self.in_snapshot(network).await;
        }
        let remembered = lock(&self.lookups).get(&network).cloned();
        let grant = match &remembered {
            Some((read_at, grant)) if read_at.elapsed() < CACHE_TTL => grant.clone(),
            _ => match self.state.get(&key(&network)).await {
                Ok(bytes) => {
                    let grant = bytes.and_then(|b| serde_json::from_slice::<Grant>(&b).ok());
                    remember(&self.lookups, network, grant.clone());
                    grant
                }
                Err(_) => remembered.and_then(|(_, grant)| grant),
            },
        };
        grant.filter(|g| now() < g.expires_at)
    }

    /// The embedded store: every grant, read in one scan at most every
    /// CACHE_TTL. Opening the file costs milliseconds of syncs, so one read
    /// per network (a public mirror sees thousands) would bound the server
    /// by its disk.
    async fn in_snapshot(&self, network: IpNet) -> Option<Grant> {
        let mut snapshot = self.snapshot.lock().await;
        let stale = snapshot
            .0
            .is_none_or(|read_at| read_at.elapsed() >= CACHE_TTL);
        if stale {
            // On a failed read the last snapshot stands, tried again next time.
            if let Ok(grants) = self.state.scan(KEY_PREFIX).await {
                let grants = grants
                    .into_iter()
                    .filter_map(|(_, bytes)| serde_json::from_slice::<Grant>(&bytes).ok())
                    .filter_map(|g| Some((g.network.parse::<IpNet>().ok()?, g)))
                    .collect();
                *snapshot = (Some(Instant::now()), grants);
            }
        }
        snapshot
            .1
            .get(&network)
            .filter(|g| now() < g.expires_at)
            .cloned()
    }

    /// Grants (or renews) `address`'s network to `account`, never beyond
    /// the account's own expiry. A grant this account earned less than
    /// RENEW_EVERY ago is left as it is, so a busy address costs one write a
    /// minute; a revoked or foreign one is rewritten at once.
    pub async fn grant(&self, address: IpAddr, account: &Account) {
        let granted_at = now();
        let fresh = self.lookup(address).await.is_some_and(|g| {
            g.account == account.name && granted_at < g.granted_at + RENEW_EVERY.as_secs()
        });
        if fresh {
            return;
        }

        let network = self.network_of(address);
        let expires_at = (granted_at + self.ttl.as_secs()).min(account.expires_at);
        let grant = Grant {
            network: network.to_string(),
            account: account.name.clone(),
            granted_at,
            expires_at,
        };
        let ttl = Duration::from_secs(expires_at.saturating_sub(granted_at).max(1));
        let bytes = serde_json::to_vec(&grant).unwrap_or_default();
        match self.state.put(&key(&network), &bytes, Some(ttl)).await {
            Ok(()) => {
                remember(&self.lookups, network, Some(grant.clone()));
                self.snapshot.lock().await.1.insert(network, grant);
                tracing::info!(%network, account = %account.name, expires_at, "address granted");
            }
            Err(e) => tracing::warn!(error = %e, %network, "cannot record a grant"),
        }
    }

    pub async fn list(&self) -> Result<Vec<Grant>, StateError> {
        let at = now();
        Ok(self
            .state
            .scan(KEY_PREFIX)
            .await?
            .into_iter()
            .filter_map(|(_, bytes)| serde_json::from_slice::<Grant>(&bytes).ok())
            .filter(|g| at < g.expires_at)
            .collect())
    }

    /// Revokes the grant covering `address` (or exactly `network`).
    pub async fn revoke(&self, network: IpNet) -> Result<bool, StateError> {
        let removed = self.state.delete(&key(&network)).await?;
        lock(&self.lookups).remove(&network);
        self.snapshot.lock().await.1.remove(&network);
        Ok(removed)
    }

    /// Revokes every grant an account earned.
    pub async fn revoke_account(&self, account: &str) -> Result<usize, StateError> {
        let mut count = 0;
        for grant in self.list().await? {
            if grant.account == account {
                if let Ok(network) = grant.network.parse::<IpNet>() {
                    count += usize::from(self.revoke(network).await?);
                }
            }
        }
        Ok(count)
    }
}

fn key(network: &IpNet) -> String {
    format!("{KEY_PREFIX}{network}")
}

/// An IPv4 address that arrived mapped into IPv6 is the IPv4 address.
fn canonical(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

type Lookups = Mutex<HashMap<IpNet, (Instant, Option<Grant>)>>;

fn remember(lookups: &Lookups, network: IpNet, grant: Option<Grant>) {
    let mut lookups = lock(lookups);
    if lookups.len() >= CACHE_ENTRIES {
        lookups.clear();
    }
    lookups.insert(network, (Instant::now(), grant));
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}
