//! Just enough of Memcached's text protocol for sessions, over a small
//! pool of connections.
//!
//! ```text
//! gets <key>                          → VALUE <key> <flags> <bytes> <cas> / <data> / END
//! gat <exptime> <key>                 → VALUE … / END         (get, and renew the expiry)
//! add <key> 0 <exptime> <bytes>       → STORED | NOT_STORED   (only if absent)
//! cas <key> 0 <exptime> <bytes> <cas> → STORED | EXISTS | NOT_FOUND
//! delete <key>                        → DELETED | NOT_FOUND
//! stats                               → STAT <name> <value> … / END
//! ```
//!
//! Why write it here rather than take a client crate? These six commands
//! are the lesson (the `cas` number *is* how Memcached keeps a change
//! atomic), they fit on a page, and the async crates on crates.io either
//! lack `gets`/`cas`/`gat` or bring a runtime of their own.
//!
//! One request at a time per connection, and a connection is handed back
//! to the pool only after a whole reply was read: a call that failed or
//! was cancelled (the store timeout) drops its connection, which may still
//! have half a reply in it. Unlike Redis's one multiplexed connection,
//! Memcached's text protocol has no way to match a late reply to its
//! request, so a pool it is.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufStream};
use tokio::net::TcpStream;

/// The most idle connections kept for reuse; more are opened when needed
/// and closed after use.
const IDLE_CONNECTIONS: usize = 32;

/// What can go wrong talking to Memcached.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    /// Not reachable, or the connection broke.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// Memcached refused the command (`SERVER_ERROR out of memory …`,
    /// `CLIENT_ERROR …`), or answered something this client does not read.
    #[error("memcached answered: {0}")]
    Refused(String),
}

/// A stored value and its `cas` number (which changes on every write).
#[derive(Debug)]
pub(crate) struct Item {
    pub data: Vec<u8>,
    pub cas: u64,
}

/// What a storage command did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Written.
    Stored,
    /// `add`: the key exists already.
    NotStored,
    /// `cas`: someone else wrote the key since we read it.
    Exists,
    /// `cas`: the key is gone (deleted, expired, evicted).
    NotFound,
}

/// A client for one Memcached server.
#[derive(Debug)]
pub(crate) struct Client {
    address: String,
    idle: Mutex<Vec<BufStream<TcpStream>>>,
}

impl Client {
    /// A client for `host:port`. Nothing is connected until first use.
    pub fn new(address: String) -> Self {
        Self {
            address,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// `gets`: the value with its `cas` number.
    pub async fn gets(&self, key: &str) -> Result<Option<Item>, Error> {
        self.call(format!("gets {key}\r\n").as_bytes(), read_one_value)
            .await
    }

    /// `gat`: the value, and its expiry renewed to `exptime` seconds, in
    /// one round trip.
    pub async fn gat(&self, exptime: u32, key: &str) -> Result<Option<Item>, Error> {
        self.call(
            format!("gat {exptime} {key}\r\n").as_bytes(),
            read_one_value,
        )
        .await
    }

    /// `add`: stores the value only if the key does not exist.
    pub async fn add(&self, key: &str, exptime: u32, data: &[u8]) -> Result<Outcome, Error> {
        let command = storage_command(&format!("add {key} 0 {exptime} {}", data.len()), data);
        self.call(&command, read_stored).await
    }

    /// `cas`: stores the value only if nobody wrote the key since `gets`
    /// gave us `cas`.
    pub async fn cas(
        &self,
        key: &str,
        exptime: u32,
        data: &[u8],
        cas: u64,
    ) -> Result<Outcome, Error> {
        let command = storage_command(&format!("cas {key} 0 {exptime} {} {cas}", data.len()), data);
        self.call(&command, read_stored).await
    }

    /// `delete`: whether the key was there.
    pub async fn delete(&self, key: &str) -> Result<bool, Error> {
        self.call(format!("delete {key}\r\n").as_bytes(), |connection| {
            Box::pin(async move {
                match read_line(connection).await?.as_str() {
                    "DELETED" => Ok(true),
                    "NOT_FOUND" => Ok(false),
                    other => Err(refused(other)),
                }
            })
        })
        .await
    }

    /// `stats`: the server's counters, by name (`evictions`, `curr_items`,
    /// `bytes`, `limit_maxbytes`, …).
    pub async fn stats(&self) -> Result<HashMap<String, String>, Error> {
        self.call(b"stats\r\n", |connection| {
            Box::pin(async move {
                let mut stats = HashMap::new();
                loop {
                    let line = read_line(connection).await?;
                    if line == "END" {
                        return Ok(stats);
                    }
                    let mut words = line.splitn(3, ' ');
                    match (words.next(), words.next(), words.next()) {
                        (Some("STAT"), Some(name), Some(value)) => {
                            stats.insert(name.to_owned(), value.to_owned());
                        }
                        _ => return Err(refused(&line)),
                    }
                }
            })
        })
        .await
    }

    /// Sends one command and reads its reply on a pooled connection; the
    /// connection goes back to the pool only if the whole reply was read.
    async fn call<T>(
        &self,
        command: &[u8],
        read: impl for<'c> Fn(&'c mut BufStream<TcpStream>) -> ReplyFuture<'c, T>,
    ) -> Result<T, Error> {
        if let Some(mut connection) = self.take_idle() {
            match exchange(&mut connection, command, &read).await {
                // Closed while it sat in the pool (Memcached restarted):
                // nothing reached a live server, so try a fresh connection.
                Err(Error::Io(error)) if closed_meanwhile(&error) => {
                    tracing::debug!(%error, "a pooled memcached connection was closed; reconnecting");
                }
                reply => return self.after(connection, reply),
            }
        }
        let stream = TcpStream::connect(&self.address).await?;
        stream.set_nodelay(true)?;
        let mut connection = BufStream::new(stream);
        let reply = exchange(&mut connection, command, &read).await;
        self.after(connection, reply)
    }

    /// Keeps the connection for the next call if it is still in step: a
    /// whole reply was read (a refusal is a whole reply too).
    fn after<T>(
        &self,
        connection: BufStream<TcpStream>,
        reply: Result<T, Error>,
    ) -> Result<T, Error> {
        if matches!(reply, Ok(_) | Err(Error::Refused(_))) {
            self.give_back(connection);
        }
        reply
    }

    fn take_idle(&self) -> Option<BufStream<TcpStream>> {
        self.idle.lock().ok()?.pop()
    }

    fn give_back(&self, connection: BufStream<TcpStream>) {
        if let Ok(mut idle) = self.idle.lock()
            && idle.len() < IDLE_CONNECTIONS
        {
            idle.push(connection);
        }
    }
}

/// Writes one command and reads its reply.
async fn exchange<T>(
    connection: &mut BufStream<TcpStream>,
    command: &[u8],
    read: &impl for<'c> Fn(&'c mut BufStream<TcpStream>) -> ReplyFuture<'c, T>,
) -> Result<T, Error> {
    connection.write_all(command).await?;
    connection.flush().await?;
    read(connection).await
}

/// Whether an error says the server had closed the connection before we
/// used it (so the command cannot have been run).
fn closed_meanwhile(error: &std::io::Error) -> bool {
    use std::io::ErrorKind::{BrokenPipe, ConnectionAborted, ConnectionReset, UnexpectedEof};
    matches!(
        error.kind(),
        BrokenPipe | ConnectionAborted | ConnectionReset | UnexpectedEof
    )
}

/// A reply reader's future, borrowing the connection.
type ReplyFuture<'c, T> = std::pin::Pin<Box<dyn Future<Output = Result<T, Error>> + Send + 'c>>;

/// `<header>\r\n<data>\r\n`
fn storage_command(header: &str, data: &[u8]) -> Vec<u8> {
    let mut command = Vec::with_capacity(header.len() + data.len() + 4);
    command.extend_from_slice(header.as_bytes());
    command.extend_from_slice(b"\r\n");
    command.extend_from_slice(data);
    command.extend_from_slice(b"\r\n");
    command
}

fn read_stored(connection: &mut BufStream<TcpStream>) -> ReplyFuture<'_, Outcome> {
    Box::pin(async move {
        match read_line(connection).await?.as_str() {
            "STORED" => Ok(Outcome::Stored),
            "NOT_STORED" => Ok(Outcome::NotStored),
            "EXISTS" => Ok(Outcome::Exists),
            "NOT_FOUND" => Ok(Outcome::NotFound),
            other => Err(refused(other)),
        }
    })
}

/// `VALUE <key> <flags> <bytes> [<cas>]`, the data, `END`; or just `END`.
/// (`gets` sends the `cas` number; `gat` does not, and it reads as 0.)
fn read_one_value(connection: &mut BufStream<TcpStream>) -> ReplyFuture<'_, Option<Item>> {
    Box::pin(async move {
        let line = read_line(connection).await?;
        if line == "END" {
            return Ok(None);
        }
        let words: Vec<&str> = line.split(' ').collect();
        let (Some(&"VALUE"), Some(bytes)) = (words.first(), words.get(3)) else {
            return Err(refused(&line));
        };
        let cas = words.get(4).map_or(Ok(0), |cas| cas.parse::<u64>());
        let (Ok(bytes), Ok(cas)) = (bytes.parse::<usize>(), cas) else {
            return Err(refused(&line));
        };
        // The data and its own \r\n.
        let mut data = vec![0; bytes + 2];
        connection.read_exact(&mut data).await?;
        data.truncate(bytes);
        match read_line(connection).await?.as_str() {
            "END" => Ok(Some(Item { data, cas })),
            other => Err(refused(other)),
        }
    })
}

/// One reply line, without its `\r\n`. A line that does not end (the
/// connection closed) is an error.
async fn read_line(connection: &mut BufStream<TcpStream>) -> Result<String, Error> {
    let mut line = String::new();
    connection.read_line(&mut line).await?;
    match line.strip_suffix("\r\n") {
        Some(whole) => Ok(whole.to_owned()),
        None => Err(Error::Io(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "memcached closed the connection mid-reply",
        ))),
    }
}

fn refused(line: &str) -> Error {
    Error::Refused(line.to_owned())
}
