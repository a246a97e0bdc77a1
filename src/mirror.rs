//! The assembled core: routing table, one client per upstream, and the
//! caches, built once from configuration and shared by every request.

use std::collections::HashMap;
use std::sync::Arc;

use crate::cache::blobs::BlobCache;
use crate::cache::manifests::ManifestCache;
use crate::cache::store::Store;
use crate::config::Config;
use crate::dispatch::Dispatcher;
use crate::routing::Router;
use crate::upstream::Upstream;

pub struct Mirror {
    pub router: Router,
    pub upstreams: HashMap<String, Arc<Upstream>>,
    pub manifests: ManifestCache,
    pub blobs: BlobCache,
    pub dispatcher: Dispatcher,
    pub trusted_proxies: Vec<ipnet::IpNet>,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot open the cache in {path}: {source}")]
    Store {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot set up the client for upstream {name}: {source}")]
    Upstream {
        name: String,
        source: reqwest::Error,
    },
}

impl Mirror {
    pub fn new(config: &Config) -> Result<Mirror, StartError> {
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

        Ok(Mirror {
            router: Router::new(config),
            upstreams,
            manifests: ManifestCache::new(store.clone(), config.cache.manifest_memory_bytes),
            blobs: BlobCache::new(store.clone()),
            dispatcher,
            trusted_proxies: config.trusted_proxies.clone(),
        })
    }
}
