//! A private `redis-server` (free port, temporary directory), and the
//! client settings every stage uses to talk to Redis.
//!
//! ```text
//! redis-server --port <free> --bind 127.0.0.1 --dir <tmp>
//!              --appendonly yes --appendfsync everysec --save ""
//! ```
//!
//! Durability: every write is appended to the append-only file (AOF)
//! before Redis answers, and the file is fsynced once a second. So a crash
//! of Redis itself (even SIGKILL) loses nothing; a crash of the whole
//! machine loses at most the last second. `appendfsync always` would close
//! that window at the cost of an fsync per write; RDB snapshots alone
//! (`save 60 1000`) would lose minutes of carts. The snapshots are turned off
//! (`--save ""`): the AOF is the one source of truth, and a learner can
//! read it (`cat <dir>/appendonlydir/*.incr.aof`).
//!
//! Tests use [`RedisServer::pause`] (SIGSTOP: Redis stops answering but
//! keeps every connection open, the nastiest kind of outage),
//! [`RedisServer::kill`] and [`RedisServer::restart`].

use std::path::PathBuf;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{
    ManagedProcess, OnFreePort, ServerProcess, ServiceError, find_on_path, launch_on_free_port,
    private_dir,
};

/// The variable that points the shop at a Redis it did not start.
pub const REDIS_URL_ENV: &str = "REDIS_URL";

/// A client for the Redis at `url`: one multiplexed connection that
/// reconnects by itself, shared by every request of an instance.
///
/// One connection, not a pool: Redis answers in order on one socket, so
/// concurrent requests pipeline through it for free. Each call waits at
/// most `timeout`. After a failure the client reconnects once and then
/// fails: a refused connection should be a fast answer (a 503, or a cache
/// miss), and the next request tries again anyway. Redis need not be up
/// yet: the client connects on first use. A malformed URL fails here.
pub fn client(url: &str, timeout: Duration) -> redis::RedisResult<ConnectionManager> {
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout))
        .set_max_delay(Duration::from_secs(1))
        .set_number_of_retries(1);
    ConnectionManager::new_lazy_with_config(redis::Client::open(url)?, config)
}

/// How long Redis may take to answer its first PING (loading a large AOF
/// takes a while).
const READY_WITHIN: Duration = Duration::from_secs(20);

/// A `redis-server` this process started, stopped when dropped.
#[derive(Debug)]
pub struct RedisServer {
    // Field order matters: the process stops before its directory goes.
    process: ServerProcess,
    binary: PathBuf,
    port: u16,
    role: RedisRole,
    dir: TempDir,
}

/// What a Redis is for, which decides how it treats its data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RedisRole {
    /// A record: durable (append-only file), never evicts, and bounded
    /// (256 MB): past that it refuses new writes (an `OOM` error the shop
    /// answers with a clear 503) rather than take the machine's memory or
    /// drop what it holds. What is in it exists nowhere else.
    Record,
    /// A cache: no persistence, 64 MB, evicts the least recently used key
    /// when full. Everything in it can be read again from where it came
    /// from. (Why a separate server? One Redis cannot both evict under
    /// pressure and promise never to drop a record.)
    Cache,
}

impl RedisServer {
    /// Starts a fresh durable server ([`RedisRole::Record`]) on a free port
    /// in a new temporary directory.
    pub async fn start() -> Result<Self, ServiceError> {
        Self::start_as(RedisRole::Record).await
    }

    /// Starts a server for `role`.
    pub async fn start_as(role: RedisRole) -> Result<Self, ServiceError> {
        let binary = find_on_path("redis-server").ok_or(ServiceError::Missing {
            program: "redis-server",
            package: "redis-server",
            variable: REDIS_URL_ENV,
        })?;
        let mut server = Self {
            process: ServerProcess::not_started("redis-server"),
            binary,
            port: 0,
            role,
            dir: private_dir("redis")?,
        };
        launch_on_free_port(&mut server).await?;
        Ok(server)
    }

    /// `redis://127.0.0.1:<port>/`
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.process.pid()
    }

    /// A plain client connection (for tests and demos to look inside).
    pub async fn connection(&self) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
        redis::Client::open(self.url())?
            .get_multiplexed_async_connection()
            .await
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

    /// Stops the server cleanly (SIGTERM), if it runs, and starts it again
    /// on the same port with the same directory, so it reloads its data.
    pub async fn restart(&mut self) -> Result<(), ServiceError> {
        self.process.stop();
        self.launch().await
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }
}

impl OnFreePort for RedisServer {
    fn use_port(&mut self, port: u16) {
        self.port = port;
    }

    /// Starts the process and waits until it answers PING.
    async fn launch(&mut self) -> Result<(), ServiceError> {
        let dir = self.dir.path().to_owned();
        let port = self.port.to_string();
        let mut args: Vec<&std::ffi::OsStr> = vec![
            "--port".as_ref(),
            port.as_ref(),
            "--bind".as_ref(),
            "127.0.0.1".as_ref(),
            "--dir".as_ref(),
            dir.as_os_str(),
            "--save".as_ref(),
            "".as_ref(),
            "--daemonize".as_ref(),
            "no".as_ref(),
            "--loglevel".as_ref(),
            "notice".as_ref(),
        ];
        match self.role {
            RedisRole::Record => args.extend::<[&std::ffi::OsStr; 8]>([
                "--appendonly".as_ref(),
                "yes".as_ref(),
                "--appendfsync".as_ref(),
                "everysec".as_ref(),
                "--maxmemory".as_ref(),
                "256mb".as_ref(),
                "--maxmemory-policy".as_ref(),
                "noeviction".as_ref(),
            ]),
            RedisRole::Cache => args.extend::<[&std::ffi::OsStr; 6]>([
                "--appendonly".as_ref(),
                "no".as_ref(),
                "--maxmemory".as_ref(),
                "64mb".as_ref(),
                "--maxmemory-policy".as_ref(),
                "allkeys-lru".as_ref(),
            ]),
        }
        let mut process =
            ManagedProcess::spawn("redis-server", &self.binary, args, &self.log_path(), None)?;
        let port = self.port;
        process
            .wait_until_ready(
                READY_WITHIN,
                Duration::from_millis(25),
                "answer PING",
                || ping(port),
            )
            .await?;
        self.process.started(process);
        Ok(())
    }
}

/// Whether a Redis on `port` answers `PING` with `PONG` (not `-LOADING`).
async fn ping(port: u16) -> bool {
    let attempt = async {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).await?;
        stream.write_all(b"PING\r\n").await?;
        let mut reply = [0u8; 7];
        stream.read_exact(&mut reply).await?;
        Ok::<bool, std::io::Error>(&reply == b"+PONG\r\n")
    };
    matches!(
        tokio::time::timeout(Duration::from_millis(500), attempt).await,
        Ok(Ok(true))
    )
}
