//! Helpers shared by the pull-API test binaries (api, api_blobs, api_listing): one request and its answer, and a real registry with lank8s in front of it.

use std::time::Duration;

use bytes::Bytes;
use reqwest::header::HeaderMap;
use serde_json::Value;

use crate::support::{Lank8s, Registry, TestImage, http_client};

pub struct Answer {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Checks that this is an OCI error answer and returns its code.
    pub fn error_code(&self) -> String {
        let what = format!("{} {:?}", self.status, self.body);
        assert_eq!(
            self.header("content-type"),
            Some("application/json"),
            "{what}"
        );
        let error = &self.json()["errors"][0];
        assert!(error["message"].is_string(), "no message: {what}");
        error["code"].as_str().expect(&what).to_owned()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("{e}: {:?}", self.body))
    }
}

pub async fn send(method: &str, url: &str, headers: &[(&str, &str)]) -> Answer {
    let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
    let mut request = http_client().request(method, url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.timeout(Duration::from_secs(30)).send().await;
    let response = response.expect(url);
    let (status, headers) = (response.status().as_u16(), response.headers().clone());
    let body = response.bytes().await.expect(url);
    Answer {
        status,
        headers,
        body,
    }
}

/// A real registry holding `images` as `<repo>:<tag>`, and lank8s in front of it.
pub async fn mirror_of(images: &[(&str, &str, &TestImage)], extra: &str) -> (Registry, Lank8s) {
    let registry = Registry::start().await;
    for (repo, tag, image) in images {
        image.push(&registry, repo, tag).await;
    }
    let url = registry.url();
    let lank8s = Lank8s::start(&format!(
        "[upstreams.\"registry.k8s.io\"]\nurl = \"{url}\"\n{extra}"
    ))
    .await;
    (registry, lank8s)
}
