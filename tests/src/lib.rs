//! Fixtures for the relay's integration tests and fault tools, one of each.
//!
//! The modules, in the order a test meets them:
//!
//! - `test_relay` ([`TestRelay`]): the real relay ([`relay::run`]) in this process on `127.0.0.1:0`
//!   with a fresh temporary data directory, the fixture of almost every test;
//! - `child_relay` ([`ChildRelay`]): the relay binary as a child process ([`relay_bin`]), for tests and
//!   tools that watch it from outside (memory, SIGKILL, resource limits, exit codes);
//! - `client` ([`Client`]): a WebSocket client (tokio-tungstenite) holding a `yrs` document, so
//!   the tests send and check real Yjs updates;
//! - `hocuspocus` ([`HocusClient`]): the same for the Hocuspocus endpoint at `/`, documents
//!   multiplexed on one socket;
//! - `protocol` ([`Msg`]): decoded messages, with the relay's own codec ([`crdt::protocol`]);
//! - `doc` ([`TEXT`], [`append`]): the test document and its updates;
//! - `http` ([`http_request`]): the one plain HTTP/1.1 client, the routes' URLs and the
//!   `/metrics` text;
//! - `auth` ([`token`]): signed tokens for relays started with `--secret`;
//! - `wait` ([`within`], [`DEADLINE`]): every wait bounded, none a fixed sleep;
//! - `memory` ([`vm_rss_bytes`]) and `rng` ([`Rng`]): for the fault tests and tools.
//!
//! Cluster mode (issue 13):
//!
//! - `nats` ([`NatsCluster`]): three official nats-servers with JetStream on loopback ports, to
//!   kill, restart, pause and resume;
//! - `proxy` ([`TcpProxy`]): a loopback TCP proxy that can blackhole a link (a partition
//!   without root);
//! - `relay_cluster` ([`RelayCluster`], [`RelayNode`]): relay binaries started with `--nats`,
//!   each with its own data directory, optionally behind proxies;
//! - `jetstream` ([`replay_room`], [`lease_owner`]): what the cluster stored, read straight from
//!   JetStream;
//! - `acked` ([`AckedWriter`]): writers that know which of their edits were acknowledged.
//!
//! Everything is re-exported here: a test file says `use relay_tests::*;`.

mod acked;
mod auth;
mod child_relay;
mod client;
mod doc;
mod hocuspocus;
mod http;
mod jetstream;
mod memory;
mod nats;
mod protocol;
mod proxy;
mod relay_cluster;
mod rng;
mod test_relay;
mod wait;

pub use acked::*;
pub use auth::*;
pub use child_relay::*;
pub use client::*;
pub use doc::*;
pub use hocuspocus::*;
pub use http::*;
pub use jetstream::*;
pub use memory::*;
pub use nats::*;
pub use protocol::*;
pub use proxy::*;
pub use relay_cluster::*;
pub use rng::*;
pub use test_relay::*;
pub use wait::*;
