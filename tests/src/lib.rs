//! Fixtures for the relay's integration tests.
//!
//! [`TestRelay`] runs the real relay ([`relay::run`]) in-process on `127.0.0.1:0` with a fresh
//! temporary data directory. [`Client`] is a WebSocket client (tokio-tungstenite) holding a `yrs`
//! document, so the tests send and check real Yjs updates. Messages are encoded and decoded with
//! [`crdt::protocol`], the relay's own codec.
//!
//! Nothing here sleeps a fixed time: every wait is for an event or a condition, bounded by
//! [`DEADLINE`].

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use crdt::awareness::{AwarenessEntry, encode_awareness_update, parse_awareness_update};
use crdt::protocol::{
    Message, MessageReader, encode_awareness, encode_save_request, encode_sync_step1,
    encode_sync_step2, encode_update,
};
use crdt::store::{Store, StoreOptions};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use relay::RunError;
use relay::config::Config;
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::JoinHandle;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::sync::CancellationToken;
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{Doc, GetString, ReadTxn, StateVector, Text, Transact, Update};

/// The longest any single wait in a test may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// The name of the shared text every test document edits.
pub const TEXT: &str = "t";

/// Awaits `future`, failing the test with `what` if it takes longer than [`DEADLINE`].
pub async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    within_for(DEADLINE, what, future).await
}

/// Awaits `future`, failing the test with `what` if it takes longer than `limit`.
pub async fn within_for<T>(limit: Duration, what: &str, future: impl Future<Output = T>) -> T {
    match tokio::time::timeout(limit, future).await {
        Ok(value) => value,
        Err(_) => panic!("timed out after {limit:?} waiting for {what}"),
    }
}

// ------------------------------------------------------------------------------------------------
// The relay
// ------------------------------------------------------------------------------------------------

/// The real relay, running in-process on a loopback port with its own temporary data directory.
///
/// Dropping it cancels the relay (it then shuts down in the background) and deletes the data
/// directory. [`TestRelay::stop`] shuts it down and checks that [`relay::run`] returned `Ok`.
pub struct TestRelay {
    config: Config,
    addr: SocketAddr,
    shutdown: CancellationToken,
    task: Option<JoinHandle<Result<(), RunError>>>,
    // Held only to delete the directory when the fixture is dropped (after the relay has been
    // told to stop, as fields drop after `Drop::drop`).
    _dir: TempDir,
}

impl TestRelay {
    /// Starts a relay with the default test configuration.
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// Starts a relay with the test configuration adjusted by `adjust` (the data directory and
    /// the listen address are set by the fixture).
    pub async fn start_with(adjust: impl FnOnce(&mut Config)) -> Self {
        let dir = tempfile::tempdir().expect("create a temporary data directory");
        let mut config = Config {
            data_dir: dir.path().join("data"),
            ..Config::default()
        };
        adjust(&mut config);
        config.data_dir = dir.path().join("data");
        let mut relay = TestRelay {
            config,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            shutdown: CancellationToken::new(),
            task: None,
            _dir: dir,
        };
        relay.launch().await;
        relay
    }

    async fn launch(&mut self) {
        assert!(self.task.is_none(), "the relay is already running");
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port");
        self.addr = listener.local_addr().expect("local address");
        let mut config = self.config.clone();
        config.listen = self.addr;
        self.shutdown = CancellationToken::new();
        let task = tokio::spawn(relay::run(config, listener, self.shutdown.clone()));
        self.task = Some(task);
        // The listener is bound already, but the store opens first: wait until it answers.
        let addr = self.addr;
        let task = self.task.as_ref().expect("just set");
        within("the relay to answer /healthz", async {
            loop {
                if task.is_finished() {
                    break;
                }
                if let Ok((200, _)) = http_get(addr, "/healthz").await {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
        if self.task.as_ref().is_some_and(JoinHandle::is_finished) {
            let result = self.task.take().expect("checked").await;
            panic!("the relay stopped right after starting: {result:?}");
        }
    }

    /// Shuts the relay down gracefully (cancels its token) and asserts that [`relay::run`]
    /// returns `Ok` within the drain timeout plus [`DEADLINE`].
    pub async fn stop(&mut self) {
        let result = self.stop_result().await;
        if let Err(error) = result {
            panic!("relay::run returned an error on shutdown: {error}");
        }
    }

    /// Shuts the relay down and returns what [`relay::run`] returned.
    pub async fn stop_result(&mut self) -> Result<(), RunError> {
        let task = self.task.take().expect("the relay is running");
        self.shutdown.cancel();
        let limit = self.config.drain_timeout() + DEADLINE;
        within_for(limit, "relay::run to return after shutdown", task)
            .await
            .expect("the relay task did not panic")
    }

    /// Starts the relay again on the same data directory (on a new port). Stops it first if it
    /// is running. The store is opened at once: `run` must have released it when it returned.
    pub async fn restart(&mut self) {
        if self.task.is_some() {
            self.stop().await;
        }
        self.launch().await;
    }

    /// Opens the store of the stopped relay directly. Fails the test if the stopped relay still
    /// holds it.
    pub fn open_store(&self) -> Store {
        assert!(
            self.task.is_none(),
            "stop the relay before opening its store"
        );
        let path = self.store_path();
        Store::open(&path, &StoreOptions::default()).unwrap_or_else(|error| {
            panic!(
                "open the store {} of the stopped relay: {error}",
                path.display()
            )
        })
    }

    /// The text of a room as stored, read directly from the store of the stopped relay.
    pub fn stored_text(&self, room: &str) -> String {
        let store = self.open_store();
        let stored = store.load(room).expect("load the room");
        doc_text(stored.doc.yrs())
    }

    /// The token that stops the relay; cancel it to begin a graceful shutdown, then call
    /// [`TestRelay::stop`] to await the result.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// The configuration the relay runs with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The relay's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.config.data_dir
    }

    /// The store file.
    pub fn store_path(&self) -> PathBuf {
        self.config.store_path()
    }

    /// The WebSocket URL of a room, percent-encoded as the stock provider does.
    pub fn ws_url(&self, room: &str) -> String {
        format!("ws://{}/{}", self.addr, encode_room(room))
    }

    /// The URL of an HTTP path (`path` starts with `/`).
    pub fn http_url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// `GET path`: the status code and the body.
    pub async fn get(&self, path: &str) -> (u16, String) {
        within(&format!("GET {path}"), http_get(self.addr, path))
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"))
    }

    /// Asserts that `GET /healthz` answers `200 ok`.
    pub async fn assert_healthy(&self) {
        let (status, body) = self.get("/healthz").await;
        assert_eq!((status, body.as_str()), (200, "ok\n"), "GET /healthz");
    }

    /// The text of `GET /metrics`.
    pub async fn metrics(&self) -> String {
        let (status, body) = self.get("/metrics").await;
        assert_eq!(status, 200, "GET /metrics: {body}");
        body
    }

    /// The value of one sample of `/metrics`, e.g. `relay_rooms_loaded` or
    /// `relay_disconnects_total{reason="slow_reader"}`; `None` if it is not exported.
    pub async fn metric(&self, sample: &str) -> Option<f64> {
        metric_value(&self.metrics().await, sample)
    }

    /// Polls `/metrics` until `sample` satisfies `accept`, and returns its value.
    pub async fn wait_metric(&self, sample: &str, accept: impl Fn(f64) -> bool) -> f64 {
        let mut last = None;
        let result = tokio::time::timeout(DEADLINE, async {
            loop {
                let value = self.metric(sample).await;
                if let Some(v) = value
                    && accept(v)
                {
                    return v;
                }
                last = value;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        match result {
            Ok(v) => v,
            Err(_) => panic!("timed out waiting for {sample}; last value {last:?}"),
        }
    }

    /// Connects a client to `room` and reads the greeting's sync step 1.
    pub async fn join(&self, room: &str) -> Client {
        Client::join(&self.ws_url(room)).await
    }

    /// Connects a client to `room` without reading anything.
    pub async fn connect(&self, room: &str) -> Client {
        Client::connect(&self.ws_url(room)).await
    }
}

impl Drop for TestRelay {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Percent-encodes a room name for a URL path (every byte but ASCII letters and digits).
pub fn encode_room(room: &str) -> String {
    utf8_percent_encode(room, NON_ALPHANUMERIC).to_string()
}

/// Finds one sample in a Prometheus/OpenMetrics text.
pub fn metric_value(text: &str, sample: &str) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            (name == sample).then(|| value.parse().ok()).flatten()
        })
}

/// A minimal HTTP/1.1 GET: the status code and the body.
pub async fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(addr).await?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    let invalid =
        |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned());
    let text = String::from_utf8(response).map_err(|_| invalid("response is not UTF-8"))?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| invalid("no end of headers"))?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| invalid("no status code"))?;
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    let body = if chunked {
        dechunk(body).ok_or_else(|| invalid("bad chunked body"))?
    } else {
        body.to_owned()
    };
    Ok((status, body))
}

fn dechunk(mut body: &str) -> Option<String> {
    let mut out = String::new();
    loop {
        let (size, rest) = body.split_once("\r\n")?;
        let size = usize::from_str_radix(size.split(';').next()?.trim(), 16).ok()?;
        if size == 0 {
            return Some(out);
        }
        out.push_str(rest.get(..size)?);
        body = rest.get(size + 2..)?;
    }
}

// ------------------------------------------------------------------------------------------------
// Messages
// ------------------------------------------------------------------------------------------------

/// An owned copy of a decoded [`crdt::protocol::Message`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Msg {
    /// Sync step 1 with a state vector.
    SyncStep1(Vec<u8>),
    /// Sync step 2 with an update.
    SyncStep2(Vec<u8>),
    /// A sync update.
    Update(Vec<u8>),
    /// An awareness update payload.
    Awareness(Vec<u8>),
    /// Permission denied.
    AuthDenied(String),
    /// Query awareness.
    QueryAwareness,
    /// Save request.
    SaveRequest(u64),
    /// Saved.
    Saved(u64),
    /// Save error.
    SaveError(u64, String),
    /// Unknown type.
    Unknown(u64),
}

impl From<Message<'_>> for Msg {
    fn from(message: Message<'_>) -> Self {
        match message {
            Message::SyncStep1(sv) => Msg::SyncStep1(sv.to_vec()),
            Message::SyncStep2(u) => Msg::SyncStep2(u.to_vec()),
            Message::Update(u) => Msg::Update(u.to_vec()),
            Message::Awareness(a) => Msg::Awareness(a.to_vec()),
            Message::AuthDenied(r) => Msg::AuthDenied(r.to_owned()),
            Message::QueryAwareness => Msg::QueryAwareness,
            Message::SaveRequest(id) => Msg::SaveRequest(id),
            Message::Saved(id) => Msg::Saved(id),
            Message::SaveError(id, r) => Msg::SaveError(id, r.to_owned()),
            Message::Unknown(tag) => Msg::Unknown(tag),
        }
    }
}

impl Msg {
    /// A short name for failure messages (payloads can be large).
    pub fn kind(&self) -> String {
        match self {
            Msg::SyncStep1(p) => format!("sync step 1 ({} bytes)", p.len()),
            Msg::SyncStep2(p) => format!("sync step 2 ({} bytes)", p.len()),
            Msg::Update(p) => format!("update ({} bytes)", p.len()),
            Msg::Awareness(p) => format!("awareness {:?}", awareness_entries(p)),
            other => format!("{other:?}"),
        }
    }
}

/// Decodes every message of a frame; fails the test on a malformed frame.
pub fn decode_all(frame: &[u8]) -> Vec<Msg> {
    MessageReader::new(frame)
        .map(|item| Msg::from(item.expect("the relay sent a well-formed message").0))
        .collect()
}

/// Decodes a frame that must hold exactly one message (the relay sends one per frame).
pub fn decode_one(frame: &[u8]) -> Msg {
    let mut messages = decode_all(frame);
    assert_eq!(
        messages.len(),
        1,
        "expected exactly one message in the frame, got {messages:?}"
    );
    messages.pop().expect("one")
}

/// One entry of an awareness update, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwarenessState {
    /// Client id.
    pub client_id: u64,
    /// Clock.
    pub clock: u64,
    /// JSON state, `None` when removed.
    pub state: Option<String>,
}

/// Parses an awareness update payload with the relay's parser.
pub fn awareness_entries(payload: &[u8]) -> Vec<AwarenessState> {
    // No limits: the test reads whatever the relay sends.
    let limits = crdt::awareness::AwarenessLimits {
        max_states_per_room: usize::MAX,
        max_states_per_connection: usize::MAX,
        max_state_bytes: usize::MAX,
    };
    parse_awareness_update(payload, &limits)
        .expect("well-formed awareness update")
        .into_iter()
        .map(|e| AwarenessState {
            client_id: e.client_id,
            clock: e.clock,
            state: e.state.map(str::to_owned),
        })
        .collect()
}

/// An awareness message (type 1) setting one client's state (`None` removes it).
pub fn awareness_message(client_id: u64, clock: u64, state: Option<&str>) -> Vec<u8> {
    encode_awareness(&encode_awareness_update([AwarenessEntry {
        client_id,
        clock,
        state,
    }]))
}

/// Concatenates messages into one frame.
pub fn pack(messages: &[&[u8]]) -> Vec<u8> {
    messages.concat()
}

// ------------------------------------------------------------------------------------------------
// Documents
// ------------------------------------------------------------------------------------------------

/// The text of a document's shared text [`TEXT`].
pub fn doc_text(doc: &Doc) -> String {
    let text = doc.get_or_insert_text(TEXT);
    text.get_string(&doc.transact())
}

/// Appends `s` to the document's text and returns the update (v1) that holds the change.
pub fn append(doc: &Doc, s: &str) -> Vec<u8> {
    let text = doc.get_or_insert_text(TEXT);
    let before = doc.transact().state_vector();
    {
        let mut txn = doc.transact_mut();
        let len = text.len(&txn);
        text.insert(&mut txn, len, s);
    }
    doc.transact().encode_diff_v1(&before)
}

/// Applies an update (v1) to a document.
pub fn apply(doc: &Doc, update: &[u8]) {
    let update = Update::decode_v1(update).expect("the relay sent a decodable update");
    doc.transact_mut()
        .apply_update(update)
        .expect("the update applies");
}

/// The document's state vector (v1).
pub fn state_vector(doc: &Doc) -> Vec<u8> {
    doc.transact().state_vector().encode_v1()
}

/// The whole document as one update (v1).
pub fn full_state(doc: &Doc) -> Vec<u8> {
    doc.transact()
        .encode_state_as_update_v1(&StateVector::default())
}

/// The text a single update produces on an empty document.
pub fn text_of_update(update: &[u8]) -> String {
    let doc = Doc::new();
    apply(&doc, update);
    doc_text(&doc)
}

/// An update inserting `s` into an empty document of a new client.
pub fn text_update(s: &str) -> Vec<u8> {
    append(&Doc::new(), s)
}

// ------------------------------------------------------------------------------------------------
// The client
// ------------------------------------------------------------------------------------------------

/// The client's WebSocket.
pub type Ws = WebSocketStream<TcpStream>;

/// What the client read next.
#[derive(Debug)]
pub enum Event {
    /// A binary frame.
    Frame(Bytes),
    /// A text frame (the relay never sends one).
    Text(String),
    /// A close frame with its code (`None` for a close frame without a code).
    Close(Option<u16>),
    /// The stream ended without a close frame, or failed; the error text.
    Ended(String),
}

/// Reads the next event from a client stream (pings and pongs are skipped). Fails the test
/// after `limit`.
pub async fn next_event(stream: &mut SplitStream<Ws>, limit: Duration) -> Event {
    within_for(limit, "a message from the relay", async {
        loop {
            match stream.next().await {
                Some(Ok(WsMessage::Binary(frame))) => return Event::Frame(frame),
                Some(Ok(WsMessage::Text(text))) => return Event::Text(text.to_string()),
                Some(Ok(WsMessage::Close(frame))) => {
                    return Event::Close(frame.map(|f| u16::from(f.code)));
                }
                Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_) | WsMessage::Frame(_))) => {}
                Some(Err(error)) => return Event::Ended(error.to_string()),
                None => return Event::Ended("end of stream".into()),
            }
        }
    })
    .await
}

/// A WebSocket client with a `yrs` document.
pub struct Client {
    /// The sending half of the socket.
    pub sink: SplitSink<Ws, WsMessage>,
    /// The receiving half of the socket.
    pub stream: SplitStream<Ws>,
    /// The client's document.
    pub doc: Doc,
    /// The awareness states this client has seen, by client id (removals delete).
    pub awareness: std::collections::HashMap<u64, AwarenessState>,
}

impl Client {
    /// Connects to a WebSocket URL of the relay, without reading anything.
    pub async fn connect(url: &str) -> Client {
        Self::try_connect(url, None)
            .await
            .unwrap_or_else(|e| panic!("connect to {url}: {e}"))
    }

    /// Connects, optionally with a small socket receive buffer (to make a client that does not
    /// read fall behind quickly).
    pub async fn try_connect(
        url: &str,
        recv_buffer: Option<u32>,
    ) -> Result<Client, tokio_tungstenite::tungstenite::Error> {
        let addr = ws_addr(url);
        let socket = TcpSocket::new_v4()?;
        if let Some(size) = recv_buffer {
            socket.set_recv_buffer_size(size)?;
        }
        let tcp = within("the TCP connection", socket.connect(addr)).await?;
        Client::handshake(tcp, url).await
    }

    /// The WebSocket handshake on a connected socket (no Nagle delay, generous size limits).
    async fn handshake(
        tcp: TcpStream,
        request: impl tokio_tungstenite::tungstenite::client::IntoClientRequest + Unpin,
    ) -> Result<Client, tokio_tungstenite::tungstenite::Error> {
        tcp.set_nodelay(true)?;
        let config = WebSocketConfig::default()
            .max_message_size(Some(256 << 20))
            .max_frame_size(Some(256 << 20));
        let (ws, _response) = within(
            "the WebSocket handshake",
            tokio_tungstenite::client_async_with_config(request, tcp, Some(config)),
        )
        .await?;
        let (sink, stream) = ws.split();
        Ok(Client {
            sink,
            stream,
            doc: Doc::new(),
            awareness: Default::default(),
        })
    }

    /// Connects and reads the greeting's sync step 1, which it answers with a sync step 2 if the
    /// client's document has something the relay lacks (as the stock client does).
    pub async fn join(url: &str) -> Client {
        Self::join_with_doc(url, Doc::new()).await
    }

    /// Like [`Client::join`], with a document that may already hold content.
    pub async fn join_with_doc(url: &str, doc: Doc) -> Client {
        let mut client = Self::connect(url).await;
        client.doc = doc;
        let state_vector = match client.recv_msg().await {
            Msg::SyncStep1(sv) => sv,
            other => panic!("expected the greeting's sync step 1, got {}", other.kind()),
        };
        let sv = StateVector::decode_v1(&state_vector).expect("a decodable state vector");
        let diff = client.doc.transact().encode_diff_v1(&sv);
        if diff != crdt::doc::EMPTY_UPDATE_V1 {
            client.send(encode_sync_step2(&diff)).await;
        }
        client
    }

    /// Sends one binary frame.
    pub async fn send(&mut self, frame: impl Into<Bytes>) {
        within(
            "sending a frame",
            self.sink.send(WsMessage::Binary(frame.into())),
        )
        .await
        .expect("send a frame");
    }

    /// Sends any WebSocket message.
    pub async fn send_ws(&mut self, message: WsMessage) {
        within("sending a message", self.sink.send(message))
            .await
            .expect("send a message");
    }

    /// Appends `s` to the client's document and sends the update; returns the update.
    pub async fn edit(&mut self, s: &str) -> Vec<u8> {
        let update = append(&self.doc, s);
        self.send(encode_update(&update)).await;
        update
    }

    /// Sends a save request.
    pub async fn request_save(&mut self, id: u64) {
        self.send(encode_save_request(id)).await;
    }

    /// Sends a save request and reads (absorbing) until its *saved* answer: afterwards, the
    /// room has processed and committed everything this client sent before.
    pub async fn save(&mut self, id: u64) {
        self.request_save(id).await;
        self.recv_until(&format!("saved {id}"), |m| *m == Msg::Saved(id))
            .await;
    }

    /// Sends sync step 1 with the client's state vector.
    pub async fn send_step1(&mut self) {
        let sv = state_vector(&self.doc);
        self.send(encode_sync_step1(&sv)).await;
    }

    /// The next event, failing after [`DEADLINE`].
    pub async fn next_event(&mut self) -> Event {
        next_event(&mut self.stream, DEADLINE).await
    }

    /// The next binary frame; fails the test on anything else.
    pub async fn recv_frame(&mut self) -> Bytes {
        match self.next_event().await {
            Event::Frame(frame) => frame,
            other => panic!("expected a binary frame, got {other:?}"),
        }
    }

    /// The next message; the frame must hold exactly one.
    pub async fn recv_msg(&mut self) -> Msg {
        decode_one(&self.recv_frame().await)
    }

    /// Reads until a close frame and returns its code, discarding binary frames before it.
    /// Fails the test if the stream ends without one.
    pub async fn expect_close(&mut self) -> Option<u16> {
        loop {
            match self.next_event().await {
                Event::Frame(_) => {}
                Event::Close(code) => return code,
                other => panic!("expected a close frame, got {other:?}"),
            }
        }
    }

    /// Reads until the stream ends (with or without a close frame), discarding frames; returns
    /// how many binary frames came before the end, and the close code if there was one.
    pub async fn read_to_end(&mut self) -> (usize, Option<u16>) {
        let mut frames = 0;
        loop {
            match self.next_event().await {
                Event::Frame(_) | Event::Text(_) => frames += 1,
                Event::Close(code) => return (frames, code),
                Event::Ended(_) => return (frames, None),
            }
        }
    }

    /// Handles a message the way a Yjs client does: applies sync updates to the document and
    /// records awareness states. Answers nothing.
    pub fn absorb(&mut self, message: &Msg) {
        match message {
            Msg::SyncStep2(update) | Msg::Update(update) => apply(&self.doc, update),
            Msg::Awareness(payload) => {
                for entry in awareness_entries(payload) {
                    if entry.state.is_some() {
                        self.awareness.insert(entry.client_id, entry);
                    } else {
                        self.awareness.remove(&entry.client_id);
                    }
                }
            }
            _ => {}
        }
    }

    /// Reads messages, absorbing each, until one satisfies `wanted`; returns it. Fails the test
    /// if the connection closes or [`DEADLINE`] passes first.
    pub async fn recv_until(&mut self, what: &str, mut wanted: impl FnMut(&Msg) -> bool) -> Msg {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let frame =
                match tokio::time::timeout(left, next_event(&mut self.stream, DEADLINE)).await {
                    Ok(Event::Frame(frame)) => frame,
                    Ok(other) => panic!("waiting for {what}: got {other:?}"),
                    Err(_) => panic!("timed out waiting for {what}"),
                };
            let message = decode_one(&frame);
            self.absorb(&message);
            if wanted(&message) {
                return message;
            }
        }
    }

    /// Reads and absorbs messages until the document's text is `expected`.
    pub async fn wait_for_text(&mut self, expected: &str) {
        if doc_text(&self.doc) == expected {
            return;
        }
        let doc = self.doc.clone();
        let what = format!("the text to become {:?}", abbreviate(expected));
        let mut last = String::new();
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let event = tokio::time::timeout(left, next_event(&mut self.stream, DEADLINE)).await;
            let frame = match event {
                Ok(Event::Frame(frame)) => frame,
                Ok(other) => panic!("waiting for {what}: got {other:?}; text {last:?}"),
                Err(_) => panic!(
                    "timed out waiting for {what}; text is {:?}",
                    abbreviate(&last)
                ),
            };
            let message = decode_one(&frame);
            self.absorb(&message);
            last = doc_text(&doc);
            if last == expected {
                return;
            }
        }
    }

    /// Sends sync step 1 and absorbs messages until the sync step 2 answering it; returns the
    /// step 2's update.
    pub async fn sync(&mut self) -> Vec<u8> {
        self.send_step1().await;
        match self
            .recv_until("sync step 2", |m| matches!(m, Msg::SyncStep2(_)))
            .await
        {
            Msg::SyncStep2(update) => update,
            _ => unreachable!(),
        }
    }

    /// The client's text.
    pub fn text(&self) -> String {
        doc_text(&self.doc)
    }

    /// The document's Yjs client id.
    pub fn client_id(&self) -> u64 {
        self.doc.client_id().get()
    }

    /// Closes the connection cleanly (close frame, then waits for the relay's close frame or the
    /// end of the stream).
    pub async fn close(mut self) {
        let _ = within(
            "sending a close frame",
            self.sink.send(WsMessage::Close(None)),
        )
        .await;
        loop {
            match self.next_event().await {
                Event::Close(_) | Event::Ended(_) => return,
                Event::Frame(_) | Event::Text(_) => {}
            }
        }
    }
}

/// Shortens long strings in failure messages.
pub fn abbreviate(s: &str) -> String {
    if s.len() <= 200 {
        return s.to_owned();
    }
    let head: String = s.chars().take(80).collect();
    let tail: String = s
        .chars()
        .rev()
        .take(80)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    format!("{head}…({} bytes)…{tail}", s.len())
}

// ------------------------------------------------------------------------------------------------
// Tokens, plain HTTP requests and WebSocket upgrades with headers (auth, API, webhook tests)
// ------------------------------------------------------------------------------------------------

/// A secret for relays started with `--secret` (at least 16 bytes, as the relay requires).
pub const TEST_SECRET: &str = "integration-test-secret-0123456789";

/// Claims for a token covering `doc` (or, with `None`, no particular document) with `access`,
/// expiring at `exp` (seconds since the Unix epoch), for the user `u1` ("Ada").
pub fn claims(doc: Option<&str>, access: relay::auth::Access, exp: u64) -> relay::auth::Claims {
    relay::auth::Claims {
        doc: doc.map(str::to_owned),
        doc_prefix: None,
        access,
        exp,
        nbf: None,
        iat: Some(relay::auth::now_secs()),
        sub: Some("u1".into()),
        name: Some("Ada".into()),
    }
}

/// Signs `claims` with the first of `secrets` (`SECRET` or `KID:SECRET`), as the relay does.
pub fn sign_token(secrets: &[&str], claims: &relay::auth::Claims) -> String {
    let specs: Vec<String> = secrets.iter().map(|s| (*s).to_owned()).collect();
    relay::auth::Keys::parse(&specs)
        .expect("usable test secrets")
        .mint(claims)
}

/// A token signed with [`TEST_SECRET`] for `doc` (`None`: every document, for admin tokens) with
/// `access`, valid for another hour.
pub fn token(doc: Option<&str>, access: relay::auth::Access) -> String {
    sign_token(
        &[TEST_SECRET],
        &claims(doc, access, relay::auth::now_secs() + 3600),
    )
}

/// Percent-encodes a token for a query string.
pub fn encode_query_value(value: &str) -> String {
    utf8_percent_encode(value, NON_ALPHANUMERIC).to_string()
}

/// A complete HTTP response.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    /// The status code.
    pub status: u16,
    /// The headers, names in lower case, in order.
    pub headers: Vec<(String, String)>,
    /// The body (de-chunked).
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The first header of that name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A minimal HTTP/1.1 request with a binary body: sends `method path` with `headers` (plus
/// `Host` unless `headers` has one, `Content-Length` when there is a body or the method is POST,
/// and `Connection: close` unless `headers` has a `Connection`), then reads one response: exactly
/// `Content-Length` bytes of body, or the chunks of a chunked body, or nothing after a `101` (the
/// connection is then dropped).
pub async fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<HttpResponse> {
    let mut stream = TcpStream::connect(addr).await?;
    let has = |name: &str| headers.iter().any(|(n, _)| n.eq_ignore_ascii_case(name));
    let mut head = format!("{method} {path} HTTP/1.1\r\n");
    if !has("host") {
        head.push_str(&format!("Host: {addr}\r\n"));
    }
    if !has("connection") {
        head.push_str("Connection: close\r\n");
    }
    if !body.is_empty() || method == "POST" || method == "PUT" {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await?;
    // A server may answer (413) and close before it reads the body: the answer still counts.
    let _ = stream.write_all(body).await;
    read_http_response(&mut stream).await
}

/// Reads one HTTP/1.1 response from `stream`.
pub async fn read_http_response(stream: &mut TcpStream) -> std::io::Result<HttpResponse> {
    let invalid =
        |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned());
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(invalid("connection closed before the end of the headers"));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = std::str::from_utf8(&buf[..head_end]).map_err(|_| invalid("headers not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| invalid("no status code"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let mut rest = buf[head_end + 4..].to_vec();
    let get = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    };
    let body = if status == 101 || status == 204 || status == 304 {
        Vec::new()
    } else if get("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked")) {
        loop {
            if let Some(body) = dechunk_bytes(&rest)? {
                break body;
            }
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(invalid("connection closed inside a chunked body"));
            }
            rest.extend_from_slice(&chunk[..n]);
        }
    } else if let Some(len) = get("content-length") {
        let len: usize = len.parse().map_err(|_| invalid("bad Content-Length"))?;
        while rest.len() < len {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(invalid("connection closed inside the body"));
            }
            rest.extend_from_slice(&chunk[..n]);
        }
        rest.truncate(len);
        rest
    } else {
        stream.read_to_end(&mut rest).await?;
        rest
    };
    Ok(HttpResponse {
        status,
        headers,
        body,
    })
}

/// De-chunks a complete chunked body; `Ok(None)` when more bytes are needed.
fn dechunk_bytes(mut data: &[u8]) -> std::io::Result<Option<Vec<u8>>> {
    let invalid = || std::io::Error::new(std::io::ErrorKind::InvalidData, "bad chunked body");
    let mut out = Vec::new();
    loop {
        let Some(line_end) = data.windows(2).position(|w| w == b"\r\n") else {
            return Ok(None);
        };
        let size_text = std::str::from_utf8(&data[..line_end]).map_err(|_| invalid())?;
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| invalid())?;
        let start = line_end + 2;
        if size == 0 {
            return Ok(Some(out));
        }
        if data.len() < start + size + 2 {
            return Ok(None);
        }
        out.extend_from_slice(&data[start..start + size]);
        data = &data[start + size + 2..];
    }
}

/// The request headers of a WebSocket upgrade (what a browser or the stock client sends).
pub const UPGRADE_HEADERS: [(&str, &str); 4] = [
    ("Upgrade", "websocket"),
    ("Connection", "Upgrade"),
    ("Sec-WebSocket-Version", "13"),
    ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
];

impl TestRelay {
    /// Sends an HTTP request (see [`http_request`]); fails the test on an I/O error or after
    /// [`DEADLINE`].
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> HttpResponse {
        within(
            &format!("{method} {path}"),
            http_request(self.addr, method, path, headers, body),
        )
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    /// Sends an HTTP request with `Authorization: Bearer token`.
    pub async fn request_with_token(
        &self,
        method: &str,
        path: &str,
        token: &str,
        body: &[u8],
    ) -> HttpResponse {
        let bearer = format!("Bearer {token}");
        self.request(method, path, &[("Authorization", &bearer)], body)
            .await
    }

    /// Sends a WebSocket upgrade request for `room` (the query, if any, appended as is) with
    /// `headers` besides the handshake's, and returns the response without upgrading: the status
    /// (101 when accepted) and, for a refusal, its body.
    pub async fn try_upgrade(
        &self,
        room: &str,
        query: Option<&str>,
        headers: &[(&str, &str)],
    ) -> HttpResponse {
        let mut all: Vec<(&str, &str)> = UPGRADE_HEADERS.to_vec();
        all.extend_from_slice(headers);
        let path = match query {
            Some(q) => format!("/{}?{q}", encode_room(room)),
            None => format!("/{}", encode_room(room)),
        };
        self.request("GET", &path, &all, b"").await
    }

    /// The WebSocket URL of a room with `?token=`.
    pub fn ws_url_with_token(&self, room: &str, token: &str) -> String {
        format!("{}?token={}", self.ws_url(room), encode_query_value(token))
    }

    /// Connects a client to `room` with a token in the query and reads the greeting's sync
    /// step 1.
    pub async fn join_with_token(&self, room: &str, token: &str) -> Client {
        Client::join(&self.ws_url_with_token(room, token)).await
    }
}

impl Client {
    /// Connects to a WebSocket URL with extra request headers (`Origin`, `Authorization`, ...),
    /// without reading anything.
    pub async fn try_connect_with_headers(
        url: &str,
        headers: &[(&str, &str)],
    ) -> Result<Client, tokio_tungstenite::tungstenite::Error> {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue};
        let addr = ws_addr(url);
        let mut request = url.into_client_request()?;
        for (name, value) in headers {
            request.headers_mut().insert(
                HeaderName::from_bytes(name.as_bytes()).expect("a valid header name"),
                HeaderValue::from_str(value).expect("a valid header value"),
            );
        }
        let tcp = within("the TCP connection", TcpStream::connect(addr)).await?;
        Client::handshake(tcp, request).await
    }

    /// Connects with extra request headers and reads the greeting's sync step 1.
    pub async fn join_with_headers(url: &str, headers: &[(&str, &str)]) -> Client {
        let mut client = Self::try_connect_with_headers(url, headers)
            .await
            .unwrap_or_else(|e| panic!("connect to {url} with {headers:?}: {e}"));
        match client.recv_msg().await {
            Msg::SyncStep1(_) => client,
            other => panic!("expected the greeting's sync step 1, got {}", other.kind()),
        }
    }
}

// ------------------------------------------------------------------------------------------------
// Fault tests: the relay binary as a child process, and memory
// ------------------------------------------------------------------------------------------------

/// `target/<profile>/relay`, beside the running executable (a test in `target/<profile>/deps`, or
/// a tool in `target/<profile>`). Fails the test if it is missing: `cargo build -p relay` first
/// (the test command does).
pub fn relay_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("the running executable");
    let mut dir = exe.parent().expect("a directory").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let bin = dir.join("relay");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build -p relay` first (tests/run-all.sh does)",
        bin.display()
    );
    bin
}

/// The resident memory (`VmRSS`) of a process (`None`: this one), in bytes, from
/// `/proc/<pid>/status`; `None` if it cannot be read (the process is gone).
pub fn vm_rss_bytes(pid: Option<u32>) -> Option<u64> {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/status"),
        None => "/proc/self/status".to_owned(),
    };
    let status = std::fs::read_to_string(path).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line
        .trim_start_matches("VmRSS:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// The relay binary ([`relay_bin`]) running as a child process, for tests that must watch it
/// from outside: its memory alone, a crash that must not take the test down, resource limits,
/// exit codes. Killed when dropped.
pub struct ChildRelay {
    child: tokio::process::Child,
    addr: SocketAddr,
    stderr_path: PathBuf,
    // Holds the file standard error goes to.
    _logs: TempDir,
}

impl ChildRelay {
    /// Runs `relay serve --listen 127.0.0.1:0 --data-dir DATA_DIR ARGS...`, with `prepare` to
    /// adjust the command first, and waits for its `listening on` line. `Err` with its standard
    /// error if it exits instead.
    pub async fn start(
        data_dir: &Path,
        args: &[&str],
        prepare: impl FnOnce(&mut tokio::process::Command),
    ) -> Result<ChildRelay, String> {
        use tokio::io::AsyncBufReadExt;
        let logs = tempfile::tempdir().expect("a directory for the relay's log");
        let stderr_path = logs.path().join("stderr.log");
        let stderr = std::fs::File::create(&stderr_path).expect("create the log file");
        let mut command = tokio::process::Command::new(relay_bin());
        command
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .args(args)
            .env("RUST_LOG", "warn")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(stderr)
            .kill_on_drop(true);
        prepare(&mut command);
        let mut child = command
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", relay_bin().display()))?;
        let stdout = child.stdout.take().expect("piped");
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .map_err(|_| "the relay did not start within 30 s".to_owned())?
            .map_err(|e| e.to_string())?;
        let Some(line) = line else {
            let status = child.wait().await.map_err(|e| e.to_string())?;
            let log = std::fs::read_to_string(&stderr_path).unwrap_or_default();
            return Err(format!(
                "the relay exited ({status}) before listening:\n{log}"
            ));
        };
        let addr = line
            .strip_prefix("listening on http://")
            .and_then(|a| a.trim().parse().ok())
            .ok_or(format!("unexpected first line: {line}"))?;
        Ok(ChildRelay {
            child,
            addr,
            stderr_path,
            _logs: logs,
        })
    }

    /// Its address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id().expect("the relay has not been waited for")
    }

    /// The WebSocket URL of a room.
    pub fn ws_url(&self, room: &str) -> String {
        format!("ws://{}/{}", self.addr, encode_room(room))
    }

    /// What it wrote to standard error so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Its exit status, if it has exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Waits up to `limit` for the relay to exit; its status if it did.
    pub async fn exited_within(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        tokio::time::timeout(limit, self.child.wait())
            .await
            .ok()
            .and_then(Result::ok)
    }

    /// Fails the test, with its log, if the relay has exited.
    pub fn assert_running(&mut self, what: &str) {
        if let Some(status) = self.exited() {
            panic!(
                "{what}: the relay process died ({status}); its log:\n{}",
                self.log()
            );
        }
    }

    /// Sends SIGTERM and waits for it to exit (within its drain timeout and [`DEADLINE`]).
    pub async fn stop(&mut self) -> std::process::ExitStatus {
        // SAFETY: kill(2) with the pid of a child this fixture has not reaped yet.
        unsafe {
            libc::kill(self.pid() as libc::pid_t, libc::SIGTERM);
        }
        within_for(
            Duration::from_secs(10) + DEADLINE,
            "the relay to exit after SIGTERM",
            self.child.wait(),
        )
        .await
        .expect("wait for the relay")
    }
}

/// The address of a `ws://IP:PORT/...` URL.
fn ws_addr(url: &str) -> SocketAddr {
    url.strip_prefix("ws://")
        .and_then(|rest| rest.split('/').next())
        .expect("a ws:// URL")
        .parse()
        .expect("an IP address and port")
}

/// A small deterministic generator (xorshift64) for the fault tests and tools, so that a seed
/// replays the same choices. The seed must not be 0.
pub struct Rng(pub u64);

impl Rng {
    /// The next 64 random bits.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A number below `n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// A number from `low` to `high`, both included.
    pub fn between(&mut self, low: u64, high: u64) -> u64 {
        low + self.below(high - low + 1)
    }

    /// `len` random bytes.
    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
}
