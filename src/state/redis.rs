//! The state store shared by replicas: Redis, with keys under `lank8s:`. Every call has
//! a short deadline, a failure keeps Redis out of the path for a while (`breaker`), and
//! counters fall back to this process while it is down.

use std::future::Future;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, RedisError, RedisResult, Script, Value};
use tokio::time::timeout;

use super::breaker::{Breaker, Failure, is_outage};
use super::memory::{Memory, gcra_period_micros};
use super::redis_scripts::{ADD, DELETE_IF, GCRA, RENEW_IF};
use super::{RateDecision, RateLimit, StateError};

const NAMESPACE: &str = "lank8s:";
/// A request waits at most this long for one Redis round trip.
const COMMAND_TIMEOUT: Duration = Duration::from_millis(500);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Keys asked for per SCAN step and per MGET.
const SCAN_BATCH: usize = 500;

pub(crate) struct RedisStore {
    client: Client,
    /// The live connection, dropped after a failure and made again on demand.
    connection: Mutex<Slot>,
    /// Lets one task connect while the others wait for its result.
    connecting: tokio::sync::Mutex<()>,
    breaker: Breaker,
    fallback: Memory,
    delete_if: Script,
    renew_if: Script,
    add: Script,
    gcra: Script,
}

impl RedisStore {
    /// Checks the URL only; nothing is connected until the first operation.
    pub(crate) fn new(url: &str) -> Result<RedisStore, StateError> {
        let client = Client::open(url).map_err(|e| StateError::RedisUrl(e.to_string()))?;
        Ok(RedisStore {
            client,
            connection: Mutex::new(Slot::default()),
            connecting: tokio::sync::Mutex::new(()),
            breaker: Breaker::new(),
            fallback: Memory::new(),
            delete_if: Script::new(DELETE_IF),
            renew_if: Script::new(RENEW_IF),
            add: Script::new(ADD),
            gcra: Script::new(GCRA),
        })
    }

    pub(crate) async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StateError> {
        let key = namespaced(key);
        self.call(|mut conn| async move {
            timed(redis::cmd("GET").arg(&key).query_async(&mut conn)).await
        })
        .await
        .map_err(StateError::from)
    }

    pub(crate) async fn put(
        &self,
        key: &str,
        value: &[u8],
        ttl: Option<Duration>,
    ) -> Result<(), StateError> {
        let mut cmd = redis::cmd("SET");
        cmd.arg(namespaced(key)).arg(value);
        if let Some(ttl) = ttl {
            cmd.arg("PX").arg(millis(ttl));
        }
        self.call(|mut conn| async move { timed(cmd.exec_async(&mut conn)).await })
            .await
            .map_err(StateError::from)
    }

    pub(crate) async fn put_new(
        &self,
        key: &str,
        value: &[u8],
        ttl: Option<Duration>,
    ) -> Result<bool, StateError> {
        let mut cmd = redis::cmd("SET");
        cmd.arg(namespaced(key)).arg(value).arg("NX");
        if let Some(ttl) = ttl {
            cmd.arg("PX").arg(millis(ttl));
        }
        let answer: Value = self
            .call(|mut conn| async move { timed(cmd.query_async(&mut conn)).await })
            .await?;
        Ok(!matches!(answer, Value::Nil))
    }

    pub(crate) async fn delete(&self, key: &str) -> Result<bool, StateError> {
        let key = namespaced(key);
        let removed: u64 = self
            .call(|mut conn| async move {
                timed(redis::cmd("DEL").arg(&key).query_async(&mut conn)).await
            })
            .await?;
        Ok(removed > 0)
    }

    pub(crate) async fn delete_if(&self, key: &str, value: &[u8]) -> Result<bool, StateError> {
        let mut invocation = self.delete_if.prepare_invoke();
        invocation.key(namespaced(key)).arg(value);
        let removed: u64 = self
            .call(|mut conn| async move { timed(invocation.invoke_async(&mut conn)).await })
            .await?;
        Ok(removed > 0)
    }

    pub(crate) async fn renew_if(
        &self,
        key: &str,
        value: &[u8],
        ttl: Duration,
    ) -> Result<bool, StateError> {
        let mut invocation = self.renew_if.prepare_invoke();
        invocation.key(namespaced(key)).arg(value).arg(millis(ttl));
        let renewed: u64 = self
            .call(|mut conn| async move { timed(invocation.invoke_async(&mut conn)).await })
            .await?;
        Ok(renewed > 0)
    }

    /// SCAN for the keys, then MGET their values; keys that vanish in between are left
    /// out. Each round trip has its own deadline.
    pub(crate) async fn scan(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StateError> {
        let pattern = format!("{}*", escape_glob(&namespaced(prefix)));
        self.call(|mut conn| async move {
            let mut keys: Vec<Vec<u8>> = Vec::new();
            let mut cursor: u64 = 0;
            loop {
                let (next, batch): (u64, Vec<Vec<u8>>) = timed(
                    redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(&pattern)
                        .arg("COUNT")
                        .arg(SCAN_BATCH)
                        .query_async(&mut conn),
                )
                .await?;
                keys.extend(batch);
                if next == 0 {
                    break;
                }
                cursor = next;
            }
            // SCAN may return a key more than once.
            keys.sort_unstable();
            keys.dedup();

            let mut found = Vec::with_capacity(keys.len());
            for chunk in keys.chunks(SCAN_BATCH) {
                let values: Vec<Option<Vec<u8>>> =
                    timed(redis::cmd("MGET").arg(chunk).query_async(&mut conn)).await?;
                for (key, value) in chunk.iter().zip(values) {
                    let key = key.strip_prefix(NAMESPACE.as_bytes()).unwrap_or(key);
                    if let (Ok(key), Some(value)) = (std::str::from_utf8(key), value) {
                        found.push((key.to_owned(), value));
                    }
                }
            }
            Ok(found)
        })
        .await
        .map_err(StateError::from)
    }

    pub(crate) async fn add(&self, key: &str, delta: i64, ttl: Duration) -> i64 {
        let mut invocation = self.add.prepare_invoke();
        invocation.key(namespaced(key)).arg(delta).arg(millis(ttl));
        let result = self
            .call(|mut conn| async move { timed(invocation.invoke_async(&mut conn)).await })
            .await;
        match result {
            Ok(value) => value,
            Err(failure) => {
                failure.log_if_refused(&self.breaker);
                self.fallback.add(key, delta, ttl)
            }
        }
    }

    pub(crate) async fn rate(&self, key: &str, limit: RateLimit, cost: u32) -> RateDecision {
        let mut invocation = self.gcra.prepare_invoke();
        invocation
            .key(namespaced(key))
            .arg(gcra_period_micros(limit))
            .arg(limit.count)
            .arg(cost);
        let result: Result<(u8, u64), _> = self
            .call(|mut conn| async move { timed(invocation.invoke_async(&mut conn)).await })
            .await;
        match result {
            Ok((allowed, retry_after)) => RateDecision {
                allowed: allowed == 1,
                retry_after: Duration::from_micros(retry_after),
            },
            Err(failure) => {
                failure.log_if_refused(&self.breaker);
                self.fallback.rate(key, limit, cost)
            }
        }
    }

    /// Runs `op` on a connection unless the breaker says Redis is down, and tells the
    /// breaker how it went. Only failures to reach Redis count against it; an error
    /// Redis answers with means it is up.
    async fn call<T, F, Fut>(&self, op: F) -> Result<T, Failure>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        if !self.breaker.admit() {
            self.breaker.skipped();
            return Err(Failure::Down(StateError::RedisUnavailable));
        }
        let (generation, conn) = match self.connection().await {
            Ok(connection) => connection,
            Err(e) => {
                self.breaker.failed(&e);
                return Err(Failure::Down(e));
            }
        };

        match op(conn).await {
            Ok(value) => {
                self.breaker.succeeded();
                Ok(value)
            }
            Err(e) if is_outage(&e) => {
                self.discard(generation);
                self.breaker.failed(&e);
                Err(Failure::Down(StateError::Redis(e.to_string())))
            }
            Err(e) => {
                self.breaker.succeeded();
                Err(Failure::Refused(StateError::Redis(e.to_string())))
            }
        }
    }

    /// The current connection, or a new one if the last was discarded.
    async fn connection(&self) -> Result<(u64, ConnectionManager), StateError> {
        if let Some(current) = self.current() {
            return Ok(current);
        }
        let asked = Instant::now();
        let _turn = self.connecting.lock().await;
        if let Some(current) = self.current() {
            return Ok(current);
        }
        // An attempt that failed while this task waited answers for it too; otherwise
        // every waiting task would try in turn, each costing a connect timeout.
        if self.slot().connect_failed_at.is_some_and(|at| at >= asked) {
            return Err(StateError::RedisUnavailable);
        }

        // The manager's own retries are off: the breaker decides when to try again.
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(COMMAND_TIMEOUT))
            .set_number_of_retries(0);
        let connect = ConnectionManager::new_with_config(self.client.clone(), config);
        let result = match timeout(CONNECT_TIMEOUT, connect).await {
            Ok(result) => result.map_err(|e| StateError::Redis(e.to_string())),
            Err(_) => Err(StateError::Redis(format!(
                "connecting timed out after {CONNECT_TIMEOUT:?}"
            ))),
        };

        let mut slot = self.slot();
        match result {
            Ok(manager) => {
                slot.generation += 1;
                slot.manager = Some(manager.clone());
                Ok((slot.generation, manager))
            }
            Err(e) => {
                slot.connect_failed_at = Some(Instant::now());
                Err(e)
            }
        }
    }

    fn current(&self) -> Option<(u64, ConnectionManager)> {
        let slot = self.slot();
        let manager = slot.manager.clone()?;
        Some((slot.generation, manager))
    }

    /// Drops the connection a failure happened on, unless it was already replaced.
    fn discard(&self, generation: u64) {
        let mut slot = self.slot();
        if slot.generation == generation {
            slot.manager = None;
        }
    }

    /// Every update of the slot is a plain assignment, so poisoning cannot tear it.
    fn slot(&self) -> std::sync::MutexGuard<'_, Slot> {
        self.connection
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

#[derive(Default)]
struct Slot {
    /// Counts connections made, so that a failure report about an old connection
    /// does not drop a newer one.
    generation: u64,
    manager: Option<ConnectionManager>,
    connect_failed_at: Option<Instant>,
}

/// One round trip with [`COMMAND_TIMEOUT`] as a hard deadline, whatever the
/// connection's own timeouts do.
async fn timed<T>(request: impl Future<Output = RedisResult<T>>) -> RedisResult<T> {
    match timeout(COMMAND_TIMEOUT, request).await {
        Ok(result) => result,
        Err(_) => Err(RedisError::from(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no answer within {COMMAND_TIMEOUT:?}"),
        ))),
    }
}

fn namespaced(key: &str) -> String {
    format!("{NAMESPACE}{key}")
}

/// Milliseconds for PX/PEXPIRE, which refuse 0.
fn millis(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// Escapes what SCAN MATCH would read as a glob, so a prefix matches only itself.
fn escape_glob(prefix: &str) -> String {
    let mut escaped = String::with_capacity(prefix.len());
    for c in prefix.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_characters_in_a_prefix_are_escaped() {
        assert_eq!(
            escape_glob("lank8s:a*b?[c]\\"),
            "lank8s:a\\*b\\?\\[c\\]\\\\"
        );
        assert_eq!(escape_glob("plain/prefix"), "plain/prefix");
    }

    #[test]
    fn a_malformed_url_is_refused_without_its_text() {
        let Err(err) = RedisStore::new("redis://user:s3cret@[::1") else {
            panic!("accepted a malformed URL");
        };
        assert!(!err.to_string().contains("s3cret"), "{err}");
        assert!(RedisStore::new("redis://127.0.0.1:1/").is_ok());
    }
}
