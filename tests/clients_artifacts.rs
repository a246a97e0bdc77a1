//! OCI artifacts pass through lank8s untouched: a Helm chart, an OCI 1.1 artifact with `artifactType` and the empty config, one with media types nobody knows, and one with a `subject`; by tag and by digest, GET and HEAD, byte for byte, with their exact Content-Type, and their blobs.

mod support;

use bytes::Bytes;
use serde_json::{Value, json};
use support::artifacts::{self, descriptor, single_manifest};
use support::images::OCI_MANIFEST;
use support::*;

const HELM_CONFIG: &str = "application/vnd.cncf.helm.config.v1+json";
const HELM_CHART: &str = "application/vnd.cncf.helm.chart.content.v1.tar+gzip";
const EMPTY: &str = "application/vnd.oci.empty.v1+json";
const THING: &str = "application/vnd.example.thing.v1+json";

struct Artifact {
    repo: &'static str,
    tag: &'static str,
    image: TestImage,
}

/// Bytes that stand in for a file of `len` bytes; distinct per `seed`.
fn filler(seed: u8, len: usize) -> Bytes {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect()
}

fn artifacts() -> Vec<Artifact> {
    // As `helm push` stores a chart.
    let chart_config = Bytes::from_static(
        br#"{"name":"lank8s-demo","version":"0.1.0","apiVersion":"v2","description":"test chart"}"#,
    );
    let chart = filler(1, 3000);
    let helm_manifest = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": descriptor(HELM_CONFIG, &chart_config),
        "layers": [descriptor(HELM_CHART, &chart)],
        "annotations": { "org.opencontainers.image.title": "lank8s-demo" },
    });
    let helm = single_manifest(&helm_manifest, &[chart_config, chart]);

    // An OCI 1.1 artifact: artifactType, and the empty descriptor as config.
    let empty = Bytes::from_static(b"{}");
    let sbom = Bytes::from_static(br#"{"spdxVersion":"SPDX-2.3","name":"demo"}"#);
    let typed_manifest = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": "application/vnd.example.sbom.v1",
        "config": descriptor(EMPTY, &empty),
        "layers": [descriptor("application/spdx+json", &sbom)],
    });
    let typed = single_manifest(&typed_manifest, &[empty.clone(), sbom]);

    // Config and layer types no registry or client knows.
    let thing_config = Bytes::from_static(br#"{"thing":"config"}"#);
    let thing_layer = filler(2, 1500);
    let unknown_manifest = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": descriptor(THING, &thing_config),
        "layers": [descriptor(THING, &thing_layer)],
    });
    let unknown = single_manifest(&unknown_manifest, &[thing_config, thing_layer]);

    // A referrer: its subject is the chart's manifest.
    let (chart_digest, _, chart_bytes) = &helm.manifests[0];
    let note = Bytes::from_static(br#"{"reviewed":true}"#);
    let subject_manifest = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": "application/vnd.example.review.v1+json",
        "config": descriptor(EMPTY, &empty),
        "layers": [descriptor(THING, &note)],
        "subject": { "mediaType": OCI_MANIFEST, "digest": chart_digest, "size": chart_bytes.len() },
    });
    let referrer = single_manifest(&subject_manifest, &[empty, note]);

    vec![
        Artifact {
            repo: "charts/lank8s-demo",
            tag: "0.1.0",
            image: helm,
        },
        Artifact {
            repo: "charts/lank8s-demo",
            tag: "sbom",
            image: typed,
        },
        Artifact {
            repo: "things/unknown",
            tag: "v1",
            image: unknown,
        },
        Artifact {
            repo: "charts/lank8s-demo",
            tag: "review",
            image: referrer,
        },
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn oci_artifacts_pass_through_untouched() {
    let registry = Registry::start().await;
    let artifacts = artifacts();
    for a in &artifacts {
        a.image.push(&registry, a.repo, a.tag).await;
    }
    let lank8s = Lank8s::start(&format!(
        "[upstreams.\"registry.k8s.io\"]\nurl = \"{}\"\n",
        registry.url()
    ))
    .await;
    let base = lank8s.url();
    let mut received: Vec<Value> = Vec::new();

    for a in &artifacts {
        let digest = a.image.top_digest();
        let bytes = a.image.top_bytes();
        // Cold by tag for some, cold by digest for the others.
        let mut references = [a.tag, digest];
        if a.tag == "v1" || a.tag == "review" {
            references.reverse();
        }
        for reference in references {
            for method in ["GET", "HEAD"] {
                let answer = artifacts::manifest(method, &base, a.repo, reference).await;
                let what = format!("{method} {}:{reference}", a.repo);
                assert_eq!(answer.status, 200, "{what}: {answer:?}\n{}", lank8s.log());
                assert_eq!(answer.content_type(), OCI_MANIFEST, "{what}");
                assert_eq!(answer.digest(), digest, "{what}");
                assert_eq!(answer.content_length(), bytes.len(), "{what}");
                let body: &[u8] = if method == "GET" { bytes } else { b"" };
                assert_eq!(&answer.body[..], body, "{what}");
            }
        }
        // oras and helm ask for exactly this one type.
        let oras = artifacts::manifest_accepting("GET", &base, a.repo, a.tag, OCI_MANIFEST).await;
        assert_eq!(oras.status, 200, "{oras:?}");
        assert_eq!(&oras.body[..], &bytes[..]);
        received.push(oras.json());

        for (blob_digest, blob_bytes) in &a.image.blobs {
            let got = artifacts::blob("GET", &base, a.repo, blob_digest).await;
            assert_eq!(got.status, 200, "{blob_digest}: {got:?}");
            assert_eq!(got.body, blob_bytes, "{blob_digest}");
            assert_eq!(got.digest(), blob_digest);
            let head = artifacts::blob("HEAD", &base, a.repo, blob_digest).await;
            assert_eq!(head.status, 200, "{blob_digest}: {head:?}");
            assert_eq!(head.content_length(), blob_bytes.len());
        }
    }

    // The fields a registry or mirror might drop are in what came through.
    let review = &received[3];
    assert_eq!(review["subject"]["digest"], artifacts[0].image.top_digest());
    assert_eq!(
        review["artifactType"],
        "application/vnd.example.review.v1+json"
    );
    assert_eq!(
        received[1]["artifactType"],
        "application/vnd.example.sbom.v1"
    );
    assert_eq!(received[1]["config"]["mediaType"], EMPTY);
    assert_eq!(received[2]["layers"][0]["mediaType"], THING);
    assert_eq!(received[0]["config"]["mediaType"], HELM_CONFIG);
    // The subject, fetched through the mirror by the digest the referrer names.
    let subject = artifacts::manifest(
        "GET",
        &base,
        "charts/lank8s-demo",
        review["subject"]["digest"].as_str().unwrap(),
    )
    .await;
    assert_eq!(subject.status, 200);
    assert_eq!(&subject.body[..], &artifacts[0].image.top_bytes()[..]);
}
