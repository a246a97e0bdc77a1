//! Real containerd (1.6, `ctr images pull`) pulls and unpacks multi-arch images through one lank8s address from four differently named upstreams (registry.k8s.io, gcr.io, docker.io, quay.io), by tag and by digest, with the hosts.toml files `lank8s hosts` writes, in both forms: `?ns=` mirror and `override_path` path prefix. Every request containerd sends must be routed by `ns`.

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::containerd::lank8s_hosts;
use support::runnable::hello_text;
use support::*;

/// One image as containerd names it, and where it really lives.
struct Case {
    /// The registry name containerd sees (and sends as `ns`).
    registry: &'static str,
    /// The repository in the reference containerd pulls.
    repo: &'static str,
    /// The repository lank8s asks upstream for (Docker Hub's `library/` added).
    upstream_repo: &'static str,
    tag: &'static str,
    image: RunnableImage,
    /// Which test registry holds it: 0 or 1.
    store: usize,
}

impl Case {
    fn by_tag(&self) -> String {
        format!("{}/{}:{}", self.registry, self.repo, self.tag)
    }

    fn by_digest(&self) -> String {
        format!(
            "{}/{}@{}",
            self.registry,
            self.repo,
            self.image.top_digest()
        )
    }
}

fn cases() -> Vec<Case> {
    let case = |registry, repo, upstream_repo, tag, oci: bool, store| {
        let label = format!("{registry}/{upstream_repo}");
        Case {
            registry,
            repo,
            upstream_repo,
            tag,
            image: if oci {
                RunnableImage::oci_index(&label)
            } else {
                RunnableImage::docker_list(&label)
            },
            store,
        }
    };
    vec![
        case("registry.k8s.io", "pause", "pause", "3.10", true, 0),
        case(
            "gcr.io",
            "distroless/static",
            "distroless/static",
            "nonroot",
            false,
            0,
        ),
        case(
            "docker.io",
            "library/busybox",
            "library/busybox",
            "1.36",
            false,
            1,
        ),
        // One component: containerd sends `/v2/alpine/...`; lank8s adds `library/`.
        case("docker.io", "alpine", "library/alpine", "3.19", true, 1),
        case("quay.io", "coreos/etcd", "coreos/etcd", "v3.5.0", true, 1),
    ]
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Form {
    /// `[host."<mirror>"]`: containerd sends `/v2/<repo>/...?ns=<registry>`.
    Ns,
    /// `[host."<mirror>/v2/<registry>"] override_path = true`: containerd sends
    /// `/v2/<registry>/<repo>/...?ns=<registry>`.
    Prefix,
}

impl Form {
    fn hosts_dir(self, out: &Path) -> PathBuf {
        match self {
            Form::Ns => out.join("containerd/certs.d"),
            Form::Prefix => out.join("containerd-prefix/certs.d"),
        }
    }
}

/// Which platforms a pull asks for, and so which must be fetched and unpacked.
#[derive(Clone, Copy, Debug)]
enum Platforms {
    Only(&'static str),
    All,
}

impl Platforms {
    fn args(self) -> Vec<String> {
        match self {
            Platforms::Only(arch) => vec!["--platform".into(), format!("linux/{arch}")],
            Platforms::All => vec!["--all-platforms".into()],
        }
    }

    fn includes(self, arch: &str) -> bool {
        match self {
            Platforms::Only(a) => a == arch,
            Platforms::All => true,
        }
    }
}

struct World {
    lank8s: Lank8s,
    tap: RequestTap,
    hosts_out: PathBuf,
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn str_field<'a>(line: &'a Value, field: &str) -> &'a str {
    line[field].as_str().unwrap_or("")
}

/// The `(method, path)` pairs of what the tap saw and of what lank8s logged.
fn method_paths<'a>(pairs: impl Iterator<Item = (&'a str, &'a str)>) -> Vec<(String, String)> {
    let mut v: Vec<_> = pairs.map(|(m, p)| (m.to_string(), p.to_string())).collect();
    v.sort();
    v
}

/// One `ctr images pull` of `reference`, then every check on what it did.
async fn pull_and_verify(
    world: &World,
    containerd: &Containerd,
    form: Form,
    case: &Case,
    reference: &str,
    platforms: Platforms,
) {
    let tapped_before = world.tap.requests().len();
    let logged_before = world.lank8s.request_lines().len();
    let args = platforms.args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let started = Instant::now();
    let pulled = containerd
        .pull(reference, &form.hosts_dir(&world.hosts_out), &args)
        .await;
    let context = || {
        format!(
            "{form:?} pull of {reference} {platforms:?}\nlank8s log (last 30 lines):\n{}\ncontainerd log (last 10 lines):\n{}",
            tail(&world.lank8s.log(), 30),
            tail(&containerd.log(), 10)
        )
    };
    if let Err(e) = pulled {
        panic!("{e}\n{}", context());
    }
    let elapsed = started.elapsed();

    // What containerd sent, as it went over the wire.
    let tapped = world.tap.requests()[tapped_before..].to_vec();
    assert!(
        !tapped.is_empty(),
        "no request reached lank8s\n{}",
        context()
    );
    let path_prefix = match form {
        Form::Ns => format!("/v2/{}/", case.repo),
        Form::Prefix => format!("/v2/{}/{}/", case.registry, case.repo),
    };
    for request in &tapped {
        assert!(
            request.path().starts_with(&path_prefix),
            "{} {}: expected a path under {path_prefix}\n{}",
            request.method,
            request.target,
            context()
        );
        assert_eq!(
            request.query_values("ns"),
            vec![case.registry],
            "{} {}: containerd should name the registry in ?ns=\n{}",
            request.method,
            request.target,
            context()
        );
    }
    eprintln!(
        "{form:?} {reference} {platforms:?}: {} requests in {elapsed:?}",
        tapped.len()
    );
    for request in &tapped {
        eprintln!(
            "    {} {}  Accept: {:?}",
            request.method,
            request.target,
            request.header_values("accept")
        );
    }

    // lank8s logged each of those requests, routed by `ns` to the right upstream.
    // A line is written when its body ends, which may be just after ctr is done.
    let expected_requests = method_paths(tapped.iter().map(|r| (r.method.as_str(), r.path())));
    let logged = eventually(Duration::from_secs(10), || {
        let lines = world.lank8s.request_lines();
        let window = lines.get(logged_before..).unwrap_or_default().to_vec();
        let got = method_paths(
            window
                .iter()
                .map(|l| (str_field(l, "method"), str_field(l, "path"))),
        );
        let matched = got == expected_requests;
        async move { matched.then_some(window) }
    })
    .await
    .unwrap_or_else(|| {
        panic!(
            "lank8s did not log exactly the requests containerd sent: {:#?}\n{}",
            expected_requests,
            context()
        )
    });
    for line in &logged {
        assert_eq!(str_field(line, "upstream"), case.registry, "{line}");
        assert_eq!(str_field(line, "via"), "ns", "{line}");
        assert_eq!(str_field(line, "repository"), case.upstream_repo, "{line}");
        assert_eq!(line["status"], 200, "{line}");
        assert_eq!(str_field(line, "outcome"), "complete", "{line}");
    }

    // Exactly the asked-for platforms were fetched: their configs and layers, each
    // once (every earlier pull's content was removed, so nothing is local).
    let fetched_blobs: Vec<String> = logged
        .iter()
        .filter(|l| l["method"] == "GET" && str_field(l, "path").contains("/blobs/"))
        .map(|l| str_field(l, "reference").to_string())
        .collect();
    let mut expected_blobs: Vec<String> = case
        .image
        .platforms
        .iter()
        .filter(|p| platforms.includes(&p.architecture))
        .flat_map(|p| p.blob_digests())
        .collect();
    expected_blobs.sort();
    let mut sorted_fetched = fetched_blobs.clone();
    sorted_fetched.sort();
    assert_eq!(
        sorted_fetched,
        expected_blobs,
        "blobs fetched\n{}",
        context()
    );
    let manifests: BTreeSet<&str> = logged
        .iter()
        .filter(|l| str_field(l, "path").contains("/manifests/"))
        .map(|l| str_field(l, "reference"))
        .collect();
    let top_reference = reference
        .rsplit_once('@')
        .map(|(_, d)| d)
        .unwrap_or(case.tag);
    assert!(
        manifests.contains(top_reference),
        "no manifest request for {top_reference}: {manifests:?}\n{}",
        context()
    );
    for p in &case.image.platforms {
        assert_eq!(
            manifests.contains(p.manifest_digest.as_str()),
            platforms.includes(&p.architecture),
            "manifest of linux/{} fetched: {manifests:?}\n{}",
            p.architecture,
            context()
        );
    }

    // containerd lists the image under the reference, with the index's digest.
    assert_eq!(
        containerd.image_digest(reference).await.as_deref(),
        Some(case.image.top_digest()),
        "ctr images ls:\n{}",
        containerd.images().await
    );
    // `ctr images check` looks at the host's platform only.
    let host_arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    if platforms.includes(host_arch) {
        if let Err(e) = containerd.check_unpacked(reference).await {
            panic!("{e}\n{}", context());
        }
    }
    // Each asked-for platform is unpacked: both layers applied, in order.
    for p in &case.image.platforms {
        let chain = p.chain_id();
        let unpacked = containerd.has_snapshot(&chain).await;
        assert_eq!(
            unpacked,
            platforms.includes(&p.architecture),
            "snapshot {chain} for linux/{} after {form:?} pull of {reference} {platforms:?}:\n{}",
            p.architecture,
            containerd.snapshots().await
        );
        if !unpacked {
            continue;
        }
        for (path, contents) in &p.files {
            let read = containerd.read_file(&chain, path).await;
            assert_eq!(
                read.as_deref(),
                Ok(contents.as_str()),
                "{path} in linux/{} of {reference}",
                p.architecture
            );
        }
        assert_eq!(
            containerd.read_file(&chain, "/hello.txt").await.as_deref(),
            Ok(hello_text(&case.image.label, &p.architecture).as_str())
        );
    }

    // Remove it with its content and snapshots, so the next pull is a real one.
    containerd
        .remove(reference)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let snapshots = containerd.snapshots().await;
    for p in &case.image.platforms {
        assert!(
            !snapshots.contains(&p.chain_id()),
            "snapshot of linux/{} survived `ctr images rm --sync {reference}`:\n{snapshots}",
            p.architecture
        );
    }
}

/// gcr.io is a sponsor route by default; here every upstream is free.
fn lank8s_config(stores: &[Registry; 2]) -> String {
    format!(
        r#"
[upstreams."registry.k8s.io"]
url = "{a}"

[upstreams."gcr.io"]
url = "{a}"
tier = "free"

[upstreams."docker.io"]
url = "{b}"

[upstreams."quay.io"]
url = "{b}"
"#,
        a = stores[0].url(),
        b = stores[1].url()
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn containerd_pulls_and_unpacks_through_lank8s_routed_by_ns() {
    let stores = [Registry::start().await, Registry::start().await];
    let cases = cases();
    for case in &cases {
        case.image
            .push(&stores[case.store], case.upstream_repo, case.tag)
            .await;
    }
    let lank8s = Lank8s::start(&lank8s_config(&stores)).await;
    // containerd talks to lank8s through a tap that records the exact requests.
    let target = lank8s.host().parse().expect("lank8s address");
    let tap = RequestTap::start(target).await;

    let out = tempfile::tempdir().expect("tempdir");
    lank8s_hosts(lank8s.config_path(), &tap.url(), out.path()).unwrap_or_else(|e| panic!("{e}"));
    for form in [Form::Ns, Form::Prefix] {
        for registry in ["registry.k8s.io", "gcr.io", "docker.io", "quay.io"] {
            let file = form.hosts_dir(out.path()).join(registry).join("hosts.toml");
            let text = std::fs::read_to_string(&file)
                .unwrap_or_else(|e| panic!("lank8s hosts wrote no {}: {e}", file.display()));
            assert!(text.contains(&tap.url()), "{}:\n{text}", file.display());
        }
    }
    let world = World {
        lank8s,
        tap,
        hosts_out: out.path().to_path_buf(),
    };

    // One containerd per hosts.toml form; within each, every image is removed after
    // its checks, so that each pull fetches and unpacks everything again.
    let plan = [
        (Form::Ns, Platforms::Only("amd64"), Platforms::All),
        (Form::Prefix, Platforms::Only("arm64"), Platforms::All),
    ];
    for (form, tag_platforms, digest_platforms) in plan {
        let containerd = Containerd::start().await;
        for case in &cases {
            pull_and_verify(
                &world,
                &containerd,
                form,
                case,
                &case.by_tag(),
                tag_platforms,
            )
            .await;
            pull_and_verify(
                &world,
                &containerd,
                form,
                case,
                &case.by_digest(),
                digest_platforms,
            )
            .await;
        }
        assert_eq!(
            containerd.images().await.lines().count(),
            1,
            "only the header should be left:\n{}",
            containerd.images().await
        );
    }

    // Every name was routed to its own upstream, and Docker Hub's one-component name
    // reached the registry with `library/` added.
    let mut upstreams_seen = BTreeSet::new();
    for line in world.lank8s.request_lines() {
        if str_field(&line, "path").starts_with("/v2/") {
            assert_eq!(str_field(&line, "via"), "ns", "{line}");
            upstreams_seen.insert(str_field(&line, "upstream").to_string());
        }
    }
    assert_eq!(
        upstreams_seen,
        ["docker.io", "gcr.io", "quay.io", "registry.k8s.io"]
            .map(String::from)
            .into(),
    );
    for case in &cases {
        let registry = &stores[case.store];
        registry.settle().await;
        let wanted = format!("/v2/{}/manifests/", case.upstream_repo);
        assert!(
            registry.count_requests("GET", &wanted) + registry.count_requests("HEAD", &wanted) > 0,
            "{} never asked for {wanted}:\n{}",
            registry.url(),
            tail(&registry.access_log(), 20)
        );
    }
    assert_eq!(
        stores[1].count_requests("GET", "/v2/alpine/"),
        0,
        "lank8s passed a one-component Docker Hub name upstream without library/"
    );
}
