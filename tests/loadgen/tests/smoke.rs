//! A smoke run of the benchmark: every preset at its small size against the relay, started
//! in-process (`relay::run`) on a loopback port, so the load generator never rots. It checks
//! that each scenario completes, delivers everything it should and converges; it asserts no
//! speed (that is what `tests/loadgen/bench.sh` measures, on a quiet machine).

use std::path::{Path, PathBuf};
use std::time::Instant;

use loadgen::metric::Metric;
use loadgen::peers::{ExitUsage, PeerKind, Server};
use loadgen::protocol::Protocol;
use loadgen::scenario::{self, Ctx, Launcher, Preset, Size};
use relay_tests::TestRelay;

/// The relay in this process ([`TestRelay`]): a restart stops `relay::run` and calls it again on
/// the same data directory.
struct InProcessRelay {
    relay: Option<TestRelay>,
}

impl Launcher for InProcessRelay {
    fn kind(&self) -> PeerKind {
        PeerKind::Relay
    }

    async fn start(&mut self, data_dir: &Path) -> anyhow::Result<Server> {
        let started = Instant::now();
        match &mut self.relay {
            Some(relay) if relay.data_dir() == data_dir => relay.restart().await,
            _ => self.relay = Some(TestRelay::start_in(data_dir, |_| {}).await),
        }
        let relay = self.relay.as_ref().expect("started");
        let mut server =
            Server::attach(PeerKind::Relay, relay.addr(), std::process::id(), data_dir);
        server.started = started;
        Ok(server)
    }

    async fn stop(&mut self, _server: Server) -> ExitUsage {
        // Asserts that `relay::run` returns `Ok`.
        self.relay.as_mut().expect("the relay runs").stop().await;
        ExitUsage::default()
    }

    async fn compact(&mut self, data_dir: &Path) -> anyhow::Result<Option<ExitUsage>> {
        let store = relay::cli::open_store(data_dir, false)?;
        relay::cli::compact(store)?;
        Ok(Some(ExitUsage::default()))
    }
}

fn trace_path() -> PathBuf {
    // tests/loadgen -> tests/data, the traces committed in the repository.
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/editing-traces/automerge-paper.json.gz")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_preset_runs_against_the_relay() {
    let work = tempfile::tempdir().expect("a temporary directory");
    let trace = trace_path();
    let ctx = Ctx {
        size: Size::Smoke,
        work_dir: work.path().join("work"),
        trace_path: trace.clone(),
        cache_dir: work.path().join("cache"),
        seconds: Some(1.0),
        protocol: Protocol::YWebsocket,
    };
    std::fs::create_dir_all(&ctx.work_dir).expect("work dir");
    let mut launcher = InProcessRelay { relay: None };
    for preset in Preset::ALL {
        if matches!(preset, Preset::JoinStorm | Preset::LargeDoc) && !trace.exists() {
            eprintln!("skipping {preset}: no trace at {}", trace.display());
            continue;
        }
        let outcome = scenario::run(preset, &mut launcher, &ctx, "smoke").await;
        eprintln!("{}\n", outcome.summary());
        assert!(
            outcome.error.is_none(),
            "{preset} failed: {:?}",
            outcome.error
        );
        if let Some(converged) = outcome.converged {
            assert!(converged, "{preset}: a room did not converge");
        }
        match preset {
            Preset::Fanout10
            | Preset::Fanout100
            | Preset::Fanout1000
            | Preset::BusyRoom
            | Preset::ManyRooms => {
                assert_every_update_delivered(&outcome);
                assert!(outcome.latency.is_some(), "{preset}: no latency");
                assert_eq!(outcome.converged, Some(true), "{preset}: not checked");
            }
            Preset::Idle => assert!(outcome.get(Metric::KibPerRoom).is_some()),
            Preset::JoinStorm => {
                assert_eq!(outcome.get(Metric::Synced), outcome.get(Metric::Clients));
                assert_eq!(
                    outcome.get(Metric::FirstStep2Full),
                    outcome.get(Metric::Clients)
                );
            }
            Preset::Durable | Preset::Durable1000 => {
                assert!(outcome.get(Metric::AckedUpdates).is_some_and(|n| n > 0.0));
                assert_eq!(
                    outcome.get(Metric::AckedUpdates),
                    outcome.get(Metric::UpdatesSent)
                );
            }
            Preset::LargeDoc => {
                assert_eq!(
                    outcome.get(Metric::EditsApplied),
                    outcome.get(Metric::Edits)
                );
                assert!(outcome.get(Metric::ReloadMs).is_some());
            }
        }
    }
}

/// Asserts that a timed preset sent updates and every one reached every client it should;
/// returns how many were sent.
fn assert_every_update_delivered(outcome: &scenario::Outcome) -> f64 {
    let preset = outcome.preset;
    let sent = outcome.get(Metric::UpdatesSent).expect("updates sent");
    assert!(sent > 0.0, "{preset}: nothing sent");
    assert_eq!(
        outcome.get(Metric::Deliveries),
        outcome.get(Metric::DeliveriesExpected),
        "{preset}: deliveries"
    );
    sent
}

fn hocuspocus_ctx(work: &Path) -> Ctx {
    let ctx = Ctx {
        size: Size::Smoke,
        work_dir: work.join("work"),
        trace_path: trace_path(),
        cache_dir: work.join("cache"),
        seconds: Some(1.0),
        protocol: Protocol::Hocuspocus,
    };
    std::fs::create_dir_all(&ctx.work_dir).expect("work dir");
    ctx
}

/// Asserts what a timed preset with Hocuspocus clients must show: every delivery, a SyncStatus
/// for every update with its latency, and rooms that converged (read back over Hocuspocus too).
fn assert_hocuspocus_timed(outcome: &scenario::Outcome) {
    let preset = outcome.preset;
    assert!(
        outcome.error.is_none(),
        "{preset} failed: {:?}",
        outcome.error
    );
    let sent = assert_every_update_delivered(outcome);
    assert_eq!(
        outcome.get(Metric::AckedUpdates),
        Some(sent),
        "{preset}: a SyncStatus per update"
    );
    assert!(
        outcome.get(Metric::AckP99Ms).is_some(),
        "{preset}: no SyncStatus latency"
    );
    assert!(outcome.latency.is_some(), "{preset}: no delivery latency");
    assert_eq!(outcome.converged, Some(true), "{preset}: not converged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hocuspocus_clients_run_against_the_relay() {
    let work = tempfile::tempdir().expect("a temporary directory");
    let ctx = hocuspocus_ctx(work.path());
    let mut launcher = InProcessRelay { relay: None };
    for preset in [Preset::BusyRoom, Preset::ManyRooms] {
        let outcome = scenario::run(preset, &mut launcher, &ctx, "hocuspocus").await;
        eprintln!("{}\n", outcome.summary());
        assert_hocuspocus_timed(&outcome);
    }
    // A preset without Hocuspocus clients is refused, not run with the wrong protocol.
    let refused = scenario::run(Preset::Durable, &mut launcher, &ctx, "refused").await;
    let error = refused.error.expect("durable has no Hocuspocus clients");
    assert!(error.contains("hocuspocus"), "{error}");
}

/// Against `@hocuspocus/server` (started by the generator, as in a benchmark). Not in the test
/// command: it needs `npm ci` in tests/loadgen/peers, which builds better-sqlite3 from source
/// (minutes on 2 cores; see tests/loadgen/bench.sh). Run it with
/// `cargo test -p loadgen --test smoke -- --ignored`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs npm ci in tests/loadgen/peers (better-sqlite3 built from source)"]
async fn hocuspocus_clients_run_against_hocuspocus_server() {
    let peers = Path::new(env!("CARGO_MANIFEST_DIR")).join("peers");
    assert!(
        peers.join("node_modules/@hocuspocus/server").is_dir(),
        "run npm ci in {} first",
        peers.display()
    );
    let work = tempfile::tempdir().expect("a temporary directory");
    let ctx = hocuspocus_ctx(work.path());
    let mut launcher = scenario::ProcessLauncher {
        kind: PeerKind::HocuspocusServer,
        paths: loadgen::peers::PeerPaths {
            relay: PathBuf::new(),
            forwarder: PathBuf::new(),
            y_sweet: PathBuf::new(),
            node_peers: peers,
            server_core: None,
            relay_args: Vec::new(),
        },
    };
    for preset in [Preset::BusyRoom, Preset::ManyRooms] {
        let outcome = scenario::run(preset, &mut launcher, &ctx, "hocuspocus").await;
        eprintln!("{}\n", outcome.summary());
        assert_hocuspocus_timed(&outcome);
    }
}
