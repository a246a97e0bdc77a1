//! Routing between two real upstreams by `?ns=`, Host header, path prefix and default, and refusal of registries that are not mirrored.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::*;

const HUB: &str = "docker.io";
const K8S: &str = "registry.k8s.io";

/// Two real registries behind one lank8s with `domain = "mirror.test"`. Each
/// registry also holds the other's names with other content, so a misrouted
/// request gets the wrong bytes rather than only a 404.
struct Setup {
    k8s: Registry,
    hub: Registry,
    lank8s: Lank8s,
    app: TestImage,
    nginx: TestImage,
}

async fn setup() -> Setup {
    let (k8s, hub) = tokio::join!(Registry::start(), Registry::start());
    let (app, nginx) = (TestImage::oci_index(61), TestImage::docker_list(62));
    let (decoy_k8s, decoy_hub) = (TestImage::docker_schema2(63), TestImage::docker_schema2(64));
    app.push(&k8s, "k8s/app", "v1").await;
    nginx.push(&hub, "library/nginx", "v1").await;
    decoy_k8s.push(&k8s, "library/nginx", "v1").await;
    decoy_k8s.push(&k8s, "nginx", "v1").await;
    decoy_hub.push(&hub, "k8s/app", "v1").await;
    let tables = format!(
        "[upstreams.\"{K8S}\"]\nurl = \"{}\"\n[upstreams.\"{HUB}\"]\nurl = \"{}\"\n",
        k8s.url(),
        hub.url()
    );
    let lank8s = Lank8s::start_with("domain = \"mirror.test\"", &tables).await;
    Setup {
        k8s,
        hub,
        lank8s,
        app,
        nginx,
    }
}

struct Answer {
    status: u16,
    namespace: Option<String>,
    body: bytes::Bytes,
    /// The lank8s log line for this request.
    line: Value,
}

impl Setup {
    /// GETs `path_and_query` (sent as written, so percent-escapes stay) with an optional Host.
    async fn get(&self, path_and_query: &str, host: Option<&str>) -> Answer {
        let before = self.lank8s.request_lines().len();
        let mut request = http_client()
            .get(format!("{}{path_and_query}", self.lank8s.url()))
            .timeout(Duration::from_secs(30));
        if let Some(host) = host {
            request = request.header("host", host);
        }
        let response = request.send().await.expect("request to lank8s");
        let status = response.status().as_u16();
        let namespace = response
            .headers()
            .get("oci-namespace")
            .map(|v| v.to_str().unwrap().to_owned());
        let body = response.bytes().await.expect("body");
        let line = eventually(Duration::from_secs(5), || {
            let line = self.lank8s.request_lines().into_iter().nth(before);
            async move { line }
        })
        .await
        .unwrap_or_else(|| panic!("no log line for {path_and_query}"));
        Answer {
            status,
            namespace,
            body,
            line,
        }
    }

    /// Asserts that the request was routed to `upstream` as `repository`, via
    /// `via`, and got `want` exactly.
    async fn assert_routed(
        &self,
        path_and_query: &str,
        host: Option<&str>,
        (upstream, repository, via): (&str, &str, &str),
        want: &[u8],
    ) {
        let a = self.get(path_and_query, host).await;
        let what = format!("{path_and_query} with Host {host:?}: {}", a.line);
        assert_eq!(a.status, 200, "{what}");
        assert!(a.body == want, "{what}: wrong content (misrouted?)");
        assert_eq!(a.namespace.as_deref(), Some(upstream), "{what}");
        let got = (&a.line["upstream"], &a.line["repository"], &a.line["via"]);
        assert_eq!(
            got,
            (&upstream.into(), &repository.into(), &via.into()),
            "{what}"
        );
    }

    async fn requests_seen(&self) -> (usize, usize) {
        tokio::join!(self.k8s.settle(), self.hub.settle());
        (
            self.k8s.access_entries().len(),
            self.hub.access_entries().len(),
        )
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn ns_names_docker_hub_in_every_spelling() {
    let s = setup().await;
    let top = s.nginx.top_bytes();
    let spellings = [
        "docker.io",
        "index.docker.io",
        "registry-1.docker.io",
        "DOCKER.IO",
        "docker%2Eio",
        "index%2edocker%2Eio",
        "registry-1%2Edocker%2Eio",
        "%64%6F%63%6B%65%72%2E%69%6F",
    ];
    for ns in spellings {
        for repo in ["nginx", "library/nginx"] {
            let path = format!("/v2/{repo}/manifests/v1?ns={ns}");
            s.assert_routed(&path, None, (HUB, "library/nginx", "ns"), top)
                .await;
        }
    }
    let child = &s.nginx.manifests[1];
    let path = format!("/v2/nginx/manifests/{}?ns=docker.io", child.0);
    s.assert_routed(&path, None, (HUB, "library/nginx", "ns"), &child.2)
        .await;
    let (digest, blob) = &s.nginx.blobs[0];
    let path = format!("/v2/nginx/blobs/{digest}?ns=docker.io");
    s.assert_routed(&path, None, (HUB, "library/nginx", "ns"), blob)
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn host_header_picks_the_upstream() {
    let s = setup().await;
    let (nginx, app) = (s.nginx.top_bytes(), s.app.top_bytes());
    let cases = [
        (
            "docker.mirror.test",
            "/v2/nginx/manifests/v1",
            (HUB, "library/nginx", "host"),
            nginx,
        ),
        (
            "docker.mirror.test:5000",
            "/v2/library/nginx/manifests/v1",
            (HUB, "library/nginx", "host"),
            nginx,
        ),
        (
            "mirror.test",
            "/v2/k8s/app/manifests/v1",
            (K8S, "k8s/app", "host"),
            app,
        ),
        (
            "registry.mirror.test",
            "/v2/k8s/app/manifests/v1",
            (K8S, "k8s/app", "host"),
            app,
        ),
        (
            "REGISTRY.Mirror.Test:443",
            "/v2/k8s/app/manifests/v1",
            (K8S, "k8s/app", "host"),
            app,
        ),
        (
            "nope.mirror.test",
            "/v2/k8s/app/manifests/v1",
            (K8S, "k8s/app", "default"),
            app,
        ),
        (
            "elsewhere.example",
            "/v2/k8s/app/manifests/v1",
            (K8S, "k8s/app", "default"),
            app,
        ),
    ];
    for (host, path, route, want) in cases {
        s.assert_routed(path, Some(host), route, want).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn path_prefix_and_override_path_pick_the_upstream() {
    let s = setup().await;
    let (nginx, app) = (s.nginx.top_bytes(), s.app.top_bytes());
    let cases = [
        (
            "/v2/docker.io/library/nginx/manifests/v1",
            (HUB, "library/nginx", "prefix"),
            nginx,
        ),
        (
            "/v2/docker.io/nginx/manifests/v1",
            (HUB, "library/nginx", "prefix"),
            nginx,
        ),
        (
            "/v2/index.docker.io/library/nginx/manifests/v1",
            (HUB, "library/nginx", "prefix"),
            nginx,
        ),
        (
            "/v2/registry.k8s.io/k8s/app/manifests/v1",
            (K8S, "k8s/app", "prefix"),
            app,
        ),
        (
            "/v2/registry.k8s.io/k8s/app/manifests/v1?ns=registry.k8s.io",
            (K8S, "k8s/app", "ns"),
            app,
        ),
        (
            "/v2/docker.io/library/nginx/manifests/v1?ns=docker.io",
            (HUB, "library/nginx", "ns"),
            nginx,
        ),
        ("/v2/k8s/app/manifests/v1", (K8S, "k8s/app", "default"), app),
    ];
    for (path, route, want) in cases {
        s.assert_routed(path, None, route, want).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_registries_are_refused_without_an_outbound_request() {
    let s = setup().await;
    let before = s.requests_seen().await;
    let digest = digest_of(b"anything");
    let cases = [
        ("/v2/x/manifests/v1?ns=evil.example".to_owned(), None),
        ("/v2/x/manifests/v1?ns=evil%2Eexample".into(), None),
        ("/v2/evil.example/x/manifests/v1".into(), None),
        (format!("/v2/evil.example/x/blobs/{digest}"), None),
        ("/v2/evil.example/x/tags/list".into(), None),
        ("/v2/x/tags/list?ns=evil.example".into(), None),
        ("/v2/localhost/x/manifests/v1".into(), None),
        (
            "/v2/nginx/manifests/v1?ns=evil.example".into(),
            Some("docker.mirror.test"),
        ),
    ];
    for (path, host) in &cases {
        let a = s.get(path, *host).await;
        let what = format!("{path} with Host {host:?}");
        assert_eq!(a.status, 404, "{what}");
        let body: Value = serde_json::from_slice(&a.body).expect("OCI error JSON");
        assert_eq!(body["errors"][0]["code"], "NAME_UNKNOWN", "{what}: {body}");
    }
    assert_eq!(s.requests_seen().await, before, "an upstream was contacted");
}

#[tokio::test(flavor = "multi_thread")]
async fn skopeo_pulls_through_a_path_prefix() {
    let s = setup().await;
    let host = s.lank8s.host();
    let sources = [
        (
            format!("docker://{host}/docker.io/library/nginx:v1"),
            &s.nginx,
        ),
        (
            format!(
                "docker://{host}/docker.io/library/nginx@{}",
                s.nginx.top_digest()
            ),
            &s.nginx,
        ),
        (
            format!("docker://{host}/registry.k8s.io/k8s/app:v1"),
            &s.app,
        ),
    ];
    for (src, image) in sources {
        let out = tempfile::tempdir().expect("tempdir");
        let dest = out.path().join("image");
        if let Err(e) = skopeo_copy_all(&src, &dest).await {
            panic!("{e}\nlank8s log:\n{}", s.lank8s.log());
        }
        compare_dir_with_image(&dest, image);
    }
    s.hub.settle().await;
    let blob = s.nginx.largest_blob_digest();
    let fetched = s
        .hub
        .count_requests("GET", &format!("/v2/library/nginx/blobs/{blob}"));
    assert_eq!(
        fetched, 1,
        "docker.io upstream should have served {blob} once"
    );
}
