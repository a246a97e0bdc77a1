//! Process-local counters and rate buckets, and the one GCRA step both stores share.
//! The embedded store counts here; the Redis store falls back here while Redis is down.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::{RateDecision, RateLimit};

/// Above this many entries (after dropping expired ones) the soonest-expiring half is
/// dropped. Clearing everything would let anyone who can mint keys (one per client
/// address, say) reset every limit at once; dropping the entries nearest to expiry
/// forgets the least.
const MAX_ENTRIES: usize = 1_000_000;
/// Sweeping is O(entries), so it runs at most once per this many operations (or per
/// a quarter of the map, whichever is more) to keep its cost per operation constant.
const SWEEP_EVERY: usize = 4096;
/// Periods beyond ~35 years are clamped so that timestamps stay exact in a Lua
/// number (a double) when Redis runs the same arithmetic.
const MAX_PERIOD_US: u64 = 1 << 50;

/// The outcome of one GCRA step: the answer, and what to store if anything.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct GcraStep {
    pub decision: RateDecision,
    /// The new theoretical arrival time (µs) and how long it stays meaningful.
    pub store: Option<(u64, Duration)>,
}

/// One step of the generic cell rate algorithm, on microsecond timestamps.
///
/// The emission interval is `period / count` rounded down to a whole microsecond, and
/// the tolerance is `count` intervals rather than `period`: that keeps the burst from
/// idle at exactly `count` whatever the rounding, at the price of a steady rate at most
/// 1 µs per request faster than asked. `cost` 0 asks whether a cost-1 request would
/// pass without consuming anything. A `cost` above `count` can never pass; it is
/// refused with `retry_after = period`, like `count` 0.
pub(crate) fn gcra(tat_us: Option<u64>, now_us: u64, limit: RateLimit, cost: u32) -> GcraStep {
    let period_us = gcra_period_micros(limit);
    if limit.count == 0 || cost > limit.count {
        return GcraStep {
            decision: refused(Duration::from_micros(period_us)),
            store: None,
        };
    }

    let count = u64::from(limit.count);
    let interval = (period_us / count).max(1);
    let tolerance = count * interval;
    let base = tat_us.unwrap_or(now_us).max(now_us);
    let new_tat = base + u64::from(cost.max(1)) * interval;
    let ahead = new_tat - now_us;

    if ahead > tolerance {
        return GcraStep {
            decision: refused(Duration::from_micros(ahead - tolerance)),
            store: None,
        };
    }
    let decision = RateDecision {
        allowed: true,
        retry_after: Duration::ZERO,
    };
    let store = (cost > 0).then_some((new_tat, Duration::from_micros(ahead)));
    GcraStep { decision, store }
}

/// The period as [`gcra`] (and the Redis script, which is given this) counts it.
pub(crate) fn gcra_period_micros(limit: RateLimit) -> u64 {
    u64::try_from(limit.period.as_micros())
        .unwrap_or(u64::MAX)
        .min(MAX_PERIOD_US)
}

fn refused(retry_after: Duration) -> RateDecision {
    RateDecision {
        allowed: false,
        retry_after,
    }
}

/// Counters and GCRA buckets with expiry, behind one lock; every operation is a few
/// hash-map steps, so contention is not worth sharding for.
pub(crate) struct Memory {
    epoch: Instant,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<String, Entry>,
    ops_since_sweep: usize,
}

/// A counter value or a theoretical arrival time (µs since `epoch`), with its expiry.
struct Entry {
    value: i64,
    expires: Instant,
}

impl Memory {
    pub(crate) fn new() -> Memory {
        Memory {
            epoch: Instant::now(),
            inner: Mutex::new(Inner::default()),
        }
    }

    /// Adds `delta` to the counter (absent or expired counts as 0), sets its expiry to
    /// `ttl` from now and returns the new value.
    pub(crate) fn add(&self, key: &str, delta: i64, ttl: Duration) -> i64 {
        let now = Instant::now();
        let mut inner = self.lock();
        inner.maintain(now);
        let entry = inner.entries.entry(key.to_owned()).or_insert(Entry {
            value: 0,
            expires: now,
        });
        if entry.expires <= now {
            entry.value = 0;
        }
        entry.value = entry.value.saturating_add(delta);
        entry.expires = now + ttl;
        entry.value
    }

    pub(crate) fn rate(&self, key: &str, limit: RateLimit, cost: u32) -> RateDecision {
        let now = Instant::now();
        let now_us = self.micros(now);
        let mut inner = self.lock();
        inner.maintain(now);
        let tat = inner
            .entries
            .get(key)
            .filter(|entry| entry.expires > now)
            .map(|entry| u64::try_from(entry.value).unwrap_or(0));

        let step = gcra(tat, now_us, limit, cost);
        if let Some((new_tat, ttl)) = step.store {
            let value = i64::try_from(new_tat).unwrap_or(i64::MAX);
            let expires = now + ttl;
            inner
                .entries
                .insert(key.to_owned(), Entry { value, expires });
        }
        step.decision
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().entries.len()
    }

    fn micros(&self, now: Instant) -> u64 {
        u64::try_from(now.duration_since(self.epoch).as_micros()).unwrap_or(u64::MAX)
    }

    /// A panic while holding the lock cannot leave an entry half-written (every update
    /// is a single assignment), so a poisoned map is still good to use.
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Inner {
    /// Drops expired entries now and then, and enforces [`MAX_ENTRIES`].
    fn maintain(&mut self, now: Instant) {
        self.ops_since_sweep += 1;
        let full = self.entries.len() >= MAX_ENTRIES;
        if !full && self.ops_since_sweep < SWEEP_EVERY.max(self.entries.len() / 4) {
            return;
        }
        self.ops_since_sweep = 0;
        self.entries.retain(|_, entry| entry.expires > now);
        if self.entries.len() >= MAX_ENTRIES {
            self.evict_soonest_expiring(MAX_ENTRIES / 2);
        }
    }

    fn evict_soonest_expiring(&mut self, keep: usize) {
        let mut expiries: Vec<Instant> = self.entries.values().map(|e| e.expires).collect();
        let drop = expiries.len().saturating_sub(keep);
        if drop == 0 {
            return;
        }
        let (_, cutoff, _) = expiries.select_nth_unstable(drop - 1);
        let cutoff = *cutoff;
        self.entries.retain(|_, entry| entry.expires > cutoff);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: u64 = 1_000_000;

    fn limit(count: u32, period_ms: u64) -> RateLimit {
        RateLimit {
            count,
            period: Duration::from_millis(period_ms),
        }
    }

    /// Runs `cost`-sized requests at `now` until one is refused; returns how many
    /// passed, the stored arrival time and the refusal.
    fn burst(tat: Option<u64>, now: u64, limit: RateLimit, cost: u32) -> (u32, u64, RateDecision) {
        let mut tat = tat;
        let mut passed = 0;
        loop {
            let step = gcra(tat, now, limit, cost);
            if !step.decision.allowed {
                return (passed, tat.unwrap_or(now), step.decision);
            }
            passed += 1;
            tat = step.store.map(|(t, _)| t);
        }
    }

    #[test]
    fn gcra_admits_exactly_count_from_idle() {
        let now = 1_750_000_000 * SECOND;
        for (count, period_ms) in [(1, 1000), (3, 1000), (50, 1000), (700, 60_000), (7, 1)] {
            let (passed, _, refusal) = burst(None, now, limit(count, period_ms), 1);
            assert_eq!(passed, count, "{count} per {period_ms} ms");
            assert!(refusal.retry_after > Duration::ZERO);
        }
    }

    #[test]
    fn gcra_steady_rate_after_the_burst() {
        let limit = limit(10, 1000);
        let now = 5 * SECOND;
        let (_, tat, refusal) = burst(None, now, limit, 1);
        assert_eq!(refusal.retry_after, Duration::from_millis(100));

        // One interval later exactly one more passes, and the next waits a full interval.
        let later = now + 100_000;
        let step = gcra(Some(tat), later, limit, 1);
        assert!(step.decision.allowed);
        let after = gcra(step.store.map(|(t, _)| t), later, limit, 1);
        assert!(!after.decision.allowed);
        assert_eq!(after.decision.retry_after, Duration::from_millis(100));

        // A full period of idleness restores the whole burst.
        let (passed, _, _) = burst(Some(tat), now + SECOND, limit, 1);
        assert_eq!(passed, 10);
    }

    #[test]
    fn gcra_peek_does_not_consume() {
        let limit = limit(2, 1000);
        let now = SECOND;
        let peek = gcra(None, now, limit, 0);
        assert!(peek.decision.allowed);
        assert_eq!(peek.store, None);

        let first = gcra(None, now, limit, 1).store.map(|(t, _)| t);
        let second = gcra(first, now, limit, 1).store.map(|(t, _)| t);
        let peek = gcra(second, now, limit, 0);
        assert!(!peek.decision.allowed);
        assert_eq!(peek.store, None);
        assert_eq!(peek.decision.retry_after, Duration::from_millis(500));
    }

    #[test]
    fn gcra_retry_after_is_the_wait_for_cost() {
        let limit = limit(4, 1000);
        let now = SECOND;
        let step = gcra(None, now, limit, 3);
        assert!(step.decision.allowed);
        let (tat, ttl) = step.store.unwrap_or_default();
        assert_eq!(ttl, Duration::from_millis(750));

        // One of four left: three more need two more intervals.
        let refused = gcra(Some(tat), now, limit, 3);
        assert!(!refused.decision.allowed);
        assert_eq!(refused.decision.retry_after, Duration::from_millis(500));
        let waited = now + 500_000;
        assert!(gcra(Some(tat), waited, limit, 3).decision.allowed);
        assert!(!gcra(Some(tat), waited - 1, limit, 3).decision.allowed);
    }

    #[test]
    fn gcra_refuses_cost_above_count_and_zero_count() {
        let step = gcra(None, SECOND, limit(3, 1000), 4);
        assert!(!step.decision.allowed);
        assert_eq!(step.decision.retry_after, Duration::from_secs(1));
        assert_eq!(step.store, None);

        let step = gcra(None, SECOND, limit(0, 2000), 1);
        assert!(!step.decision.allowed);
        assert_eq!(step.decision.retry_after, Duration::from_secs(2));
    }

    #[test]
    fn memory_counters_add_and_expire() {
        let memory = Memory::new();
        assert_eq!(memory.add("c", 2, Duration::from_secs(10)), 2);
        assert_eq!(memory.add("c", -5, Duration::from_secs(10)), -3);
        assert_eq!(memory.add("short", 1, Duration::from_millis(30)), 1);
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(memory.add("short", 1, Duration::from_millis(30)), 1);
        assert_eq!(memory.add("c", 3, Duration::from_secs(10)), 0);
    }

    #[test]
    fn memory_rate_limits_per_key() {
        let memory = Memory::new();
        let limit = limit(3, 60_000);
        let allowed = (0..5)
            .filter(|_| memory.rate("a", limit, 1).allowed)
            .count();
        assert_eq!(allowed, 3);
        assert!(memory.rate("b", limit, 1).allowed);
        assert!(!memory.rate("a", limit, 0).allowed);
    }

    #[test]
    fn memory_sweeps_expired_and_stays_bounded() {
        let memory = Memory::new();
        // The last of SWEEP_EVERY operations sweeps.
        for i in 1..SWEEP_EVERY {
            memory.add(&format!("k{i}"), 1, Duration::from_millis(1));
        }
        std::thread::sleep(Duration::from_millis(5));
        memory.add("live", 1, Duration::from_secs(60));
        assert_eq!(memory.len(), 1);

        let mut inner = Inner::default();
        let now = Instant::now();
        for i in 0..100u64 {
            let expires = now + Duration::from_secs(i + 1);
            inner
                .entries
                .insert(format!("k{i}"), Entry { value: 0, expires });
        }
        inner.evict_soonest_expiring(40);
        assert_eq!(inner.entries.len(), 40);
        assert!(inner.entries.contains_key("k99") && !inner.entries.contains_key("k59"));
    }
}
