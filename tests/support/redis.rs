//! A real `redis-server` (the Debian package) run as a child process on a loopback port,
//! with no persistence, for the shared-state tests; it can be stopped and restarted on
//! the same port to play an outage.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const BINARY: &str = "redis-server";
/// A cold start answers PING within a few milliseconds.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Redis {
    dir: TempDir,
    port: u16,
    log_path: PathBuf,
    child: Option<Child>,
}

impl Redis {
    /// Starts an empty redis-server; panics (with its log) if it does not answer PING.
    pub async fn start() -> Redis {
        let dir = tempfile::Builder::new()
            .prefix("lank8s-redis-")
            .tempdir()
            .expect("create redis tempdir");
        let mut redis = Redis {
            log_path: dir.path().join("redis.log"),
            port: super::free_port(),
            dir,
            child: None,
        };
        redis.spawn().await;
        redis
    }

    async fn spawn(&mut self) {
        let log = super::append_log(&self.log_path);
        // No RDB snapshots and no AOF: a restart comes back empty, like a lost cache node.
        let mut cmd = Command::new(BINARY);
        cmd.arg("--bind")
            .arg("127.0.0.1")
            .arg("--port")
            .arg(self.port.to_string())
            .arg("--save")
            .arg("")
            .arg("--appendonly")
            .arg("no")
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--daemonize")
            .arg("no")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {BINARY} (apt-get install redis-server): {e}"));
        self.child = Some(child);
        if let Err(e) = self.wait_for_pong().await {
            super::kill_child(&mut self.child);
            panic!("redis-server did not start: {e}; log:\n{}", self.log());
        }
    }

    /// Polls with a raw `PING` until `+PONG` comes back, failing early if the server
    /// exited (a port taken in the meantime, say).
    async fn wait_for_pong(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut last;
        loop {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                return Err(format!("redis-server exited with {status}"));
            }
            match ping(self.port).await {
                Ok(()) => return Ok(()),
                Err(e) => last = e,
            }
            if Instant::now() > deadline {
                return Err(format!("no PONG after {READY_TIMEOUT:?} (last: {last})"));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `redis://127.0.0.1:<port>/`
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Kills the server (our own child, by its handle) and waits for it to exit.
    pub fn stop(&mut self) {
        super::kill_child(&mut self.child);
    }

    /// Starts it again, empty, on the same port.
    pub async fn restart(&mut self) {
        self.stop();
        self.spawn().await;
    }

    /// Freezes the server (SIGSTOP to our child's PID): connections are still accepted
    /// by the kernel but nothing is answered, like a blackholed network.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Undoes [`Redis::pause`].
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("redis-server is running").id();
        let status = Command::new("kill")
            .arg(signal)
            .arg(pid.to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {signal} {pid}: {status}");
    }

    pub fn log(&self) -> String {
        super::read_lossy(&self.log_path)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        super::kill_child(&mut self.child);
    }
}

async fn ping(port: u16) -> Result<(), String> {
    let exchange = async {
        let mut stream = TcpStream::connect(("127.0.0.1", port))
            .await
            .map_err(|e| format!("connect: {e}"))?;
        stream
            .write_all(b"PING\r\n")
            .await
            .map_err(|e| format!("write: {e}"))?;
        let mut answer = [0u8; 7];
        stream
            .read_exact(&mut answer)
            .await
            .map_err(|e| format!("read: {e}"))?;
        if &answer == b"+PONG\r\n" {
            Ok(())
        } else {
            Err(format!("answered {:?}", String::from_utf8_lossy(&answer)))
        }
    };
    tokio::time::timeout(Duration::from_secs(1), exchange)
        .await
        .unwrap_or_else(|_| Err("no answer within 1s".into()))
}
