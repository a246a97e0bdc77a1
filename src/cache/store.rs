//! The on-disk layout of the cache and the atomic writes that keep every
//! cached object complete or absent.
//!
//! ```text
//! <data_dir>/blobs/<alg>/<hex[..2]>/<hex>          blob bytes
//! <data_dir>/manifests/<alg>/<hex>                 "<media type>\n" + manifest bytes
//! <data_dir>/tags/<upstream>/<repository>/_tags/<tag>   JSON tag → digest record
//! <data_dir>/tmp/<pid>/                            writes in progress
//! ```

use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::oci::reference::Digest;

pub struct Store {
    root: PathBuf,
    /// This process's own directory for writes in progress.
    temp_dir: PathBuf,
    temp_counter: AtomicU64,
}

impl Store {
    /// Opens (creating) the layout under `root`. Writes in progress go to
    /// `tmp/<pid>/`; what earlier processes left there was never visible and
    /// is removed, while another live process sharing the directory keeps
    /// its own.
    pub fn open(root: &Path) -> io::Result<Store> {
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
        })
    }

    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        let hex = digest.hex();
        self.root
            .join("blobs")
            .join(digest.algorithm().as_str())
            .join(&hex[..2])
            .join(hex)
    }

    pub fn manifest_path(&self, digest: &Digest) -> PathBuf {
        self.root
            .join("manifests")
            .join(digest.algorithm().as_str())
            .join(digest.hex())
    }

    /// Repository names and tags are validated before they get here, so
    /// they cannot climb out of the tree; `_tags` cannot collide with a
    /// repository component, which never starts with `_`.
    pub fn tag_path(&self, upstream: &str, repository: &str, tag: &str) -> PathBuf {
        self.root
            .join("tags")
            .join(upstream)
            .join(repository)
            .join("_tags")
            .join(tag)
    }

    /// A fresh name for a write in progress.
    pub fn temp_path(&self) -> PathBuf {
        let n = self.temp_counter.fetch_add(1, Ordering::Relaxed);
        self.temp_dir.join(n.to_string())
    }

    /// Makes a finished temporary file visible under its final name.
    pub fn commit(&self, temp: &Path, path: &Path) -> io::Result<()> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::rename(temp, path)
    }

    /// Writes `bytes` to `path` so that readers see all of it or nothing.
    pub async fn write_atomic(&self, path: PathBuf, bytes: Vec<u8>) -> io::Result<()> {
        let temp = self.temp_path();
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::reference::Algorithm;

    #[tokio::test]
    async fn atomic_write_and_layout() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let digest = Digest::of(Algorithm::Sha256, b"hello");
        let path = store.blob_path(&digest);
        assert!(path.starts_with(dir.path().join("blobs/sha256/2c")));
        store
            .write_atomic(path.clone(), b"hello".to_vec())
            .await
            .unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"hello");
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

        Store::open(dir.path()).unwrap();
        assert!(!tmp.join("999999999").exists());
        assert!(!tmp.join("stray").exists());
        assert!(tmp.join("1/in-flight").exists());
    }
}
