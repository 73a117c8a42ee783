//! Hostile clients: random bytes, truncated messages, length prefixes claiming gigabytes, unknown
//! message types, text frames, frames over the limit, deeply nested and huge updates, awareness
//! states that are not JSON, floods of connections, and a client that never reads.
//!
//! After each case: the relay answers `/healthz`, the two clients of the attacked room ("victim")
//! still exchange edits, another room syncs, the process's memory is back near where it was
//! before the attack, and the stored documents hold exactly the valid updates (checked through
//! the document API while the relay runs, and in the store itself once it is stopped).
//!
//! # Memory
//!
//! The relay runs in-process ([`TestRelay`]) in every case but one (deeply nested shared types,
//! which runs the relay binary so that a crash fails the test instead of aborting the test
//! binary). The memory measured is therefore this test process's
//! `VmRSS`, after the attacking clients are gone and `malloc_trim(0)` has handed freed memory back
//! to the system (otherwise glibc keeps freed arenas mapped and the number says little). The
//! in-process relay keeps the test fast and lets it read the relay's metrics and configuration
//! directly; the clients are dropped before each measurement, so what remains is the relay's. The
//! tests of this file take turns ([`SERIAL`]), so each measures only its own relay. The margin
//! ([`MEMORY_MARGIN`]) is generous: the point is to catch memory held per attack (a leaked
//! connection, a buffer sized by a forged length), which would be tens or hundreds of MiB.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use crdt::doc::RoomDoc;
use crdt::protocol::{
    encode_awareness, encode_save_request, encode_sync_step1, encode_sync_step2, encode_update,
    write_var_bytes, write_var_u64,
};
use crdt::store::{Store, StoreOptions};
use futures_util::future::join_all;
use relay::config::Config;
use relay_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use yrs::{Any, Doc, Map, MapPrelim, MapRef, ReadTxn, StateVector, Transact};

/// The tests of this file run one at a time, so that each one's memory figures are its own.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// `--max-message-bytes` of the hostile tests.
const LIMIT: usize = 256 << 10;

/// How far above its level before an attack the process's memory may be after it.
const MEMORY_MARGIN: u64 = 32 << 20;

/// Text that hostile payloads carry, so that a test can tell if any of it was stored.
const MARK: &str = "HOSTILE";

/// The process's resident memory after returning freed memory to the system.
fn trimmed_rss() -> u64 {
    // SAFETY: malloc_trim only releases free memory of glibc's allocator; it has no
    // preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
    vm_rss_bytes(None).expect("read VmRSS from /proc/self/status")
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// The attacked relay, its victim room with two well-behaved clients, and what must be stored.
struct Hostile {
    relay: TestRelay,
    a: Client,
    b: Client,
    /// Updates that changed the victim room (each is one stored log entry).
    victim_updates: u64,
    /// Other rooms and the text each must hold.
    rooms: BTreeMap<String, String>,
    baseline_rss: u64,
    cases: usize,
    next_probe: u64,
}

impl Hostile {
    /// Starts a relay with [`LIMIT`], `idle_unload_secs = 0` (empty rooms unload at once, so a
    /// test can wait for them to be gone) and `adjust`; fills the victim room; warms up and
    /// measures the memory baseline.
    async fn start(adjust: impl FnOnce(&mut Config)) -> Hostile {
        let relay = TestRelay::start_with(|c| {
            c.max_message_bytes = LIMIT;
            c.idle_unload_secs = 0;
            // A small page cache: redb's cache is memory the relay keeps on purpose, up to
            // this size, and would otherwise hide what an attack leaves behind.
            c.store_cache_mb = 4;
            adjust(c);
        })
        .await;
        let mut a = relay.join("victim").await;
        let mut b = relay.join("victim").await;
        a.edit("before the attack").await;
        b.wait_for_text("before the attack").await;
        a.save(1).await;
        let mut h = Hostile {
            relay,
            a,
            b,
            victim_updates: 1,
            rooms: BTreeMap::new(),
            baseline_rss: 0,
            cases: 0,
            next_probe: 1 << 40,
        };
        // Warm up: the first connections and rooms allocate what every later one reuses.
        for i in 0..20 {
            let mut c = h.relay.join(&format!("warm-up {}", i % 4)).await;
            c.send(encode_sync_step1(&[0])).await;
            c.close().await;
        }
        h.settle().await;
        h.baseline_rss = trimmed_rss();
        eprintln!("baseline: {:.1} MiB", mib(h.baseline_rss));
        h
    }

    /// Waits until only A and B are connected and only the victim room is loaded.
    async fn settle(&self) {
        self.relay
            .wait_metric("relay_connections", |v| v == 2.0)
            .await;
        self.relay
            .wait_metric("relay_rooms_loaded", |v| v == 1.0)
            .await;
    }

    /// A probe id no hostile payload uses.
    fn probe_id(&mut self) -> u64 {
        self.next_probe += 1;
        self.next_probe
    }

    /// Whether a connection is alive and its earlier frames were processed: a save request is
    /// answered *saved* on a live connection.
    async fn assert_alive(&mut self, client: &mut Client, what: &str) {
        let id = self.probe_id();
        client.request_save(id).await;
        loop {
            match client.next_event().await {
                Event::Frame(frame) => {
                    if decode_all(&frame).contains(&Msg::Saved(id)) {
                        return;
                    }
                }
                other => panic!("{what}: the connection should stay open, got {other:?}"),
            }
        }
    }

    /// Sends one frame on a fresh connection to the victim room and expects it closed with
    /// `code`.
    async fn expect_closed_by(&self, frame: Vec<u8>, code: u16, what: &str) {
        let mut bad = self.relay.join("victim").await;
        bad.send(frame).await;
        assert_eq!(bad.expect_close().await, Some(code), "{what}");
    }

    /// A valid edit in the victim room, by A; B must receive it.
    async fn victim_edit(&mut self, s: &str) {
        self.a.edit(s).await;
        self.victim_updates += 1;
        let text = self.a.text();
        self.b.wait_for_text(&text).await;
    }

    /// The checks after each case: health, the victim room both ways, another room, memory,
    /// and the victim document through the API.
    async fn after(&mut self, case: &str) {
        self.cases += 1;
        self.relay.assert_healthy().await;
        // The victim room, both ways.
        let word = format!("[a{}]", self.cases);
        self.victim_edit(&word).await;
        let word = format!("[b{}]", self.cases);
        self.b.edit(&word).await;
        self.victim_updates += 1;
        let text = self.b.text();
        self.a.wait_for_text(&text).await;
        let id = self.probe_id();
        self.b.save(id).await;
        // Another room.
        let room = format!("other {}", self.cases);
        let mut c1 = self.relay.join(&room).await;
        let mut c2 = self.relay.join(&room).await;
        c1.edit("ok").await;
        c2.wait_for_text("ok").await;
        c2.edit("!").await;
        c1.wait_for_text("ok!").await;
        c1.save(1).await;
        c1.close().await;
        c2.close().await;
        self.rooms.insert(room, "ok!".into());
        // The victim document as the relay holds it is A's document: only valid updates.
        self.assert_victim_matches_a(case).await;
        // Memory, once every attacker is gone and rooms they opened are unloaded.
        self.settle().await;
        let rss = trimmed_rss();
        eprintln!(
            "after {case}: {:.1} MiB ({:+.1} MiB)",
            mib(rss),
            mib(rss) - mib(self.baseline_rss)
        );
        assert!(
            rss <= self.baseline_rss + MEMORY_MARGIN,
            "after {case}: memory is {:.1} MiB, {:.1} MiB before the attack",
            mib(rss),
            mib(self.baseline_rss)
        );
    }

    async fn assert_victim_matches_a(&self, case: &str) {
        let response = self
            .relay
            .request("GET", "/api/docs/victim?format=json", &[], b"")
            .await;
        assert_eq!(response.status, 200, "{}", response.text());
        let json: serde_json::Value = serde_json::from_slice(&response.body).expect("JSON");
        assert_eq!(
            json,
            exported_json(&self.a.doc),
            "after {case}: the victim document"
        );
        let response = self
            .relay
            .request("GET", "/api/docs/victim", &[], b"")
            .await;
        assert_eq!(response.status, 200);
        let relay_doc = Doc::new();
        apply(&relay_doc, &response.body);
        assert_eq!(
            relay_doc.transact().state_vector(),
            self.a.doc.transact().state_vector(),
            "after {case}: the victim document's state vector"
        );
    }

    /// Stops the relay and checks the store: exactly the expected rooms, the victim room holds
    /// A's document with one log entry per valid update, and no hostile text anywhere.
    async fn finish(mut self) {
        let a_doc = self.a.doc.clone();
        let victim_text = self.a.text();
        drop((self.a, self.b));
        self.relay.stop().await;
        eprintln!("relay stopped: {:.1} MiB", mib(trimmed_rss()));
        let store = Store::open(&self.relay.store_path(), &StoreOptions::default())
            .expect("open the store of the stopped relay");
        let stored: BTreeSet<String> = store
            .list_rooms(None, 10_000)
            .expect("list the stored rooms")
            .into_iter()
            .map(|r| r.name)
            .collect();
        let mut expected: BTreeSet<String> = self.rooms.keys().cloned().collect();
        expected.insert("victim".into());
        assert_eq!(stored, expected, "the stored rooms");
        let victim = store.load("victim").expect("load the victim room");
        assert_eq!(doc_text(victim.doc.yrs()), victim_text);
        assert_eq!(victim.doc.to_json(), exported_json(&a_doc));
        assert_eq!(
            victim.next_seq - 1,
            self.victim_updates,
            "one stored update per valid update, nothing else"
        );
        for (room, text) in &self.rooms {
            let loaded = store.load(room).expect("load a room");
            let stored_text = doc_text(loaded.doc.yrs());
            assert_eq!(&stored_text, text, "room {room:?}");
            assert!(!stored_text.contains(MARK), "room {room:?}");
        }
        assert!(!victim_text.contains(MARK));
        eprintln!("{} hostile case(s) passed", self.cases);
    }
}

// ------------------------------------------------------------------------------------------------
// Raw WebSocket frames, for what a well-behaved library would not send
// ------------------------------------------------------------------------------------------------

/// A WebSocket spoken by hand over TCP.
struct RawSocket {
    stream: TcpStream,
    buffered: Vec<u8>,
}

impl RawSocket {
    /// Sends the upgrade request for `room` and reads the 101 answer.
    async fn open(addr: SocketAddr, room: &str) -> RawSocket {
        let mut stream = within("TCP connect", TcpStream::connect(addr))
            .await
            .expect("connect");
        let request = format!(
            "GET /{} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
            encode_room(room)
        );
        stream.write_all(request.as_bytes()).await.expect("write");
        let mut buffered = Vec::new();
        let mut chunk = [0u8; 4096];
        let end = within("the 101 answer", async {
            loop {
                if let Some(i) = buffered.windows(4).position(|w| w == b"\r\n\r\n") {
                    return i + 4;
                }
                let n = stream.read(&mut chunk).await.expect("read");
                assert!(n > 0, "connection closed during the handshake");
                buffered.extend_from_slice(&chunk[..n]);
            }
        })
        .await;
        let head = String::from_utf8_lossy(&buffered[..end]).into_owned();
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        buffered.drain(..end);
        RawSocket { stream, buffered }
    }

    /// A frame header as a client sends it (masked, with the key 1, 2, 3, 4).
    fn header(fin: bool, opcode: u8, len: u64) -> Vec<u8> {
        let mut out = vec![if fin { 0x80 } else { 0 } | opcode];
        if len < 126 {
            out.push(0x80 | len as u8);
        } else if len <= u64::from(u16::MAX) {
            out.push(0x80 | 126);
            out.extend((len as u16).to_be_bytes());
        } else {
            out.push(0x80 | 127);
            out.extend(len.to_be_bytes());
        }
        out.extend([1, 2, 3, 4]);
        out
    }

    /// Writes a whole frame (masked).
    async fn frame(&mut self, fin: bool, opcode: u8, payload: &[u8]) {
        let mut out = Self::header(fin, opcode, payload.len() as u64);
        out.extend(
            payload
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ [1, 2, 3, 4][i % 4]),
        );
        self.write(&out).await;
    }

    /// Writes bytes; the relay may already have closed, which is fine.
    async fn write(&mut self, bytes: &[u8]) {
        let _ = within("writing", self.stream.write_all(bytes)).await;
    }

    /// Reads frames until a close frame (its code, `Some(None)` for none) or the end of the
    /// connection (`None`).
    async fn read_close(&mut self) -> Option<Option<u16>> {
        within("the relay to close the connection", async {
            let mut chunk = [0u8; 8192];
            loop {
                if let Some((opcode, payload, used)) = parse_server_frame(&self.buffered) {
                    self.buffered.drain(..used);
                    if opcode == 8 {
                        return Some(
                            (payload.len() >= 2)
                                .then(|| u16::from_be_bytes([payload[0], payload[1]])),
                        );
                    }
                    continue;
                }
                match self.stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return None,
                    Ok(n) => self.buffered.extend_from_slice(&chunk[..n]),
                }
            }
        })
        .await
    }
}

/// Parses one unmasked server frame: opcode, payload and bytes used; `None` if incomplete.
fn parse_server_frame(buf: &[u8]) -> Option<(u8, Vec<u8>, usize)> {
    if buf.len() < 2 {
        return None;
    }
    let opcode = buf[0] & 0x0f;
    let (len, start) = match buf[1] & 0x7f {
        126 => (u16::from_be_bytes([*buf.get(2)?, *buf.get(3)?]) as usize, 4),
        127 => (
            u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?) as usize,
            10,
        ),
        n => (n as usize, 2),
    };
    let payload = buf.get(start..start + len)?.to_vec();
    Some((opcode, payload, start + len))
}

// ------------------------------------------------------------------------------------------------
// The cases
// ------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_bytes() {
    let _turn = SERIAL.lock().await;
    let mut h = Hostile::start(|_| {}).await;
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let mut bad = h.relay.join("victim").await;
    let (mut closed, mut ignored) = (0, 0);
    for i in 0..300 {
        let len = 1 + rng.below(2048) as usize;
        let body = rng.bytes(len);
        // A quarter pure noise (mostly unknown message types), the rest noise behind a real
        // header, so the payload parsers see it too.
        let frame = match i % 4 {
            0 => body,
            1 => encode_update(&body),
            2 => encode_sync_step1(&body),
            _ => encode_awareness(&body),
        };
        bad.send(frame).await;
        let id = h.probe_id();
        bad.request_save(id).await;
        let outcome = loop {
            match bad.next_event().await {
                Event::Frame(frame) => {
                    if decode_all(&frame).contains(&Msg::Saved(id)) {
                        break None;
                    }
                }
                Event::Close(code) => break Some(code),
                other => panic!("random frame {i}: {other:?}"),
            }
        };
        match outcome {
            None => ignored += 1,
            Some(code) => {
                assert_eq!(code, Some(1002), "random frame {i}");
                closed += 1;
                bad = h.relay.join("victim").await;
            }
        }
    }
    eprintln!("300 random frames: {closed} closed the connection (1002), {ignored} were ignored");
    assert!(
        closed > 50 && ignored > 10,
        "{closed} closed, {ignored} ignored"
    );
    drop(bad);
    h.after("random bytes").await;
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_messages() {
    let _turn = SERIAL.lock().await;
    let mut h = Hostile::start(|_| {}).await;
    let update = text_update(&format!("{MARK} truncated"));
    let sv = state_vector(&h.a.doc);
    let messages: Vec<(&str, Vec<u8>)> = vec![
        ("an update", encode_update(&update)),
        ("a sync step 2", encode_sync_step2(&update)),
        ("a sync step 1", encode_sync_step1(&sv)),
        (
            "an awareness message",
            awareness_message(77, 3, Some(r#"{"user":"HOSTILE"}"#)),
        ),
        ("a save request", encode_save_request(1 << 40)),
    ];
    let mut count = 0;
    for (what, message) in &messages {
        for cut in 1..message.len() {
            h.expect_closed_by(
                message[..cut].to_vec(),
                1002,
                &format!("{what} cut at {cut} of {}", message.len()),
            )
            .await;
            count += 1;
        }
    }
    // A WebSocket frame cut short: the header promises 1000 bytes, 10 come, then the client
    // goes away. The relay just drops the connection.
    let mut raw = RawSocket::open(h.relay.addr(), "victim").await;
    let mut partial = RawSocket::header(true, 2, 1000);
    partial.extend([0; 10]);
    raw.write(&partial).await;
    drop(raw);
    eprintln!("{count} truncated messages closed with 1002");
    h.after("truncated messages").await;
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn length_prefixes_claiming_gigabytes() {
    let _turn = SERIAL.lock().await;
    let mut h = Hostile::start(|_| {}).await;
    let huge = |header: &[u8], claimed: u64| {
        let mut m = header.to_vec();
        write_var_u64(&mut m, claimed);
        m.extend(MARK.as_bytes());
        m
    };
    // An update whose string claims 4 GiB inside a well-framed message.
    let mut inner = vec![1, 1]; // one client, one block
    write_var_u64(&mut inner, 5); // client id
    inner.push(0); // clock
    inner.push(4); // info: string content, parent by name
    inner.push(1); // parent is a root type
    write_var_bytes(&mut inner, b"t");
    write_var_u64(&mut inner, 4 << 30); // the string's length
    inner.extend(MARK.as_bytes());
    let frames = vec![
        ("an update of 4 GiB", huge(&[0, 2], 4 << 30)),
        ("a sync step 2 of 2^62 bytes", huge(&[0, 1], 1 << 62)),
        ("a state vector of 16 GiB", huge(&[0, 0], 16 << 30)),
        ("an awareness payload of 1 TiB", huge(&[1], 1 << 40)),
        ("an awareness count of 2^40", {
            let mut payload = Vec::new();
            write_var_u64(&mut payload, 1 << 40);
            encode_awareness(&payload)
        }),
        ("an update with 2^32 clients", {
            let mut payload = Vec::new();
            write_var_u64(&mut payload, 1 << 32);
            payload.extend([0; 16]);
            encode_update(&payload)
        }),
        (
            "a string inside an update claiming 4 GiB",
            encode_update(&inner),
        ),
        (
            "a permission-denied reason of 8 GiB",
            huge(&[2, 0], 8 << 30),
        ),
        ("a save error reason of 8 GiB", {
            let mut m = vec![100, 2, 1];
            write_var_u64(&mut m, 8 << 30);
            m
        }),
    ];
    for (what, frame) in frames {
        let before = vm_rss_bytes(None).expect("VmRSS");
        h.expect_closed_by(frame, 1002, what).await;
        let after = vm_rss_bytes(None).expect("VmRSS");
        assert!(
            after < before + MEMORY_MARGIN,
            "{what}: memory went from {:.1} to {:.1} MiB",
            mib(before),
            mib(after)
        );
    }
    // WebSocket frame headers claiming 1 TiB and 2^63 bytes: refused from the header (1009),
    // never allocated.
    for claimed in [1u64 << 40, (1 << 63) - 1] {
        let mut raw = RawSocket::open(h.relay.addr(), "victim").await;
        let mut bytes = RawSocket::header(true, 2, claimed);
        bytes.extend([0; 64]);
        raw.write(&bytes).await;
        assert_eq!(
            raw.read_close().await,
            Some(Some(1009)),
            "a frame header claiming {claimed} bytes"
        );
    }
    h.after("length prefixes claiming gigabytes").await;
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_message_types_are_ignored() {
    let _turn = SERIAL.lock().await;
    let mut h = Hostile::start(|_| {}).await;
    let mut odd = h.relay.join("victim").await;
    let mut big_type = Vec::new();
    write_var_u64(&mut big_type, u64::MAX);
    let frames: Vec<Vec<u8>> = vec![
        vec![4],
        vec![5, 1, 2, 3],
        vec![99, 0xff, 0xff, 0xff],
        vec![101, 0, 1],
        vec![0x80, 0x80, 0x04, 9, 9],
        big_type,
        // A valid update after an unknown type in the same frame: the unknown type owns the
        // rest of the frame, so the update is not applied.
        pack(&[&[42], &encode_update(&text_update(MARK))]),
    ];
    for (i, frame) in frames.into_iter().enumerate() {
        odd.send(frame).await;
        h.assert_alive(&mut odd, &format!("unknown type {i}")).await;
    }
    // The connection still works: an update in a frame of its own is applied.
    odd.doc = Doc::new();
    apply(&odd.doc, &full_state(&h.a.doc));
    odd.edit(" (sent after unknown types)").await;
    h.victim_updates += 1;
    let text = odd.text();
    h.a.wait_for_text(&text).await;
    h.b.wait_for_text(&text).await;
    drop(odd);
    h.after("unknown message types").await;
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_frames_close_with_1003() {
    let _turn = SERIAL.lock().await;
    let mut h = Hostile::start(|_| {}).await;
    for text in ["hello", "{\"type\":\"sync\"}", MARK] {
        let mut bad = h.relay.join("victim").await;
        bad.send_ws(WsMessage::text(text)).await;
        assert_eq!(bad.expect_close().await, Some(1003), "text frame {text:?}");
    }
    // A text frame that is not even UTF-8: the connection is closed (tungstenite refuses it
    // before the relay sees it), whatever the code.
    let mut raw = RawSocket::open(h.relay.addr(), "victim").await;
    raw.frame(true, 1, &[0xff, 0xfe, 0xfd]).await;
    let closed = raw.read_close().await;
    assert_ne!(closed, Some(Some(1000)), "not a normal close");
    h.after("text frames").await;
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_over_the_limit_and_huge_updates() {
    let _turn = SERIAL.lock().await;
    let mut h = Hostile::start(|_| {}).await;
    // Just under the limit: a valid update, applied, forwarded and stored.
    let (message, text) = update_message_of_len(LIMIT - 16, "under ");
    let mut big = h.relay.join("victim").await;
    big.send(message.clone()).await;
    h.victim_updates += 1;
    assert_eq!(h.a.recv_frame().await.as_ref(), message.as_slice());
    apply(&h.a.doc, &text_update_payload(&message));
    assert_eq!(h.b.recv_frame().await.as_ref(), message.as_slice());
    apply(&h.b.doc, &text_update_payload(&message));
    assert!(h.a.text().contains(&text));
    big.save(1).await;
    drop(big);
    // At the limit exactly: accepted too.
    let (message, _) = update_message_of_len(LIMIT, "at ");
    let mut at = h.relay.join("victim").await;
    at.send(message.clone()).await;
    h.victim_updates += 1;
    assert_eq!(h.a.recv_frame().await.as_ref(), message.as_slice());
    apply(&h.a.doc, &text_update_payload(&message));
    assert_eq!(h.b.recv_frame().await.as_ref(), message.as_slice());
    apply(&h.b.doc, &text_update_payload(&message));
    drop(at);

    // One byte over: 1009, not applied, not stored.
    let over = |extra: usize| update_message_of_len(LIMIT + extra, MARK).0;
    h.expect_closed_by(over(1), 1009, "one byte over the limit")
        .await;
    h.expect_closed_by(over(LIMIT), 1009, "twice the limit")
        .await;
    // Over the limit in fragments of a message.
    let message = over(100);
    let mut d = h.relay.join("victim").await;
    let chunks: Vec<&[u8]> = message.chunks(16 << 10).collect();
    for (i, chunk) in chunks.iter().enumerate() {
        let opcode = if i == 0 {
            OpCode::Data(Data::Binary)
        } else {
            OpCode::Data(Data::Continue)
        };
        let frame = Frame::message(Bytes::copy_from_slice(chunk), opcode, i + 1 == chunks.len());
        d.send_ws(WsMessage::Frame(frame)).await;
    }
    assert_eq!(d.expect_close().await, Some(1009), "a fragmented message");
    // Frames the WebSocket protocol forbids: a continuation without a start, and a ping of more
    // than 125 bytes. The connection is closed; nothing else happens.
    for (what, opcode, payload) in [
        (
            "a continuation frame without a first frame",
            0u8,
            vec![1u8; 10],
        ),
        ("a ping of 1000 bytes", 9, vec![0; 1000]),
    ] {
        let mut raw = RawSocket::open(h.relay.addr(), "victim").await;
        raw.frame(true, opcode, &payload).await;
        let closed = raw.read_close().await;
        assert_ne!(closed, Some(Some(1000)), "{what}: not a normal close");
    }
    h.after("frames over the limit and huge updates").await;
    h.finish().await;
}

/// The update inside an update message.
fn text_update_payload(message: &[u8]) -> Vec<u8> {
    match decode_one(message) {
        Msg::Update(update) => update,
        other => panic!("not an update: {}", other.kind()),
    }
}

/// An update setting `m.deep` to `depth` arrays nested in each other (around `null`), as yrs
/// encodes it.
fn nested_any_update(depth: usize) -> Vec<u8> {
    let mut value = Any::Null;
    for _ in 0..depth {
        value = Any::from(vec![value]);
    }
    let doc = Doc::new();
    let map = doc.get_or_insert_map("m");
    map.insert(&mut doc.transact_mut(), "deep", value);
    doc.transact()
        .encode_state_as_update_v1(&StateVector::default())
}

/// The same, built by hand for depths yrs itself could not encode without deep recursion: one
/// item in the root map `m` whose content is `depth` nested one-element arrays (maps when
/// `maps`).
fn nested_any_update_by_hand(depth: usize, maps: bool) -> Vec<u8> {
    let mut update = vec![1, 1]; // one client, one block
    write_var_u64(&mut update, 4242); // client id
    update.push(0); // clock
    update.push(8 | 0b0010_0000); // info: Any content, with a parent sub (map key)
    update.push(1); // parent is a root type, by name
    write_var_bytes(&mut update, b"m");
    write_var_bytes(&mut update, b"deep"); // the key
    update.push(1); // one value
    for _ in 0..depth {
        if maps {
            update.extend([118, 1]); // a map of one entry
            write_var_bytes(&mut update, b"k");
        } else {
            update.extend([117, 1]); // an array of one value
        }
    }
    update.push(126); // null
    update.push(0); // empty delete set
    update
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deeply_nested_updates() {
    let _turn = SERIAL.lock().await;
    let mut h = Hostile::start(|_| {}).await;
    let limit = crdt::validate::MAX_ANY_DEPTH;
    // At the limit: valid, applied and stored (this is what a client can legitimately send).
    let at_limit = nested_any_update(limit);
    // The hand-made encoding is right: at the limit it applies, one level more it does not.
    for maps in [false, true] {
        RoomDoc::new()
            .apply_update_v1(&nested_any_update_by_hand(limit, maps))
            .expect("the hand-made update at the limit applies");
        assert!(
            crdt::validate::check_update_v1(&nested_any_update_by_hand(limit + 1, maps)).is_err()
        );
    }
    h.a.send(encode_update(&at_limit)).await;
    apply(&h.a.doc, &at_limit);
    h.victim_updates += 1;
    h.b.recv_until("the nested update", |m| matches!(m, Msg::Update(_)))
        .await;
    // Beyond it: refused with 1002, stored nowhere.
    let cases = [
        (
            "arrays one level too deep (yrs' encoding)",
            nested_any_update(limit + 1),
        ),
        (
            "arrays 10,000 deep",
            nested_any_update_by_hand(10_000, false),
        ),
        ("maps 10,000 deep", nested_any_update_by_hand(10_000, true)),
        (
            "arrays 100,000 deep",
            nested_any_update_by_hand(100_000, false),
        ),
    ];
    for (what, update) in cases {
        assert!(update.len() < LIMIT, "{what}: under the message limit");
        h.expect_closed_by(encode_update(&update), 1002, what).await;
        h.expect_closed_by(encode_sync_step2(&update), 1002, what)
            .await;
    }
    h.after("deeply nested updates").await;
    h.finish().await;
}

/// An update nesting `depth` maps in one another under the root map `m` (shared types, not
/// `Any` values: every level is an item whose parent is the one before).
fn nested_maps_update(depth: usize) -> Vec<u8> {
    let doc = Doc::new();
    let mut map: MapRef = doc.get_or_insert_map("m");
    let mut txn = doc.transact_mut();
    for _ in 0..depth {
        map = map.insert(&mut txn, "k", MapPrelim::default());
    }
    drop(txn);
    doc.transact()
        .encode_state_as_update_v1(&StateVector::default())
}

/// Shared types nested 10,000 deep: valid Yjs (every level is a small item whose parent is the
/// level above), 130 KB. The relay may refuse it as too deep (1002, like `Any` values past its
/// nesting limit) or accept it; either way it must go on serving the document: to joiners, and
/// through the document API, as JSON too. This case runs the relay binary as a child process, so
/// that a relay that crashes fails this test with its log instead of aborting the test binary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deeply_nested_shared_types() {
    let _turn = SERIAL.lock().await;
    let dir = tempfile::tempdir().expect("a data directory");
    let mut relay = ChildRelay::start(dir.path(), &["--max-message-bytes", "262144"], |_| {})
        .await
        .expect("start the relay binary");
    let mut a = Client::join(&relay.ws_url("nested")).await;
    a.edit("before").await;
    a.save(1).await;
    let update = nested_maps_update(10_000);
    assert!(update.len() < LIMIT);
    let mut c = Client::join(&relay.ws_url("nested")).await;
    c.send(encode_update(&update)).await;
    c.request_save(1).await;
    let accepted = loop {
        match c.next_event().await {
            Event::Frame(frame) => {
                if decode_all(&frame).contains(&Msg::Saved(1)) {
                    break true;
                }
            }
            Event::Close(code) => {
                assert_eq!(code, Some(1002), "refused as too deep");
                break false;
            }
            other => panic!("the nested update: {other:?}"),
        }
    };
    relay.assert_running("after the nested update");
    if accepted {
        a.recv_until("the nested update", |m| matches!(m, Msg::Update(_)))
            .await;
    }
    let mut joiner = Client::join(&relay.ws_url("nested")).await;
    joiner.sync().await;
    assert_eq!(
        joiner.doc.transact().state_vector(),
        a.doc.transact().state_vector(),
        "a joiner gets the document"
    );
    relay.assert_running("after a joiner synced");
    for path in ["/api/docs/nested", "/api/docs/nested?format=json"] {
        let response = http_request(relay.addr(), "GET", path, &[], b"").await;
        if let Some(status) = relay.exited_within(Duration::from_secs(2)).await {
            panic!(
                "GET {path} on a document with shared types nested 10,000 deep (accepted: \
                 {accepted}) killed the relay ({status}); its log:\n{}",
                relay.log()
            );
        }
        let status = response.map(|r| r.status);
        assert!(
            matches!(status, Ok(s) if s == 200 || (400..500).contains(&s)),
            "GET {path}: {status:?}"
        );
    }
    let (status, _) = http_get(relay.addr(), "/healthz").await.expect("/healthz");
    assert_eq!(status, 200);
    drop((a, c, joiner));
    assert!(relay.stop().await.success(), "{}", relay.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn awareness_with_invalid_json() {
    let _turn = SERIAL.lock().await;
    let mut h = Hostile::start(|_| {}).await;
    let states: Vec<(&str, Vec<u8>)> = vec![
        ("not JSON", b"{HOSTILE".to_vec()),
        ("an unterminated string", b"\"HOSTILE".to_vec()),
        ("trailing garbage", br#"{"user":"HOSTILE"} x"#.to_vec()),
        ("a bare word", b"HOSTILE".to_vec()),
        ("invalid UTF-8", vec![b'"', 0xff, 0xfe, b'"']),
        ("an empty state", Vec::new()),
    ];
    for (i, (what, state)) in states.into_iter().enumerate() {
        let mut payload = Vec::new();
        write_var_u64(&mut payload, 1);
        write_var_u64(&mut payload, 9000 + i as u64); // client id
        write_var_u64(&mut payload, 1); // clock
        write_var_bytes(&mut payload, &state);
        h.expect_closed_by(encode_awareness(&payload), 1002, what)
            .await;
        // The same entry after a valid one in the same message: the whole message is refused.
        let mut two = Vec::new();
        write_var_u64(&mut two, 2);
        write_var_u64(&mut two, 9100 + i as u64);
        write_var_u64(&mut two, 1);
        write_var_bytes(&mut two, br#"{"user":"valid but in a bad message"}"#);
        two.extend_from_slice(&payload[1..]);
        h.expect_closed_by(encode_awareness(&two), 1002, what).await;
    }
    // A and B never saw any of those states.
    h.a.send(vec![3]).await;
    h.a.recv_until("the awareness answer", |m| matches!(m, Msg::Awareness(_)))
        .await;
    let ids: Vec<u64> = h.a.awareness.keys().copied().collect();
    assert!(
        ids.iter().all(|id| !(9000..9200).contains(id)),
        "states from refused messages reached A: {ids:?}"
    );
    h.after("awareness with invalid JSON").await;
    h.finish().await;
}

/// Raises the soft limit on open files to the hard limit: a flood needs two descriptors per
/// connection in this process (the client's and the relay's).
fn raise_open_files_limit() -> u64 {
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local struct.
    unsafe {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        limit.rlim_cur = limit.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        limit.rlim_cur
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flood_of_connections() {
    let _turn = SERIAL.lock().await;
    let files = raise_open_files_limit();
    assert!(
        files >= 1400,
        "the open-file limit ({files}) is too low for the flood"
    );
    const MAX: usize = 600;
    let mut h = Hostile::start(|c| c.max_connections = MAX).await;
    // Half into the victim room, half into rooms of their own.
    let urls: Vec<String> = (0..MAX)
        .map(|i| {
            if i.is_multiple_of(2) {
                h.relay.ws_url("victim")
            } else {
                h.relay.ws_url(&format!("flood {i}"))
            }
        })
        .collect();
    // 500 connections opened at once, each greeted, then all dropped at once.
    let clients = join_all(urls[..500].iter().map(|url| Client::join(url))).await;
    h.relay
        .wait_metric("relay_connections", |v| v == 502.0)
        .await;
    let peak = vm_rss_bytes(None).expect("VmRSS");
    eprintln!("500 connections open: {:.1} MiB", mib(peak));
    drop(clients);
    h.settle().await;
    // Half-open connections: TCP only, and an upgrade request cut short, then gone.
    let addr = h.relay.addr();
    let half_open = join_all((0..100).map(|i| async move {
        let mut tcp = TcpStream::connect(addr).await.expect("connect");
        if i % 2 == 0 {
            let _ = tcp
                .write_all(b"GET /victim HTTP/1.1\r\nUpgrade: webs")
                .await;
        }
        tcp
    }))
    .await;
    drop(half_open);
    h.after("500 connections opened and dropped at once").await;

    // Up to the limit (A and B hold two), then one more: 503 before the upgrade.
    let clients = join_all(urls[..MAX - 2].iter().map(|url| Client::join(url))).await;
    h.relay
        .wait_metric("relay_connections", |v| v == MAX as f64)
        .await;
    let refused = h.relay.try_upgrade("victim", None, &[]).await;
    assert_eq!(refused.status, 503, "{}", refused.text());
    let refused = h.relay.try_upgrade("a new room", None, &[]).await;
    assert_eq!(refused.status, 503, "{}", refused.text());
    let error = Client::try_connect(&h.relay.ws_url("victim"), None)
        .await
        .err()
        .expect("a WebSocket client is refused too");
    assert!(error.to_string().contains("503"), "{error}");
    // The connected ones keep working, and so does plain HTTP.
    h.relay.assert_healthy().await;
    h.victim_edit(" (at the connection limit)").await;
    drop(clients);
    h.settle().await;
    h.after("connections past --max-connections").await;
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_that_never_reads() {
    let _turn = SERIAL.lock().await;
    // Small updates and a small queue: the point is what is left once C is gone, and many large
    // buffers would leave the allocator's heaps fragmented for reasons of their own.
    let mut h = Hostile::start(|c| {
        c.outbound_queue_bytes = 256 << 10;
        c.slow_reader_grace_ms = 500;
    })
    .await;
    // In a room of their own, so that the room (with the megabytes written into it) unloads
    // afterwards: W writes, R reads, C never reads (with a small receive buffer).
    let room = "slow";
    let mut w = h.relay.join(room).await;
    let mut r = h.relay.join(room).await;
    let mut c = Client::try_connect(&h.relay.ws_url(room), Some(4096))
        .await
        .expect("connect C");
    let c_id = c.client_id();
    c.send(awareness_message(c_id, 1, Some(r#"{"reads":false}"#)))
        .await;
    w.recv_until("C's awareness state", |m| matches!(m, Msg::Awareness(_)))
        .await;
    r.recv_until("C's awareness state", |m| matches!(m, Msg::Awareness(_)))
        .await;
    // W writes 16 KiB updates until C is dropped; R keeps up with every one.
    let sample = r#"relay_disconnects_total{reason="slow_reader"}"#;
    let mut sent = 0;
    while h.relay.metric(sample).await.is_none() {
        assert!(sent < 2000, "C was never dropped");
        let update = text_update(&format!("<{sent:04}{}>", "z".repeat(16 << 10)));
        w.send(encode_update(&update)).await;
        apply(&w.doc, &update);
        r.recv_until("W's update", |m| *m == Msg::Update(update.clone()))
            .await;
        sent += 1;
    }
    let (frames, close) = c.read_to_end().await;
    assert!(frames < sent, "C received {frames} of {sent} updates");
    if let Some(code) = close {
        assert_eq!(code, 1013);
    }
    eprintln!("C was dropped after {sent} updates of 16 KiB");
    // W and R carry on.
    w.edit("!").await;
    r.wait_for_text(&w.text()).await;
    w.save(1).await;
    h.rooms.insert(room.into(), w.text());
    drop((c, w, r));
    h.after("a client that never reads").await;
    h.finish().await;
}

/// Yjs client ids are 53-bit numbers, and yrs cannot represent larger ones (`ClientID::new`
/// asserts it in debug builds and masks the high bits in release builds, so client 2^53 + 5
/// would alias client 5). The 13 bytes of the first update were found by the `apply_update`
/// fuzzer (`crdt/fuzz/regressions/apply_update/crash-client-id-over-53-bits-9d65948f`). Such
/// updates must be refused like anything else yrs cannot take (1002), and stored nowhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_ids_beyond_53_bits() {
    let _turn = SERIAL.lock().await;
    let mut h = Hostile::start(|_| {}).await;
    let found_by_the_fuzzer = vec![0u8, 1, 255, 255, 255, 255, 255, 255, 255, 255, 255, 0, 0];
    let mut block = vec![1, 1]; // one client, one block
    write_var_u64(&mut block, (1 << 53) + 5); // client id
    block.push(0); // clock
    block.push(4); // info: string content, parent by name
    block.push(1); // parent is a root type
    write_var_bytes(&mut block, b"t");
    write_var_bytes(&mut block, MARK.as_bytes());
    block.push(0); // empty delete set
    for (what, update) in [
        ("a deletion by client 2^63 - 1", found_by_the_fuzzer),
        ("an insertion by client 2^53 + 5", block),
    ] {
        for message in [encode_update(&update), encode_sync_step2(&update)] {
            let mut bad = h.relay.join("victim").await;
            bad.send(message).await;
            let event =
                tokio::time::timeout(DEADLINE, next_event(&mut bad.stream, DEADLINE * 2)).await;
            match event {
                Ok(Event::Close(code)) => assert_eq!(code, Some(1002), "{what}"),
                Ok(other) => {
                    panic!("{what}: expected the connection closed with 1002, got {other:?}")
                }
                Err(_) => panic!(
                    "{what}: expected the connection closed with 1002, but nothing came back \
                     within {DEADLINE:?} (if the room's task panicked, its message is above)"
                ),
            }
        }
    }
    h.after("client ids beyond 53 bits").await;
    h.finish().await;
}

/// The document the `apply_update` fuzz target applies updates to besides an empty one
/// (`crdt::fuzzing`): a little of every root type, by client 1.
fn fuzz_seed_update() -> Vec<u8> {
    use yrs::{Array, Text, XmlFragment};
    let doc = Doc::with_client_id(1);
    let text = doc.get_or_insert_text("text");
    let map = doc.get_or_insert_map("map");
    let array = doc.get_or_insert_array("array");
    let xml = doc.get_or_insert_xml_fragment("xml");
    {
        let mut txn = doc.transact_mut();
        text.insert(&mut txn, 0, "hello world");
        map.insert(&mut txn, "k", 1);
        array.insert(&mut txn, 0, "x");
        xml.insert(&mut txn, 0, yrs::XmlElementPrelim::empty("p"));
    }
    doc.transact()
        .encode_state_as_update_v1(&StateVector::default())
}

/// The JSON export of a room holding the fuzz target's seed document.
fn seed_json() -> serde_json::Value {
    let mut doc = RoomDoc::new();
    doc.apply_update_v1(&fuzz_seed_update())
        .expect("a valid seed");
    doc.to_json()
}

/// Updates of 7 to 16 bytes with which the `apply_update` fuzzer (or a reading of yrs' code) made
/// yrs 0.28.1 panic, or read or write freed memory (kept in
/// `crdt/fuzz/regressions/apply_update/` and `crdt/tests/yrs_use_after_free.rs`), sent through the
/// relay binary (a crash must fail this test, not abort the test binary), into an empty room and
/// into one holding the fuzz target's seed document. Each is a shape Yjs never writes, and the
/// relay must refuse it (1002) before yrs sees it, stay up, and go on serving the room: joiners
/// (a full state encoding), the JSON export, and its other client's edits and saves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updates_that_broke_yrs() {
    let _turn = SERIAL.lock().await;
    let inputs: [(&str, &[u8]); 6] = [
        (
            "a use after free in yrs, read by to_json (a client's section repeated)",
            &[
                0x02, 0x01, 0x01, 0xa0, 0x01, 0x00, 0x41, 0x01, 0x01, 0x01, 0x00, 0x01, 0x00, 0x0c,
                0x00, 0x41,
            ],
        ),
        (
            "BlockStore::push: unwrap on None (a clock past 2^31)",
            &[
                0x01, 0x01, 0x01, 0xff, 0xff, 0xff, 0xff, 0x0b, 0x00, 0x01, 0x00, 0x01, 0x00, 0x00,
            ],
        ),
        (
            "BlockStore::push: subtraction overflow (a client's section repeated)",
            &[
                0x02, 0x01, 0x80, 0x00, 0x0c, 0x00, 0x41, 0x01, 0x00, 0x09, 0x00, 0x0c, 0x00, 0x41,
                0x01,
            ],
        ),
        (
            "merge_pending_v1: unwrap on EndOfBuffer when encoding the state (a block past a gap)",
            &[
                0x01, 0x01, 0x02, 0x0b, 0x02, 0x17, 0x00, 0x4a, 0x00, 0x00, 0x00,
            ],
        ),
        (
            "a GC block past a gap, which later updates turn into a use after free",
            &[1, 1, 5, 5, 0, 5, 0],
        ),
        (
            "client id 2^63 - 1",
            &[0, 1, 255, 255, 255, 255, 255, 255, 255, 255, 255, 0, 0],
        ),
    ];
    let dir = tempfile::tempdir().expect("a data directory");
    let mut relay = ChildRelay::start(dir.path(), &[], |_| {})
        .await
        .expect("start the relay binary");
    let seed = fuzz_seed_update();
    for (i, (what, input)) in inputs.iter().enumerate() {
        for seeded in [false, true] {
            let room = format!("yrs {i} {}", if seeded { "seeded" } else { "empty" });
            let case = format!("{what}, {room}");
            let mut owner = Client::join(&relay.ws_url(&room)).await;
            if seeded {
                owner.send(encode_update(&seed)).await;
                apply(&owner.doc, &seed);
            }
            owner.save(1).await;
            let mut bad = Client::join(&relay.ws_url(&room)).await;
            bad.send(encode_update(input)).await;
            bad.request_save(7).await;
            let answer =
                tokio::time::timeout(DEADLINE, next_event(&mut bad.stream, DEADLINE * 2)).await;
            match answer {
                Ok(Event::Close(code)) => assert_eq!(code, Some(1002), "{case}: refused"),
                Ok(Event::Frame(frame)) => {
                    panic!("{case}: accepted ({})", decode_one(&frame).kind())
                }
                Ok(other) => panic!("{case}: {other:?}"),
                Err(_) => panic!("{case}: no answer to the save request within {DEADLINE:?}"),
            }
            relay.assert_running(&case);
            let mut joiner = Client::connect(&relay.ws_url(&room)).await;
            joiner.send(encode_sync_step1(&[0])).await;
            let synced = tokio::time::timeout(DEADLINE, async {
                loop {
                    match next_event(&mut joiner.stream, DEADLINE * 2).await {
                        Event::Frame(frame) => {
                            if matches!(decode_one(&frame), Msg::SyncStep2(_)) {
                                return Ok(());
                            }
                        }
                        other => return Err(format!("{other:?}")),
                    }
                }
            })
            .await;
            if let Some(status) = relay.exited_within(Duration::from_millis(200)).await {
                panic!(
                    "{case}: a joiner's sync killed the relay ({status}):\n{}",
                    relay.log()
                );
            }
            match synced {
                Ok(Ok(())) => {}
                Ok(Err(event)) => panic!("{case}: a joiner got {event} instead of its sync step 2"),
                Err(_) => panic!("{case}: a joiner got no sync step 2 within {DEADLINE:?}"),
            }
            let path = format!("/api/docs/{}?format=json", encode_room(&room));
            let response = http_request(relay.addr(), "GET", &path, &[], b"").await;
            if let Some(status) = relay.exited_within(Duration::from_millis(200)).await {
                panic!(
                    "{case}: the JSON export killed the relay ({status}):\n{}",
                    relay.log()
                );
            }
            let response = response.expect("the JSON export");
            if seeded {
                assert_eq!(response.status, 200, "{case}: {}", response.text());
                let exported: serde_json::Value =
                    serde_json::from_slice(&response.body).expect("JSON");
                assert_eq!(exported, seed_json(), "{case}: the document is as before");
            } else {
                assert_eq!(response.status, 404, "{case}: nothing stored");
            }
            owner.edit("still works").await;
            owner.save(2).await;
            drop((owner, bad, joiner));
        }
    }
    let (status, _) = http_get(relay.addr(), "/healthz").await.expect("/healthz");
    assert_eq!(status, 200);
    assert!(relay.stop().await.success(), "{}", relay.log());
}

/// The cross-document leak the 16-byte update caused: yrs freed an item of room A's document
/// while the document still linked to it, the memory went to room B's next edits, and the JSON
/// export of A returned B's text. Here B holds text, A holds the fuzz target's seed (client 1's
/// text, which the update's GC ranges overlap), A receives the update on every path a client
/// has (WebSocket, long-polling, the document API), B keeps writing, and then A is exported. The
/// update must be refused on each path (1002, 410 with 1002, 400), and A must be exactly as
/// before: in the export, for a client in the room (nothing forwarded), and in the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_update_never_shows_another_documents_text() {
    let _turn = SERIAL.lock().await;
    const SECRET: &str = "TENANT-B-SECRET-7-";
    let update: &[u8] = include_bytes!(
        "../../crdt/fuzz/regressions/apply_update/crash-yrs-use-after-free-in-to-json-57652a1e"
    );
    let dir = tempfile::tempdir().expect("a data directory");
    let mut relay = ChildRelay::start(dir.path(), &[], |_| {})
        .await
        .expect("start the relay binary");
    let seed = fuzz_seed_update();
    let mut owner = Client::join(&relay.ws_url("tenant a")).await;
    owner.send(encode_update(&seed)).await;
    owner.save(1).await;
    // A reader of A that applies nothing: the first update it receives must be the owner's
    // next edit.
    let mut reader = Client::connect(&relay.ws_url("tenant a")).await;
    reader.send(encode_sync_step1(&[0])).await;
    reader
        .recv_until("the greeting", |m| matches!(m, Msg::SyncStep2(_)))
        .await;
    let mut b = Client::join(&relay.ws_url("tenant b")).await;
    b.edit(SECRET).await;
    b.save(1).await;

    // WebSocket.
    let mut bad = Client::join(&relay.ws_url("tenant a")).await;
    bad.send(encode_update(update)).await;
    bad.request_save(7).await;
    let websocket = within(
        "an answer to the update",
        next_event(&mut bad.stream, DEADLINE),
    )
    .await;
    // B writes on: with the update applied, these edits' items took the memory yrs had freed.
    for i in 0..50 {
        b.edit(&format!("{SECRET}{i} ")).await;
    }
    b.save(2).await;
    let addr = relay.addr();
    let export = || async move {
        let response = http_request(addr, "GET", "/api/docs/tenant%20a?format=json", &[], b"")
            .await
            .expect("the JSON export of A");
        assert_eq!(response.status, 200, "{}", response.text());
        response.text()
    };
    let exported = export().await;
    assert!(
        !exported.contains(SECRET),
        "A's export shows B's text: {exported}"
    );
    relay.assert_running("the export");
    match websocket {
        Event::Close(code) => assert_eq!(code, Some(1002), "refused on the WebSocket"),
        Event::Frame(frame) => panic!(
            "the update was accepted on the WebSocket ({})",
            decode_one(&frame).kind()
        ),
        other => panic!("the WebSocket: {other:?}"),
    }

    // Long-polling: the session ends with 1002 (410 to its next poll).
    let opened = http_request(relay.addr(), "POST", "/poll?room=tenant%20a", &[], b"")
        .await
        .expect("open a poll session");
    assert_eq!(opened.status, 200, "{}", opened.text());
    let opened: serde_json::Value = serde_json::from_slice(&opened.body).expect("JSON");
    let session = opened["session"].as_str().expect("a session id").to_owned();
    let posted = http_request(
        relay.addr(),
        "POST",
        &format!("/poll/{session}"),
        &[],
        &encode_update(update),
    )
    .await
    .expect("post the update");
    assert!(
        posted.status == 204 || posted.status == 410,
        "{}",
        posted.text()
    );
    let ended = within("the poll session to end", async {
        let mut ack = 0;
        loop {
            let polled = http_request(
                relay.addr(),
                "GET",
                &format!("/poll/{session}?ack={ack}"),
                &[],
                b"",
            )
            .await
            .expect("poll");
            if polled.status != 200 {
                return polled;
            }
            ack = polled
                .header("x-relay-last-seq")
                .and_then(|v| v.parse().ok())
                .expect("x-relay-last-seq");
        }
    })
    .await;
    assert_eq!(ended.status, 410, "{}", ended.text());
    let ended: serde_json::Value = serde_json::from_slice(&ended.body).expect("JSON");
    assert_eq!(ended["code"], 1002, "{ended}");

    // The document API.
    let posted = http_request(
        relay.addr(),
        "POST",
        "/api/docs/tenant%20a/update",
        &[],
        update,
    )
    .await
    .expect("post the update");
    assert_eq!(posted.status, 400, "{}", posted.text());

    // A is as it was: exported, seen by a client in the room, and stored.
    let exported: serde_json::Value = serde_json::from_str(&export().await).expect("JSON");
    assert_eq!(exported, seed_json(), "A's export");
    let edit = owner.edit(" and after").await;
    owner.save(2).await;
    assert_eq!(
        reader
            .recv_until("an update", |m| matches!(m, Msg::Update(_)))
            .await,
        Msg::Update(edit),
        "the first update forwarded to A's reader is the owner's edit"
    );
    drop((owner, reader, b, bad));
    assert!(relay.stop().await.success(), "{}", relay.log());
    let store = Store::open(
        &dir.path().join(relay::config::STORE_FILE),
        &StoreOptions::default(),
    )
    .expect("open the store of the stopped relay");
    let stored = store.load("tenant a").expect("load A");
    assert_eq!(stored.log_entries, 2, "the seed and the owner's edit");
    let b_text = store.load("tenant b").expect("load B").doc.to_json();
    assert!(b_text.to_string().contains(&format!("{SECRET}49")));
}
