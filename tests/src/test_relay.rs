//! The real relay ([`relay::run`]) in this process, on a loopback port with its own temporary
//! data directory: the fixture of almost every integration test.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crdt::store::{Store, StoreOptions};
use relay::RunError;
use relay::config::Config;
use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::client::Client;
use crate::doc::doc_text;
use crate::http::{
    HttpResponse, UPGRADE_HEADERS, encode_query_value, encode_room, http_get, http_request,
    metric_value, ws_url,
};
use crate::wait::{DEADLINE, within, within_for};

/// The real relay, running in-process on a loopback port, with its own temporary data directory
/// (or one the caller keeps, [`TestRelay::start_in`]).
///
/// Dropping it cancels the relay (it then shuts down in the background) and deletes its
/// temporary data directory. [`TestRelay::stop`] shuts it down and checks that [`relay::run`]
/// returned `Ok`.
pub struct TestRelay {
    config: Config,
    addr: SocketAddr,
    shutdown: CancellationToken,
    task: Option<JoinHandle<Result<(), RunError>>>,
    // Held only to delete the directory when the fixture is dropped (after the relay has been
    // told to stop, as fields drop after `Drop::drop`); `None` for a caller's directory.
    _dir: Option<TempDir>,
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
        Self::launch_new(dir.path().join("data"), Some(dir), adjust).await
    }

    /// Starts a relay on `data_dir`, which the caller keeps (it is not deleted afterwards), with
    /// the test configuration adjusted by `adjust`.
    pub async fn start_in(data_dir: &Path, adjust: impl FnOnce(&mut Config)) -> Self {
        Self::launch_new(data_dir.to_owned(), None, adjust).await
    }

    async fn launch_new(
        data_dir: PathBuf,
        temporary: Option<TempDir>,
        adjust: impl FnOnce(&mut Config),
    ) -> Self {
        let mut config = Config {
            data_dir: data_dir.clone(),
            ..Config::default()
        };
        adjust(&mut config);
        config.data_dir = data_dir;
        let mut relay = TestRelay {
            config,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            shutdown: CancellationToken::new(),
            task: None,
            _dir: temporary,
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
        ws_url(self.addr, room)
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

    /// The value of one sample of `/metrics` (see [`metric_value`]); `None` if it is not
    /// exported.
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

    /// Opens a long-polling session: `POST /poll?room=ROOM` (with `&token=` when given) with
    /// `headers`, and returns the answer as it is.
    pub async fn open_poll(
        &self,
        room: &str,
        token: Option<&str>,
        headers: &[(&str, &str)],
    ) -> HttpResponse {
        let mut path = format!("/poll?room={}", encode_query_value(room));
        if let Some(token) = token {
            path.push_str(&format!("&token={}", encode_query_value(token)));
        }
        self.request("POST", &path, headers, b"").await
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

impl Drop for TestRelay {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}
