//! A load generator for the relay and its peers.
//!
//! Modules in the order a run uses them:
//! - [`peers`]: start the server under test (the relay, `@y/websocket-server`, `y-sweet`,
//!   `@hocuspocus/server`, the bare [forwarder](../forwarder/index.html)) pinned to its own core;
//! - [`cluster`]: the same presets against 3 relays on a 3-node NATS JetStream cluster, and the
//!   cluster-only measurements (takeover after a crash, nats-server memory per room);
//! - [`client`]: clients with real `yrs` updates, and matching each received update to the edit
//!   that made it; [`protocol`]: whether they speak y-websocket or Hocuspocus, and its framing;
//! - [`scenario`]: the named presets (one module each) and what each measures, as [`metric`]s;
//! - [`monitor`] and [`procfs`]: whether the generator kept up, and the server's CPU, memory
//!   and disk figures;
//! - [`trace`]: real editing traces replayed into documents;
//! - [`report`]: the table of `BENCHMARKS.md`.
//!
//! ```sh
//! cargo build --release -p relay -p loadgen
//! target/release/loadgen run --peer relay --scenario fanout-100 --smoke
//! tests/loadgen/bench.sh        # every scenario against every peer, writes BENCHMARKS.md
//! ```

pub mod client;
pub mod cluster;
pub mod metric;
pub mod monitor;
pub mod peers;
pub mod procfs;
pub mod protocol;
pub mod report;
pub mod scenario;
pub mod trace;
