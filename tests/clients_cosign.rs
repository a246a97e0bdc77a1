//! cosign through lank8s: an image signed as `cosign sign --key` does (simple-signing payload, ECDSA P-256 signature in the layer annotation, `sha256-<hex>.sig` tag) verifies against the digest pulled through the mirror; referrers are proxied; every advertised digest can be fetched again; a re-signed image's new signature shows up after `signature_tag_ttl` while ordinary tags keep `tag_ttl`.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use support::artifacts::{self, Fetched, referenced_digests};
use support::cosign::{CosignKey, signature_image, signature_layer, signature_tag};
use support::images::{OCI_INDEX, OCI_MANIFEST};
use support::*;

const REPO: &str = "signed/app";
const DOCKER_REFERENCE: &str = "registry.k8s.io/signed/app";

/// Everything lank8s named by digest while a client walked it.
#[derive(Default)]
struct Advertised {
    manifests: BTreeSet<String>,
    blobs: BTreeSet<(String, usize)>,
}

/// Reads a manifest and, recursively, every manifest and blob it names, as a
/// pulling client does; checks each against its digest; returns the top one.
async fn walk(lank8s: &Lank8s, reference: &str, seen: &mut Advertised) -> Fetched {
    let top = artifacts::manifest("GET", &lank8s.url(), REPO, reference).await;
    assert_eq!(top.status, 200, "{reference}: {top:?}\n{}", lank8s.log());
    assert_eq!(top.digest(), digest_of(&top.body), "{reference}");
    seen.manifests.insert(top.digest().to_string());
    let mut pending = vec![top.json()];
    while let Some(manifest) = pending.pop() {
        for (media_type, digest) in referenced_digests(&manifest) {
            if media_type == OCI_MANIFEST || media_type == OCI_INDEX {
                let child = artifacts::manifest("GET", &lank8s.url(), REPO, &digest).await;
                assert_eq!(child.status, 200, "{digest}: {child:?}");
                assert_eq!(child.digest(), digest);
                assert_eq!(digest_of(&child.body), digest);
                seen.manifests.insert(digest);
                pending.push(child.json());
            } else {
                let blob = artifacts::blob("GET", &lank8s.url(), REPO, &digest).await;
                assert_eq!(blob.status, 200, "{digest}: {blob:?}");
                assert_eq!(blob.digest(), digest);
                assert_eq!(digest_of(&blob.body), digest);
                seen.blobs.insert((digest, blob.body.len()));
            }
        }
    }
    top
}

/// What `cosign verify --key` checks, on what came through the mirror: the
/// payload names `image_digest`, and the signature over it is the key's.
async fn verify_signature(lank8s: &Lank8s, key: &CosignKey, image_digest: &str, sig: &Fetched) {
    let (payload_digest, signature) = signature_layer(&sig.json());
    let payload = artifacts::blob("GET", &lank8s.url(), REPO, &payload_digest).await;
    assert_eq!(payload.status, 200, "{payload:?}");
    assert_eq!(digest_of(&payload.body), payload_digest);
    let claims = payload.json();
    assert_eq!(
        claims["critical"]["image"]["docker-manifest-digest"],
        image_digest
    );
    assert_eq!(
        claims["critical"]["identity"]["docker-reference"],
        DOCKER_REFERENCE
    );
    assert_eq!(
        claims["critical"]["type"],
        "cosign container image signature"
    );
    assert!(
        key.verify(&payload.body, &signature),
        "signature does not verify"
    );
    // The check has teeth: the same signature does not cover another digest.
    let forged = support::cosign::simple_signing_payload(DOCKER_REFERENCE, &digest_of(b"other"));
    assert!(!key.verify(&forged, &signature));
}

/// HEAD by digest of everything in `seen` answers 200 with the same digest
/// (manifests) or size (blobs).
async fn assert_all_fetchable(lank8s: &Lank8s, seen: &Advertised) {
    for digest in &seen.manifests {
        let head = artifacts::manifest("HEAD", &lank8s.url(), REPO, digest).await;
        assert_eq!(head.status, 200, "{digest}: {head:?}");
        assert_eq!(head.digest(), digest);
    }
    for (digest, size) in &seen.blobs {
        let head = artifacts::blob("HEAD", &lank8s.url(), REPO, digest).await;
        assert_eq!(head.status, 200, "{digest}: {head:?}");
        assert_eq!(head.content_length(), *size, "{digest}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn cosign_signatures_verify_through_lank8s() {
    let registry = Registry::start().await;
    let image = TestImage::oci_index(4100);
    image.push(&registry, REPO, "v1").await;
    let key = CosignKey::generate();
    let sig_tag = signature_tag(image.top_digest());
    let first_sig = signature_image(&key, DOCKER_REFERENCE, image.top_digest());
    first_sig.push(&registry, REPO, &sig_tag).await;

    let lank8s = Lank8s::start(&format!(
        "[upstreams.\"registry.k8s.io\"]\nurl = \"{}\"\ntag_ttl = \"1h\"\nsignature_tag_ttl = \"1s\"\n",
        registry.url()
    ))
    .await;

    // cosign verify: resolve the tag, then fetch sha256-<hex>.sig for the
    // digest it got, then the payload.
    let mut seen = Advertised::default();
    let pulled = walk(&lank8s, "v1", &mut seen).await;
    assert_eq!(pulled.digest(), image.top_digest());
    assert_eq!(pulled.body, image.top_bytes());
    assert_eq!(signature_tag(pulled.digest()), sig_tag);
    let sig = walk(&lank8s, &sig_tag, &mut seen).await;
    assert_eq!(sig.content_type(), OCI_MANIFEST);
    assert_eq!(sig.digest(), first_sig.top_digest());
    assert_eq!(sig.body, first_sig.top_bytes());
    verify_signature(&lank8s, &key, pulled.digest(), &sig).await;

    // Referrers go upstream; distribution 2.8 has no such API and says 404.
    let referrers_path = format!("/v2/{REPO}/referrers/{}", image.top_digest());
    let referrers = artifacts::get(&lank8s.url(), &referrers_path, None).await;
    assert_eq!(referrers.status, 404, "{referrers:?}");
    assert_eq!(referrers.content_type(), "application/json");
    assert_eq!(
        referrers.json()["errors"][0]["code"],
        "MANIFEST_UNKNOWN",
        "{referrers:?}"
    );
    assert_eq!(referrers.header("oci-namespace"), "registry.k8s.io");
    registry.settle().await;
    assert_eq!(registry.count_requests("GET", &referrers_path), 1);

    // Index, platform manifests, signature manifest and all blobs are there
    // by digest afterwards.
    assert_eq!(
        seen.manifests.len(),
        image.manifests.len() + 1,
        "{:?}",
        seen.manifests
    );
    assert_eq!(seen.blobs.len(), image.blobs.len() + 2, "{:?}", seen.blobs);
    assert_all_fetchable(&lank8s, &seen).await;

    // Re-signed upstream, and v1 moved to another image.
    let second_sig = signature_image(&key, DOCKER_REFERENCE, image.top_digest());
    assert_ne!(second_sig.top_digest(), first_sig.top_digest());
    second_sig.push(&registry, REPO, &sig_tag).await;
    let moved = TestImage::oci_index(4200);
    moved.push(&registry, REPO, "v1").await;
    tokio::time::sleep(Duration::from_millis(2100)).await;

    let sig = walk(&lank8s, &sig_tag, &mut seen).await;
    assert_eq!(
        sig.digest(),
        second_sig.top_digest(),
        "the signature tag is past signature_tag_ttl (1s) and must be revalidated\n{}",
        lank8s.log()
    );
    assert_eq!(sig.body, second_sig.top_bytes());
    verify_signature(&lank8s, &key, image.top_digest(), &sig).await;
    let v1 = artifacts::manifest("GET", &lank8s.url(), REPO, "v1").await;
    assert_eq!(v1.digest(), image.top_digest(), "v1 is within tag_ttl (1h)");
    assert_eq!(v1.body, image.top_bytes());
    assert_eq!(seen.manifests.len(), image.manifests.len() + 2);
    assert_all_fetchable(&lank8s, &seen).await;

    // The signature tag was revalidated with a HEAD; v1 was not asked for again.
    registry.settle().await;
    let sig_path = format!("/v2/{REPO}/manifests/{sig_tag}");
    assert_eq!(registry.count_requests("HEAD", &sig_path), 1);
    assert_eq!(registry.count_requests("GET", &sig_path), 2);
    let v1_path = format!("/v2/{REPO}/manifests/v1");
    assert_eq!(registry.count_requests("GET", &v1_path), 1);
    assert_eq!(registry.count_requests("HEAD", &v1_path), 0);
    let cache_of = |reference: &str| -> Vec<String> {
        lank8s
            .request_lines()
            .iter()
            .filter(|l| l["reference"] == reference && l["method"] == "GET")
            .map(|l| l["cache"].as_str().unwrap_or_default().to_string())
            .collect()
    };
    // A request's line is written once its body is out, maybe just after.
    eventually(Duration::from_secs(5), || {
        let done = cache_of("v1").len() == 2;
        async move { done.then_some(()) }
    })
    .await;
    assert_eq!(cache_of(&sig_tag), ["miss", "miss"], "{}", lank8s.log());
    assert_eq!(cache_of("v1"), ["miss", "hit"], "{}", lank8s.log());
}
