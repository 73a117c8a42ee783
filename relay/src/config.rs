//! The relay's configuration: one struct with defaults, filled from flags or `RELAY_*` variables.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

/// Name of the store file inside the data directory.
pub const STORE_FILE: &str = "relay.redb";

/// A secret from the command line or the environment. It never appears in logs or `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Secret(s.to_owned()))
    }
}

/// Settings of `relay serve`. Every flag has an environment variable under the `RELAY_` prefix.
#[derive(Debug, Clone, Args)]
pub struct Config {
    /// Address to listen on. Loopback by default; use 0.0.0.0:8080 to accept other machines.
    #[arg(long, env = "RELAY_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Directory holding the store (`relay.redb`); created if missing.
    #[arg(long, env = "RELAY_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,

    /// Largest WebSocket message or frame accepted, in bytes.
    #[arg(long, env = "RELAY_MAX_MESSAGE_BYTES", default_value_t = 64 << 20)]
    pub max_message_bytes: usize,

    /// Most connections (WebSockets and long-polling sessions) at once; more get HTTP 503.
    #[arg(long, env = "RELAY_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub max_connections: usize,

    /// Most connections to one document at once; more get HTTP 503.
    #[arg(long, env = "RELAY_MAX_ROOM_CONNECTIONS", default_value_t = 2_000)]
    pub max_room_connections: usize,

    /// Most connections (WebSockets and long-polling sessions) opened with one token at once;
    /// more get HTTP 429.
    #[arg(long, env = "RELAY_MAX_CONNECTIONS_PER_TOKEN", default_value_t = 100)]
    pub max_connections_per_token: usize,

    /// On a relay without --secret: most connections from one client IP address at once (loopback
    /// addresses excepted: local tools, tests and a reverse proxy on the same machine); more get
    /// HTTP 429.
    #[arg(long, env = "RELAY_MAX_CONNECTIONS_PER_ADDRESS", default_value_t = 100)]
    pub max_connections_per_address: usize,

    /// Most HTTP connections at once (requests, held polls, idle keep-alive connections, upgrades
    /// not yet done; an upgraded WebSocket no longer counts). A connection over it is closed at
    /// once.
    #[arg(long, env = "RELAY_MAX_HTTP_CONNECTIONS", default_value_t = 4_096)]
    pub max_http_connections: usize,

    /// Seconds a request body may take to arrive, counted once the request is authorized; a body
    /// still incomplete then is refused with HTTP 408 and its connection closed.
    #[arg(long, env = "RELAY_BODY_TIMEOUT_SECS", default_value_t = 30)]
    pub body_timeout_secs: u64,

    /// Most documents in memory at once; connections that would load one more get HTTP 503.
    #[arg(long, env = "RELAY_MAX_ROOMS", default_value_t = 20_000)]
    pub max_rooms: usize,

    /// Largest document, in bytes of stored updates; an update that would grow a document past
    /// it is refused (the connection is closed with 1009, the API answers 413).
    #[arg(long, env = "RELAY_MAX_DOC_BYTES", default_value_t = 512 << 20)]
    pub max_doc_bytes: u64,

    /// Most awareness states (clients' cursors and presence) one document holds; states of new
    /// clients beyond it are not taken. Also the most entries one awareness message may list.
    #[arg(long, env = "RELAY_MAX_AWARENESS_STATES", default_value_t = 4096)]
    pub max_awareness_states: usize,

    /// Most awareness states (client ids) one connection may hold; a stock client holds one. A
    /// message that would take a connection past it closes the connection with 1008.
    #[arg(long, env = "RELAY_MAX_AWARENESS_PER_CONNECTION", default_value_t = 8)]
    pub max_awareness_per_connection: usize,

    /// Largest awareness state, in bytes of JSON; a larger one closes the connection with 1008.
    #[arg(long, env = "RELAY_MAX_AWARENESS_STATE_BYTES", default_value_t = 32 << 10)]
    pub max_awareness_state_bytes: usize,

    /// Most documents one Hocuspocus connection (a `@hocuspocus/provider` WebSocket at `/`) may
    /// have open at once; a document past it is refused with PermissionDenied.
    #[arg(long, env = "RELAY_MAX_DOCUMENTS_PER_CONNECTION", default_value_t = 64)]
    pub max_documents_per_connection: usize,

    /// Largest Hocuspocus stateless message, in bytes of its payload; a larger one closes the
    /// connection with 1008.
    #[arg(long, env = "RELAY_MAX_STATELESS_BYTES", default_value_t = 32 << 10)]
    pub max_stateless_bytes: usize,

    /// Hocuspocus stateless messages one document of a connection may send per second (and in a
    /// burst); more are dropped.
    #[arg(long, env = "RELAY_MAX_STATELESS_PER_SECOND", default_value_t = 30)]
    pub max_stateless_per_second: u32,

    /// How long a long-polling request is held open when there is nothing to send, in seconds
    /// (under the usual 30 to 60 second proxy timeouts).
    #[arg(long, env = "RELAY_POLL_HOLD_SECS", default_value_t = 25)]
    pub poll_hold_secs: u64,

    /// Seconds a new long-polling session has to make its first poll (GET); one that does not
    /// is ended (1001) instead of holding its slot for --client-timeout-secs. At most
    /// --client-timeout-secs.
    #[arg(long, env = "RELAY_POLL_START_TIMEOUT_SECS", default_value_t = 10)]
    pub poll_start_timeout_secs: u64,

    /// Bytes a connection may have queued for sending. A connection over this that has written
    /// nothing for --slow-reader-grace-ms, or that has four times this queued, is disconnected
    /// as too slow (close code 1013). A single message larger than this is still delivered.
    #[arg(long, env = "RELAY_OUTBOUND_QUEUE_BYTES", default_value_t = 16 << 20)]
    pub outbound_queue_bytes: usize,

    /// How long a connection over its queue limit may go without the socket taking any data
    /// before it is disconnected, in milliseconds.
    #[arg(long, env = "RELAY_SLOW_READER_GRACE_MS", default_value_t = 30_000)]
    pub slow_reader_grace_ms: u64,

    /// Commands a room's queue holds before the connections feeding it wait.
    #[arg(long, env = "RELAY_ROOM_QUEUE", default_value_t = 256)]
    pub room_queue: usize,

    /// Extra time the store writer waits to gather more updates into one commit, in
    /// milliseconds. 0 commits as soon as the previous commit is done (updates that arrive
    /// during a commit still share the next one).
    #[arg(long, env = "RELAY_COMMIT_WINDOW_MS", default_value_t = 0)]
    pub commit_window_ms: u64,

    /// Journal bytes after which a checkpoint moves the journal into the store's tables (also
    /// done every 10 seconds and at shutdown). Larger: fewer, larger redb transactions; smaller:
    /// less to replay after a crash and less held in memory.
    #[arg(long, env = "RELAY_CHECKPOINT_BYTES", default_value_t = 16 << 20)]
    pub checkpoint_bytes: u64,

    /// Log entries after which a room's log is compacted into a snapshot.
    #[arg(long, env = "RELAY_COMPACT_ENTRIES", default_value_t = 1_000)]
    pub compact_entries: u64,

    /// Log bytes after which a room's log is compacted; the threshold is raised to the snapshot
    /// size for large documents, so a snapshot is never rewritten for less than its own size.
    #[arg(long, env = "RELAY_COMPACT_BYTES", default_value_t = 1 << 20)]
    pub compact_bytes: u64,

    /// Seconds a room without connections stays in memory before it is unloaded.
    #[arg(long, env = "RELAY_IDLE_UNLOAD_SECS", default_value_t = 10)]
    pub idle_unload_secs: u64,

    /// Seconds of silence after which the relay sends a connection a keep-alive (an empty
    /// awareness message and a ping). Must be well under the stock client's 30-second timeout.
    #[arg(long, env = "RELAY_KEEPALIVE_SECS", default_value_t = 10)]
    pub keepalive_secs: u64,

    /// Seconds without anything from a client (pongs included) before its connection is
    /// considered dead and closed.
    #[arg(long, env = "RELAY_CLIENT_TIMEOUT_SECS", default_value_t = 60)]
    pub client_timeout_secs: u64,

    /// Seconds a shutdown may take to close sockets and commit before giving up.
    #[arg(long, env = "RELAY_DRAIN_TIMEOUT_SECS", default_value_t = 10)]
    pub drain_timeout_secs: u64,

    /// redb page cache in MiB.
    #[arg(long, env = "RELAY_STORE_CACHE_MB", default_value_t = 64)]
    pub store_cache_mb: usize,

    /// Secret for signing and checking tokens: `SECRET`, or `KID:SECRET` to name the key. Repeat
    /// the flag (or separate with commas in the variable) to accept several keys while rotating;
    /// the first one signs. Without a secret the relay is open to everyone.
    #[arg(
        long = "secret",
        env = "RELAY_SECRET",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub secrets: Vec<Secret>,

    /// Other origins (scheme://host[:port]) whose pages may use the relay (WebSockets,
    /// long-polling, the API), besides its own; `*` allows every origin. Without any, only the
    /// relay's own origin. Repeat the flag or separate with commas.
    #[arg(
        long = "allowed-origin",
        env = "RELAY_ALLOWED_ORIGINS",
        value_delimiter = ','
    )]
    pub allowed_origins: Vec<String>,

    /// The URL(s) browsers reach the relay at (https://relay.example behind a proxy): the relay's
    /// own origin. Without it, the relay's own origin is derived from --listen (loopback names
    /// and IP addresses, never a DNS name). Repeat the flag or separate with commas.
    #[arg(long = "public-url", env = "RELAY_PUBLIC_URL", value_delimiter = ',')]
    pub public_urls: Vec<String>,

    /// URL that receives a signed JSON POST when a document is created, changed or deleted.
    #[arg(long, env = "RELAY_WEBHOOK_URL")]
    pub webhook_url: Option<String>,

    /// Secret for the webhook's HMAC-SHA256 signature (default: the secret of the first
    /// --secret, without its `KID:`).
    #[arg(long, env = "RELAY_WEBHOOK_SECRET", hide_env_values = true)]
    pub webhook_secret: Option<Secret>,

    /// Enable the demo's sign-on endpoint, which hands out write tokens for demo documents to
    /// anyone. For demos only; never on by default.
    #[arg(long, env = "RELAY_DEMO_SIGN_ON")]
    pub demo_sign_on: bool,

    /// Cluster mode: the NATS servers (with JetStream) every relay of the cluster shares, like
    /// `nats://127.0.0.1:4222,nats://127.0.0.1:4223`. Without it the relay runs alone and its
    /// store is the authority; with it the JetStream log is, and the store is a cache.
    #[arg(long = "nats", env = "RELAY_NATS", value_delimiter = ',')]
    pub nats: Vec<String>,

    /// Cluster mode: each NATS server's monitoring address (`http://127.0.0.1:8222`), checked at
    /// start-up for `sync_interval: always`. Without it the relay warns that it cannot check.
    #[arg(
        long = "nats-monitor",
        env = "RELAY_NATS_MONITOR",
        value_delimiter = ','
    )]
    pub nats_monitor: Vec<String>,

    /// Cluster mode: this relay's name, unique in the cluster (default: host name and port).
    #[arg(long, env = "RELAY_NODE_NAME")]
    pub node_name: Option<String>,

    /// Cluster mode: seconds a room's ownership lease lasts without renewal. The owner renews
    /// every third of it and stops answering *saved* once two thirds pass without a renewal.
    #[arg(long, env = "RELAY_LEASE_SECS", default_value_t = 10)]
    pub lease_secs: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            data_dir: PathBuf::from("./data"),
            max_message_bytes: 64 << 20,
            max_connections: 10_000,
            max_room_connections: 2_000,
            max_connections_per_token: 100,
            max_connections_per_address: 100,
            max_http_connections: 4_096,
            body_timeout_secs: 30,
            max_rooms: 20_000,
            max_doc_bytes: 512 << 20,
            max_awareness_states: 4096,
            max_awareness_per_connection: 8,
            max_awareness_state_bytes: 32 << 10,
            max_documents_per_connection: 64,
            max_stateless_bytes: 32 << 10,
            max_stateless_per_second: 30,
            poll_hold_secs: 25,
            poll_start_timeout_secs: 10,
            outbound_queue_bytes: 16 << 20,
            slow_reader_grace_ms: 30_000,
            room_queue: 256,
            commit_window_ms: 0,
            checkpoint_bytes: 16 << 20,
            compact_entries: 1_000,
            compact_bytes: 1 << 20,
            idle_unload_secs: 10,
            keepalive_secs: 10,
            client_timeout_secs: 60,
            drain_timeout_secs: 10,
            store_cache_mb: 64,
            secrets: Vec::new(),
            allowed_origins: Vec::new(),
            public_urls: Vec::new(),
            webhook_url: None,
            webhook_secret: None,
            demo_sign_on: false,
            nats: Vec::new(),
            nats_monitor: Vec::new(),
            node_name: None,
            lease_secs: 10,
        }
    }
}

/// A setting that cannot work.
#[derive(Debug, thiserror::Error)]
#[error("invalid setting {name}: {reason}")]
pub struct ConfigError {
    /// The flag.
    pub name: &'static str,
    /// Why it is refused.
    pub reason: String,
}

impl Config {
    /// Checks the settings against each other.
    ///
    /// # Errors
    /// [`ConfigError`] naming the first setting that cannot work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let fail = |name, reason: &str| {
            Err(ConfigError {
                name,
                reason: reason.to_owned(),
            })
        };
        if self.max_message_bytes < 1024 {
            return fail("--max-message-bytes", "must be at least 1024");
        }
        if self.max_connections == 0 {
            return fail("--max-connections", "must be at least 1");
        }
        if self.max_rooms == 0 {
            return fail("--max-rooms", "must be at least 1");
        }
        if self.max_room_connections == 0 {
            return fail("--max-room-connections", "must be at least 1");
        }
        if self.max_connections_per_token == 0 {
            return fail("--max-connections-per-token", "must be at least 1");
        }
        if self.max_connections_per_address == 0 {
            return fail("--max-connections-per-address", "must be at least 1");
        }
        if self.max_http_connections == 0 {
            return fail("--max-http-connections", "must be at least 1");
        }
        if self.body_timeout_secs == 0 {
            return fail("--body-timeout-secs", "must be at least 1");
        }
        if self.poll_start_timeout_secs == 0 {
            return fail("--poll-start-timeout-secs", "must be at least 1");
        }
        if self.poll_hold_secs == 0 || self.poll_hold_secs >= self.client_timeout_secs {
            return fail(
                "--poll-hold-secs",
                "must be at least 1 and shorter than --client-timeout-secs",
            );
        }
        if self.max_awareness_states == 0 {
            return fail("--max-awareness-states", "must be at least 1");
        }
        if self.max_awareness_per_connection == 0 {
            return fail("--max-awareness-per-connection", "must be at least 1");
        }
        if self.max_documents_per_connection == 0 {
            return fail("--max-documents-per-connection", "must be at least 1");
        }
        if self.max_stateless_per_second == 0 {
            return fail("--max-stateless-per-second", "must be at least 1");
        }
        if self.max_awareness_state_bytes < 64 {
            return fail("--max-awareness-state-bytes", "must be at least 64");
        }
        if self.room_queue == 0 {
            return fail("--room-queue", "must be at least 1");
        }
        if self.compact_entries == 0 {
            return fail("--compact-entries", "must be at least 1");
        }
        if self.checkpoint_bytes == 0 {
            return fail("--checkpoint-bytes", "must be at least 1");
        }
        if self.keepalive_secs == 0 || self.keepalive_secs >= 30 {
            return fail(
                "--keepalive-secs",
                "must be between 1 and 29 (stock clients give up after 30 s of silence)",
            );
        }
        for origin in &self.allowed_origins {
            let valid = origin == "*"
                || origin.split_once("://").is_some_and(|(scheme, rest)| {
                    matches!(scheme, "http" | "https") && !rest.is_empty() && !rest.contains('/')
                }) && crate::origin::normalize(origin).is_some();
            if !valid {
                return fail(
                    "--allowed-origin",
                    "each origin is scheme://host[:port], like https://app.example, or *",
                );
            }
        }
        if self
            .public_urls
            .iter()
            .any(|url| crate::origin::url_origin(url).is_none())
        {
            return fail(
                "--public-url",
                "each is an http:// or https:// URL with a host, like https://relay.example",
            );
        }
        if let Some(url) = &self.webhook_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return fail("--webhook-url", "must be an http:// or https:// URL");
        }
        if self.lease_secs < 2 {
            return fail("--lease-secs", "must be at least 2");
        }
        if !self.nats.is_empty() && self.nats.iter().any(|url| url.trim().is_empty()) {
            return fail("--nats", "each server is a URL like nats://127.0.0.1:4222");
        }
        if self.client_timeout_secs <= self.keepalive_secs {
            return fail(
                "--client-timeout-secs",
                "must be longer than --keepalive-secs",
            );
        }
        Ok(())
    }

    /// Path of the store file.
    pub fn store_path(&self) -> PathBuf {
        self.data_dir.join(STORE_FILE)
    }

    /// The keep-alive interval.
    pub fn keepalive(&self) -> Duration {
        Duration::from_secs(self.keepalive_secs)
    }

    /// How long a client may stay silent.
    pub fn client_timeout(&self) -> Duration {
        Duration::from_secs(self.client_timeout_secs)
    }

    /// How long an empty room stays loaded.
    pub fn idle_unload(&self) -> Duration {
        Duration::from_secs(self.idle_unload_secs)
    }

    /// How long a connection's socket may take no data (`--slow-reader-grace-ms`).
    pub fn slow_reader_grace(&self) -> Duration {
        Duration::from_millis(self.slow_reader_grace_ms)
    }

    /// How long a shutdown may take.
    pub fn drain_timeout(&self) -> Duration {
        Duration::from_secs(self.drain_timeout_secs)
    }

    /// What one document's awareness may hold.
    pub fn awareness_limits(&self) -> crdt::awareness::AwarenessLimits {
        crdt::awareness::AwarenessLimits {
            max_states_per_room: self.max_awareness_states,
            max_states_per_connection: self.max_awareness_per_connection,
            max_state_bytes: self.max_awareness_state_bytes,
        }
    }

    /// How long a request body may take to arrive.
    pub fn body_timeout(&self) -> Duration {
        Duration::from_secs(self.body_timeout_secs)
    }

    /// How long a new long-polling session may wait before its first poll.
    pub fn poll_start_timeout(&self) -> Duration {
        Duration::from_secs(self.poll_start_timeout_secs.min(self.client_timeout_secs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        config: Config,
    }

    #[test]
    fn defaults_match_the_flag_defaults() {
        let parsed = Cli::try_parse_from(["relay"]).expect("no flags").config;
        let default = Config::default();
        assert_eq!(format!("{parsed:?}"), format!("{default:?}"));
        default.validate().expect("defaults are valid");
    }

    #[test]
    fn refuses_a_keepalive_the_stock_client_would_not_survive() {
        let config = Config {
            keepalive_secs: 30,
            ..Config::default()
        };
        assert_eq!(
            config.validate().expect_err("too slow").name,
            "--keepalive-secs"
        );
    }
}
