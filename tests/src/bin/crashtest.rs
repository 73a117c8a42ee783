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
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crdt::protocol::{
    Message as ProtoMessage, MessageReader, encode_save_request, encode_sync_step1,
    encode_sync_step2, encode_update,
};
use futures_util::{SinkExt, StreamExt};
use relay_tests::{ChildRelay, Rng, relay_bin, ws_url};
use tokio::process::Command;
use tokio_tungstenite::tungstenite::Message;
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{Doc, Map, Out, ReadTxn, StateVector, Transact, Update};

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
            "--help" | "-h" => {
                return Err(
                    "usage: crashtest [--cluster [--lease-secs N]] [--relay-bin PATH] [--kills N] \
                     [--rooms N] [--writers N] [--seed N] [--min-run-ms MS] [--max-run-ms MS]"
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

/// One writer: its document, and how far the relay acknowledged its edits.
struct Writer {
    room: String,
    name: String,
    doc: Doc,
    next: u64,
    acked: Arc<AtomicU64>,
}

impl Writer {
    fn edit(&mut self) -> Vec<u8> {
        let map = self.doc.get_or_insert_map("edits");
        let before = self.doc.transact().state_vector();
        let n = self.next;
        self.next += 1;
        map.insert(
            &mut self.doc.transact_mut(),
            format!("{}-{n}", self.name),
            n as f64,
        );
        self.doc.transact().encode_diff_v1(&before)
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(relay: SocketAddr, room: &str) -> Option<Ws> {
    tokio_tungstenite::connect_async(ws_url(relay, room))
        .await
        .ok()
        .map(|(ws, _)| ws)
}

/// Runs a writer until its connection fails (the relay was killed) or `stop` is set.
async fn run_writer(relay: SocketAddr, writer: &mut Writer, seed: u64) {
    let Some(ws) = connect(relay, &writer.room).await else {
        return;
    };
    let (mut sink, mut stream) = ws.split();
    // Like a real client: say what we have and send what the relay lacks once it says what it has.
    let sv = writer.doc.transact().state_vector().encode_v1();
    if sink
        .send(Message::Binary(encode_sync_step1(&sv).into()))
        .await
        .is_err()
    {
        return;
    }
    let acked = writer.acked.clone();
    let doc_reader = writer.doc.clone();
    let (step2_tx, mut step2_rx) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
    let reader = tokio::spawn(async move {
        while let Some(Ok(message)) = stream.next().await {
            let Message::Binary(frame) = message else {
                continue;
            };
            for item in MessageReader::new(&frame) {
                match item {
                    Ok((ProtoMessage::Saved(id), _)) => {
                        // Request id k answers for keys 0..=k: k + 1 keys are saved.
                        acked.fetch_max(id + 1, Ordering::AcqRel);
                    }
                    Ok((ProtoMessage::SyncStep1(sv), _)) => {
                        if let Ok(sv) = StateVector::decode_v1(sv) {
                            let diff = doc_reader.transact().encode_diff_v1(&sv);
                            let _ = step2_tx.send(encode_sync_step2(&diff));
                        }
                    }
                    Ok((ProtoMessage::SyncStep2(u) | ProtoMessage::Update(u), _)) => {
                        if let Ok(update) = Update::decode_v1(u) {
                            let _ = doc_reader.transact_mut().apply_update(update);
                        }
                    }
                    _ => {}
                }
            }
        }
    });
    let mut rng = Rng(seed | 1);
    loop {
        while let Ok(step2) = step2_rx.try_recv() {
            if sink.send(Message::Binary(step2.into())).await.is_err() {
                reader.abort();
                return;
            }
        }
        let update = writer.edit();
        if sink
            .send(Message::Binary(encode_update(&update).into()))
            .await
            .is_err()
        {
            break;
        }
        if writer.next.is_multiple_of(4) {
            // The request is numbered after the last key sent before it.
            let request = writer.next - 1;
            if sink
                .send(Message::Binary(encode_save_request(request).into()))
                .await
                .is_err()
            {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(rng.between(1, 10))).await;
        if reader.is_finished() {
            break;
        }
    }
    reader.abort();
}

/// Reads a room with a fresh client and returns its map.
async fn read_room(relay: SocketAddr, room: &str) -> Result<BTreeMap<String, f64>, String> {
    let mut ws = connect(relay, room)
        .await
        .ok_or(format!("cannot connect to room {room}"))?;
    ws.send(Message::Binary(encode_sync_step1(&[0]).into()))
        .await
        .map_err(|e| e.to_string())?;
    let doc = Doc::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let message = tokio::time::timeout_at(deadline, ws.next())
            .await
            .map_err(|_| format!("room {room}: no sync step 2 within 30 s"))?;
        let Some(Ok(Message::Binary(frame))) = message else {
            return Err(format!("room {room}: connection ended before sync step 2"));
        };
        if let Some(Ok((ProtoMessage::SyncStep2(update), _))) = MessageReader::new(&frame).next() {
            let update = Update::decode_v1(update).map_err(|e| format!("room {room}: {e}"))?;
            doc.transact_mut()
                .apply_update(update)
                .map_err(|e| format!("room {room}: {e}"))?;
            break;
        }
    }
    let map = doc.get_or_insert_map("edits");
    let txn = doc.transact();
    Ok(map
        .iter(&txn)
        .filter_map(|(k, v)| match v {
            Out::Any(yrs::Any::Number(n)) => n.as_f64().map(|n| (k.to_owned(), n)),
            _ => None,
        })
        .collect())
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
    let mut writers: Vec<Writer> = (0..options.rooms)
        .flat_map(|r| {
            (0..options.writers).map(move |w| Writer {
                room: format!("crash/room {r}"),
                name: format!("w{r}.{w}"),
                doc: Doc::new(),
                next: 0,
                acked: Arc::new(AtomicU64::new(0)),
            })
        })
        .collect();
    let bin = options.relay_bin.clone().unwrap_or_else(relay_bin);
    let mut total_acked = 0;
    for round in 0..=options.kills {
        // Each round on a new port: the writers reconnect to wherever the relay listens now.
        let mut relay = ChildRelay::start_bin(&bin, &data_dir, &[], |command| {
            // The relay's warnings belong in this tool's output.
            command.stderr(Stdio::inherit());
        })
        .await?;
        let addr = relay.addr();
        // Everything acknowledged before the last kill must be there.
        let mut rooms: BTreeMap<String, BTreeMap<String, f64>> = BTreeMap::new();
        for writer in &writers {
            if !rooms.contains_key(&writer.room) {
                rooms.insert(writer.room.clone(), read_room(addr, &writer.room).await?);
            }
        }
        total_acked = 0;
        for writer in &writers {
            let acked = writer.acked.load(Ordering::Acquire);
            let content = &rooms[&writer.room];
            let present =
                |n: u64| content.get(&format!("{}-{n}", writer.name)).copied() == Some(n as f64);
            // `acked` counts the keys 0..acked that the relay answered *saved* for.
            if let Some(missing) = (0..acked).find(|&n| !present(n)) {
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
