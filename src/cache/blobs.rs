//! Blobs by digest: served from disk when cached, otherwise from the one
//! fill that is bringing them in, which a request starts or joins.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use reqwest::Method;

use super::CacheResult;
use super::fill::{Fill, Source, content_length};
use super::fill_lock::{FillGuard, FillLocks, Turn};
use super::store::{Store, StoredBlob};
use crate::oci::error::{ErrorCode, RegistryError};
use crate::oci::reference::Digest;
use crate::upstream::Upstream;

/// A blob ready to be read.
pub struct OpenBlob {
    pub source: Source,
    /// Unknown only while a fill runs whose upstream sent no length.
    pub size: Option<u64>,
    pub cache: CacheResult,
}

/// Fills are shared per route as well as per digest: a request through
/// another upstream or repository, which may fail differently (a 404, a
/// slow or wrong upstream), never hands its failure to this one.
type FillKey = (String, String, Digest);

pub struct BlobCache {
    store: Arc<Store>,
    fills: Arc<Mutex<HashMap<FillKey, Arc<Fill>>>>,
    /// Set when replicas share a state store and an object store.
    locks: Option<FillLocks>,
}

impl BlobCache {
    pub fn new(store: Arc<Store>, locks: Option<FillLocks>) -> BlobCache {
        BlobCache {
            store,
            fills: Default::default(),
            locks,
        }
    }

    /// Opens `digest` for reading, starting a fill from `upstream` if it is
    /// neither cached nor already being filled.
    pub async fn open(
        &self,
        upstream: &Arc<Upstream>,
        repository: &str,
        digest: &Digest,
    ) -> Result<OpenBlob, RegistryError> {
        let key: FillKey = (
            upstream.name().to_owned(),
            repository.to_owned(),
            digest.clone(),
        );
        // An object store is asked before taking the lock (it is a network
        // call); a second look under the lock then catches a fill that
        // started meanwhile.
        let running = self.running(&key);
        if running.is_none() && self.store.is_remote() {
            if let Some(stored) = self.stored(digest).await {
                return Ok(stored);
            }
        }
        // Another replica may be filling it: wait for the store to have it,
        // or join a fill another request here started meanwhile.
        let mut guard = None;
        if let (None, Some(locks)) = (&running, &self.locks) {
            let found = || async {
                match self.running(&key) {
                    Some(fill) => Some(Found::Fill(fill)),
                    None => self.stored(digest).await.map(Found::Stored),
                }
            };
            match locks.turn(digest, found).await {
                Turn::Found(Found::Stored(mut stored)) => {
                    stored.cache = CacheResult::Joined;
                    return Ok(stored);
                }
                Turn::Found(Found::Fill(fill)) => {
                    let size = fill.started().await?;
                    return Ok(OpenBlob {
                        source: Source::Fill(fill),
                        size,
                        cache: CacheResult::Joined,
                    });
                }
                Turn::Fill(held) => guard = Some(held),
            }
        }
        let (fill, cache) = {
            let mut fills = self.fills.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(fill) = fills.get(&key) {
                (fill.clone(), CacheResult::Joined)
            } else {
                // On local disk, checked under the lock: a fill commits its
                // file before it leaves the map, so a blob is always in one
                // place or the other.
                match self.store.local_blob(digest) {
                    Ok(Some(stored)) => return Ok(open_stored(&self.store, stored)),
                    Ok(None) => {}
                    Err(e) => {
                        tracing::warn!(%digest, error = %e, "cannot read a cached blob; filling again")
                    }
                }
                let fills_handle = self.fills.clone();
                let finished_key = key.clone();
                let guard: Option<FillGuard> = guard.take();
                let fill = Fill::start(
                    self.store.clone(),
                    upstream.clone(),
                    repository.to_owned(),
                    digest.clone(),
                    move || {
                        fills_handle
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .remove(&finished_key);
                        // Other replicas may now find it stored.
                        drop(guard);
                    },
                )
                .map_err(|e| RegistryError::internal(format!("cannot start a fill: {e}")))?;
                fills.insert(key, fill.clone());
                (fill, CacheResult::Miss)
            }
        };
        let size = fill.started().await?;
        Ok(OpenBlob {
            source: Source::Fill(fill),
            size,
            cache,
        })
    }

    /// The size of `digest` without reading it: from the cache, a running
    /// fill, or an upstream HEAD, which downloads nothing.
    pub async fn size(
        &self,
        upstream: &Upstream,
        repository: &str,
        digest: &Digest,
    ) -> Result<(u64, CacheResult), RegistryError> {
        let key: FillKey = (
            upstream.name().to_owned(),
            repository.to_owned(),
            digest.clone(),
        );
        if let Some(fill) = self.running(&key) {
            if let Ok(Some(size)) = fill.started().await {
                return Ok((size, CacheResult::Joined));
            }
        }
        if let Some(stored) = self.stored(digest).await {
            return Ok((stored.size.unwrap_or_default(), CacheResult::Hit));
        }
        let response = upstream
            .fetch(
                Method::HEAD,
                repository,
                &format!("blobs/{digest}"),
                None,
                ErrorCode::BlobUnknown,
            )
            .await?;
        let size = content_length(response.headers()).ok_or_else(|| {
            RegistryError::bad_gateway(format!(
                "{} answered a blob HEAD without a length",
                upstream.name()
            ))
        })?;
        Ok((size, CacheResult::Pass))
    }

    /// The object-store key of `digest` when the store holds it (never on
    /// local disk, which has nothing to redirect to).
    pub async fn stored_key(&self, digest: &Digest) -> Option<String> {
        if !self.store.is_remote() {
            return None;
        }
        match self.stored(digest).await?.source {
            Source::Remote { key, .. } => Some(key),
            _ => None,
        }
    }

    fn running(&self, key: &FillKey) -> Option<Arc<Fill>> {
        let fills = self.fills.lock().unwrap_or_else(|e| e.into_inner());
        fills.get(key).cloned()
    }

    /// The stored copy, if the store has one and answers; a failing store
    /// is logged and treated as a miss, so upstream serves instead.
    async fn stored(&self, digest: &Digest) -> Option<OpenBlob> {
        match self.store.blob(digest).await {
            Ok(stored) => stored.map(|stored| open_stored(&self.store, stored)),
            Err(e) => {
                tracing::warn!(%digest, error = %e, "cannot reach the cache store; streaming from upstream");
                None
            }
        }
    }
}

/// What a replica waiting on another's fill may find.
enum Found {
    Fill(Arc<Fill>),
    Stored(OpenBlob),
}

fn open_stored(store: &Arc<Store>, stored: StoredBlob) -> OpenBlob {
    let (source, size) = match stored {
        StoredBlob::File(file, size) => (Source::File(file), size),
        StoredBlob::Remote { key, size } => (
            Source::Remote {
                store: store.clone(),
                key,
            },
            size,
        ),
    };
    OpenBlob {
        source,
        size: Some(size),
        cache: CacheResult::Hit,
    }
}
