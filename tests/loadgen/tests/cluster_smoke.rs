//! A smoke run of loadgen's cluster mode: the durable and busy-room presets at their small size
//! against 3 relay binaries (`target/debug/relay`) on 3 nats-servers (the integration tests'
//! fixture; `tests/install-nats.sh` installs the binary), with each room's clients spread over
//! the relays so that most are forwarded. It checks that the cluster launcher, the placement and
//! the per-process figures work; it asserts no speed.

use std::time::{Duration, Instant};

use loadgen::cluster::{ClusterLauncher, Placement};
use loadgen::metric::Metric;
use loadgen::peers::PeerPaths;
use loadgen::protocol::Protocol;
use loadgen::scenario::{self, Ctx, Preset, Size};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_and_busy_room_run_against_a_cluster() {
    let work = tempfile::tempdir().expect("a temporary directory");
    let ctx = Ctx {
        size: Size::Smoke,
        work_dir: work.path().join("work"),
        trace_path: work.path().join("no-trace"),
        cache_dir: work.path().join("cache"),
        seconds: Some(1.0),
        protocol: Protocol::YWebsocket,
    };
    std::fs::create_dir_all(&ctx.work_dir).expect("work dir");
    let paths = PeerPaths {
        relay: relay_tests::relay_bin(),
        forwarder: "forwarder".into(),
        y_sweet: "y-sweet".into(),
        node_peers: work.path().into(),
        server_core: None,
        relay_args: Vec::new(),
    };
    for preset in [Preset::Durable, Preset::BusyRoom] {
        let started = Instant::now();
        let mut launcher = ClusterLauncher::new(paths.clone(), 3, Some(3), Placement::Spread);
        let outcome = scenario::run(preset, &mut launcher, &ctx, "cluster-smoke").await;
        eprintln!("{}\n  ({:.1?})\n", outcome.summary(), started.elapsed());
        assert!(
            outcome.error.is_none(),
            "{preset} failed: {:?}",
            outcome.error
        );
        assert_eq!(outcome.converged, Some(true), "{preset}: a room diverged");
        // Every relay and every nats-server was measured, and the servers did the work.
        assert!(outcome.get(Metric::NatsCpuS).is_some_and(|s| s > 0.0));
        assert!(outcome.get(Metric::NatsRssMib).is_some_and(|m| m > 0.0));
        assert!(outcome.get(Metric::ServerCpuS).is_some_and(|s| s > 0.0));
        if preset == Preset::Durable {
            assert!(outcome.get(Metric::AckedUpdates).is_some_and(|n| n > 0.0));
            assert_eq!(
                outcome.get(Metric::AckedUpdates),
                outcome.get(Metric::UpdatesSent),
                "every update acknowledged"
            );
        } else {
            assert_eq!(
                outcome.get(Metric::Deliveries),
                outcome.get(Metric::DeliveriesExpected),
                "every update delivered through the forwarding relays"
            );
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{preset}: {:?}",
            started.elapsed()
        );
    }
}
