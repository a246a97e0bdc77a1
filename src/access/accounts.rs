//! Sponsor accounts: a name, an Argon2 password hash, an expiry and a limit
//! tier, kept in the state store so that every replica and the CLI agree.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use argon2::password_hash::Output;
use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use serde::{Deserialize, Serialize};

use super::now;
use crate::state::{State, StateError};
use crate::workers::Workers;

const KEY_PREFIX: &str = "account/";

/// How long the request path trusts what it read of an account: the CLI's
/// changes (disable, extend) take effect within this.
const CACHE_TTL: Duration = Duration::from_secs(2);

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Account {
    pub name: String,
    /// A PHC string (`$argon2id$...`); never printed.
    password_hash: String,
    /// The limit tier its tokens carry.
    pub tier: String,
    /// Seconds since the epoch after which it no longer logs in.
    pub expires_at: u64,
    pub disabled: bool,
    pub created_at: u64,
}

impl Account {
    /// Whether it may log in and its grants hold.
    pub fn is_active(&self, at: u64) -> bool {
        !self.disabled && at < self.expires_at
    }

    pub fn status(&self, at: u64) -> &'static str {
        match () {
            _ if self.disabled => "disabled",
            _ if at >= self.expires_at => "expired",
            _ => "active",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    #[error("account {0:?} already exists")]
    Exists(String),
    #[error("no account named {0:?}")]
    NotFound(String),
    #[error("{0:?} is not an account name: use 1-64 letters, digits, '.', '_', '-' or '@'")]
    BadName(String),
    #[error("the password must be at least 8 characters")]
    WeakPassword,
    #[error("cannot hash the password: {0}")]
    Hash(String),
    #[error("stored account {0:?} is unreadable: {1}")]
    Corrupt(String, String),
    #[error(transparent)]
    State(#[from] StateError),
}

/// Why a login was refused; the message is what the client is told.
#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    /// Unknown names and wrong passwords read the same, so that names
    /// cannot be probed.
    #[error("wrong user name or password")]
    Wrong,
    #[error("account {0:?} is disabled")]
    Disabled(String),
    #[error("account {0:?} expired on {1}")]
    Expired(String, String),
    #[error("accounts cannot be checked right now; try again shortly")]
    Unavailable,
}

pub struct Accounts {
    state: State,
    cache: Mutex<HashMap<String, (Instant, Option<Account>)>>,
}

impl Accounts {
    pub fn new(state: State) -> Accounts {
        Accounts {
            state,
            cache: Mutex::new(HashMap::new()),
        }
    }

    pub async fn add(
        &self,
        name: &str,
        password: &str,
        tier: &str,
        expires_at: u64,
    ) -> Result<Account, AccountError> {
        validate_name(name)?;
        if password.chars().count() < 8 {
            return Err(AccountError::WeakPassword);
        }
        let password = password.to_owned();
        let password_hash = argon2_turn(move || hash_password(&password))
            .await
            .ok_or_else(|| AccountError::Hash("the hashing task failed".into()))??;
        let account = Account {
            name: name.to_owned(),
            password_hash,
            tier: tier.to_owned(),
            expires_at,
            disabled: false,
            created_at: now(),
        };
        let stored = self
            .state
            .put_new(&key(name), &encode(&account), None)
            .await?;
        if !stored {
            return Err(AccountError::Exists(name.to_owned()));
        }
        Ok(account)
    }

    /// The account as stored now.
    pub async fn get(&self, name: &str) -> Result<Account, AccountError> {
        let bytes = self
            .state
            .get(&key(name))
            .await?
            .ok_or_else(|| AccountError::NotFound(name.to_owned()))?;
        decode(name, &bytes)
    }

    pub async fn save(&self, account: &Account) -> Result<(), AccountError> {
        self.state
            .put(&key(&account.name), &encode(account), None)
            .await?;
        self.forget(&account.name);
        Ok(())
    }

    pub async fn list(&self) -> Result<Vec<Account>, AccountError> {
        let mut accounts = Vec::new();
        for (key, bytes) in self.state.scan(KEY_PREFIX).await? {
            let name = key.strip_prefix(KEY_PREFIX).unwrap_or(&key);
            accounts.push(decode(name, &bytes)?);
        }
        Ok(accounts)
    }

    /// The account as the request path sees it: read at most every
    /// CACHE_TTL; while the state store is unreachable, the last answer.
    pub async fn cached(&self, name: &str) -> Option<Account> {
        let remembered = self.lock().get(name).cloned();
        if let Some((read_at, account)) = &remembered {
            if read_at.elapsed() < CACHE_TTL {
                return account.clone();
            }
        }
        let fresh = match self.get(name).await {
            Ok(account) => Some(account),
            Err(AccountError::NotFound(_)) => None,
            Err(_) => return remembered.and_then(|(_, account)| account),
        };
        self.lock()
            .insert(name.to_owned(), (Instant::now(), fresh.clone()));
        fresh
    }

    /// Checks a login. Argon2 is slow by design, so it runs off the
    /// async threads; an unknown name costs the same as a wrong password.
    pub async fn verify(&self, name: &str, password: &str) -> Result<Account, LoginError> {
        let account = match self.get(name).await {
            Ok(account) => Some(account),
            Err(AccountError::NotFound(_) | AccountError::BadName(_)) => None,
            Err(_) => return Err(LoginError::Unavailable),
        };
        let hash = account
            .as_ref()
            .map(|a| a.password_hash.clone())
            .unwrap_or_else(|| decoy_hash().to_owned());
        let password = password.to_owned();
        let matches = argon2_turn(move || verify_password(&password, &hash))
            .await
            .unwrap_or(false);
        let account = match (account, matches) {
            (Some(account), true) => account,
            _ => return Err(LoginError::Wrong),
        };
        let at = now();
        if account.disabled {
            return Err(LoginError::Disabled(account.name));
        }
        if at >= account.expires_at {
            let date = super::date(account.expires_at);
            return Err(LoginError::Expired(account.name, date));
        }
        Ok(account)
    }

    fn forget(&self, name: &str) {
        self.lock().remove(name);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Instant, Option<Account>)>> {
        // A panic elsewhere while holding the lock leaves a usable map.
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Argon2 runs on this many threads of its own: each verification takes
/// about 19 MiB and a core for tens of milliseconds, and logins need no
/// credentials to start.
const ARGON2_THREADS: usize = 2;

async fn argon2_turn<T: Send + 'static>(job: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    static WORKERS: std::sync::OnceLock<Workers> = std::sync::OnceLock::new();
    WORKERS
        .get_or_init(|| Workers::new("argon2", ARGON2_THREADS))
        .run(job)
        .await
}

fn key(name: &str) -> String {
    format!("{KEY_PREFIX}{name}")
}

fn validate_name(name: &str) -> Result<(), AccountError> {
    let valid = (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-@".contains(&b));
    match valid {
        true => Ok(()),
        false => Err(AccountError::BadName(name.to_owned())),
    }
}

fn encode(account: &Account) -> Vec<u8> {
    serde_json::to_vec(account).unwrap_or_default()
}

fn decode(name: &str, bytes: &[u8]) -> Result<Account, AccountError> {
    serde_json::from_slice(bytes).map_err(|e| AccountError::Corrupt(name.to_owned(), e.to_string()))
}

fn hash_password(password: &str) -> Result<String, AccountError> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|e| AccountError::Hash(e.to_string()))
}

/// Checks `password` against a PHC string. Each Argon2 thread keeps one
/// block buffer and reuses it: a fresh 19 MiB allocation per login leaves
/// the allocator holding several such buffers per thread.
fn verify_password(password: &str, hash: &str) -> bool {
    thread_local! {
        static BLOCKS: std::cell::RefCell<Vec<Block>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    let Ok(parsed) = PasswordHash::new(hash) else {
        return false;
    };
    let (Ok(params), Ok(algorithm)) = (
        Params::try_from(&parsed),
        Algorithm::try_from(parsed.algorithm),
    ) else {
        return false;
    };
    // Hashes are written by `add` with the defaults; a stored one asking
    // for far more memory is refused rather than honoured.
    if params.m_cost() > MAX_MEMORY_KIB {
        return false;
    }
    let version = parsed
        .version
        .and_then(|v| Version::try_from(v).ok())
        .unwrap_or_default();
    let (Some(salt), Some(expected)) = (parsed.salt, parsed.hash) else {
        return false;
    };
    let mut salt_bytes = [0u8; 64];
    let Ok(salt) = salt.decode_b64(&mut salt_bytes) else {
        return false;
    };
    let mut out = vec![0u8; expected.len()];
    let blocks_needed = params.block_count();
    let hashed = BLOCKS.with_borrow_mut(|blocks| {
        blocks.resize(blocks_needed, Block::default());
        Argon2::new(algorithm, version, params).hash_password_into_with_memory(
            password.as_bytes(),
            salt,
            &mut out,
            &mut blocks[..],
        )
    });
    // `Output` compares in constant time.
    hashed.is_ok() && Output::new(&out).is_ok_and(|out| out == expected)
}

/// The most memory a stored hash may ask for (KiB); the default is 19 MiB.
const MAX_MEMORY_KIB: u32 = 64 * 1024;

/// A hash no password matches, verified for unknown names.
fn decoy_hash() -> &'static str {
    static DECOY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DECOY.get_or_init(|| {
        let random: [u8; 16] = rand::random();
        hash_password(&hex::encode(random)).unwrap_or_default()
    })
}

/// A random password for an account created without one.
pub fn generate_password() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let mut rng = rand::thread_rng();
    (0..20)
        .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
        .collect()
}
