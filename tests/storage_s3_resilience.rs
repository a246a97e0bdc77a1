//! lank8s on a real S3 store (Garage) when things go wrong or are shared: a blob cut mid-fill leaves nothing in the bucket, not even an unfinished multipart upload; a second replica on the same bucket serves what the first fetched without asking upstream; a stopped store degrades to streaming from upstream, and fills are stored again once it is back.

mod support;

use std::time::Duration;

use support::fault::{blob_path, files_under, upstream_table};
use support::storage::*;
use support::*;

const MIB: usize = 1024 * 1024;
const REPO: &str = "s3/faults";

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(60))
        .build()
        .expect("build reqwest client")
}

/// A blob whose upstream stream is cut after `cut_after` bytes: the client's answer
/// fails, and the bucket gets neither the object nor an unfinished upload; once the
/// upstream is healthy the next GET stores it. Returns Garage's requests on the key.
async fn cut_fill_leaves_nothing(size: usize, cut_after: usize, seed: u64) -> Vec<String> {
    let garage = Garage::start().await;
    let fault = FaultUpstream::start().await;
    let image = TestImage::large(seed, size);
    fault.serve_image(&image, REPO, "v1");
    let digest = image.largest_blob_digest().to_string();
    let expected = image.blob(&digest).unwrap().clone();
    let key = blob_key(&digest);
    let path = blob_path(REPO, &digest);
    fault.set(&path, Behaviour::CutAfter(cut_after));
    let tables = format!(
        "{}{}",
        upstream_table(&fault.url(), ""),
        s3_tables(&garage, "stream")
    );
    let lank8s = Lank8s::start(&tables).await;
    let url = format!("{}{path}", lank8s.url());

    let resp = client().get(&url).send().await.unwrap();
    assert_eq!(resp.status(), 200, "the fill starts streaming");
    assert_eq!(resp.headers()["content-length"], size.to_string());
    let body = resp.bytes().await;
    assert!(body.is_err(), "a cut fill must fail the answer: {body:?}");
    let line = lank8s
        .wait_for_log_line(Duration::from_secs(10), |l| {
            l["message"] == "request" && l["path"] == path.as_str()
        })
        .await
        .unwrap_or_else(|| panic!("no request line for {path}\n{}", lank8s.log()));
    assert_eq!(line["outcome"], "aborted", "{line}");
    lank8s
        .wait_for_log_line(Duration::from_secs(10), |l| {
            l["message"] == "fill failed; nothing was cached"
        })
        .await
        .unwrap_or_else(|| panic!("no fill failure logged\n{}", lank8s.log()));

    // The abort of an upload runs after the fill has failed.
    let settled = eventually(Duration::from_secs(10), || async {
        multipart_uploads(&garage).await.is_empty().then_some(())
    })
    .await;
    assert!(
        settled.is_some(),
        "unfinished multipart uploads left in the bucket: {:?}",
        multipart_uploads(&garage).await
    );
    assert_eq!(garage.list_objects("blobs/").await, Vec::new());
    assert_eq!(garage.list_objects(&key).await, Vec::new());
    let data = lank8s.data_dir();
    for dir in ["blobs", "tmp"] {
        assert_eq!(
            files_under(&data.join(dir)),
            Vec::<std::path::PathBuf>::new(),
            "local {dir}/"
        );
    }
    let object = object_path(&garage, &key);
    let on_key: Vec<String> = (garage.s3_requests().into_iter())
        .filter(|r| r.path.split('?').next() == Some(object.as_str()))
        .map(|r| format!("{} {}", r.method, r.path))
        .collect();

    fault.clear(&path);
    let again = client().get(&url).send().await.unwrap();
    assert_eq!(again.status(), 200);
    let body = again.bytes().await.expect("body after the fault cleared");
    assert_eq!(
        (body.len(), digest_of(&body)),
        (expected.len(), digest.clone())
    );
    assert_eq!(fault.count_path("GET", &path), 2, "one GET per attempt");
    let stored = eventually(Duration::from_secs(10), || async {
        let objects = garage.list_objects("blobs/").await;
        (!objects.is_empty()).then_some(objects)
    })
    .await;
    assert_eq!(stored, Some(vec![(key.clone(), expected.len() as u64)]));
    assert_eq!(
        garage.get_object(&key).await.as_deref(),
        Some(&expected[..])
    );
    assert_eq!(multipart_uploads(&garage).await, Vec::<String>::new());
    on_key
}

#[tokio::test(flavor = "multi_thread")]
async fn a_blob_cut_mid_fill_is_not_stored() {
    cut_fill_leaves_nothing(3 * MIB + 7, MIB, 1).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_blob_cut_after_uploaded_parts_leaves_no_multipart_upload() {
    // Past lank8s's 8 MiB upload parts, so parts were sent before the cut.
    let requests = cut_fill_leaves_nothing(20 * MIB + 7, 17 * MIB, 2).await;
    let started = requests
        .iter()
        .any(|r| r.starts_with("POST ") && r.ends_with("?uploads"));
    let parts = requests
        .iter()
        .filter(|r| r.contains("partNumber="))
        .count();
    let aborted = requests
        .iter()
        .any(|r| r.starts_with("DELETE ") && r.contains("uploadId="));
    assert!(
        started && parts >= 1 && aborted,
        "expected a multipart upload with parts, then its abort; requests on the key: {requests:#?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_replica_serves_from_the_shared_bucket_without_upstream() {
    let garage = Garage::start().await;
    let registry = Registry::start().await;
    let images = [
        ("s3/shared-index", TestImage::oci_index(20)),
        ("s3/shared-large", TestImage::large(21, 20 * MIB + 5)),
    ];
    for (repo, image) in &images {
        image.push(&registry, repo, "v1").await;
    }
    let a = start_on_s3(&registry, &garage, "stream").await;
    let b = start_on_s3(&registry, &garage, "stream").await;
    let src = |lank8s: &Lank8s, repo: &str| format!("docker://{}/{repo}:v1", lank8s.host());

    for (repo, image) in &images {
        let rec = pull_recorded(&a, &registry, &src(&a, repo), image).await;
        assert_eq!(rec.upstream_blob_gets().len(), image.blobs.len(), "{repo}");
        assert_image_stored(&garage, image).await;
    }
    registry.settle().await;
    let upstream_before = registry.access_entries();

    for (repo, image) in &images {
        let rec = pull_recorded(&b, &registry, &src(&b, repo), image).await;
        assert_eq!(rec.upstream, Vec::new(), "replica B asked upstream");
        assert_eq!(rec.blob_gets().len(), image.blobs.len(), "{repo}");
        assert_eq!(rec.manifest_lines().len(), image.manifests.len(), "{repo}");
        let tag_line = rec.manifest_lines()[0];
        assert_eq!(tag_line["reference"], "v1", "{tag_line}");
        let api: Vec<_> = rec.lines.iter().filter(|l| l["path"] != "/v2/").collect();
        assert_eq!(
            api.len(),
            image.blobs.len() + image.manifests.len(),
            "{api:#?}"
        );
        for line in api {
            assert_eq!(
                (&line["status"], &line["cache"], &line["redirect"]),
                (&200.into(), &"hit".into(), &false.into()),
                "replica B: {line}"
            );
        }
    }
    registry.settle().await;
    assert_eq!(registry.access_entries(), upstream_before);
    assert_eq!(
        files_under(&b.data_dir().join("blobs")),
        Vec::<std::path::PathBuf>::new()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stopped_store_degrades_to_upstream_and_fills_are_stored_again_after_restart() {
    let mut garage = Garage::start().await;
    let registry = Registry::start().await;
    let stored_repo = "s3/stored";
    let stored = TestImage::large(30, 5 * MIB + 3);
    let new_repo = "s3/new";
    let new = TestImage::oci_index(31);
    stored.push(&registry, stored_repo, "v1").await;
    new.push(&registry, new_repo, "v1").await;
    let lank8s = start_on_s3(&registry, &garage, "redirect").await;
    let src = |repo: &str| format!("docker://{}/{repo}:v1", lank8s.host());

    pull_recorded(&lank8s, &registry, &src(stored_repo), &stored).await;
    assert_image_stored(&garage, &stored).await;
    let layer = stored.largest_blob_digest();
    let layer_url = format!("{}/v2/{stored_repo}/blobs/{layer}", lank8s.url());
    let resp = client().get(&layer_url).send().await.unwrap();
    assert_eq!(
        resp.status(),
        307,
        "a stored blob is redirected while the store is up"
    );

    garage.stop();

    // A cold pull of a new image still works, streamed from upstream.
    let rec = pull_recorded(&lank8s, &registry, &src(new_repo), &new).await;
    assert_eq!(rec.upstream_blob_gets().len(), new.blobs.len());
    for line in rec.blob_gets() {
        assert_eq!(
            (&line["status"], &line["cache"], &line["redirect"]),
            (&200.into(), &"miss".into(), &false.into()),
            "{line}"
        );
    }

    // A blob stored before the stop is streamed from upstream, not sent to the dead store.
    let upstream_gets = registry.count_requests("GET", &format!("/blobs/{layer}"));
    let resp = client().get(&layer_url).send().await.unwrap();
    assert_eq!(resp.status(), 200, "{resp:?}");
    assert!(resp.headers().get("location").is_none(), "{resp:?}");
    let body = resp.bytes().await.unwrap();
    assert_eq!(&body, stored.blob(layer).unwrap());
    registry.settle().await;
    assert_eq!(
        registry.count_requests("GET", &format!("/blobs/{layer}")),
        upstream_gets + 1
    );
    let head = client().head(&layer_url).send().await.unwrap();
    assert_eq!(head.status(), 200, "{head:?}");
    assert_eq!(
        head.headers()["content-length"],
        stored.blob(layer).unwrap().len().to_string()
    );
    // The whole stored image too, by tag and by digest.
    pull_recorded(&lank8s, &registry, &src(stored_repo), &stored).await;
    let by_digest = format!(
        "docker://{}/{stored_repo}@{}",
        lank8s.host(),
        stored.top_digest()
    );
    let rec = pull_recorded(&lank8s, &registry, &by_digest, &stored).await;
    for line in rec.blob_gets() {
        assert_eq!(
            (&line["status"], &line["redirect"]),
            (&200.into(), &false.into()),
            "{line}"
        );
    }

    garage.restart().await;
    // Nothing filled while the store was down reached it.
    assert_blobs_absent(&garage, &new).await;
    assert_eq!(multipart_uploads(&garage).await, Vec::<String>::new());

    // Fills are stored again, and a stored blob is redirected again.
    let rec = pull_recorded(&lank8s, &registry, &src(new_repo), &new).await;
    assert_eq!(rec.upstream_blob_gets().len(), new.blobs.len());
    for (key, size) in blob_objects(&new) {
        assert_eq!(garage.list_objects(&key).await, vec![(key.clone(), size)]);
    }
    let resp = client().get(&layer_url).send().await.unwrap();
    assert_eq!(
        resp.status(),
        307,
        "redirects resume once the store is back"
    );
}
