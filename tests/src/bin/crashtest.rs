//! Crash test: runs the relay under load, kills it with SIGKILL at random moments, restarts it on
//! the same data directory, and checks that every edit the relay acknowledged as saved is there.
//!
//! ```sh
//! cargo build -p relay && cargo run -p relay-tests --bin crashtest -- --kills 100
//! ```
//!
//! Each writer owns a set of keys in its room's `Y.Map` (`"w<writer>-<n>" = n`). It sends edits
//! continuously and, every few edits, a save request; when the relay answers *saved* for request
//! n, every key up to n is acknowledged. After each kill the relay is restarted, a fresh client
//! reads every room, and every acknowledged key must be there with its value. At the end
//! `relay check` must find every stored document loadable. Exits non-zero on any loss.
//!
//! # Cluster mode (issue 13)
//!
//! ```sh
//! tests/install-nats.sh && cargo build -p relay
//! cargo run -p relay-tests --bin crashtest -- --cluster --kills 100
//! ```
//!
//! `--cluster` starts 3 nats-servers (`sync_interval: always`) and 3 relays (`--lease-secs`,
//! default 3) on loopback ports, with writers spread over the relays. Each round runs the load
//! for a random time, then `kill -9`s either the owner relay of a random room or a random
//! nats-server, checks that every edit acknowledged so far is in its room's subject (read
//! straight from JetStream), waits until every writer is acknowledged again, and restarts what
//! it killed. At the end every writer reconnects and saves everything; each room's subject must
//! hold every edit once, and every relay must serve exactly that. 100 rounds take about
//! 100 × (run time + takeover, ≤ lease + a few seconds): roughly 10-15 minutes. The relay
//! binary is `$RELAY_BIN`, else `target/<profile>/relay`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use relay_tests::{AckedWriter, ChildRelay, Rng, Schedule, read_edits, relay_bin, ws_url};
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

struct Options {
    /// `--cluster`: relays on a NATS cluster, killing owners and nats-servers.
    cluster: bool,
    /// `--lease-secs` of the relays in cluster mode.
    lease_secs: u64,
    /// `None`: the relay of this build ([`relay_tests::relay_bin`]).
    relay_bin: Option<PathBuf>,
    kills: usize,
    rooms: usize,
    writers: usize,
    seed: u64,
    min_run_ms: u64,
    max_run_ms: u64,
    /// `--checkpoint-bytes` for the relay (one node only): small values make checkpoints run,
    /// and get killed, under load.
    checkpoint_bytes: Option<u64>,
}

fn parse_args() -> Result<Options, String> {
    let mut options = Options {
        cluster: false,
        lease_secs: 3,
        relay_bin: None,
        kills: 5,
        rooms: 3,
        writers: 3,
        seed: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64),
        min_run_ms: 200,
        max_run_ms: 1500,
        checkpoint_bytes: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or(format!("{flag} needs a value"));
        let number = |v: String| v.parse::<u64>().map_err(|e| format!("{flag}: {e}"));
        match flag.as_str() {
            "--cluster" => options.cluster = true,
            "--lease-secs" => options.lease_secs = number(value()?)?,
            "--relay-bin" => options.relay_bin = Some(PathBuf::from(value()?)),
            "--kills" => options.kills = number(value()?)? as usize,
            "--rooms" => options.rooms = number(value()?)? as usize,
            "--writers" => options.writers = number(value()?)? as usize,
            "--seed" => options.seed = number(value()?)?,
            "--min-run-ms" => options.min_run_ms = number(value()?)?,
            "--max-run-ms" => options.max_run_ms = number(value()?)?,
            "--checkpoint-bytes" => options.checkpoint_bytes = Some(number(value()?)?),
            "--help" | "-h" => {
                return Err(
                    "usage: crashtest [--cluster [--lease-secs N]] [--relay-bin PATH] [--kills N] \
                     [--rooms N] [--writers N] [--seed N] [--min-run-ms MS] [--max-run-ms MS] \
                     [--checkpoint-bytes N (the relay's; small values checkpoint under load)]"
                        .into(),
                );
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if options.max_run_ms < options.min_run_ms {
        return Err("--max-run-ms must be at least --min-run-ms".into());
    }
    if options.cluster && options.relay_bin.is_some() {
        return Err(
            "--cluster runs $RELAY_BIN or this build's relay; set RELAY_BIN instead".into(),
        );
    }
    Ok(options)
}

/// How long a fresh client may take to read a room after a restart.
const READ_LIMIT: Duration = Duration::from_secs(30);

/// Runs a writer until its connection fails (the relay was killed): an edit at once, then one
/// after each random pause of 1 to 10 ms (seeded), a save request after every 4th.
async fn run_writer(relay: SocketAddr, writer: &mut AckedWriter, seed: u64) {
    let url = ws_url(relay, &writer.room);
    let mut schedule = Schedule::random(Rng(seed | 1), 1, 10).save_every(4);
    // Never cancelled: the round ends by dropping this future and killing the relay.
    let never = CancellationToken::new();
    writer.run_on(&url, &mut schedule, &never).await;
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let options = match parse_args() {
        Ok(options) => options,
        Err(message) => {
            eprintln!("{message}");
            return std::process::ExitCode::from(2);
        }
    };
    let outcome = if options.cluster {
        cluster::run(options).await
    } else {
        run(options).await
    };
    match outcome {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("crashtest FAILED: {message}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(options: Options) -> Result<(), String> {
    println!(
        "crashtest: {} kills, {} rooms x {} writers, seed {}",
        options.kills, options.rooms, options.writers, options.seed
    );
    let data = tempfile::tempdir().map_err(|e| e.to_string())?;
    let data_dir = data.path().to_path_buf();
    let mut rng = Rng(options.seed | 1);
    let mut writers: Vec<AckedWriter> = (0..options.rooms)
        .flat_map(|r| {
            (0..options.writers)
                .map(move |w| AckedWriter::new(&format!("crash/room {r}"), &format!("w{r}.{w}")))
        })
        .collect();
    let bin = options.relay_bin.clone().unwrap_or_else(relay_bin);
    let mut total_acked = 0;
    for round in 0..=options.kills {
        // Each round on a new port: the writers reconnect to wherever the relay listens now.
        let checkpoint_bytes = options.checkpoint_bytes.map(|n| n.to_string());
        let relay_args: Vec<&str> = match &checkpoint_bytes {
            Some(n) => vec!["--checkpoint-bytes", n],
            None => vec![],
        };
        let mut relay = ChildRelay::start_bin(&bin, &data_dir, &relay_args, |command| {
            // The relay's warnings belong in this tool's output.
            command.stderr(Stdio::inherit());
        })
        .await?;
        let addr = relay.addr();
        // Everything acknowledged before the last kill must be there.
        let mut rooms: BTreeMap<String, BTreeMap<String, f64>> = BTreeMap::new();
        for writer in &writers {
            if !rooms.contains_key(&writer.room) {
                let edits = read_edits(&ws_url(addr, &writer.room), READ_LIMIT)
                    .await
                    .map_err(|e| format!("room {}: {e}", writer.room))?;
                rooms.insert(writer.room.clone(), edits);
            }
        }
        total_acked = 0;
        for writer in &writers {
            // `acked` counts the keys 0..acked that the relay answered *saved* for.
            let acked = writer.acked();
            if let Some(missing) = writer.first_missing(&rooms[&writer.room], acked) {
                return Err(format!(
                    "round {round}: {}-{missing} was acknowledged as saved ({acked} keys) but is missing after the kill (seed {})",
                    writer.name, options.seed
                ));
            }
            total_acked += acked;
        }
        println!("round {round}: relay up on {addr}; {total_acked} acknowledged edits all present");
        if round == options.kills {
            relay.kill().await.map_err(|e| e.to_string())?;
            break;
        }
        // Load, then a kill at a random moment.
        let run_for = Duration::from_millis(rng.between(options.min_run_ms, options.max_run_ms));
        let seeds: Vec<u64> = writers.iter().map(|_| rng.next()).collect();
        let work = futures_util::future::join_all(
            writers
                .iter_mut()
                .zip(seeds)
                .map(|(writer, seed)| run_writer(addr, writer, seed)),
        );
        tokio::select! {
            _ = work => {}
            () = tokio::time::sleep(run_for) => {}
        }
        relay.kill().await.map_err(|e| e.to_string())?;
    }
    let check = Command::new(&bin)
        .args(["check", "--data-dir"])
        .arg(&data_dir)
        .output()
        .await
        .map_err(|e| e.to_string())?;
    if !check.status.success() {
        return Err(format!(
            "relay check failed: {}",
            String::from_utf8_lossy(&check.stderr)
        ));
    }
    println!(
        "crashtest passed: {} kills survived, {total_acked} acknowledged edits, 0 lost; relay check: {}",
        options.kills,
        String::from_utf8_lossy(&check.stderr).trim()
    );
    Ok(())
}

/// `--cluster`: owners and nats-servers killed under load.
mod cluster {
    use std::time::Duration;

    use relay_tests::{
        AckedWriter, ClusterOptions, NatsPath, RelayCluster, Rng, WriterPool, lease_owner,
    };

    use super::Options;

    /// What a round kills.
    enum Fault {
        Owner(usize),
        NatsServer(usize),
    }

    pub(super) async fn run(options: Options) -> Result<(), String> {
        println!(
            "crashtest --cluster: {} rounds, {} rooms x {} writers, lease {} s, seed {}",
            options.kills, options.rooms, options.writers, options.lease_secs, options.seed
        );
        let mut rng = Rng(options.seed | 1);
        let cluster_options = ClusterOptions {
            lease_secs: options.lease_secs,
            ..ClusterOptions::default()
        };
        let mut cluster = RelayCluster::start(3, NatsPath::Direct, cluster_options).await;
        let rooms: Vec<String> = (0..options.rooms)
            .map(|r| format!("crash/cluster room {r}"))
            .collect();
        let writers = rooms
            .iter()
            .flat_map(|room| {
                (0..options.writers).map(move |w| (AckedWriter::new(room, &format!("w{w}")), w % 3))
            })
            .collect();
        let addrs = cluster.addrs();
        let pool = WriterPool::start(writers, &addrs, Duration::from_millis(10));
        let recover = cluster.lease() * 2 + Duration::from_secs(20);
        let fail = |e: String, cluster: &RelayCluster| {
            format!(
                "{e} (seed {})\n{}\n{}",
                options.seed,
                cluster.logs(),
                cluster.nats.logs()
            )
        };
        pool.wait_progress(1, recover)
            .await
            .map_err(|e| fail(e, &cluster))?;
        for round in 0..options.kills {
            let run_for = rng.between(options.min_run_ms, options.max_run_ms);
            tokio::time::sleep(Duration::from_millis(run_for)).await;
            let room = &rooms[rng.below(rooms.len() as u64) as usize];
            let owner = lease_owner(&cluster.js, room)
                .await
                .and_then(|name| cluster.relays.iter().position(|r| r.name == name));
            let fault = match owner {
                Some(owner) if rng.below(2) == 0 => Fault::Owner(owner),
                _ => Fault::NatsServer(rng.below(3) as usize),
            };
            let what = match fault {
                Fault::Owner(i) => {
                    cluster.relays[i].kill().await;
                    cluster.update_addrs(&addrs);
                    format!("owner r{i} of {room:?}")
                }
                Fault::NatsServer(i) => {
                    cluster.nats.kill(i).await;
                    format!("nats-server n{i}")
                }
            };
            let checked = pool
                .check_stored(&cluster.js, &format!("round {round}, after killing {what}"))
                .await
                .map_err(|e| fail(e, &cluster))?;
            let took = pool.wait_progress(1, recover).await.map_err(|e| {
                fail(
                    format!("round {round}, after killing {what}: {e}"),
                    &cluster,
                )
            })?;
            match fault {
                Fault::Owner(i) => {
                    cluster.relays[i].restart().await?;
                    cluster.update_addrs(&addrs);
                }
                Fault::NatsServer(i) => cluster.nats.restart(i).await,
            }
            println!(
                "round {round}: killed {what}; {checked} acknowledged edits all stored; saves resumed after {took:.1?}"
            );
        }
        let mut writers = pool.stop().await;
        cluster
            .settle_and_verify(&mut writers, "at the end")
            .await
            .map_err(|e| fail(e, &cluster))?;
        let total: u64 = writers.iter().map(AckedWriter::sent).sum();
        println!(
            "crashtest passed: {} kills survived, {total} acknowledged edits, 0 lost; every relay serves the stream's document",
            options.kills
        );
        Ok(())
    }
}
