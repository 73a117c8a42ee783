//! Is the generator itself the bottleneck? Its own CPU time and the lag of its event loop.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::procfs::CpuWatch;

/// How often the lag probe wakes up.
const TICK: Duration = Duration::from_millis(5);

/// Watches the generator during a measurement.
#[derive(Debug)]
pub struct Monitor {
    cpu: CpuWatch,
    lags_us: Arc<Mutex<Vec<u32>>>,
    task: tokio::task::JoinHandle<()>,
}

/// What the monitor saw.
#[derive(Debug, Clone, Default)]
pub struct GeneratorLoad {
    /// The generator's CPU time over wall time (1.0 = one core busy all the time).
    pub cpu_fraction: f64,
    /// 99th percentile of how late a 5 ms timer fired, in ms.
    pub lag_p99_ms: f64,
    /// The worst lag, in ms.
    pub lag_max_ms: f64,
}

impl GeneratorLoad {
    /// Warnings when the generator was saturated (its figures then understate the server).
    pub fn warnings(&self) -> Vec<String> {
        let mut w = Vec::new();
        if self.cpu_fraction > 0.85 {
            w.push(format!(
                "generator saturated: it used {:.0}% of a core",
                self.cpu_fraction * 100.0
            ));
        }
        if self.lag_p99_ms > 10.0 {
            w.push(format!(
                "generator event loop lagging: p99 {:.1} ms, max {:.1} ms",
                self.lag_p99_ms, self.lag_max_ms
            ));
        }
        w
    }
}

impl Monitor {
    /// Starts watching this process.
    pub fn start() -> Self {
        let lags_us = Arc::new(Mutex::new(Vec::new()));
        let lags = lags_us.clone();
        let task = tokio::spawn(async move {
            loop {
                let before = Instant::now();
                tokio::time::sleep(TICK).await;
                let late = before.elapsed().saturating_sub(TICK);
                lags.lock()
                    .expect("lag lock")
                    .push(late.as_micros().min(u32::MAX as u128) as u32);
            }
        });
        Monitor {
            cpu: CpuWatch::start(std::process::id()),
            lags_us,
            task,
        }
    }

    /// Stops watching and returns what it saw.
    pub fn finish(self) -> GeneratorLoad {
        self.task.abort();
        let (cpu, wall) = self.cpu.read();
        let mut lags = std::mem::take(&mut *self.lags_us.lock().expect("lag lock"));
        lags.sort_unstable();
        let pick = |q: f64| -> f64 {
            if lags.is_empty() {
                return 0.0;
            }
            let i = ((lags.len() as f64 * q).ceil() as usize).clamp(1, lags.len()) - 1;
            f64::from(lags[i]) / 1000.0
        };
        GeneratorLoad {
            cpu_fraction: if wall > 0.0 { cpu / wall } else { 0.0 },
            lag_p99_ms: pick(0.99),
            lag_max_ms: pick(1.0),
        }
    }
}
