//! Deterministic in-memory test images (OCI index, Docker manifest list, Docker schema2, large single-layer) and pushing them with the registry HTTP API.

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use reqwest::{Client, StatusCode, Url};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::registry::{Registry, RegistryAuth};

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// `sha256:<hex>` of `bytes`.
pub fn digest_of(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// An image as pushed: every manifest with its exact bytes, and every blob.
#[derive(Clone, Debug)]
pub struct TestImage {
    /// `(digest, media_type, bytes)`, the top-level manifest first.
    pub manifests: Vec<(String, String, Bytes)>,
    /// `(digest, bytes)` for configs and layers.
    pub blobs: Vec<(String, Bytes)>,
}

/// The media types that make up one flavour of single-platform image.
struct Flavour {
    manifest: &'static str,
    config: &'static str,
    layer: &'static str,
}

const OCI: Flavour = Flavour {
    manifest: OCI_MANIFEST,
    config: OCI_CONFIG,
    layer: OCI_LAYER_GZIP,
};
const DOCKER: Flavour = Flavour {
    manifest: DOCKER_MANIFEST,
    config: DOCKER_CONFIG,
    layer: DOCKER_LAYER_GZIP,
};

/// Keeps images of different kinds distinct even when callers reuse a seed.
fn rng_for(kind: u64, seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ kind)
}

impl TestImage {
    /// An OCI image index over linux/amd64 and linux/arm64 OCI image manifests.
    pub fn oci_index(seed: u64) -> TestImage {
        let mut rng = rng_for(1, seed);
        Self::multi_platform(&mut rng, seed, &OCI, OCI_INDEX)
    }

    /// A Docker manifest list over two Docker schema2 manifests.
    pub fn docker_list(seed: u64) -> TestImage {
        let mut rng = rng_for(2, seed);
        Self::multi_platform(&mut rng, seed, &DOCKER, DOCKER_LIST)
    }

    /// A single Docker schema2 manifest.
    pub fn docker_schema2(seed: u64) -> TestImage {
        let mut rng = rng_for(3, seed);
        let mut image = TestImage::empty();
        let layers = small_layers(&mut rng);
        image.add_platform(seed, &DOCKER, "amd64", None, layers);
        image
    }

    /// A single OCI image manifest with one layer of exactly `size_bytes`.
    pub fn large(seed: u64, size_bytes: usize) -> TestImage {
        let mut rng = rng_for(4, seed);
        let mut layer = vec![0u8; size_bytes];
        rng.fill_bytes(&mut layer);
        let mut image = TestImage::empty();
        image.add_platform(seed, &OCI, "amd64", None, vec![Bytes::from(layer)]);
        image
    }

    fn empty() -> TestImage {
        TestImage {
            manifests: Vec::new(),
            blobs: Vec::new(),
        }
    }

    fn multi_platform(
        rng: &mut StdRng,
        seed: u64,
        flavour: &Flavour,
        list_type: &str,
    ) -> TestImage {
        let mut image = TestImage::empty();
        let mut entries = Vec::new();
        for (arch, variant) in [("amd64", None), ("arm64", Some("v8"))] {
            let layers = small_layers(rng);
            let (digest, size) = image.add_platform(seed, flavour, arch, variant, layers);
            let mut platform = json!({ "architecture": arch, "os": "linux" });
            if let Some(v) = variant {
                platform["variant"] = json!(v);
            }
            entries.push(json!({
                "mediaType": flavour.manifest,
                "digest": digest,
                "size": size,
                "platform": platform,
            }));
        }
        let list = json!({ "schemaVersion": 2, "mediaType": list_type, "manifests": entries });
        let bytes = Bytes::from(serde_json::to_vec_pretty(&list).unwrap());
        image
            .manifests
            .insert(0, (digest_of(&bytes), list_type.to_string(), bytes));
        image
    }

    /// Adds one platform's config, layers and manifest; returns the manifest's digest and size.
    fn add_platform(
        &mut self,
        seed: u64,
        flavour: &Flavour,
        arch: &str,
        variant: Option<&str>,
        layers: Vec<Bytes>,
    ) -> (String, usize) {
        let diff_ids: Vec<String> = layers.iter().map(|l| digest_of(l)).collect();
        let mut config = json!({
            "architecture": arch,
            "os": "linux",
            "created": "2024-01-01T00:00:00Z",
            "config": { "Labels": { "lank8s.test.seed": seed.to_string() } },
            "rootfs": { "type": "layers", "diff_ids": diff_ids },
        });
        if let Some(v) = variant {
            config["variant"] = json!(v);
        }
        let config = Bytes::from(serde_json::to_vec(&config).unwrap());
        let descriptor = |media_type: &str, bytes: &Bytes| json!({ "mediaType": media_type, "digest": digest_of(bytes), "size": bytes.len() });
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": flavour.manifest,
            "config": descriptor(flavour.config, &config),
            "layers": layers.iter().map(|l| descriptor(flavour.layer, l)).collect::<Vec<Value>>(),
        });
        let manifest = Bytes::from(serde_json::to_vec_pretty(&manifest).unwrap());
        let digest = digest_of(&manifest);
        let size = manifest.len();
        self.blobs.push((digest_of(&config), config));
        for layer in layers {
            self.blobs.push((digest_of(&layer), layer));
        }
        self.manifests
            .push((digest.clone(), flavour.manifest.to_string(), manifest));
        (digest, size)
    }

    pub fn top_digest(&self) -> &str {
        &self.manifests[0].0
    }

    pub fn top_media_type(&self) -> &str {
        &self.manifests[0].1
    }

    pub fn top_bytes(&self) -> &Bytes {
        &self.manifests[0].2
    }

    /// Digests of the per-platform manifests of a list/index (empty for a single manifest).
    pub fn child_digests(&self) -> Vec<String> {
        self.manifests[1..].iter().map(|m| m.0.clone()).collect()
    }

    pub fn manifest(&self, digest: &str) -> Option<&(String, String, Bytes)> {
        self.manifests.iter().find(|m| m.0 == digest)
    }

    pub fn blob(&self, digest: &str) -> Option<&Bytes> {
        self.blobs.iter().find(|b| b.0 == digest).map(|b| &b.1)
    }

    /// The digest of the biggest blob, typically the one a fault test wants to break.
    pub fn largest_blob_digest(&self) -> &str {
        &self.blobs.iter().max_by_key(|b| b.1.len()).unwrap().0
    }

    /// Pushes blobs, then child manifests by digest, then the top-level manifest by tag.
    /// For a token-auth registry, a push+pull token is obtained from its issuer first.
    pub async fn push(&self, registry: &Registry, repository: &str, tag: &str) {
        let client = super::http_client();
        let base = Url::parse(&registry.url()).unwrap();
        let bearer = match registry.auth() {
            Some(auth) => Some(fetch_token(&client, auth, repository, "pull,push").await),
            None => None,
        };
        let authed = |rb: reqwest::RequestBuilder| match &bearer {
            Some(t) => rb.bearer_auth(t),
            None => rb,
        };
        for (digest, bytes) in &self.blobs {
            let start = base
                .join(&format!("/v2/{repository}/blobs/uploads/"))
                .unwrap();
            let resp = authed(client.post(start))
                .send()
                .await
                .expect("start upload");
            assert_eq!(
                resp.status(),
                StatusCode::ACCEPTED,
                "start upload of {digest}"
            );
            let location = resp.headers()["location"].to_str().unwrap().to_string();
            let mut url = base.join(&location).expect("upload location");
            url.query_pairs_mut().append_pair("digest", digest);
            let resp = authed(client.put(url))
                .header("content-type", "application/octet-stream")
                .body(bytes.clone())
                .send()
                .await
                .expect("upload blob");
            let status = resp.status();
            let text = resp.text().await.unwrap_or_default();
            assert_eq!(status, StatusCode::CREATED, "upload {digest}: {text}");
        }
        // Children first: a registry may refuse a list whose members it does not have.
        let mut order: Vec<_> = self.manifests[1..]
            .iter()
            .map(|m| (m, m.0.as_str()))
            .collect();
        order.push((&self.manifests[0], tag));
        for ((digest, media_type, bytes), reference) in order {
            let url = base
                .join(&format!("/v2/{repository}/manifests/{reference}"))
                .unwrap();
            let resp = authed(client.put(url))
                .header("content-type", media_type.as_str())
                .body(bytes.clone())
                .send()
                .await
                .expect("put manifest");
            let status = resp.status();
            let returned = resp
                .headers()
                .get("docker-content-digest")
                .map(|v| v.to_str().unwrap().to_string());
            let text = resp.text().await.unwrap_or_default();
            assert_eq!(
                status,
                StatusCode::CREATED,
                "put manifest {reference}: {text}"
            );
            assert_eq!(
                returned.as_deref(),
                Some(digest.as_str()),
                "registry digest of {reference}"
            );
        }
    }
}

fn small_layers(rng: &mut StdRng) -> Vec<Bytes> {
    let count = rng.gen_range(1..=2);
    (0..count)
        .map(|_| {
            let mut layer = vec![0u8; rng.gen_range(200..4000)];
            rng.fill_bytes(&mut layer);
            Bytes::from(layer)
        })
        .collect()
}

/// Obtains a bearer token for `repository` with `actions` (e.g. "pull,push").
pub async fn fetch_token(
    client: &Client,
    auth: &RegistryAuth,
    repository: &str,
    actions: &str,
) -> String {
    let scope = format!("repository:{repository}:{actions}");
    let mut req = client.get(&auth.realm).query(&[
        ("service", auth.service.as_str()),
        ("scope", scope.as_str()),
    ]);
    if let Some((user, pass)) = &auth.credentials {
        req = req.basic_auth(user, Some(pass));
    }
    let resp = req.send().await.expect("token request");
    assert_eq!(resp.status(), StatusCode::OK, "token request for {scope}");
    let body: Value = serde_json::from_slice(&resp.bytes().await.unwrap()).expect("token JSON");
    body["token"].as_str().expect("token field").to_string()
}
