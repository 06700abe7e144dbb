//! Opening a TCP connection to a backend: within a deadline, and from the
//! balancer's own address when it has one.
//!
//! Why a source address? On a machine with several addresses the kernel
//! picks the one a connection comes from. Stage 7 puts the instances behind
//! security groups that let in only the balancer's address (`sg-lb`), as
//! an AWS load balancer has addresses of its own in each subnet; a shopper
//! on the same machine must not pass for the balancer. (hyper's
//! `HttpConnector::set_local_address` does the same for the health checks.)

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::net::{TcpSocket, TcpStream};
use tokio::time::error::Elapsed;

/// How the balancer connects to its backends.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Dial {
    pub(crate) timeout: Duration,
    pub(crate) source: Option<IpAddr>,
}

impl Dial {
    /// Connects to `address` (`host:port`); the outer error is the deadline.
    pub(crate) async fn connect(&self, address: &str) -> Result<io::Result<TcpStream>, Elapsed> {
        tokio::time::timeout(self.timeout, open(address, self.source)).await
    }
}

async fn open(address: &str, source: Option<IpAddr>) -> io::Result<TcpStream> {
    let Some(source) = source else {
        return TcpStream::connect(address).await;
    };
    let mut last = io::Error::new(io::ErrorKind::InvalidInput, "no address to connect to");
    for target in tokio::net::lookup_host(address).await? {
        if target.is_ipv4() != source.is_ipv4() {
            continue;
        }
        let socket = if target.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        socket.bind(SocketAddr::new(source, 0))?;
        match socket.connect(target).await {
            Ok(stream) => return Ok(stream),
            Err(error) => last = error,
        }
    }
    Err(last)
}

/// Whether a failed `connect` was this machine running out of something
/// (EMFILE, ENFILE, EADDRNOTAVAIL, ENOBUFS, ENOMEM) rather than the
/// backend's fault: the backend may be perfectly well, and must not be
/// taken out of rotation for it.
pub(crate) fn is_local_shortage(error: &io::Error) -> bool {
    const LOCAL: [i32; 5] = [24, 23, 99, 105, 12];
    error
        .raw_os_error()
        .is_some_and(|code| LOCAL.contains(&code))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn running_out_of_files_or_ports_is_this_machines_shortage_not_the_backends() {
        for local in [24, 23, 99, 105, 12] {
            let error = io::Error::from_raw_os_error(local);
            assert!(is_local_shortage(&error), "{error}");
        }
        for backends in [111, 110, 113] {
            // ECONNREFUSED, ETIMEDOUT, EHOSTUNREACH: the backend's trouble.
            let error = io::Error::from_raw_os_error(backends);
            assert!(!is_local_shortage(&error), "{error}");
        }
    }
}
