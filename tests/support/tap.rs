//! A loopback TCP forwarder that records the HTTP/1.1 request heads passing through it (method, path with query, headers), for seeing exactly what a client such as containerd sends to lank8s.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// One request head as the client sent it.
#[derive(Clone, Debug)]
pub struct TappedRequest {
    pub method: String,
    /// The request target: path and, if any, `?query`, undecoded.
    pub target: String,
    /// Header lines in order, names as sent.
    pub headers: Vec<(String, String)>,
}

impl TappedRequest {
    pub fn path(&self) -> &str {
        self.target.split_once('?').map_or(&self.target, |(p, _)| p)
    }

    pub fn query(&self) -> Option<&str> {
        self.target.split_once('?').map(|(_, q)| q)
    }

    /// Every value of query parameter `name`, as sent (not percent-decoded).
    pub fn query_values(&self, name: &str) -> Vec<&str> {
        self.query()
            .map(|q| {
                q.split('&')
                    .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
                    .filter(|(k, _)| *k == name)
                    .map(|(_, v)| v)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Every value of header `name` (case-insensitive), one per header line.
    pub fn header_values(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// Listens on 127.0.0.1 and forwards every connection to `target`, byte for byte in
/// both directions, recording each request head sent by the client.
pub struct RequestTap {
    addr: SocketAddr,
    requests: Arc<Mutex<Vec<TappedRequest>>>,
    task: JoinHandle<()>,
}

impl RequestTap {
    pub async fn start(target: SocketAddr) -> RequestTap {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind request tap");
        let addr = listener.local_addr().expect("tap local_addr");
        let requests = Arc::new(Mutex::new(Vec::new()));
        let recorded = requests.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let recorded = recorded.clone();
                tokio::spawn(async move {
                    if let Ok(server) = TcpStream::connect(target).await {
                        forward(client, server, recorded).await;
                    }
                });
            }
        });
        RequestTap {
            addr,
            requests,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Everything recorded so far, in the order the heads arrived.
    pub fn requests(&self) -> Vec<TappedRequest> {
        self.requests.lock().unwrap().clone()
    }
}

impl Drop for RequestTap {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn forward(client: TcpStream, server: TcpStream, recorded: Arc<Mutex<Vec<TappedRequest>>>) {
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let downstream = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
        let _ = client_write.shutdown().await;
    });
    let mut pending: Vec<u8> = Vec::new();
    // Body bytes of the current request still to pass before the next head; `None`
    // once the stream can no longer be followed (chunked request bodies).
    let mut body_left: Option<usize> = Some(0);
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match client_read.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if server_write.write_all(&buf[..n]).await.is_err() {
            break;
        }
        pending.extend_from_slice(&buf[..n]);
        while let Some(left) = body_left {
            if left > 0 {
                let skip = left.min(pending.len());
                pending.drain(..skip);
                body_left = Some(left - skip);
                if left > skip {
                    break;
                }
                continue;
            }
            let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") else {
                break;
            };
            let head = String::from_utf8_lossy(&pending[..end]).into_owned();
            pending.drain(..end + 4);
            let request = parse_head(&head);
            body_left = match &request {
                Some(r) if !r.header_values("transfer-encoding").is_empty() => None,
                Some(r) => Some(
                    r.header_values("content-length")
                        .first()
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0),
                ),
                None => None,
            };
            if let Some(request) = request {
                recorded.lock().unwrap().push(request);
            }
        }
        if body_left.is_none() {
            pending.clear();
        }
    }
    let _ = server_write.shutdown().await;
    let _ = downstream.await;
}

fn parse_head(head: &str) -> Option<TappedRequest> {
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next()?.split(' ');
    let method = request_line.next()?.to_string();
    let target = request_line.next()?.to_string();
    request_line.next()?.strip_prefix("HTTP/")?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    Some(TappedRequest {
        method,
        target,
        headers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_request_head() {
        let r = parse_head(
            "HEAD /v2/x/manifests/t?ns=docker.io&a=b HTTP/1.1\r\nHost: h\r\nAccept: a, b\r\naccept: c",
        )
        .unwrap();
        assert_eq!(r.method, "HEAD");
        assert_eq!(r.path(), "/v2/x/manifests/t");
        assert_eq!(r.query_values("ns"), vec!["docker.io"]);
        assert_eq!(r.header_values("Accept"), vec!["a, b", "c"]);
    }
}
