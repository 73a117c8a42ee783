//! The WebSocket test client: tokio-tungstenite with a `yrs` document, reading and answering
//! the way a Yjs client does, every read bounded by [`DEADLINE`].

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use crdt::protocol::{encode_save_request, encode_sync_step1, encode_sync_step2, encode_update};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use yrs::updates::decoder::Decode;
use yrs::{Doc, ReadTxn, StateVector, Transact};

use crate::doc::{append, apply, doc_text, state_vector};
use crate::protocol::{AwarenessState, Msg, awareness_entries, decode_one};
use crate::wait::{DEADLINE, within, within_for};

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
    within_for(limit, "a message from the relay", read_event(stream)).await
}

/// Reads the next event from a client stream (pings and pongs are skipped), without a limit:
/// for writers and tools that expect relays to die and bound their waits themselves. Cancel
/// safe (a `select!` branch loses nothing).
pub async fn read_event(stream: &mut SplitStream<Ws>) -> Event {
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

    /// Connects to a WebSocket URL of the relay without failing the test: an error (with the
    /// URL) when the connection or the handshake fails or takes longer than `limit`. For the
    /// writers and tools that kill relays on purpose.
    ///
    /// # Errors
    /// The connection's or the handshake's error, or the timeout.
    pub async fn connect_for(url: &str, limit: Duration) -> Result<Client, String> {
        let attempt = async {
            let tcp = TcpStream::connect(ws_addr(url)).await?;
            Client::handshake_unbounded(tcp, url).await
        };
        match tokio::time::timeout(limit, attempt).await {
            Ok(connected) => connected.map_err(|e| format!("connect to {url}: {e}")),
            Err(_) => Err(format!("connect to {url}: timed out after {limit:?}")),
        }
    }

    /// The WebSocket handshake on a connected socket, failing the test after [`DEADLINE`].
    async fn handshake(
        tcp: TcpStream,
        request: impl tokio_tungstenite::tungstenite::client::IntoClientRequest + Unpin,
    ) -> Result<Client, tokio_tungstenite::tungstenite::Error> {
        within(
            "the WebSocket handshake",
            Client::handshake_unbounded(tcp, request),
        )
        .await
    }

    /// The WebSocket handshake on a connected socket (no Nagle delay, generous size limits).
    async fn handshake_unbounded(
        tcp: TcpStream,
        request: impl tokio_tungstenite::tungstenite::client::IntoClientRequest + Unpin,
    ) -> Result<Client, tokio_tungstenite::tungstenite::Error> {
        tcp.set_nodelay(true)?;
        let config = WebSocketConfig::default()
            .max_message_size(Some(256 << 20))
            .max_frame_size(Some(256 << 20));
        let (ws, _response) =
            tokio_tungstenite::client_async_with_config(request, tcp, Some(config)).await?;
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

    /// Sends one binary frame.
    pub async fn send(&mut self, frame: impl Into<Bytes>) {
        within(
            "sending a frame",
            self.sink.send(WsMessage::Binary(frame.into())),
        )
        .await
        .expect("send a frame");
    }

    /// Sends one binary frame without failing the test (a writer whose relay was killed).
    ///
    /// # Errors
    /// The socket's error.
    pub async fn try_send(
        &mut self,
        frame: impl Into<Bytes>,
    ) -> Result<(), tokio_tungstenite::tungstenite::Error> {
        self.sink.send(WsMessage::Binary(frame.into())).await
    }

    /// Sends a close frame without failing the test (and without waiting for the answer).
    ///
    /// # Errors
    /// The socket's error.
    pub async fn try_send_close(&mut self) -> Result<(), tokio_tungstenite::tungstenite::Error> {
        self.sink.send(WsMessage::Close(None)).await
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

/// The address of a `ws://IP:PORT/...` URL.
fn ws_addr(url: &str) -> SocketAddr {
    url.strip_prefix("ws://")
        .and_then(|rest| rest.split('/').next())
        .expect("a ws:// URL")
        .parse()
        .expect("an IP address and port")
}
