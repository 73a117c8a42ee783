//! Document sync: the greeting, sync step 1/2, updates, several messages per frame, unknown
//! message types, room isolation and room names, and a crowd of first joiners.

use std::sync::Arc;

use crdt::protocol::{encode_save_request, encode_sync_step1, encode_sync_step2, encode_update};
use relay_tests::*;
use yrs::updates::decoder::Decode;
use yrs::{Doc, ReadTxn, StateVector, Transact};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn greeting_is_sync_step1_alone_in_a_new_room() {
    let relay = TestRelay::start().await;
    let mut client = relay.connect("fresh").await;
    let first = client.recv_frame().await;
    assert_eq!(
        decode_one(&first),
        Msg::SyncStep1(state_vector(&Doc::new())),
        "an empty room's state vector"
    );
    // No awareness message follows in a room without awareness states: the next thing the client
    // receives is the answer to its own sync step 1.
    client.send(encode_sync_step1(&[0])).await;
    let next = client.recv_msg().await;
    assert!(
        matches!(next, Msg::SyncStep2(_)),
        "expected sync step 2 right after the greeting, got {}",
        next.kind()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn greeting_carries_the_state_vector_then_the_awareness_states() {
    let relay = TestRelay::start().await;
    let mut a = relay.join("greet").await;
    a.edit("hello").await;
    a.save(1).await;
    let state = r#"{"user":{"name":"A"}}"#;
    a.send(awareness_message(a.client_id(), 1, Some(state)))
        .await;
    a.recv_until("own awareness forwarded back", |m| {
        matches!(m, Msg::Awareness(_))
    })
    .await;

    let mut b = relay.connect("greet").await;
    // Each greeting message in its own frame, in order: sync step 1, then awareness.
    let first = b.recv_frame().await;
    match decode_one(&first) {
        Msg::SyncStep1(sv) => {
            let got = StateVector::decode_v1(&sv).expect("decodable state vector");
            assert_eq!(
                got,
                a.doc.transact().state_vector(),
                "the room's state vector"
            );
        }
        other => panic!("expected sync step 1 first, got {}", other.kind()),
    }
    let second = b.recv_frame().await;
    match decode_one(&second) {
        Msg::Awareness(payload) => assert_eq!(
            awareness_entries(&payload),
            vec![AwarenessState {
                client_id: a.client_id(),
                clock: 1,
                state: Some(state.to_owned()),
            }]
        ),
        other => panic!("expected the awareness states second, got {}", other.kind()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_step1_is_answered_with_a_diff() {
    let relay = TestRelay::start().await;
    let mut a = relay.join("diff").await;
    let big = "x".repeat(20_000);
    let first = a.edit(&big).await;
    a.edit(" and a small tail").await;
    a.save(1).await;
    let full = full_state(&a.doc);

    // B already has A's first update.
    let doc = Doc::new();
    apply(&doc, &first);
    let mut b = Client::join_with_doc(&relay.ws_url("diff"), doc).await;
    let step2 = b.sync().await;
    assert!(
        step2.len() < full.len() / 10,
        "the step 2 ({} bytes) should be a diff, much smaller than the full state ({} bytes)",
        step2.len(),
        full.len()
    );
    assert_eq!(b.text(), format!("{big} and a small tail"));

    // A client with nothing gets everything.
    let mut c = relay.join("diff").await;
    let everything = c.sync().await;
    assert!(
        everything.len() >= big.len(),
        "full state for an empty client"
    );
    assert_eq!(c.text(), b.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updates_reach_the_other_clients_but_not_the_sender() {
    let relay = TestRelay::start().await;
    let mut a = relay.join("fanout").await;
    let mut b = relay.join("fanout").await;
    let mut c = relay.join("fanout").await;
    let update = a.edit("hi").await;
    assert_eq!(
        b.recv_msg().await,
        Msg::Update(update.clone()),
        "forwarded as is"
    );
    assert_eq!(c.recv_msg().await, Msg::Update(update.clone()));
    apply(&b.doc, &update);
    // No echo (PROTOCOL.md, "No echo"): A's next message is the answer to its save request.
    a.request_save(1).await;
    assert_eq!(a.recv_msg().await, Msg::Saved(1), "no echo to the sender");

    // A sync step 2 from a client is forwarded as an update, and not echoed either.
    let more = append(&b.doc, " there");
    b.send(encode_sync_step2(&more)).await;
    assert_eq!(a.recv_msg().await, Msg::Update(more.clone()));
    assert_eq!(c.recv_msg().await, Msg::Update(more));
    b.request_save(2).await;
    assert_eq!(b.recv_msg().await, Msg::Saved(2), "no echo of a step 2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_message_of_a_packed_frame_is_processed() {
    let relay = TestRelay::start().await;
    let mut a = relay.join("packed").await;
    let mut b = relay.join("packed").await;
    let u1 = append(&a.doc, "one ");
    let u2 = append(&a.doc, "two");
    let aw = awareness_message(a.client_id(), 1, Some(r#"{"n":1}"#));
    let frame = pack(&[
        &encode_sync_step1(&[0]),
        &encode_update(&u1),
        &encode_update(&u2),
        &aw,
        &encode_save_request(9),
    ]);
    a.send(frame).await;

    // B sees both updates and the awareness state, in order.
    assert_eq!(b.recv_msg().await, Msg::Update(u1.clone()));
    assert_eq!(b.recv_msg().await, Msg::Update(u2.clone()));
    match b.recv_msg().await {
        Msg::Awareness(payload) => assert_eq!(awareness_entries(&payload)[0].clock, 1),
        other => panic!("expected awareness, got {}", other.kind()),
    }

    // A gets, in order: the step 2 answering its step 1 (sent before the updates, so empty),
    // its own awareness state back, and once committed the saved acknowledgement; no echoes.
    match a.recv_msg().await {
        Msg::SyncStep2(update) => assert_eq!(text_of_update(&update), "", "nothing yet"),
        other => panic!("expected sync step 2, got {}", other.kind()),
    }
    match a.recv_msg().await {
        Msg::Awareness(payload) => assert_eq!(awareness_entries(&payload)[0].clock, 1),
        other => panic!("expected awareness, got {}", other.kind()),
    }
    assert_eq!(a.recv_msg().await, Msg::Saved(9));

    // Everything was applied.
    let mut c = relay.join("packed").await;
    c.sync().await;
    assert_eq!(c.text(), "one two");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_message_type_is_ignored_with_the_rest_of_its_frame() {
    let relay = TestRelay::start().await;
    let mut a = relay.join("unknown").await;
    let mut b = relay.join("unknown").await;

    // Tag 42 alone, then tag 42 followed by an update in the same frame: the update belongs to
    // the unknown message (its length is unknown) and must be ignored too.
    a.send(vec![42, 1, 2, 3]).await;
    let swallowed = text_update("swallowed");
    a.send(pack(&[&[42, 0], &encode_update(&swallowed)])).await;

    // The connection keeps working: an update in its own frame is forwarded and acknowledged.
    let kept = append(&a.doc, "kept");
    a.send(encode_update(&kept)).await;
    a.request_save(1).await;
    assert_eq!(
        b.recv_msg().await,
        Msg::Update(kept),
        "B's next message is the update after the unknown messages"
    );
    assert_eq!(a.recv_msg().await, Msg::Saved(1));

    let mut c = relay.join("unknown").await;
    c.sync().await;
    assert_eq!(c.text(), "kept", "the swallowed update was not applied");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_are_isolated_and_names_are_percent_decoded() {
    let relay = TestRelay::start().await;
    let rooms = [
        "notes/monday",
        "a room with spaces",
        "café ☕ 日本語",
        "q?x=1#frag",
        "100%",
        "plain",
        "healthz",
        "metrics",
    ];
    let mut clients = Vec::new();
    for room in rooms {
        let mut writer = relay.join(room).await;
        writer.edit(&format!("content of {room}")).await;
        writer.save(1).await;
        clients.push(writer);
    }
    for room in rooms {
        let mut reader = relay.join(room).await;
        reader.sync().await;
        assert_eq!(reader.text(), format!("content of {room}"), "room {room:?}");
    }
    // Rooms named like the HTTP routes do not shadow them.
    relay.assert_healthy().await;
    assert!(relay.metric("relay_rooms_loaded").await.is_some());

    // An unencoded slash names the same room as %2F.
    let raw = format!("ws://{}/notes/monday", relay.addr());
    let mut reader = Client::join(&raw).await;
    reader.sync().await;
    assert_eq!(reader.text(), "content of notes/monday");

    // The store holds the decoded names.
    drop(clients);
    let mut relay = relay;
    relay.stop().await;
    for room in rooms {
        assert_eq!(
            relay.stored_text(room),
            format!("content of {room}"),
            "stored under the decoded name {room:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_room_names_get_http_400() {
    let relay = TestRelay::start().await;
    for path in ["%FF", "a%00b", &"x".repeat(513)] {
        let url = format!("ws://{}/{path}", relay.addr());
        let error = Client::try_connect(&url, None)
            .await
            .err()
            .unwrap_or_else(|| panic!("{path:?} must be refused"));
        let text = error.to_string();
        assert!(text.contains("400"), "{path:?}: {text}");
    }
    relay.assert_healthy().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_first_joiners_share_one_room_and_converge() {
    const N: usize = 20;
    let relay = Arc::new(TestRelay::start().await);
    let barrier = Arc::new(tokio::sync::Barrier::new(N));
    let mut tasks = Vec::new();
    for i in 0..N {
        let relay = relay.clone();
        let barrier = barrier.clone();
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let mut client = relay.join("crowd").await;
            client.send_step1().await;
            client.edit(&format!("<{i:02}>")).await;
            client
        }));
    }
    let mut clients = Vec::new();
    for task in tasks {
        clients.push(task.await.expect("client task"));
    }
    let total = N * "<00>".len();
    let mut texts = Vec::new();
    for client in &mut clients {
        let doc = client.doc.clone();
        client
            .recv_until("every client's edit", |_| doc_text(&doc).len() == total)
            .await;
        texts.push(client.text());
    }
    for (i, text) in texts.iter().enumerate() {
        assert_eq!(text, &texts[0], "client {i} converged with client 0");
    }
    for i in 0..N {
        assert!(texts[0].contains(&format!("<{i:02}>")), "edit {i} kept");
    }
    assert_eq!(relay.metric("relay_rooms_loaded").await, Some(1.0));
    assert_eq!(relay.metric("relay_connections").await, Some(N as f64));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn step2_of_a_client_with_offline_edits_reaches_the_room() {
    let relay = TestRelay::start().await;
    let mut a = relay.join("offline").await;
    a.edit("online ").await;
    // B made edits before connecting: the join answers the greeting's step 1 with a step 2.
    let doc = Doc::new();
    append(&doc, "offline");
    let offline = doc_text(&doc);
    let mut b = Client::join_with_doc(&relay.ws_url("offline"), doc).await;
    b.sync().await;
    let expected = b.text();
    assert!(expected.contains("online ") && expected.contains(&offline));
    a.wait_for_text(&expected).await;
}
