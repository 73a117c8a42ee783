//! idle: 10,000 connections in 10,000 rooms, no edits: what an idle room with one connection
//! costs in memory, and what accepting them all costs in CPU.

use std::time::{Duration, Instant};

use super::rooms::{create_rooms, join_all, room_names};
use super::{Ctx, Outcome, Size};
use crate::metric::Metric;
use crate::peers::Server;
use crate::procfs::{self, CpuWatch};
use crate::protocol::Protocol;

/// Rooms, one connection each.
fn idle_rooms(size: Size) -> usize {
    if size == Size::Full { 10_000 } else { 50 }
}

/// What the preset does, at `size`.
pub(super) fn describe(size: Size) -> String {
    format!(
        "{} connections in {} rooms, no edits",
        idle_rooms(size),
        idle_rooms(size)
    )
}

/// Runs the preset against `server`.
pub(super) async fn run(server: &Server, ctx: &Ctx, out: &mut Outcome) -> anyhow::Result<()> {
    let n = idle_rooms(ctx.size);
    let names = room_names("idle", n);
    // Settle the fresh server, then take its baseline.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (base_rss, _) = procfs::memory_kib(server.pid)?;
    let cpu = CpuWatch::start(server.pid);
    create_rooms(server, &names).await?;
    let t = Instant::now();
    let conns = join_all(server, Protocol::YWebsocket, &names, 64).await?;
    let connect_s = t.elapsed().as_secs_f64();
    let (connect_cpu, _) = cpu.read();
    let settle = if ctx.size == Size::Full { 5.0 } else { 1.0 };
    tokio::time::sleep(Duration::from_secs_f64(settle)).await;
    let (rss, hwm) = procfs::memory_kib(server.pid)?;
    out.set(Metric::Connections, conns.len() as f64);
    out.set(Metric::ConnectS, connect_s);
    out.set(Metric::ConnectCpuS, connect_cpu);
    out.set(Metric::RssBeforeMib, base_rss as f64 / 1024.0);
    out.set(Metric::RssSteadyMib, rss as f64 / 1024.0);
    out.set(Metric::RssPeakMib, hwm as f64 / 1024.0);
    out.set(
        Metric::KibPerRoom,
        (rss.saturating_sub(base_rss)) as f64 / conns.len() as f64,
    );
    out.notes.push(format!(
        "memory per idle room with one connection = (VmRSS {settle} s after the last join - VmRSS before) / rooms"
    ));
    for mut ws in conns {
        let _ = ws.close(None).await;
    }
    Ok(())
}
