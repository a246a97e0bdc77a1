//! Blobs by digest: served from disk when cached, otherwise from the one
//! fill that is bringing them in, which a request starts or joins.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use reqwest::Method;

use super::CacheResult;
use super::fill::{Fill, Source, content_length};
use super::store::Store;
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
}

impl BlobCache {
    pub fn new(store: Arc<Store>) -> BlobCache {
        BlobCache {
            store,
            fills: Default::default(),
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
        let (fill, cache) = {
            let mut fills = self.fills.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(fill) = fills.get(&key) {
                (fill.clone(), CacheResult::Joined)
            } else {
                // Checked under the lock: a fill commits its file before it
                // leaves the map, so a blob is always in one place or the other.
                let path = self.store.blob_path(digest);
                if let Ok(file) = std::fs::File::open(&path) {
                    let size = file
                        .metadata()
                        .map_err(|e| {
                            RegistryError::internal(format!("cannot read a cached blob: {e}"))
                        })?
                        .len();
                    return Ok(OpenBlob {
                        source: Source::File(Arc::new(file)),
                        size: Some(size),
                        cache: CacheResult::Hit,
                    });
                }
                let fills_handle = self.fills.clone();
                let finished_key = key.clone();
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
        let running = {
            let fills = self.fills.lock().unwrap_or_else(|e| e.into_inner());
            fills.get(&key).cloned()
        };
        if let Some(fill) = running {
            if let Ok(Some(size)) = fill.started().await {
                return Ok((size, CacheResult::Joined));
            }
        }
        if let Ok(metadata) = tokio::fs::metadata(self.store.blob_path(digest)).await {
            return Ok((metadata.len(), CacheResult::Hit));
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
}
