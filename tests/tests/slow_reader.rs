//! A client that stops reading is disconnected; the others are not held up by it.

use bytes::Bytes;
use crdt::protocol::encode_update;
use futures_util::SinkExt;
use relay_tests::*;
use tokio::sync::{oneshot, watch};
use tokio_tungstenite::tungstenite::Message as WsMessage;

const UPDATES: usize = 100;
const UPDATE_TEXT: usize = 64 << 10;

/// What B reports once it has every update.
struct BReport {
    /// The updates, in the order received.
    received: Vec<Vec<u8>>,
    /// B's text after applying them and its own last edit.
    text: String,
    /// Whether B saw C's awareness state go away.
    saw_c_removed: bool,
}

/// B: joins, reads every update of A as fast as it can on a thread and runtime of its own (as a
/// separate process would), applies them, then makes one more edit and checks it is saved.
fn start_b(
    url: String,
    c_id: oneshot::Receiver<u64>,
    progress: watch::Sender<usize>,
) -> (oneshot::Receiver<()>, oneshot::Receiver<BReport>) {
    let (ready_tx, ready) = oneshot::channel();
    let (done_tx, done) = oneshot::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("B's runtime");
        runtime.block_on(async move {
            let mut b = Client::join(&url).await;
            let _ = ready_tx.send(());
            let mut received = Vec::new();
            let mut seen = Vec::new();
            while received.len() < UPDATES {
                let frame = match b.next_event().await {
                    Event::Frame(frame) => frame,
                    other => panic!("B, after {} updates: {other:?}", received.len()),
                };
                match decode_one(&frame) {
                    Msg::Update(update) => {
                        received.push(update);
                        progress.send_replace(received.len());
                    }
                    other => {
                        b.absorb(&other);
                        seen.push(other);
                    }
                }
            }
            for update in &received {
                apply(&b.doc, update);
            }
            // C is gone by now (it cannot have taken in 6 MiB): B is told, if it has not been yet.
            let c_id = c_id.await.expect("C's client id");
            let removed = |m: &Msg| match m {
                Msg::Awareness(p) => awareness_entries(p)
                    .iter()
                    .any(|e| e.client_id == c_id && e.state.is_none()),
                _ => false,
            };
            let mut saw_c_removed = seen.iter().any(removed);
            if !saw_c_removed {
                b.recv_until("the removal of C's state", removed).await;
                saw_c_removed = true;
            }
            b.edit("!").await;
            b.save(1).await;
            let _ = done_tx.send(BReport {
                received,
                text: b.text(),
                saw_c_removed,
            });
        });
    });
    (ready, done)
}

/// A sends [`UPDATES`] updates of [`UPDATE_TEXT`] bytes; B reads them all, C never reads. With
/// `window`, A never gets more than that many updates ahead of B.
async fn scenario(window: Option<usize>) {
    let relay = TestRelay::start_with(|c| {
        // Four times this is a hard cap, whatever the progress: at 2 MiB it is above the 6.4 MiB
        // A sends in all, so B, which reads as fast as it can but shares 2 cores with everything
        // else, is never cut off for falling behind for a moment (at 1 MiB a busy CI machine
        // once let A get 4 MiB ahead of B). C, which never reads, still passes 2 MiB.
        c.outbound_queue_bytes = 2 << 20;
        // A client that stopped reading is dropped once its socket has taken nothing for this
        // long. Not shorter: in a debug build on 2 busy cores, B's writer task has gone 500 ms
        // without being scheduled while the room applied A's 64 KiB updates.
        c.slow_reader_grace_ms = 2_000;
    })
    .await;
    let mut a = relay.join("slow").await;
    let (c_id_tx, c_id_rx) = oneshot::channel();
    let (progress_tx, mut progress) = watch::channel(0);
    let (b_ready, b_done) = start_b(relay.ws_url("slow"), c_id_rx, progress_tx);
    within("B to join", b_ready).await.expect("B joined");

    // C has a small receive buffer and never reads. It announces itself with an awareness
    // state, so A can tell when C has joined.
    let mut c = Client::try_connect(&relay.ws_url("slow"), Some(4096))
        .await
        .expect("connect C");
    let c_id = c.client_id();
    c_id_tx.send(c_id).expect("B waits for C's id");
    c.send(awareness_message(c_id, 1, Some(r#"{"slow":true}"#)))
        .await;
    a.recv_until("C's awareness state", |m| matches!(m, Msg::Awareness(_)))
        .await;

    // The updates are made beforehand, so that A sends as fast as the socket takes them. Each
    // comes from a document of its own: appending 64 KiB at a time to one growing text is slow
    // in a debug build of yrs.
    let updates: Vec<Bytes> = (0..UPDATES)
        .map(|i| {
            let text = format!("{i:03}{}", "z".repeat(UPDATE_TEXT - 3));
            let update = text_update(&text);
            apply(&a.doc, &update);
            Bytes::from(encode_update(&update))
        })
        .collect();

    let started = tokio::time::Instant::now();
    for (i, update) in updates.iter().enumerate() {
        if let Some(window) = window {
            within(
                "B to catch up",
                progress.wait_for(|&received| received + window > i),
            )
            .await
            .expect("B is running (see B's panic above if it is not)");
        }
        within("A sending", a.sink.send(WsMessage::Binary(update.clone())))
            .await
            .expect("A sends");
    }
    let report = within("A's updates to reach B", b_done)
        .await
        .expect("B received every update (see B's panic above if it did not)");
    eprintln!(
        "{UPDATES} updates of {UPDATE_TEXT} bytes reached B in {:?}",
        started.elapsed()
    );
    for (i, update) in report.received.iter().enumerate() {
        assert_eq!(
            encode_update(update),
            updates[i].as_ref(),
            "B received A's updates in order"
        );
    }
    assert!(report.saw_c_removed);

    // A gets B's last edit: A and B are both still connected, and converge.
    a.wait_for_text(&report.text).await;

    // C was dropped: its socket ends after what the kernel had buffered, long before all the
    // updates.
    let (frames, close) = c.read_to_end().await;
    assert!(
        frames < UPDATES,
        "C received {frames} frames: it should have been dropped"
    );
    if let Some(code) = close {
        assert_eq!(code, 1013, "a close frame for a slow reader must say 1013");
    }
    relay
        .wait_metric(r#"relay_disconnects_total{reason="slow_reader"}"#, |v| {
            v >= 1.0
        })
        .await;
    relay.assert_healthy().await;
}

/// The reader that keeps up is not held up by the one that does not, when the writer goes no
/// faster than the reader that keeps up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_reader_is_disconnected_while_a_paced_writer_and_its_reader_carry_on() {
    // A stays at most 4 updates (256 KiB) ahead of B, well under the 1 MiB queue limit.
    scenario(Some(4)).await;
}

/// The same with A sending as fast as it can: B reads as fast as it can on a thread of its own,
/// and must still get every update.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_reader_is_disconnected_and_does_not_hold_up_the_others() {
    scenario(None).await;
}

/// `relay_disconnects_total` counts connections closed, by reason: one slow reader is one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_is_counted_once() {
    let relay = TestRelay::start_with(|c| c.outbound_queue_bytes = 64 << 10).await;
    let mut a = relay.join("count").await;
    let mut c = Client::try_connect(&relay.ws_url("count"), Some(4096))
        .await
        .expect("connect C");
    c.send(awareness_message(c.client_id(), 1, Some("{}")))
        .await;
    a.recv_until("C's awareness state", |m| matches!(m, Msg::Awareness(_)))
        .await;
    let sample = r#"relay_disconnects_total{reason="slow_reader"}"#;
    let mut sent = 0;
    while relay.metric(sample).await.is_none() {
        assert!(sent < 1000, "C was never dropped");
        // Each update is new (another client), so the room forwards every one.
        let fresh = Bytes::from(encode_update(&text_update(&"q".repeat(UPDATE_TEXT))));
        within("A sending", a.sink.send(WsMessage::Binary(fresh)))
            .await
            .expect("A sends");
        sent += 1;
    }

    // Once C's connection is fully gone (only A is left), the count is final.
    relay.wait_metric("relay_connections", |v| v == 1.0).await;
    let (frames, _) = c.read_to_end().await;
    assert!(frames < sent, "C got {frames} of {sent}");
    assert_eq!(
        relay.metric(sample).await,
        Some(1.0),
        "one slow reader, counted once"
    );
}
