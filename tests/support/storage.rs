//! Helpers for the object-storage tests: lank8s configured for a Garage bucket, the keys lank8s stores under, the objects an image must leave there, multipart uploads in progress, and the slices of lank8s's and the upstream's logs that one pull produced.

use std::time::{Duration, Instant};

use serde_json::Value;

use super::registry::AccessEntry;
use super::{Garage, Lank8s, Registry, TestImage, compare_dir_with_image, skopeo_copy_all};

/// The upstream lank8s routes bare names to in these tests.
pub const UPSTREAM: &str = "registry.k8s.io";

fn toml_string(s: &str) -> String {
    serde_json::to_string(s).expect("string to JSON")
}

/// `[upstreams."registry.k8s.io"]` pointing at `url`.
pub fn registry_table(url: &str) -> String {
    format!("[upstreams.\"{UPSTREAM}\"]\nurl = {}\n", toml_string(url))
}

/// `[storage]` on `garage`'s bucket and `[dispatch]` with `mode` ("stream" or "redirect").
pub fn s3_tables(garage: &Garage, mode: &str) -> String {
    format!(
        "[storage]\nbackend = \"s3\"\nbucket = {}\nendpoint = {}\nregion = {}\n\
         access_key_id = {}\nsecret_access_key = {}\n\
         [dispatch]\nmode = {}\npresign_expiry = \"10m\"\n",
        toml_string(garage.bucket()),
        toml_string(&garage.endpoint()),
        toml_string(garage.region()),
        toml_string(garage.access_key_id()),
        toml_string(garage.secret_access_key()),
        toml_string(mode),
    )
}

/// Starts lank8s with `registry` as its default upstream and `garage` as its store.
pub async fn start_on_s3(registry: &Registry, garage: &Garage, mode: &str) -> Lank8s {
    Lank8s::start(&format!(
        "{}{}",
        registry_table(&registry.url()),
        s3_tables(garage, mode)
    ))
    .await
}

/// `blobs/<alg>/<hex[..2]>/<hex>`
pub fn blob_key(digest: &str) -> String {
    let (alg, hex) = digest.split_once(':').expect("alg:hex digest");
    format!("blobs/{alg}/{}/{hex}", &hex[..2])
}

/// `manifests/<alg>/<hex>`
pub fn manifest_key(digest: &str) -> String {
    let (alg, hex) = digest.split_once(':').expect("alg:hex digest");
    format!("manifests/{alg}/{hex}")
}

/// `tags/<upstream>/<repository>/_tags/<tag>`
pub fn tag_key(repository: &str, tag: &str) -> String {
    format!("tags/{UPSTREAM}/{repository}/_tags/{tag}")
}

/// A stored manifest: its media type, a newline, then its bytes.
pub fn stored_manifest(media_type: &str, bytes: &[u8]) -> Vec<u8> {
    let mut stored = media_type.as_bytes().to_vec();
    stored.push(b'\n');
    stored.extend_from_slice(bytes);
    stored
}

/// (key, size) of every blob of `image`.
pub fn blob_objects(image: &TestImage) -> Vec<(String, u64)> {
    image
        .blobs
        .iter()
        .map(|(digest, bytes)| (blob_key(digest), bytes.len() as u64))
        .collect()
}

/// (key, size) of every manifest of `image`.
pub fn manifest_objects(image: &TestImage) -> Vec<(String, u64)> {
    image
        .manifests
        .iter()
        .map(|(digest, media_type, bytes)| {
            let size = stored_manifest(media_type, bytes).len() as u64;
            (manifest_key(digest), size)
        })
        .collect()
}

/// Checks that every blob and manifest of `image` is in the bucket under its key, with
/// its size, and that the manifests hold exactly what lank8s serves.
pub async fn assert_image_stored(garage: &Garage, image: &TestImage) {
    for (key, size) in blob_objects(image)
        .into_iter()
        .chain(manifest_objects(image))
    {
        assert_eq!(
            garage.list_objects(&key).await,
            vec![(key.clone(), size)],
            "object {key} in the bucket"
        );
    }
    for (digest, media_type, bytes) in &image.manifests {
        assert_eq!(
            garage.get_object(&manifest_key(digest)).await,
            Some(stored_manifest(media_type, bytes)),
            "stored manifest {digest}"
        );
    }
}

/// Checks that no blob of `image` is in the bucket.
pub async fn assert_blobs_absent(garage: &Garage, image: &TestImage) {
    for (key, _) in blob_objects(image) {
        assert_eq!(
            garage.list_objects(&key).await,
            Vec::new(),
            "object {key} should not be in the bucket"
        );
    }
}

/// Keys of the multipart uploads begun in the bucket and neither completed nor aborted
/// (ListMultipartUploads).
pub async fn multipart_uploads(garage: &Garage) -> Vec<String> {
    let resp = garage
        .send("GET", "", &[("uploads", "")], Vec::new())
        .await
        .expect("ListMultipartUploads");
    let status = resp.status();
    let xml = resp.text().await.expect("ListMultipartUploads body");
    assert!(
        status.is_success(),
        "ListMultipartUploads answered {status}: {xml}"
    );
    xml.split("<Upload>")
        .skip(1)
        .filter_map(|upload| {
            let start = upload.find("<Key>")? + "<Key>".len();
            let end = start + upload[start..].find("</Key>")?;
            Some(upload[start..end].to_string())
        })
        .collect()
}

/// The path part of a request Garage logged for `key`: `/<bucket>/<key>`.
pub fn object_path(garage: &Garage, key: &str) -> String {
    format!("/{}/{key}", garage.bucket())
}

/// Waits (at most 10 s) until lank8s's log has stopped growing for 300 ms: a request
/// line is written when its body has been sent, which may be just after the client
/// has everything.
pub async fn settle_log(lank8s: &Lank8s) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = lank8s.log().len();
    let mut quiet = 0;
    while quiet < 3 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = lank8s.log().len();
        quiet = if now == last { quiet + 1 } else { 0 };
        last = now;
    }
}

/// What one pull left behind: lank8s's request lines and the upstream's access entries.
pub struct Recorded {
    pub lines: Vec<Value>,
    pub upstream: Vec<AccessEntry>,
}

impl Recorded {
    /// lank8s's lines for blob GETs.
    pub fn blob_gets(&self) -> Vec<&Value> {
        self.lines
            .iter()
            .filter(|l| l["method"] == "GET" && is_blob_path(&l["path"]))
            .collect()
    }

    /// lank8s's lines for manifest requests.
    pub fn manifest_lines(&self) -> Vec<&Value> {
        self.lines
            .iter()
            .filter(|l| {
                l["path"]
                    .as_str()
                    .is_some_and(|p| p.contains("/manifests/"))
            })
            .collect()
    }

    /// The upstream's blob GETs, as sorted paths.
    pub fn upstream_blob_gets(&self) -> Vec<String> {
        let mut paths: Vec<String> = self
            .upstream
            .iter()
            .filter(|e| e.method == "GET" && e.path.contains("/blobs/"))
            .map(|e| e.path.clone())
            .collect();
        paths.sort();
        paths
    }
}

fn is_blob_path(path: &Value) -> bool {
    path.as_str().is_some_and(|p| p.contains("/blobs/"))
}

/// `skopeo copy --all` of `src` through `lank8s`, compared byte for byte with `image`;
/// returns what lank8s and `registry` logged meanwhile.
pub async fn pull_recorded(
    lank8s: &Lank8s,
    registry: &Registry,
    src: &str,
    image: &TestImage,
) -> Recorded {
    registry.settle().await;
    settle_log(lank8s).await;
    let lines_before = lank8s.request_lines().len();
    let upstream_before = registry.access_entries().len();
    let out = tempfile::tempdir().expect("tempdir");
    let dest = out.path().join("image");
    if let Err(e) = skopeo_copy_all(src, &dest).await {
        panic!(
            "{e}\nlank8s log (last 30 lines):\n{}",
            tail(&lank8s.log(), 30)
        );
    }
    compare_dir_with_image(&dest, image);
    registry.settle().await;
    settle_log(lank8s).await;
    Recorded {
        lines: lank8s.request_lines().split_off(lines_before),
        upstream: registry.access_entries().split_off(upstream_before),
    }
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The size of the blob a request line names, from `image`.
pub fn blob_size(line: &Value, image: &TestImage) -> u64 {
    let digest = line["reference"].as_str().expect("reference in blob line");
    image
        .blob(digest)
        .unwrap_or_else(|| panic!("{digest} is not a blob of the image: {line}"))
        .len() as u64
}
