//! Durability: save acknowledgements (type 100), restarts, compaction, idle unload and graceful
//! shutdown.

use crdt::protocol::{encode_save_request, encode_update};
use crdt::store::{Store, StoreOptions};
use relay_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn save_request_is_answered_once_committed_and_survives_a_restart() {
    let mut relay = TestRelay::start().await;
    let mut a = relay.join("save").await;
    let mut b = relay.join("save").await;
    let update = a.edit("durable").await;
    a.request_save(7).await;
    // No echo of the update (PROTOCOL.md, "No echo"): A's next message is the answer.
    assert_eq!(a.recv_msg().await, Msg::Saved(7));
    assert_eq!(b.recv_msg().await, Msg::Update(update), "B got the update");

    // Nothing pending: answered at once.
    a.request_save(8).await;
    assert_eq!(a.recv_msg().await, Msg::Saved(8));
    // A large id (a multi-byte varint) comes back unchanged.
    let big_id = (1 << 40) + 3;
    a.request_save(big_id).await;
    assert_eq!(a.recv_msg().await, Msg::Saved(big_id));

    relay.restart().await;
    let mut fresh = relay.join("save").await;
    fresh.sync().await;
    assert_eq!(fresh.text(), "durable", "after a graceful restart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn save_requests_are_answered_in_order() {
    let relay = TestRelay::start_with(|c| c.commit_window_ms = 20).await;
    let mut a = relay.join("order").await;
    let u1 = append(&a.doc, "one ");
    let u2 = append(&a.doc, "two ");
    let u3 = append(&a.doc, "three");
    // Requests between updates, two in a row, and some in the same frame as updates.
    a.send(encode_update(&u1)).await;
    a.request_save(1).await;
    a.send(pack(&[
        &encode_update(&u2),
        &encode_save_request(2),
        &encode_save_request(3),
    ]))
    .await;
    a.send(encode_update(&u3)).await;
    a.request_save(4).await;
    a.request_save(5).await;

    let mut got = Vec::new();
    while got.last() != Some(&Msg::Saved(5)) {
        got.push(a.recv_msg().await);
    }
    let kinds: Vec<_> = got.iter().map(Msg::kind).collect();
    assert_eq!(
        got,
        (1..=5).map(Msg::Saved).collect::<Vec<_>>(),
        "each answered once, in order, and nothing else: {kinds:?}"
    );
    let mut b = relay.join("order").await;
    b.sync().await;
    assert_eq!(b.text(), "one two three");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_update_is_neither_stored_nor_forwarded() {
    let relay = TestRelay::start().await;
    let mut a = relay.join("dup").await;
    let mut b = relay.join("dup").await;
    let update = a.edit("same").await;
    assert_eq!(b.recv_msg().await, Msg::Update(update.clone()));
    // B sends the update it already got: nothing changes, nothing is forwarded or echoed.
    b.send(encode_update(&update)).await;
    b.request_save(1).await;
    assert_eq!(
        b.recv_msg().await,
        Msg::Saved(1),
        "answered, and nothing else"
    );
    let next = a.edit("!").await;
    assert_eq!(
        b.recv_msg().await,
        Msg::Update(next),
        "the duplicate was not forwarded"
    );
}

/// The number of store commits so far.
async fn commits(relay: &TestRelay) -> f64 {
    relay
        .metric("relay_commit_duration_seconds_count")
        .await
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_of_an_uncommitted_update_is_saved_only_after_its_commit() {
    // A long commit window stands in for a slow disk: an update stays uncommitted for 1.5 s.
    let relay = TestRelay::start_with(|c| c.commit_window_ms = 1500).await;

    // A second tab got the update and sends it back (as a provider answering with its whole
    // delete set does): the room has it already, but not on disk.
    let mut tab = relay.join("dup-sent").await;
    let mut a = relay.join("dup-sent").await;
    let update = a.edit("not yet on disk").await;
    assert_eq!(tab.recv_msg().await, Msg::Update(update.clone()));
    tab.send(encode_update(&update)).await;
    tab.request_save(1).await;
    tab.recv_until("saved 1", |m| *m == Msg::Saved(1)).await;
    assert!(
        commits(&relay).await >= 1.0,
        "saved 1 came before any commit: the update was not on disk"
    );
    a.save(2).await;

    // The same client after a reconnect: the greeting's state vector already covers its
    // uncommitted update, so its sync step 2 leaves it out; then it asks whether it is saved.
    let before = commits(&relay).await;
    let mut b = relay.join("dup-joined").await;
    let update = b.edit("not yet on disk either").await;
    let mut watcher = relay.join("dup-joined").await;
    watcher.sync().await;
    assert_eq!(
        watcher.text(),
        "not yet on disk either",
        "the room applied it"
    );
    let doc = yrs::Doc::new();
    apply(&doc, &update);
    let mut again = Client::join_with_doc(&relay.ws_url("dup-joined"), doc).await;
    again.request_save(3).await;
    again.recv_until("saved 3", |m| *m == Msg::Saved(3)).await;
    assert!(
        commits(&relay).await > before,
        "saved 3 came before the commit holding the update"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deletion_keeps_the_room_loaded_until_it_is_committed() {
    // The room unloads as soon as it is empty, and the deletion takes 1.5 s to commit: a room
    // that counted it as nothing pending unloaded at once, and the next joiner loaded the old
    // document from the store.
    let mut relay = TestRelay::start_with(|c| {
        c.idle_unload_secs = 0;
        c.commit_window_ms = 1500;
    })
    .await;
    let mut a = relay.join("deleted").await;
    a.edit("old content").await;
    a.save(1).await;

    let addr = relay.addr();
    let deletion =
        tokio::spawn(
            async move { http_request(addr, "DELETE", "/api/docs/deleted", &[], b"").await },
        );
    assert_eq!(a.expect_close().await, Some(4404));
    // Once the room has unloaded, the next joiner loads the document from the store.
    relay.wait_metric("relay_rooms_loaded", |v| v == 0.0).await;
    let mut b = relay.join("deleted").await;
    b.sync().await;
    assert_eq!(
        b.text(),
        "",
        "a joiner after the deletion sees an empty document"
    );
    b.edit("new content").await;
    b.save(2).await;
    let response = within("the deletion", deletion)
        .await
        .expect("the request task")
        .expect("the DELETE request");
    assert_eq!(response.status, 200, "{}", response.text());
    b.close().await;

    relay.restart().await;
    let mut c = relay.join("deleted").await;
    c.sync().await;
    assert_eq!(
        c.text(),
        "new content",
        "the edit saved after the deletion is kept"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_room_unloads_and_reloads_from_the_store() {
    let relay = TestRelay::start_with(|c| c.idle_unload_secs = 0).await;
    let mut a = relay.join("idle").await;
    let mut b = relay.join("idle").await;
    a.edit("kept across unloads").await;
    a.save(1).await;
    b.wait_for_text("kept across unloads").await;
    assert_eq!(relay.metric("relay_rooms_loaded").await, Some(1.0));

    a.close().await;
    // One client left: the room stays.
    b.edit(", and more").await;
    b.save(2).await;
    assert_eq!(relay.metric("relay_rooms_loaded").await, Some(1.0));
    b.close().await;
    relay.wait_metric("relay_rooms_loaded", |v| v == 0.0).await;

    let mut c = relay.join("idle").await;
    c.sync().await;
    assert_eq!(c.text(), "kept across unloads, and more", "reloaded");
    assert_eq!(relay.metric("relay_rooms_loaded").await, Some(1.0));
    // And the reloaded room keeps working and numbering its updates after the stored ones.
    c.edit("!").await;
    c.save(3).await;
    c.close().await;
    relay.wait_metric("relay_rooms_loaded", |v| v == 0.0).await;
    let mut d = relay.join("idle").await;
    d.sync().await;
    assert_eq!(d.text(), "kept across unloads, and more!");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_keeps_the_log_short_and_the_content_complete() {
    const UPDATES: usize = 23;
    let mut relay = TestRelay::start_with(|c| c.compact_entries = 5).await;
    let mut a = relay.join("compact").await;
    let mut expected = String::new();
    for i in 0..UPDATES {
        let word = format!("w{i} ");
        a.edit(&word).await;
        expected.push_str(&word);
    }
    a.save(1).await;
    assert!(
        relay.metric("relay_compactions_total").await.unwrap_or(0.0) >= 1.0,
        "{}",
        relay.metrics().await
    );
    drop(a);

    relay.stop().await;
    {
        let store = relay.open_store();
        let stored = store.load("compact").expect("load the room");
        assert!(
            stored.log_entries < UPDATES as u64,
            "log entries {}",
            stored.log_entries
        );
        assert!(
            stored.log_entries < 5,
            "at most compact_entries - 1 entries after the last compaction, got {}",
            stored.log_entries
        );
        assert!(stored.snapshot_bytes > 0, "a snapshot was written");
        assert_eq!(stored.next_seq, UPDATES as u64 + 1, "every update numbered");
        assert_eq!(doc_text(stored.doc.yrs()), expected, "stored content");
    }

    relay.restart().await;
    let mut b = relay.join("compact").await;
    b.sync().await;
    assert_eq!(b.text(), expected, "content after a restart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_closes_with_1001_and_commits_everything() {
    // A commit window makes it likely that the last update is still uncommitted when the
    // shutdown starts: the shutdown has to commit it.
    let mut relay = TestRelay::start_with(|c| c.commit_window_ms = 300).await;
    let mut a = relay.join("shutdown").await;
    let mut b = relay.join("shutdown").await;
    let mut other = relay.join("another room").await;
    let update = a.edit("applied before the shutdown").await;
    // B has it, so the room applied it; it may not be committed yet.
    assert_eq!(b.recv_msg().await, Msg::Update(update));

    relay.shutdown_token().cancel();
    assert_eq!(a.expect_close().await, Some(1001));
    assert_eq!(b.expect_close().await, Some(1001));
    assert_eq!(other.expect_close().await, Some(1001));
    relay.stop().await;

    assert_eq!(relay.stored_text("shutdown"), "applied before the shutdown");
    relay.restart().await;
    let mut c = relay.join("shutdown").await;
    c.sync().await;
    assert_eq!(c.text(), "applied before the shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_is_released_when_run_returns() {
    // Once relay::run has returned Ok, the process may open the store again (a restart, a
    // backup tool, this test): the relay must not hold the file any more.
    let mut relay = TestRelay::start().await;
    for round in 0..5 {
        let mut a = relay.join("reopen").await;
        a.edit(&round.to_string()).await;
        a.save(round).await;
        relay.stop().await;
        let opened = Store::open(&relay.store_path(), &StoreOptions::default());
        if let Err(error) = &opened {
            panic!("round {round}: the store is still open after relay::run returned: {error}");
        }
        drop(opened);
        relay.restart().await;
    }
}

/// An update yrs integrates in part before it refuses a block (its second block names a string
/// item, not a type, as its parent): refused with 1002, it left its first block ("ok") in the
/// room's document, which then went to joiners and into later snapshots.
const PARTLY_APPLIED: [u8; 18] = [
    1, 2, 2, 0, 4, 1, 1, b't', 2, b'o', b'k', 4, 0, 1, 0, 1, b'x', 0,
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_is_rebuilt_from_its_last_good_state_after_yrs_fails_half_way() {
    // A commit window keeps the second edit uncommitted while the bad update arrives: the
    // rebuild must take it from memory, not the store.
    let relay = TestRelay::start_with(|c| c.commit_window_ms = 500).await;
    let client = yrs::Doc::with_client_id(1);
    let mut a = relay.join("rebuilt").await;
    let first = append(&client, "hello");
    a.send(encode_update(&first)).await;
    a.save(1).await;
    let second = append(&client, " world");
    a.send(encode_update(&second)).await;

    let mut bad = relay.join("rebuilt").await;
    bad.send(encode_update(&PARTLY_APPLIED)).await;
    assert_eq!(bad.expect_close().await, Some(1002));

    let mut joiner = relay.join("rebuilt").await;
    joiner.sync().await;
    assert_eq!(
        joiner.text(),
        "hello world",
        "nothing of the refused update"
    );
    a.save(2).await;
    let json = relay.get("/api/docs/rebuilt?format=json").await;
    assert_eq!(json.0, 200, "{}", json.1);
    assert!(!json.1.contains("ok"), "the JSON export: {}", json.1);
}
