//! The Docker daemon, which cannot run here, replayed as the request sequence its classic image
//! store sends to a `registry-mirrors` entry: by path prefix (Docker 25+) and by a Host-routed
//! name, plus Docker Hub's 401 for repositories that do not exist.

mod support;

use reqwest::StatusCode;
use reqwest::header::{ACCEPT, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, HOST, RANGE};
use support::fault::manifest_path;
use support::*;

const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// What the classic daemon sends for `docker pull nginx:latest`, with `base` the mirror URL it
/// was configured with and `host` the Host header that URL produces.
async fn pull_like_docker(base: &str, host: Option<&str>, image: &TestImage) {
    let client = http_client();
    let request = |method: reqwest::Method, path: &str| {
        let mut request = client.request(method, format!("{base}{path}"));
        if let Some(host) = host {
            request = request.header(HOST, host);
        }
        request
    };

    // The ping: its answer decides auth. A free mirror must not challenge, or the daemon would
    // send the user's Hub password to the realm.
    let ping = request(reqwest::Method::GET, "/v2/").send().await.unwrap();
    assert_eq!(ping.status(), StatusCode::OK);
    assert!(ping.headers().get("www-authenticate").is_none());

    // The manifest HEAD, one Accept line per type. With the digest present, Content-Type and
    // Content-Length are mandatory.
    let mut head = request(reqwest::Method::HEAD, "/v2/library/nginx/manifests/latest");
    for media_type in [DOCKER_MANIFEST, DOCKER_LIST, OCI_MANIFEST, OCI_INDEX] {
        head = head.header(ACCEPT, media_type);
    }
    let head = head.send().await.unwrap();
    assert_eq!(head.status(), StatusCode::OK);
    let header = |name: &str| head.headers()[name].to_str().unwrap().to_owned();
    assert_eq!(header("docker-content-digest"), image.top_digest());
    assert_eq!(header(CONTENT_TYPE.as_str()), image.top_media_type());
    assert_eq!(
        header(CONTENT_LENGTH.as_str()),
        image.top_bytes().len().to_string()
    );

    // Then everything by digest: the list, one platform's manifest, its blobs.
    for (digest, media_type, bytes) in &image.manifests {
        let path = format!("/v2/library/nginx/manifests/{digest}");
        let got = request(reqwest::Method::GET, &path)
            .header(ACCEPT, media_type.as_str())
            .send()
            .await
            .unwrap();
        assert_eq!(got.status(), StatusCode::OK, "{path}");
        assert_eq!(got.headers()[CONTENT_TYPE], media_type.as_str());
        assert_eq!(got.bytes().await.unwrap(), bytes);
    }
    for (digest, bytes) in &image.blobs {
        let path = format!("/v2/library/nginx/blobs/{digest}");
        let got = request(reqwest::Method::GET, &path).send().await.unwrap();
        assert_eq!(got.status(), StatusCode::OK, "{path}");
        assert_eq!(got.bytes().await.unwrap(), bytes);

        // A resumed download must get 206 from where it left off.
        let resume_at = bytes.len() / 3;
        let resumed = request(reqwest::Method::GET, &path)
            .header(RANGE, format!("bytes={resume_at}-"))
            .send()
            .await
            .unwrap();
        assert_eq!(resumed.status(), StatusCode::PARTIAL_CONTENT, "{path}");
        let expected_range = format!("bytes {resume_at}-{}/{}", bytes.len() - 1, bytes.len());
        assert_eq!(resumed.headers()[CONTENT_RANGE], expected_range.as_str());
        assert_eq!(resumed.bytes().await.unwrap(), bytes.slice(resume_at..));
    }
}

fn hub_table(url: &str) -> String {
    format!("[upstreams.\"docker.io\"]\nurl = \"{url}\"\n")
}

fn assert_routed(lank8s: &Lank8s, via: &str) {
    let lines = lank8s.request_lines();
    let pulls: Vec<_> = lines
        .iter()
        .filter(|l| {
            l["path"]
                .as_str()
                .unwrap_or_default()
                .contains("/library/nginx/")
        })
        .collect();
    assert!(!pulls.is_empty(), "no pull requests logged: {lines:#?}");
    for line in pulls {
        assert_eq!(line["upstream"], "docker.io", "{line}");
        assert_eq!(line["via"], via, "{line}");
        assert_eq!(line["repository"], "library/nginx", "{line}");
        let status = line["status"].as_u64().unwrap();
        assert!(status == 200 || status == 206, "{line}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn docker_25_mirror_with_a_path_prefix() {
    let hub = Registry::start().await;
    let image = TestImage::docker_list(91);
    image.push(&hub, "library/nginx", "latest").await;
    let lank8s = Lank8s::start(&hub_table(&hub.url())).await;

    // registry-mirrors: ["http://<lank8s>/docker.io"] makes the daemon send
    // /docker.io/v2/library/nginx/..., the prefix before /v2.
    pull_like_docker(&format!("{}/docker.io", lank8s.url()), None, &image).await;
    assert_routed(&lank8s, "prefix");
}

#[tokio::test(flavor = "multi_thread")]
async fn any_docker_with_a_host_routed_mirror() {
    let hub = Registry::start().await;
    let image = TestImage::docker_schema2(92);
    image.push(&hub, "library/nginx", "latest").await;
    let lank8s = Lank8s::start_with("domain = \"mirror.test\"", &hub_table(&hub.url())).await;

    // registry-mirrors: ["http://docker.mirror.test"]: no prefix, no ns, only the Host.
    pull_like_docker(&lank8s.url(), Some("docker.mirror.test"), &image).await;
    assert_routed(&lank8s, "host");
}

/// Docker Hub answers 401, even with a valid token, for a repository that does not exist.
/// Clients should hear that it does not exist, not that they must log in to the mirror.
#[tokio::test(flavor = "multi_thread")]
async fn hub_401_for_a_missing_repository_is_name_unknown() {
    let issuer = TokenIssuer::start().await;
    let hub = FaultUpstream::start().await;
    hub.require_bearer(&issuer.realm(), TokenIssuer::SERVICE);
    let missing = manifest_path("library/no-such-image", "latest");
    hub.set(&missing, support::fault::Behaviour::Status(401));
    let lank8s = Lank8s::start(&hub_table(&hub.url())).await;

    let answer = http_client()
        .get(format!(
            "{}/v2/no-such-image/manifests/latest?ns=docker.io",
            lank8s.url()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::NOT_FOUND);
    assert!(answer.headers().get("www-authenticate").is_none());
    let body: serde_json::Value = serde_json::from_slice(&answer.bytes().await.unwrap()).unwrap();
    assert_eq!(body["errors"][0]["code"], "NAME_UNKNOWN");

    // lank8s did answer the challenge (one token) before taking the 401 as final.
    assert_eq!(issuer.granted_requests(), 1);
    assert_eq!(hub.count_path("GET", &missing), 2);
}
