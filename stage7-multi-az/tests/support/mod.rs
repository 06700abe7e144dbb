//! What the stage-7 tests share: a region of real namespaces, and probes
//! that connect from inside a machine or from the host.

#![allow(dead_code)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use stage7::netns;
use stage7::region::{Machine, Mode, NetworkChoice, Region};
use tokio::net::{TcpSocket, TcpStream};

/// How long a probe waits: a dropped SYN never answers, so a blocked
/// connection is one that times out.
pub const PROBE_DEADLINE: Duration = Duration::from_secs(1);

/// A region of real namespaces, or a failing test that says what is missing.
pub fn region() -> Region {
    match Region::create(NetworkChoice::Namespaces) {
        Ok(region) => {
            assert_eq!(region.mode(), &Mode::Namespaces);
            region
        }
        Err(error) => panic!(
            "stage 7's tests need network namespaces and nftables: run them as root with `ip` (iproute2) and `nft` (apt-get install nftables). {error}"
        ),
    }
}

/// What a connection attempt came to.
#[derive(Debug, PartialEq, Eq)]
pub enum Probe {
    Connected,
    /// Nothing answered within the deadline: a firewall dropped the SYN.
    TimedOut,
    /// Something said no (nothing listening, or a rejecting rule).
    Refused(String),
}

async fn probe(connect: impl std::future::Future<Output = std::io::Result<TcpStream>>) -> Probe {
    match tokio::time::timeout(PROBE_DEADLINE, connect).await {
        Ok(Ok(_)) => Probe::Connected,
        Ok(Err(error)) => Probe::Refused(error.to_string()),
        Err(_) => Probe::TimedOut,
    }
}

/// Connects from inside `from` to `to`.
pub async fn probe_from_machine(from: &Machine, to: SocketAddr) -> Probe {
    netns::run(from.netns.as_deref(), move || {
        Box::pin(probe(TcpStream::connect(to)))
    })
    .await
    .expect("the probe thread")
}

/// Connects from the host, from source address `source`.
pub async fn probe_from_host(source: Ipv4Addr, to: SocketAddr) -> Probe {
    probe(async move {
        let socket = TcpSocket::new_v4()?;
        socket.bind(SocketAddr::new(IpAddr::V4(source), 0))?;
        socket.connect(to).await
    })
    .await
}

/// Listens on `port` inside `machine` and accepts (and drops) connections
/// until the process ends.
pub async fn listen_in(machine: &Machine, port: u16) {
    let address = SocketAddr::from((machine.address, port));
    let (ready, bound) = tokio::sync::oneshot::channel();
    netns::spawn(machine.netns.as_deref(), "listener", move || {
        Box::pin(async move {
            let listener = tokio::net::TcpListener::bind(address).await;
            let listener = match listener {
                Ok(listener) => {
                    let _ = ready.send(Ok(()));
                    listener
                }
                Err(error) => {
                    let _ = ready.send(Err(error.to_string()));
                    return;
                }
            };
            while let Ok((stream, _)) = listener.accept().await {
                drop(stream);
            }
        })
    })
    .expect("a listener thread");
    bound
        .await
        .expect("the listener thread")
        .unwrap_or_else(|e| panic!("cannot listen on {address}: {e}"));
}

/// SQL from inside a machine (the security groups decide who may ask).
pub mod sql {
    use std::collections::BTreeSet;
    use std::time::Duration;

    use sqlx::{Connection, PgConnection};
    use stage7::netns;
    use stage7::region::Machine;

    /// Runs `statement` on the server at `url`, from `from`.
    pub async fn execute(from: &Machine, url: &str, statement: &'static str) {
        let url = url.to_owned();
        netns::run(from.netns.as_deref(), move || {
            Box::pin(async move {
                let mut connection = PgConnection::connect(&url).await?;
                sqlx::raw_sql(statement).execute(&mut connection).await?;
                Ok::<_, sqlx::Error>(())
            })
        })
        .await
        .expect("the SQL thread")
        .unwrap_or_else(|e| panic!("{statement}: {e}"));
    }

    /// Inserts each of `ids` into `orders`, each in its own transaction on
    /// its own connection, all at once; a commit that has not returned
    /// within `deadline` is not acknowledged (the client gave up, as a
    /// shop request would). Returns the acknowledged ids.
    pub async fn commit_each(
        from: &Machine,
        url: &str,
        ids: std::ops::RangeInclusive<i32>,
        deadline: Duration,
    ) -> BTreeSet<i32> {
        let url = url.to_owned();
        netns::run(from.netns.as_deref(), move || {
            Box::pin(async move {
                let mut writes = tokio::task::JoinSet::new();
                for id in ids {
                    let url = url.clone();
                    writes.spawn(async move {
                        let write = async {
                            let mut connection = PgConnection::connect(&url).await?;
                            sqlx::query("INSERT INTO orders (id) VALUES ($1)")
                                .bind(id)
                                .execute(&mut connection)
                                .await?;
                            Ok::<_, sqlx::Error>(())
                        };
                        matches!(tokio::time::timeout(deadline, write).await, Ok(Ok(())))
                            .then_some(id)
                    });
                }
                let mut acknowledged = BTreeSet::new();
                while let Some(done) = writes.join_next().await {
                    if let Ok(Some(id)) = done {
                        acknowledged.insert(id);
                    }
                }
                acknowledged
            })
        })
        .await
        .expect("the SQL thread")
    }

    /// The ids in `orders` on the server at `url`.
    pub async fn ids(from: &Machine, url: &str) -> Result<BTreeSet<i32>, sqlx::Error> {
        let url = url.to_owned();
        netns::run(from.netns.as_deref(), move || {
            Box::pin(async move {
                let mut connection = PgConnection::connect(&url).await?;
                let ids: Vec<i32> = sqlx::query_scalar("SELECT id FROM orders")
                    .fetch_all(&mut connection)
                    .await?;
                Ok(ids.into_iter().collect())
            })
        })
        .await
        .expect("the SQL thread")
    }

    /// One value of `query` (a text column) on the server at `url`.
    pub async fn text(
        from: &Machine,
        url: &str,
        query: &'static str,
    ) -> Result<String, sqlx::Error> {
        let url = url.to_owned();
        netns::run(from.netns.as_deref(), move || {
            Box::pin(async move {
                let mut connection = PgConnection::connect(&url).await?;
                sqlx::query_scalar(query).fetch_one(&mut connection).await
            })
        })
        .await
        .expect("the SQL thread")
    }
}

/// Redis commands from inside a machine.
pub mod redis_in {
    use std::time::Duration;

    use stage7::netns;
    use stage7::region::Machine;

    /// Runs `command` (words) on the Redis at `url`, from `from`, within a
    /// second.
    pub async fn query(
        from: &Machine,
        url: &str,
        command: &[&str],
    ) -> Result<redis::Value, String> {
        let url = url.to_owned();
        let words: Vec<String> = command.iter().map(|w| (*w).to_owned()).collect();
        netns::run(from.netns.as_deref(), move || {
            Box::pin(async move {
                let ask = async {
                    let client = redis::Client::open(url)?;
                    let mut connection = client.get_multiplexed_async_connection().await?;
                    let mut cmd = redis::cmd(&words[0]);
                    for word in &words[1..] {
                        cmd.arg(word);
                    }
                    cmd.query_async::<redis::Value>(&mut connection).await
                };
                match tokio::time::timeout(Duration::from_secs(1), ask).await {
                    Ok(result) => result.map_err(|e| e.to_string()),
                    Err(_) => Err("no answer within 1s".to_owned()),
                }
            })
        })
        .await
        .map_err(|e| e.to_string())?
    }
}
