//! Fair-use limits per client network and tier: requests per minute,
//! concurrent blob downloads, bytes per second (by pacing the stream after
//! the headers are sent) and bytes per day. Counters live in the state
//! store, so with Redis they hold across replicas; the pace is per replica.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use ipnet::IpNet;

use super::now;
use crate::config::Limits;
use crate::oci::error::{RegistryError, retry_seconds};
use crate::state::{RateLimit, State};

const MINUTE: Duration = Duration::from_secs(60);
const DAY_SECS: u64 = 86_400;
/// A download counter outlives a replica that died mid-stream by at most this.
const DOWNLOAD_TTL: Duration = Duration::from_secs(3600);
/// Bytes sent are added to the daily counter in steps of this size.
const FLUSH_BYTES: u64 = 4 << 20;
/// Paced streams are cut into pieces of at most this, and of at most a
/// tenth of a second's worth, so that progress stays steady.
const PACE_PIECE: usize = 64 << 10;
/// Networks whose pace is remembered at most; beyond, pacing starts over.
const PACE_ENTRIES: usize = 100_000;

pub struct Limiter {
    state: State,
    limits: BTreeMap<String, Limits>,
    pace: Arc<Mutex<HashMap<IpNet, Bucket>>>,
}

impl Limiter {
    pub fn new(state: State, limits: BTreeMap<String, Limits>) -> Limiter {
        Limiter {
            state,
            limits,
            pace: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Whether any tier has any limit; with none, requests skip the limiter.
    pub fn any(&self) -> bool {
        self.limits.values().any(|l| *l != Limits::default())
    }

    fn of(&self, tier: &str) -> Limits {
        self.limits.get(tier).copied().unwrap_or_default()
    }

    /// Counts one request against `requests_per_minute`.
    pub async fn request(&self, network: IpNet, tier: &str) -> Result<(), RegistryError> {
        let Some(count) = self.of(tier).requests_per_minute else {
            return Ok(());
        };
        let limit = RateLimit {
            count,
            period: MINUTE,
        };
        let decision = self
            .state
            .rate(&format!("rate/{tier}/{network}"), limit, 1)
            .await;
        if decision.allowed {
            return Ok(());
        }
        Err(RegistryError::too_many_requests(
            format!(
                "requests_per_minute limit of {count} for {tier} clients reached by {network}; retry in {} s",
                retry_seconds(decision.retry_after)
            ),
            decision.retry_after,
        ))
    }

    /// Starts a blob download: checks `bytes_per_day` and takes a
    /// `concurrent_downloads` slot, released when the download ends.
    pub async fn download(
        self: &Arc<Self>,
        network: IpNet,
        tier: &str,
    ) -> Result<Option<Download>, RegistryError> {
        let limits = self.of(tier);
        if limits.concurrent_downloads.is_none()
            && limits.bytes_per_second.is_none()
            && limits.bytes_per_day.is_none()
        {
            return Ok(None);
        }

        let day_key = day_key(tier, network);
        if let Some(per_day) = limits.bytes_per_day {
            let sent = self.state.add(&day_key, 0, day_ttl()).await;
            if sent >= 0 && sent as u64 >= per_day {
                let wait = Duration::from_secs(DAY_SECS - now() % DAY_SECS);
                return Err(RegistryError::too_many_requests(
                    format!(
                        "bytes_per_day limit of {} for {tier} clients reached by {network}; it resets at 00:00 UTC, in {} s",
                        bytesize::ByteSize::b(per_day),
                        retry_seconds(wait)
                    ),
                    wait,
                ));
            }
        }

        let slot_key = format!("downloads/{tier}/{network}");
        if let Some(concurrent) = limits.concurrent_downloads {
            let running = self.state.add(&slot_key, 1, DOWNLOAD_TTL).await;
            if running > i64::from(concurrent) {
                release_slot(&self.state, &slot_key).await;
                return Err(RegistryError::too_many_requests(
                    format!(
                        "concurrent_downloads limit of {concurrent} for {tier} clients reached by {network}; retry when a download ends"
                    ),
                    Duration::from_secs(1),
                ));
            }
        }

        Ok(Some(Download {
            limiter: self.clone(),
            network,
            slot_key: limits.concurrent_downloads.map(|_| slot_key),
            day_key: limits.bytes_per_day.map(|_| day_key),
            unflushed: 0,
            bytes_per_second: limits.bytes_per_second,
            remaining: None,
        }))
    }

    /// How long to wait before sending `bytes` more to `network`. Every
    /// download of the network draws on one bucket, which may go into debt.
    fn pace(&self, network: IpNet, rate: u64, bytes: usize) -> Duration {
        let mut buckets = self.pace.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() >= PACE_ENTRIES && !buckets.contains_key(&network) {
            buckets.retain(|_, b| b.updated.elapsed() < Duration::from_secs(1));
        }
        let bucket = buckets.entry(network).or_insert_with(|| Bucket {
            // A new download may start with a tenth of a second's worth.
            available: rate as f64 / 10.0,
            updated: Instant::now(),
        });
        bucket.take(rate as f64, bytes as f64)
    }
}

struct Bucket {
    available: f64,
    updated: Instant,
}

impl Bucket {
    fn take(&mut self, rate: f64, bytes: f64) -> Duration {
        let capacity = rate / 10.0;
        let elapsed = self.updated.elapsed().as_secs_f64();
        self.updated = Instant::now();
        self.available = (self.available + elapsed * rate).min(capacity) - bytes;
        if self.available >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.available / rate)
        }
    }
}

/// A running download's share of the limits.
pub struct Download {
    limiter: Arc<Limiter>,
    network: IpNet,
    slot_key: Option<String>,
    day_key: Option<String>,
    unflushed: u64,
    bytes_per_second: Option<u64>,
    /// Bytes still to send, when the length is known.
    remaining: Option<u64>,
}

impl Download {
    /// Wraps a blob body of `length` bytes (if known): paces it, counts it,
    /// and frees the slot before the last bytes go out, so a client that
    /// asks for its next blob as soon as this one is complete finds the slot
    /// free; a body dropped early frees it on drop.
    pub fn meter<S, E>(
        mut self,
        body: S,
        length: Option<u64>,
    ) -> impl Stream<Item = Result<Bytes, E>> + Send + 'static
    where
        S: Stream<Item = Result<Bytes, E>> + Send + 'static,
        E: Send + 'static,
    {
        self.remaining = length;
        let piece = self
            .bytes_per_second
            .map(|rate| (rate as usize / 10).clamp(1024, PACE_PIECE))
            .unwrap_or(usize::MAX);
        let download = Arc::new(tokio::sync::Mutex::new(self));
        body.flat_map(move |chunk| futures_util::stream::iter(split(chunk, piece)))
            .then(move |chunk| {
                let download = download.clone();
                async move {
                    if let Ok(bytes) = &chunk {
                        download.lock().await.sent(bytes.len()).await;
                    }
                    chunk
                }
            })
    }

    async fn sent(&mut self, bytes: usize) {
        if let Some(rate) = self.bytes_per_second {
            let wait = self.limiter.pace(self.network, rate, bytes);
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
        }
        self.unflushed += bytes as u64;
        if let Some(remaining) = &mut self.remaining {
            *remaining = remaining.saturating_sub(bytes as u64);
            if *remaining == 0 {
                return self.finish().await;
            }
        }
        if self.unflushed >= FLUSH_BYTES {
            self.flush().await;
        }
    }

    /// Frees the slot and counts the rest of the bytes, once.
    async fn finish(&mut self) {
        self.flush().await;
        self.day_key = None;
        if let Some(key) = self.slot_key.take() {
            release_slot(&self.limiter.state, &key).await;
        }
    }

    async fn flush(&mut self) {
        let bytes = std::mem::take(&mut self.unflushed);
        if let (Some(key), true) = (&self.day_key, bytes > 0) {
            self.limiter
                .state
                .add(key, bytes.min(i64::MAX as u64) as i64, day_ttl())
                .await;
        }
    }
}

impl Drop for Download {
    fn drop(&mut self) {
        let state = self.limiter.state.clone();
        let slot_key = self.slot_key.take();
        let day = self.day_key.take().map(|key| (key, self.unflushed));
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        runtime.spawn(async move {
            if let Some(key) = slot_key {
                release_slot(&state, &key).await;
            }
            if let Some((key, bytes)) = day.filter(|(_, bytes)| *bytes > 0) {
                state
                    .add(&key, bytes.min(i64::MAX as u64) as i64, day_ttl())
                    .await;
            }
        });
    }
}

/// Gives a download slot back. A count that went below zero (a slot taken
/// in Redis and given back to the local fallback during an outage, or the
/// reverse) is raised to zero, so it never lends extra slots.
async fn release_slot(state: &State, key: &str) {
    let running = state.add(key, -1, DOWNLOAD_TTL).await;
    if running < 0 {
        state.add(key, -running, DOWNLOAD_TTL).await;
    }
}

fn split<E>(chunk: Result<Bytes, E>, piece: usize) -> Vec<Result<Bytes, E>> {
    match chunk {
        Ok(bytes) if bytes.len() > piece => (0..bytes.len())
            .step_by(piece)
            .map(|start| Ok(bytes.slice(start..(start + piece).min(bytes.len()))))
            .collect(),
        other => vec![other],
    }
}

fn day_key(tier: &str, network: IpNet) -> String {
    format!("bytes/{tier}/{network}/{}", now() / DAY_SECS)
}

fn day_ttl() -> Duration {
    Duration::from_secs(DAY_SECS + 3600)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_paces_to_its_rate() {
        let rate = 1_000_000.0;
        let mut bucket = Bucket {
            available: 0.0,
            updated: Instant::now(),
        };
        // 1 MB at 1 MB/s from an empty bucket: about a second of waiting,
        // owed as debt by whoever draws next.
        let first = bucket.take(rate, 500_000.0);
        let second = bucket.take(rate, 500_000.0);
        assert!((0.45..0.55).contains(&first.as_secs_f64()), "{first:?}");
        assert!((0.95..1.05).contains(&second.as_secs_f64()), "{second:?}");
    }

    #[test]
    fn large_chunks_are_split_for_steady_progress() {
        let pieces = split::<()>(Ok(Bytes::from(vec![7u8; 150_000])), 64 << 10);
        let sizes: Vec<usize> = pieces.iter().map(|p| p.as_ref().unwrap().len()).collect();
        assert_eq!(sizes, vec![65_536, 65_536, 18_928]);
    }
}
