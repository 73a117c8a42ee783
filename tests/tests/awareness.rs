//! Awareness: forwarding, query-awareness, and removal when a connection closes.

use crdt::protocol::encode_query_awareness;
use relay_tests::*;

fn single(message: &Msg) -> Vec<AwarenessState> {
    match message {
        Msg::Awareness(payload) => awareness_entries(payload),
        other => panic!("expected an awareness message, got {}", other.kind()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn awareness_reaches_everyone_and_is_removed_when_the_socket_closes() {
    let relay = TestRelay::start().await;
    let mut a = relay.join("presence").await;
    let mut b = relay.join("presence").await;
    let a_id = a.client_id();
    let state = r##"{"user":{"name":"Ann","color":"#f00"}}"##;
    a.send(awareness_message(a_id, 1, Some(state))).await;
    let expected = vec![AwarenessState {
        client_id: a_id,
        clock: 1,
        state: Some(state.to_owned()),
    }];
    assert_eq!(
        single(&b.recv_msg().await),
        expected,
        "B receives A's state"
    );
    assert_eq!(
        single(&a.recv_msg().await),
        expected,
        "A receives its own state back"
    );

    // A stale clock changes nothing and is not forwarded; a newer one is.
    a.send(awareness_message(a_id, 1, Some(r#"{"stale":true}"#)))
        .await;
    a.send(awareness_message(
        a_id,
        2,
        Some(r#"{"user":{"name":"Ann B"}}"#),
    ))
    .await;
    let next = single(&b.recv_msg().await);
    assert_eq!(next[0].clock, 2, "the stale state was dropped: {next:?}");

    // A's socket closes without a goodbye: B learns that A's client id is gone.
    drop(a);
    let removal = single(&b.recv_msg().await);
    assert_eq!(removal.len(), 1, "{removal:?}");
    assert_eq!(removal[0].client_id, a_id);
    assert_eq!(removal[0].state, None, "removal is a null state");
    // At the last clock: y-protocols receivers apply a removal at the clock they know.
    assert_eq!(removal[0].clock, 2, "{removal:?}");

    // The state is gone from the room: a newcomer's greeting has no awareness message.
    let mut c = relay.join("presence").await;
    c.send(encode_query_awareness()).await;
    let all = single(&c.recv_msg().await);
    assert!(all.is_empty(), "no states left: {all:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removal_covers_every_client_id_a_connection_introduced() {
    let relay = TestRelay::start().await;
    let mut a = relay.join("many-ids").await;
    let mut b = relay.join("many-ids").await;
    for id in [11, 12] {
        a.send(awareness_message(id, 1, Some("{}"))).await;
        b.recv_msg().await;
    }
    a.close().await;
    let mut removed = Vec::new();
    while removed.len() < 2 {
        for entry in single(&b.recv_msg().await) {
            assert_eq!(entry.state, None, "{entry:?}");
            removed.push(entry.client_id);
        }
    }
    removed.sort_unstable();
    assert_eq!(removed, [11, 12]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_awareness_is_answered_with_every_state() {
    let relay = TestRelay::start().await;
    let mut a = relay.join("query").await;
    let mut b = relay.join("query").await;
    let mut c = relay.join("query").await;
    a.send(awareness_message(a.client_id(), 3, Some(r#"{"n":"a"}"#)))
        .await;
    b.send(awareness_message(b.client_id(), 5, Some(r#"{"n":"b"}"#)))
        .await;
    // C sees both, so the room holds both.
    c.recv_msg().await;
    c.recv_msg().await;

    c.send(encode_query_awareness()).await;
    let mut all = single(&c.recv_msg().await);
    all.sort_by_key(|s| s.client_id);
    let mut expected = vec![
        AwarenessState {
            client_id: a.client_id(),
            clock: 3,
            state: Some(r#"{"n":"a"}"#.into()),
        },
        AwarenessState {
            client_id: b.client_id(),
            clock: 5,
            state: Some(r#"{"n":"b"}"#.into()),
        },
    ];
    expected.sort_by_key(|s| s.client_id);
    assert_eq!(all, expected);

    // The answer goes only to the one who asked: A receives the two states (its own comes
    // back), then the update C sends now, and nothing in between.
    let update = c.edit("x").await;
    while a.awareness.len() < 2 {
        let message = a.recv_msg().await;
        assert!(matches!(message, Msg::Awareness(_)), "{}", message.kind());
        a.absorb(&message);
    }
    assert_eq!(a.recv_msg().await, Msg::Update(update));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_at_clock_0_is_never_applied() {
    let relay = TestRelay::start().await;
    let mut a = relay.join("clock0").await;
    let mut b = relay.join("clock0").await;
    a.send(awareness_message(
        a.client_id(),
        0,
        Some(r#"{"zero":true}"#),
    ))
    .await;
    a.send(awareness_message(a.client_id(), 1, Some(r#"{"one":true}"#)))
        .await;
    // B's first awareness message is the clock-1 state: the clock-0 one was not forwarded.
    let first = single(&b.recv_msg().await);
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].clock, 1, "{first:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_state_sent_back_by_another_client_stays_removed() {
    let relay = TestRelay::start().await;
    let mut a = relay.join("tombstone").await;
    let mut b = relay.join("tombstone").await;
    let mut c = relay.join("tombstone").await;
    // B has a state of its own, as an application's clients do.
    b.send(awareness_message(b.client_id(), 1, Some(r#"{"n":"b"}"#)))
        .await;
    single(&b.recv_msg().await);
    single(&c.recv_msg().await);
    let a_id = a.client_id();
    let old = awareness_message(a_id, 1, Some(r#"{"n":"a"}"#));
    a.send(old.clone()).await;
    b.recv_msg().await;
    c.recv_msg().await;
    drop(a);
    let removal = single(&b.recv_msg().await);
    assert_eq!(
        (removal[0].client_id, removal[0].state.as_deref()),
        (a_id, None)
    );
    single(&c.recv_msg().await);

    // B had applied A's state before the removal and sends it back, as stock providers do.
    b.send(old).await;
    // Then B renews its own state: C's next awareness message must be that one, not A's.
    b.send(awareness_message(b.client_id(), 2, Some(r#"{"n":"b"}"#)))
        .await;
    let next = single(&c.recv_msg().await);
    assert_eq!(next.len(), 1);
    assert_eq!(
        next[0].client_id,
        b.client_id(),
        "A's old state came back: {next:?}"
    );
    c.send(encode_query_awareness()).await;
    let all = single(&c.recv_msg().await);
    assert!(all.iter().all(|s| s.client_id != a_id), "{all:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_reconnects_is_visible_again_at_once() {
    // A stock client that loses its connection sends its unchanged state (same clock) on the
    // new one; others must see it then, not after two more 15-second renewals.
    let relay = TestRelay::start().await;
    let mut a = relay.join("reconnect").await;
    let mut b = relay.join("reconnect").await;
    let a_id = a.client_id();
    let state = awareness_message(a_id, 3, Some(r#"{"n":"a"}"#));
    a.send(state.clone()).await;
    single(&b.recv_msg().await);
    drop(a);
    let removal = single(&b.recv_msg().await);
    assert_eq!(
        (removal[0].client_id, removal[0].state.as_deref()),
        (a_id, None)
    );

    let mut again = relay.join("reconnect").await;
    again.send(state).await;
    let back = single(&b.recv_msg().await);
    assert_eq!(back.len(), 1);
    assert_eq!((back[0].client_id, back[0].clock), (a_id, 3), "{back:?}");
    assert!(back[0].state.is_some());
}

/// An awareness message with many client ids, each with the state `{}`.
fn awareness_for(ids: impl IntoIterator<Item = u64>, clock: u64) -> Vec<u8> {
    awareness_message_of(ids.into_iter().map(|id| (id, clock, Some("{}"))))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn awareness_over_its_limits_closes_the_connection_with_1008() {
    let relay = TestRelay::start().await;
    let mut watcher = relay.join("aware-limits").await;

    // A million client ids in one 6 MB message: refused before anything is kept for them (it
    // grew the relay by 174 MB before, and every joiner's greeting would have carried them).
    let before = vm_rss_bytes(None).expect("VmRSS");
    let mut flood = relay.join("aware-limits").await;
    let message = awareness_for(1..=1_000_000, 1);
    assert!(message.len() > 5_000_000, "{}", message.len());
    flood.send(message).await;
    assert_eq!(flood.expect_close().await, Some(1008), "too many entries");
    let grown = vm_rss_bytes(None).expect("VmRSS").saturating_sub(before);
    assert!(grown < 64 << 20, "the relay grew by {grown} bytes");

    // One state larger than --max-awareness-state-bytes (32 KiB by default).
    let mut big = relay.join("aware-limits").await;
    let huge = format!(r#"{{"name":"{}"}}"#, "x".repeat(40 << 10));
    big.send(awareness_message(big.client_id(), 1, Some(&huge)))
        .await;
    assert_eq!(big.expect_close().await, Some(1008), "a state too large");

    // More client ids than one connection may hold (8 by default).
    let mut many = relay.join("aware-limits").await;
    many.send(awareness_for(100..109, 1)).await;
    assert_eq!(many.expect_close().await, Some(1008), "9 client ids");

    // Nothing of it reached the others, and the room still works.
    let mut c = relay.join("aware-limits").await;
    c.send(encode_query_awareness()).await;
    assert!(single(&c.recv_msg().await).is_empty());
    c.send(awareness_message(c.client_id(), 1, Some("{}")))
        .await;
    let seen = single(&watcher.recv_msg().await);
    assert_eq!(seen.len(), 1, "the watcher saw only C's state: {seen:?}");
    assert_eq!(seen[0].client_id, c.client_id());
}

/// A read token for the room `room` of the user `sub`.
fn read_token_of(room: &str, sub: &str) -> String {
    let mut claims = claims(
        Some(room),
        relay::auth::Access::Read,
        relay::auth::now_secs() + 3600,
    );
    claims.sub = Some(sub.into());
    sign_token(&[TEST_SECRET], &claims)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_cannot_take_over_another_users_client_id() {
    let relay =
        TestRelay::start_with(|c| c.secrets = vec![relay::config::Secret(TEST_SECRET.into())])
            .await;
    let room = "aware-takeover";
    let mut victim = relay
        .join_with_token(room, &read_token_of(room, "victim"))
        .await;
    let mut watcher = relay
        .join_with_token(room, &read_token_of(room, "watcher"))
        .await;
    let id = victim.client_id();
    victim
        .send(awareness_message(id, 3, Some(r#"{"user":"victim"}"#)))
        .await;
    assert_eq!(single(&watcher.recv_msg().await)[0].client_id, id);

    // Another user's connection (a read-only token is enough) speaks for the victim's client id
    // with a much higher clock, then removes it, then leaves.
    let mut attacker = relay
        .join_with_token(room, &read_token_of(room, "attacker"))
        .await;
    attacker
        .send(awareness_message(id, 1 << 40, Some(r#"{"user":"forged"}"#)))
        .await;
    attacker
        .send(awareness_message(id, (1 << 40) + 1, None))
        .await;
    attacker.close().await;

    // The watcher sees none of it: its next message is the victim's own renewal.
    victim
        .send(awareness_message(id, 4, Some(r#"{"user":"victim"}"#)))
        .await;
    let next = single(&watcher.recv_msg().await);
    assert_eq!(
        next,
        vec![AwarenessState {
            client_id: id,
            clock: 4,
            state: Some(r#"{"user":"victim"}"#.to_owned()),
        }],
        "the forged state, its removal and the attacker's leaving never reached the watcher"
    );

    // The victim's own new connection (a reconnect racing the old socket's close, or a move
    // from long-polling to a WebSocket) takes the client id over, so the old connection's
    // leaving removes nothing.
    let mut moved = relay
        .join_with_token(room, &read_token_of(room, "victim"))
        .await;
    moved
        .send(awareness_message(id, 6, Some(r#"{"user":"victim"}"#)))
        .await;
    assert_eq!(single(&watcher.recv_msg().await)[0].clock, 6);
    victim.close().await;
    moved
        .send(awareness_message(id, 7, Some(r#"{"user":"victim"}"#)))
        .await;
    let next = single(&watcher.recv_msg().await);
    assert_eq!(
        (next[0].clock, next[0].state.is_some()),
        (7, true),
        "no removal when the old connection left: {next:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_room_takes_no_new_awareness_states() {
    let relay = TestRelay::start_with(|c| c.max_awareness_states = 2).await;
    let mut watcher = relay.join("aware-full").await;
    let mut first = relay.join("aware-full").await;
    first.send(awareness_for([1, 2], 1)).await;
    assert_eq!(single(&watcher.recv_msg().await).len(), 2);
    let mut late = relay.join("aware-full").await;
    late.send(awareness_for([3], 1)).await;
    // Not taken, not forwarded; the connection stays (it did nothing wrong).
    first.send(awareness_for([1], 2)).await;
    let next = single(&watcher.recv_msg().await);
    assert_eq!(next.len(), 1);
    assert_eq!((next[0].client_id, next[0].clock), (1, 2), "{next:?}");
    late.send(encode_query_awareness()).await;
    let all = single(
        &late
            .recv_until("the states", |m| matches!(m, Msg::Awareness(_)))
            .await,
    );
    let mut ids: Vec<u64> = all.iter().map(|e| e.client_id).collect();
    ids.sort_unstable();
    assert_eq!(ids, vec![1, 2]);
}
