//! Tokens and permissions: refusals before the WebSocket upgrade (401/403 with a JSON reason),
//! read-only connections, tokens that expire while connected (4401), key rotation, the `Origin`
//! allow-list, and the open relay without a secret. Every refusal is also checked by the document
//! content afterwards: a refused client changes nothing.

use crdt::doc::EMPTY_UPDATE_V1;
use crdt::protocol::{encode_sync_step2, encode_update};
use relay::auth::{Access, Claims, now_secs};
use relay::config::Secret;
use relay_tests::*;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use yrs::updates::decoder::Decode;
use yrs::{ReadTxn, StateVector, Text, Transact};

/// Requires tokens signed with any of `secrets` (the first signs).
fn secured_by(secrets: &[&str]) -> impl FnOnce(&mut relay::config::Config) + use<> {
    let secrets: Vec<Secret> = secrets.iter().map(|s| Secret((*s).to_owned())).collect();
    move |config| config.secrets = secrets
}

/// The text of `room` as a fresh admin connection sees it.
async fn text_seen_by_admin(relay: &TestRelay, room: &str) -> String {
    let mut admin = relay
        .join_with_token(room, &token(None, Access::Admin))
        .await;
    admin.sync().await;
    let text = admin.text();
    admin.close().await;
    text
}

/// Asserts that an upgrade response is a refusal with `status` and the JSON body
/// `{"error": reason}`.
fn assert_refused(response: &HttpResponse, status: u16, reason: &str, what: &str) {
    assert_eq!(
        response.status,
        status,
        "{what}: status (body {:?})",
        response.text()
    );
    assert!(
        response
            .header("content-type")
            .is_some_and(|t| t.starts_with("application/json")),
        "{what}: a JSON body, got {:?}",
        response.headers
    );
    let body: serde_json::Value = serde_json::from_slice(&response.body)
        .unwrap_or_else(|e| panic!("{what}: body {:?} is not JSON: {e}", response.text()));
    assert_eq!(
        body,
        serde_json::json!({ "error": reason }),
        "{what}: the body names the reason"
    );
}

/// The next message, applied to the client's document the way a Yjs client does.
async fn recv_absorbed(client: &mut Client) -> Msg {
    let message = client.recv_msg().await;
    client.absorb(&message);
    message
}

/// Whether a message is an awareness update with an entry for `client_id`.
fn mentions(message: &Msg, client_id: u64) -> bool {
    match message {
        Msg::Awareness(payload) => awareness_entries(payload)
            .iter()
            .any(|e| e.client_id == client_id),
        _ => false,
    }
}

/// base64url without padding, for hand-made tokens.
fn b64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_upgrades_get_401_or_403_with_the_reason_and_change_nothing() {
    let mut relay = TestRelay::start_with(secured_by(&[TEST_SECRET])).await;
    let mut writer = relay
        .join_with_token("doc", &token(Some("doc"), Access::Write))
        .await;
    writer.edit("original").await;
    writer.save(1).await;

    let now = now_secs();
    let forged = sign_token(
        &["some-other-secret-0123456789"],
        &claims(Some("doc"), Access::Admin, now + 3600),
    );
    // Expired two seconds ago: jsonwebtoken's default leeway (60 s) would still accept it.
    let expired = sign_token(&[TEST_SECRET], &claims(Some("doc"), Access::Admin, now - 2));
    let unsigned = format!(
        "{}.{}.",
        b64url(br#"{"alg":"none","typ":"JWT"}"#),
        b64url(
            serde_json::to_string(&claims(None, Access::Admin, now + 3600))
                .expect("claims serialize")
                .as_bytes()
        )
    );
    let not_yet = sign_token(
        &[TEST_SECRET],
        &Claims {
            nbf: Some(now + 3600),
            ..claims(Some("doc"), Access::Admin, now + 7200)
        },
    );
    let other_doc = token(Some("other"), Access::Admin);
    let write_without_doc = token(None, Access::Write);
    let cases: Vec<(&str, Option<String>, u16, &str)> = vec![
        ("no token", None, 401, "a token is required"),
        (
            "an empty token",
            Some(String::new()),
            401,
            "a token is required",
        ),
        (
            "a token signed with another key",
            Some(forged),
            401,
            "the token is invalid",
        ),
        (
            "an unsigned token (alg none)",
            Some(unsigned),
            401,
            "the token is invalid",
        ),
        (
            "not a JWT",
            Some("not.a.jwt".into()),
            401,
            "the token is invalid",
        ),
        (
            "a token that expired 2 s ago",
            Some(expired),
            401,
            "the token has expired",
        ),
        (
            "a token whose nbf is an hour away",
            Some(not_yet),
            401,
            "the token is not valid yet",
        ),
        (
            "a token for another document",
            Some(other_doc),
            403,
            "the token is not valid for this document",
        ),
        (
            "a write token without a document",
            Some(write_without_doc),
            403,
            "the token is not valid for this document",
        ),
    ];
    for (what, token, status, reason) in &cases {
        // In the query, as the stock provider passes `params`...
        let query = token
            .as_ref()
            .map(|t| format!("token={}", encode_query_value(t)));
        let response = relay.try_upgrade("doc", query.as_deref(), &[]).await;
        assert_refused(&response, *status, reason, &format!("{what} (query)"));
        // ... and in an Authorization header.
        if let Some(token) = token.as_ref().filter(|t| !t.is_empty()) {
            let bearer = format!("Bearer {token}");
            let response = relay
                .try_upgrade("doc", None, &[("Authorization", &bearer)])
                .await;
            assert_refused(&response, *status, reason, &format!("{what} (header)"));
        }
        assert_eq!(
            text_seen_by_admin(&relay, "doc").await,
            "original",
            "after refusing {what}"
        );
    }
    // The same refusals for a document that does not exist do not create it.
    for (what, token, status, reason) in &cases {
        if *status == 403 {
            continue; // "another document" is this one for `other`.
        }
        let query = token
            .as_ref()
            .map(|t| format!("token={}", encode_query_value(t)));
        let response = relay.try_upgrade("other", query.as_deref(), &[]).await;
        assert_refused(&response, *status, reason, &format!("{what} (other)"));
    }
    let read_doc = token(Some("doc"), Access::Read);
    assert_refused(
        &relay
            .try_upgrade("other", Some(&format!("token={read_doc}")), &[])
            .await,
        403,
        "the token is not valid for this document",
        "a read token for doc, used for other",
    );

    // A prefix token covers the names under it and nothing else.
    let prefix = sign_token(
        &[TEST_SECRET],
        &Claims {
            doc: None,
            doc_prefix: Some("team/".into()),
            ..claims(None, Access::Write, now + 3600)
        },
    );
    let mut member = relay.join_with_token("team/a", &prefix).await;
    member.edit("team work").await;
    member.save(1).await;
    assert_eq!(text_seen_by_admin(&relay, "team/a").await, "team work");
    for room in ["other", "team", "doc", "teams/a"] {
        let response = relay
            .try_upgrade(room, Some(&format!("token={prefix}")), &[])
            .await;
        assert_refused(
            &response,
            403,
            "the token is not valid for this document",
            &format!("prefix team/ used for {room}"),
        );
    }
    assert_eq!(
        relay
            .try_upgrade("team/b", Some(&format!("token={prefix}")), &[])
            .await
            .status,
        101,
        "prefix team/ covers team/b"
    );

    // An admin token without a document covers every document; one with a document does not.
    let admin_all = token(None, Access::Admin);
    for room in ["doc", "anything/else", "team/a"] {
        let response = relay
            .try_upgrade(room, Some(&format!("token={admin_all}")), &[])
            .await;
        assert_eq!(response.status, 101, "admin token for {room}");
    }
    let admin_doc = token(Some("doc"), Access::Admin);
    assert_refused(
        &relay
            .try_upgrade("other", Some(&format!("token={admin_doc}")), &[])
            .await,
        403,
        "the token is not valid for this document",
        "an admin token for doc, used for other",
    );
    assert!(
        relay
            .metric(r#"relay_errors_total{reason="auth_refused"}"#)
            .await
            .is_some_and(|n| n >= cases.len() as f64),
        "refusals are counted"
    );

    drop((writer, member));
    relay.stop().await;
    assert_eq!(relay.stored_text("doc"), "original");
    assert_eq!(relay.stored_text("team/a"), "team work");
    let store = relay.open_store();
    for room in ["other", "team", "teams/a"] {
        assert_eq!(
            store.room_info(room).expect("read the store"),
            None,
            "a refused connection to {room} stored nothing"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_connection_receives_everything_but_cannot_change_the_document() {
    let mut relay = TestRelay::start_with(secured_by(&[TEST_SECRET])).await;
    let write = token(Some("ro"), Access::Write);
    let read = token(Some("ro"), Access::Read);
    let mut writer = relay.join_with_token("ro", &write).await;
    writer.edit("hello").await;
    writer.save(1).await;

    // The document, at once.
    let mut reader = relay.join_with_token("ro", &read).await;
    reader.sync().await;
    assert_eq!(reader.text(), "hello");

    // An empty sync step 2 (what every client answers the greeting with) is silently accepted:
    // the next message is the answer to the save request, not a refusal.
    reader.send(encode_sync_step2(EMPTY_UPDATE_V1)).await;
    reader.request_save(1).await;
    assert_eq!(reader.recv_msg().await, Msg::Saved(1));

    // Live updates from others.
    let live = writer.edit(" world").await;
    assert_eq!(recv_absorbed(&mut reader).await, Msg::Update(live));
    assert_eq!(reader.text(), "hello world");

    // Its own update is refused with the permission-denied auth message [2, 0, reason].
    reader.edit("EVIL-UPDATE").await;
    let frame = reader.recv_frame().await;
    assert_eq!(&frame[..2], &[2, 0], "auth message, permission denied");
    let reason = match decode_one(&frame) {
        Msg::AuthDenied(reason) => reason,
        other => panic!("expected permission denied, got {}", other.kind()),
    };
    assert!(
        reason.contains("read-only"),
        "the reason says why: {reason:?}"
    );
    // So is a non-empty sync step 2.
    let mut step2_only = Client::join(&relay.ws_url_with_token("ro", &read)).await;
    append(&step2_only.doc, "EVIL-STEP2");
    step2_only
        .send(encode_sync_step2(&full_state(&step2_only.doc)))
        .await;
    assert_eq!(step2_only.recv_msg().await, Msg::AuthDenied(reason.clone()));
    // And an update inside a frame with other messages: the rest of the frame is still read, and
    // the save request behind the refused update gets a save error, not "saved" (PROTOCOL.md:
    // what the connection sent is not all saved, and never will be).
    let evil = append(&reader.doc, "EVIL-PACKED");
    reader
        .send(pack(&[
            &encode_update(&evil),
            &crdt::protocol::encode_save_request(2),
        ]))
        .await;
    assert_eq!(reader.recv_msg().await, Msg::AuthDenied(reason.clone()));
    assert_eq!(reader.recv_msg().await, Msg::SaveError(2, reason.clone()));
    // So does every later one.
    reader.request_save(3).await;
    assert_eq!(reader.recv_msg().await, Msg::SaveError(3, reason.clone()));

    // Nothing reached the writer: its next message is the answer to its own save request.
    writer.request_save(2).await;
    assert_eq!(writer.recv_msg().await, Msg::Saved(2));
    // Nor the room.
    assert_eq!(text_seen_by_admin(&relay, "ro").await, "hello world");
    assert_eq!(
        relay
            .metric(r#"relay_errors_total{reason="read_only_update"}"#)
            .await,
        Some(3.0)
    );

    // Awareness is shared both ways.
    let reader_id = reader.client_id();
    let writer_id = writer.client_id();
    let reader_state = r#"{"user":{"name":"Reader"}}"#;
    reader
        .send(awareness_message(reader_id, 1, Some(reader_state)))
        .await;
    writer
        .recv_until("the reader's awareness state", |m| mentions(m, reader_id))
        .await;
    assert_eq!(
        writer
            .awareness
            .get(&reader_id)
            .and_then(|s| s.state.as_deref()),
        Some(reader_state)
    );
    writer
        .send(awareness_message(
            writer_id,
            1,
            Some(r#"{"user":{"name":"Writer"}}"#),
        ))
        .await;
    reader
        .recv_until("the writer's awareness state", |m| mentions(m, writer_id))
        .await;

    // The reader's connection is still open and still gets updates; no "saved" ever comes.
    let after = writer.edit("!").await;
    reader
        .recv_until("the writer's next update", |m| {
            assert!(
                !matches!(m, Msg::Saved(_) | Msg::SaveError(..)),
                "each save request is answered once: {m:?}"
            );
            *m == Msg::Update(after.clone())
        })
        .await;
    writer.save(3).await;

    drop((writer, reader, step2_only));
    relay.restart().await;
    assert_eq!(
        text_seen_by_admin(&relay, "ro").await,
        "hello world!",
        "after a restart"
    );
    relay.stop().await;
    let stored = relay.stored_text("ro");
    assert!(!stored.contains("EVIL"), "{stored}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_that_expires_while_connected_closes_the_socket_with_4401() {
    let relay = TestRelay::start_with(secured_by(&[TEST_SECRET])).await;
    let exp = now_secs() + 2;
    let short = sign_token(&[TEST_SECRET], &claims(Some("exp"), Access::Write, exp));
    let mut other = relay
        .join_with_token("exp", &token(Some("exp"), Access::Write))
        .await;
    let mut client = relay.join_with_token("exp", &short).await;
    // It works until then.
    let update = client.edit("before expiry").await;
    assert_eq!(recv_absorbed(&mut other).await, Msg::Update(update));

    let code = client.expect_close().await;
    let closed_at = SystemTime::now();
    assert_eq!(code, Some(4401), "close code for an expired token");
    // RFC 7519: the token is invalid from its `exp` second on, so the socket closes then, and
    // not a second or two later.
    let expiry = UNIX_EPOCH + Duration::from_secs(exp);
    assert!(
        closed_at >= expiry,
        "closed before exp {exp}: {closed_at:?}"
    );
    let late = closed_at.duration_since(expiry).expect("checked");
    assert!(
        late < Duration::from_secs(1),
        "closed {late:?} after the start of the exp second"
    );
    // A token is refused during its own `exp` second, before the upgrade.
    let at_exp = sign_token(
        &[TEST_SECRET],
        &claims(Some("exp"), Access::Write, now_secs()),
    );
    let response = relay
        .try_upgrade("exp", Some(&format!("token={at_exp}")), &[])
        .await;
    assert_refused(
        &response,
        401,
        "the token has expired",
        "a token at its exp second",
    );
    // Reconnecting with the same token is refused before the upgrade.
    let response = relay
        .try_upgrade("exp", Some(&format!("token={short}")), &[])
        .await;
    assert_eq!(response.status, 401, "{}", response.text());
    assert!(response.text().contains("expired"), "{}", response.text());
    // The other connection, with a longer token, is unaffected.
    other.edit(", still open").await;
    other.save(1).await;
    assert_eq!(
        text_seen_by_admin(&relay, "exp").await,
        "before expiry, still open"
    );
    assert_eq!(
        relay
            .metric(r#"relay_disconnects_total{reason="token_expired"}"#)
            .await,
        Some(1.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_keys_accept_tokens_of_either_key_and_refuse_unknown_key_ids() {
    const NEW: &str = "new:the-new-secret-0123456789";
    const OLD: &str = "old:the-old-secret-0123456789";
    let relay = TestRelay::start_with(secured_by(&[NEW, OLD])).await;
    let exp = now_secs() + 3600;
    let by_old = sign_token(&[OLD], &claims(Some("rot"), Access::Write, exp));
    let by_new = sign_token(&[NEW], &claims(Some("rot"), Access::Write, exp));
    let mut a = relay.join_with_token("rot", &by_old).await;
    let mut b = relay.join_with_token("rot", &by_new).await;
    let update = a.edit("old key").await;
    assert_eq!(recv_absorbed(&mut b).await, Msg::Update(update));
    let update = b.edit(", new key").await;
    assert_eq!(recv_absorbed(&mut a).await, Msg::Update(update));

    let refused = [
        (
            "an unknown key id (signed with the old secret)",
            sign_token(
                &["retired:the-old-secret-0123456789"],
                &claims(Some("rot"), Access::Admin, exp),
            ),
        ),
        (
            "no key id (signed with the new secret)",
            sign_token(
                &["the-new-secret-0123456789"],
                &claims(Some("rot"), Access::Admin, exp),
            ),
        ),
        (
            "key id old, signed with the new secret",
            sign_token(
                &["old:the-new-secret-0123456789"],
                &claims(Some("rot"), Access::Admin, exp),
            ),
        ),
    ];
    for (what, token) in &refused {
        let response = relay
            .try_upgrade("rot", Some(&format!("token={token}")), &[])
            .await;
        assert_refused(&response, 401, "the token is invalid", what);
    }
    b.save(1).await;
    let mut check = relay.join_with_token("rot", &by_new).await;
    check.sync().await;
    assert_eq!(check.text(), "old key, new key");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_allow_list_refuses_other_sites_before_the_upgrade() {
    let relay = TestRelay::start_with(|c| {
        c.secrets = vec![Secret(TEST_SECRET.into())];
        c.allowed_origins = vec!["https://app.example".into()];
    })
    .await;
    let write = token(Some("o"), Access::Write);
    let query = format!("token={write}");
    for origin in [
        "https://evil.example",
        "https://app.example.evil.example",
        "http://app.example",
        "null",
    ] {
        let response = relay
            .try_upgrade("o", Some(&query), &[("Origin", origin)])
            .await;
        assert_eq!(
            response.status,
            403,
            "Origin {origin} with a valid token: {}",
            response.text()
        );
        assert!(
            response.text().contains("origin"),
            "the body names the reason: {:?}",
            response.text()
        );
    }
    let url = relay.ws_url_with_token("o", &write);
    // The allowed origin, no Origin at all (not a browser), and the relay's own origin work.
    let mut allowed = Client::join_with_headers(&url, &[("Origin", "https://app.example")]).await;
    let mut no_origin = Client::join_with_headers(&url, &[]).await;
    let own = format!("http://{}", relay.addr());
    let mut same = Client::join_with_headers(&url, &[("Origin", &own)]).await;
    let update = allowed.edit("from the app").await;
    assert_eq!(no_origin.recv_msg().await, Msg::Update(update.clone()));
    assert_eq!(same.recv_msg().await, Msg::Update(update));
    allowed.save(1).await;
    // The refused attempts changed nothing.
    assert_eq!(text_seen_by_admin(&relay, "o").await, "from the app");
    assert_eq!(
        relay
            .metric(r#"relay_errors_total{reason="origin_refused"}"#)
            .await,
        Some(4.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_secret_the_relay_is_open() {
    let relay = TestRelay::start().await;
    assert!(relay.config().secrets.is_empty());
    let mut a = relay.join("open").await;
    // A token, even a meaningless one, is not needed and not checked.
    let mut b = Client::join(&format!("{}?token=whatever", relay.ws_url("open"))).await;
    let update = a.edit("no token needed").await;
    assert_eq!(recv_absorbed(&mut b).await, Msg::Update(update));
    let update = b.edit("!").await;
    assert_eq!(recv_absorbed(&mut a).await, Msg::Update(update));
    b.save(1).await;
    let mut c = relay.join("open").await;
    c.sync().await;
    assert_eq!(c.text(), "no token needed!");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_client_answering_the_greeting_with_nothing_new_is_not_refused() {
    let relay = TestRelay::start_with(secured_by(&[TEST_SECRET])).await;
    let mut writer = relay
        .join_with_token("ro-sync", &token(Some("ro-sync"), Access::Write))
        .await;
    writer.edit("hello, world").await;
    // A deletion: from now on every update a Yjs client encodes carries the delete set.
    let before = writer.doc.transact().state_vector();
    {
        let text = writer.doc.get_or_insert_text(TEXT);
        let mut txn = writer.doc.transact_mut();
        text.remove_range(&mut txn, 5, 7);
    }
    let deletion = writer.doc.transact().encode_diff_v1(&before);
    writer.send(encode_update(&deletion)).await;
    writer.save(1).await;

    let read = token(Some("ro-sync"), Access::Read);
    let mut reader = relay.join_with_token("ro-sync", &read).await;
    reader.sync().await;
    assert_eq!(reader.text(), "hello");
    // The reader reconnects with the whole document and answers the greeting as stock clients
    // do: with what the relay lacks, which is nothing (no blocks; the delete set the relay has).
    let doc = reader.doc.clone();
    reader.close().await;
    let url = relay.ws_url_with_token("ro-sync", &read);
    let mut again = Client::connect(&url).await;
    again.doc = doc;
    let relay_sv = match again.recv_msg().await {
        Msg::SyncStep1(sv) => sv,
        other => panic!("expected the greeting's sync step 1, got {}", other.kind()),
    };
    let answer = again
        .doc
        .transact()
        .encode_diff_v1(&StateVector::decode_v1(&relay_sv).expect("a state vector"));
    assert_ne!(
        answer, EMPTY_UPDATE_V1,
        "test premise: the answer holds the delete set"
    );
    again.send(encode_sync_step2(&answer)).await;
    again.request_save(1).await;
    assert_eq!(
        again.recv_msg().await,
        Msg::Saved(1),
        "a read-only client's sync step 2 that changes nothing must not be refused: stock Yjs \
         clients always answer the greeting with their whole delete set, so every read-only \
         reconnect to a document with a deletion would log \"permission denied\" and get save \
         errors for every later save request (PROTOCOL.md: refused only if it \"would change \
         the document\")"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_with_the_largest_expiry_keeps_its_connection_open() {
    let relay = TestRelay::start_with(secured_by(&[TEST_SECRET])).await;
    let forever = sign_token(
        &[TEST_SECRET],
        &claims(Some("far"), Access::Write, u64::MAX),
    );
    let mut client = relay.join_with_token("far", &forever).await;
    let mut other = relay
        .join_with_token("far", &token(Some("far"), Access::Write))
        .await;
    let update = client.edit("still here").await;
    client.save(1).await;
    assert_eq!(recv_absorbed(&mut other).await, Msg::Update(update));
    // The connection is still open: it answers another save request.
    client.request_save(2).await;
    assert_eq!(client.recv_msg().await, Msg::Saved(2));
}
