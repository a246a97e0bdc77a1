//! The assembled core: routing table, one client per upstream, the caches,
//! the access layer and the state store, built once from configuration and
//! shared by every request.

use std::collections::HashMap;
use std::sync::Arc;

use crate::access::Access;
use crate::cache::blobs::BlobCache;
use crate::cache::fill_lock::FillLocks;
use crate::cache::manifests::ManifestCache;
use crate::cache::store::Store;
use crate::config::Config;
use crate::dispatch::Dispatcher;
use crate::routing::Router;
use crate::state::{State, StateError, StateKind};

/// Longest a replica waits for another replica's fill of the same blob.
const FILL_WAIT: std::time::Duration = std::time::Duration::from_secs(600);
use crate::upstream::Upstream;

pub struct Mirror {
    pub router: Router,
    pub upstreams: HashMap<String, Arc<Upstream>>,
    pub manifests: ManifestCache,
    pub blobs: BlobCache,
    pub dispatcher: Dispatcher,
    pub trusted_proxies: Vec<ipnet::IpNet>,
    pub forwarded_header: crate::config::ForwardedHeader,
    pub access: Access,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot open the cache in {path}: {source}")]
    Store {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot open the state store: {0}")]
    State(#[from] StateError),
    #[error("cannot set up the client for upstream {name}: {source}")]
    Upstream {
        name: String,
        source: reqwest::Error,
    },
}

impl Mirror {
    pub async fn open(config: &Config) -> Result<Mirror, StartError> {
        let state = State::open(config.state.redis_url(), &config.data_dir).await?;

        let store =
            Store::open(&config.data_dir, &config.storage).map_err(|source| StartError::Store {
                path: config.data_dir.display().to_string(),
                source,
            })?;
        let store = Arc::new(store);

        let mut upstreams = HashMap::new();
        for (name, upstream) in &config.upstreams {
            let client =
                Upstream::new(upstream.clone()).map_err(|source| StartError::Upstream {
                    name: name.clone(),
                    source,
                })?;
            upstreams.insert(name.clone(), Arc::new(client));
        }

        let dispatcher =
            Dispatcher::new(config.dispatch.clone(), store.clone()).map_err(|source| {
                StartError::Upstream {
                    name: "redirect target probes".into(),
                    source,
                }
            })?;

        // Replicas coordinate fills only when they share both the state and
        // the store the blob ends up in.
        let shared = state.kind() == StateKind::Redis && store.is_remote();
        let fill_locks = shared.then(|| FillLocks::new(state.clone(), FILL_WAIT));

        Ok(Mirror {
            router: Router::new(config),
            upstreams,
            manifests: ManifestCache::new(store.clone(), config.cache.manifest_memory_bytes),
            blobs: BlobCache::new(store.clone(), fill_locks),
            dispatcher,
            trusted_proxies: config.trusted_proxies.clone(),
            forwarded_header: config.forwarded_header,
            access: Access::new(config, state),
        })
    }
}
