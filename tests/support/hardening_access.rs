//! Helpers for the access-layer hardening tests: lank8s started from a whole configuration (so that it can listen on `[::]`) with its PID for `/proc` readings, a Redis stand-in that accepts connections and never answers, raw HTTP exchanges, and a parser for `WWW-Authenticate` parameters.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The password of the account `alice` the tests add.
pub const ALICE_PASSWORD: &str = "alice-password-1";

/// lank8s run from a configuration this module writes whole.
pub struct Server {
    dir: TempDir,
    port: u16,
    config_path: PathBuf,
    log_path: PathBuf,
    child: Option<Child>,
}

impl Server {
    /// Starts `lank8s serve` listening on `<listen_host>:<free port>`, with a
    /// data directory of its own, JSON logs, then `top_level` keys and `tables`.
    pub async fn start(listen_host: &str, top_level: &str, tables: &str) -> Server {
        let dir = tempfile::Builder::new()
            .prefix("lank8s-hardening-")
            .tempdir()
            .expect("create tempdir");
        let port = super::free_port();
        let config_path = dir.path().join("lank8s.toml");
        let config = format!(
            "listen = \"{listen_host}:{port}\"\ndata_dir = {:?}\n{top_level}\n[log]\nformat = \"json\"\n{tables}\n",
            dir.path().join("data").display().to_string()
        );
        std::fs::write(&config_path, config).expect("write config");
        let log_path = dir.path().join("lank8s.log");
        let log = super::append_log(&log_path);
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_lank8s"));
        cmd.arg("serve")
            .arg("--config")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log);
        super::scrub_proxy_env(&mut cmd);
        let mut child = cmd.spawn().expect("spawn lank8s");
        let url = format!("http://127.0.0.1:{port}/healthz");
        let ready = super::wait_until_ready(
            &url,
            |s| s == 200,
            &mut child,
            &log_path,
            Duration::from_secs(10),
        )
        .await;
        let mut server = Server {
            dir,
            port,
            config_path,
            log_path,
            child: Some(child),
        };
        if let Err(e) = ready {
            super::kill_child(&mut server.child);
            panic!("lank8s did not start: {e}");
        }
        server
    }

    /// lank8s with the sponsor route `sponsored.test` at `upstream` as its
    /// default upstream, `top_level` keys, and the account `alice` (password
    /// [`ALICE_PASSWORD`]).
    pub async fn sponsor(listen_host: &str, top_level: &str, upstream: &str) -> Server {
        let top = format!(
            "default_upstream = \"{}\"\n{top_level}",
            super::access::SPONSOR_UPSTREAM
        );
        let server = Server::start(listen_host, &top, &sponsor_tables(upstream, "")).await;
        let args = ["account", "add", "alice", "--password-stdin"];
        let password = format!("{ALICE_PASSWORD}\n");
        super::access::cli_ok(server.config_path(), &args, Some(&password));
        server
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The server's peak resident memory so far (`VmHWM`), in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        let pid = self.child.as_ref().expect("server running").id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM in /proc/<pid>/status")
    }

    pub fn log(&self) -> String {
        super::read_lossy(&self.log_path)
    }

    /// The access-log lines.
    pub fn request_lines(&self) -> Vec<Value> {
        self.log()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|l| l["message"] == "request")
            .collect()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        super::kill_child(&mut self.child);
    }
}

/// A TCP port that accepts connections and reads whatever is sent, but never
/// answers: a Redis behind a black-holing network. Stops when dropped.
pub struct Blackhole {
    port: u16,
    task: tokio::task::JoinHandle<()>,
}

impl Blackhole {
    pub async fn start() -> Blackhole {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("local_addr").port();
        let task = tokio::spawn(async move {
            let mut held = tokio::task::JoinSet::new();
            while let Ok((mut socket, _)) = listener.accept().await {
                held.spawn(async move {
                    let mut sink = [0u8; 4096];
                    while matches!(socket.read(&mut sink).await, Ok(n) if n > 0) {}
                });
            }
        });
        Blackhole { port, task }
    }

    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for Blackhole {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Sends `request` as it is to 127.0.0.1:`port` and reads until the server
/// closes the connection (send `Connection: close` or HTTP/1.0); the answer
/// as lossy text, or "" if nothing came within 10 s.
pub async fn raw_exchange(port: u16, request: &[u8]) -> String {
    let exchange = async {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
        stream.write_all(request).await.ok()?;
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer).await;
        Some(String::from_utf8_lossy(&answer).into_owned())
    };
    tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .ok()
        .flatten()
        .unwrap_or_default()
}

/// The value of header `name` in a raw HTTP answer.
pub fn raw_header(answer: &str, name: &str) -> Option<String> {
    let head = answer.split("\r\n\r\n").next()?;
    head.lines().skip(1).find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.eq_ignore_ascii_case(name)
            .then(|| value.trim().to_owned())
    })
}

/// The status code of a raw HTTP answer (0 if there is none).
pub fn raw_status(answer: &str) -> u16 {
    answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// The auth-params of a `Bearer` challenge as a client reads them (RFC 7235:
/// `key=token` or `key="quoted string"` with backslash escapes, separated by
/// commas); `None` if it does not parse.
pub fn challenge_params(challenge: &str) -> Option<Vec<(String, String)>> {
    let mut rest = challenge.strip_prefix("Bearer ")?.trim_start();
    let mut params = Vec::new();
    while !rest.is_empty() {
        let (key, after) = rest.split_once('=')?;
        let key = key.trim().to_ascii_lowercase();
        let mut value = String::new();
        let mut chars = after.chars();
        let mut consumed = 0;
        if after.starts_with('"') {
            chars.next();
            consumed += 1;
            let mut closed = false;
            while let Some(c) = chars.next() {
                consumed += c.len_utf8();
                match c {
                    '\\' => {
                        let escaped = chars.next()?;
                        consumed += escaped.len_utf8();
                        value.push(escaped);
                    }
                    '"' => {
                        closed = true;
                        break;
                    }
                    c => value.push(c),
                }
            }
            if !closed {
                return None;
            }
        } else {
            value = after
                .split(',')
                .next()
                .unwrap_or_default()
                .trim()
                .to_owned();
            consumed = value.len();
        }
        params.push((key, value));
        rest = after[consumed..].trim_start();
        match rest.strip_prefix(',') {
            Some(next) => rest = next.trim_start(),
            None if rest.is_empty() => {}
            None => return None,
        }
    }
    Some(params)
}

/// Fails with the log if lank8s panicked.
pub fn assert_no_panic(log: &str) {
    assert!(!log.contains("panicked"), "lank8s panicked:\n{log}");
}

/// The sponsor route `sponsored.test` (lank8s's default upstream) at
/// `upstream`, and an `[access]` table with `extra` appended.
pub fn sponsor_tables(upstream: &str, extra: &str) -> String {
    let (name, key) = (super::access::SPONSOR_UPSTREAM, super::access::SIGNING_KEY);
    format!(
        "[upstreams.\"{name}\"]\nurl = \"{upstream}\"\ntier = \"sponsor\"\n\
         [access]\nrealm_scheme = \"http\"\nsigning_key = \"{key}\"\n{extra}"
    )
}

/// `GET <base>/token` with Basic credentials for a pull of the test repository.
pub async fn login_at(
    client: &reqwest::Client,
    base: &str,
    user: &str,
    password: &str,
) -> super::access::Reply {
    let scope = format!("repository:{}:pull", super::access::REPO);
    super::access::reply(
        client
            .get(format!("{base}/token"))
            .query(&[("scope", scope.as_str())])
            .basic_auth(user, Some(password)),
    )
    .await
}

/// A configuration for the CLI alone, its data directory in `dir`.
pub fn cli_config(dir: &Path) -> PathBuf {
    let path = dir.join("lank8s.toml");
    let data = dir.join("data").display().to_string();
    let port = super::free_port();
    let config = format!("listen = \"127.0.0.1:{port}\"\ndata_dir = {data:?}\n");
    std::fs::write(&path, config).expect("write config");
    path
}

/// The first lines of `stderr` (a panic's place and message), for assertion
/// messages.
pub fn panic_summary(stderr: &str) -> String {
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.is_empty()).take(3).collect();
    lines.join(" | ")
}

/// The path and query of `url`.
pub fn path_of(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    rest.find('/').map_or("/".into(), |i| rest[i..].to_owned())
}

/// Runs `lank8s serve --config <config>` until it exits (killing it, by its
/// own handle, after 10 s): its exit code and standard error.
pub fn serve_exit(config: &Path) -> (Option<i32>, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_lank8s"))
        .args(["serve", "--config"])
        .arg(config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn lank8s");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while child.try_wait().expect("wait").is_none() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let output = child.wait_with_output().expect("serve output");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    (output.status.code(), stderr)
}
