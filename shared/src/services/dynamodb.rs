//! A private DynamoDB-API server (free port, 127.0.0.1 only), which tests
//! can freeze, kill and restart: `dynalite`, DynamoDB's HTTP API over
//! LevelDB files on disk.
//!
//! ```text
//! node tools/dynalite/node_modules/dynalite/cli.js --host 127.0.0.1 --port <free> --path <dir>
//! ```
//!
//! dynalite is one Node process on this machine, not AWS: no three-zone
//! replication, no TTL deletion, single-digit-millisecond latency of its
//! own. It speaks the same API, so the shop's code is the code that would
//! run against the real service. It is an npm package, pinned in
//! `tools/dynalite/package-lock.json` and installed by `scripts/test`
//! (`npm ci --prefix tools/dynalite`). Rejected: Amazon's "DynamoDB local",
//! a Java download from outside the package registries.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{
    ManagedProcess, OnFreePort, ServerProcess, ServiceError, find_on_path, launch_on_free_port,
    private_dir,
};

/// The variable that points the shop at a DynamoDB endpoint it did not start.
pub const DYNAMODB_URL_ENV: &str = "DYNAMODB_URL";

/// Where `npm ci --prefix tools/dynalite` puts the server.
const DYNALITE_CLI: &str = "tools/dynalite/node_modules/dynalite/cli.js";

/// How long dynalite may take to answer HTTP (Node starts in ~0.3 s).
const READY_WITHIN: Duration = Duration::from_secs(20);

/// A dynalite this process started, stopped when dropped. Its LevelDB files
/// are in a private directory that outlives restarts of the server.
#[derive(Debug)]
pub struct DynamoServer {
    // Field order matters: the process stops before its directory goes.
    process: ServerProcess,
    node: PathBuf,
    cli: PathBuf,
    port: u16,
    dir: TempDir,
}

impl DynamoServer {
    /// Starts a server with an empty database.
    pub async fn start() -> Result<Self, ServiceError> {
        let node = find_on_path("node").ok_or(ServiceError::Missing {
            program: "node",
            package: "nodejs",
            variable: DYNAMODB_URL_ENV,
        })?;
        let cli = dynalite_cli()?;
        let mut server = Self {
            process: ServerProcess::not_started("dynalite"),
            node,
            cli,
            port: 0,
            dir: private_dir("dynalite")?,
        };
        launch_on_free_port(&mut server).await?;
        Ok(server)
    }

    /// `http://127.0.0.1:<port>`
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
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

    /// Stops the server (if it runs) and starts it again on the same port
    /// and the same files: every item written before is still there.
    pub async fn restart(&mut self) -> Result<(), ServiceError> {
        self.process.stop();
        self.launch().await
    }
}

impl OnFreePort for DynamoServer {
    fn use_port(&mut self, port: u16) {
        self.port = port;
    }

    /// Starts the process and waits until it answers HTTP.
    async fn launch(&mut self) -> Result<(), ServiceError> {
        let data = self.dir.path().join("data");
        let args = [
            self.cli.to_string_lossy().into_owned(),
            "--host".to_owned(),
            "127.0.0.1".to_owned(),
            "--port".to_owned(),
            self.port.to_string(),
            "--path".to_owned(),
            data.to_string_lossy().into_owned(),
            // A new table is ACTIVE at once, not after dynalite's default
            // half second of pretend provisioning.
            "--createTableMs".to_owned(),
            "0".to_owned(),
        ];
        let log = self.dir.path().join("dynalite.log");
        let mut process = ManagedProcess::spawn("dynalite", &self.node, &args, &log, None)?;
        let port = self.port;
        process
            .wait_until_ready(
                READY_WITHIN,
                Duration::from_millis(50),
                "answer HTTP",
                || answers_http(port),
            )
            .await?;
        self.process.started(process);
        Ok(())
    }
}

/// dynalite's command-line entry point, installed in the repository.
fn dynalite_cli() -> Result<PathBuf, ServiceError> {
    let repository = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let cli = repository.join(DYNALITE_CLI);
    if cli.is_file() {
        Ok(cli)
    } else {
        Err(ServiceError::MissingNpm {
            program: "dynalite",
            install: "npm ci --prefix tools/dynalite",
            variable: DYNAMODB_URL_ENV,
        })
    }
}

/// Whether something on `port` answers an HTTP request (dynalite answers
/// any, even one without a signature, with an HTTP status line).
async fn answers_http(port: u16) -> bool {
    let attempt = async {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).await?;
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            .await?;
        let mut reply = [0u8; 5];
        stream.read_exact(&mut reply).await?;
        Ok::<bool, std::io::Error>(&reply == b"HTTP/")
    };
    matches!(
        tokio::time::timeout(Duration::from_millis(500), attempt).await,
        Ok(Ok(true))
    )
}
