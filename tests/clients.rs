//! kubeadm `--image-repository=<lank8s>`: the exact names kubeadm asks a custom repository for, for a v1.20 and a v1.31 control plane, pulled with skopeo through lank8s from a registry standing in for registry.k8s.io, byte for byte; CoreDNS flat (`coredns:<tag>`) answered from `coredns/coredns` by the default alias only when upstream has no flat tag.

mod support;

use support::artifacts::{self, Fetched};
use support::images::OCI_INDEX;
use support::*;

/// What `kubeadm config images list --image-repository=R --kubernetes-version=V`
/// prints, after `R/`: (kubeadm's name, tag, where registry.k8s.io keeps it).
const KUBEADM_1_20: [(&str, &str, &str); 7] = [
    ("kube-apiserver", "v1.20.15", "kube-apiserver"),
    (
        "kube-controller-manager",
        "v1.20.15",
        "kube-controller-manager",
    ),
    ("kube-scheduler", "v1.20.15", "kube-scheduler"),
    ("kube-proxy", "v1.20.15", "kube-proxy"),
    ("pause", "3.2", "pause"),
    ("etcd", "3.4.13-0", "etcd"),
    // Before CoreDNS 1.8 kubeadm and the registry both used a flat name.
    ("coredns", "1.7.0", "coredns"),
];

const KUBEADM_1_31: [(&str, &str, &str); 7] = [
    ("kube-apiserver", "v1.31.0", "kube-apiserver"),
    (
        "kube-controller-manager",
        "v1.31.0",
        "kube-controller-manager",
    ),
    ("kube-scheduler", "v1.31.0", "kube-scheduler"),
    ("kube-proxy", "v1.31.0", "kube-proxy"),
    ("pause", "3.10", "pause"),
    ("etcd", "3.5.15-0", "etcd"),
    // kubeadm asks a custom repository for a flat name; registry.k8s.io has
    // only the nested one.
    ("coredns", "v1.11.3", "coredns/coredns"),
];

struct Wanted {
    name: &'static str,
    tag: &'static str,
    upstream_repo: &'static str,
    image: TestImage,
}

/// The v1.20 images as Docker manifest lists (as they were published), the
/// v1.31 ones as OCI indexes; every image distinct.
fn wanted() -> Vec<Wanted> {
    let mut all = Vec::new();
    for (i, (name, tag, upstream_repo)) in KUBEADM_1_20.into_iter().enumerate() {
        let image = TestImage::docker_list(1000 + i as u64);
        all.push(Wanted {
            name,
            tag,
            upstream_repo,
            image,
        });
    }
    for (i, (name, tag, upstream_repo)) in KUBEADM_1_31.into_iter().enumerate() {
        let image = TestImage::oci_index(2000 + i as u64);
        all.push(Wanted {
            name,
            tag,
            upstream_repo,
            image,
        });
    }
    all
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

async fn pull_and_compare(lank8s: &Lank8s, registry: &Registry, src: &str, image: &TestImage) {
    let out = tempfile::tempdir().expect("tempdir");
    let dest = out.path().join("image");
    if let Err(e) = skopeo_copy_all(src, &dest).await {
        panic!(
            "{e}\nlank8s log:\n{}\nupstream access log:\n{}",
            tail(&lank8s.log(), 30),
            tail(&registry.access_log(), 20)
        );
    }
    if let Err(e) = check_dir_against_image(&dest, image) {
        panic!("{src} is not what was pushed:\n{e}");
    }
}

fn upstream_statuses(registry: &Registry, method: &str, path: &str) -> Vec<u16> {
    registry
        .access_entries()
        .iter()
        .filter(|e| e.method == method && e.path == path)
        .map(|e| e.status)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn kubeadm_image_repository_names_pull_through_lank8s() {
    let registry = Registry::start().await;
    let wanted = wanted();
    for w in &wanted {
        w.image.push(&registry, w.upstream_repo, w.tag).await;
    }
    let lank8s = Lank8s::start(&format!(
        "[upstreams.\"registry.k8s.io\"]\nurl = \"{}\"\n",
        registry.url()
    ))
    .await;
    let host = lank8s.host();

    // The flat CoreDNS that upstream lacks goes first and cold by digest, so
    // that manifests by digest and blobs too must be found through the alias.
    let new_coredns = wanted.iter().find(|w| w.tag == "v1.11.3").unwrap();
    let digest_src = format!("docker://{host}/coredns@{}", new_coredns.image.top_digest());
    pull_and_compare(&lank8s, &registry, &digest_src, &new_coredns.image).await;

    for w in &wanted {
        let by_tag = format!("docker://{host}/{}:{}", w.name, w.tag);
        let by_digest = format!("docker://{host}/{}@{}", w.name, w.image.top_digest());
        pull_and_compare(&lank8s, &registry, &by_tag, &w.image).await;
        pull_and_compare(&lank8s, &registry, &by_digest, &w.image).await;
    }
    // The nested name kubeadm's defaults use works as well.
    for src in [
        format!("docker://{host}/coredns/coredns:v1.11.3"),
        format!(
            "docker://{host}/coredns/coredns@{}",
            new_coredns.image.top_digest()
        ),
    ] {
        pull_and_compare(&lank8s, &registry, &src, &new_coredns.image).await;
    }

    // Every kubeadm name was routed to the default upstream under its own name.
    for w in &wanted {
        let path = format!("/v2/{}/manifests/{}", w.name, w.tag);
        let line = lank8s
            .wait_for_log_line(std::time::Duration::from_secs(5), |l| {
                l["message"] == "request" && l["path"] == path.as_str()
            })
            .await
            .unwrap_or_else(|| panic!("no request line for {path}\n{}", lank8s.log()));
        assert_eq!(line["status"], 200, "{line}");
        assert_eq!(line["upstream"], "registry.k8s.io", "{line}");
        assert_eq!(line["via"], "default", "{line}");
        assert_eq!(line["repository"], w.name, "{line}");
    }

    // The flat old tag was answered by the flat repository and never aliased;
    // the new one was asked flat first, then nested.
    registry.settle().await;
    assert_eq!(
        upstream_statuses(&registry, "GET", "/v2/coredns/manifests/1.7.0"),
        [200],
        "{}",
        registry.access_log()
    );
    assert_eq!(
        registry.count_requests("GET", "/v2/coredns/coredns/manifests/1.7.0")
            + registry.count_requests("HEAD", "/v2/coredns/coredns/manifests/1.7.0"),
        0,
        "{}",
        registry.access_log()
    );
    assert_eq!(
        upstream_statuses(&registry, "GET", "/v2/coredns/manifests/v1.11.3"),
        [404]
    );
    assert_eq!(
        upstream_statuses(&registry, "GET", "/v2/coredns/coredns/manifests/v1.11.3"),
        [200, 200],
        "once through the alias, once for the nested name (another tag record)"
    );
    let by_digest = format!("manifests/{}", new_coredns.image.top_digest());
    assert_eq!(
        upstream_statuses(&registry, "GET", &format!("/v2/coredns/{by_digest}")),
        [404]
    );
    assert_eq!(
        upstream_statuses(
            &registry,
            "GET",
            &format!("/v2/coredns/coredns/{by_digest}")
        ),
        [200]
    );

    // What a runtime's resolver sees for the flat name: the nested image's
    // index, with its digest, type and length.
    let image = &new_coredns.image;
    let get = artifacts::manifest("GET", &lank8s.url(), "coredns", "v1.11.3").await;
    let head = artifacts::manifest("HEAD", &lank8s.url(), "coredns", "v1.11.3").await;
    for (answer, body) in [(&get, &image.top_bytes()[..]), (&head, &b""[..])] {
        assert_index_answer(answer, image);
        assert_eq!(&answer.body[..], body);
    }
}

fn assert_index_answer(answer: &Fetched, image: &TestImage) {
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.digest(), image.top_digest());
    assert_eq!(answer.content_type(), OCI_INDEX);
    assert_eq!(answer.content_length(), image.top_bytes().len());
    assert_eq!(answer.header("oci-namespace"), "registry.k8s.io");
}
