//! Fills across replicas: with a shared state store (Redis) and a shared
//! object store, the replica that takes a blob's lock fetches it from
//! upstream; the others wait for it to appear in the store.

use std::future::Future;
use std::time::{Duration, Instant};

use crate::oci::reference::Digest;
use crate::state::State;

/// A holder that stops renewing (it died) loses the lock after this.
const LOCK_TTL: Duration = Duration::from_secs(15);
const RENEW_EVERY: Duration = Duration::from_secs(5);
/// How often a waiting replica looks for the blob in the store.
const POLL: Duration = Duration::from_millis(200);

pub struct FillLocks {
    state: State,
    /// Longest a replica waits on another's fill before fetching itself.
    max_wait: Duration,
}

/// What waiting for the lock came to.
pub enum Turn<T> {
    /// This replica fills; the lock is released when the guard drops.
    Fill(FillGuard),
    /// The blob turned up meanwhile: stored by another replica's fill, or
    /// being filled by this replica.
    Found(T),
}

impl FillLocks {
    pub fn new(state: State, max_wait: Duration) -> FillLocks {
        FillLocks { state, max_wait }
    }

    /// Takes the lock for `digest`, or waits while another replica holds it
    /// until `found` sees the blob (stored, or a fill this replica started
    /// meanwhile). `found` is asked once more after the lock is won, since the
    /// holder releases it only after the blob is stored. When the state store
    /// fails, or the wait runs out, this replica fills without the lock: a
    /// second fetch costs bandwidth, a refusal would cost the pull.
    pub async fn turn<T, F, Fut>(&self, digest: &Digest, found: F) -> Turn<T>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Option<T>>,
    {
        let key = format!("fill/{digest}");
        let token: [u8; 16] = rand::random();
        let token = hex::encode(token);
        let started = Instant::now();
        loop {
            match self
                .state
                .put_new(&key, token.as_bytes(), Some(LOCK_TTL))
                .await
            {
                Ok(true) => {
                    let guard = FillGuard::hold(self.state.clone(), key, token);
                    return match found().await {
                        // Dropping the guard lets the lock go at once.
                        Some(found) => Turn::Found(found),
                        None => Turn::Fill(guard),
                    };
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(%digest, error = %e, "cannot coordinate the fill with other replicas; filling here");
                    return Turn::Fill(FillGuard::none());
                }
            }
            if let Some(found) = found().await {
                return Turn::Found(found);
            }
            if started.elapsed() >= self.max_wait {
                tracing::warn!(%digest, waited = ?started.elapsed(), "another replica's fill is taking too long; filling here too");
                return Turn::Fill(FillGuard::none());
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

/// The held lock: renewed while the fill runs, released when dropped.
pub struct FillGuard {
    renewal: Option<tokio::task::JoinHandle<()>>,
    release: Option<(State, String, String)>,
}

impl FillGuard {
    fn none() -> FillGuard {
        FillGuard {
            renewal: None,
            release: None,
        }
    }

    fn hold(state: State, key: String, token: String) -> FillGuard {
        let renewal = {
            let (state, key, token) = (state.clone(), key.clone(), token.clone());
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(RENEW_EVERY).await;
                    if !matches!(
                        state.renew_if(&key, token.as_bytes(), LOCK_TTL).await,
                        Ok(true)
                    ) {
                        break;
                    }
                }
            })
        };
        FillGuard {
            renewal: Some(renewal),
            release: Some((state, key, token)),
        }
    }
}

impl Drop for FillGuard {
    fn drop(&mut self) {
        if let Some(renewal) = self.renewal.take() {
            renewal.abort();
        }
        let Some((state, key, token)) = self.release.take() else {
            return;
        };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = state.delete_if(&key, token.as_bytes()).await;
            });
        }
    }
}
