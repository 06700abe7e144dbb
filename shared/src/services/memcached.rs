//! A private `memcached` (free port, 127.0.0.1 only), which tests can
//! freeze, kill and restart.
//!
//! ```text
//! memcached --port=<free> --listen=127.0.0.1 --udp-port=0 --memory-limit=<MB>
//! ```
//!
//! Memcached keeps everything in memory: there is no file to reload, so a
//! restart starts empty, and a full server evicts its least recently used
//! items without telling anyone. Both are what the stage-4 lesson on
//! choosing a session store shows.

use std::path::PathBuf;
use std::time::Duration;

use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{
    ManagedProcess, OnFreePort, ServerProcess, ServiceError, find_on_path, launch_on_free_port,
    private_dir,
};

/// The variable that points the shop at a Memcached it did not start.
pub const MEMCACHED_URL_ENV: &str = "MEMCACHED_URL";

/// How much memory a private server may use, unless told otherwise.
pub const DEFAULT_MEMORY_MB: u32 = 64;

/// How long Memcached may take to answer `version`.
const READY_WITHIN: Duration = Duration::from_secs(10);

/// A `memcached` this process started, stopped when dropped.
#[derive(Debug)]
pub struct MemcachedServer {
    // Field order matters: the process stops before its directory goes.
    process: ServerProcess,
    binary: PathBuf,
    port: u16,
    memory_mb: u32,
    /// Only its log: Memcached writes nothing else.
    dir: TempDir,
}

impl MemcachedServer {
    /// Starts a server with [`DEFAULT_MEMORY_MB`] of memory.
    pub async fn start() -> Result<Self, ServiceError> {
        Self::start_with_memory(DEFAULT_MEMORY_MB).await
    }

    /// Starts a server that holds at most `memory_mb` megabytes of items
    /// (and evicts the least recently used past that).
    pub async fn start_with_memory(memory_mb: u32) -> Result<Self, ServiceError> {
        let binary = find_on_path("memcached").ok_or(ServiceError::Missing {
            program: "memcached",
            package: "memcached",
            variable: MEMCACHED_URL_ENV,
        })?;
        let mut server = Self {
            process: ServerProcess::not_started("memcached"),
            binary,
            port: 0,
            memory_mb,
            dir: private_dir("memcached")?,
        };
        launch_on_free_port(&mut server).await?;
        Ok(server)
    }

    /// `memcache://127.0.0.1:<port>`
    pub fn url(&self) -> String {
        format!("memcache://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Freezes the server (SIGSTOP): connections stay open, nothing answers.
    pub fn pause(&self) -> std::io::Result<()> {
        self.process.pause()
    }

    /// Wakes a paused server (SIGCONT).
    pub fn resume(&self) -> std::io::Result<()> {
        self.process.resume()
    }

    /// Kills the server at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// Stops the server (if it runs) and starts it again on the same port:
    /// empty, as Memcached always starts.
    pub async fn restart(&mut self) -> Result<(), ServiceError> {
        self.process.stop();
        self.launch().await
    }
}

impl OnFreePort for MemcachedServer {
    fn use_port(&mut self, port: u16) {
        self.port = port;
    }

    /// Starts the process and waits until it answers `version`.
    async fn launch(&mut self) -> Result<(), ServiceError> {
        let mut args = vec![
            format!("--port={}", self.port),
            "--listen=127.0.0.1".to_owned(),
            // UDP off: it is how open memcached servers became DDoS
            // amplifiers (2018), and nothing here needs it.
            "--udp-port=0".to_owned(),
            format!("--memory-limit={}", self.memory_mb),
        ];
        // Memcached refuses to run as root unless told whom to become.
        if nix::unistd::Uid::effective().is_root() {
            args.push("--user=nobody".to_owned());
        }
        let log = self.dir.path().join("memcached.log");
        let mut process = ManagedProcess::spawn("memcached", &self.binary, &args, &log, None)?;
        let port = self.port;
        process
            .wait_until_ready(
                READY_WITHIN,
                Duration::from_millis(25),
                "answer `version`",
                || answers_version(port),
            )
            .await?;
        self.process.started(process);
        Ok(())
    }
}

/// Whether a Memcached on `port` answers `version`.
async fn answers_version(port: u16) -> bool {
    let attempt = async {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).await?;
        stream.write_all(b"version\r\n").await?;
        let mut reply = [0u8; 8];
        stream.read_exact(&mut reply).await?;
        Ok::<bool, std::io::Error>(&reply == b"VERSION ")
    };
    matches!(
        tokio::time::timeout(Duration::from_millis(500), attempt).await,
        Ok(Ok(true))
    )
}
