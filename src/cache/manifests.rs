//! Manifests: immutable by digest, and tag → digest records trusted for a
//! TTL, then revalidated with a HEAD, and served stale when upstream fails.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use reqwest::Method;
use reqwest::header::CONTENT_TYPE;
use serde::{Deserialize, Serialize};

use super::store::Store;
use super::{CacheResult, now_secs};
use crate::oci::error::{ErrorCode, RegistryError};
use crate::oci::media::{ALL_MANIFESTS, Accept, looks_like_manifest_type};
use crate::oci::reference::{Algorithm, Digest, Reference};
use crate::upstream::Upstream;
use crate::upstream::client::read_body;

/// The largest manifest accepted from an upstream, as in distribution.
const MAX_MANIFEST_BYTES: usize = 4 << 20;
/// How many tag records are kept in memory.
const TAG_MEMORY_ENTRIES: usize = 100_000;

/// A manifest exactly as upstream sent it.
#[derive(Debug)]
pub struct Manifest {
    pub digest: Digest,
    pub media_type: String,
    pub bytes: Bytes,
}

/// What a tag pointed at when upstream last said so.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct TagRecord {
    digest: String,
    media_type: String,
    /// Seconds since the epoch; survives restarts, unlike an `Instant`.
    checked_at: u64,
}

/// A manifest answer and how it was obtained.
pub struct Resolved {
    pub manifest: Arc<Manifest>,
    pub cache: CacheResult,
    /// Set when a stale copy is served; goes out as a `Warning` header.
    pub warning: Option<String>,
}

#[derive(Clone)]
struct ManifestWeight;

impl quick_cache::Weighter<Digest, Arc<Manifest>> for ManifestWeight {
    fn weight(&self, _key: &Digest, manifest: &Arc<Manifest>) -> u64 {
        manifest.bytes.len() as u64 + 256
    }
}

type TagKey = (String, String, String);

pub struct ManifestCache {
    store: Arc<Store>,
    by_digest: quick_cache::sync::Cache<Digest, Arc<Manifest>, ManifestWeight>,
    tags: quick_cache::sync::Cache<TagKey, Arc<TagRecord>>,
    /// (upstream, repository, tag, Accept) → the digest upstream chose and
    /// when, for clients whose Accept excludes what the tag holds.
    negotiated: quick_cache::sync::Cache<(String, String, String, String), (Digest, u64)>,
}

impl ManifestCache {
    pub fn new(store: Arc<Store>, memory_bytes: u64) -> ManifestCache {
        // quick_cache wants an estimate of the item count besides the weight.
        let estimated_items = (memory_bytes / 4096).max(16) as usize;
        ManifestCache {
            store,
            by_digest: quick_cache::sync::Cache::with_weighter(
                estimated_items,
                memory_bytes.max(1),
                ManifestWeight,
            ),
            tags: quick_cache::sync::Cache::new(TAG_MEMORY_ENTRIES),
            negotiated: quick_cache::sync::Cache::new(TAG_MEMORY_ENTRIES),
        }
    }

    /// Answers a manifest request for `reference` in `repository`.
    pub async fn resolve(
        &self,
        upstream: &Upstream,
        repository: &str,
        reference: &Reference,
        accept: &Accept,
    ) -> Result<Resolved, RegistryError> {
        match reference {
            Reference::Digest(digest) => self.resolve_digest(upstream, repository, digest).await,
            Reference::Tag(tag) => self.resolve_tag(upstream, repository, tag, accept).await,
        }
    }

    async fn resolve_digest(
        &self,
        upstream: &Upstream,
        repository: &str,
        digest: &Digest,
    ) -> Result<Resolved, RegistryError> {
        if let Some(manifest) = self.load(digest).await {
            return Ok(resolved(manifest, CacheResult::Hit));
        }
        let manifest = fetch(
            upstream,
            repository,
            &digest.to_string(),
            ALL_MANIFESTS,
            Some(digest),
        )
        .await?;
        let manifest = self.keep(manifest).await;
        Ok(resolved(manifest, CacheResult::Miss))
    }

    async fn resolve_tag(
        &self,
        upstream: &Upstream,
        repository: &str,
        tag: &str,
        accept: &Accept,
    ) -> Result<Resolved, RegistryError> {
        let key = (
            upstream.name().to_owned(),
            repository.to_owned(),
            tag.to_owned(),
        );
        let cached = match self.tag_record(&key).await {
            Some(record) => Digest::parse(&record.digest)
                .ok()
                .map(|digest| (record, digest)),
            None => None,
        };
        let cached = match cached {
            Some((record, digest)) => self.load(&digest).await.map(|m| (record, m)),
            None => None,
        };

        let Some((record, manifest)) = cached else {
            let fetched = self.fetch_tag(upstream, repository, tag, &key).await?;
            return self
                .negotiate(upstream, repository, tag, accept, fetched)
                .await;
        };

        let age = now_secs().saturating_sub(record.checked_at);
        if Duration::from_secs(age) < tag_ttl(upstream, tag) {
            let hit = resolved(manifest, CacheResult::Hit);
            return self.negotiate(upstream, repository, tag, accept, hit).await;
        }

        // Expired: a HEAD costs upstream far less than a GET, and usually
        // says the tag has not moved.
        let head = upstream
            .fetch(
                Method::HEAD,
                repository,
                &format!("manifests/{tag}"),
                Some(ALL_MANIFESTS),
                ErrorCode::ManifestUnknown,
            )
            .await;
        let answer = match head {
            Ok(response) => {
                let same = response
                    .headers()
                    .get("docker-content-digest")
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|d| d == manifest.digest.to_string());
                if same {
                    self.remember_tag(&key, &manifest).await;
                    resolved(manifest, CacheResult::Revalidated)
                } else {
                    self.fetch_tag(upstream, repository, tag, &key).await?
                }
            }
            Err(err) if err.allows_stale() => stale(manifest, upstream, &err),
            Err(err) => {
                // Only upstream's word that the tag is gone removes it; a
                // refusal (NAME_UNKNOWN from a 401) may be about credentials.
                if err.code == ErrorCode::ManifestUnknown {
                    self.forget_tag(&key).await;
                }
                return Err(err);
            }
        };
        self.negotiate(upstream, repository, tag, accept, answer)
            .await
    }

    /// Checks a tag's answer against the client's `Accept`. When the client
    /// will not take what the tag holds, upstream is asked again with the
    /// client's own `Accept`, which may pick another form (one platform
    /// instead of the index); that answer does not replace the tag.
    async fn negotiate(
        &self,
        upstream: &Upstream,
        repository: &str,
        tag: &str,
        accept: &Accept,
        answer: Resolved,
    ) -> Result<Resolved, RegistryError> {
        if accept.allows(&answer.manifest.media_type) {
            return Ok(answer);
        }
        let wanted = accept
            .header_value()
            .unwrap_or_else(|| ALL_MANIFESTS.to_owned());

        // What upstream chose for this Accept is remembered like a tag, so
        // a client that always excludes the tag's type is not a GET each time.
        let key = (
            upstream.name().to_owned(),
            repository.to_owned(),
            tag.to_owned(),
            wanted.clone(),
        );
        if let Some((digest, checked_at)) = self.negotiated.get(&key) {
            let age = now_secs().saturating_sub(checked_at);
            if Duration::from_secs(age) < tag_ttl(upstream, tag) {
                if let Some(manifest) = self.load(&digest).await {
                    return Ok(resolved(manifest, CacheResult::Hit));
                }
            }
        }

        match fetch(upstream, repository, tag, &wanted, None).await {
            Ok(other) => {
                let other = self.keep(other).await;
                self.negotiated
                    .insert(key, (other.digest.clone(), now_secs()));
                Ok(resolved(other, CacheResult::Pass))
            }
            // Never a 404 because of Accept: when upstream has nothing else
            // for this client, or is failing, what the tag holds is the best
            // answer there is.
            Err(err) if err.status == http::StatusCode::NOT_FOUND => Ok(answer),
            Err(err) if err.allows_stale() => Ok(stale(answer.manifest, upstream, &err)),
            Err(err) => Err(err),
        }
    }

    async fn fetch_tag(
        &self,
        upstream: &Upstream,
        repository: &str,
        tag: &str,
        key: &TagKey,
    ) -> Result<Resolved, RegistryError> {
        let manifest = fetch(upstream, repository, tag, ALL_MANIFESTS, None).await?;
        let manifest = self.keep(manifest).await;
        self.remember_tag(key, &manifest).await;
        Ok(resolved(manifest, CacheResult::Miss))
    }

    /// A stored object; a store that fails is logged and treated as a miss,
    /// so lank8s falls back to upstream instead of failing the request.
    async fn read_stored(&self, key: &str) -> Option<Vec<u8>> {
        match self.store.read(key).await {
            Ok(stored) => stored,
            Err(e) => {
                tracing::warn!(key, error = %e, "cannot read from the cache store; asking upstream");
                None
            }
        }
    }

    /// A manifest by digest from memory, else from the store.
    async fn load(&self, digest: &Digest) -> Option<Arc<Manifest>> {
        if let Some(manifest) = self.by_digest.get(digest) {
            return Some(manifest);
        }
        let stored = self.read_stored(&Store::manifest_key(digest)).await?;
        let newline = stored.iter().position(|&b| b == b'\n')?;
        let media_type = std::str::from_utf8(&stored[..newline]).ok()?.to_owned();
        let bytes = Bytes::from(stored).slice(newline + 1..);
        // What is on disk was verified when written, but a disk can rot.
        if Digest::of(digest.algorithm(), &bytes) != *digest {
            tracing::warn!(%digest, "cached manifest does not match its digest; refetching");
            return None;
        }
        let manifest = Arc::new(Manifest {
            digest: digest.clone(),
            media_type,
            bytes,
        });
        self.by_digest.insert(digest.clone(), manifest.clone());
        Some(manifest)
    }

    /// Caches a verified manifest. A failed disk write only costs a refetch
    /// later, so it is logged rather than failing the request.
    async fn keep(&self, manifest: Manifest) -> Arc<Manifest> {
        let mut stored = Vec::with_capacity(manifest.media_type.len() + 1 + manifest.bytes.len());
        stored.extend_from_slice(manifest.media_type.as_bytes());
        stored.push(b'\n');
        stored.extend_from_slice(&manifest.bytes);
        if let Err(e) = self
            .store
            .write(&Store::manifest_key(&manifest.digest), stored)
            .await
        {
            tracing::warn!(digest = %manifest.digest, error = %e, "cannot write manifest to the cache");
        }
        let manifest = Arc::new(manifest);
        self.by_digest
            .insert(manifest.digest.clone(), manifest.clone());
        manifest
    }

    async fn tag_record(&self, key: &TagKey) -> Option<Arc<TagRecord>> {
        if let Some(record) = self.tags.get(key) {
            return Some(record);
        }
        let stored = self
            .read_stored(&Store::tag_key(&key.0, &key.1, &key.2))
            .await?;
        let record: TagRecord = serde_json::from_slice(&stored).ok()?;
        let record = Arc::new(record);
        self.tags.insert(key.clone(), record.clone());
        Some(record)
    }

    async fn remember_tag(&self, key: &TagKey, manifest: &Manifest) {
        let record = TagRecord {
            digest: manifest.digest.to_string(),
            media_type: manifest.media_type.clone(),
            checked_at: now_secs(),
        };
        let json = serde_json::to_vec(&record).unwrap_or_default();
        let stored_key = Store::tag_key(&key.0, &key.1, &key.2);
        if let Err(e) = self.store.write(&stored_key, json).await {
            tracing::warn!(repository = %key.1, tag = %key.2, error = %e, "cannot write tag to the cache");
        }
        self.tags.insert(key.clone(), Arc::new(record));
    }

    async fn forget_tag(&self, key: &TagKey) {
        self.tags.remove(key);
        let stored_key = Store::tag_key(&key.0, &key.1, &key.2);
        if let Err(e) = self.store.delete(&stored_key).await {
            tracing::warn!(key = stored_key, error = %e, "cannot remove a tag from the cache store");
        }
    }
}

fn resolved(manifest: Arc<Manifest>, cache: CacheResult) -> Resolved {
    Resolved {
        manifest,
        cache,
        warning: None,
    }
}

fn stale(manifest: Arc<Manifest>, upstream: &Upstream, err: &RegistryError) -> Resolved {
    tracing::warn!(upstream = upstream.name(), digest = %manifest.digest, error = %err, "serving a cached tag because upstream failed");
    Resolved {
        manifest,
        cache: CacheResult::Stale,
        warning: Some(format!(
            "299 lank8s \"stale: {} failed: {}\"",
            upstream.name(),
            err.message.replace('"', "'")
        )),
    }
}

/// Signature and attestation tags (`sha256-<hex>`, `.sig`, `.att`,
/// `.sbom`) are rewritten whenever an image is signed again, so they are
/// trusted for a shorter time than ordinary tags.
fn tag_ttl(upstream: &Upstream, tag: &str) -> Duration {
    let config = upstream.config();
    if is_signature_tag(tag) {
        config.signature_tag_ttl.min(config.tag_ttl)
    } else {
        config.tag_ttl
    }
}

fn is_signature_tag(tag: &str) -> bool {
    let Some(rest) = tag.strip_prefix("sha256-") else {
        return false;
    };
    let (hex, suffix) = rest.split_at(rest.len().min(64));
    hex.len() == 64
        && hex.bytes().all(|b| b.is_ascii_hexdigit())
        && matches!(suffix, "" | ".sig" | ".att" | ".sbom")
}

/// Fetches a manifest and checks it: a manifest type, within the size
/// limit, and matching both the digest asked for and the one upstream
/// claims. Nothing unchecked reaches the cache or a client.
async fn fetch(
    upstream: &Upstream,
    repository: &str,
    reference: &str,
    accept: &str,
    expected: Option<&Digest>,
) -> Result<Manifest, RegistryError> {
    let response = upstream
        .fetch(
            Method::GET,
            repository,
            &format!("manifests/{reference}"),
            Some(accept),
            ErrorCode::ManifestUnknown,
        )
        .await?;
    let name = upstream.name();
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let content_type = header(CONTENT_TYPE.as_str());
    let claimed = header("docker-content-digest");

    let declared = header("content-length").and_then(|l| l.parse::<usize>().ok());
    if declared.is_some_and(|l| l > MAX_MANIFEST_BYTES) {
        return Err(RegistryError::bad_gateway(format!(
            "{name} sent a manifest over {MAX_MANIFEST_BYTES} bytes"
        )));
    }
    let body = read_body(response, MAX_MANIFEST_BYTES, "a manifest", name).await?;

    let media_type = match content_type {
        Some(ct) if looks_like_manifest_type(&ct) && !ct.starts_with("application/json") => {
            ct.split(';').next().unwrap_or_default().trim().to_owned()
        }
        // No usable type: a real manifest names its own in `mediaType`.
        _ => serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| {
                v.get("mediaType")
                    .and_then(|m| m.as_str())
                    .map(str::to_owned)
            })
            .filter(|m| looks_like_manifest_type(m))
            .ok_or_else(|| {
                RegistryError::bad_gateway(format!(
                    "{name} answered with something that is not a manifest"
                ))
            })?,
    };

    // A manifest is a JSON object; an empty or garbage body is not one,
    // whatever its Content-Type says. Its media type goes into headers and
    // a file's first line, so it must be a plain token.
    let is_object =
        serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(&body).is_ok();
    let plain_type = !media_type.is_empty()
        && media_type
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$&^_.+-/".contains(&b));
    if !is_object || !plain_type {
        return Err(RegistryError::bad_gateway(format!(
            "{name} answered with something that is not a manifest"
        )));
    }

    let algorithm = expected.map(Digest::algorithm).unwrap_or(Algorithm::Sha256);
    let digest = Digest::of(algorithm, &body);
    if expected.is_some_and(|e| *e != digest) {
        return Err(RegistryError::bad_gateway(format!(
            "{name} sent a manifest that does not match the digest asked for"
        )));
    }
    if let Some(claimed) = claimed.as_deref().and_then(|c| Digest::parse(c).ok()) {
        if claimed.algorithm() == algorithm && claimed != digest {
            return Err(RegistryError::bad_gateway(format!(
                "{name} sent a manifest that does not match its Docker-Content-Digest"
            )));
        }
    }
    Ok(Manifest {
        digest,
        media_type,
        bytes: Bytes::from(body),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_tags_are_recognised() {
        let hex = "a".repeat(64);
        for tag in [
            format!("sha256-{hex}"),
            format!("sha256-{hex}.sig"),
            format!("sha256-{hex}.att"),
            format!("sha256-{hex}.sbom"),
        ] {
            assert!(is_signature_tag(&tag), "{tag}");
        }
        for tag in [
            "latest".to_owned(),
            format!("sha256-{hex}.txt"),
            "sha256-abc.sig".to_owned(),
            format!("sha512-{hex}"),
        ] {
            assert!(!is_signature_tag(&tag), "{tag}");
        }
    }
}
