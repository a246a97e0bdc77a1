//! The single-replica state store: one redb file, `<data_dir>/state.redb`, opened for
//! each operation so that another process (`lank8s account add`) can write while the
//! server runs. Counters live in process memory; they need not survive a restart.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rand::Rng;
use redb::{Database, DatabaseError, ReadableTable, Table, TableDefinition, TableError};

use super::StateError;
use super::memory::Memory;
use crate::workers::Workers;

/// Values are stored as an 8-byte big-endian expiry (unix ms, 0 = never) and the value.
const TABLE: TableDefinition<&str, &[u8]> = TableDefinition::new("state");
type StateTable<'txn> = Table<'txn, &'static str, &'static [u8]>;
const FILE_NAME: &str = "state.redb";

/// Where the embedded store keeps its file.
pub fn embedded_path(data_dir: &Path) -> PathBuf {
    data_dir.join(FILE_NAME)
}
/// How long to wait for another process to let go of the file. Its transactions are
/// single operations, so holding it for more than a few milliseconds means it is stuck.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Expired keys nobody touches again (fill locks, say) are swept once per this many
/// write transactions of this process.
const SWEEP_EVERY_WRITES: usize = 256;
/// Each open allocates its page cache up front; operations here touch a few pages.
const CACHE_BYTES: usize = 1 << 20;

pub(crate) struct Embedded {
    path: PathBuf,
    /// redb refuses a second open of a file this process already has open, so opens
    /// from this process take turns here instead of spinning on that refusal.
    open_lock: Arc<Mutex<()>>,
    /// The file is opened on one thread of its own: an open allocates
    /// megabytes, which tokio's blocking threads would each keep.
    worker: Workers,
    writes: AtomicUsize,
    counters: Memory,
}

impl Embedded {
    /// Creates `data_dir` if needed and proves the file usable by creating the table.
    pub(crate) async fn open(data_dir: &Path) -> Result<Embedded, StateError> {
        std::fs::create_dir_all(data_dir).map_err(|source| StateError::Directory {
            path: data_dir.to_path_buf(),
            source,
        })?;
        let store = Embedded {
            path: embedded_path(data_dir),
            open_lock: Arc::new(Mutex::new(())),
            worker: Workers::new("state-file", 1),
            writes: AtomicUsize::new(0),
            counters: Memory::new(),
        };
        store
            .write("open", |table, now| {
                sweep(table, now)?;
                Ok(((), true))
            })
            .await?;
        Ok(store)
    }

    pub(crate) fn counters(&self) -> &Memory {
        &self.counters
    }

    pub(crate) async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StateError> {
        let key = key.to_owned();
        self.run("read", move |db, now| {
            let txn = db.begin_read()?;
            let table = match txn.open_table(TABLE) {
                Ok(table) => table,
                Err(TableError::TableDoesNotExist(_)) => return Ok(None),
                Err(e) => return Err(e.into()),
            };
            let raw = table.get(key.as_str())?;
            Ok(raw.and_then(|raw| live(raw.value(), now).map(<[u8]>::to_vec)))
        })
        .await
    }

    pub(crate) async fn put(
        &self,
        key: &str,
        value: &[u8],
        ttl: Option<Duration>,
    ) -> Result<(), StateError> {
        let (key, value) = (key.to_owned(), value.to_owned());
        self.write("write", move |table, now| {
            table.insert(key.as_str(), encode(&value, expiry(now, ttl)).as_slice())?;
            Ok(((), true))
        })
        .await
    }

    pub(crate) async fn put_new(
        &self,
        key: &str,
        value: &[u8],
        ttl: Option<Duration>,
    ) -> Result<bool, StateError> {
        let (key, value) = (key.to_owned(), value.to_owned());
        self.write("write", move |table, now| {
            let present = table
                .get(key.as_str())?
                .is_some_and(|raw| live(raw.value(), now).is_some());
            if !present {
                table.insert(key.as_str(), encode(&value, expiry(now, ttl)).as_slice())?;
            }
            Ok((!present, !present))
        })
        .await
    }

    pub(crate) async fn delete(&self, key: &str) -> Result<bool, StateError> {
        let key = key.to_owned();
        self.write("write", move |table, now| {
            let removed = table.remove(key.as_str())?;
            let existed = removed.is_some_and(|raw| live(raw.value(), now).is_some());
            Ok((existed, true))
        })
        .await
    }

    pub(crate) async fn delete_if(&self, key: &str, value: &[u8]) -> Result<bool, StateError> {
        let (key, value) = (key.to_owned(), value.to_owned());
        self.write("write", move |table, now| {
            let (matches, expired) = compare(table, &key, &value, now)?;
            if matches || expired {
                table.remove(key.as_str())?;
            }
            Ok((matches, matches || expired))
        })
        .await
    }

    pub(crate) async fn renew_if(
        &self,
        key: &str,
        value: &[u8],
        ttl: Duration,
    ) -> Result<bool, StateError> {
        let (key, value) = (key.to_owned(), value.to_owned());
        self.write("write", move |table, now| {
            let (matches, expired) = compare(table, &key, &value, now)?;
            if matches {
                let renewed = encode(&value, expiry(now, Some(ttl)));
                table.insert(key.as_str(), renewed.as_slice())?;
            } else if expired {
                table.remove(key.as_str())?;
            }
            Ok((matches, matches || expired))
        })
        .await
    }

    /// A write transaction so that expired keys found on the way can be removed.
    pub(crate) async fn scan(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StateError> {
        let prefix = prefix.to_owned();
        self.write("read", move |table, now| {
            let mut found = Vec::new();
            let mut expired = Vec::new();
            for row in table.range(prefix.as_str()..)? {
                let (key, raw) = row?;
                let key = key.value();
                if !key.starts_with(prefix.as_str()) {
                    break;
                }
                match live(raw.value(), now) {
                    Some(value) => found.push((key.to_owned(), value.to_vec())),
                    None => expired.push(key.to_owned()),
                }
            }
            for key in &expired {
                table.remove(key.as_str())?;
            }
            Ok((found, !expired.is_empty()))
        })
        .await
    }

    /// Runs `op` on the table in one write transaction, committed only if `op` says it
    /// changed something (a commit is a disk sync).
    async fn write<T: Send + 'static>(
        &self,
        action: &'static str,
        op: impl FnOnce(&mut StateTable<'_>, u64) -> Result<(T, bool), FileError> + Send + 'static,
    ) -> Result<T, StateError> {
        let sweep_due = self.writes.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY_WRITES
            == SWEEP_EVERY_WRITES - 1;
        self.run(action, move |db, now| {
            let mut txn = db.begin_write()?;
            txn.set_quick_repair(true);
            let (result, mut changed) = {
                let mut table = txn.open_table(TABLE)?;
                let (result, changed) = op(&mut table, now)?;
                if sweep_due {
                    sweep(&mut table, now)?;
                }
                (result, changed)
            };
            changed |= sweep_due;
            if changed {
                txn.commit()?;
            } else {
                txn.abort()?;
            }
            Ok(result)
        })
        .await
    }

    /// Opens the file on a blocking thread, runs `op` and closes the file again.
    ///
    /// Measured on the development VM (`measure_latency`): one `get` (open, read,
    /// close) ~1 ms, one `put` ~10 ms, 8–16 ms for a `get` while the disk was busy.
    /// The read itself is ~40 µs; the rest is the syncs redb makes when a file is
    /// opened and closed. Opens are serialised, so callers should cache reads.
    async fn run<T: Send + 'static>(
        &self,
        action: &'static str,
        op: impl FnOnce(&Database, u64) -> Result<T, FileError> + Send + 'static,
    ) -> Result<T, StateError> {
        let path = self.path.clone();
        let open_lock = Arc::clone(&self.open_lock);
        let task = self.worker.run(move || {
            let _turn = open_lock.lock().unwrap_or_else(PoisonError::into_inner);
            let db = open_retrying(&path)?;
            op(&db, now_ms()).map_err(|e| StateError::File {
                action,
                path: path.clone(),
                message: e.0,
            })
        });
        // redb asserts on some damage (a truncated file) instead of returning
        // an error; the file is what the operator must hear about.
        task.await.ok_or_else(|| StateError::File {
            action,
            path: self.path.clone(),
            message: "the file is damaged; move it away (accounts and grants in it are lost) or restore a copy".into(),
        })?
    }
}

/// What went wrong inside a transaction, already as text: redb's error types are
/// large, and only their message leaves this module.
struct FileError(String);

impl<E: Into<redb::Error>> From<E> for FileError {
    fn from(e: E) -> FileError {
        FileError(e.into().to_string())
    }
}

/// Opens (creating if absent) the file, waiting while another process has it open.
fn open_retrying(path: &Path) -> Result<Database, StateError> {
    let started = Instant::now();
    loop {
        match Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create_with_file_format_v3(true)
            .create(path)
        {
            Ok(db) => return Ok(db),
            Err(DatabaseError::DatabaseAlreadyOpen) if started.elapsed() < BUSY_TIMEOUT => {
                // Jittered so that two waiting processes do not retry in lockstep.
                let pause = rand::thread_rng().gen_range(5..=20);
                std::thread::sleep(Duration::from_millis(pause));
            }
            Err(DatabaseError::DatabaseAlreadyOpen) => {
                return Err(StateError::FileBusy {
                    path: path.to_path_buf(),
                    waited: started.elapsed(),
                });
            }
            Err(e) => {
                return Err(StateError::File {
                    action: "open",
                    path: path.to_path_buf(),
                    message: e.to_string(),
                });
            }
        }
    }
}

/// Whether the key holds `value` (and is live), and whether it is there but expired.
fn compare(
    table: &StateTable<'_>,
    key: &str,
    value: &[u8],
    now: u64,
) -> Result<(bool, bool), FileError> {
    let Some(raw) = table.get(key)? else {
        return Ok((false, false));
    };
    Ok(match live(raw.value(), now) {
        Some(stored) => (stored == value, false),
        None => (false, true),
    })
}

fn sweep(table: &mut StateTable<'_>, now: u64) -> Result<(), FileError> {
    table.retain(|_, raw| live(raw, now).is_some())?;
    Ok(())
}

/// The value of a stored entry, or `None` if it has expired. An entry too short to
/// hold an expiry cannot have been written here and is treated as expired.
fn live(raw: &[u8], now: u64) -> Option<&[u8]> {
    let (expiry, value) = raw.split_first_chunk::<8>()?;
    let expiry = u64::from_be_bytes(*expiry);
    (expiry == 0 || expiry > now).then_some(value)
}

fn encode(value: &[u8], expiry: u64) -> Vec<u8> {
    let mut raw = Vec::with_capacity(8 + value.len());
    raw.extend_from_slice(&expiry.to_be_bytes());
    raw.extend_from_slice(value);
    raw
}

/// Unix ms at which a key written now with `ttl` expires; 0 for never. A zero `ttl`
/// still lasts a millisecond, as on Redis, where `PX 0` is refused.
fn expiry(now: u64, ttl: Option<Duration>) -> u64 {
    ttl.map_or(0, |ttl| {
        let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        now.saturating_add(ms)
    })
}

fn now_ms() -> u64 {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    u64::try_from(since_epoch.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
#[path = "embedded_tests.rs"]
mod tests;
