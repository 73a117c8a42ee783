//! `loadgen`: runs the benchmark scenarios against the relay and its peers.
//!
//! ```sh
//! cargo build --release -p relay -p loadgen
//! # one scenario, one peer, small counts:
//! target/release/loadgen run --peer relay --scenario fanout-100 --smoke
//! # everything, twice, into BENCHMARKS.md (what tests/loadgen/bench.sh does):
//! target/release/loadgen bench --runs 2 --out BENCHMARKS.md
//! # Hocuspocus clients, the relay's endpoint beside @hocuspocus/server:
//! target/release/loadgen run --protocol hocuspocus --peer relay,hocuspocus-server \
//!     --scenario busy-room,many-rooms --json hocuspocus.jsonl
//! # cluster mode (tests/loadgen/cluster-bench.sh): 3 relays on 3 nats-servers
//! target/release/loadgen run --peer relay --scenario durable --layout single,owner,spread
//! target/release/loadgen takeover --lease-secs 2 --reps 5
//! target/release/loadgen nats-memory --rooms 10000,30000
//! ```

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use loadgen::cluster::{self, ClusterLauncher, Placement};
use loadgen::metric::Metric;
use loadgen::peers::{PeerKind, PeerPaths};
use loadgen::protocol::Protocol;
use loadgen::report;
use loadgen::scenario::{self, Ctx, Outcome, Preset, ProcessLauncher, Size};

#[derive(Parser)]
#[command(
    about = "Load generator and benchmark for the relay and its peers",
    args_override_self = true
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Runs scenarios against peers and prints each result.
    Run(RunArgs),
    /// Runs scenarios against peers and writes BENCHMARKS.md (and the raw results as JSON).
    Bench(BenchArgs),
    /// Cluster mode only: the time from SIGKILL of a room's owner relay until a writer on a
    /// surviving relay gets its next *saved* (median and maximum of `--reps`).
    Takeover {
        #[command(flatten)]
        common: Common,
        /// Repetitions (a fresh owner each).
        #[arg(long, default_value_t = 5)]
        reps: usize,
    },
    /// Cluster mode only: each nats-server's memory after N rooms that each got one update.
    NatsMemory {
        #[command(flatten)]
        common: Common,
        /// Cumulative room counts at which to measure, comma-separated.
        #[arg(long, default_value = "10000")]
        rooms: String,
    },
    /// Rewrites the markdown from saved JSON results.
    Report {
        /// The JSON written by `bench`.
        #[arg(long)]
        json: PathBuf,
        /// The markdown file to write.
        #[arg(long, default_value = "BENCHMARKS.md")]
        out: PathBuf,
        /// Text to put in the machine section (defaults to this machine now).
        #[arg(long)]
        machine: Option<PathBuf>,
        /// Write only the results' tables (a section to put in BENCHMARKS.md by hand).
        #[arg(long)]
        tables_only: bool,
    },
}

#[derive(Args, Clone)]
struct Common {
    /// Scenarios, comma-separated, or "all".
    #[arg(long, default_value = "all")]
    scenario: String,
    /// Peers, comma-separated (relay, y-websocket-server, y-sweet, forwarder,
    /// hocuspocus-server), or "all" (every peer that speaks the clients' protocol).
    #[arg(long, default_value = "all")]
    peer: String,
    /// The clients' protocols, comma-separated: y-websocket, hocuspocus (only against the relay
    /// and hocuspocus-server, only in the timed scenarios: fanout-*, busy-room, many-rooms).
    /// With both, each protocol runs the named scenarios and peers it can, one after the other.
    #[arg(long, default_value = "y-websocket")]
    protocol: String,
    /// Small counts and a few seconds per scenario.
    #[arg(long)]
    smoke: bool,
    /// Runs of each point.
    #[arg(long, default_value_t = 1)]
    runs: usize,
    /// Overrides the measurement time of the timed scenarios (seconds).
    #[arg(long)]
    seconds: Option<f64>,
    /// The relay binary.
    #[arg(long, default_value = "target/release/relay")]
    relay_bin: PathBuf,
    /// The forwarder binary.
    #[arg(long, default_value = "target/release/forwarder")]
    forwarder_bin: PathBuf,
    /// The y-sweet binary.
    #[arg(long, default_value = "y-sweet")]
    y_sweet_bin: PathBuf,
    /// The directory with node_modules/@y/websocket-server, node_modules/@hocuspocus and
    /// hocuspocus-server.mjs.
    #[arg(long, default_value = "tests/loadgen/peers")]
    node_peers: PathBuf,
    /// The core the servers run on (taskset -c).
    #[arg(long, default_value_t = 0)]
    server_core: usize,
    /// The core the generator runs on.
    #[arg(long, default_value_t = 1)]
    loadgen_core: usize,
    /// Do not pin anything.
    #[arg(long)]
    no_pin: bool,
    /// Where data directories go.
    #[arg(long, default_value = "target/loadgen-work")]
    work_dir: PathBuf,
    /// The editing trace for large-doc and join-storm (default: the copy committed in
    /// tests/data/editing-traces, found from where this tool was built).
    #[arg(
        long,
        default_value = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../data/editing-traces/automerge-paper.json.gz"
        )
    )]
    trace: PathBuf,
    /// Where built documents are cached.
    #[arg(long, default_value = "target/loadgen-cache")]
    cache_dir: PathBuf,
    /// Extra arguments for `relay serve` (repeat).
    #[arg(long = "relay-arg", allow_hyphen_values = true)]
    relay_args: Vec<String>,
    /// How the relay runs, comma-separated: `single` (one process), `owner` (cluster mode: 3
    /// relays on 3 nats-servers with JetStream R3 and `sync_interval: always`, each room's
    /// clients on the relay that owns it) and `spread` (the same cluster, clients round-robin over
    /// the relays, so most are forwarded to the owner). Other peers run as one process.
    #[arg(long, default_value = "single")]
    layout: String,
    /// `--lease-secs` of the cluster's relays (default: the relay's own, 10).
    #[arg(long)]
    lease_secs: Option<u64>,
    /// Append every result to this JSON file as it comes.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    common: Common,
}

#[derive(Args)]
struct BenchArgs {
    #[command(flatten)]
    common: Common,
    /// The markdown file to write.
    #[arg(long, default_value = "BENCHMARKS.md")]
    out: PathBuf,
    /// The command line to print as "how to reproduce".
    #[arg(long, default_value = "tests/loadgen/bench.sh")]
    reproduce: String,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    match cli.command {
        Cmd::Run(args) => {
            pin(&args.common)?;
            runtime.block_on(run_all(&args.common))?;
        }
        Cmd::Bench(args) => {
            pin(&args.common)?;
            let machine = machine_description(&args.common);
            let started = now_utc();
            let outcomes = runtime.block_on(run_all(&args.common))?;
            let md = markdown(&outcomes, &machine, &args.reproduce, &started);
            std::fs::write(&args.out, md)
                .with_context(|| format!("write {}", args.out.display()))?;
            eprintln!("wrote {}", args.out.display());
        }
        Cmd::Takeover { common, reps } => {
            pin(&common)?;
            let paths = peer_paths(&common)?;
            let dir = absolute(&common.work_dir)?.join("takeover");
            let _ = std::fs::remove_dir_all(&dir);
            let load = cluster::load_average();
            let results = runtime.block_on(cluster::takeover::run(
                &paths,
                &dir,
                common.lease_secs,
                reps,
            ))?;
            let saved: Vec<_> = results.iter().map(|t| t.saved_after).collect();
            let (median, max) = cluster::takeover::median_max(&saved);
            let fresh: Vec<_> = results.iter().map(|t| t.fresh_saved_after).collect();
            let (fresh_median, fresh_max) = cluster::takeover::median_max(&fresh);
            let closed: Vec<_> = results.iter().filter_map(|t| t.closed_after).collect();
            let (closed_median, closed_max) = cluster::takeover::median_max(&closed);
            println!(
                "takeover (lease {}): saved after the kill: median {median:.2} s, max {max:.2} s, \
                 each {:.2?} s; a client connecting after the kill: median {fresh_median:.2} s, \
                 max {fresh_max:.2} s; forwarded connection ended after: median {closed_median:.2} s, \
                 max {closed_max:.2} s ({} of {}); load before {load}, after {}",
                common
                    .lease_secs
                    .map_or("default 10 s".to_owned(), |s| format!("{s} s")),
                saved.iter().map(|d| d.as_secs_f64()).collect::<Vec<_>>(),
                closed.len(),
                results.len(),
                cluster::load_average()
            );
        }
        Cmd::NatsMemory { common, rooms } => {
            pin(&common)?;
            let paths = peer_paths(&common)?;
            let dir = absolute(&common.work_dir)?.join("nats-memory");
            let _ = std::fs::remove_dir_all(&dir);
            let checkpoints: Vec<usize> = rooms
                .split(',')
                .map(|r| r.trim().parse())
                .collect::<Result<_, _>>()
                .context("--rooms: numbers, comma-separated")?;
            let load = cluster::load_average();
            let points = runtime.block_on(cluster::nats_memory::run(&paths, &dir, &checkpoints))?;
            for p in points {
                let rss: Vec<String> = p.rss_mib.iter().map(|m| format!("{m:.1}")).collect();
                let before: Vec<String> =
                    p.rss_before_mib.iter().map(|m| format!("{m:.1}")).collect();
                println!(
                    "nats-memory: {} rooms: nats-server VmRSS MiB [{}] (before any room [{}]); \
                     room streams: {} messages, {} subjects; lease bucket: {} messages; \
                     {:.0} rooms/s",
                    p.rooms,
                    rss.join(", "),
                    before.join(", "),
                    p.room_messages,
                    p.room_subjects,
                    p.lease_messages,
                    p.rooms_per_s
                );
            }
            println!("load before {load}, after {}", cluster::load_average());
        }
        Cmd::Report {
            json,
            out,
            machine,
            tables_only,
        } => {
            let text = std::fs::read_to_string(&json)?;
            let outcomes: Vec<Outcome> = text
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(parse_outcome)
                .collect::<anyhow::Result<_>>()?;
            let machine = match machine {
                Some(p) => std::fs::read_to_string(p)?,
                None => String::from("(not recorded)"),
            };
            let md = if tables_only {
                report::results(&outcomes)
            } else {
                markdown(&outcomes, &machine, "tests/loadgen/bench.sh", "")
            };
            std::fs::write(&out, md)?;
        }
    }
    Ok(())
}

fn parse_outcome(line: &str) -> anyhow::Result<Outcome> {
    // Outcome is written with serde; read it back field by field.
    let v: serde_json::Value = serde_json::from_str(line)?;
    loadgen_outcome_from_json(&v).context("bad result line")
}

fn loadgen_outcome_from_json(v: &serde_json::Value) -> Option<Outcome> {
    let preset: Preset = v.get("preset")?.as_str()?.parse().ok()?;
    let peer: PeerKind = v.get("peer")?.as_str()?.parse().ok()?;
    let size = match v.get("size")?.as_str()? {
        "Smoke" => Size::Smoke,
        _ => Size::Full,
    };
    let mut o = Outcome::from_parts(preset, peer, size);
    // Results written before clients could speak Hocuspocus have no protocol: y-websocket.
    if let Some(protocol) = v.get("protocol").and_then(serde_json::Value::as_str) {
        o.protocol = protocol.parse().ok()?;
    }
    for (k, x) in v.get("metrics")?.as_object()? {
        match k.parse::<Metric>() {
            Ok(metric) => {
                o.metrics.insert(metric, x.as_f64()?);
            }
            // A figure an older build measured and this one no longer knows: the rest of the
            // line is still worth reporting.
            Err(unknown) => eprintln!("skipping {unknown} of {preset} / {peer}"),
        }
    }
    if let Some(l) = v.get("latency").filter(|l| !l.is_null()) {
        o.latency = Some(scenario::Pcts {
            p50: l.get("p50")?.as_f64()?,
            p95: l.get("p95")?.as_f64()?,
            p99: l.get("p99")?.as_f64()?,
            max: l.get("max")?.as_f64()?,
            count: l.get("count")?.as_u64()? as usize,
        });
    }
    o.converged = v.get("converged").and_then(serde_json::Value::as_bool);
    let strings = |key: &str| -> Vec<String> {
        v.get(key)
            .and_then(|a| a.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    o.notes = strings("notes");
    o.warnings = strings("warnings");
    o.error = v.get("error").and_then(|e| e.as_str()).map(str::to_owned);
    o.layout = v.get("layout").and_then(|e| e.as_str()).map(str::to_owned);
    Some(o)
}

fn pin(c: &Common) -> anyhow::Result<()> {
    if !c.no_pin {
        loadgen::procfs::pin_to_core(c.loadgen_core)
            .with_context(|| format!("pin the generator to core {}", c.loadgen_core))?;
    }
    Ok(())
}

fn list<T>(s: &str) -> anyhow::Result<Vec<T>>
where
    T: std::str::FromStr<Err = String>,
{
    s.split(',')
        .map(|p| p.trim().parse().map_err(anyhow::Error::msg))
        .collect()
}

/// What one protocol's clients run: the scenarios, against the peers.
#[derive(Debug, PartialEq, Eq)]
struct Plan {
    protocol: Protocol,
    presets: Vec<Preset>,
    peers: Vec<PeerKind>,
}

/// The plan of each protocol in `protocols`: the scenarios and peers named (or "all") that it
/// can run. Refuses a scenario or peer that no protocol named can run, so that a mistyped
/// combination fails before anything starts instead of leaving a hole in the tables.
fn plans(scenario: &str, peer: &str, protocols: &str) -> anyhow::Result<Vec<Plan>> {
    let protocols: Vec<Protocol> = list(protocols)?;
    let presets: Vec<Preset> = if scenario == "all" {
        Preset::ALL.to_vec()
    } else {
        list(scenario)?
    };
    let peers: Vec<PeerKind> = if peer == "all" {
        PeerKind::ALL.to_vec()
    } else {
        list(peer)?
    };
    let names =
        |ps: &[Protocol]| -> String { ps.iter().map(|p| p.name()).collect::<Vec<_>>().join(", ") };
    if scenario != "all"
        && let Some(p) = presets
            .iter()
            .find(|p| !protocols.iter().any(|proto| p.supports(*proto)))
    {
        bail!(
            "scenario {p} has no {} clients (Hocuspocus clients run fanout-10, fanout-100, \
             fanout-1000, busy-room and many-rooms)",
            names(&protocols)
        );
    }
    if peer != "all"
        && let Some(p) = peers
            .iter()
            .find(|p| !protocols.iter().any(|proto| p.speaks(*proto)))
    {
        bail!(
            "{p} does not serve {} clients (Hocuspocus: relay, hocuspocus-server; y-websocket: \
             every peer but hocuspocus-server)",
            names(&protocols)
        );
    }
    Ok(protocols
        .into_iter()
        .map(|protocol| Plan {
            protocol,
            presets: presets
                .iter()
                .copied()
                .filter(|p| p.supports(protocol))
                .collect(),
            peers: peers
                .iter()
                .copied()
                .filter(|p| p.speaks(protocol))
                .collect(),
        })
        .filter(|plan| !plan.presets.is_empty() && !plan.peers.is_empty())
        .collect())
}

fn peer_paths(c: &Common) -> anyhow::Result<PeerPaths> {
    Ok(PeerPaths {
        relay: absolute(&c.relay_bin)?,
        forwarder: absolute(&c.forwarder_bin)?,
        y_sweet: resolve_program(&c.y_sweet_bin),
        node_peers: absolute(&c.node_peers)?,
        server_core: (!c.no_pin).then_some(c.server_core),
        relay_args: c.relay_args.clone(),
    })
}

/// `--layout`: `None` for one process, else the cluster's client placement.
fn layouts(s: &str) -> anyhow::Result<Vec<Option<Placement>>> {
    s.split(',')
        .map(|l| match l.trim() {
            "single" => Ok(None),
            other => other.parse().map(Some).map_err(anyhow::Error::msg),
        })
        .collect()
}

async fn run_all(c: &Common) -> anyhow::Result<Vec<Outcome>> {
    let plans = plans(&c.scenario, &c.peer, &c.protocol)?;
    let mut outcomes = Vec::new();
    for plan in &plans {
        outcomes.extend(run_plan(c, plan).await?);
    }
    Ok(outcomes)
}

async fn run_plan(c: &Common, plan: &Plan) -> anyhow::Result<Vec<Outcome>> {
    let Plan {
        protocol,
        presets,
        peers,
    } = plan;
    let protocol = *protocol;
    let layouts = layouts(&c.layout)?;
    let size = if c.smoke { Size::Smoke } else { Size::Full };
    let work_dir = absolute(&c.work_dir)?;
    std::fs::create_dir_all(&work_dir)?;
    let paths = peer_paths(c)?;
    for p in peers {
        let program = match p {
            PeerKind::Relay => Some(&paths.relay),
            PeerKind::Forwarder => Some(&paths.forwarder),
            PeerKind::YSweet => Some(&paths.y_sweet),
            PeerKind::YWebsocketServer | PeerKind::HocuspocusServer => None,
        };
        if let Some(program) = program
            && !program.exists()
        {
            bail!(
                "{p}: {} does not exist (build or install it first)",
                program.display()
            );
        }
    }
    let ctx = Ctx {
        size,
        work_dir: work_dir.clone(),
        trace_path: absolute(&c.trace)?,
        cache_dir: absolute(&c.cache_dir)?,
        seconds: c.seconds,
        protocol,
    };
    let mut outcomes = Vec::new();
    for preset in presets {
        for run in 1..=c.runs {
            let runs = peers.iter().flat_map(|peer| {
                let own: &[Option<Placement>] = if *peer == PeerKind::Relay {
                    &layouts
                } else {
                    &[None]
                };
                own.iter().map(move |layout| (*peer, *layout))
            });
            for (peer, layout) in runs {
                let tag = match layout {
                    None => format!("run{run}"),
                    Some(placement) => format!("cluster-{placement}-run{run}"),
                };
                eprintln!(
                    "== {preset} / {peer}{}, {protocol} clients (run {run}/{}) load {} ==",
                    layout.map_or(String::new(), |p| format!(" cluster, clients: {p}")),
                    c.runs,
                    cluster::load_average()
                );
                let outcome = match layout {
                    None => {
                        let mut launcher = ProcessLauncher {
                            kind: peer,
                            paths: paths.clone(),
                        };
                        scenario::run(*preset, &mut launcher, &ctx, &tag).await
                    }
                    Some(placement) => {
                        let mut launcher =
                            ClusterLauncher::new(paths.clone(), 3, c.lease_secs, placement);
                        let mut outcome = scenario::run(*preset, &mut launcher, &ctx, &tag).await;
                        outcome.layout = Some(launcher.describe());
                        outcome
                    }
                };
                println!(
                    "{}\n  load after: {}\n",
                    outcome.summary(),
                    cluster::load_average()
                );
                if let Some(json) = &c.json {
                    use std::io::Write;
                    let mut f = std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(json)?;
                    writeln!(f, "{}", serde_json::to_string(&outcome)?)?;
                }
                outcomes.push(outcome);
                // Leave the data directory for inspection only on failure.
                let dir = work_dir.join(format!("{}-{}-{tag}", preset.name(), peer.name()));
                // (scenario::run names it so for either protocol: they run one after the other.)
                if outcomes.last().is_some_and(|o| o.error.is_none()) {
                    let _ = std::fs::remove_dir_all(&dir);
                }
            }
        }
    }
    Ok(outcomes)
}

fn absolute(p: &Path) -> anyhow::Result<PathBuf> {
    Ok(if p.is_absolute() {
        p.to_owned()
    } else {
        std::env::current_dir()?.join(p)
    })
}

/// A program name looked up on PATH (or a path as given).
fn resolve_program(p: &Path) -> PathBuf {
    if p.components().count() > 1 {
        return absolute(p).unwrap_or_else(|_| p.to_owned());
    }
    std::env::var_os("PATH")
        .and_then(|path| {
            std::env::split_paths(&path)
                .map(|d| d.join(p))
                .find(|c| c.is_file())
        })
        .unwrap_or_else(|| p.to_owned())
}

fn sh(cmd: &str) -> String {
    Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

fn now_utc() -> String {
    sh("date -u '+%Y-%m-%d %H:%M UTC'")
}

fn machine_description(c: &Common) -> String {
    let lscpu = sh(
        "lscpu | grep -E '^(Architecture|CPU\\(s\\)|Model name|Thread\\(s\\) per core|Core\\(s\\) per socket|Socket\\(s\\)|CPU max MHz|L2 cache|L3 cache|Hypervisor vendor|Virtualization type)'",
    );
    let y_sweet = resolve_program(&c.y_sweet_bin);
    let node_pkg = |name: &str| {
        let p = c
            .node_peers
            .join("node_modules")
            .join(name)
            .join("package.json");
        std::fs::read_to_string(p)
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| v.get("version").and_then(|x| x.as_str()).map(str::to_owned))
            .unwrap_or_else(|| "not installed".into())
    };
    format!(
        "```\n{lscpu}\nMemory: {}\nKernel: {}\nrustc: {}\nnode: {}\nrelay: {} (git {})\n@y/websocket-server: {}, y-leveldb {}, yjs {}, ws {}\n@hocuspocus/server: {}, @hocuspocus/extension-sqlite {}, better-sqlite3 {}\ny-sweet: {}\nload average at start: {}\n```",
        sh("free -g | awk '/Mem:/ {print $2 \" GiB\"}'"),
        sh("uname -srvm"),
        sh("rustc --version"),
        sh("node --version"),
        sh(&format!("{} --version 2>/dev/null", c.relay_bin.display())),
        std::env::var("RELAY_REV").unwrap_or_else(|_| sh("git rev-parse --short HEAD 2>/dev/null; git status --porcelain 2>/dev/null | grep -q . && echo '(with uncommitted changes)'").replace('\n', " ")),
        node_pkg("@y/websocket-server"),
        node_pkg("y-leveldb"),
        node_pkg("yjs"),
        node_pkg("ws"),
        node_pkg("@hocuspocus/server"),
        node_pkg("@hocuspocus/extension-sqlite"),
        node_pkg("better-sqlite3"),
        if y_sweet.is_file() {
            format!("0.9.1 (cargo install y-sweet --locked), {}", y_sweet.display())
        } else {
            "not installed".into()
        },
        sh("cut -d' ' -f1-3 /proc/loadavg"),
    )
}

fn markdown(outcomes: &[Outcome], machine: &str, reproduce: &str, started: &str) -> String {
    let mut s = String::new();
    s.push_str("# Benchmarks\n\n");
    s.push_str(&format!(
        "Latest full run{}: every scenario of issues 6 and 15 against the relay and, in the same run, its peers. \
         Each cell is the mean of the runs, with each run in parentheses; ratios are relay ÷ peer \
         on the means (below 1: the relay uses less, or is faster).\n\n",
        if started.is_empty() { String::new() } else { format!(" ({started})") }
    ));
    s.push_str("## Reproduce\n\n```sh\n");
    s.push_str(reproduce);
    s.push_str("\n```\n\n");
    s.push_str("## Machine\n\n");
    s.push_str(machine);
    s.push_str("\n\n");
    s.push_str(METHOD);
    s.push_str("\n## Targets (issue 15)\n\n");
    let y_websocket: Vec<Outcome> = outcomes
        .iter()
        .filter(|o| o.protocol == Protocol::YWebsocket)
        .cloned()
        .collect();
    s.push_str(&report::targets(&y_websocket));
    s.push_str("\n## Results\n\n");
    s.push_str(&report::results(outcomes));
    s
}

const METHOD: &str = "## How it is measured\n\n\
- The servers run on core 0 (`taskset -c 0`), the generator (`target/release/loadgen`, one \
  tokio current-thread runtime) on core 1. Each point starts a fresh server process with an \
  empty data directory; each point runs at least twice.\n\
- Clients speak y-websocket with real `yrs` 0.28.1 updates, encoded and decoded with the \
  workspace's `crdt::protocol`. Writers each own a document with a fixed client id and set one \
  new `Y.Map` key per update, so every update inserts one item (client id, clock). Receivers \
  read those ids from each update and look up when that edit was sent: edit-to-delivery time \
  is measured for every delivery, in one process, with one clock.\n\
- Server CPU is `utime + stime` of `/proc/PID/stat` over the measurement (from the first \
  edit until every delivery has arrived), memory `VmRSS`/`VmHWM` of `/proc/PID/status`, bytes \
  written the server's `ru_oublock` (`wait4`). A delivery is an update reaching a client other \
  than its writer; `@y/websocket-server` and `y-sweet` also send each update back to its \
  writer (not counted).\n\
- Convergence: after each run a fresh client reads every room (sync step 1 with an empty \
  state vector) and must find every writer's clock and every map entry.\n\
- The generator warns when it used more than 85% of its core or its event loop lagged \
  (p99 of a 5 ms timer over 10 ms); its CPU share is in the tables.\n\
- Peers: `@y/websocket-server` 0.1.1 under Node with `YPERSISTENCE` (y-leveldb; 0.1.5, the \
  npm `latest`, does not install: it depends on an unpublished `@y/y`); `y-sweet serve` with a \
  filesystem store (documents created with `POST /doc/new` before clients join; checkpoints \
  every 10 s, its default); the bare forwarder (`tests/loadgen/src/bin/forwarder.rs`: tokio + \
  tokio-tungstenite 0.30, TCP_NODELAY, each binary message forwarded to the room's other \
  connections, one frame and one flush per message, no CRDT, no disk). The bare forwarder \
  keeps no state, so its clients skip the sync handshake and nothing converges.\n\
- Durable writes: each of the 100 rooms has a writer and an observer; a writer sends an \
  update, waits for its acknowledgement, and sends the next (one update in flight per room; \
  `LOADGEN_DURABLE_WINDOW=N` allows N). The relay acknowledges with its \
  \"saved\" extension (type 100; committed and fsynced). The peers have no such message: their \
  loop closes on delivery to the observer, so their figures are throughput without durability.\n\
- Large document: the automerge-paper trace is replayed into a `yrs` document first (one \
  update per edit), then sent by one client, with a barrier every 1,000 edits (sync step 1 with \
  the writer's state vector, answered once the server has applied everything before it; at \
  most 4 barriers in flight). Ingest rate = edits ÷ time until the last barrier's answer; for \
  the relay, also the time until its \"saved\" for the whole trace. Then the server is stopped \
  (SIGTERM), the relay's store compacted with `relay compact`, the server started again, and \
  reload time is from the process start to the first client holding the whole document.\n\
- Join storm: the document is the trace replayed again and again (each replay into its own \
  `Y.Text` by its own client id) up to 20 MB, uploaded by one client in one update per replay; \
  the server is restarted so that the storm finds the room cold, and 150 clients join at once.\n";

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(protocol: Protocol, presets: &[Preset], peers: &[PeerKind]) -> Plan {
        Plan {
            protocol,
            presets: presets.to_vec(),
            peers: peers.to_vec(),
        }
    }

    #[test]
    fn hocuspocus_clients_go_only_to_servers_and_scenarios_that_take_them() {
        use PeerKind::{HocuspocusServer, Relay, YWebsocketServer};
        use Preset::{BusyRoom, Durable, ManyRooms};
        assert_eq!(
            plans("busy-room,many-rooms", "all", "hocuspocus").expect("plan"),
            vec![plan(
                Protocol::Hocuspocus,
                &[BusyRoom, ManyRooms],
                &[Relay, HocuspocusServer]
            )]
        );
        let all = plans("all", "all", "y-websocket").expect("plan");
        assert_eq!(all.len(), 1);
        assert!(!all[0].peers.contains(&HocuspocusServer));
        assert_eq!(all[0].presets, Preset::ALL.to_vec());
        // Both protocols: each runs what it can of what was named.
        assert_eq!(
            plans(
                "busy-room,durable",
                "relay,yws,hocuspocus",
                "y-websocket,hocuspocus"
            )
            .expect("plan"),
            vec![
                plan(
                    Protocol::YWebsocket,
                    &[BusyRoom, Durable],
                    &[Relay, YWebsocketServer]
                ),
                plan(
                    Protocol::Hocuspocus,
                    &[BusyRoom],
                    &[Relay, HocuspocusServer]
                ),
            ]
        );
        // What no protocol named can run is refused, with the reason.
        let refused = plans("busy-room", "relay,yws", "hocuspocus").expect_err("yws");
        assert!(
            refused.to_string().contains("y-websocket-server"),
            "{refused}"
        );
        assert!(plans("busy-room", "hocuspocus", "y-websocket").is_err());
        assert!(plans("durable", "relay", "hocuspocus").is_err());
        assert!(plans("busy-room", "relay", "hocus").is_err());
    }
}
