//! A real CNCF distribution registry (`docker-registry serve`) run as a child process, anonymous or behind token auth, with its access log parsed for assertions.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tempfile::TempDir;

use super::token::TokenIssuer;

/// How a client obtains tokens for a token-auth registry.
#[derive(Clone, Debug)]
pub struct RegistryAuth {
    pub realm: String,
    pub service: String,
    pub credentials: Option<(String, String)>,
}

/// One line of the registry's Apache-combined-style access log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccessEntry {
    pub method: String,
    /// The request URI, including any query string.
    pub path: String,
    pub status: u16,
}

pub struct Registry {
    dir: TempDir,
    port: u16,
    config_path: PathBuf,
    log_path: PathBuf,
    auth: Option<RegistryAuth>,
    child: Option<Child>,
}

impl Registry {
    /// An anonymous registry: anyone may push and pull.
    pub async fn start() -> Registry {
        Self::launch(None, "").await
    }

    /// A registry that accepts only bearer tokens from `issuer`.
    pub async fn start_with_token_auth(issuer: &TokenIssuer) -> Registry {
        let auth_yaml = format!(
            "auth:\n  token:\n    realm: {}\n    service: {}\n    issuer: {}\n    rootcertbundle: {}\n",
            issuer.realm(),
            TokenIssuer::SERVICE,
            TokenIssuer::ISSUER,
            issuer.cert_path().display()
        );
        let auth = RegistryAuth {
            realm: issuer.realm(),
            service: TokenIssuer::SERVICE.into(),
            credentials: issuer.credentials(),
        };
        Self::launch(Some(auth), &auth_yaml).await
    }

    async fn launch(auth: Option<RegistryAuth>, auth_yaml: &str) -> Registry {
        let dir = tempfile::Builder::new()
            .prefix("lank8s-registry-")
            .tempdir()
            .expect("create registry tempdir");
        let port = super::free_port();
        let config_path = dir.path().join("config.yml");
        // A fixed http.secret keeps upload state valid across restart().
        let config = format!(
            "version: 0.1\n\
             log:\n  level: info\n  accesslog:\n    disabled: false\n\
             storage:\n  filesystem:\n    rootdirectory: {}\n\
             http:\n  addr: 127.0.0.1:{port}\n  secret: lank8s-test-secret\n\
             {auth_yaml}",
            dir.path().join("storage").display()
        );
        std::fs::write(&config_path, config).expect("write registry config");
        let log_path = dir.path().join("registry.log");
        let mut registry = Registry {
            dir,
            port,
            config_path,
            log_path,
            auth,
            child: None,
        };
        registry.spawn().await;
        registry
    }

    async fn spawn(&mut self) {
        let log = super::append_log(&self.log_path);
        let mut cmd = Command::new("docker-registry");
        cmd.arg("serve")
            .arg(&self.config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log);
        super::scrub_proxy_env(&mut cmd);
        let mut child = cmd.spawn().expect("spawn docker-registry");
        let expected = if self.auth.is_some() { 401 } else { 200 };
        let ready = super::wait_until_ready(
            &format!("{}/v2/", self.url()),
            |s| s == expected,
            &mut child,
            &self.log_path,
            Duration::from_secs(15),
        )
        .await;
        self.child = Some(child);
        if let Err(e) = ready {
            super::kill_child(&mut self.child);
            panic!("registry did not start: {e}");
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `Some` for a token-auth registry: where and how to get tokens.
    pub fn auth(&self) -> Option<&RegistryAuth> {
        self.auth.as_ref()
    }

    /// Everything the registry wrote (its own log lines and the access log), across restarts.
    pub fn log(&self) -> String {
        super::read_lossy(&self.log_path)
    }

    /// Only the access-log lines, one request per line.
    pub fn access_log(&self) -> String {
        self.log()
            .lines()
            .filter(|l| parse_access_line(l).is_some())
            .map(|l| format!("{l}\n"))
            .collect()
    }

    pub fn access_entries(&self) -> Vec<AccessEntry> {
        self.log().lines().filter_map(parse_access_line).collect()
    }

    /// Requests with exactly this method whose URI contains `path_contains`.
    pub fn count_requests(&self, method: &str, path_contains: &str) -> usize {
        self.access_entries()
            .iter()
            .filter(|e| e.method == method && e.path.contains(path_contains))
            .count()
    }

    /// Waits until the log file stops growing. The registry writes an access-log line
    /// only after the response is complete, so a client can finish slightly earlier.
    pub async fn settle(&self) {
        let size = || {
            std::fs::metadata(&self.log_path)
                .map(|m| m.len())
                .unwrap_or(0)
        };
        let mut last = size();
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(150)).await;
            let now = size();
            if now == last {
                return;
            }
            last = now;
        }
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Kills the registry and waits for it to exit. Stored content stays on disk.
    pub fn stop(&mut self) {
        super::kill_child(&mut self.child);
    }

    /// Starts the registry again on the same port with the same storage.
    pub async fn restart(&mut self) {
        self.stop();
        self.spawn().await;
    }

    pub fn storage_dir(&self) -> PathBuf {
        self.dir.path().join("storage")
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        super::kill_child(&mut self.child);
    }
}

/// Parses `127.0.0.1 - - [03/Dec/2026:13:01:05 +0000] "GET /v2/ HTTP/1.1" 200 2 "" "curl/7.88.1"`.
/// The registry's own logrus lines start with `time=` and also contain quoted
/// fields, so they are excluded explicitly.
fn parse_access_line(line: &str) -> Option<AccessEntry> {
    if line.starts_with("time=") {
        return None;
    }
    let (_, rest) = line.split_once("] \"")?;
    let (request, rest) = rest.split_once('"')?;
    let mut parts = request.split(' ');
    let method = parts.next()?.to_string();
    let path = parts.next()?.to_string();
    if !parts.next()?.starts_with("HTTP/") {
        return None;
    }
    let status = rest.trim_start().split(' ').next()?.parse().ok()?;
    Some(AccessEntry {
        method,
        path,
        status,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_access_line() {
        let line = r#"127.0.0.1 - - [03/Dec/2026:13:01:05 +0000] "GET /v2/foo/blobs/sha256:ab HTTP/1.1" 404 157 "" "curl/7.88.1""#;
        assert_eq!(
            parse_access_line(line),
            Some(AccessEntry {
                method: "GET".into(),
                path: "/v2/foo/blobs/sha256:ab".into(),
                status: 404
            })
        );
        assert_eq!(
            parse_access_line(
                r#"time="x" level=info msg="response completed" http.request.uri="/v2/""#
            ),
            None
        );
    }
}
