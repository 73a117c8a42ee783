//! HTTP long-polling at the HTTP level (PROTOCOL.md, "Long-polling"): the greeting, messages both
//! ways with WebSocket clients in the same room, acknowledgements and re-delivery, the held poll,
//! the relay's answers (404, 410 with the close code, 413, 401/403/503 on open), read-only
//! sessions, and a session that stops polling.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crdt::protocol::{Cursor, encode_save_request, encode_sync_step1, encode_update};
use relay::auth::Access;
use relay::config::Config;
use relay_tests::*;

/// A poll session of one test, spoken to with plain HTTP requests.
struct Session {
    id: String,
    hold_ms: u64,
}

/// What a `GET /poll/ID?ack=SEQ` answered.
#[derive(Debug)]
struct Polled {
    status: u16,
    /// `x-relay-last-seq` (for a 200).
    last: Option<u64>,
    /// The messages of a 200 body, decoded.
    messages: Vec<Msg>,
    response: HttpResponse,
}

impl Polled {
    /// Asserts a 200 with messages up to `last` and returns them.
    fn messages_up_to(&self, last: u64) -> &[Msg] {
        assert_eq!(self.status, 200, "poll: {:?}", self.response.text());
        assert_eq!(self.last, Some(last), "x-relay-last-seq");
        &self.messages
    }

    /// The JSON body of an error answer.
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.response.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.response.text()))
    }
}

/// Splits a poll body into messages (each `varUint length` + the message) and decodes them.
fn split(body: &[u8]) -> Vec<Msg> {
    let mut cursor = Cursor::new(body);
    let mut messages = Vec::new();
    while !cursor.is_empty() {
        let length = cursor.read_var_u64().expect("a length") as usize;
        let message = cursor.read_exact(length).expect("the whole message");
        messages.push(decode_one(message));
    }
    messages
}

async fn open(relay: &TestRelay, room: &str, token: Option<&str>) -> Session {
    let response = relay.open_poll(room, token, &[]).await;
    assert_eq!(response.status, 200, "open: {:?}", response.text());
    assert_eq!(response.header("cache-control"), Some("no-store"));
    let body: serde_json::Value = serde_json::from_slice(&response.body).expect("JSON");
    Session {
        id: body["session"].as_str().expect("a session id").to_owned(),
        hold_ms: body["hold_ms"].as_u64().expect("hold_ms"),
    }
}

impl Session {
    async fn poll(&self, relay: &TestRelay, ack: u64) -> Polled {
        let response = relay
            .request("GET", &format!("/poll/{}?ack={ack}", self.id), &[], b"")
            .await;
        polled(response)
    }

    async fn post(&self, relay: &TestRelay, body: &[u8]) -> HttpResponse {
        relay
            .request("POST", &format!("/poll/{}", self.id), &[], body)
            .await
    }

    /// Posts and asserts 204.
    async fn send(&self, relay: &TestRelay, body: &[u8]) {
        let response = self.post(relay, body).await;
        assert_eq!(response.status, 204, "POST: {:?}", response.text());
    }

    /// Polls (acknowledging `ack`) until a message satisfies `wanted`; returns the new ack and
    /// every message seen on the way.
    async fn poll_until(
        &self,
        relay: &TestRelay,
        mut ack: u64,
        what: &str,
        wanted: impl Fn(&Msg) -> bool,
    ) -> (u64, Vec<Msg>) {
        let mut seen = Vec::new();
        within(what, async {
            loop {
                let polled = self.poll(relay, ack).await;
                assert_eq!(polled.status, 200, "{what}: {:?}", polled.response.text());
                ack = polled.last.expect("x-relay-last-seq");
                let done = polled.messages.iter().any(&wanted);
                seen.extend(polled.messages);
                if done {
                    return;
                }
            }
        })
        .await;
        (ack, seen)
    }
}

fn polled(response: HttpResponse) -> Polled {
    let last = response
        .header("x-relay-last-seq")
        .map(|v| v.parse().expect("a number"));
    let messages = if response.status == 200 {
        split(&response.body)
    } else {
        Vec::new()
    };
    Polled {
        status: response.status,
        last,
        messages,
        response,
    }
}

fn quick_expiry(config: &mut Config) {
    config.client_timeout_secs = 2;
    config.keepalive_secs = 1;
    config.poll_hold_secs = 1;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn greeting_first_then_messages_both_ways_with_a_websocket_client() {
    let relay = TestRelay::start().await;
    let mut ws = relay.join("room").await;
    ws.edit("from ws. ").await;
    ws.send(awareness_message(
        ws.client_id(),
        1,
        Some(r#"{"user":"ws"}"#),
    ))
    .await;
    ws.save(1).await;

    let session = open(&relay, "room", None).await;
    assert_eq!(session.hold_ms, 25_000);
    // The greeting, as a WebSocket gets it: sync step 1, then the awareness states.
    let first = session.poll(&relay, 0).await;
    let greeting = first.messages_up_to(2);
    assert!(
        matches!(greeting[0], Msg::SyncStep1(_)),
        "sync step 1 first: {greeting:?}"
    );
    match &greeting[1] {
        Msg::Awareness(payload) => assert_eq!(
            awareness_entries(payload)[0].state.as_deref(),
            Some(r#"{"user":"ws"}"#)
        ),
        other => panic!("then the awareness states, got {}", other.kind()),
    }
    assert_eq!(
        first.response.header("content-type"),
        Some("application/octet-stream")
    );

    // Sync: the answer to our sync step 1 carries the WebSocket client's edit.
    let poller = yrs::Doc::new();
    session
        .send(&relay, &encode_sync_step1(&state_vector(&poller)))
        .await;
    let (ack, seen) = session
        .poll_until(&relay, 2, "sync step 2", |m| matches!(m, Msg::SyncStep2(_)))
        .await;
    match seen.last() {
        Some(Msg::SyncStep2(update)) => apply(&poller, update),
        _ => unreachable!(),
    }
    assert_eq!(doc_text(&poller), "from ws. ");

    // One POST with several messages: an update and a save request. The update reaches the
    // WebSocket client, not the poller itself.
    let update = append(&poller, "from poll.");
    session
        .send(
            &relay,
            &pack(&[&encode_update(&update), &encode_save_request(7)]),
        )
        .await;
    ws.wait_for_text("from ws. from poll.").await;
    let (ack, seen) = session
        .poll_until(&relay, ack, "saved 7", |m| *m == Msg::Saved(7))
        .await;
    assert!(
        !seen.iter().any(|m| matches!(m, Msg::Update(_))),
        "{seen:?}"
    );

    // The WebSocket client's next edit reaches the poller.
    let live = ws.edit(" again").await;
    let (_, seen) = session
        .poll_until(&relay, ack, "the live update", |m| {
            *m == Msg::Update(live.clone())
        })
        .await;
    assert_eq!(seen.last(), Some(&Msg::Update(live)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_drop_what_was_delivered_and_a_repeated_ack_delivers_the_rest_again() {
    let relay = TestRelay::start_with(|c| c.poll_hold_secs = 5).await;
    let mut ws = relay.join("acks").await;
    let session = open(&relay, "acks", None).await;
    assert_eq!(session.poll(&relay, 0).await.messages_up_to(1).len(), 1);

    let mut updates = Vec::new();
    for word in ["one ", "two ", "three "] {
        updates.push(Msg::Update(ws.edit(word).await));
    }
    ws.save(1).await; // the room has processed (and broadcast) all three
    let all = session.poll(&relay, 1).await;
    assert_eq!(all.messages_up_to(4), &updates[..]);
    // The answer was lost: the same ack gets the same messages.
    assert_eq!(
        session.poll(&relay, 1).await.messages_up_to(4),
        &updates[..]
    );
    // Acknowledging the first leaves the other two.
    assert_eq!(
        session.poll(&relay, 2).await.messages_up_to(4),
        &updates[1..]
    );
    // The first is gone for good: an older ack does not bring it back.
    assert_eq!(
        session.poll(&relay, 1).await.messages_up_to(4),
        &updates[1..]
    );

    // Everything acknowledged: the poll is held, and a newer poll makes it answer empty at once.
    let spawn_poll = || {
        let relay_addr = relay.addr();
        let path = format!("/poll/{}?ack=4", session.id);
        tokio::spawn(async move { http_request(relay_addr, "GET", &path, &[], b"").await })
    };
    // Whichever reaches the relay second is the newer one: the other answers empty at once, the
    // newer one keeps waiting.
    let mut first = spawn_poll();
    let mut second = spawn_poll();
    let (which, first_done) = within_for(
        Duration::from_secs(3),
        "one of two polls to give way (well before the 5 s hold)",
        async {
            tokio::select! {
                r = &mut first => (0, r),
                r = &mut second => (1, r),
            }
        },
    )
    .await;
    let other = if which == 0 { second } else { first };
    let gave_way = polled(first_done.expect("no panic").expect("a response"));
    assert_eq!(gave_way.messages_up_to(4), &[] as &[Msg]);
    assert!(!other.is_finished(), "the newer poll is still held");
    let live = ws.edit("four").await;
    let answered = polled(
        within("the held poll to answer", other)
            .await
            .expect("no panic")
            .expect("a response"),
    );
    assert_eq!(answered.messages_up_to(5), &[Msg::Update(live)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_bodies_unknown_sessions_and_a_malformed_message() {
    let relay = TestRelay::start_with(|c| c.max_message_bytes = 1024).await;
    let mut ws = relay.join("errors").await;
    let session = open(&relay, "errors", None).await;
    assert_eq!(session.poll(&relay, 0).await.messages_up_to(1).len(), 1);

    // 413 for a body over --max-message-bytes; the session goes on.
    let big = encode_update(&text_update(&"x".repeat(2000)));
    let refused = session.post(&relay, &big).await;
    assert_eq!(refused.status, 413, "{:?}", refused.text());
    session
        .send(&relay, &encode_update(&text_update("small")))
        .await;
    ws.wait_for_text("small").await;

    // 404 for a session the relay does not know.
    for (method, body) in [("GET", &b""[..]), ("POST", &[0u8, 2, 0][..])] {
        let path = if method == "GET" {
            "/poll/0123456789abcdef0123456789abcdef?ack=0"
        } else {
            "/poll/0123456789abcdef0123456789abcdef"
        };
        let response = relay.request(method, path, &[], body).await;
        assert_eq!(response.status, 404, "{method}: {:?}", response.text());
    }

    // A message queued for the session before it ends still arrives; then 410 with the
    // WebSocket close code.
    let live = ws.edit(" before the end").await;
    ws.save(1).await;
    session.send(&relay, &[0, 9]).await; // sync message of an unknown sub-type
    let before = session.poll(&relay, 1).await;
    assert_eq!(before.messages_up_to(2), &[Msg::Update(live)]);
    let ended = within("the 410", async {
        loop {
            let polled = session.poll(&relay, 2).await;
            if polled.status != 200 {
                return polled;
            }
            assert!(polled.messages.is_empty(), "{:?}", polled.messages);
        }
    })
    .await;
    assert_eq!(ended.status, 410, "{:?}", ended.response.text());
    assert_eq!(
        ended.json(),
        serde_json::json!({ "code": 1002, "reason": "protocol_error" })
    );
    // A POST to the ended session is refused the same way.
    let late = session.post(&relay, &[0, 2, 0]).await;
    assert_eq!(late.status, 410);
    // The WebSocket client is unaffected.
    ws.edit("!").await;
    ws.save(2).await;
    relay
        .wait_metric("relay_disconnects_total{reason=\"protocol_error\"}", |v| {
            v >= 1.0
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_checked_like_a_websocket_and_read_only_sessions_cannot_write() {
    let relay = TestRelay::start_with(secured).await;
    let mut writer = relay
        .join_with_token("doc", &token(Some("doc"), Access::Write))
        .await;
    writer.edit("hello").await;
    writer.save(1).await;

    let other_doc = token(Some("other"), Access::Write);
    for (what, token) in [
        ("no token", None),
        ("a bad token", Some("not.a.jwt")),
        ("a token for another document", Some(other_doc.as_str())),
    ] {
        let polled = relay.open_poll("doc", token, &[]).await;
        let query = token.map(|t| format!("token={}", encode_query_value(t)));
        let upgraded = relay.try_upgrade("doc", query.as_deref(), &[]).await;
        assert!(
            polled.status == 401 || polled.status == 403,
            "{what}: {}",
            polled.status
        );
        assert_eq!(
            (polled.status, polled.text()),
            (upgraded.status, upgraded.text()),
            "{what}: the same answer as a WebSocket upgrade"
        );
    }
    // A token in the Authorization header works too.
    let bearer = format!("Bearer {}", token(Some("doc"), Access::Read));
    let with_header = relay
        .request(
            "POST",
            "/poll?room=doc",
            &[("Authorization", bearer.as_str())],
            b"",
        )
        .await;
    assert_eq!(with_header.status, 200, "{:?}", with_header.text());

    // Read-only: the document arrives, an update is refused with "permission denied".
    let reader = open(&relay, "doc", Some(&token(Some("doc"), Access::Read))).await;
    assert_eq!(reader.poll(&relay, 0).await.messages_up_to(1).len(), 1);
    let mut ack = 1;
    reader
        .send(
            &relay,
            &pack(&[
                &encode_sync_step1(&state_vector(&yrs::Doc::new())),
                &encode_update(&text_update("EVIL")),
            ]),
        )
        .await;
    let (next, seen) = reader
        .poll_until(&relay, ack, "permission denied", |m| {
            matches!(m, Msg::AuthDenied(_))
        })
        .await;
    ack = next;
    match seen.iter().find(|m| matches!(m, Msg::SyncStep2(_))) {
        Some(Msg::SyncStep2(update)) => assert_eq!(text_of_update(update), "hello"),
        _ => panic!("no sync step 2 before the refusal: {seen:?}"),
    }
    // The writer's edits still reach the reader, and the document never got the refused one.
    let live = writer.edit(" world").await;
    reader
        .poll_until(&relay, ack, "the writer's edit", |m| {
            *m == Msg::Update(live.clone())
        })
        .await;
    writer.save(2).await;
    assert_eq!(writer.text(), "hello world");
    let mut check = relay
        .join_with_token("doc", &token(Some("doc"), Access::Read))
        .await;
    check.sync().await;
    assert_eq!(check.text(), "hello world");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_count_towards_the_room_limit() {
    let relay = TestRelay::start_with(|c| c.max_room_connections = 2).await;
    let _ws = relay.join("full").await;
    let _session = open(&relay, "full", None).await;
    let refused = relay.open_poll("full", None, &[]).await;
    assert_eq!(refused.status, 503, "{:?}", refused.text());
    let upgrade = relay.try_upgrade("full", None, &[]).await;
    assert_eq!(upgrade.status, 503, "a WebSocket too");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_storm_holds_the_room_limit_and_counts_each_refused_join() {
    // Sessions opened at once: the room limit holds whether the check before the join or the
    // join itself refuses them, and each refusal is counted once, in either place (a refused
    // join is counted by the session, for every transport).
    const LIMIT: usize = 2;
    const STORM: usize = 16;
    let relay = TestRelay::start_with(|c| c.max_room_connections = LIMIT).await;
    let answers =
        futures_util::future::join_all((0..STORM).map(|_| relay.open_poll("storm", None, &[])))
            .await;
    let opened = answers.iter().filter(|a| a.status == 200).count();
    let refused = answers.iter().filter(|a| a.status == 503).count();
    assert_eq!(opened + refused, STORM, "only 200 or 503");
    assert!(
        (1..=LIMIT).contains(&opened),
        "{opened} sessions opened in a room limited to {LIMIT}"
    );
    let at_join = relay
        .metric(r#"relay_disconnects_total{reason="room_unavailable"}"#)
        .await
        .unwrap_or(0.0);
    let before_join = relay
        .metric(r#"relay_errors_total{reason="room_full"}"#)
        .await
        .unwrap_or(0.0);
    assert_eq!(
        at_join + before_join,
        refused as f64,
        "every refused session is counted once, before or at the join"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_that_stops_polling_expires_and_its_awareness_is_removed() {
    let relay = TestRelay::start_with(quick_expiry).await;
    let session = open(&relay, "expiry", None).await;
    assert_eq!(session.hold_ms, 1000);
    let poller_id = 4242;
    session
        .send(
            &relay,
            &awareness_message(poller_id, 1, Some(r#"{"user":"poll"}"#)),
        )
        .await;
    // Polling keeps the session alive past the client timeout (2 s): idle polls answer empty
    // after the hold time (1 s).
    let mut ack = 0;
    let started = tokio::time::Instant::now();
    let mut idle = 0;
    while started.elapsed() < Duration::from_secs(3) {
        let asked = tokio::time::Instant::now();
        let polled = session.poll(&relay, ack).await;
        assert_eq!(polled.status, 200, "{:?}", polled.response.text());
        if polled.response.body.is_empty() {
            // Nothing new: an empty answer after the hold time, x-relay-last-seq = the ack.
            assert_eq!(polled.last, Some(ack));
            assert!(
                asked.elapsed() >= Duration::from_millis(900),
                "held {:?}",
                asked.elapsed()
            );
            idle += 1;
        }
        ack = polled.last.expect("x-relay-last-seq");
    }
    assert!(idle >= 2, "{idle} idle polls");
    assert_eq!(relay.metric("relay_connections").await, Some(1.0));

    // A WebSocket client sees the poller's state.
    let mut ws = relay.join("expiry").await;
    let is_poller = |m: &Msg, live: bool| match m {
        Msg::Awareness(p) => awareness_entries(p)
            .iter()
            .any(|e| e.client_id == poller_id && e.state.is_some() == live),
        _ => false,
    };
    ws.recv_until("the poller's awareness state", |m| is_poller(m, true))
        .await;

    // The poller stops: the session expires and the state is removed, as for a closed socket.
    let stopped = tokio::time::Instant::now();
    ws.recv_until("the poller's awareness removal", |m| is_poller(m, false))
        .await;
    let after = stopped.elapsed();
    assert!(
        after >= Duration::from_millis(500) && after <= Duration::from_secs(4),
        "removed {after:?} after the last poll (client timeout 2 s)"
    );
    assert!(!ws.awareness.contains_key(&poller_id));
    relay.wait_metric("relay_connections", |v| v == 1.0).await;
    relay
        .wait_metric("relay_disconnects_total{reason=\"client_timeout\"}", |v| {
            v >= 1.0
        })
        .await;
    // A late poll gets what was queued, then learns why the session ended.
    let ended = within("the 410", async {
        loop {
            let polled = session.poll(&relay, ack).await;
            if polled.status != 200 {
                return polled;
            }
            ack = polled.last.expect("x-relay-last-seq");
        }
    })
    .await;
    assert_eq!(ended.status, 410, "{:?}", ended.response.text());
    assert_eq!(
        ended.json(),
        serde_json::json!({ "code": 1001, "reason": "client_timeout" })
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_numbered_body_sent_again_is_taken_once() {
    let relay = TestRelay::start_with(|c| c.poll_hold_secs = 1).await;
    let session = open(&relay, "retry", None).await;
    let (ack, _) = session
        .poll_until(&relay, 0, "the greeting", |m| {
            matches!(m, Msg::SyncStep1(_))
        })
        .await;
    let step1 = encode_sync_step1(&state_vector(&yrs::Doc::new()));
    // The first attempt arrived but its answer was lost; the retry carries the same number.
    for _ in 0..2 {
        let response = relay
            .request("POST", &format!("/poll/{}?n=1", session.id), &[], &step1)
            .await;
        assert_eq!(response.status, 204, "{:?}", response.text());
    }
    // A new body (n=2) is taken: its save request is answered.
    let response = relay
        .request(
            "POST",
            &format!("/poll/{}?n=2", session.id),
            &[],
            &encode_save_request(3),
        )
        .await;
    assert_eq!(response.status, 204);
    let (_, seen) = session
        .poll_until(&relay, ack, "saved 3", |m| *m == Msg::Saved(3))
        .await;
    let step2s = seen
        .iter()
        .filter(|m| matches!(m, Msg::SyncStep2(_)))
        .count();
    assert_eq!(step2s, 1, "one sync step 2 for the one body: {seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_ends_with_4401_at_the_start_of_its_token_exp_second() {
    let relay = TestRelay::start_with(secured).await;
    let exp = relay::auth::now_secs() + 2;
    let short = sign_token(&[TEST_SECRET], &claims(Some("exp"), Access::Read, exp));
    let session = open(&relay, "exp", Some(&short)).await;
    let mut ack = 0;
    let ended = within("the 410", async {
        loop {
            let polled = session.poll(&relay, ack).await;
            if polled.status != 200 {
                return polled;
            }
            ack = polled.last.expect("x-relay-last-seq");
        }
    })
    .await;
    let ended_at = SystemTime::now();
    assert_eq!(ended.status, 410, "{:?}", ended.response.text());
    assert_eq!(
        ended.json(),
        serde_json::json!({ "code": 4401, "reason": "token_expired" })
    );
    let expiry = UNIX_EPOCH + Duration::from_secs(exp);
    assert!(ended_at >= expiry, "ended before exp {exp}: {ended_at:?}");
    let late = ended_at.duration_since(expiry).expect("checked");
    assert!(
        late < Duration::from_secs(1),
        "ended {late:?} after the start of the exp second"
    );
}
