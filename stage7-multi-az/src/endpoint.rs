//! An endpoint: one stable address in front of whichever server is the
//! primary now, re-pointed on failover.
//!
//! RDS gives a Multi-AZ database one DNS name and, on failover, points it
//! at the promoted standby; ElastiCache's "primary endpoint" does the same
//! for Redis. Clients reconnect to the same name and reach the new
//! primary without a configuration change or a restart. Here the name is
//! an address in the `region` machine, and the flip is a TCP forwarder
//! changing its target: sqlx takes one host per URL (no multi-host
//! connection strings with `target_session_attrs`), and a DNS flip would
//! need a DNS server and clients that honour short TTLs.
//!
//! When the target changes, every forwarded connection to the old one is
//! closed at once: a client must not keep writing into a server that was
//! fenced, and a closed connection is what makes a pool (sqlx) or a
//! reconnecting client (the redis crate's `ConnectionManager`) dial again.
//! With no target (between fencing and promotion) connections are refused
//! (closed at once), so clients fail fast instead of hanging.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::copy_bidirectional;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// How long the endpoint waits for its target to accept a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// A stable address forwarding to a target that can change.
#[derive(Debug)]
pub struct Endpoint {
    name: &'static str,
    target: watch::Sender<Option<SocketAddr>>,
}

impl Endpoint {
    /// An endpoint named `name` ("writer", "sessions") pointing at `target`.
    pub fn new(name: &'static str, target: Option<SocketAddr>) -> Self {
        Self {
            name,
            target: watch::Sender::new(target),
        }
    }

    /// Where it forwards now.
    pub fn target(&self) -> Option<SocketAddr> {
        *self.target.borrow()
    }

    /// Re-points it (`None`: refuse connections); connections to the old
    /// target are closed. Pointing it where it already points changes
    /// nothing.
    pub fn point_at(&self, target: Option<SocketAddr>) {
        let changed = self.target.send_if_modified(|current| {
            let changed = *current != target;
            *current = target;
            changed
        });
        if changed {
            tracing::info!(endpoint = self.name, ?target, "endpoint re-pointed");
        }
    }

    /// Accepts on `listener` until `shutdown` turns true.
    pub async fn serve(&self, listener: TcpListener, mut shutdown: watch::Receiver<bool>) {
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((client, _)) => {
                        let target = self.target.subscribe();
                        tokio::spawn(forward(client, target));
                    }
                    Err(error) => {
                        tracing::warn!(endpoint = self.name, %error, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
                _ = shutdown.wait_for(|stop| *stop) => return,
            }
        }
    }
}

/// Copies bytes both ways until either side closes or the target changes.
async fn forward(mut client: TcpStream, mut target: watch::Receiver<Option<SocketAddr>>) {
    let Some(address) = *target.borrow_and_update() else {
        return;
    };
    let Ok(Ok(mut server)) =
        tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(address)).await
    else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    tokio::select! {
        _ = copy_bidirectional(&mut client, &mut server) => {}
        _ = target.changed() => {}
    }
}
