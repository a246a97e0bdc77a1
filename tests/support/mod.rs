//! Integration-test harness: real upstream registries, a token service, test images (some runnable by a container runtime), the lank8s binary, skopeo, a private containerd, and a fault-injecting fake upstream.
// Each test binary uses only part of the harness.
#![allow(dead_code, unused_imports)]

pub mod access;
pub mod artifacts;
pub mod containerd;
pub mod cosign;
pub mod fault;
pub mod garage;
pub mod hardening_access;
pub mod images;
pub mod lank8s;
pub mod redis;
pub mod registry;
pub mod replicas;
pub mod runnable;
pub mod skopeo;
pub mod storage;
pub mod tap;
pub mod token;

use std::future::Future;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

pub use containerd::{Containerd, chain_id};
pub use fault::{Behaviour, FaultUpstream, RecordedRequest};
pub use garage::Garage;
pub use images::{TestImage, digest_of};
pub use lank8s::Lank8s;
pub use registry::{AccessEntry, Registry, RegistryAuth};
pub use runnable::RunnableImage;
pub use skopeo::{
    check_dir_against_image, compare_dir_with_image, skopeo_copy_all, skopeo_copy_all_with_creds,
};
pub use tap::{RequestTap, TappedRequest};
pub use token::{TokenIssuer, TokenRequest};

/// A port that was free a moment ago on 127.0.0.1. The listener is dropped before
/// returning, so there is a small window in which something else could take it;
/// in practice the kernel does not hand the same ephemeral port out again that soon.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local_addr").port()
}

/// An HTTP client for talking to loopback servers. Proxy variables from the
/// environment must never route loopback traffic elsewhere.
/// What a broad client (containerd, skopeo) asks for.
pub const BROAD_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.v2+json";

pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(300))
        .build()
        .expect("build reqwest client")
}

/// Removes variables that would make a child process send loopback traffic to a proxy.
pub(crate) fn scrub_proxy_env(cmd: &mut Command) {
    for var in [
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "NO_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
        "no_proxy",
    ] {
        cmd.env_remove(var);
    }
}

/// Opens `path` for appending so that restarts keep earlier output in one file.
pub(crate) fn append_log(path: &Path) -> std::fs::File {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open log file {}: {e}", path.display()))
}

pub(crate) fn read_lossy(path: &Path) -> String {
    std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// Polls `url` until `ready(status)` holds. Fails early with the child's log when the
/// child has exited, because waiting out the timeout would hide the real cause.
pub(crate) async fn wait_until_ready(
    url: &str,
    ready: impl Fn(u16) -> bool,
    child: &mut Child,
    log_path: &Path,
    timeout: Duration,
) -> Result<(), String> {
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(2))
        .build()
        .expect("build reqwest client");
    let deadline = Instant::now() + timeout;
    let mut last;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!(
                "process exited with {status} before {url} was ready; log:\n{}",
                read_lossy(log_path)
            ));
        }
        match client.get(url).send().await {
            Ok(resp) if ready(resp.status().as_u16()) => return Ok(()),
            Ok(resp) => last = format!("status {}", resp.status()),
            Err(e) => last = e.to_string(),
        }
        if Instant::now() > deadline {
            return Err(format!(
                "{url} not ready after {timeout:?} (last: {last}); log:\n{}",
                read_lossy(log_path)
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Kills a child we spawned (by its own PID, via the handle) and reaps it.
pub(crate) fn kill_child(child: &mut Option<Child>) {
    if let Some(mut c) = child.take() {
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// Retries `check` until it returns `Some` or `timeout` passes. Useful for log lines
/// that are written just after a response has been sent.
pub async fn eventually<T, F, Fut>(timeout: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Standard base64 with padding; small enough that a dependency is not worth it.
pub fn base64_encode(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The value of an `Authorization: Basic` header for these credentials.
pub fn basic_auth_header(user: &str, pass: &str) -> String {
    format!(
        "Basic {}",
        base64_encode(format!("{user}:{pass}").as_bytes())
    )
}
