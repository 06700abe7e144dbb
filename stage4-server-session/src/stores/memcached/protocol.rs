//! Just enough of Memcached's meta protocol for sessions, pipelined over
//! one connection.
//!
//! ```text
//! mg <key> v c                          → VA <bytes> c<cas> / <data> | EN   (gets: the value and its cas)
//! mg <key> v T<exptime>                 → VA <bytes> / <data> | EN          (gat: get, and renew the expiry)
//! ms <key> <bytes> T<exptime> ME        → HD | NS                         (add: only if absent)
//! ms <key> <bytes> T<exptime> C<cas>    → HD | EX | NF                    (cas: only if unchanged)
//! md <key>                              → HD | NF                         (delete)
//! stats                                 → STAT <name> <value> … / END
//! ```
//!
//! Why the meta commands (Memcached 1.6 and later), not the classic
//! `gets`, `gat`, `add`, `cas` and `delete`? They do the same things (the
//! `cas` number is still how a change stays atomic), but Memcached (1.6.18
//! here) answers each pipelined classic read (`get`, `gets`, `gat`) with a
//! send of its own, where it answers a run of meta commands with one send
//! for the lot. Counted with `perf stat` under the stage-4 read benchmark,
//! the classic `gat` cost Memcached a `sendmsg` per read (161,526 for
//! 164,787 reads); Redis, for the same reads, wrote once per four. The meta
//! protocol is also the one Memcached's maintainers recommend for new
//! clients (stable since 1.6.10: an older server answers `ERROR`).
//!
//! Why write it here rather than take a client crate? These five commands
//! are the lesson, they fit on a page, and the async crates on crates.io
//! either lack cas and touch or bring a runtime of their own.
//!
//! Memcached answers the commands of a connection in the order they came,
//! so one connection carries every request of an instance, as the Redis
//! client's multiplexed connection does: a writer task sends the commands
//! in arrival order, everything queued at that moment in one write, and a
//! reader task reads the replies in that same order, each with the reader
//! its command needs, and hands each to its caller. A caller that gave up
//! (the store timeout) leaves its reply to be read and dropped: the
//! connection stays in step. One that breaks (the server went away, a
//! reply this client cannot read) fails every request waiting on it, and
//! the next request opens a new connection.
//!
//! The rejected alternative, a pool of connections with one request at a
//! time on each, is simpler, and was measured here first: every request
//! then wrote and read its own connection alone, a system call more per
//! request than the pipeline (see the stage-4 figures in the README).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{mpsc, oneshot};

/// The most commands waiting to be written. A frozen server reads
/// nothing: its callers give up at the store timeout, but their commands
/// stay queued, so past this many the next ones are refused at once
/// instead of piling up in memory for as long as the freeze lasts.
const QUEUED_COMMANDS: usize = 4096;

/// The side of the connection replies are read from.
type Replies = BufReader<OwnedReadHalf>;

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
    connection: Mutex<Option<Pipeline>>,
}

impl Client {
    /// A client for `host:port`. Nothing is connected until first use.
    pub fn new(address: String) -> Self {
        Self {
            address,
            connection: Mutex::new(None),
        }
    }

    /// `gets`: the value with its `cas` number.
    pub async fn gets(&self, key: &str) -> Result<Option<Item>, Error> {
        self.call(format!("mg {key} v c\r\n").into_bytes(), read_value)
            .await
    }

    /// `gat`: the value, and its expiry renewed to `exptime` seconds, in
    /// one round trip.
    pub async fn gat(&self, exptime: u32, key: &str) -> Result<Option<Item>, Error> {
        self.call(
            format!("mg {key} v T{exptime}\r\n").into_bytes(),
            read_value,
        )
        .await
    }

    /// `add`: stores the value only if the key does not exist.
    pub async fn add(&self, key: &str, exptime: u32, data: &[u8]) -> Result<Outcome, Error> {
        let command = storage_command(&format!("ms {key} {} T{exptime} ME", data.len()), data);
        self.call(command, read_stored).await
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
        let command = storage_command(&format!("ms {key} {} T{exptime} C{cas}", data.len()), data);
        self.call(command, read_stored).await
    }

    /// `delete`: whether the key was there.
    pub async fn delete(&self, key: &str) -> Result<bool, Error> {
        self.call(format!("md {key}\r\n").into_bytes(), read_deleted)
            .await
    }

    /// `stats`: the server's counters, by name (`evictions`, `curr_items`,
    /// `bytes`, `limit_maxbytes`, …).
    pub async fn stats(&self) -> Result<HashMap<String, String>, Error> {
        self.call(b"stats\r\n".to_vec(), read_stats).await
    }

    /// Sends one command down the connection and waits for its reply.
    async fn call<T: Send + 'static>(&self, command: Vec<u8>, read: Reader<T>) -> Result<T, Error> {
        let (answer, answered) = oneshot::channel();
        let job = Job {
            command,
            read: Box::new(move |replies| {
                Box::pin(async move {
                    let reply = read(replies).await;
                    // A refusal is a whole reply: still in step.
                    let in_step = matches!(reply, Ok(_) | Err(Error::Refused(_)));
                    // The caller may have given up (the store timeout).
                    let _ = answer.send(reply);
                    in_step
                })
            }),
        };
        // A connection found broken before anything was sent on it is
        // replaced, once: nothing reached the server.
        let mut unsent = job;
        let mut replace = false;
        loop {
            let jobs = self.connection(replace).await?;
            match jobs.try_send(unsent) {
                Ok(()) => break,
                Err(mpsc::error::TrySendError::Closed(job)) if !replace => {
                    unsent = job;
                    replace = true;
                }
                Err(mpsc::error::TrySendError::Full(_)) => {
                    return Err(Error::Io(std::io::Error::new(
                        std::io::ErrorKind::WouldBlock,
                        "memcached is not reading its commands (frozen or overloaded)",
                    )));
                }
                Err(_) => return Err(broken()),
            }
        }
        answered.await.unwrap_or_else(|_| Err(broken()))
    }

    /// The open connection's queue, or a new connection's when there is
    /// none, it broke, or `replace` asks for one.
    async fn connection(&self, replace: bool) -> Result<mpsc::Sender<Job>, Error> {
        if !replace
            && let Ok(current) = self.connection.lock()
            && let Some(pipeline) = current.as_ref()
            && pipeline.open.load(Ordering::Acquire)
        {
            return Ok(pipeline.jobs.clone());
        }
        let stream = TcpStream::connect(&self.address).await?;
        stream.set_nodelay(true)?;
        let pipeline = Pipeline::start(stream);
        let jobs = pipeline.jobs.clone();
        if let Ok(mut current) = self.connection.lock() {
            *current = Some(pipeline);
        }
        Ok(jobs)
    }
}

/// Reads one kind of reply.
type Reader<T> = for<'c> fn(&'c mut Replies) -> ReplyFuture<'c, T>;

/// A command, and what reads its reply and hands it to the caller (saying
/// whether the connection is still in step afterwards).
struct Job {
    command: Vec<u8>,
    read: Box<dyn for<'c> FnOnce(&'c mut Replies) -> InStep<'c> + Send>,
}

/// One connection: a writer task and a reader task, and whether both run.
#[derive(Debug)]
struct Pipeline {
    jobs: mpsc::Sender<Job>,
    open: Arc<AtomicBool>,
}

impl Pipeline {
    fn start(stream: TcpStream) -> Self {
        let (read_half, write_half) = stream.into_split();
        let (jobs, queued) = mpsc::channel(QUEUED_COMMANDS);
        let (expect, expected) = mpsc::unbounded_channel();
        let open = Arc::new(AtomicBool::new(true));
        tokio::spawn(write_commands(
            BufWriter::new(write_half),
            queued,
            expect,
            Arc::clone(&open),
        ));
        tokio::spawn(read_replies(
            BufReader::new(read_half),
            expected,
            Arc::clone(&open),
        ));
        Self { jobs, open }
    }
}

/// Writes the commands in the order they came; the reply readers go to the
/// reader task in that same order, before the command they belong to.
async fn write_commands(
    mut connection: BufWriter<OwnedWriteHalf>,
    mut queued: mpsc::Receiver<Job>,
    expect: mpsc::UnboundedSender<Job>,
    open: Arc<AtomicBool>,
) {
    while let Some(job) = queued.recv().await {
        let mut next = Some(job);
        // Everything queued now goes out in one write.
        while let Some(job) = next {
            let written = connection.write_all(&job.command).await;
            if written.is_err() || expect.send(job).is_err() {
                open.store(false, Ordering::Release);
                return;
            }
            next = queued.try_recv().ok();
        }
        if connection.flush().await.is_err() {
            open.store(false, Ordering::Release);
            return;
        }
    }
}

/// Reads the replies in order, until the connection breaks or falls out of
/// step; the requests still waiting then fail (their readers are dropped).
/// While no reply is due it still watches the connection, so that one the
/// server closed (a restart) is known closed before the next request would
/// be sent down it.
async fn read_replies(
    mut connection: Replies,
    mut expected: mpsc::UnboundedReceiver<Job>,
    open: Arc<AtomicBool>,
) {
    loop {
        let job = tokio::select! {
            // A reply's reader is queued before its command is sent, so
            // when a reply arrives its reader is here: look here first.
            biased;
            job = expected.recv() => job,
            // Nothing is due: the end of the stream, or bytes nobody asked
            // for. Either way this connection is done.
            _ = connection.fill_buf() => None,
        };
        let Some(job) = job else { break };
        if !(job.read)(&mut connection).await {
            break;
        }
    }
    open.store(false, Ordering::Release);
}

/// A reply reader's future, borrowing the connection.
type ReplyFuture<'c, T> = std::pin::Pin<Box<dyn Future<Output = Result<T, Error>> + Send + 'c>>;

/// A job's reading of its reply: whether the connection is still in step.
type InStep<'c> = std::pin::Pin<Box<dyn Future<Output = bool> + Send + 'c>>;

/// `<header>\r\n<data>\r\n`
fn storage_command(header: &str, data: &[u8]) -> Vec<u8> {
    let mut command = Vec::with_capacity(header.len() + data.len() + 4);
    command.extend_from_slice(header.as_bytes());
    command.extend_from_slice(b"\r\n");
    command.extend_from_slice(data);
    command.extend_from_slice(b"\r\n");
    command
}

/// `HD` (stored), `NS` (not stored: `add` found the key), `EX` (`cas`:
/// someone wrote it since), `NF` (`cas`: it is gone).
fn read_stored(connection: &mut Replies) -> ReplyFuture<'_, Outcome> {
    Box::pin(async move {
        match read_line(connection).await?.as_str() {
            "HD" => Ok(Outcome::Stored),
            "NS" => Ok(Outcome::NotStored),
            "EX" => Ok(Outcome::Exists),
            "NF" => Ok(Outcome::NotFound),
            other => Err(refused(other)),
        }
    })
}

/// `VA <bytes> [c<cas>]` and the data; or `EN`, no such key. (The `cas`
/// number comes only when asked for with `c`; without it, it reads as 0.)
fn read_value(connection: &mut Replies) -> ReplyFuture<'_, Option<Item>> {
    Box::pin(async move {
        let line = read_line(connection).await?;
        if line == "EN" {
            return Ok(None);
        }
        let mut words = line.split(' ');
        let (Some("VA"), Some(bytes)) = (words.next(), words.next()) else {
            return Err(refused(&line));
        };
        let cas = words
            .find_map(|flag| flag.strip_prefix('c'))
            .map_or(Ok(0), str::parse::<u64>);
        let (Ok(bytes), Ok(cas)) = (bytes.parse::<usize>(), cas) else {
            return Err(refused(&line));
        };
        // The data and its own \r\n.
        let mut data = vec![0; bytes + 2];
        connection.read_exact(&mut data).await?;
        if !data.ends_with(b"\r\n") {
            return Err(refused(&line));
        }
        data.truncate(bytes);
        Ok(Some(Item { data, cas }))
    })
}

/// `HD` or `NF`: whether the key was there.
fn read_deleted(connection: &mut Replies) -> ReplyFuture<'_, bool> {
    Box::pin(async move {
        match read_line(connection).await?.as_str() {
            "HD" => Ok(true),
            "NF" => Ok(false),
            other => Err(refused(other)),
        }
    })
}

/// `STAT <name> <value>` lines, then `END`.
fn read_stats(connection: &mut Replies) -> ReplyFuture<'_, HashMap<String, String>> {
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
}

/// One reply line, without its `\r\n`. A line that does not end (the
/// connection closed) is an error.
async fn read_line(connection: &mut Replies) -> Result<String, Error> {
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

fn broken() -> Error {
    Error::Io(std::io::Error::new(
        std::io::ErrorKind::UnexpectedEof,
        "the connection to memcached broke before the reply came",
    ))
}

fn refused(line: &str) -> Error {
    match line {
        // What Memcached says to a command it does not know.
        "ERROR" => Error::Refused(
            "ERROR: this memcached does not speak the meta protocol (mg, ms, md): it needs 1.6.10 or newer"
                .to_owned(),
        ),
        other => Error::Refused(other.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_without_the_meta_protocol_is_named_as_such() {
        let error = refused("ERROR").to_string();
        assert!(error.contains("1.6.10 or newer"), "{error}");
        // Anything else is passed on as Memcached said it.
        let error = refused("SERVER_ERROR out of memory storing object").to_string();
        assert!(
            error.ends_with("SERVER_ERROR out of memory storing object"),
            "{error}"
        );
    }
}
