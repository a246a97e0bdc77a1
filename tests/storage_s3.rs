//! Pulls through lank8s with its cache in a real S3 store (Garage): every kind of image, by tag and by digest, cold then warm, arrives byte-identical; the bucket holds every blob and manifest under its key; warm pulls fetch nothing upstream and are served from the bucket, streamed by lank8s or redirected to presigned URLs.

mod support;

use support::fault::files_under;
use support::storage::*;
use support::*;

/// Over 100 MiB, and not a multiple of any likely chunk or part size.
const LARGE_LAYER: usize = 105 * 1024 * 1024 + 123;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Stream,
    Redirect,
}

impl Mode {
    fn as_str(self) -> &'static str {
        match self {
            Mode::Stream => "stream",
            Mode::Redirect => "redirect",
        }
    }
}

type MakeImage = fn(u64) -> TestImage;

struct Case {
    repo: String,
    image: TestImage,
    /// Which reference form makes the cold pull; the other is only ever pulled warm.
    digest_first: bool,
}

/// Small images in both orders, so that a cold tag pull and a cold digest pull happen
/// for every manifest kind; the large image once, by tag first.
fn cases(seed: u64) -> Vec<Case> {
    let kinds: [(&str, MakeImage); 3] = [
        ("oci-index", TestImage::oci_index),
        ("docker-list", TestImage::docker_list),
        ("docker-schema2", TestImage::docker_schema2),
    ];
    let mut cases = Vec::new();
    for (i, (name, make)) in kinds.into_iter().enumerate() {
        for digest_first in [false, true] {
            let suffix = if digest_first { "-by-digest" } else { "" };
            cases.push(Case {
                repo: format!("s3/{name}{suffix}"),
                image: make(seed + 2 * i as u64 + u64::from(digest_first)),
                digest_first,
            });
        }
    }
    cases.push(Case {
        repo: "s3/large".into(),
        image: TestImage::large(seed + 10, LARGE_LAYER),
        digest_first: false,
    });
    cases
}

struct Setup {
    mode: Mode,
    garage: Garage,
    registry: Registry,
    lank8s: Lank8s,
    cases: Vec<Case>,
}

async fn setup(mode: Mode, seed: u64) -> Setup {
    let garage = Garage::start().await;
    let registry = Registry::start().await;
    let cases = cases(seed);
    for case in &cases {
        case.image.push(&registry, &case.repo, "v1").await;
    }
    let lank8s = start_on_s3(&registry, &garage, mode.as_str()).await;
    Setup {
        mode,
        garage,
        registry,
        lank8s,
        cases,
    }
}

fn by_tag(lank8s: &Lank8s, case: &Case) -> String {
    format!("docker://{}/{}:v1", lank8s.host(), case.repo)
}

fn by_digest(lank8s: &Lank8s, case: &Case) -> String {
    let digest = case.image.top_digest();
    format!("docker://{}/{}@{digest}", lank8s.host(), case.repo)
}

async fn pull_cold_then_warm(s: &Setup, case: &Case) {
    let (first, second) = match case.digest_first {
        true => (by_digest(&s.lank8s, case), by_tag(&s.lank8s, case)),
        false => (by_tag(&s.lank8s, case), by_digest(&s.lank8s, case)),
    };
    cold_pull(s, case, &first).await;
    for warm in [&first, &second, &first] {
        warm_pull(s, case, warm).await;
    }
}

/// A cold pull streams every blob from upstream as it arrives (one upstream GET each,
/// never a redirect) and leaves every blob and manifest in the bucket.
async fn cold_pull(s: &Setup, case: &Case, src: &str) {
    let rec = pull_recorded(&s.lank8s, &s.registry, src, &case.image).await;
    let mut expected: Vec<String> = case
        .image
        .blobs
        .iter()
        .map(|(digest, _)| format!("/v2/{}/blobs/{digest}", case.repo))
        .collect();
    expected.sort();
    assert_eq!(rec.upstream_blob_gets(), expected, "cold pull of {src}");
    let blobs = rec.blob_gets();
    assert_eq!(blobs.len(), case.image.blobs.len(), "cold pull of {src}");
    for line in blobs {
        assert_eq!(
            (&line["status"], &line["cache"], &line["redirect"]),
            (&200.into(), &"miss".into(), &false.into()),
            "cold blob GET of {src}: {line}"
        );
        assert_eq!(line["bytes"], blob_size(line, &case.image), "{line}");
    }
    assert_image_stored(&s.garage, &case.image).await;
}

/// A warm pull fetches no blob upstream; every blob is a cache hit, read from the
/// bucket by lank8s (stream) or by the client through a presigned URL (redirect).
async fn warm_pull(s: &Setup, case: &Case, src: &str) {
    let s3_before = s.garage.s3_requests().len();
    let rec = pull_recorded(&s.lank8s, &s.registry, src, &case.image).await;
    let s3 = s.garage.s3_requests().split_off(s3_before);
    assert_eq!(
        rec.upstream_blob_gets(),
        Vec::<String>::new(),
        "warm pull of {src} fetched blobs upstream"
    );
    for line in rec.manifest_lines() {
        if line["reference"].as_str().is_some_and(|r| r.contains(':')) {
            assert_eq!(line["cache"], "hit", "manifest by digest: {line}");
        }
    }
    let blobs = rec.blob_gets();
    assert_eq!(blobs.len(), case.image.blobs.len(), "warm pull of {src}");
    // The bucket GETs for each blob key: (signed by lank8s, presigned for a client).
    let gets = |key: &str| {
        let path = object_path(&s.garage, key);
        let for_key: Vec<_> = s3
            .iter()
            .filter(|r| r.method == "GET" && r.path.split('?').next() == Some(path.as_str()))
            .collect();
        let signed = for_key.iter().filter(|r| r.key_id.is_some()).count();
        (signed, for_key.len() - signed)
    };
    let (mut redirected, mut total) = (0, 0);
    for line in &blobs {
        assert_eq!(line["cache"], "hit", "warm blob GET of {src}: {line}");
        let digest = line["reference"].as_str().unwrap();
        let size = blob_size(line, &case.image);
        total += size;
        match s.mode {
            Mode::Stream => {
                assert_eq!(line["status"], 200, "{line}");
                assert_eq!(line["redirect"], false, "{line}");
                assert_eq!(line["bytes"], size, "{line}");
                let (signed, presigned) = gets(&blob_key(digest));
                assert!(signed >= 1, "lank8s read no {digest} from the bucket");
                assert_eq!(presigned, 0, "stream mode made presigned GETs: {s3:#?}");
            }
            Mode::Redirect if line["redirect"] == true => {
                redirected += size;
                assert_eq!(line["status"], 307, "{line}");
                assert_eq!(
                    gets(&blob_key(digest)),
                    (0, 1),
                    "bucket GETs of {digest}: lank8s reads nothing, the client one presigned \
                     GET; requests: {s3:#?}"
                );
            }
            Mode::Redirect => {}
        }
    }
    if s.mode == Mode::Redirect {
        assert!(
            redirected * 100 >= total * 99,
            "warm pull of {src}: {redirected} of {total} blob bytes went by redirect: {blobs:#?}"
        );
    }
}

/// After all pulls the bucket holds every blob, manifest and tag record, and
/// nothing else; the data directory holds no content.
async fn assert_bucket_holds_exactly(s: &Setup) {
    let mut blobs: Vec<_> = s
        .cases
        .iter()
        .flat_map(|c| blob_objects(&c.image))
        .collect();
    let mut manifests: Vec<_> = (s.cases.iter())
        .flat_map(|c| manifest_objects(&c.image))
        .collect();
    let mut tags: Vec<_> = s.cases.iter().map(|c| tag_key(&c.repo, "v1")).collect();
    blobs.sort();
    manifests.sort();
    tags.sort();
    assert_eq!(s.garage.list_objects("blobs/").await, blobs);
    assert_eq!(s.garage.list_objects("manifests/").await, manifests);
    let stored_tags = s.garage.list_objects("tags/").await;
    let tag_keys: Vec<_> = stored_tags.iter().map(|(k, _)| k.clone()).collect();
    assert_eq!(tag_keys, tags);
    assert_eq!(
        s.garage.list_objects("").await.len(),
        blobs.len() + manifests.len() + tags.len(),
        "objects outside blobs/, manifests/ and tags/"
    );
    for case in &s.cases {
        let record = s.garage.get_object(&tag_key(&case.repo, "v1")).await;
        let record: serde_json::Value = serde_json::from_slice(&record.unwrap()).unwrap();
        assert_eq!(record["digest"], case.image.top_digest(), "{record}");
    }
    let data = s.lank8s.data_dir();
    for dir in ["blobs", "manifests", "tags", "tmp"] {
        assert_eq!(
            files_under(&data.join(dir)),
            Vec::<std::path::PathBuf>::new(),
            "local {dir}/ with storage on s3"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn s3_pulls_are_byte_identical_stored_under_their_keys_and_warm_from_the_bucket() {
    let s = setup(Mode::Stream, 300).await;
    for case in &s.cases {
        pull_cold_then_warm(&s, case).await;
    }
    assert_bucket_holds_exactly(&s).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn redirect_mode_sends_warm_blobs_to_presigned_urls_and_streams_cold_ones() {
    let s = setup(Mode::Redirect, 400).await;
    for case in &s.cases {
        pull_cold_then_warm(&s, case).await;
    }
    assert_bucket_holds_exactly(&s).await;

    let case = s.cases.last().unwrap();
    let digest = case.image.largest_blob_digest();
    let bytes = case.image.blob(digest).unwrap();
    let key = blob_key(digest);
    let url = format!("{}/v2/{}/blobs/{digest}", s.lank8s.url(), case.repo);
    let client = http_client();

    // HEAD is lank8s's own answer: the size, no redirect.
    let head = client.head(&url).send().await.unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(head.headers()["content-length"], bytes.len().to_string());
    assert_eq!(head.headers()["docker-content-digest"], digest);
    assert!(head.headers().get("location").is_none(), "{head:?}");

    // GET is a 307 to a presigned URL on the store, which carries its own signature.
    let location = |resp: &reqwest::Response| {
        assert_eq!(resp.status(), 307, "{resp:?}");
        resp.headers()["location"].to_str().unwrap().to_string()
    };
    let presigned_before = presigned_gets(&s.garage, &key);
    let resp = client.get(&url).send().await.unwrap();
    let target = location(&resp);
    assert_eq!(resp.bytes().await.unwrap().len(), 0, "307 body");
    let prefix = format!("{}{}?", s.garage.endpoint(), object_path(&s.garage, &key));
    assert!(target.starts_with(&prefix), "{target} is not {prefix}…");
    for param in ["X-Amz-Credential=", "X-Amz-Signature=", "X-Amz-Expires=600"] {
        assert!(target.contains(param), "{target} lacks {param}");
    }
    // The client follows it without any Authorization header.
    let followed = client.get(&target).send().await.unwrap();
    assert_eq!(followed.status(), 200);
    assert_eq!(&followed.bytes().await.unwrap(), bytes);

    // A Range request is redirected too, and the store honours the range.
    let resp = client
        .get(&url)
        .header("range", "bytes=10-19")
        .send()
        .await
        .unwrap();
    let target = location(&resp);
    let part = client
        .get(&target)
        .header("range", "bytes=10-19")
        .send()
        .await
        .unwrap();
    assert_eq!(part.status(), 206);
    let total = bytes.len();
    assert_eq!(
        part.headers()["content-range"],
        format!("bytes 10-19/{total}")
    );
    assert_eq!(&part.bytes().await.unwrap()[..], &bytes[10..20]);
    assert_eq!(presigned_gets(&s.garage, &key), presigned_before + 2);
}

/// GETs of `key` that came with a presigned URL (no signing key in the header).
fn presigned_gets(garage: &Garage, key: &str) -> usize {
    let path = object_path(garage, key);
    (garage.s3_requests().iter())
        .filter(|r| r.method == "GET" && r.key_id.is_none())
        .filter(|r| r.path.split('?').next() == Some(path.as_str()))
        .count()
}
