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

/// An answer read off a raw connection up to EOF or a connection error, with
/// the body exactly as it came (not de-chunked).
#[derive(Debug)]
pub struct RawAnswer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The read error that ended the exchange (e.g. a reset), if it did not end
    /// with a clean EOF.
    pub error: Option<String>,
}

impl RawAnswer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Sends `GET <path> HTTP/1.0` to `host` (`ip:port`) and reads until the server
/// closes the connection or it fails, at most `timeout`. An HTTP/1.0 client
/// cannot take chunked encoding, so a body of unknown length comes back
/// delimited only by the end of the connection. `None` if the server sent no
/// complete header block.
pub async fn raw_http10_get(
    host: &str,
    path: &str,
    timeout: std::time::Duration,
) -> Option<RawAnswer> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let request = format!("GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n");
    let exchange = async {
        let mut answer = Vec::new();
        let mut stream = match tokio::net::TcpStream::connect(host).await {
            Ok(stream) => stream,
            Err(e) => return (answer, Some(format!("connect: {e}"))),
        };
        if let Err(e) = stream.write_all(request.as_bytes()).await {
            return (answer, Some(format!("write: {e}")));
        }
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) => return (answer, None),
                Ok(n) => answer.extend_from_slice(&buf[..n]),
                Err(e) => return (answer, Some(e.to_string())),
            }
        }
    };
    let (answer, error) = tokio::time::timeout(timeout, exchange)
        .await
        .unwrap_or_else(|_| panic!("GET {path} over HTTP/1.0 still running after {timeout:?}"));
    let split = answer.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&answer[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    Some(RawAnswer {
        status,
        headers,
        body: answer[split + 4..].to_vec(),
        error,
    })
}
