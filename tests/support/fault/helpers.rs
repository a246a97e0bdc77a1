//! Helpers for tests that run lank8s against the fault upstream: its config table, the files in lank8s's cache, and error answers as a client sees them.

use std::path::{Path, PathBuf};

use axum::http::{HeaderMap, header};

/// The config table that points lank8s's default upstream (`registry.k8s.io`) at
/// `url`, with `timeout = "2s"` and `retries = 1` unless `keys` (TOML lines for the
/// same table, e.g. `tag_ttl = "1s"`) sets them.
pub fn upstream_table(url: &str, keys: &str) -> String {
    let sets = |key: &str| {
        keys.lines()
            .any(|l| l.split('=').next().map(str::trim) == Some(key))
    };
    let mut table = format!("[upstreams.\"registry.k8s.io\"]\nurl = \"{url}\"\n");
    if !sets("timeout") {
        table.push_str("timeout = \"2s\"\n");
    }
    if !sets("retries") {
        table.push_str("retries = 1\n");
    }
    table.push_str(keys);
    table.push('\n');
    table
}

/// Every file (not directory) below `dir`, recursively; empty when `dir` is missing.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// An error answer as a client sees it: status, headers, and the OCI error code
/// of a `{"errors":[{"code":..}]}` body (`None` when the body is not that).
#[derive(Debug)]
pub struct ErrorAnswer {
    pub status: u16,
    pub headers: HeaderMap,
    pub content_type: String,
    pub code: Option<String>,
    pub body: String,
}

pub async fn error_answer(response: reqwest::Response) -> ErrorAnswer {
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let body = response.text().await.unwrap_or_default();
    let code = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["errors"][0]["code"].as_str().map(str::to_string));
    ErrorAnswer {
        status,
        headers,
        content_type,
        code,
        body,
    }
}
