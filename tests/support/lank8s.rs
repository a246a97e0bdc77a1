//! Runs the lank8s binary under test as a child process with a generated config, and reads back its JSON log.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use tempfile::TempDir;

const READY_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Lank8s {
    dir: TempDir,
    port: u16,
    config_path: PathBuf,
    log_path: PathBuf,
    child: Option<Child>,
}

impl Lank8s {
    /// Starts lank8s with `tables` appended to the generated config.
    ///
    /// The generated part sets `listen`, `data_dir` and `[log] format = "json"`.
    /// Because TOML keys after a table header belong to that table, `tables` must
    /// contain only tables (`[upstreams."x"]` and the like); use [`Lank8s::start_with`]
    /// for extra top-level keys. A `[log]` table in `tables` is allowed: the JSON
    /// format key is then added to it instead of emitting a second `[log]`.
    pub async fn start(tables: &str) -> Lank8s {
        Self::start_with("", tables).await
    }

    /// Starts lank8s with extra top-level keys and extra tables.
    pub async fn start_with(top_level: &str, tables: &str) -> Lank8s {
        Self::try_start_with(top_level, tables)
            .await
            .unwrap_or_else(|e| panic!("lank8s did not start: {e}"))
    }

    /// As [`Lank8s::start_with`], but returns the log instead of panicking when the
    /// server exits or never becomes healthy (for configuration-error tests).
    pub async fn try_start_with(top_level: &str, tables: &str) -> Result<Lank8s, String> {
        let dir = tempfile::Builder::new()
            .prefix("lank8s-server-")
            .tempdir()
            .expect("create lank8s tempdir");
        let port = super::free_port();
        let config_path = dir.path().join("lank8s.toml");
        let config = compose_config(port, &dir.path().join("data"), top_level, tables);
        std::fs::write(&config_path, config).expect("write lank8s config");
        let mut server = Lank8s {
            log_path: dir.path().join("lank8s.log"),
            dir,
            port,
            config_path,
            child: None,
        };
        server.spawn().await?;
        Ok(server)
    }

    async fn spawn(&mut self) -> Result<(), String> {
        let log = super::append_log(&self.log_path);
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_lank8s"));
        cmd.arg("serve")
            .arg("--config")
            .arg(&self.config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log);
        super::scrub_proxy_env(&mut cmd);
        let mut child = cmd.spawn().expect("spawn lank8s");
        let ready = super::wait_until_ready(
            &format!("{}/healthz", self.url()),
            |s| s == 200,
            &mut child,
            &self.log_path,
            READY_TIMEOUT,
        )
        .await;
        self.child = Some(child);
        if ready.is_err() {
            super::kill_child(&mut self.child);
        }
        ready
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

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// All output so far, across restarts.
    pub fn log(&self) -> String {
        super::read_lossy(&self.log_path)
    }

    /// Every output line that is a JSON object; anything else (panics, stray prints) is skipped.
    pub fn log_lines(&self) -> Vec<Value> {
        self.log()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(Value::is_object)
            .collect()
    }

    /// The per-request lines (`"message": "request"`).
    pub fn request_lines(&self) -> Vec<Value> {
        self.log_lines()
            .into_iter()
            .filter(|l| l["message"] == "request")
            .collect()
    }

    /// Waits up to `timeout` for a log line matching `pred`; the server may log a
    /// request just after the client has its response.
    pub async fn wait_for_log_line(
        &self,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Option<Value> {
        super::eventually(timeout, || {
            let found = self.log_lines().into_iter().find(|l| pred(l));
            async move { found }
        })
        .await
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Kills the server and waits for it to exit.
    pub fn stop(&mut self) {
        super::kill_child(&mut self.child);
    }

    /// Stops and starts again with the same config, port and data directory.
    pub async fn restart(&mut self) {
        self.stop();
        if let Err(e) = self.spawn().await {
            panic!("lank8s did not restart: {e}");
        }
    }
}

impl Drop for Lank8s {
    fn drop(&mut self) {
        super::kill_child(&mut self.child);
    }
}

fn toml_string(s: &str) -> String {
    serde_json::to_string(s).expect("string to JSON")
}

fn compose_config(port: u16, data_dir: &Path, top_level: &str, tables: &str) -> String {
    let mut config = format!(
        "listen = {}\ndata_dir = {}\n",
        toml_string(&format!("127.0.0.1:{port}")),
        toml_string(&data_dir.display().to_string())
    );
    if !top_level.is_empty() {
        config.push_str(top_level);
        config.push('\n');
    }
    let has_log_table = tables.lines().any(|l| l.trim() == "[log]");
    if has_log_table {
        for line in tables.lines() {
            config.push_str(line);
            config.push('\n');
            if line.trim() == "[log]" {
                config.push_str("format = \"json\"\n");
            }
        }
    } else {
        config.push_str("[log]\nformat = \"json\"\n");
        config.push_str(tables);
        config.push('\n');
    }
    config
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caller_tables_come_after_generated_keys() {
        let c = compose_config(
            1,
            Path::new("/d"),
            "x = 1",
            "[upstreams.\"a\"]\nurl = \"u\"",
        );
        assert_eq!(
            c,
            "listen = \"127.0.0.1:1\"\ndata_dir = \"/d\"\nx = 1\n[log]\nformat = \"json\"\n[upstreams.\"a\"]\nurl = \"u\"\n"
        );
        let c = compose_config(1, Path::new("/d"), "", "[log]\nlevel = \"debug\"");
        assert!(
            c.ends_with("[log]\nformat = \"json\"\nlevel = \"debug\"\n"),
            "{c}"
        );
    }
}
