//! Signing the way `cosign sign --key` does, with the openssl CLI: a simple-signing payload, an ECDSA P-256 (SHA-256) signature in a layer annotation, and an OCI manifest under the `sha256-<hex>.sig` tag; and verifying one as `cosign verify` would.

use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use serde_json::{Value, json};
use tempfile::TempDir;

use super::artifacts::{descriptor, single_manifest};
use super::images::{OCI_CONFIG, OCI_MANIFEST, TestImage, digest_of};

pub const SIMPLE_SIGNING: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
pub const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";

/// An ECDSA P-256 key pair in PEM files, as `cosign generate-key-pair` makes
/// (unencrypted here).
pub struct CosignKey {
    dir: TempDir,
}

impl CosignKey {
    pub fn generate() -> CosignKey {
        let dir = tempfile::Builder::new()
            .prefix("lank8s-cosign-")
            .tempdir()
            .expect("create key tempdir");
        let key = CosignKey { dir };
        openssl(&[
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
            path(&key.private()),
        ]);
        openssl(&[
            "ec",
            "-in",
            path(&key.private()),
            "-pubout",
            "-out",
            path(&key.public()),
        ]);
        key
    }

    fn private(&self) -> PathBuf {
        self.dir.path().join("cosign.key")
    }

    pub fn public(&self) -> PathBuf {
        self.dir.path().join("cosign.pub")
    }

    /// The DER ECDSA signature over SHA-256 of `payload`, as cosign makes it.
    pub fn sign(&self, payload: &[u8]) -> Vec<u8> {
        let input = self.scratch("payload", payload);
        let output = self.dir.path().join("signature.der");
        openssl(&[
            "dgst",
            "-sha256",
            "-sign",
            path(&self.private()),
            "-out",
            path(&output),
            path(&input),
        ]);
        std::fs::read(&output).expect("read signature")
    }

    /// Whether `signature` (DER) is this key's signature over `payload`.
    pub fn verify(&self, payload: &[u8], signature: &[u8]) -> bool {
        let input = self.scratch("verify-payload", payload);
        let sig = self.scratch("verify-signature.der", signature);
        let out = Command::new("openssl")
            .args(["dgst", "-sha256", "-verify", path(&self.public())])
            .args(["-signature", path(&sig), path(&input)])
            .output()
            .expect("run openssl");
        let said = String::from_utf8_lossy(&out.stdout);
        match (out.status.success(), said.trim()) {
            (true, "Verified OK") => true,
            (false, "Verification failure") => false,
            _ => panic!(
                "openssl dgst -verify gave {}: {said} {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ),
        }
    }

    fn scratch(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let file = self.dir.path().join(name);
        std::fs::write(&file, bytes).expect("write scratch file");
        file
    }
}

fn path(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

fn openssl(args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The tag cosign stores the signatures of `digest` under.
pub fn signature_tag(digest: &str) -> String {
    format!("{}.sig", digest.replacen(':', "-", 1))
}

/// cosign's "simple signing" payload for `image_digest` of `docker_reference`.
pub fn simple_signing_payload(docker_reference: &str, image_digest: &str) -> Bytes {
    let payload = json!({
        "critical": {
            "identity": { "docker-reference": docker_reference },
            "image": { "docker-manifest-digest": image_digest },
            "type": "cosign container image signature",
        },
        "optional": null,
    });
    Bytes::from(serde_json::to_vec(&payload).expect("payload to JSON"))
}

/// The signature manifest cosign pushes: a config naming the payload as its
/// only layer, and the payload layer carrying the base64 signature.
pub fn signature_image(key: &CosignKey, docker_reference: &str, image_digest: &str) -> TestImage {
    let payload = simple_signing_payload(docker_reference, image_digest);
    let signature = STANDARD.encode(key.sign(&payload));
    let config = json!({
        "architecture": "",
        "created": "0001-01-01T00:00:00Z",
        "history": [{ "created": "0001-01-01T00:00:00Z" }],
        "os": "",
        "rootfs": { "type": "layers", "diff_ids": [digest_of(&payload)] },
        "config": {},
    });
    let config = Bytes::from(serde_json::to_vec(&config).expect("config to JSON"));
    let mut layer = descriptor(SIMPLE_SIGNING, &payload);
    let mut annotations = serde_json::Map::new();
    annotations.insert(SIGNATURE_ANNOTATION.into(), signature.into());
    layer["annotations"] = annotations.into();
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": descriptor(OCI_CONFIG, &config),
        "layers": [layer],
    });
    single_manifest(&manifest, &[config, payload])
}

/// The payload layer's descriptor and its decoded signature, from a
/// signature manifest.
pub fn signature_layer(manifest: &Value) -> (String, Vec<u8>) {
    let layer = &manifest["layers"][0];
    assert_eq!(layer["mediaType"], SIMPLE_SIGNING, "{manifest}");
    let digest = layer["digest"].as_str().expect("layer digest").to_string();
    let signature = layer["annotations"][SIGNATURE_ANNOTATION]
        .as_str()
        .unwrap_or_else(|| panic!("no {SIGNATURE_ANNOTATION} in {manifest}"));
    let signature = STANDARD.decode(signature).expect("base64 signature");
    (digest, signature)
}
