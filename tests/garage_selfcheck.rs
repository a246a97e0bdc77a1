//! Checks the Garage harness on its own, without lank8s: objects go in and come back byte-identical through header-signed and presigned requests, listing works, the request log is parsed, and data survives stop and restart.

mod support;

use std::time::{Duration, Instant, SystemTime};

use rand::{RngCore as _, SeedableRng as _};
use support::garage::{hmac_sha256, signing_key};
use support::*;

fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut bytes = vec![0u8; len];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut bytes);
    bytes
}

#[test]
fn hmac_and_sigv4_signing_key_known_answers() {
    // RFC 4231, test case 2.
    assert_eq!(
        hex::encode(hmac_sha256(b"Jefe", b"what do ya want for nothing?")),
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    );
    // RFC 4231, test case 6: a key longer than the block size.
    assert_eq!(
        hex::encode(hmac_sha256(
            &[0xaa; 131],
            b"Test Using Larger Than Block-Size Key - Hash Key First"
        )),
        "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
    );
    // AWS's documented example of deriving a SigV4 signing key.
    assert_eq!(
        hex::encode(signing_key(
            "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
            "20120215",
            "us-east-1",
            "iam"
        )),
        "f4780e2d9f65fa895f9c67b32ce1baf0b0d8a43505a000a1a9e090d414db404d"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn put_list_get_presign_and_survive_restart() {
    let started = Instant::now();
    let mut garage = Garage::start().await;
    let start_time = started.elapsed();
    assert_eq!(garage.region(), "garage");
    assert_eq!(garage.bucket(), "lank8s");
    assert!(garage.access_key_id().starts_with("GK"));
    assert!(garage.endpoint().starts_with("http://127.0.0.1:"));
    assert!(garage.list_objects("").await.is_empty());

    // Larger than Garage's 1 MiB block size, so the object spans several blocks.
    let large = random_bytes(5 * 1024 * 1024 + 17, 1);
    let small = b"{\"hello\":\"world\"}".to_vec();
    let odd_key = "odd/a b+c=d&e%f~é";
    garage.put_object("blobs/sha256/large", large.clone()).await;
    garage.put_object("blobs/sha256/small", small.clone()).await;
    garage.put_object(odd_key, b"odd".to_vec()).await;
    garage.put_object("other/x", Vec::new()).await;

    assert_eq!(
        garage.list_objects("blobs/").await,
        vec![
            ("blobs/sha256/large".to_string(), large.len() as u64),
            ("blobs/sha256/small".to_string(), small.len() as u64),
        ]
    );
    assert_eq!(garage.list_objects("").await.len(), 4);
    assert_eq!(
        garage.list_objects("odd/").await,
        vec![(odd_key.to_string(), 3)]
    );
    assert_eq!(
        garage.get_object("blobs/sha256/large").await,
        Some(large.clone())
    );
    assert_eq!(garage.get_object(odd_key).await, Some(b"odd".to_vec()));
    assert_eq!(garage.get_object("other/x").await, Some(Vec::new()));
    assert_eq!(garage.get_object("blobs/sha256/missing").await, None);
    let resp = garage
        .request("GET", "blobs/sha256/small", &[], Vec::new())
        .header("range", "bytes=0-1")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 206);
    assert_eq!(resp.bytes().await.unwrap().to_vec(), small[..2].to_vec());

    // A presigned URL is a plain GET, as a client following a redirect would send it.
    let client = http_client();
    let url = garage.presigned_get_url("blobs/sha256/large", Duration::from_secs(300));
    let resp = client.get(&url).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.bytes().await.unwrap().to_vec(), large);
    let url = garage.presigned_get_url("blobs/sha256/small", Duration::from_secs(300));
    let resp = client
        .get(&url)
        .header("range", "bytes=2-6")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 206);
    assert_eq!(resp.bytes().await.unwrap().to_vec(), small[2..=6].to_vec());
    // Expired and tampered URLs are refused.
    let old = SystemTime::now() - Duration::from_secs(3600);
    let expired =
        garage.presigned_url_at("GET", "blobs/sha256/small", Duration::from_secs(60), old);
    let resp = client.get(&expired).send().await.unwrap();
    // Garage answers 400 "Date is too old" here, where AWS answers 403 AccessDenied.
    assert_eq!(resp.status(), 400, "expired presigned URL");
    assert!(resp.text().await.unwrap().contains("Date is too old"));
    let tampered = url.replace("blobs/sha256/small", "blobs/sha256/large");
    let status = client.get(&tampered).send().await.unwrap().status();
    assert_eq!(status, 403, "presigned URL for another key");

    // The request log: header-signed requests name the key, presigned ones do not.
    let requests = garage.s3_requests();
    let large_gets: Vec<_> = requests
        .iter()
        .filter(|r| r.method == "GET" && r.path.starts_with("/lank8s/blobs/sha256/large"))
        .collect();
    assert_eq!(
        large_gets.len(),
        3,
        "signed + presigned + tampered: {large_gets:?}"
    );
    assert_eq!(
        large_gets[0].key_id.as_deref(),
        Some(garage.access_key_id())
    );
    assert_eq!(large_gets[1].key_id, None);
    assert!(large_gets[1].path.contains("X-Amz-Signature="));
    assert_eq!(garage.count_requests("PUT", "/lank8s/blobs/"), 2);
    assert_eq!(
        garage.count_requests("PUT", "/lank8s/odd/a%20b%2Bc%3Dd%26e%25f~%C3%A9"),
        1
    );
    assert!(requests.iter().all(|r| !r.path.starts_with("/v2/")));
    let errors = garage.s3_errors();
    let statuses: Vec<(u16, &str)> = errors
        .iter()
        .map(|e| (e.status, e.request.path.as_str()))
        .collect();
    assert!(
        statuses.contains(&(404, "/lank8s/blobs/sha256/missing")),
        "{statuses:?}"
    );
    let count = |status| errors.iter().filter(|e| e.status == status).count();
    assert_eq!((count(400), count(403)), (1, 1), "{statuses:?}");

    // Down: connections are refused, nothing hangs.
    garage.delete_object("other/x").await;
    garage.stop();
    assert!(!garage.is_running());
    // Refused, or reset if the kernel still held the listening socket for
    // a moment after the kill: either way it fails fast.
    let asked = Instant::now();
    let err = client
        .get(garage.presigned_get_url("blobs/sha256/small", Duration::from_secs(60)))
        .send()
        .await
        .expect_err("Garage is stopped");
    assert!(err.is_connect() || err.is_request(), "{err}");
    assert!(asked.elapsed() < Duration::from_secs(5), "{err}");

    let restarted = Instant::now();
    garage.restart().await;
    let restart_time = restarted.elapsed();
    assert_eq!(garage.get_object("blobs/sha256/large").await, Some(large));
    assert_eq!(garage.get_object("blobs/sha256/small").await, Some(small));
    assert_eq!(
        garage.list_objects("").await.len(),
        3,
        "delete survived too"
    );
    // The log spans restarts.
    assert_eq!(garage.count_requests("PUT", "/lank8s/blobs/"), 2);

    eprintln!("garage: start {start_time:?}, restart {restart_time:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn several_instances_start_side_by_side() {
    let started = Instant::now();
    let (a, b, c) = tokio::join!(Garage::start(), Garage::start(), Garage::start());
    let elapsed = started.elapsed();
    a.put_object("k", b"a".to_vec()).await;
    b.put_object("k", b"b".to_vec()).await;
    assert_eq!(a.get_object("k").await, Some(b"a".to_vec()));
    assert_eq!(b.get_object("k").await, Some(b"b".to_vec()));
    assert_eq!(c.get_object("k").await, None);
    assert_ne!(a.access_key_id(), b.access_key_id());
    eprintln!("garage: three instances started in {elapsed:?}");
}
