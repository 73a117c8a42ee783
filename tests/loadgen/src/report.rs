//! The `BENCHMARKS.md` table: every preset, every peer side by side, relay ÷ peer ratios, and
//! the targets.

use std::collections::BTreeMap;
use std::fmt::Write;

use crate::metric::Metric;
use crate::metric::Metric as M;
use crate::peers::PeerKind;
use crate::protocol::Protocol;
use crate::scenario::{Outcome, Preset};

/// A percentile of an outcome's latency.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Percentile {
    /// The median.
    P50,
    /// The 95th percentile.
    P95,
    /// The 99th percentile.
    P99,
    /// The maximum.
    Max,
}

/// What a row of the report shows: a measured [`Metric`], a latency percentile, or whether the
/// rooms converged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Figure {
    /// A figure the scenario measured.
    Metric(Metric),
    /// A percentile of [`Outcome::latency`], in ms.
    Latency(Percentile),
    /// [`Outcome::converged`], as 1 or 0.
    Converged,
}

impl From<Metric> for Figure {
    fn from(metric: Metric) -> Self {
        Figure::Metric(metric)
    }
}

const LAT_P50: Figure = Figure::Latency(Percentile::P50);
const LAT_P95: Figure = Figure::Latency(Percentile::P95);
const LAT_P99: Figure = Figure::Latency(Percentile::P99);
const LAT_MAX: Figure = Figure::Latency(Percentile::Max);
const CONVERGED: Figure = Figure::Converged;

/// One row of a scenario's table.
struct Row {
    label: &'static str,
    figure: Figure,
    decimals: usize,
    /// Whether a relay ÷ peer ratio means something for this row.
    ratio: bool,
}

fn row(label: &'static str, figure: impl Into<Figure>, decimals: usize, ratio: bool) -> Row {
    Row {
        label,
        figure: figure.into(),
        decimals,
        ratio,
    }
}

fn rows(preset: Preset) -> Vec<Row> {
    match preset {
        Preset::Fanout10
        | Preset::Fanout100
        | Preset::Fanout1000
        | Preset::BusyRoom
        | Preset::ManyRooms => vec![
            row("updates sent", M::UpdatesSent, 0, false),
            row("deliveries received", M::Deliveries, 0, false),
            row("deliveries expected", M::DeliveriesExpected, 0, false),
            row("latency median (ms)", LAT_P50, 2, true),
            row("latency p95 (ms)", LAT_P95, 2, true),
            row("latency p99 (ms)", LAT_P99, 2, true),
            row("latency max (ms)", LAT_MAX, 1, true),
            row(
                "updates acknowledged (SyncStatus)",
                M::AckedUpdates,
                0,
                false,
            ),
            row("time to SyncStatus median (ms)", M::AckP50Ms, 2, true),
            row("time to SyncStatus p95 (ms)", M::AckP95Ms, 2, true),
            row("time to SyncStatus p99 (ms)", M::AckP99Ms, 2, true),
            row(
                "server CPU s per 1,000 deliveries",
                M::CpuSPer1kDeliveries,
                4,
                true,
            ),
            row(
                "server CPU s per 1,000 updates",
                M::CpuSPer1kUpdates,
                4,
                true,
            ),
            row("server CPU s (total)", M::ServerCpuS, 2, true),
            row("peak RSS (MiB)", M::RssPeakMib, 1, true),
            row("steady RSS (MiB)", M::RssSteadyMib, 1, true),
            row("converged (runs)", CONVERGED, 0, false),
            row(
                "generator CPU (share of a core)",
                M::GenCpuFraction,
                2,
                false,
            ),
        ],
        Preset::Idle => vec![
            row("connections", M::Connections, 0, false),
            row(
                "KiB per idle room with 1 connection",
                M::KibPerRoom,
                2,
                true,
            ),
            row("RSS before (MiB)", M::RssBeforeMib, 1, true),
            row("steady RSS (MiB)", M::RssSteadyMib, 1, true),
            row("peak RSS (MiB)", M::RssPeakMib, 1, true),
            row("time to connect all (s)", M::ConnectS, 2, true),
            row("server CPU s to accept all", M::ConnectCpuS, 2, true),
        ],
        Preset::JoinStorm => vec![
            row("document (MiB)", M::DocMib, 1, false),
            row("joiners synced", M::Synced, 0, false),
            row(
                "first sync step 2 carried the document",
                M::FirstStep2Full,
                0,
                false,
            ),
            row("time to synced, median (s)", M::SyncP50S, 3, true),
            row("time to synced, max (s)", M::SyncMaxS, 3, true),
            row("peak RSS (MiB)", M::RssPeakMib, 1, true),
            row("RSS after the storm (MiB)", M::RssSteadyMib, 1, true),
            row("server CPU s", M::ServerCpuS, 2, true),
            row("upload time (s)", M::UploadS, 2, true),
            row("read back whole (runs)", CONVERGED, 0, false),
            row(
                "generator CPU (share of a core)",
                M::GenCpuFraction,
                2,
                false,
            ),
        ],
        Preset::Durable | Preset::Durable1000 => vec![
            row("updates sent", M::UpdatesSent, 0, false),
            row("acknowledged updates per second", M::AckedPerS, 0, false),
            row("time to acknowledgement, median (ms)", LAT_P50, 2, true),
            row("time to acknowledgement, p95 (ms)", LAT_P95, 2, true),
            row("time to acknowledgement, p99 (ms)", LAT_P99, 2, true),
            row("time to acknowledgement, max (ms)", LAT_MAX, 1, true),
            row(
                "server CPU s per 1,000 updates",
                M::CpuSPer1kUpdates,
                4,
                true,
            ),
            row("peak RSS (MiB)", M::RssPeakMib, 1, true),
            row("converged (runs)", CONVERGED, 0, false),
        ],
        Preset::LargeDoc => vec![
            row("edits", M::Edits, 0, false),
            row("edits applied", M::EditsApplied, 0, false),
            row("ingest rate (edits/s)", M::IngestEditsPerS, 0, false),
            row("ingest until saved (s)", M::IngestDurableS, 2, false),
            row("server CPU s for the ingest", M::IngestCpuS, 2, true),
            row("document encoded (bytes)", M::DocBytes, 0, false),
            row("update bytes sent", M::UpdateBytes, 0, false),
            row(
                "store after ingest (bytes)",
                M::StoreBytesAfterIngest,
                0,
                true,
            ),
            row("store at the end (bytes)", M::StoreBytes, 0, true),
            row("store ÷ document", M::StorePerDoc, 2, true),
            row(
                "bytes written ÷ update bytes",
                M::WrittenPerUpdateByte,
                2,
                true,
            ),
            row("reload after restart (ms)", M::ReloadMs, 1, true),
            row("peak RSS (MiB)", M::RssPeakMib, 1, true),
        ],
    }
}

/// A figure of an outcome, if it has it.
pub fn value(o: &Outcome, figure: Figure) -> Option<f64> {
    match figure {
        Figure::Metric(metric) => o.get(metric),
        Figure::Latency(p) => o.latency.as_ref().map(|l| match p {
            Percentile::P50 => l.p50,
            Percentile::P95 => l.p95,
            Percentile::P99 => l.p99,
            Percentile::Max => l.max,
        }),
        Figure::Converged => o.converged.map(|c| if c { 1.0 } else { 0.0 }),
    }
}

/// The mean over the successful runs, if any run has the figure.
pub fn mean(runs: &[&Outcome], figure: Figure) -> Option<f64> {
    let values: Vec<f64> = runs.iter().filter_map(|o| value(o, figure)).collect();
    if values.is_empty() {
        None
    } else {
        Some(values.iter().sum::<f64>() / values.len() as f64)
    }
}

fn fmt_num(v: f64, decimals: usize) -> String {
    if decimals == 0 {
        let n = v.round() as i64;
        let s = n.abs().to_string();
        let mut out = String::new();
        for (i, c) in s.chars().enumerate() {
            if i > 0 && (s.len() - i).is_multiple_of(3) {
                out.push(',');
            }
            out.push(c);
        }
        if n < 0 { format!("-{out}") } else { out }
    } else {
        format!("{v:.decimals$}")
    }
}

fn cell(runs: &[&Outcome], r: &Row) -> String {
    if runs.is_empty() {
        return "not run".to_owned();
    }
    if r.figure == Figure::Converged {
        let checked: Vec<bool> = runs.iter().filter_map(|o| o.converged).collect();
        if checked.is_empty() {
            return "n/a".to_owned();
        }
        let ok = checked.iter().filter(|c| **c).count();
        return format!("{ok}/{}", checked.len());
    }
    let values: Vec<f64> = runs.iter().filter_map(|o| value(o, r.figure)).collect();
    match values.len() {
        0 => "–".to_owned(),
        1 => fmt_num(values[0], r.decimals),
        _ => {
            let m = values.iter().sum::<f64>() / values.len() as f64;
            let each: Vec<String> = values.iter().map(|v| fmt_num(*v, r.decimals)).collect();
            format!("{} ({})", fmt_num(m, r.decimals), each.join(" / "))
        }
    }
}

/// All outcomes grouped by preset and peer.
pub type Grouped<'a> = BTreeMap<Preset, BTreeMap<PeerKind, Vec<&'a Outcome>>>;

/// Groups outcomes by preset and peer.
pub fn group(outcomes: &[Outcome]) -> Grouped<'_> {
    let mut g: Grouped<'_> = BTreeMap::new();
    for o in outcomes {
        g.entry(o.preset)
            .or_default()
            .entry(o.peer)
            .or_default()
            .push(o);
    }
    g
}

/// The markdown tables, one per preset: every figure per peer (mean, then each run), and the
/// relay ÷ peer ratio of the means.
pub fn tables(outcomes: &[Outcome], peers: &[PeerKind]) -> String {
    let g = group(outcomes);
    let mut s = String::new();
    let others: Vec<PeerKind> = peers
        .iter()
        .copied()
        .filter(|p| *p != PeerKind::Relay)
        .collect();
    for (preset, by_peer) in &g {
        let size = by_peer
            .values()
            .flatten()
            .next()
            .map(|o| o.size)
            .unwrap_or(crate::scenario::Size::Full);
        let _ = writeln!(s, "### {} — {}\n", preset.name(), preset.describe(size));
        let _ = write!(s, "| figure |");
        for p in peers {
            let _ = write!(s, " {} |", p.name());
        }
        for p in &others {
            let _ = write!(s, " relay ÷ {} |", p.name());
        }
        let _ = write!(s, "\n|---|");
        for _ in 0..peers.len() + others.len() {
            let _ = write!(s, "---:|");
        }
        s.push('\n');
        let empty = Vec::new();
        // A figure no run of this preset measured (the SyncStatus rows of y-websocket clients)
        // is left out rather than shown as a row of dashes.
        let measured = |r: &Row| {
            r.figure == CONVERGED
                || by_peer
                    .values()
                    .flatten()
                    .any(|o| value(o, r.figure).is_some())
        };
        for r in rows(*preset).into_iter().filter(measured) {
            let _ = write!(s, "| {} |", r.label);
            for p in peers {
                let runs: Vec<&Outcome> = by_peer
                    .get(p)
                    .unwrap_or(&empty)
                    .iter()
                    .copied()
                    .filter(|o| o.error.is_none())
                    .collect();
                let failed = by_peer.get(p).is_some_and(|v| !v.is_empty()) && runs.is_empty();
                let _ = write!(
                    s,
                    " {} |",
                    if failed {
                        "failed".to_owned()
                    } else {
                        cell(&runs, &r)
                    }
                );
            }
            for p in &others {
                let relay: Vec<&Outcome> = ok_runs(by_peer.get(&PeerKind::Relay));
                let peer: Vec<&Outcome> = ok_runs(by_peer.get(p));
                let ratio = match (r.ratio, mean(&relay, r.figure), mean(&peer, r.figure)) {
                    (true, Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
                    _ => String::new(),
                };
                let _ = write!(s, " {ratio} |");
            }
            s.push('\n');
        }
        // Notes, warnings and failures, each once.
        let mut remarks: Vec<String> = Vec::new();
        for (peer, runs) in by_peer {
            for o in runs {
                for n in &o.notes {
                    push_unique(&mut remarks, format!("{peer}: {n}"));
                }
                for w in &o.warnings {
                    push_unique(&mut remarks, format!("{peer}: **warning**: {w}"));
                }
                if let Some(e) = &o.error {
                    push_unique(&mut remarks, format!("{peer}: **failed**: {e}"));
                }
            }
        }
        if !remarks.is_empty() {
            s.push('\n');
            for r in remarks {
                let _ = writeln!(s, "- {r}");
            }
        }
        s.push('\n');
    }
    s
}

fn ok_runs<'a>(runs: Option<&Vec<&'a Outcome>>) -> Vec<&'a Outcome> {
    runs.map(|v| v.iter().copied().filter(|o| o.error.is_none()).collect())
        .unwrap_or_default()
}

fn push_unique(v: &mut Vec<String>, s: String) {
    if !v.contains(&s) {
        v.push(s);
    }
}

/// Every result: the tables of the y-websocket clients, then, if there are any, a section of the
/// Hocuspocus clients' tables (relay ÷ `@hocuspocus/server`) with what differs between the two.
pub fn results(outcomes: &[Outcome]) -> String {
    let mut s = String::new();
    for protocol in Protocol::ALL {
        let of: Vec<Outcome> = outcomes
            .iter()
            .filter(|o| o.protocol == protocol)
            .cloned()
            .collect();
        if of.is_empty() {
            continue;
        }
        let mut peers: Vec<PeerKind> = of.iter().map(|o| o.peer).collect();
        peers.sort();
        peers.dedup();
        if protocol == Protocol::Hocuspocus {
            s.push_str(HOCUSPOCUS_SECTION);
        }
        s.push_str(&tables(&of, &peers));
    }
    s
}

/// The head of the Hocuspocus clients' section: how they are measured and what differs.
pub const HOCUSPOCUS_SECTION: &str = "## Hocuspocus clients\n\n\
The same timed presets with clients that speak `@hocuspocus/provider`'s protocol \
(`--protocol hocuspocus`): one WebSocket per client at the server's root URL, every message \
prefixed by the document name, an Auth message (empty token, version string as 4.x sends it) \
before sync step 1. Against the relay's Hocuspocus endpoint (`ws://HOST:PORT/`) and \
`@hocuspocus/server` 4.7.0 with `@hocuspocus/extension-sqlite` 4.7.0 (better-sqlite3, built \
from source; `tests/loadgen/peers/hocuspocus-server.mjs`, every setting at its default), under \
Node 20 (the server's `engines` asks for 22; it runs on 20), pinned to the same core as every \
server.\n\n\
- *Time to SyncStatus*: from sending an update to the server's SyncStatus for it (the n-th \
  SyncStatus a writer receives after its handshake answers its n-th update). It means \
  different things: the relay sends it once the update is durably committed (on disk, \
  synced), so `provider.hasUnsyncedChanges` turns false only when the edit \
  would survive a crash; Hocuspocus sends it once the update is applied in memory, and stores \
  the whole document (one SQLite upsert) 2 s after its last change, at most 10 s after the \
  first (`debounce`, `maxDebounce`).\n\
- Server CPU is measured from the first edit until every delivery and every SyncStatus has \
  arrived, as above. Hocuspocus' last debounced stores come up to 2 s later and are not in it; \
  every relay commit is.\n\
- Hocuspocus sends each update back to its sender too (not counted as a delivery), and \
  coalesces what arrives in one event-loop turn into one broadcast (`flushDelay` 0).\n\n";

/// The targets, checked against the means of this run.
pub fn targets(outcomes: &[Outcome]) -> String {
    let g = group(outcomes);
    let get = |preset: Preset, peer: PeerKind, figure: Figure| -> Option<f64> {
        let runs = ok_runs(g.get(&preset).and_then(|m| m.get(&peer)));
        mean(&runs, figure)
    };
    let mut s = String::from("| target | relay | compared with | met |\n|---|---:|---|:---:|\n");
    let mut line = |target: String, relay: Option<f64>, against: String, met: Option<bool>| {
        let relay = relay.map_or("–".to_owned(), |v| format!("{v:.4}"));
        let met = match met {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "–",
        };
        let _ = writeln!(s, "| {target} | {relay} | {against} | {met} |");
    };
    for preset in [
        Preset::Fanout10,
        Preset::Fanout100,
        Preset::Fanout1000,
        Preset::BusyRoom,
        Preset::ManyRooms,
    ] {
        let key = M::CpuSPer1kDeliveries.into();
        let relay = get(preset, PeerKind::Relay, key);
        let yws = get(preset, PeerKind::YWebsocketServer, key);
        let fwd = get(preset, PeerKind::Forwarder, key);
        let met = match (relay, yws, fwd) {
            (Some(r), Some(y), Some(f)) => Some(r <= y / 5.0 && r <= f),
            _ => None,
        };
        line(
            format!(
                "{preset}: CPU s per 1,000 deliveries ≤ y-websocket-server ÷ 5 and ≤ forwarder"
            ),
            relay,
            format!(
                "y-websocket-server ÷ 5 = {}, forwarder = {}",
                yws.map_or("–".into(), |v| format!("{:.4}", v / 5.0)),
                fwd.map_or("–".into(), |v| format!("{v:.4}"))
            ),
            met,
        );
        let relay_p99 = get(preset, PeerKind::Relay, LAT_P99);
        let mut best: Option<(PeerKind, f64)> = None;
        // The peers are the servers people run; the forwarder (no document, no disk) is the
        // floor, shown beside them but not a peer to beat on latency.
        for p in [PeerKind::YWebsocketServer, PeerKind::YSweet] {
            if let Some(v) = get(preset, p, LAT_P99)
                && best.is_none_or(|(_, b)| v < b)
            {
                best = Some((p, v));
            }
        }
        line(
            format!("{preset}: p99 latency (ms) lower than every peer's"),
            relay_p99,
            format!(
                "{}; forwarder (floor) {}",
                best.map_or("–".into(), |(p, v)| format!("lowest peer: {p} {v:.2}")),
                get(preset, PeerKind::Forwarder, LAT_P99)
                    .map_or("–".into(), |v| format!("{v:.2}"))
            ),
            relay_p99.zip(best).map(|(r, (_, b))| r < b),
        );
    }
    let m = get(Preset::Fanout1000, PeerKind::Relay, LAT_P50);
    line(
        "fanout-1000: median latency under 10 ms".into(),
        m,
        "10 ms".into(),
        m.map(|v| v < 10.0),
    );
    let idle = get(Preset::Idle, PeerKind::Relay, M::KibPerRoom.into());
    line(
        "idle: under 10 KB per idle room with one connection (KiB)".into(),
        idle,
        "10 KB = 9.77 KiB".into(),
        idle.map(|v| v * 1024.0 < 10_000.0),
    );
    let p50 = get(Preset::JoinStorm, PeerKind::Relay, M::SyncP50S.into());
    let max = get(Preset::JoinStorm, PeerKind::Relay, M::SyncMaxS.into());
    let peak = get(Preset::JoinStorm, PeerKind::Relay, M::RssPeakMib.into());
    let full = get(Preset::JoinStorm, PeerKind::Relay, M::FirstStep2Full.into());
    let clients = get(Preset::JoinStorm, PeerKind::Relay, M::Clients.into());
    line(
        "join-storm: median under 1 s".into(),
        p50,
        "1 s".into(),
        p50.map(|v| v < 1.0),
    );
    line(
        "join-storm: all within 2 s".into(),
        max,
        "2 s".into(),
        max.map(|v| v <= 2.0),
    );
    line(
        "join-storm: peak memory under 1 GB (MiB)".into(),
        peak,
        "1 GB = 953.7 MiB".into(),
        peak.map(|v| v * 1024.0 * 1024.0 < 1e9),
    );
    line(
        "join-storm: every first sync step 2 carries the document".into(),
        full,
        clients.map_or("–".into(), |c| format!("{c:.0} joiners")),
        full.zip(clients).map(|(f, c)| f >= c),
    );
    for preset in [Preset::Durable, Preset::Durable1000] {
        let acked = get(preset, PeerKind::Relay, M::AckedPerS.into());
        let ack99 = get(preset, PeerKind::Relay, LAT_P99);
        line(
            format!("{preset}: ≥ 40,000 acknowledged updates/s"),
            acked,
            "40,000".into(),
            acked.map(|v| v >= 40_000.0),
        );
        line(
            format!("{preset}: p99 time to saved under 25 ms"),
            ack99,
            "25 ms".into(),
            ack99.map(|v| v < 25.0),
        );
    }
    let store = get(Preset::LargeDoc, PeerKind::Relay, M::StorePerDoc.into());
    let written = get(
        Preset::LargeDoc,
        PeerKind::Relay,
        M::WrittenPerUpdateByte.into(),
    );
    let rate = get(Preset::LargeDoc, PeerKind::Relay, M::IngestEditsPerS.into());
    let reload = get(Preset::LargeDoc, PeerKind::Relay, M::ReloadMs.into());
    line(
        "large-doc: store within 1.2 × the document after compaction".into(),
        store,
        "1.2".into(),
        store.map(|v| v <= 1.2),
    );
    line(
        "large-doc: under 3 bytes written per byte of updates".into(),
        written,
        "3".into(),
        written.map(|v| v < 3.0),
    );
    line(
        "large-doc: ingest ≥ 20,000 edits/s".into(),
        rate,
        "20,000".into(),
        rate.map(|v| v >= 20_000.0),
    );
    line(
        "large-doc: reload under 50 ms".into(),
        reload,
        "50 ms".into(),
        reload.map(|v| v < 50.0),
    );
    s
}
