//! The receive loop of every client of the timed and durable presets: accounts each update it
//! receives against the send log, and reports acknowledgements (the relay's *saved*, Hocuspocus'
//! SyncStatus).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use crdt::protocol::{Message, MessageReader};
use futures_util::StreamExt;
use futures_util::stream::SplitStream;
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use yrs::Update;
use yrs::updates::decoder::Decode;

use crate::client::{self, Received, SendLog, Ws};
use crate::protocol::{Framing, Incoming};

/// Where a reader reports acknowledgements (durable writes).
#[derive(Debug, Clone, Default)]
pub(super) struct Hooks {
    /// "saved" answers (request id) go here.
    pub(super) saved: Option<mpsc::UnboundedSender<(u64, Instant)>>,
    /// Deliveries of this writer's updates (its highest clock so far) go here.
    pub(super) delivered_of: Option<(u64, mpsc::UnboundedSender<(u64, Instant)>)>,
    /// Counts the SyncStatus answers (taken or not) this client receives.
    pub(super) sync_statuses: Option<Arc<AtomicU64>>,
}

/// Reads a client's socket (framed as `framing`) until `stop`, accounting every update and
/// acknowledgement it receives.
pub(super) async fn read_loop(
    mut stream: SplitStream<Ws>,
    framing: Framing,
    own: Option<usize>,
    log: Arc<SendLog>,
    counter: Arc<AtomicU64>,
    mut stop: watch::Receiver<bool>,
    hooks: Hooks,
) -> (Received, SplitStream<Ws>) {
    let mut got = Received::default();
    loop {
        let message = tokio::select! {
            _ = stop.changed() => break,
            m = stream.next() => m,
        };
        let frame = match message {
            Some(Ok(WsMessage::Binary(frame))) => frame,
            Some(Ok(_)) => continue,
            _ => break,
        };
        let messages = match framing.read(&frame) {
            Ok(Incoming::Messages(messages)) => messages,
            Ok(Incoming::SyncStatus(taken)) => {
                got.account_ack(taken, own, &log);
                if let Some(count) = &hooks.sync_statuses {
                    count.fetch_add(1, Ordering::Relaxed);
                }
                continue;
            }
            Ok(_) => continue,
            Err(_) => break,
        };
        for item in MessageReader::new(messages) {
            let Ok((message, _)) = item else { break };
            match message {
                Message::Update(update) | Message::SyncStep2(update) => {
                    let before = got.deliveries;
                    got.account(update, own, &log);
                    counter.fetch_add(got.deliveries - before, Ordering::Relaxed);
                    if let Some((client, tx)) = &hooks.delivered_of
                        && let Some(clock) = max_clock_of(update, *client)
                    {
                        let _ = tx.send((u64::from(clock), Instant::now()));
                    }
                }
                Message::Saved(id) => {
                    if let Some(tx) = &hooks.saved {
                        let _ = tx.send((id, Instant::now()));
                    }
                }
                _ => {}
            }
        }
    }
    (got, stream)
}

/// The highest clock of `client` that `update` inserts.
fn max_clock_of(update: &[u8], client: u64) -> Option<u32> {
    if let Some((c, clock)) = client::single_item(update) {
        return (c == client).then_some(clock);
    }
    let update = Update::decode_v1(update).ok()?;
    let insertions = update.insertions(true);
    insertions
        .iter()
        .find(|(c, _)| c.get() == client)
        .and_then(|(_, ranges)| ranges.iter().map(|r| r.end).max())
        .and_then(|end| end.checked_sub(1))
}
