//! The cache in front of the upstreams: manifests by tag and digest, blobs
//! by digest, and the single-flight fill that brings a missing blob in.

pub mod blobs;
pub mod fill;
pub mod fill_lock;
pub mod manifests;
pub mod store;

/// How a request was served, as the access log reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheResult {
    /// Served from the cache without asking upstream.
    Hit,
    /// Fetched from upstream (and cached when it was cacheable).
    Miss,
    /// A cached tag that upstream confirmed unchanged.
    Revalidated,
    /// A cached tag served because upstream failed.
    Stale,
    /// Joined a fill another request had started.
    Joined,
    /// Passed through to upstream without caching.
    Pass,
}

impl CacheResult {
    pub fn as_str(self) -> &'static str {
        match self {
            CacheResult::Hit => "hit",
            CacheResult::Miss => "miss",
            CacheResult::Revalidated => "revalidated",
            CacheResult::Stale => "stale",
            CacheResult::Joined => "joined",
            CacheResult::Pass => "pass",
        }
    }
}

/// Seconds since the Unix epoch: what records that outlive the process
/// (tag checks) and signed URLs are stamped with.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}
