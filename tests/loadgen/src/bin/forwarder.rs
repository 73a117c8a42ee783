//! A bare forwarding server: the floor of the benchmark.
//!
//! Same WebSocket stack as the relay (tokio, tokio-tungstenite 0.30, TCP_NODELAY, 4 KiB read
//! buffer), but no CRDT and no disk: every binary message a connection sends is forwarded, as
//! is, to every other connection of its room (the URL path). One task reads each socket, one
//! writes it; the writer sends each message in its own frame and flushes it, the way a plain
//! forwarder does. A server that spends less CPU per delivery than this one has to batch
//! (share one encoded frame among receivers, write several frames per system call).
//!
//! ```sh
//! forwarder --listen 127.0.0.1:9000   # prints "listening on http://127.0.0.1:9000"
//! ```

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

#[derive(Parser)]
#[command(
    about = "Bare WebSocket forwarder: each binary message goes to the other connections of its room"
)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9000")]
    listen: SocketAddr,
}

type Members = Arc<Mutex<HashMap<u64, mpsc::UnboundedSender<Bytes>>>>;

#[derive(Default)]
struct Rooms {
    rooms: Mutex<HashMap<String, Members>>,
    next_id: AtomicU64,
}

impl Rooms {
    fn join(&self, room: &str, tx: mpsc::UnboundedSender<Bytes>) -> (u64, Members) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let members = self
            .rooms
            .lock()
            .expect("rooms lock")
            .entry(room.to_owned())
            .or_default()
            .clone();
        members.lock().expect("room lock").insert(id, tx);
        (id, members)
    }

    fn leave(&self, room: &str, id: u64, members: &Members) {
        let empty = {
            let mut m = members.lock().expect("room lock");
            m.remove(&id);
            m.is_empty()
        };
        if empty {
            let mut rooms = self.rooms.lock().expect("rooms lock");
            if rooms
                .get(room)
                .is_some_and(|m| m.lock().expect("room lock").is_empty())
            {
                rooms.remove(room);
            }
        }
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(serve(args.listen))
}

async fn serve(addr: SocketAddr) -> anyhow::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    println!("listening on http://{}", listener.local_addr()?);
    let rooms = Arc::new(Rooms::default());
    loop {
        let (stream, _) = listener.accept().await?;
        let rooms = rooms.clone();
        tokio::spawn(async move {
            let _ = connection(stream, rooms).await;
        });
    }
}

// The handshake callback's error type (an HTTP response) is tungstenite's, not ours.
#[allow(clippy::result_large_err)]
async fn connection(stream: TcpStream, rooms: Arc<Rooms>) -> anyhow::Result<()> {
    stream.set_nodelay(true)?;
    let mut path = String::new();
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(16 * 1024)
        .max_message_size(Some(256 << 20))
        .max_frame_size(Some(256 << 20));
    let ws = tokio_tungstenite::accept_hdr_async_with_config(
        stream,
        |req: &Request, resp: Response| {
            path = req.uri().path().to_owned();
            Ok(resp)
        },
        Some(config),
    )
    .await?;
    let (mut sink, mut stream) = ws.split();
    let (tx, mut rx) = mpsc::unbounded_channel::<Bytes>();
    let (id, members) = rooms.join(&path, tx);
    let writer = tokio::spawn(async move {
        while let Some(bytes) = rx.recv().await {
            if sink.send(Message::Binary(bytes)).await.is_err() {
                break;
            }
        }
    });
    while let Some(Ok(message)) = stream.next().await {
        match message {
            Message::Binary(bytes) => {
                let members = members.lock().expect("room lock");
                for (other, tx) in members.iter() {
                    if *other != id {
                        let _ = tx.send(bytes.clone());
                    }
                }
            }
            Message::Close(_) => break,
            _ => {}
        }
    }
    rooms.leave(&path, id, &members);
    writer.abort();
    Ok(())
}
