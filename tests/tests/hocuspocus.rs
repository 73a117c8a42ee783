//! The Hocuspocus endpoint at `/`: documents multiplexed on one socket, each authorised with its
//! own token and joined to its room like a y-websocket connection; SyncStatus only after the
//! commit; refusals as PermissionDenied; limits and bad input closing only that socket.

use crdt::protocol::{encode_sync_step1, encode_sync_step2, encode_update};
use relay::auth::Access;
use relay_tests::*;

/// The number of store commits so far.
async fn commits(relay: &TestRelay) -> f64 {
    relay
        .metric("relay_commit_duration_seconds_count")
        .await
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_status_comes_only_after_the_commit() {
    // A long commit window stands in for a slow disk.
    let relay = TestRelay::start_with(|c| c.commit_window_ms = 1500).await;
    let mut h = HocusClient::connect(relay.addr()).await;
    assert_eq!(h.open("doc", "").await, "read-write", "an open relay");
    let mut y = relay.join("doc").await;
    let update = h.edit("doc", "hello").await;
    // Fanned out at once, before the disk.
    assert_eq!(y.recv_msg().await, Msg::Update(update));
    assert_eq!(commits(&relay).await, 0.0, "not committed yet");
    let status = h
        .recv_until("SyncStatus", |name, m| {
            name == "doc" && matches!(m, HMsg::SyncStatus(_))
        })
        .await;
    assert_eq!(status, HMsg::SyncStatus(true));
    assert!(
        commits(&relay).await >= 1.0,
        "SyncStatus came before the commit holding the update"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hocuspocus_and_y_websocket_clients_share_edits_and_awareness() {
    let relay = TestRelay::start().await;
    let mut h = HocusClient::connect(relay.addr()).await;
    h.open("shared", "").await;
    let mut y = relay.join("shared").await;
    h.edit("shared", "from hocuspocus ").await;
    y.wait_for_text("from hocuspocus ").await;
    let update = y.edit("and y-websocket").await;
    let got = h
        .recv_until("the y-websocket edit", |name, m| {
            name == "shared" && matches!(m, HMsg::Room(Msg::Update(_)))
        })
        .await;
    assert_eq!(got, HMsg::Room(Msg::Update(update)));
    assert_eq!(h.text("shared"), "from hocuspocus and y-websocket");

    // Awareness both ways.
    h.send(hocus_frame(
        "shared",
        &awareness_message(77, 1, Some(r#"{"user":"h"}"#)),
    ))
    .await;
    y.recv_until("h's awareness", |m| matches!(m, Msg::Awareness(_)))
        .await;
    assert!(y.awareness.contains_key(&77), "{:?}", y.awareness);
    y.send(awareness_message(88, 1, Some(r#"{"user":"y"}"#)))
        .await;
    let seen = h
        .recv_until("y's awareness", |name, m| {
            name == "shared"
                && matches!(m, HMsg::Room(Msg::Awareness(p))
                    if awareness_entries(p).iter().any(|e| e.client_id == 88))
        })
        .await;
    assert!(matches!(seen, HMsg::Room(Msg::Awareness(_))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_documents_on_one_socket_stay_apart() {
    let relay = TestRelay::start().await;
    let mut h = HocusClient::connect(relay.addr()).await;
    for doc in ["a", "b", "c"] {
        h.open(doc, "").await;
    }
    let mut yb = relay.join("b").await;
    let mut yc = relay.join("c").await;
    h.edit("b", "only b").await;
    yb.wait_for_text("only b").await;
    let update = yc.edit("only c").await;
    let got = h
        .recv_until("c's update", |name, m| {
            name == "c" && matches!(m, HMsg::Room(Msg::Update(_)))
        })
        .await;
    assert_eq!(got, HMsg::Room(Msg::Update(update)));
    assert_eq!(
        (h.text("a"), h.text("b"), h.text("c")),
        (String::new(), "only b".into(), "only c".into())
    );
    let mut ya = relay.join("a").await;
    ya.sync().await;
    assert_eq!(ya.text(), "", "nothing of b or c reached a");
    // Closing one document leaves its room; the others go on.
    h.send(hocus_frame("b", &[7])).await;
    relay.wait_metric("relay_connections", |v| v == 5.0).await;
    h.edit("c", "!").await;
    yc.wait_for_text("only c!").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_token_is_answered_readonly_and_its_edits_are_refused() {
    let relay = TestRelay::start_with(secured).await;
    let mut h = HocusClient::connect(relay.addr()).await;
    let read = token(Some("ro"), Access::Read);
    assert_eq!(h.open("ro", &read).await, "readonly");
    // The usual answer to the greeting, with nothing new: taken.
    h.send(hocus_frame("ro", &encode_sync_step2(&[0, 0]))).await;
    let status = h
        .recv_until("SyncStatus of the empty step 2", |_, m| {
            matches!(m, HMsg::SyncStatus(_) | HMsg::Denied(_))
        })
        .await;
    assert_eq!(status, HMsg::SyncStatus(true));
    h.edit("ro", "not allowed").await;
    let status = h
        .recv_until("SyncStatus of the edit", |_, m| {
            matches!(m, HMsg::SyncStatus(_) | HMsg::Denied(_))
        })
        .await;
    assert_eq!(
        status,
        HMsg::SyncStatus(false),
        "refused as Hocuspocus does, without PermissionDenied"
    );
    let mut writer = relay
        .join_with_token("ro", &token(Some("ro"), Access::Write))
        .await;
    writer.sync().await;
    assert_eq!(writer.text(), "", "the edit was not applied");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_document_gets_permission_denied_and_the_socket_stays_open() {
    let relay = TestRelay::start_with(secured).await;
    let mut h = HocusClient::connect(relay.addr()).await;
    h.send(hocus_auth(
        "secret",
        &token(Some("other"), Access::Write),
        None,
    ))
    .await;
    // What a provider sends at once after its Auth: ignored for a refused document.
    h.send(hocus_frame("secret", &encode_sync_step1(&[0])))
        .await;
    h.send(hocus_frame(
        "secret",
        &encode_update(&append(&yrs::Doc::new(), "x")),
    ))
    .await;
    assert_eq!(
        h.recv().await,
        (
            "secret".into(),
            HMsg::Denied("the token is not valid for this document".into())
        )
    );
    h.send(hocus_auth("secret", "not a token", None)).await;
    assert_eq!(
        h.recv().await,
        ("secret".into(), HMsg::Denied("the token is invalid".into()))
    );
    let mine = token(Some("mine"), Access::Write);
    assert_eq!(h.open("mine", &mine).await, "read-write");
    h.edit("mine", "works").await;
    let mut admin = relay
        .join_with_token("secret", &token(None, Access::Admin))
        .await;
    admin.sync().await;
    assert_eq!(admin.text(), "", "nothing of the refused document applied");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_token_closes_the_socket_with_4401() {
    let relay = TestRelay::start_with(secured).await;
    let mut h = HocusClient::connect(relay.addr()).await;
    let short = sign_token(
        &[TEST_SECRET],
        &claims(Some("exp"), Access::Write, relay::auth::now_secs() + 2),
    );
    h.open("exp", &short).await;
    assert_eq!(h.ws.expect_close().await, Some(4401));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_may_open_only_so_many_documents() {
    let relay = TestRelay::start_with(|c| c.max_documents_per_connection = 2).await;
    let mut h = HocusClient::connect(relay.addr()).await;
    h.open("one", "").await;
    h.open("two", "").await;
    h.send(hocus_auth("three", "", None)).await;
    let denied = h
        .recv_until("the third document's answer", |name, _| name == "three")
        .await;
    assert_eq!(
        denied,
        HMsg::Denied("too many documents on this connection".into())
    );
    h.send(hocus_frame("one", &[7])).await;
    h.open("three", "").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_messages_close_the_socket_and_change_nothing() {
    let relay = TestRelay::start().await;
    for (what, body, code) in [
        ("a truncated update", vec![0, 2, 5, 1], 1002),
        (
            "a message with bytes after it",
            [encode_update(&append(&yrs::Doc::new(), "x")), vec![0]].concat(),
            1002,
        ),
        ("an unknown sync sub-type", vec![0, 9, 0], 1002),
        ("an auth sub-type only servers send", vec![2, 2, 0], 1002),
    ] {
        let mut h = HocusClient::connect(relay.addr()).await;
        h.open("bad", "").await;
        h.send(hocus_frame("bad", &body)).await;
        assert_eq!(h.ws.expect_close().await, Some(code), "{what}");
    }
    let mut h = HocusClient::connect(relay.addr()).await;
    h.ws.send_ws(tokio_tungstenite::tungstenite::Message::Text("hi".into()))
        .await;
    assert_eq!(h.ws.expect_close().await, Some(1003));
    let mut h = HocusClient::connect(relay.addr()).await;
    h.send(vec![5, b'a']).await;
    assert_eq!(h.ws.expect_close().await, Some(1002), "a truncated name");
    let mut y = relay.join("bad").await;
    y.sync().await;
    assert_eq!(y.text(), "", "nothing was applied");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stateless_messages_reach_the_other_hocuspocus_clients_only() {
    let relay = TestRelay::start_with(|c| c.max_stateless_bytes = 64).await;
    let mut h1 = HocusClient::connect(relay.addr()).await;
    let mut h2 = HocusClient::connect(relay.addr()).await;
    h1.open("st", "").await;
    h2.open("st", "").await;
    let mut y = relay.join("st").await;
    h1.send(hocus_stateless("st", "hello")).await;
    let got = h2
        .recv_until("the stateless message", |_, m| {
            matches!(m, HMsg::Stateless(_))
        })
        .await;
    assert_eq!(got, HMsg::Stateless("hello".into()));
    // After it, an edit: the y-websocket client's next message is that edit, and the sender's
    // next stateless-or-ack is the edit's SyncStatus.
    let update = h1.edit("st", "x").await;
    assert_eq!(y.recv_msg().await, Msg::Update(update));
    let next = h1
        .recv_until("the edit's SyncStatus", |_, m| {
            matches!(m, HMsg::Stateless(_) | HMsg::SyncStatus(_))
        })
        .await;
    assert_eq!(next, HMsg::SyncStatus(true), "no echo to the sender");
    h1.send(hocus_stateless("st", &"x".repeat(65))).await;
    assert_eq!(h1.ws.expect_close().await, Some(1008));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pings_go_to_4x_providers_and_empty_awareness_to_3x() {
    let relay = TestRelay::start_with(|c| c.keepalive_secs = 1).await;
    let mut v4 = HocusClient::connect(relay.addr()).await;
    v4.open("k", "").await;
    v4.send(vec![HOCUS_PING]).await;
    let mut saw_pong = false;
    let mut saw_ping = false;
    while !(saw_pong && saw_ping) {
        let frame = v4.ws.recv_frame().await;
        saw_pong |= frame.as_ref() == [HOCUS_PONG];
        saw_ping |= frame.as_ref() == [HOCUS_PING];
    }
    // A 3.x provider sends no version and would throw on a one-byte ping.
    let mut v3 = HocusClient::connect(relay.addr()).await;
    v3.send(hocus_auth("k3", "", None)).await;
    let keepalive = v3
        .recv_until("a keep-alive", |name, m| {
            name == "k3" && *m == HMsg::Room(Msg::Awareness(vec![0]))
        })
        .await;
    assert_eq!(keepalive, HMsg::Room(Msg::Awareness(vec![0])));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_and_each_of_its_documents_count_as_connections() {
    let relay = TestRelay::start_with(|c| c.max_connections = 2).await;
    let mut h = HocusClient::connect(relay.addr()).await;
    h.open("one", "").await;
    // The socket and its document hold both slots: no second socket, no second document.
    let refused = relay.try_upgrade("", None, &[]).await;
    assert_eq!(refused.status, 503, "{}", refused.text());
    h.send(hocus_auth("two", "", None)).await;
    let denied = h
        .recv_until("the second document's answer", |name, _| name == "two")
        .await;
    assert_eq!(denied, HMsg::Denied("too many connections".into()));
    // Closing the document gives its slot back.
    h.send(hocus_frame("one", &[7])).await;
    relay.wait_metric("relay_connections", |v| v == 0.0).await;
    h.open("two", "").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_document_reaches_a_hocuspocus_client_whole() {
    // Past the copy limit, a message goes out as fragments: the name, then slices of the
    // room's bytes, which the client reassembles into one message.
    let relay = TestRelay::start().await;
    let mut y = relay.join("big").await;
    let text = "0123456789".repeat(60_000);
    y.edit(&text).await;
    y.save(1).await;
    let mut h = HocusClient::connect(relay.addr()).await;
    h.open("big", "").await;
    assert_eq!(h.text("big"), text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_document_is_refused_without_closing_the_socket() {
    // A provider ignores close codes and would reconnect at once and send the deleted content
    // back: the relay refuses the document instead, and the socket's other documents go on.
    let relay = TestRelay::start().await;
    let mut h = HocusClient::connect(relay.addr()).await;
    h.open("doomed", "").await;
    h.open("kept", "").await;
    h.edit("doomed", "old content").await;
    let mut y = relay.join("doomed").await;
    y.sync().await;
    assert_eq!(y.text(), "old content");
    let response = relay.request("DELETE", "/api/docs/doomed", &[], b"").await;
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(y.expect_close().await, Some(4404));
    let denied = h
        .recv_until("the deleted document's answer", |name, m| {
            name == "doomed" && matches!(m, HMsg::Denied(_))
        })
        .await;
    assert_eq!(denied, HMsg::Denied("the document was deleted".into()));
    // Its leftovers are ignored; the other document still works.
    h.edit("doomed", " and more").await;
    let mut yk = relay.join("kept").await;
    h.edit("kept", "still here").await;
    yk.wait_for_text("still here").await;
    relay.wait_metric("relay_connections", |v| v == 2.0).await;
    let mut reader = relay.join("doomed").await;
    reader.sync().await;
    assert_eq!(
        reader.text(),
        "",
        "nothing of the deleted document came back"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hocuspocus_client_that_stops_reading_is_dropped_and_the_room_goes_on() {
    let relay = TestRelay::start_with(|c| {
        c.outbound_queue_bytes = 256 << 10;
        c.slow_reader_grace_ms = 1000;
    })
    .await;
    // A small receive buffer: the socket fills up quickly once the client stops reading.
    let ws = Client::try_connect(&format!("ws://{}/", relay.addr()), Some(4096))
        .await
        .expect("connect");
    let mut stalled = HocusClient {
        ws,
        docs: Default::default(),
    };
    stalled.open("slow", "").await;
    let mut writer = relay.join("slow").await;
    // More than the kernel's socket buffers hold, each update from a document of its own
    // (appending to one growing text is slow in a debug build of yrs).
    let updates: Vec<Vec<u8>> = (0..120)
        .map(|i| encode_update(&text_update(&format!("{i:03}{}", "x".repeat(64 << 10)))))
        .collect();
    for update in updates {
        writer.send(update).await;
    }
    writer.save(1).await;
    relay
        .wait_metric(r#"relay_disconnects_total{reason="slow_reader"}"#, |v| {
            v >= 1.0
        })
        .await;
    relay.wait_metric("relay_connections", |v| v == 1.0).await;
    writer.edit("still going").await;
    writer.save(2).await;
}
