//! Cluster mode (issue 13) when nothing fails: 3 nats-servers and 3 relays on loopback ports
//! (tests 1, 7, 8 and 9 of the issue, and the start-up checks). The faults are in
//! `cluster_faults.rs`. Needs `tests/install-nats.sh` and `cargo build -p relay` first.
//!
//! Tests run one at a time ([`one_cluster_at_a_time`]); each is bounded by its waits.

use std::time::Duration;

use relay_tests::*;

/// Reads until the client's text is `len` bytes long.
async fn wait_text_len(client: &mut Client, len: usize) {
    if client.text().len() >= len {
        return;
    }
    let doc = client.doc.clone();
    client
        .recv_until(&format!("a text of {len} bytes"), |_| {
            doc_text(&doc).len() >= len
        })
        .await;
}

/// Test 1: clients on three relays edit one room, then 150 writers edit 50 rooms; everyone
/// converges, and the subject replayed from JetStream gives the same document.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_on_three_relays_converge_on_one_room_and_on_fifty() {
    let _one = one_cluster_at_a_time().await;
    let cluster = RelayCluster::start(3, NatsPath::Direct, ClusterOptions::default()).await;

    let room = "cluster/one room";
    let mut clients = Vec::new();
    for relay in &cluster.relays {
        clients.push(Client::join(&relay.ws_url(room)).await);
    }
    let mut total = 0;
    for round in 0..5 {
        for (i, client) in clients.iter_mut().enumerate() {
            let s = format!("[{i}.{round}]");
            total += s.len();
            client.edit(&s).await;
        }
    }
    for client in &mut clients {
        client.save(1).await;
    }
    for client in &mut clients {
        wait_text_len(client, total).await;
    }
    let text = clients[0].text();
    for (i, client) in clients.iter().enumerate() {
        assert_eq!(client.text(), text, "the client on relay r{i} diverged");
    }
    let replay = replay_room(&cluster.js, room).await;
    assert_eq!(doc_text(&replay.doc), text, "the replayed subject differs");
    assert!(
        replay
            .messages
            .iter()
            .all(|m| m.room.as_deref() == Some(room)),
        "every message names its room in Relay-Room"
    );

    // 50 rooms, a writer on each relay in each.
    let mut writers = Vec::new();
    for r in 0..50 {
        for w in 0..3 {
            let mut writer = AckedWriter::new(&format!("cluster/room {r}"), &format!("w{w}"));
            for _ in 0..3 {
                writer.edit();
            }
            writers.push(writer);
        }
    }
    cluster
        .settle_and_verify(&mut writers, "fifty rooms")
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", cluster.logs()));
}

/// Test 9: awareness set through one relay is seen through another, and killing a relay removes
/// its clients' states.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn awareness_crosses_relays_and_a_killed_relays_clients_are_removed() {
    let _one = one_cluster_at_a_time().await;
    let mut cluster = RelayCluster::start(3, NatsPath::Direct, ClusterOptions::default()).await;
    let room = "cluster/awareness";
    let a_relay = 0;
    let mut a = Client::join(&cluster.relays[a_relay].ws_url(room)).await;
    let owner = cluster
        .wait_owner(room, Duration::from_secs(10), |_| true)
        .await;
    // B on a relay that neither owns the room nor serves A, so that killing it tests the
    // removal of a forwarded connection's states, not a takeover.
    let b_relay = (0..3)
        .find(|&i| i != owner && i != a_relay)
        .expect("a third relay");
    let mut b = Client::join(&cluster.relays[b_relay].ws_url(room)).await;

    let a_id = a.client_id();
    a.send(awareness_message(a_id, 1, Some(r#"{"user":"a"}"#)))
        .await;
    b.recv_until("A's awareness on B", |m| has_state(m, a_id))
        .await;
    let b_id = b.client_id();
    b.send(awareness_message(b_id, 1, Some(r#"{"user":"b"}"#)))
        .await;
    a.recv_until("B's awareness on A", |m| has_state(m, b_id))
        .await;

    cluster.relays[b_relay].kill().await;
    // y-protocols drops a state after 30 s without renewal; the relay must not be slower.
    within_for(
        Duration::from_secs(35),
        "B's awareness state to be removed on A",
        async {
            while a.awareness.contains_key(&b_id) {
                match next_event(&mut a.stream, Duration::from_secs(35)).await {
                    Event::Frame(frame) => {
                        let message = decode_one(&frame);
                        a.absorb(&message);
                    }
                    other => panic!("A's connection ended: {other:?}\n{}", cluster.logs()),
                }
            }
        },
    )
    .await;
}

/// Whether `message` is an awareness update carrying `id`'s state.
fn has_state(message: &Msg, id: u64) -> bool {
    match message {
        Msg::Awareness(payload) => awareness_entries(payload)
            .iter()
            .any(|e| e.client_id == id && e.state.is_some()),
        _ => false,
    }
}

/// Test 7: a relay whose redb cache was deleted or corrupted reloads the room from the stream;
/// a cache holding edits the stream lost republishes them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_cache_reloads_from_the_stream_and_a_cache_republishes_what_the_stream_lost() {
    let _one = one_cluster_at_a_time().await;
    let mut cluster = RelayCluster::start(3, NatsPath::Direct, ClusterOptions::default()).await;
    let room = "cluster/cache";
    let mut writer = AckedWriter::new(room, "w");
    for _ in 0..5 {
        writer.edit();
    }
    let url = cluster.relays[0].ws_url(room);
    writer
        .settle(&url, Duration::from_secs(20))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", cluster.logs()));
    let store = cluster.relays[0].data_dir().join(relay::config::STORE_FILE);

    // Deleted, then corrupted: each time relay r0 must serve every edit, read from the stream.
    for damage in ["deleted", "corrupted"] {
        assert!(cluster.relays[0].stop().await, "r0 exits cleanly");
        match damage {
            "deleted" => std::fs::remove_file(&store).expect("delete the cache"),
            _ => {
                let len = std::fs::metadata(&store).map_or(4096, |m| m.len() as usize);
                std::fs::write(&store, vec![0xA5; len.max(4096)]).expect("corrupt the cache");
            }
        }
        cluster.relays[0]
            .restart()
            .await
            .unwrap_or_else(|e| panic!("r0 with its cache {damage}: {e}"));
        let seen = read_edits(&cluster.relays[0].ws_url(room), Duration::from_secs(20))
            .await
            .unwrap_or_else(|e| panic!("cache {damage}: {e}\n{}", cluster.logs()));
        assert_eq!(
            writer.first_missing(&seen, writer.sent()),
            None,
            "cache {damage}: r0 serves {seen:?}\n{}",
            cluster.logs()
        );
    }

    // The stream loses the room (purged while r0, holding it in its cache, is down).
    assert!(cluster.relays[0].stop().await, "r0 exits cleanly");
    let subject = RoomSubject::of(room);
    let stream = cluster
        .js
        .get_stream(subject.stream())
        .await
        .expect("the room's stream");
    stream
        .purge()
        .filter(subject.subject())
        .await
        .expect("purge the room's subject");
    assert!(replay_room(&cluster.js, room).await.messages.is_empty());
    cluster.relays[0].restart().await.expect("restart r0");
    let seen = read_edits(&cluster.relays[0].ws_url(room), Duration::from_secs(20))
        .await
        .expect("r0 serves the room");
    assert_eq!(writer.first_missing(&seen, writer.sent()), None);
    within_for(
        Duration::from_secs(20),
        "r0 to republish what the stream lost",
        async {
            loop {
                let stored = edits_of(&replay_room(&cluster.js, room).await.doc);
                if writer.first_missing(&stored, writer.sent()).is_none() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        },
    )
    .await;
}

/// Test 8: every relay restarted (SIGTERM, start), one at a time, while writers edit 6 rooms
/// through all three: nothing acknowledged is lost and every room converges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_under_load_loses_nothing() {
    let _one = one_cluster_at_a_time().await;
    let mut cluster = RelayCluster::start(3, NatsPath::Direct, ClusterOptions::default()).await;
    let addrs = cluster.addrs();
    let mut writers = Vec::new();
    for r in 0..6 {
        for w in 0..3 {
            writers.push((
                AckedWriter::new(&format!("cluster/rolling {r}"), &format!("w{w}")),
                w,
            ));
        }
    }
    let pool = WriterPool::start(writers, &addrs, Duration::from_millis(20));
    let progress = cluster.lease() + Duration::from_secs(10);
    pool.wait_progress(3, progress)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", cluster.logs()));
    for k in 0..cluster.relays.len() {
        assert!(cluster.relays[k].stop().await, "r{k} exits cleanly");
        cluster.update_addrs(&addrs);
        cluster.relays[k].restart().await.expect("restart");
        cluster.update_addrs(&addrs);
        pool.wait_progress(2, progress)
            .await
            .unwrap_or_else(|e| panic!("after restarting r{k}: {e}\n{}", cluster.logs()));
        pool.check_stored(&cluster.js, &format!("after restarting r{k}"))
            .await
            .unwrap_or_else(|e| panic!("{e}\n{}", cluster.logs()));
    }
    let mut writers = pool.stop().await;
    cluster
        .settle_and_verify(&mut writers, "after the rolling restart")
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", cluster.logs()));
}

/// Start-up refuses, exit code non-zero and a message on standard error, when no NATS server
/// is reachable, and when a server does not fsync every write (`sync_interval: always`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_up_refuses_unreachable_nats_and_servers_without_sync_always() {
    let _one = one_cluster_at_a_time().await;
    let data = tempfile::tempdir().unwrap();
    let nowhere = format!("nats://127.0.0.1:{}", free_ports(1)[0]);
    let refused = ChildRelay::start(data.path(), &["--nats", &nowhere], |_| {}).await;
    let Err(message) = refused else {
        panic!("the relay started without a reachable NATS server");
    };
    assert!(message.contains("exited"), "{message}");

    let nats = NatsCluster::start_with(SyncInterval::Default).await;
    let refused = ChildRelay::start(
        data.path(),
        &[
            "--nats",
            &nats.urls(),
            "--nats-monitor",
            &nats.monitor_urls(),
        ],
        |_| {},
    )
    .await;
    let Err(message) = refused else {
        panic!("the relay started on servers without sync_interval: always");
    };
    assert!(
        message.contains("exited") && message.to_lowercase().contains("sync"),
        "the refusal must name the sync setting: {message}"
    );
}

/// A relay told to stop (SIGTERM) while every nats-server is gone (stopped cleanly, or killed)
/// still exits, within its drain timeout: an operator stopping a cluster in the wrong order must
/// not be left with a hung process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_even_when_nats_is_gone() {
    let _one = one_cluster_at_a_time().await;
    for (with_room, graceful) in [(false, true), (true, true), (true, false)] {
        let mut cluster = RelayCluster::start(1, NatsPath::Direct, ClusterOptions::default()).await;
        if with_room {
            let room = "cluster/stop without nats";
            let mut writer = AckedWriter::new(room, "w");
            writer.edit();
            writer
                .settle(&cluster.relays[0].ws_url(room), Duration::from_secs(20))
                .await
                .unwrap_or_else(|e| panic!("{e}\n{}", cluster.logs()));
        }
        for i in 0..3 {
            if graceful {
                cluster.nats.stop(i).await;
            } else {
                cluster.nats.kill(i).await;
            }
        }
        // `stop` fails the test when the relay has not exited within its drain timeout and
        // DEADLINE.
        cluster.relays[0].stop().await;
    }
}

/// Back to one node: `relay cluster export` writes every document the streams hold (edited
/// through any relay, deleted ones left out) into a new store that a relay without `--nats`
/// serves, and refuses a data directory that already has a store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_export_moves_every_document_to_one_relay() {
    let _one = one_cluster_at_a_time().await;
    let cluster = RelayCluster::start(3, NatsPath::Direct, ClusterOptions::default()).await;
    let rooms = ["export/a", "export/b", "export/c"];
    let mut writers = Vec::new();
    for (i, room) in rooms.iter().enumerate() {
        let mut writer = AckedWriter::new(room, "w");
        for _ in 0..5 {
            writer.edit();
        }
        writer
            .settle(&cluster.relays[i].ws_url(room), Duration::from_secs(20))
            .await
            .unwrap_or_else(|e| panic!("{e}\n{}", cluster.logs()));
        writers.push(writer);
    }
    let mut gone = AckedWriter::new("export/gone", "w");
    gone.edit();
    gone.settle(
        &cluster.relays[0].ws_url("export/gone"),
        Duration::from_secs(20),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", cluster.logs()));
    let deleted = http_request(
        cluster.relays[1].addr(),
        "DELETE",
        "/api/docs/export%2Fgone",
        &[],
        b"",
    )
    .await
    .expect("delete");
    assert_eq!(
        deleted.status,
        200,
        "{}",
        String::from_utf8_lossy(&deleted.body)
    );

    let target = tempfile::tempdir().expect("a data directory");
    let export = || {
        std::process::Command::new(relay_bin())
            .args([
                "cluster",
                "export",
                "--nats",
                &cluster.nats.urls(),
                "--data-dir",
            ])
            .arg(target.path())
            .output()
            .expect("run relay cluster export")
    };
    let first = export();
    let said = String::from_utf8_lossy(&first.stderr).into_owned();
    assert!(first.status.success(), "export failed: {said}");
    assert!(said.contains("exported 3 documents"), "{said}");
    assert!(said.contains("1 deleted"), "{said}");
    let again = export();
    assert!(
        !again.status.success(),
        "a second export into the same store is refused"
    );
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("exists"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );

    let single = ChildRelay::start(target.path(), &[], |_| {})
        .await
        .expect("a relay without --nats on the exported store");
    for (room, writer) in rooms.iter().zip(&writers) {
        let seen = read_edits(&single.ws_url(room), Duration::from_secs(10))
            .await
            .expect("read the room back");
        assert_eq!(
            writer.first_missing(&seen, writer.sent()),
            None,
            "{room}: {seen:?}"
        );
    }
    let seen = read_edits(&single.ws_url("export/gone"), Duration::from_secs(10))
        .await
        .expect("read the deleted room");
    assert!(seen.is_empty(), "the deleted document came back: {seen:?}");
}

/// Waits for the SyncStatus of `client`'s last edit of `doc`.
async fn owner_synced(client: &mut HocusClient, doc: &str) {
    let status = client
        .recv_until("SyncStatus", |name, m| {
            name == doc && matches!(m, HMsg::SyncStatus(_))
        })
        .await;
    assert_eq!(status, HMsg::SyncStatus(true));
}

/// Reads until the next update of `doc` reaches `client` (applying it).
async fn next_update(client: &mut HocusClient, doc: &str, what: &str) {
    client
        .recv_until(what, |name, m| {
            name == doc && matches!(m, HMsg::Room(Msg::Update(_)))
        })
        .await;
}

/// Hocuspocus sockets through the hop: a provider on a relay that does not own the document
/// converges with one on the owner, is told SyncStatus only once its edit is in the stream,
/// a read-only token stays read-only there, stateless messages cross the hop both ways, and
/// nothing of the document reaches another one on the same socket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hocuspocus_clients_through_the_hop_keep_every_promise() {
    use relay::auth::Access;

    let _one = one_cluster_at_a_time().await;
    let options = ClusterOptions {
        extra_args: vec!["--secret".into(), TEST_SECRET.into()],
        ..ClusterOptions::default()
    };
    let cluster = RelayCluster::start(3, NatsPath::Direct, options).await;
    let (doc, other) = ("hocus/hop", "hocus/other");
    let write = |d: &str| token(Some(d), Access::Write);
    // The first opener makes r0 the owner; r1 and r2 forward.
    let mut owner_side = HocusClient::connect(cluster.relays[0].addr()).await;
    assert_eq!(owner_side.open(doc, &write(doc)).await, "read-write");
    assert_eq!(
        cluster
            .wait_owner(doc, Duration::from_secs(10), |_| true)
            .await,
        0
    );
    let mut forwarded = HocusClient::connect(cluster.relays[1].addr()).await;
    assert_eq!(forwarded.open(doc, &write(doc)).await, "read-write");
    assert_eq!(forwarded.open(other, &write(other)).await, "read-write");

    // SyncStatus only after the JetStream acknowledgement: the edit is in the stream by then.
    forwarded.edit(doc, "through the hop").await;
    let status = forwarded
        .recv_until("SyncStatus of the forwarded edit", |name, m| {
            name == doc && matches!(m, HMsg::SyncStatus(_))
        })
        .await;
    assert_eq!(status, HMsg::SyncStatus(true));
    let stored = replay_room(&cluster.js, doc).await;
    assert_eq!(
        doc_text(&stored.doc),
        "through the hop",
        "acknowledged before the stream had it"
    );
    next_update(&mut owner_side, doc, "the forwarded edit").await;
    assert_eq!(owner_side.text(doc), "through the hop");
    owner_side.edit(doc, ", and back").await;
    owner_synced(&mut owner_side, doc).await;
    next_update(&mut forwarded, doc, "the owner side's edit").await;
    assert_eq!(forwarded.text(doc), "through the hop, and back");

    // Stateless messages cross the hop, both ways.
    forwarded.send(hocus_stateless(doc, "to the owner")).await;
    let got = owner_side
        .recv_until("the forwarded stateless message", |name, m| {
            name == doc && matches!(m, HMsg::Stateless(_))
        })
        .await;
    assert_eq!(got, HMsg::Stateless("to the owner".into()));
    owner_side
        .send(hocus_stateless(doc, "to the forwarder"))
        .await;
    let got = forwarded
        .recv_until("the owner side's stateless message", |name, m| {
            name == doc && matches!(m, HMsg::Stateless(_))
        })
        .await;
    assert_eq!(got, HMsg::Stateless("to the forwarder".into()));

    // Read-only through the hop: answered `readonly`, its edit refused and never stored.
    let mut reader = HocusClient::connect(cluster.relays[2].addr()).await;
    assert_eq!(
        reader.open(doc, &token(Some(doc), Access::Read)).await,
        "readonly"
    );
    reader.edit(doc, " NOT ALLOWED").await;
    let status = reader
        .recv_until("SyncStatus of the read-only edit", |name, m| {
            name == doc && matches!(m, HMsg::SyncStatus(_))
        })
        .await;
    assert_eq!(status, HMsg::SyncStatus(false));
    owner_side.edit(doc, "!").await;
    owner_synced(&mut owner_side, doc).await;
    next_update(&mut forwarded, doc, "the last edit").await;
    let stored = replay_room(&cluster.js, doc).await;
    assert_eq!(doc_text(&stored.doc), "through the hop, and back!");
    assert_eq!(forwarded.text(doc), "through the hop, and back!");
    // The other document on the forwarded socket got nothing of this one.
    assert_eq!(forwarded.text(other), "");
    assert!(doc_text(&replay_room(&cluster.js, other).await.doc).is_empty());
}

/// Frames larger than one NATS message cross the hop in parts: a document of several MiB reaches
/// a client on a relay that does not own it (its sync step 2 is one frame), and a large update
/// sent through such a relay is saved. Before, the owner's publish of the step 2 failed unseen
/// and the client waited forever (then, with ping counts, was closed and came back forever).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_larger_than_a_nats_message_cross_the_hop() {
    let _one = one_cluster_at_a_time().await;
    let cluster = RelayCluster::start(3, NatsPath::Direct, ClusterOptions::default()).await;
    let room = "cluster/large";
    let big = "a".repeat(2_500_000);
    let mut owner_side = Client::join(&cluster.relays[0].ws_url(room)).await;
    owner_side.edit(&big).await;
    owner_side.save(1).await;
    assert_eq!(
        cluster
            .wait_owner(room, Duration::from_secs(10), |_| true)
            .await,
        0
    );

    let mut forwarded = cluster.relays[1]
        .join_with_text(room, &big, Duration::from_secs(30))
        .await;
    let more = "b".repeat(1_500_000);
    forwarded.edit(&more).await;
    forwarded.save(2).await;
    let stored = replay_room(&cluster.js, room).await;
    assert_eq!(doc_text(&stored.doc).len(), big.len() + more.len());
    owner_side
        .recv_until("the forwarded large update", |m| {
            matches!(m, Msg::Update(_))
        })
        .await;
    assert_eq!(owner_side.text().len(), big.len() + more.len());
}
