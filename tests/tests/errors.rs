//! Broken input: malformed and truncated messages, undecodable updates and state vectors, text
//! frames and oversize messages. Each closes the offending connection with the documented code;
//! the relay, the other connections and the store are unaffected.

use bytes::Bytes;
use crdt::doc::RoomDoc;
use crdt::protocol::{encode_sync_step1, encode_update, write_var_bytes, write_var_u64};
use relay_tests::*;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

/// Frames that are not well-formed messages, by description.
fn malformed_frames() -> Vec<(&'static str, Vec<u8>)> {
    let update = text_update("MALFORMED-SECRET");
    let message = encode_update(&update);
    let mut huge_length = vec![0, 2];
    write_var_u64(&mut huge_length, 4 << 30);
    huge_length.extend([1, 2, 3]);
    let mut bad_json = Vec::new();
    write_var_u64(&mut bad_json, 1); // one entry
    write_var_u64(&mut bad_json, 7); // client id
    write_var_u64(&mut bad_json, 1); // clock
    write_var_bytes(&mut bad_json, b"{not json");
    let mut huge_count = Vec::new();
    write_var_u64(&mut huge_count, 1 << 40);
    vec![
        (
            "a truncated update message",
            message[..message.len() / 2].to_vec(),
        ),
        (
            "an update message missing its last byte",
            message[..message.len() - 1].to_vec(),
        ),
        ("a length prefix claiming 4 GiB", huge_length),
        ("a sync message without a sub-type", vec![0]),
        ("an unknown sync sub-type", vec![0, 9, 0]),
        ("a varint that overflows 64 bits", vec![0xff; 11]),
        ("an awareness message without its payload", vec![1]),
        ("an awareness state that is not JSON", {
            let mut m = vec![1];
            write_var_bytes(&mut m, &bad_json);
            m
        }),
        ("an awareness count larger than the payload", {
            let mut m = vec![1];
            write_var_bytes(&mut m, &huge_count);
            m
        }),
        ("an auth message with an unknown sub-type", vec![2, 5]),
        ("a save request without an id", vec![100, 0]),
        ("a save message with an unknown sub-type", vec![100, 7, 1]),
        ("a valid step 1 followed by a truncated message", {
            let mut m = encode_sync_step1(&[0]);
            m.extend([0, 2, 50, 1]);
            m
        }),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_messages_close_with_1002_and_harm_nothing_else() {
    let mut relay = TestRelay::start().await;
    let mut b1 = relay.join("victim").await;
    let mut b2 = relay.join("victim").await;
    let mut other = relay.join("elsewhere").await;
    let mut expected = String::new();
    let mut other_expected = String::new();

    for (i, (what, frame)) in malformed_frames().into_iter().enumerate() {
        let mut bad = relay.join("victim").await;
        bad.send(frame).await;
        assert_eq!(bad.expect_close().await, Some(1002), "{what}");
        relay.assert_healthy().await;

        // The room's other connections keep syncing, both ways.
        let word = format!("[{i}]");
        b1.edit(&word).await;
        expected.push_str(&word);
        b2.wait_for_text(&expected).await;
        let word = format!("({i})");
        b2.edit(&word).await;
        expected.push_str(&word);
        b1.wait_for_text(&expected).await;

        // And so does another room.
        let word = format!("{{{i}}}");
        other.edit(&word).await;
        other_expected.push_str(&word);
        other.save(i as u64).await;
    }

    // A newcomer sees exactly the good edits.
    let mut fresh = relay.join("victim").await;
    fresh.sync().await;
    assert_eq!(fresh.text(), expected);

    // Nothing of the malformed messages was stored.
    drop((b1, b2, other, fresh));
    relay.restart().await;
    let mut after = relay.join("victim").await;
    after.sync().await;
    assert_eq!(after.text(), expected, "after a restart");
    let mut after = relay.join("elsewhere").await;
    after.sync().await;
    assert_eq!(
        after.text(),
        other_expected,
        "the other room after a restart"
    );
    relay.stop().await;
    let stored = relay.stored_text("victim");
    assert!(!stored.contains("SECRET"), "{stored}");
    assert_eq!(stored, expected);
}

/// Updates whose framing is correct but whose content is not a valid Yjs update.
fn undecodable_updates() -> Vec<(&'static str, Vec<u8>)> {
    let update = text_update("UNDECODABLE-SECRET");
    vec![
        (
            "a real update cut in half",
            update[..update.len() / 2].to_vec(),
        ),
        (
            "a real update missing its last byte",
            update[..update.len() - 1].to_vec(),
        ),
        ("random bytes", vec![0xde, 0xad, 0xbe, 0xef, 0x13, 0x37]),
        ("a struct count with nothing behind it", vec![200, 1, 5, 9]),
        ("an empty payload", vec![]),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_update_closes_with_1002_and_is_neither_forwarded_nor_stored() {
    let mut relay = TestRelay::start().await;
    let mut b = relay.join("undecodable").await;
    let mut good = relay.join("undecodable").await;
    let mut expected = String::new();
    for (i, (what, payload)) in undecodable_updates().into_iter().enumerate() {
        assert!(
            RoomDoc::new().apply_update_v1(&payload).is_err(),
            "test premise: {what} does not apply"
        );
        for as_step2 in [false, true] {
            let mut bad = relay.join("undecodable").await;
            let message = if as_step2 {
                crdt::protocol::encode_sync_step2(&payload)
            } else {
                encode_update(&payload)
            };
            bad.send(message).await;
            assert_eq!(
                bad.expect_close().await,
                Some(1002),
                "{what} (as step 2: {as_step2})"
            );
            // The room processed the bad update before closing; whatever B receives next must be
            // the good client's update, not the bad one.
            let word = format!("[{i}{}]", if as_step2 { "s" } else { "u" });
            let update = good.edit(&word).await;
            expected.push_str(&word);
            assert_eq!(
                b.recv_msg().await,
                Msg::Update(update.clone()),
                "B's next message after {what}"
            );
            apply(&b.doc, &update);
        }
    }
    relay.assert_healthy().await;
    drop((b, good));
    relay.restart().await;
    let mut after = relay.join("undecodable").await;
    after.sync().await;
    assert_eq!(after.text(), expected);
    relay.stop().await;
    assert_eq!(relay.stored_text("undecodable"), expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_vector_claiming_two_billion_entries_closes_with_1002() {
    let relay = TestRelay::start().await;
    let mut a = relay.join("sv").await;
    a.edit("still here").await;
    let mut sv = Vec::new();
    write_var_u64(&mut sv, 2_000_000_000);
    sv.extend([1, 1]);
    assert!(sv.len() < 10, "a few bytes");

    let mut bad = relay.join("sv").await;
    bad.send(encode_sync_step1(&sv)).await;
    assert_eq!(bad.expect_close().await, Some(1002));

    // The same in another form: entries claimed, then a client id with no clock.
    let mut bad = relay.join("sv").await;
    let mut sv = Vec::new();
    write_var_u64(&mut sv, u32::MAX.into());
    bad.send(encode_sync_step1(&sv)).await;
    assert_eq!(bad.expect_close().await, Some(1002));

    relay.assert_healthy().await;
    let mut c = relay.join("sv").await;
    c.sync().await;
    assert_eq!(c.text(), "still here");
    a.edit(", and working").await;
    c.wait_for_text("still here, and working").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_frame_closes_with_1003() {
    let relay = TestRelay::start().await;
    let mut a = relay.join("text").await;
    let mut b = relay.join("text").await;
    a.send_ws(WsMessage::text("hello")).await;
    assert_eq!(a.expect_close().await, Some(1003));
    b.edit("fine").await;
    b.save(1).await;
    relay.assert_healthy().await;
}

const LIMIT: usize = 64 << 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn size_limit_closes_with_1009_and_accepts_a_message_just_under_it() {
    let relay = TestRelay::start_with(|c| c.max_message_bytes = LIMIT).await;
    let mut a = relay.join("big").await;
    let mut b = relay.join("big").await;

    // Just under the limit: accepted and forwarded.
    let (message, text) = update_message_of_len(LIMIT - 8, "y");
    a.send(message.clone()).await;
    let forwarded = b.recv_frame().await;
    assert_eq!(
        forwarded.as_ref(),
        message.as_slice(),
        "forwarded unchanged"
    );
    b.absorb(&decode_one(&forwarded));
    assert_eq!(b.text(), text);

    // Exactly at the limit: accepted too.
    let (message, _) = update_message_of_len(LIMIT, "y");
    a.send(message.clone()).await;
    assert_eq!(b.recv_frame().await.as_ref(), message.as_slice());

    // One byte over, in one frame: 1009.
    let mut c = relay.join("big").await;
    let (message, _) = update_message_of_len(LIMIT + 1, "y");
    c.send(message).await;
    assert_eq!(
        c.expect_close().await,
        Some(1009),
        "one frame over the limit"
    );

    // Over the limit in small fragments: 1009 as well.
    let mut d = relay.join("big").await;
    let (message, _) = update_message_of_len(LIMIT + 100, "y");
    let chunks: Vec<&[u8]> = message.chunks(16 << 10).collect();
    for (i, chunk) in chunks.iter().enumerate() {
        let opcode = if i == 0 {
            OpCode::Data(Data::Binary)
        } else {
            OpCode::Data(Data::Continue)
        };
        let last = i + 1 == chunks.len();
        let frame = Frame::message(Bytes::copy_from_slice(chunk), opcode, last);
        d.send_ws(WsMessage::Frame(frame)).await;
    }
    assert_eq!(
        d.expect_close().await,
        Some(1009),
        "a fragmented message over the limit"
    );

    // The rest carries on.
    relay.assert_healthy().await;
    let update = b.edit("!").await;
    assert_eq!(a.recv_msg().await, Msg::Update(update));
}
