//! Hand-built OCI manifests (artifacts, signatures, anything a TestImage does not make) and plain HTTP reads of manifests and blobs through a mirror, as registry clients send them.

use bytes::Bytes;
use reqwest::header::HeaderMap;
use serde_json::{Value, json};

use super::images::{OCI_MANIFEST, TestImage, digest_of};

/// What cosign, oras, helm and containerd put in `Accept`: every manifest type.
pub const ACCEPT_ALL_MANIFESTS: &str = "application/vnd.oci.image.index.v1+json, \
application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.docker.distribution.manifest.v2+json";

/// An OCI content descriptor for `bytes`.
pub fn descriptor(media_type: &str, bytes: &[u8]) -> Value {
    json!({ "mediaType": media_type, "digest": digest_of(bytes), "size": bytes.len() })
}

/// A one-manifest TestImage from a manifest document and the blobs it names,
/// so that `TestImage::push` and the skopeo checks work on anything.
pub fn single_manifest(manifest: &Value, blobs: &[Bytes]) -> TestImage {
    let bytes = Bytes::from(serde_json::to_vec_pretty(manifest).expect("manifest to JSON"));
    let media_type = manifest["mediaType"]
        .as_str()
        .unwrap_or(OCI_MANIFEST)
        .to_string();
    TestImage {
        manifests: vec![(digest_of(&bytes), media_type, bytes)],
        blobs: blobs.iter().map(|b| (digest_of(b), b.clone())).collect(),
    }
}

/// One answer, read whole.
#[derive(Debug)]
pub struct Fetched {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Fetched {
    /// A header as text; panics with the answer when it is missing.
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_else(|| panic!("no {name} header in {self:?}"))
    }

    pub fn digest(&self) -> &str {
        self.header("docker-content-digest")
    }

    pub fn content_type(&self) -> &str {
        self.header("content-type")
    }

    pub fn content_length(&self) -> usize {
        self.header("content-length")
            .parse()
            .unwrap_or_else(|_| panic!("Content-Length is not a number in {self:?}"))
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {self:?}"))
    }
}

/// `method` on `<base>/v2/<name>/<kind>/<reference>` with `accept`, read whole.
async fn fetch(method: &str, url: &str, accept: Option<&str>) -> Fetched {
    let client = super::http_client();
    let method = reqwest::Method::from_bytes(method.as_bytes()).expect("HTTP method");
    let mut request = client.request(method.clone(), url);
    if let Some(accept) = accept {
        request = request.header("accept", accept);
    }
    let response = request
        .send()
        .await
        .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response
        .bytes()
        .await
        .unwrap_or_else(|e| panic!("{method} {url}: reading the body: {e}"));
    Fetched {
        status,
        headers,
        body,
    }
}

/// `GET` or `HEAD` of a manifest, accepting every manifest type.
pub async fn manifest(method: &str, base: &str, name: &str, reference: &str) -> Fetched {
    manifest_accepting(method, base, name, reference, ACCEPT_ALL_MANIFESTS).await
}

/// `GET` or `HEAD` of a manifest with a given `Accept`.
pub async fn manifest_accepting(
    method: &str,
    base: &str,
    name: &str,
    reference: &str,
    accept: &str,
) -> Fetched {
    let url = format!("{base}/v2/{name}/manifests/{reference}");
    fetch(method, &url, Some(accept)).await
}

/// `GET` or `HEAD` of a blob.
pub async fn blob(method: &str, base: &str, name: &str, digest: &str) -> Fetched {
    fetch(method, &format!("{base}/v2/{name}/blobs/{digest}"), None).await
}

/// `GET` of any other path under `<base>`.
pub async fn get(base: &str, path: &str, accept: Option<&str>) -> Fetched {
    fetch("GET", &format!("{base}{path}"), accept).await
}

/// The digests a manifest names: its config, layers, child manifests and subject.
pub fn referenced_digests(manifest: &Value) -> Vec<(String, String)> {
    let mut found = Vec::new();
    let mut add = |d: &Value| {
        if let (Some(media_type), Some(digest)) = (d["mediaType"].as_str(), d["digest"].as_str()) {
            found.push((media_type.to_string(), digest.to_string()));
        }
    };
    if manifest["config"].is_object() {
        add(&manifest["config"]);
    }
    for list in ["layers", "manifests"] {
        for d in manifest[list].as_array().into_iter().flatten() {
            add(d);
        }
    }
    if manifest["subject"].is_object() {
        add(&manifest["subject"]);
    }
    found
}
