//! The single-flight fill: one upstream download per missing blob, written
//! to a temporary file that every waiting client reads from as it grows,
//! verified against the digest, then committed or dropped.

use std::io::Write as _;
use std::os::unix::fs::FileExt as _;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::{FutureExt as _, StreamExt as _, TryStreamExt as _};
use reqwest::Method;
use tokio::sync::watch;

use super::store::Store;
use crate::oci::error::{ErrorCode, RegistryError};
use crate::oci::reference::{Digest, Hasher};
use crate::upstream::Upstream;

/// How many bytes one read of a file hands to a client at once.
const READ_CHUNK: u64 = 256 * 1024;
/// How many bytes already received from upstream are written in one go.
const WRITE_BATCH: usize = 1 << 20;
/// Batches waiting for the spool thread; bounds a fill's memory.
const SPOOL_QUEUE: usize = 4;

/// Where a fill stands. Clients poll it through a watch channel.
#[derive(Clone, Debug)]
pub enum FillState {
    /// Waiting for upstream's response headers.
    Starting,
    /// Bytes `0..available` are on disk and may be sent. Until the digest is
    /// checked the last byte received is held back, so no client can receive
    /// a complete-looking body with wrong bytes.
    Streaming {
        size: Option<u64>,
        available: u64,
    },
    /// Verified and committed to the cache.
    Done {
        size: u64,
    },
    Failed(RegistryError),
}

/// One download in progress; shared by every client that wants the blob.
pub struct Fill {
    /// A read handle on the temporary file. It stays valid after the file
    /// is renamed into the cache or removed, so readers never race those.
    file: Arc<std::fs::File>,
    state: watch::Receiver<FillState>,
}

impl Fill {
    /// Starts downloading `digest` from `upstream` into a temporary file of
    /// `store`. `finished` runs once the fill has ended either way.
    pub fn start(
        store: Arc<Store>,
        upstream: Arc<Upstream>,
        repository: String,
        digest: Digest,
        finished: impl FnOnce() + Send + 'static,
    ) -> std::io::Result<Arc<Fill>> {
        let temp = store.temp_path();
        let writer = std::fs::File::create(&temp)?;
        let reader = std::fs::File::open(&temp)?;
        let (state_tx, state_rx) = watch::channel(FillState::Starting);

        let task = FillTask {
            store,
            upstream,
            repository,
            digest,
            temp,
            state: Arc::new(state_tx),
        };
        let temp = task.temp.clone();
        tokio::spawn(async move {
            // Runs even if the task panics, so a broken fill can never stay
            // in the map for later requests to join.
            let _cleanup = FillCleanup {
                temp,
                finished: Some(Box::new(finished)),
            };
            task.run(writer).await;
        });
        Ok(Arc::new(Fill {
            file: Arc::new(reader),
            state: state_rx,
        }))
    }

    /// Waits for upstream's answer: the blob's size if it sent one, or the
    /// error every waiting client should get instead of a body.
    pub async fn started(&self) -> Result<Option<u64>, RegistryError> {
        let mut state = self.state.clone();
        let state = state
            .wait_for(|s| !matches!(s, FillState::Starting))
            .await
            .map_err(|_| RegistryError::internal("the fill ended without saying how"))?;
        match &*state {
            FillState::Streaming { size, .. } => Ok(*size),
            FillState::Done { size } => Ok(Some(*size)),
            FillState::Failed(err) => Err(err.clone()),
            FillState::Starting => unreachable!("wait_for skips Starting"),
        }
    }

    /// Waits for the fill to end and returns the final size.
    pub async fn finished(&self) -> Result<u64, RegistryError> {
        let mut state = self.state.clone();
        let state = state
            .wait_for(|s| matches!(s, FillState::Done { .. } | FillState::Failed(_)))
            .await
            .map_err(|_| RegistryError::internal("the fill ended without saying how"))?;
        match &*state {
            FillState::Done { size } => Ok(*size),
            FillState::Failed(err) => Err(err.clone()),
            _ => unreachable!("wait_for returns only ended states"),
        }
    }
}

struct FillCleanup {
    temp: PathBuf,
    finished: Option<Box<dyn FnOnce() + Send>>,
}

impl Drop for FillCleanup {
    fn drop(&mut self) {
        // Gone already when the fill was committed (renamed) or failed.
        let _ = std::fs::remove_file(&self.temp);
        if let Some(finished) = self.finished.take() {
            finished();
        }
    }
}

struct FillTask {
    store: Arc<Store>,
    upstream: Arc<Upstream>,
    repository: String,
    digest: Digest,
    temp: PathBuf,
    /// Shared with the spool thread, which publishes progress.
    state: Arc<watch::Sender<FillState>>,
}

impl FillTask {
    async fn run(self, writer: std::fs::File) {
        let started = std::time::Instant::now();
        let mut upload = None;
        match self.download(writer, &mut upload).await {
            Ok(size) => {
                tracing::debug!(digest = %self.digest, bytes = size, duration_ms = started.elapsed().as_millis() as u64, "fill committed");
                self.state.send_replace(FillState::Done { size });
            }
            Err(err) => {
                tracing::warn!(upstream = self.upstream.name(), digest = %self.digest, error = %err, "fill failed; nothing was cached");
                if let Some(mut upload) = upload {
                    // Nothing appears under the blob's key: the multipart
                    // upload is dropped, never completed.
                    let _ = upload.abort().await;
                }
                let _ = std::fs::remove_file(&self.temp);
                self.state.send_replace(FillState::Failed(err));
            }
        }
    }

    /// Streams the blob to the spool file (and to `upload`, an object store
    /// upload started once upstream answers), verifies it, and commits it.
    async fn download(
        &self,
        writer: std::fs::File,
        upload: &mut Option<opendal::Writer>,
    ) -> Result<u64, RegistryError> {
        let name = self.upstream.name();
        let response = self
            .upstream
            .fetch(
                Method::GET,
                &self.repository,
                &format!("blobs/{}", self.digest),
                None,
                ErrorCode::BlobUnknown,
            )
            .await?;
        let size = content_length(response.headers());
        self.state
            .send_replace(FillState::Streaming { size, available: 0 });
        *upload = match self.store.blob_upload(&self.digest).await {
            Ok(upload) => upload,
            Err(e) => {
                tracing::warn!(digest = %self.digest, error = %e, "cannot start an upload to the cache store; streaming only");
                None
            }
        };

        let mut body = response.bytes_stream();
        let cut = |e: reqwest::Error| {
            RegistryError::bad_gateway(format!("{name} cut the blob stream: {e}"))
        };

        // Hashing and writing run on a thread of their own, fed through a
        // short queue, so reading from upstream overlaps them; the thread
        // publishes each batch once it is on disk.
        let (batches, mut queued) = tokio::sync::mpsc::channel::<Bytes>(SPOOL_QUEUE);
        let state = self.state.clone();
        let mut hasher = Hasher::new(self.digest.algorithm());
        let spool = tokio::task::spawn_blocking(move || {
            let mut writer = writer;
            let mut written: u64 = 0;
            while let Some(batch) = queued.blocking_recv() {
                hasher.update(&batch);
                writer.write_all(&batch)?;
                written += batch.len() as u64;
                // Hold back the last byte until the digest is checked,
                // whether or not upstream said how long the blob is.
                let available = match size {
                    Some(size) => written.min(size.saturating_sub(1)),
                    None => written.saturating_sub(1),
                };
                state.send_replace(FillState::Streaming { size, available });
            }
            Ok::<_, std::io::Error>((writer, hasher, written))
        });

        let received = async {
            let mut received: u64 = 0;
            while let Some(first) = body.next().await {
                // Take whatever else has already arrived, so that a fast
                // upstream is written in large batches and a slow one promptly.
                let mut batch = first.map_err(cut)?.to_vec();
                batch.reserve(WRITE_BATCH.saturating_sub(batch.len()));
                while batch.len() < WRITE_BATCH {
                    match body.next().now_or_never() {
                        Some(Some(chunk)) => batch.extend_from_slice(&chunk.map_err(cut)?),
                        _ => break,
                    }
                }
                received += batch.len() as u64;
                if size.is_some_and(|s| received > s) {
                    return Err(RegistryError::bad_gateway(format!(
                        "{name} sent more bytes than it declared"
                    )));
                }
                let batch = Bytes::from(batch);
                if batches.send(batch.clone()).await.is_err() {
                    break; // the spool thread failed; its error is below
                }
                if let Some(writer) = upload.as_mut() {
                    if let Err(e) = writer.write(batch).await {
                        // The store failing must not fail the clients: they
                        // are served from the spool, and the blob is fetched
                        // again next time.
                        tracing::warn!(digest = %self.digest, error = %e, "upload to the cache store failed; streaming only");
                        let _ = writer.abort().await;
                        *upload = None;
                    }
                }
            }
            Ok(received)
        }
        .await;

        // Always wait for the spool thread, so that it can no longer publish
        // progress once the fill has been declared failed.
        drop(batches);
        let spooled = spool
            .await
            .map_err(|e| RegistryError::internal(format!("fill writer failed: {e}")))?;
        received?;
        let (writer, hasher, written) = spooled
            .map_err(|e| RegistryError::internal(format!("cannot write to the cache: {e}")))?;

        if size.is_some_and(|s| written != s) {
            return Err(RegistryError::bad_gateway(format!(
                "{name} ended the blob after {written} of {} bytes",
                size.unwrap_or_default()
            )));
        }
        let actual = hasher.finish();
        if actual != self.digest {
            return Err(RegistryError::bad_gateway(format!(
                "{name} sent bytes whose digest is {actual}, not the one asked for"
            )));
        }

        // Verified: only now may the blob appear under its key.
        if let Some(mut writer) = upload.take() {
            if let Err(e) = writer.close().await {
                tracing::warn!(digest = %self.digest, error = %e, "cannot complete the upload to the cache store; not cached");
            }
            return Ok(written);
        }
        if self.store.is_remote() {
            return Ok(written);
        }
        let temp = self.temp.clone();
        let digest = self.digest.clone();
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || {
            writer.sync_data()?;
            store.commit_local(&temp, &digest)
        })
        .await
        .map_err(|e| RegistryError::internal(format!("fill commit failed: {e}")))?
        .map_err(|e| RegistryError::internal(format!("cannot commit a blob to the cache: {e}")))?;
        Ok(written)
    }
}

pub fn content_length(headers: &reqwest::header::HeaderMap) -> Option<u64> {
    headers
        .get(reqwest::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// Where a client's bytes come from: a committed file, an object in the
/// store, or a fill under way.
pub enum Source {
    File(Arc<std::fs::File>),
    Remote { store: Arc<Store>, key: String },
    Fill(Arc<Fill>),
}

/// Streams bytes `start..end` of a blob (`end` unknown until a fill of
/// unknown size finishes). The stream fails, rather than ends, when the
/// fill fails, so the client's response is aborted.
pub fn read_range(
    source: Source,
    start: u64,
    end: Option<u64>,
) -> BoxStream<'static, std::io::Result<Bytes>> {
    if let Source::Remote { store, key } = source {
        let end = end.unwrap_or(u64::MAX);
        return futures_util::stream::once(async move { store.read_range(&key, start, end).await })
            .try_flatten()
            .boxed();
    }
    // The last byte of a range is held back until the fill is verified, so
    // a failed fill can still abort the response of every reader.
    let hold = move |available: u64| end.map_or(available, |e| available.min(e.saturating_sub(1)));
    futures_util::stream::unfold((source, start), move |(source, pos)| async move {
        if pos == u64::MAX {
            return None;
        }
        let (file, limit) = match &source {
            Source::File(file) => (file.clone(), end?),
            Source::Remote { .. } => return None,
            Source::Fill(fill) => {
                let mut state = fill.state.clone();
                let ready = state
                    .wait_for(|s| match s {
                        FillState::Streaming { available, .. } => hold(*available) > pos,
                        _ => !matches!(s, FillState::Starting),
                    })
                    .await
                    .map(|s| s.clone());
                let limit = match ready {
                    Ok(FillState::Streaming { available, .. }) => hold(available),
                    Ok(FillState::Done { size }) => end.map_or(size, |e| e.min(size)),
                    Ok(FillState::Failed(err)) => {
                        return Some((Err(std::io::Error::other(err.message)), (source, u64::MAX)));
                    }
                    _ => {
                        return Some((
                            Err(std::io::Error::other("the fill ended without saying how")),
                            (source, u64::MAX),
                        ));
                    }
                };
                (fill.file.clone(), limit)
            }
        };
        if pos >= limit {
            return None;
        }
        let len = (limit - pos).min(READ_CHUNK) as usize;
        let chunk = tokio::task::spawn_blocking(move || {
            let mut buf = vec![0; len];
            file.read_exact_at(&mut buf, pos).map(|_| Bytes::from(buf))
        })
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)));
        match chunk {
            Ok(chunk) => Some((Ok(chunk), (source, pos + len as u64))),
            Err(e) => Some((Err(e), (source, u64::MAX))),
        }
    })
    .boxed()
}
