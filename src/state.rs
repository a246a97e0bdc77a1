//! Shared state: accounts, grants, signing keys and fill locks as durable keys, and
//! rate and concurrency counters. One replica keeps it in a local file (`embedded`);
//! several share a Redis (`redis`), with counters falling back to this process (`memory`).
//!
//! Counters and durable keys share one key space on Redis, so callers give them
//! distinct prefixes. Keys and values are never logged or put in errors.

mod breaker;
mod embedded;
mod memory;
mod redis;
mod redis_scripts;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use embedded::Embedded;
pub use embedded::embedded_path;
use redis::RedisStore;

/// A handle on the state store; clones share one store.
#[derive(Clone)]
pub struct State {
    backend: Arc<Backend>,
}

#[expect(clippy::large_enum_variant, reason = "one per process, behind an Arc")]
enum Backend {
    Embedded(Embedded),
    Redis(RedisStore),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StateKind {
    Embedded,
    Redis,
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot create state directory {path}: {source}")]
    Directory {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot {action} state file {path}: {message}")]
    File {
        action: &'static str,
        path: PathBuf,
        message: String,
    },
    #[error("state file {path} stayed locked by another process for {waited:?}")]
    FileBusy { path: PathBuf, waited: Duration },
    #[error("invalid redis URL: {0}")]
    RedisUrl(String),
    #[error("redis: {0}")]
    Redis(String),
    /// Redis failed recently; it is not asked again until the retry interval passes.
    #[error("redis: unavailable (failed recently, not retried yet)")]
    RedisUnavailable,
    #[error("state operation did not finish: {0}")]
    Internal(String),
}

/// `count` requests per `period`, with bursts of up to `count`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimit {
    pub count: u32,
    pub period: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateDecision {
    pub allowed: bool,
    /// Zero when allowed; otherwise how long until the same request would be allowed.
    pub retry_after: Duration,
}

impl State {
    /// `redis`: `None` keeps state in `<data_dir>/state.redb` (creating the directory);
    /// `Some(url)` uses the Redis at that `redis://` URL. Redis is connected lazily, so
    /// an unreachable Redis is not an error here; a malformed URL or an unusable state
    /// file is.
    pub async fn open(redis: Option<&str>, data_dir: &Path) -> Result<State, StateError> {
        let backend = match redis {
            Some(url) => Backend::Redis(RedisStore::new(url)?),
            None => Backend::Embedded(Embedded::open(data_dir).await?),
        };
        Ok(State {
            backend: Arc::new(backend),
        })
    }

    pub fn kind(&self) -> StateKind {
        match &*self.backend {
            Backend::Embedded(_) => StateKind::Embedded,
            Backend::Redis(_) => StateKind::Redis,
        }
    }

    /// The value of a live key. Expired keys are absent here and in every other call.
    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StateError> {
        match &*self.backend {
            Backend::Embedded(store) => store.get(key).await,
            Backend::Redis(store) => store.get(key).await,
        }
    }

    /// Stores `value`, replacing any earlier one; `ttl` `None` never expires.
    pub async fn put(
        &self,
        key: &str,
        value: &[u8],
        ttl: Option<Duration>,
    ) -> Result<(), StateError> {
        match &*self.backend {
            Backend::Embedded(store) => store.put(key, value, ttl).await,
            Backend::Redis(store) => store.put(key, value, ttl).await,
        }
    }

    /// Stores `value` only if the key is absent; true if it was stored.
    pub async fn put_new(
        &self,
        key: &str,
        value: &[u8],
        ttl: Option<Duration>,
    ) -> Result<bool, StateError> {
        match &*self.backend {
            Backend::Embedded(store) => store.put_new(key, value, ttl).await,
            Backend::Redis(store) => store.put_new(key, value, ttl).await,
        }
    }

    /// Removes the key; true if it existed.
    pub async fn delete(&self, key: &str) -> Result<bool, StateError> {
        match &*self.backend {
            Backend::Embedded(store) => store.delete(key).await,
            Backend::Redis(store) => store.delete(key).await,
        }
    }

    /// Removes the key only if it holds `value`, atomically; true if removed.
    pub async fn delete_if(&self, key: &str, value: &[u8]) -> Result<bool, StateError> {
        match &*self.backend {
            Backend::Embedded(store) => store.delete_if(key, value).await,
            Backend::Redis(store) => store.delete_if(key, value).await,
        }
    }

    /// Resets the key's expiry to `ttl` only if it holds `value`, atomically; true if
    /// renewed.
    pub async fn renew_if(
        &self,
        key: &str,
        value: &[u8],
        ttl: Duration,
    ) -> Result<bool, StateError> {
        match &*self.backend {
            Backend::Embedded(store) => store.renew_if(key, value, ttl).await,
            Backend::Redis(store) => store.renew_if(key, value, ttl).await,
        }
    }

    /// Every live key starting with `prefix`, with its value, sorted by key.
    pub async fn scan(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StateError> {
        match &*self.backend {
            Backend::Embedded(store) => store.scan(prefix).await,
            Backend::Redis(store) => store.scan(prefix).await,
        }
    }

    /// Adds `delta` to a counter (absent counts as 0), sets its expiry to `ttl` and
    /// returns the new value. Never fails: while Redis is unavailable the count is
    /// kept in this process.
    pub async fn add(&self, key: &str, delta: i64, ttl: Duration) -> i64 {
        match &*self.backend {
            Backend::Embedded(store) => store.counters().add(key, delta, ttl),
            Backend::Redis(store) => store.add(key, delta, ttl).await,
        }
    }

    /// One GCRA step against `limit`, consuming `cost` if allowed; `cost` 0 asks
    /// whether one more request would pass without consuming. A `cost` above
    /// `limit.count` (or a `count` of 0) is always refused, with `retry_after` =
    /// `period`. Never fails, like [`State::add`].
    pub async fn rate(&self, key: &str, limit: RateLimit, cost: u32) -> RateDecision {
        match &*self.backend {
            Backend::Embedded(store) => store.counters().rate(key, limit, cost),
            Backend::Redis(store) => store.rate(key, limit, cost).await,
        }
    }
}

impl fmt::Debug for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("State").field("kind", &self.kind()).finish()
    }
}
