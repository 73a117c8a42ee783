//! What several presets share: joining rooms, naming and creating them, reading one back with a
//! fresh client and checking that it converged.

use std::time::Duration;

use futures_util::StreamExt;
use yrs::updates::encoder::Encode;
use yrs::{Doc, Map, ReadTxn, StateVector, Transact};

use crate::client::{self, EMPTY_UPDATE, MAP, Ws, doc_from_update};
use crate::peers::{PeerKind, Server};
use crate::protocol::{Framing, Protocol};

pub(super) const HANDSHAKE_LIMIT: Duration = Duration::from_secs(60);

/// Connects to `room` as a client of `protocol` and, on a server with state, completes the sync
/// handshake with an empty document.
pub(super) async fn join(server: &Server, protocol: Protocol, room: &str) -> anyhow::Result<Ws> {
    let url = server.client_url(protocol, room);
    let framing = Framing::new(protocol, room);
    let mut last = None;
    for attempt in 0..5 {
        match client::connect(&url).await {
            Ok(mut ws) => {
                if server.kind.has_state() {
                    let empty_sv = StateVector::default().encode_v1();
                    client::sync_handshake(
                        &mut ws,
                        &framing,
                        &empty_sv,
                        &EMPTY_UPDATE,
                        HANDSHAKE_LIMIT,
                    )
                    .await?;
                }
                return Ok(ws);
            }
            Err(e) => {
                last = Some(e);
                tokio::time::sleep(Duration::from_millis(50 << attempt)).await;
            }
        }
    }
    Err(last.expect("at least one attempt"))
}

/// Joins every room of `rooms` (one client of `protocol` each, in order), `concurrency` at a
/// time.
pub(super) async fn join_all(
    server: &Server,
    protocol: Protocol,
    rooms: &[String],
    concurrency: usize,
) -> anyhow::Result<Vec<Ws>> {
    let results: Vec<anyhow::Result<Ws>> = futures_util::stream::iter(rooms.iter())
        .map(|room| join(server, protocol, room))
        .buffered(concurrency)
        .collect()
        .await;
    results.into_iter().collect()
}

pub(super) async fn create_rooms(server: &Server, rooms: &[String]) -> anyhow::Result<()> {
    if !server.kind.creates_docs_over_http() {
        return Ok(());
    }
    let results: Vec<anyhow::Result<()>> = futures_util::stream::iter(rooms.iter())
        .map(|room| server.create_room(room))
        .buffer_unordered(8)
        .collect()
        .await;
    results.into_iter().collect()
}

pub(super) fn room_names(prefix: &str, n: usize) -> Vec<String> {
    let run = client::fresh_client_id() % 1_000_000;
    (0..n).map(|i| format!("{prefix}-{run}-{i}")).collect()
}

/// Reads a fresh copy of `room` (a new client of `protocol`, sync step 1 with an empty state
/// vector).
pub(super) async fn read_room(
    server: &Server,
    protocol: Protocol,
    room: &str,
) -> anyhow::Result<Doc> {
    let url = server.client_url(protocol, room);
    let mut ws = client::connect_with_buffer(&url, 64 * 1024).await?;
    let empty_sv = StateVector::default().encode_v1();
    let framing = Framing::new(protocol, room);
    let (update, _) =
        client::sync_handshake(&mut ws, &framing, &empty_sv, &EMPTY_UPDATE, HANDSHAKE_LIMIT)
            .await?;
    let _ = ws.close(None).await;
    doc_from_update(&update)
}

/// Checks that each room holds exactly what its writers wrote: every writer's clock, and one map
/// entry per update (read by clients of `protocol`).
pub(super) async fn check_convergence(
    server: &Server,
    protocol: Protocol,
    rooms: &[String],
    writers: &[(usize, u64, u32)],
) -> anyhow::Result<bool> {
    let checks: Vec<anyhow::Result<bool>> = futures_util::stream::iter(rooms.iter().enumerate())
        .map(|(ri, room)| async move {
            let doc = read_room(server, protocol, room).await?;
            let txn = doc.transact();
            let sv = txn.state_vector();
            let map = txn.get_map(MAP);
            let entries = map.as_ref().map_or(0, |m| m.len(&txn));
            let mut expected = 0;
            for &(room_index, client_id, sent) in writers {
                if room_index != ri {
                    continue;
                }
                expected += sent;
                let got = sv.get(&yrs::ClientID::new(client_id));
                if got != sent {
                    if std::env::var_os("LOADGEN_DEBUG").is_some() {
                        eprintln!("room {room}: writer {client_id} has clock {got}, sent {sent}");
                    }
                    return Ok(false);
                }
            }
            if entries != expected && std::env::var_os("LOADGEN_DEBUG").is_some() {
                eprintln!("room {room}: {entries} map entries, expected {expected}");
            }
            Ok(entries == expected)
        })
        .buffer_unordered(16)
        .collect()
        .await;
    let mut all = true;
    for c in checks {
        all &= c?;
    }
    Ok(all)
}

/// How long to wait after an upload before a restart, for servers that save in the background.
pub(super) fn background_save_wait(kind: PeerKind) -> Duration {
    match kind {
        // y-leveldb stores each update asynchronously.
        PeerKind::YWebsocketServer => Duration::from_secs(3),
        // y-sweet checkpoints every 10 s by default.
        PeerKind::YSweet => Duration::from_secs(13),
        _ => Duration::ZERO,
    }
}

/// Read buffer of clients that receive a whole large document.
pub(super) const LARGE_READ_BUFFER: usize = 256 * 1024;
