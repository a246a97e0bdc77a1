//! Multi-arch test images that a container runtime can unpack: real gzip-compressed tar layers holding known files, configs whose `rootfs.diff_ids` are the uncompressed digests, as an OCI index or a Docker manifest list.

use bytes::Bytes;
use serde_json::{Value, json};

use super::images::{
    DOCKER_CONFIG, DOCKER_LAYER_GZIP, DOCKER_LIST, DOCKER_MANIFEST, OCI_CONFIG, OCI_INDEX,
    OCI_LAYER_GZIP, OCI_MANIFEST, TestImage, digest_of,
};

/// The platforms every runnable image has, as `(architecture, variant)`.
pub const PLATFORMS: [(&str, Option<&str>); 2] = [("amd64", None), ("arm64", Some("v8"))];

/// One platform of a [`RunnableImage`]: its manifest and what unpacking it must produce.
#[derive(Clone, Debug)]
pub struct RunnablePlatform {
    pub architecture: String,
    pub manifest_digest: String,
    pub config_digest: String,
    /// Digests of the compressed layers, base first.
    pub layer_digests: Vec<String>,
    /// `sha256` of each uncompressed layer tar, as in the config's `rootfs.diff_ids`.
    pub diff_ids: Vec<String>,
    /// `(path inside the root filesystem, contents)` of every regular file, across all layers.
    pub files: Vec<(String, String)>,
}

impl RunnablePlatform {
    /// The chain ID of the unpacked layers: the name of containerd's committed snapshot.
    pub fn chain_id(&self) -> String {
        super::containerd::chain_id(&self.diff_ids)
    }

    /// Every blob a pull of this platform fetches: the config and the layers.
    pub fn blob_digests(&self) -> Vec<String> {
        std::iter::once(self.config_digest.clone())
            .chain(self.layer_digests.iter().cloned())
            .collect()
    }
}

/// A pushed-as-is [`TestImage`] plus what each platform's root filesystem contains.
#[derive(Clone, Debug)]
pub struct RunnableImage {
    pub image: TestImage,
    pub label: String,
    pub platforms: Vec<RunnablePlatform>,
}

/// The media types of one image flavour.
struct Kind {
    list: &'static str,
    manifest: &'static str,
    config: &'static str,
    layer: &'static str,
}

const OCI: Kind = Kind {
    list: OCI_INDEX,
    manifest: OCI_MANIFEST,
    config: OCI_CONFIG,
    layer: OCI_LAYER_GZIP,
};

const DOCKER: Kind = Kind {
    list: DOCKER_LIST,
    manifest: DOCKER_MANIFEST,
    config: DOCKER_CONFIG,
    layer: DOCKER_LAYER_GZIP,
};

/// The text of `/hello.txt` in `label`'s image for `linux/<architecture>`.
pub fn hello_text(label: &str, architecture: &str) -> String {
    format!("hello from {label} on linux/{architecture}\n")
}

impl RunnableImage {
    /// An OCI image index over linux/amd64 and linux/arm64/v8 OCI manifests.
    pub fn oci_index(label: &str) -> RunnableImage {
        Self::build(label, &OCI)
    }

    /// A Docker manifest list over linux/amd64 and linux/arm64/v8 Docker schema2 manifests.
    pub fn docker_list(label: &str) -> RunnableImage {
        Self::build(label, &DOCKER)
    }

    pub fn top_digest(&self) -> &str {
        self.image.top_digest()
    }

    pub fn platform(&self, architecture: &str) -> &RunnablePlatform {
        self.platforms
            .iter()
            .find(|p| p.architecture == architecture)
            .unwrap_or_else(|| panic!("{} has no linux/{architecture}", self.label))
    }

    /// Pushes the image; see [`TestImage::push`].
    pub async fn push(&self, registry: &super::Registry, repository: &str, tag: &str) {
        self.image.push(registry, repository, tag).await;
    }

    fn build(label: &str, kind: &Kind) -> RunnableImage {
        let mut image = TestImage {
            manifests: Vec::new(),
            blobs: Vec::new(),
        };
        let mut platforms = Vec::new();
        let mut entries = Vec::new();
        for (architecture, variant) in PLATFORMS {
            let base = vec![
                ("hello.txt".to_string(), hello_text(label, architecture)),
                ("etc/lank8s-label".to_string(), format!("{label}\n")),
            ];
            // Naming the image here too keeps every blob distinct across images.
            let top = vec![(
                "etc/lank8s-platform".to_string(),
                format!("linux/{architecture} ({label})\n"),
            )];
            let tars = [tar(&base), tar(&top)];
            let diff_ids: Vec<String> = tars.iter().map(|t| digest_of(t)).collect();
            let layers: Vec<Bytes> = tars.iter().map(|t| Bytes::from(gzip(t))).collect();

            let mut config = json!({
                "architecture": architecture,
                "os": "linux",
                "created": "2024-01-01T00:00:00Z",
                "config": {
                    "Cmd": ["/hello"],
                    "Labels": { "lank8s.test.label": label },
                },
                "rootfs": { "type": "layers", "diff_ids": diff_ids },
                "history": [
                    { "created": "2024-01-01T00:00:00Z", "created_by": "lank8s test base layer" },
                    { "created": "2024-01-01T00:00:00Z", "created_by": "lank8s test platform layer" },
                ],
            });
            if let Some(v) = variant {
                config["variant"] = json!(v);
            }
            let config = Bytes::from(serde_json::to_vec(&config).unwrap());
            let descriptor = |media_type: &str, bytes: &Bytes| json!({ "mediaType": media_type, "digest": digest_of(bytes), "size": bytes.len() });
            let manifest = json!({
                "schemaVersion": 2,
                "mediaType": kind.manifest,
                "config": descriptor(kind.config, &config),
                "layers": layers.iter().map(|l| descriptor(kind.layer, l)).collect::<Vec<Value>>(),
            });
            let manifest = Bytes::from(serde_json::to_vec_pretty(&manifest).unwrap());
            let manifest_digest = digest_of(&manifest);

            let mut platform = json!({ "architecture": architecture, "os": "linux" });
            if let Some(v) = variant {
                platform["variant"] = json!(v);
            }
            entries.push(json!({
                "mediaType": kind.manifest,
                "digest": manifest_digest,
                "size": manifest.len(),
                "platform": platform,
            }));
            platforms.push(RunnablePlatform {
                architecture: architecture.to_string(),
                manifest_digest: manifest_digest.clone(),
                config_digest: digest_of(&config),
                layer_digests: layers.iter().map(|l| digest_of(l)).collect(),
                diff_ids,
                files: base.into_iter().chain(top).collect(),
            });
            image.blobs.push((digest_of(&config), config));
            for layer in layers {
                image.blobs.push((digest_of(&layer), layer));
            }
            image
                .manifests
                .push((manifest_digest, kind.manifest.to_string(), manifest));
        }
        let list = json!({ "schemaVersion": 2, "mediaType": kind.list, "manifests": entries });
        let list = Bytes::from(serde_json::to_vec_pretty(&list).unwrap());
        image
            .manifests
            .insert(0, (digest_of(&list), kind.list.to_string(), list));
        RunnableImage {
            image,
            label: label.to_string(),
            platforms,
        }
    }
}

/// A POSIX ustar archive of `files` (paths relative to the root, parents created as
/// directories first), with fixed owners and times so the same input gives the same bytes.
pub fn tar(files: &[(String, String)]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut dirs: Vec<String> = Vec::new();
    for (path, _) in files {
        let mut prefix = String::new();
        let components: Vec<&str> = path.split('/').collect();
        for dir in &components[..components.len() - 1] {
            prefix.push_str(dir);
            prefix.push('/');
            if !dirs.contains(&prefix) {
                dirs.push(prefix.clone());
                out.extend_from_slice(&tar_header(&prefix, 0o755, 0, b'5'));
            }
        }
    }
    for (path, contents) in files {
        out.extend_from_slice(&tar_header(path, 0o644, contents.len(), b'0'));
        out.extend_from_slice(contents.as_bytes());
        out.resize(out.len().next_multiple_of(512), 0);
    }
    // Two zero blocks end the archive.
    out.resize(out.len() + 1024, 0);
    out
}

fn tar_header(name: &str, mode: u32, size: usize, typeflag: u8) -> [u8; 512] {
    assert!(
        name.len() < 100,
        "tar name too long for a plain header: {name}"
    );
    let mut h = [0u8; 512];
    let mut put =
        |offset: usize, bytes: &[u8]| h[offset..offset + bytes.len()].copy_from_slice(bytes);
    put(0, name.as_bytes());
    put(100, format!("{mode:07o}\0").as_bytes());
    put(108, b"0000000\0"); // uid
    put(116, b"0000000\0"); // gid
    put(124, format!("{size:011o}\0").as_bytes());
    put(136, format!("{:011o}\0", 1_704_067_200u64).as_bytes()); // 2024-01-01
    put(148, b"        "); // checksum, as spaces while summing
    put(156, &[typeflag]);
    put(257, b"ustar\0");
    put(263, b"00");
    put(265, b"root");
    put(297, b"root");
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    h
}

/// A gzip member holding `data` in stored (uncompressed) deflate blocks: valid gzip
/// for any decompressor, and needs no compression library.
pub fn gzip(data: &[u8]) -> Vec<u8> {
    const MAX_BLOCK: usize = 65_535;
    let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
    let mut chunks = data.chunks(MAX_BLOCK).peekable();
    if chunks.peek().is_none() {
        out.extend_from_slice(&[1, 0, 0, 0xff, 0xff]);
    }
    while let Some(chunk) = chunks.next() {
        let last = chunks.peek().is_none();
        let len = chunk.len() as u16;
        out.push(u8::from(last));
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(chunk);
    }
    out.extend_from_slice(&crc32(data).to_le_bytes());
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out
}

/// CRC-32 (IEEE 802.3, reflected), as gzip's trailer needs.
pub fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn tar_and_gzip_read_back_with_system_tools() {
        let dir = tempfile::tempdir().unwrap();
        let files = vec![
            ("hello.txt".to_string(), "hi\n".to_string()),
            ("etc/x".to_string(), "x".repeat(70_000)),
        ];
        let archive = dir.path().join("layer.tar.gz");
        std::fs::write(&archive, gzip(&tar(&files))).unwrap();
        let out = std::process::Command::new("tar")
            .arg("-xzf")
            .arg(&archive)
            .arg("-C")
            .arg(dir.path())
            .output()
            .expect("run tar");
        assert!(out.status.success(), "{out:?}");
        for (path, contents) in &files {
            assert_eq!(
                std::fs::read_to_string(dir.path().join(path)).unwrap(),
                *contents
            );
        }
    }
}
