//! A private containerd daemon (the Debian `containerd` package) run as a child process with its own root, state and socket, driven with `ctr`: pull through a hosts.toml directory, list, check, read files from an unpacked image.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

const READY_TIMEOUT: Duration = Duration::from_secs(20);
const CTR_TIMEOUT: Duration = Duration::from_secs(30);
const PULL_TIMEOUT: Duration = Duration::from_secs(120);

/// The snapshotter every pull unpacks with: `native` copies directories and needs
/// no kernel feature, where overlayfs may not be available in a sandbox.
pub const SNAPSHOTTER: &str = "native";

/// The containerd namespace the tests use (not `default`, so nothing else is touched).
const NAMESPACE: &str = "lank8s-test";

/// Plugins that need a kernel feature, a runtime or the network, none of which an
/// image pull uses. With them disabled the daemon starts cleanly as any root user.
const DISABLED_PLUGINS: &[&str] = &[
    "io.containerd.grpc.v1.cri",
    "io.containerd.snapshotter.v1.aufs",
    "io.containerd.snapshotter.v1.btrfs",
    "io.containerd.snapshotter.v1.devmapper",
    "io.containerd.snapshotter.v1.zfs",
    "io.containerd.snapshotter.v1.overlayfs",
    "io.containerd.runtime.v1.linux",
    "io.containerd.runtime.v2.task",
    "io.containerd.monitor.v1.cgroups",
    "io.containerd.service.v1.tasks-service",
    "io.containerd.grpc.v1.tasks",
    "io.containerd.internal.v1.restart",
    "io.containerd.tracing.processor.v1.otlp",
    "io.containerd.internal.v1.tracing",
];

pub struct Containerd {
    dir: TempDir,
    log_path: PathBuf,
    child: Option<Child>,
}

/// What a finished `ctr` run printed.
#[derive(Clone, Debug)]
pub struct CtrOutput {
    pub stdout: String,
    pub stderr: String,
}

impl Containerd {
    /// Starts a daemon with its own config, root, state and socket in a tempdir and
    /// waits until `ctr version` reaches it.
    pub async fn start() -> Containerd {
        // A short path: a unix socket path must fit in 108 bytes.
        let dir = tempfile::Builder::new()
            .prefix("lank8s-ctd-")
            .tempdir_in("/tmp")
            .expect("create containerd tempdir");
        let d = dir.path();
        let quoted = |p: PathBuf| serde_json::to_string(&p.display().to_string()).unwrap();
        let disabled: Vec<String> = DISABLED_PLUGINS
            .iter()
            .map(|p| serde_json::to_string(p).unwrap())
            .collect();
        let config = format!(
            "version = 2\n\
             root = {root}\n\
             state = {state}\n\
             disabled_plugins = [{disabled}]\n\
             [grpc]\n  address = {sock}\n\
             [ttrpc]\n  address = {ttrpc}\n\
             [debug]\n  level = \"info\"\n\
             [plugins.\"io.containerd.internal.v1.opt\"]\n  path = {opt}\n",
            root = quoted(d.join("root")),
            state = quoted(d.join("state")),
            disabled = disabled.join(", "),
            sock = quoted(d.join("containerd.sock")),
            ttrpc = quoted(d.join("containerd.sock.ttrpc")),
            opt = quoted(d.join("opt")),
        );
        let config_path = d.join("config.toml");
        std::fs::write(&config_path, config).expect("write containerd config");
        let log_path = d.join("containerd.log");
        let log = super::append_log(&log_path);
        let mut cmd = Command::new("containerd");
        cmd.arg("--config")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log);
        super::scrub_proxy_env(&mut cmd);
        let child = cmd.spawn().unwrap_or_else(|e| {
            panic!("spawn containerd ({e}); the Debian package `containerd` provides it and ctr")
        });
        let mut containerd = Containerd {
            dir,
            log_path,
            child: Some(child),
        };
        if let Err(e) = containerd.wait_ready().await {
            super::kill_child(&mut containerd.child);
            panic!("containerd did not start: {e}");
        }
        containerd
    }

    async fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                return Err(format!("exited with {status}; log:\n{}", self.log()));
            }
            let last = match self.ctr(&["version"], Duration::from_secs(5)).await {
                Ok(_) => return Ok(()),
                Err(e) => e,
            };
            if Instant::now() > deadline {
                return Err(format!(
                    "not ready after {READY_TIMEOUT:?} (last: {last}); log:\n{}",
                    self.log()
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("containerd.sock")
    }

    /// The daemon's output so far.
    pub fn log(&self) -> String {
        super::read_lossy(&self.log_path)
    }

    /// Runs `ctr --address <socket> --namespace lank8s-test <args>`; `Err` carries the
    /// exit status and both streams when it fails or does not finish within `timeout`.
    pub async fn ctr_output(&self, args: &[&str], timeout: Duration) -> Result<CtrOutput, String> {
        let mut cmd = tokio::process::Command::new("ctr");
        cmd.arg("--address")
            .arg(self.socket())
            .arg("--namespace")
            .arg(NAMESPACE)
            .args(args)
            .env_remove("CONTAINERD_SNAPSHOTTER")
            .env_remove("CONTAINERD_NAMESPACE")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
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
        let command = format!("ctr {}", args.join(" "));
        let child = cmd.spawn().map_err(|e| format!("spawn {command}: {e}"))?;
        let output = match tokio::time::timeout(timeout, child.wait_with_output()).await {
            Ok(Ok(output)) => output,
            Ok(Err(e)) => return Err(format!("waiting for {command}: {e}")),
            // Dropping the future drops the child, and kill_on_drop ends it.
            Err(_) => return Err(format!("{command} timed out after {timeout:?}")),
        };
        let out = CtrOutput {
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        };
        if output.status.success() {
            Ok(out)
        } else {
            Err(format!(
                "{command} failed ({}):\nstdout: {}\nstderr: {}",
                output.status, out.stdout, out.stderr
            ))
        }
    }

    /// As [`Containerd::ctr_output`], returning only stdout.
    pub async fn ctr(&self, args: &[&str], timeout: Duration) -> Result<String, String> {
        self.ctr_output(args, timeout).await.map(|o| o.stdout)
    }

    /// `ctr images pull --hosts-dir <hosts_dir> --snapshotter native <extra_args> <reference>`:
    /// fetches and unpacks. Pass `--platform linux/arm64` or `--all-platforms` in
    /// `extra_args` for other than the host platform, and `--http-dump` to see the
    /// HTTP exchanges (printed on stdout/stderr, which `Ok` returns joined).
    pub async fn pull(
        &self,
        reference: &str,
        hosts_dir: &Path,
        extra_args: &[&str],
    ) -> Result<String, String> {
        let hosts_dir = hosts_dir.display().to_string();
        let mut args = vec![
            "images",
            "pull",
            "--hosts-dir",
            &hosts_dir,
            "--snapshotter",
            SNAPSHOTTER,
        ];
        args.extend_from_slice(extra_args);
        args.push(reference);
        self.ctr_output(&args, PULL_TIMEOUT)
            .await
            .map(|o| format!("{}{}", o.stdout, o.stderr))
    }

    /// `ctr images ls`.
    pub async fn images(&self) -> String {
        self.ctr(&["images", "ls"], CTR_TIMEOUT)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// The digest `ctr images ls` lists for `reference`, if it is there.
    pub async fn image_digest(&self, reference: &str) -> Option<String> {
        self.images().await.lines().find_map(|line| {
            let mut cols = line.split_whitespace();
            (cols.next() == Some(reference)).then(|| {
                cols.find(|c| c.starts_with("sha256:"))
                    .unwrap_or_default()
                    .to_string()
            })
        })
    }

    /// Removes `reference` and, synchronously, the content and snapshots only it held,
    /// so that a later pull of the same content fetches and unpacks it again.
    pub async fn remove(&self, reference: &str) -> Result<(), String> {
        self.ctr(&["images", "rm", "--sync", reference], CTR_TIMEOUT)
            .await
            .map(|_| ())
    }

    /// `Ok` when `ctr images check` reports `reference` complete and unpacked for the
    /// host platform; `Err` with what it printed otherwise.
    pub async fn check_unpacked(&self, reference: &str) -> Result<(), String> {
        let out = self
            .ctr(
                &["images", "check", "--snapshotter", SNAPSHOTTER],
                CTR_TIMEOUT,
            )
            .await?;
        let line = out
            .lines()
            .find(|l| l.split_whitespace().next() == Some(reference))
            .ok_or_else(|| format!("{reference} not in `ctr images check`:\n{out}"))?;
        let cols: Vec<&str> = line.split_whitespace().collect();
        if cols.contains(&"complete") && cols.last() == Some(&"true") {
            Ok(())
        } else {
            Err(format!("{reference} not complete and unpacked: {line}"))
        }
    }

    /// The snapshots (committed layers and views) the native snapshotter holds.
    pub async fn snapshots(&self) -> String {
        self.ctr(
            &["snapshots", "--snapshotter", SNAPSHOTTER, "ls"],
            CTR_TIMEOUT,
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Whether the native snapshotter holds a committed snapshot named `chain_id`,
    /// which is how containerd records an unpacked image (or a prefix of its layers).
    pub async fn has_snapshot(&self, chain_id: &str) -> bool {
        self.snapshots()
            .await
            .lines()
            .any(|l| l.split_whitespace().next() == Some(chain_id))
    }

    /// Reads `path` from the unpacked root filesystem whose chain ID is `chain_id`
    /// (see [`chain_id`]). Needs no mount: a `ctr snapshots prepare` on top of it makes
    /// the native snapshotter copy the tree into a new directory, whose path
    /// `--mounts` prints as the bind mount's source; the file is read there and the
    /// snapshot removed. (`ctr images mount --snapshotter native` of containerd
    /// 1.6.20 still asks for the overlayfs snapshotter, so it cannot be used here.)
    pub async fn read_file(&self, chain_id: &str, path: &str) -> Result<String, String> {
        let key = format!("lank8s-read-{}", rand::random::<u64>());
        let mounts = self
            .ctr(
                &[
                    "snapshots",
                    "--snapshotter",
                    SNAPSHOTTER,
                    "prepare",
                    "--mounts",
                    &key,
                    chain_id,
                ],
                CTR_TIMEOUT,
            )
            .await?;
        let read = serde_json::from_str::<serde_json::Value>(&mounts)
            .map_err(|e| format!("mounts JSON {mounts:?}: {e}"))
            .and_then(|m| {
                m[0]["Source"]
                    .as_str()
                    .map(PathBuf::from)
                    .ok_or_else(|| format!("no mount source in {mounts}"))
            })
            .and_then(|root| {
                std::fs::read_to_string(root.join(path.trim_start_matches('/')))
                    .map_err(|e| format!("read {path} of {chain_id} in {}: {e}", root.display()))
            });
        let removed = self
            .ctr(
                &["snapshots", "--snapshotter", SNAPSHOTTER, "rm", &key],
                CTR_TIMEOUT,
            )
            .await;
        let contents = read?;
        removed?;
        Ok(contents)
    }
}

/// Runs `lank8s hosts --config <config> --mirror <mirror> --out <out>`, which writes
/// `<out>/containerd/certs.d/<registry>/hosts.toml` (the `?ns=` mirror form) and
/// `<out>/containerd-prefix/certs.d/<registry>/hosts.toml` (the `override_path` form)
/// for every upstream in `config`, among other clients' files.
pub fn lank8s_hosts(config: &Path, mirror: &str, out: &Path) -> Result<(), String> {
    let output = Command::new(env!("CARGO_BIN_EXE_lank8s"))
        .arg("hosts")
        .arg("--config")
        .arg(config)
        .arg("--mirror")
        .arg(mirror)
        .arg("--out")
        .arg(out)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("run lank8s hosts: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "lank8s hosts failed ({}):\nstdout: {}\nstderr: {}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

/// The chain ID of a stack of layers (OCI image spec): the first diff ID, then
/// `sha256(parent_chain_id + " " + diff_id)` for each further layer. containerd
/// names the committed snapshot of an unpacked image by it.
pub fn chain_id(diff_ids: &[String]) -> String {
    let mut chain = diff_ids.first().expect("at least one layer").clone();
    for diff_id in &diff_ids[1..] {
        chain = super::digest_of(format!("{chain} {diff_id}").as_bytes());
    }
    chain
}

impl Drop for Containerd {
    fn drop(&mut self) {
        super::kill_child(&mut self.child);
    }
}
