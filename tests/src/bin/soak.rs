//! Soak: a bounded churn of clients joining and leaving many rooms and editing, against the relay
//! binary, sampling the relay's resident memory (VmRSS) as it goes. Memory must level off.
//!
//! ```sh
//! cargo build --release -p relay -p relay-tests
//! target/release/soak                      # 10 minutes
//! target/release/soak --duration-secs 120  # shorter
//! ```
//!
//! Every `--sample-secs` (5) it prints the elapsed time, the relay's VmRSS and the work done so
//! far; at the end, a table with one sample per minute. It fails (exit 1) if the relay dies, if
//! more than 1% of the sessions fail, or if memory keeps growing: the mean of the last quarter of
//! the samples may not exceed the mean of the second quarter (the first is warm-up) by more than
//! `--max-growth-pct` (10) percent and `--max-growth-mib` (8) MiB at once.
//!
//! Each of `--clients` (48) concurrent tasks loops over sessions: connect to one of `--rooms`
//! (300) rooms at random, sync (step 1/2), publish an awareness state, make 1 to 20 edits a few
//! milliseconds apart (text inserted at random positions, and deleted again so that documents
//! stay short), ask for a *saved* acknowledgement and wait for it, then leave: most sessions with
//! a close frame, some by dropping the TCP connection. Rooms are unloaded after
//! `--idle-unload-secs` (2) without connections, so rooms load and unload all the time.
//!
//! A Yjs document keeps a trace of every edit (deleted text leaves tombstones), so a room edited
//! for ten minutes is bigger in memory than one edited for one, and that growth would hide a
//! leak. The rooms therefore come in generations: every `--generation-secs` (60) the clients move
//! on to a fresh set of `--rooms` rooms, and the old ones unload for good (their data stays on
//! disk). The relay runs with `--store-cache-mb` (1): redb's page cache is memory the relay keeps
//! on purpose, up to that size, and it fills as the store grows generation after generation. With
//! 16 MiB a 10-minute run rose from 93 to 118 MiB while the store grew to 3,000 documents, and
//! that growth would hide a leak; with 1 MiB it stays level.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use crdt::protocol::{
    Message as ProtoMessage, MessageReader, encode_save_request, encode_sync_step1,
    encode_sync_step2, encode_update,
};
use relay_tests::{
    ChildRelay, Client, Event, Rng, awareness_message, http_get, metric_value, read_event,
    relay_bin, vm_rss_bytes, ws_url,
};
use tokio::time::Instant;
use yrs::updates::decoder::Decode;
use yrs::{GetString, ReadTxn, Text, Transact, Update};

struct Options {
    /// `None`: the relay of this build ([`relay_tests::relay_bin`]).
    relay_bin: Option<PathBuf>,
    duration: Duration,
    rooms: usize,
    clients: usize,
    sample: Duration,
    idle_unload_secs: u64,
    generation: Duration,
    store_cache_mb: u64,
    seed: u64,
    max_growth_pct: f64,
    max_growth_mib: f64,
}

const USAGE: &str = "usage: soak [--relay-bin PATH] [--duration-secs N (600)] [--rooms N (300)] \
[--clients N (48)] [--sample-secs N (5)] [--idle-unload-secs N (2)] [--generation-secs N (60)] \
[--store-cache-mb N (1)] [--seed N] [--max-growth-pct P (10)] [--max-growth-mib M (8)]";

fn parse_args() -> Result<Options, String> {
    let mut options = Options {
        relay_bin: None,
        duration: Duration::from_secs(600),
        rooms: 300,
        clients: 48,
        sample: Duration::from_secs(5),
        idle_unload_secs: 2,
        generation: Duration::from_secs(60),
        store_cache_mb: 1,
        seed: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64),
        max_growth_pct: 10.0,
        max_growth_mib: 8.0,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or(format!("{flag} needs a value\n{USAGE}"));
        let number = |v: String| v.parse::<u64>().map_err(|e| format!("{flag}: {e}"));
        let float = |v: String| v.parse::<f64>().map_err(|e| format!("{flag}: {e}"));
        match flag.as_str() {
            "--relay-bin" => options.relay_bin = Some(PathBuf::from(value()?)),
            "--duration-secs" => options.duration = Duration::from_secs(number(value()?)?),
            "--rooms" => options.rooms = number(value()?)?.max(1) as usize,
            "--clients" => options.clients = number(value()?)?.max(1) as usize,
            "--sample-secs" => options.sample = Duration::from_secs(number(value()?)?.max(1)),
            "--idle-unload-secs" => options.idle_unload_secs = number(value()?)?,
            "--generation-secs" => {
                options.generation = Duration::from_secs(number(value()?)?.max(1));
            }
            "--store-cache-mb" => options.store_cache_mb = number(value()?)?,
            "--seed" => options.seed = number(value()?)?,
            "--max-growth-pct" => options.max_growth_pct = float(value()?)?,
            "--max-growth-mib" => options.max_growth_mib = float(value()?)?,
            "--help" | "-h" => return Err(USAGE.into()),
            other => return Err(format!("unknown argument {other}\n{USAGE}")),
        }
    }
    if options.duration < options.sample * 8 {
        return Err("--duration-secs must cover at least 8 samples".into());
    }
    Ok(options)
}

/// What the churn has done so far.
#[derive(Default)]
struct Counters {
    sessions: AtomicU64,
    failed: AtomicU64,
    edits: AtomicU64,
    saved: AtomicU64,
}

/// Reads frames until one holds a message `wanted` accepts, applying sync updates to the
/// client's document. An error, not a failed test, on a close or after `limit`: the soak counts
/// failed sessions.
async fn read_until(
    client: &mut Client,
    limit: Duration,
    mut wanted: impl FnMut(&ProtoMessage<'_>) -> bool,
) -> Result<(), String> {
    let deadline = Instant::now() + limit;
    let doc = client.doc.clone();
    loop {
        let next = tokio::time::timeout_at(deadline, read_event(&mut client.stream))
            .await
            .map_err(|_| "timed out".to_string())?;
        let frame = match next {
            Event::Frame(frame) => frame,
            Event::Close(code) => return Err(format!("closed: {code:?}")),
            Event::Text(_) => continue,
            Event::Ended(e) => return Err(e),
        };
        for item in MessageReader::new(&frame) {
            let (message, _) =
                item.map_err(|e| format!("malformed message from the relay: {e}"))?;
            if let ProtoMessage::SyncStep2(u) | ProtoMessage::Update(u) = message {
                let update = Update::decode_v1(u).map_err(|e| e.to_string())?;
                doc.transact_mut()
                    .apply_update(update)
                    .map_err(|e| e.to_string())?;
            }
            if wanted(&message) {
                return Ok(());
            }
        }
    }
}

/// Sends one frame; the socket's error as text.
async fn send(client: &mut Client, frame: Vec<u8>) -> Result<(), String> {
    client.try_send(frame).await.map_err(|e| e.to_string())
}

/// One session: join a room, sync, edit, wait for *saved*, leave.
async fn session(relay: SocketAddr, room: &str, rng: &mut Rng) -> Result<u64, String> {
    let mut client = Client::connect_for(&ws_url(relay, room), Duration::from_secs(10)).await?;
    let doc = client.doc.clone();
    let limit = Duration::from_secs(20);
    // The greeting's step 1, answered with our (empty) step 2; then our step 1 for the content.
    read_until(&mut client, limit, |m| {
        matches!(m, ProtoMessage::SyncStep1(_))
    })
    .await?;
    send(&mut client, encode_sync_step2(&[0, 0])).await?;
    send(&mut client, encode_sync_step1(&[0])).await?;
    read_until(&mut client, limit, |m| {
        matches!(m, ProtoMessage::SyncStep2(_))
    })
    .await?;
    let client_id = doc.client_id().get();
    let state = format!(
        r#"{{"user":{{"name":"soak {client_id}"}},"cursor":{}}}"#,
        rng.below(100)
    );
    send(&mut client, awareness_message(client_id, 1, Some(&state))).await?;
    let text = doc.get_or_insert_text("t");
    let edits = 1 + rng.below(20);
    for _ in 0..edits {
        let before = doc.transact().state_vector();
        {
            let mut txn = doc.transact_mut();
            let len = text.len(&txn);
            if len > 400 {
                // Keep documents small: the soak looks for leaks, not for growing documents.
                let at = rng.below(u64::from(len) - 100) as u32;
                text.remove_range(&mut txn, at, 100);
            } else {
                let at = rng.below(u64::from(len) + 1) as u32;
                text.insert(
                    &mut txn,
                    at,
                    &format!("<{client_id:x}:{}>", rng.below(1000)),
                );
            }
        }
        let update = doc.transact().encode_diff_v1(&before);
        send(&mut client, encode_update(&update)).await?;
        tokio::time::sleep(Duration::from_millis(1 + rng.below(20))).await;
    }
    send(&mut client, encode_save_request(7)).await?;
    read_until(&mut client, limit, |m| matches!(m, ProtoMessage::Saved(7))).await?;
    // Read the document once, so the client also works as a reader.
    let _ = text.get_string(&doc.transact());
    if rng.below(4) == 0 {
        // Leave without a close frame: the relay notices the dropped TCP connection.
        drop(client);
    } else {
        let _ = tokio::time::timeout(Duration::from_secs(5), client.try_send_close()).await;
    }
    Ok(edits)
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn mean(values: &[u64]) -> f64 {
    values.iter().map(|&v| v as f64).sum::<f64>() / values.len().max(1) as f64
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
    match run(options).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("soak FAILED: {message}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(options: Options) -> Result<(), String> {
    let data = tempfile::tempdir().map_err(|e| e.to_string())?;
    let bin = options.relay_bin.clone().unwrap_or_else(relay_bin);
    let idle_unload_secs = options.idle_unload_secs.to_string();
    let store_cache_mb = options.store_cache_mb.to_string();
    let args = [
        "--idle-unload-secs",
        idle_unload_secs.as_str(),
        "--store-cache-mb",
        store_cache_mb.as_str(),
    ];
    let mut relay = ChildRelay::start_bin(&bin, data.path(), &args, |command| {
        // The relay's warnings belong in this tool's output.
        command.stderr(Stdio::inherit());
    })
    .await?;
    let pid = relay.pid();
    let addr = relay.addr();
    println!(
        "soak: {} s, {} rooms per {} s generation, {} concurrent clients, sample every {} s, relay {} (pid {pid}, {addr}, --store-cache-mb {}), seed {}",
        options.duration.as_secs(),
        options.rooms,
        options.generation.as_secs(),
        options.clients,
        options.sample.as_secs(),
        bin.display(),
        options.store_cache_mb,
        options.seed
    );
    let counters = Arc::new(Counters::default());
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    let mut seeder = Rng(options.seed | 1);
    let started = Instant::now();
    for _ in 0..options.clients {
        let counters = counters.clone();
        let stop = stop.clone();
        let rooms = options.rooms as u64;
        let generation = options.generation;
        let mut rng = Rng(seeder.next() | 1);
        tasks.push(tokio::spawn(async move {
            let mut first_error = None;
            while !stop.load(Ordering::Relaxed) {
                let epoch = started.elapsed().as_secs() / generation.as_secs();
                let room = format!("soak-g{epoch}-{}", rng.below(rooms));
                counters.sessions.fetch_add(1, Ordering::Relaxed);
                match session(addr, &room, &mut rng).await {
                    Ok(edits) => {
                        counters.edits.fetch_add(edits, Ordering::Relaxed);
                        counters.saved.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(error) => {
                        counters.failed.fetch_add(1, Ordering::Relaxed);
                        first_error.get_or_insert(format!("room {room}: {error}"));
                    }
                }
            }
            first_error
        }));
    }

    let mut samples: Vec<(Duration, u64)> = Vec::new();
    let mut ticks = tokio::time::interval(options.sample);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        ticks.tick().await;
        let elapsed = started.elapsed();
        if let Some(status) = relay.exited() {
            stop.store(true, Ordering::Relaxed);
            return Err(format!("the relay exited during the soak: {status}"));
        }
        let rss = vm_rss_bytes(Some(pid)).ok_or("cannot read the relay's VmRSS from /proc")?;
        samples.push((elapsed, rss));
        let (_, metrics) = http_get(addr, "/metrics").await.unwrap_or_default();
        let gauge = |name: &str| metric_value(&metrics, name).unwrap_or(-1.0);
        println!(
            "t={:>5.0}s rss={:>7.1} MiB rooms={} connections={} sessions={} failed={} edits={} saved={}",
            elapsed.as_secs_f64(),
            mib(rss),
            gauge("relay_rooms_loaded"),
            gauge("relay_connections"),
            counters.sessions.load(Ordering::Relaxed),
            counters.failed.load(Ordering::Relaxed),
            counters.edits.load(Ordering::Relaxed),
            counters.saved.load(Ordering::Relaxed),
        );
        if elapsed >= options.duration {
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let mut errors = Vec::new();
    for task in tasks {
        if let Ok(Some(error)) = tokio::time::timeout(Duration::from_secs(60), task)
            .await
            .map_err(|_| "a client did not finish within 60 s after the end".to_string())?
        {
            errors.push(error);
        }
    }
    let healthy = http_get(addr, "/healthz")
        .await
        .map(|(status, _)| status == 200)
        .unwrap_or(false);
    relay.kill().await.map_err(|e| e.to_string())?;

    println!("\nmemory curve (one sample per minute):");
    println!("{:>8} {:>10}", "minute", "RSS MiB");
    let mut next_minute = Duration::ZERO;
    for (t, rss) in &samples {
        if *t >= next_minute {
            println!("{:>8.1} {:>10.1}", t.as_secs_f64() / 60.0, mib(*rss));
            next_minute += Duration::from_secs(60);
        }
    }
    if let Some((t, rss)) = samples.last() {
        println!(
            "{:>8.1} {:>10.1}  (last)",
            t.as_secs_f64() / 60.0,
            mib(*rss)
        );
    }
    let values: Vec<u64> = samples.iter().map(|(_, rss)| *rss).collect();
    let quarter = values.len() / 4;
    let second = mean(&values[quarter..2 * quarter]);
    let last = mean(&values[values.len() - quarter..]);
    let growth = last - second;
    let growth_pct = 100.0 * growth / second;
    let peak = values.iter().copied().max().unwrap_or(0);
    let sessions = counters.sessions.load(Ordering::Relaxed);
    let failed = counters.failed.load(Ordering::Relaxed);
    println!(
        "\nsecond-quarter mean {:.1} MiB, last-quarter mean {:.1} MiB ({:+.1} MiB, {growth_pct:+.1}%), peak {:.1} MiB",
        mib(second as u64),
        mib(last as u64),
        growth / (1024.0 * 1024.0),
        mib(peak)
    );
    println!(
        "{sessions} sessions ({failed} failed), {} edits, {} saved acknowledgements",
        counters.edits.load(Ordering::Relaxed),
        counters.saved.load(Ordering::Relaxed)
    );
    if !healthy {
        return Err("the relay did not answer /healthz at the end".into());
    }
    if failed * 100 > sessions {
        return Err(format!(
            "{failed} of {sessions} sessions failed; first errors: {:?}",
            &errors[..errors.len().min(5)]
        ));
    }
    if growth_pct > options.max_growth_pct && mib(growth.max(0.0) as u64) > options.max_growth_mib {
        return Err(format!(
            "memory keeps growing: last quarter {:.1} MiB against {:.1} MiB in the second quarter",
            mib(last as u64),
            mib(second as u64)
        ));
    }
    println!("soak passed: memory levelled off");
    Ok(())
}
