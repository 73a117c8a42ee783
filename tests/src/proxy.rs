//! A TCP proxy on a loopback port that can blackhole its link, so a test partitions a relay
//! from a NATS server without root (no iptables): the relay connects to the proxy, the proxy to
//! the server.
//!
//! Blackholing stops forwarding without closing anything, like a network partition: bytes in
//! flight are held (TCP would retransmit them), new connections are accepted but not connected
//! onwards, and both sides only notice through their own timeouts. Healing forwards what was
//! held. One direction alone can be blackholed (the server's answers lost, the relay's requests
//! delivered), and the bytes going to the server can be recorded.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Which traffic a [`TcpProxy`] drops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    /// Everything flows.
    Open,
    /// Nothing flows, and new connections are not connected onwards.
    Blackholed,
    /// Requests reach the server, its answers are held (a lost acknowledgement).
    AnswersBlackholed,
}

/// The direction of a pump.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    ToServer,
    ToClient,
}

impl Link {
    fn lets_through(self, direction: Direction) -> bool {
        match self {
            Link::Open => true,
            Link::Blackholed => false,
            Link::AnswersBlackholed => direction == Direction::ToServer,
        }
    }
}

struct Shared {
    link: watch::Sender<Link>,
    /// Bytes sent towards the server while recording is on.
    recorded: Mutex<Option<Vec<u8>>>,
    target: SocketAddr,
    stop: CancellationToken,
}

/// A proxy from a loopback port to `target`. Stops (closing every connection) when dropped.
pub struct TcpProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

impl TcpProxy {
    /// Listens on `127.0.0.1:0` and forwards each connection to `target`.
    pub async fn start(target: SocketAddr) -> TcpProxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let addr = listener.local_addr().expect("a bound address");
        let shared = Arc::new(Shared {
            link: watch::Sender::new(Link::Open),
            recorded: Mutex::new(None),
            target,
            stop: CancellationToken::new(),
        });
        let accepting = shared.clone();
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    () = accepting.stop.cancelled() => return,
                    accepted = listener.accept() => accepted,
                };
                if let Ok((client, _)) = accepted {
                    tokio::spawn(serve(client, accepting.clone()));
                }
            }
        });
        TcpProxy { addr, shared }
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Sets what the link lets through.
    pub fn set_link(&self, link: Link) {
        self.shared.link.send_replace(link);
    }

    /// Starts recording the bytes sent to the server (dropping any earlier recording).
    pub fn record(&self) {
        *self.shared.recorded.lock().expect("not poisoned") = Some(Vec::new());
    }

    /// The bytes sent to the server since [`TcpProxy::record`].
    pub fn recorded(&self) -> Vec<u8> {
        self.shared
            .recorded
            .lock()
            .expect("not poisoned")
            .clone()
            .unwrap_or_default()
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.shared.stop.cancel();
    }
}

/// Waits until the link lets `direction` through; false if the proxy stopped.
async fn wait_open(
    link: &mut watch::Receiver<Link>,
    direction: Direction,
    stop: &CancellationToken,
) -> bool {
    tokio::select! {
        () = stop.cancelled() => false,
        open = link.wait_for(|l| l.lets_through(direction)) => open.is_ok(),
    }
}

async fn serve(client: TcpStream, shared: Arc<Shared>) {
    let mut link = shared.link.subscribe();
    // A blackholed link accepts the connection but does not connect onwards (a lost SYN).
    if !wait_open(&mut link, Direction::ToServer, &shared.stop).await {
        return;
    }
    let Ok(server) = TcpStream::connect(shared.target).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let connection = shared.stop.child_token();
    tokio::join!(
        pump(
            client_read,
            server_write,
            Direction::ToServer,
            &shared,
            &connection
        ),
        pump(
            server_read,
            client_write,
            Direction::ToClient,
            &shared,
            &connection
        ),
    );
}

/// Copies one direction, holding bytes while the link is blackholed; when either direction
/// ends, the other is cancelled too.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    direction: Direction,
    shared: &Shared,
    connection: &CancellationToken,
) {
    let mut link = shared.link.subscribe();
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let read = tokio::select! {
            () = connection.cancelled() => break,
            read = from.read(&mut buffer) => read,
        };
        let n = match read {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        // Read before the blackhole began, delivered after it ends: held, not dropped.
        if !wait_open(&mut link, direction, connection).await {
            break;
        }
        if direction == Direction::ToServer
            && let Some(recorded) = shared.recorded.lock().expect("not poisoned").as_mut()
        {
            recorded.extend_from_slice(&buffer[..n]);
        }
        if to.write_all(&buffer[..n]).await.is_err() {
            break;
        }
    }
    connection.cancel();
}
