//! Where cached content lives, and the writes that keep every cached object
//! complete or absent. One key layout serves local disk and object stores:
//!
//! ```text
//! blobs/<alg>/<hex[..2]>/<hex>                  blob bytes
//! manifests/<alg>/<hex>                         "<media type>\n" + manifest bytes
//! tags/<upstream>/<repository>/_tags/<tag>      JSON tag → digest record
//! ```
//!
//! On local disk the keys are paths under `data_dir`; fills always spool
//! through `<data_dir>/tmp/<pid>/`, so clients can read a blob as it arrives.

use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;
use opendal::Operator;

use crate::config::{ObjectStoreConfig, StorageConfig};
use crate::oci::reference::Digest;

/// Part size for multipart uploads of blobs.
const UPLOAD_CHUNK: usize = 8 << 20;

pub struct Store {
    root: PathBuf,
    /// This process's own directory for writes in progress.
    temp_dir: PathBuf,
    temp_counter: AtomicU64,
    /// The object store, when content does not live in `root`.
    remote: Option<Operator>,
}

/// A blob found in the store.
pub enum StoredBlob {
    File(Arc<std::fs::File>, u64),
    Remote { key: String, size: u64 },
}

impl Store {
    /// Opens (creating) the layout under `root`. Writes in progress go to
    /// `tmp/<pid>/`; what earlier processes left there was never visible and
    /// is removed, while another live process sharing the directory keeps
    /// its own.
    pub fn open(root: &Path, storage: &StorageConfig) -> io::Result<Store> {
        for dir in ["blobs", "manifests", "tags", "tmp"] {
            std::fs::create_dir_all(root.join(dir))?;
        }
        for entry in std::fs::read_dir(root.join("tmp"))? {
            let entry = entry?;
            let owner_alive = entry
                .file_name()
                .to_str()
                .and_then(|name| name.parse::<u32>().ok())
                .is_some_and(|pid| Path::new("/proc").join(pid.to_string()).exists());
            if !owner_alive {
                let path = entry.path();
                let removed = if path.is_dir() {
                    std::fs::remove_dir_all(&path)
                } else {
                    std::fs::remove_file(&path)
                };
                removed?;
            }
        }
        let temp_dir = root.join("tmp").join(std::process::id().to_string());
        std::fs::create_dir_all(&temp_dir)?;
        Ok(Store {
            root: root.to_owned(),
            temp_dir,
            temp_counter: AtomicU64::new(0),
            remote: object_store(storage).map_err(io::Error::other)?,
        })
    }

    pub fn is_remote(&self) -> bool {
        self.remote.is_some()
    }

    pub fn blob_key(digest: &Digest) -> String {
        let hex = digest.hex();
        format!("blobs/{}/{}/{hex}", digest.algorithm().as_str(), &hex[..2])
    }

    pub fn manifest_key(digest: &Digest) -> String {
        format!("manifests/{}/{}", digest.algorithm().as_str(), digest.hex())
    }

    /// Repository names and tags are validated before they get here, so
    /// they cannot climb out of the tree; `_tags` cannot collide with a
    /// repository component, which never starts with `_`.
    pub fn tag_key(upstream: &str, repository: &str, tag: &str) -> String {
        format!("tags/{upstream}/{repository}/_tags/{tag}")
    }

    /// A fresh name for a write in progress.
    pub fn temp_path(&self) -> PathBuf {
        let n = self.temp_counter.fetch_add(1, Ordering::Relaxed);
        self.temp_dir.join(n.to_string())
    }

    /// A small object (manifest, tag record), or `None` if absent.
    pub async fn read(&self, key: &str) -> io::Result<Option<Vec<u8>>> {
        match &self.remote {
            Some(op) => match op.read(key).await {
                Ok(buffer) => Ok(Some(buffer.to_vec())),
                Err(e) if e.kind() == opendal::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(io::Error::other(e)),
            },
            None => match tokio::fs::read(self.root.join(key)).await {
                Ok(bytes) => Ok(Some(bytes)),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(e),
            },
        }
    }

    /// Writes a small object so that readers see all of it or nothing: an
    /// object store's PUT is atomic, a file is renamed into place.
    pub async fn write(&self, key: &str, bytes: Vec<u8>) -> io::Result<()> {
        if let Some(op) = &self.remote {
            return op
                .write(key, bytes)
                .await
                .map(|_| ())
                .map_err(io::Error::other);
        }
        let temp = self.temp_path();
        let path = self.root.join(key);
        tokio::task::spawn_blocking(move || {
            let result = (|| {
                let mut file = std::fs::File::create(&temp)?;
                file.write_all(&bytes)?;
                file.sync_data()?;
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent)?;
                }
                std::fs::rename(&temp, &path)
            })();
            if result.is_err() {
                let _ = std::fs::remove_file(&temp);
            }
            result
        })
        .await
        .map_err(io::Error::other)?
    }

    pub async fn delete(&self, key: &str) -> io::Result<()> {
        match &self.remote {
            Some(op) => op.delete(key).await.map_err(io::Error::other),
            None => match tokio::fs::remove_file(self.root.join(key)).await {
                Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            },
        }
    }

    /// A stored blob, or `None` if absent.
    pub async fn blob(&self, digest: &Digest) -> io::Result<Option<StoredBlob>> {
        let key = Self::blob_key(digest);
        match &self.remote {
            Some(op) => match op.stat(&key).await {
                Ok(meta) => Ok(Some(StoredBlob::Remote {
                    key,
                    size: meta.content_length(),
                })),
                Err(e) if e.kind() == opendal::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(io::Error::other(e)),
            },
            None => self.local_blob(digest),
        }
    }

    /// A blob on local disk, checked without leaving the thread: callers
    /// use it under a lock.
    pub fn local_blob(&self, digest: &Digest) -> io::Result<Option<StoredBlob>> {
        if self.remote.is_some() {
            return Ok(None);
        }
        match std::fs::File::open(self.root.join(Self::blob_key(digest))) {
            Ok(file) => {
                let size = file.metadata()?.len();
                Ok(Some(StoredBlob::File(Arc::new(file), size)))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Starts an upload of `digest` to the object store; `None` on local
    /// disk, where the spooled file is renamed into place instead. The
    /// object appears only when the writer is closed.
    pub async fn blob_upload(&self, digest: &Digest) -> io::Result<Option<opendal::Writer>> {
        let Some(op) = &self.remote else {
            return Ok(None);
        };
        let writer = op
            .writer_with(&Self::blob_key(digest))
            .chunk(UPLOAD_CHUNK)
            .await
            .map_err(io::Error::other)?;
        Ok(Some(writer))
    }

    /// Makes a finished, verified spool file the cached copy on local disk.
    pub fn commit_local(&self, temp: &Path, digest: &Digest) -> io::Result<()> {
        let path = self.root.join(Self::blob_key(digest));
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::rename(temp, path)
    }

    /// A URL the client can fetch `key` from directly for `expiry`.
    pub async fn presign(&self, key: &str, expiry: Duration) -> io::Result<String> {
        let op = self
            .remote
            .as_ref()
            .ok_or_else(|| io::Error::other("local disk has no URLs to redirect to"))?;
        let request = op
            .presign_read(key, expiry)
            .await
            .map_err(io::Error::other)?;
        Ok(request.uri().to_string())
    }

    /// Bytes `start..end` of a stored object.
    pub async fn read_range(
        &self,
        key: &str,
        start: u64,
        end: u64,
    ) -> io::Result<impl Stream<Item = io::Result<Bytes>> + Send + use<>> {
        let op = self
            .remote
            .as_ref()
            .ok_or_else(|| io::Error::other("not an object store"))?;
        let reader = op.reader(key).await.map_err(io::Error::other)?;
        reader
            .into_bytes_stream(start..end)
            .await
            .map_err(io::Error::other)
    }
}

/// The hosts a client may be redirected to under `storage`, found by
/// presigning a URL (a local computation; nothing is sent).
pub async fn redirect_hosts(storage: &StorageConfig) -> Result<Vec<String>, opendal::Error> {
    let Some(op) = object_store(storage)? else {
        return Ok(Vec::new());
    };
    let request = op
        .presign_read("blobs/probe", Duration::from_secs(60))
        .await?;
    Ok(request
        .uri()
        .authority()
        .map(|a| a.to_string())
        .into_iter()
        .collect())
}

fn object_store(storage: &StorageConfig) -> Result<Option<Operator>, opendal::Error> {
    let set = |value: &Option<String>| {
        value
            .as_deref()
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
    };
    let operator = match storage {
        StorageConfig::Fs => return Ok(None),
        StorageConfig::S3(c) => {
            let mut builder = opendal::services::S3::default()
                .bucket(&c.bucket)
                .root(&c.root);
            if let Some(endpoint) = set(&c.endpoint) {
                builder = builder.endpoint(&endpoint);
            }
            builder = builder.region(set(&c.region).as_deref().unwrap_or("us-east-1"));
            if let (Some(id), Some(secret)) = (set(&c.access_key_id), set(&c.secret_access_key)) {
                builder = builder.access_key_id(&id).secret_access_key(&secret);
            }
            if c.virtual_host_style {
                builder = builder.enable_virtual_host_style();
            }
            Operator::new(builder)?.finish()
        }
        StorageConfig::Oss(c) => {
            let mut builder = opendal::services::Oss::default()
                .bucket(&c.bucket)
                .root(&c.root);
            if let Some(endpoint) = set(&c.endpoint) {
                builder = builder.endpoint(&endpoint);
            }
            if let (Some(id), Some(secret)) = (set(&c.access_key_id), set(&c.secret_access_key)) {
                builder = builder.access_key_id(&id).access_key_secret(&secret);
            }
            Operator::new(builder)?.finish()
        }
        StorageConfig::Gcs(c) => gcs(c)?,
    };
    Ok(Some(operator))
}

fn gcs(c: &ObjectStoreConfig) -> Result<Operator, opendal::Error> {
    let mut builder = opendal::services::Gcs::default()
        .bucket(&c.bucket)
        .root(&c.root);
    if let Some(endpoint) = c.endpoint.as_deref().filter(|e| !e.is_empty()) {
        builder = builder.endpoint(endpoint);
    }
    if let Some(path) = c.credential_path.as_deref().filter(|p| !p.is_empty()) {
        builder = builder.credential_path(path);
    }
    Ok(Operator::new(builder)?.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::reference::Algorithm;

    #[tokio::test]
    async fn atomic_write_and_layout() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), &StorageConfig::Fs).unwrap();
        let digest = Digest::of(Algorithm::Sha256, b"hello");
        let key = Store::blob_key(&digest);
        assert!(key.starts_with("blobs/sha256/2c/2cf24d"));
        store.write(&key, b"hello".to_vec()).await.unwrap();
        assert_eq!(std::fs::read(dir.path().join(&key)).unwrap(), b"hello");
        assert_eq!(
            store.read(&key).await.unwrap().as_deref(),
            Some(&b"hello"[..])
        );
        store.delete(&key).await.unwrap();
        assert_eq!(store.read(&key).await.unwrap(), None);
        store.delete(&key).await.unwrap();
        let temp_dir = dir.path().join("tmp").join(std::process::id().to_string());
        assert_eq!(std::fs::read_dir(temp_dir).unwrap().count(), 0);
    }

    #[test]
    fn leftover_writes_are_cleared_on_open_but_not_a_live_process_s() {
        let dir = tempfile::tempdir().unwrap();
        let tmp = dir.path().join("tmp");
        std::fs::create_dir_all(tmp.join("999999999")).unwrap();
        std::fs::write(tmp.join("999999999/partial"), b"half").unwrap();
        std::fs::write(tmp.join("stray"), b"half").unwrap();
        // PID 1 is always alive: its writes must survive our start.
        std::fs::create_dir_all(tmp.join("1")).unwrap();
        std::fs::write(tmp.join("1/in-flight"), b"half").unwrap();

        Store::open(dir.path(), &StorageConfig::Fs).unwrap();
        assert!(!tmp.join("999999999").exists());
        assert!(!tmp.join("stray").exists());
        assert!(tmp.join("1/in-flight").exists());
    }
}
