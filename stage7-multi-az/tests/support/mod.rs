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
