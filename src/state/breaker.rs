//! Whether Redis is worth asking: after a failure it is skipped for a while, so that a
//! dead Redis costs a request nothing, and its outages are logged once, not per request.
//! Also which Redis errors count as an outage.

use std::fmt::Display;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use redis::{ErrorKind, RedisError, ServerErrorKind};

use super::StateError;

/// How long Redis is left alone after a failure before one request tries it again.
const RETRY_AFTER: Duration = Duration::from_secs(2);
/// A trial request that has not reported back after this long was cancelled by its
/// caller; another may try. Longer than any deadline on a Redis call.
const TRIAL_LIMIT: Duration = Duration::from_secs(3);
/// While Redis stays down, or keeps refusing something, it is logged again at most
/// this often.
const REMIND_EVERY: Duration = Duration::from_secs(60);

pub(crate) struct Breaker {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Set while Redis is considered down.
    down_since: Option<Instant>,
    /// When the next trial may start, while down.
    retry_at: Option<Instant>,
    trial_started: Option<Instant>,
    last_warned: Option<Instant>,
    /// Operations answered without Redis since it went down.
    skipped: u64,
    /// When an error answer from a working Redis was last logged.
    last_refusal_warned: Option<Instant>,
}

impl Breaker {
    pub(crate) fn new() -> Breaker {
        Breaker {
            inner: Mutex::new(Inner::default()),
        }
    }

    /// Whether this operation should go to Redis. While Redis is down only one
    /// operation at a time (a trial) is let through, once per [`RETRY_AFTER`].
    pub(crate) fn admit(&self) -> bool {
        let now = Instant::now();
        let mut inner = self.lock();
        if inner.down_since.is_none() {
            return true;
        }
        if inner.retry_at.is_some_and(|at| now < at) {
            return false;
        }
        if inner
            .trial_started
            .is_some_and(|started| now.duration_since(started) < TRIAL_LIMIT)
        {
            return false;
        }
        inner.trial_started = Some(now);
        true
    }

    /// Redis answered (even with an error of its own).
    pub(crate) fn succeeded(&self) {
        let mut inner = self.lock();
        if let Some(since) = inner.down_since {
            tracing::info!(
                down_for = ?since.elapsed(),
                operations = inner.skipped,
                "redis answers again; shared state and counters are back on redis"
            );
            *inner = Inner {
                last_refusal_warned: inner.last_refusal_warned,
                ..Inner::default()
            };
        }
    }

    /// Redis could not be reached or did not answer in time.
    pub(crate) fn failed(&self, error: &dyn Display) {
        let now = Instant::now();
        let mut inner = self.lock();
        inner.retry_at = Some(now + RETRY_AFTER);
        inner.trial_started = None;
        inner.skipped += 1;
        if inner.down_since.is_none() {
            inner.down_since = Some(now);
            inner.last_warned = Some(now);
            tracing::warn!(
                error = %error,
                "redis unavailable; counters are kept in this process and durable state \
                 is refused until it answers"
            );
        } else {
            inner.remind(now);
        }
    }

    /// An operation was answered without asking Redis, because it is down.
    pub(crate) fn skipped(&self) {
        let mut inner = self.lock();
        inner.skipped += 1;
        inner.remind(Instant::now());
    }

    /// Redis answered a counter operation with an error: it is up, but that counter
    /// is kept in this process, which an operator should hear about (rarely).
    pub(crate) fn refused(&self, error: &dyn Display) {
        let now = Instant::now();
        let mut inner = self.lock();
        if inner
            .last_refusal_warned
            .is_none_or(|at| now.duration_since(at) >= REMIND_EVERY)
        {
            inner.last_refusal_warned = Some(now);
            tracing::warn!(error = %error, "redis refused a counter operation; counting in this process");
        }
    }

    /// Every update is a plain assignment, so a poisoned lock holds nothing torn.
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Inner {
    fn remind(&mut self, now: Instant) {
        let (Some(since), Some(warned)) = (self.down_since, self.last_warned) else {
            return;
        };
        if now.duration_since(warned) >= REMIND_EVERY {
            self.last_warned = Some(now);
            tracing::warn!(
                down_for = ?now.duration_since(since),
                operations = self.skipped,
                "redis still unavailable"
            );
        }
    }
}

/// Why a call did not return a value from Redis.
pub(crate) enum Failure {
    /// Redis could not be reached, or was skipped because it recently could not.
    Down(StateError),
    /// Redis answered with an error.
    Refused(StateError),
}

impl Failure {
    /// A counter that falls back because Redis is down is covered by the outage
    /// warning; one Redis refused is not, and its error is otherwise swallowed.
    pub(crate) fn log_if_refused(&self, breaker: &Breaker) {
        if let Failure::Refused(e) = self {
            breaker.refused(e);
        }
    }
}

impl From<Failure> for StateError {
    fn from(failure: Failure) -> StateError {
        match failure {
            Failure::Down(e) | Failure::Refused(e) => e,
        }
    }
}

/// Whether an error means Redis could not be reached (or is not serving), as opposed
/// to an answer it gave.
pub(crate) fn is_outage(e: &RedisError) -> bool {
    match e.kind() {
        ErrorKind::Server(
            ServerErrorKind::BusyLoading
            | ServerErrorKind::MasterDown
            | ServerErrorKind::TryAgain
            | ServerErrorKind::ClusterDown,
        ) => true,
        ErrorKind::Server(_) | ErrorKind::Extension | ErrorKind::UnexpectedReturnType => false,
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closed_until_a_failure_then_one_trial_per_interval() {
        let breaker = Breaker::new();
        assert!(breaker.admit() && breaker.admit());

        breaker.failed(&"connection refused");
        assert!(!breaker.admit());

        // Pretend the interval has passed: exactly one trial goes through.
        breaker.lock().retry_at = Some(Instant::now());
        assert!(breaker.admit());
        assert!(!breaker.admit());

        breaker.succeeded();
        assert!(breaker.admit() && breaker.admit());
        assert_eq!(breaker.lock().skipped, 0);
    }

    #[test]
    fn an_abandoned_trial_does_not_block_forever() {
        let breaker = Breaker::new();
        breaker.failed(&"timed out");
        let long_ago = Instant::now().checked_sub(TRIAL_LIMIT + Duration::from_secs(1));
        {
            let mut inner = breaker.lock();
            inner.retry_at = long_ago;
            inner.trial_started = long_ago;
        }
        assert!(breaker.admit());
    }
}
