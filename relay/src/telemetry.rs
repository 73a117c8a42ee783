//! Logging setup and the Prometheus metrics served at `/metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Installs the `tracing` subscriber: human-readable lines on standard error, filtered by
/// `RUST_LOG` (default: `info`, with per-message detail kept out).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| LossyStderr(std::io::stderr()))
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// Standard error that drops what it cannot write. When the reader of the relay's standard
/// error is gone (a log pipe that died, `relay serve 2>&1 | head`), `tracing-subscriber` answers
/// a failed write by printing a notice with `eprintln!`, which panics on the same broken pipe:
/// every task that logged died there, the signal handler's among them, so SIGTERM no longer
/// stopped the relay. Logs nobody can read are dropped instead.
struct LossyStderr(std::io::Stderr);

impl std::io::Write for LossyStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        Ok(self.0.write(buf).unwrap_or(buf.len()))
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = self.0.flush();
        Ok(())
    }
}

/// A label naming why something happened.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Reason {
    /// The reason, one of a fixed set of names.
    pub reason: &'static str,
}

/// Every metric the relay exports. Cheap to update: each is an atomic.
pub struct Metrics {
    registry: Registry,
    /// WebSocket connections open now.
    pub connections: Gauge,
    /// WebSocket connections accepted since start.
    pub connections_total: Counter,
    /// Rooms in memory now.
    pub rooms_loaded: Gauge,
    /// Updates received that changed a document.
    pub updates_in: Counter,
    /// Bytes of those updates.
    pub update_bytes_in: Counter,
    /// Frames received from clients.
    pub frames_in: Counter,
    /// Bytes of frames received.
    pub bytes_in: Counter,
    /// Frames sent to clients.
    pub frames_out: Counter,
    /// Bytes of frames sent.
    pub bytes_out: Counter,
    /// Writes per commit.
    pub commit_batch_writes: Histogram,
    /// Seconds per commit.
    pub commit_seconds: Histogram,
    /// Commits that failed (and were retried).
    pub commit_failures: Counter,
    /// Seconds per checkpoint (journal into redb's tables).
    pub checkpoint_seconds: Histogram,
    /// Checkpoints that failed (and were retried).
    pub checkpoint_failures: Counter,
    /// Compactions written.
    pub compactions: Counter,
    /// HTTP connections open now (not counting upgraded WebSockets).
    pub http_connections: Gauge,
    /// Errors by kind.
    pub errors: Family<Reason, Counter>,
    /// Connections closed, by reason.
    pub disconnects: Family<Reason, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("relay");
        let connections = Gauge::default();
        let connections_total = Counter::default();
        let rooms_loaded = Gauge::default();
        let updates_in = Counter::default();
        let update_bytes_in = Counter::default();
        let frames_in = Counter::default();
        let bytes_in = Counter::default();
        let frames_out = Counter::default();
        let bytes_out = Counter::default();
        let commit_batch_writes = Histogram::new(exponential_buckets(1.0, 2.0, 14));
        let commit_seconds = Histogram::new(exponential_buckets(0.000_125, 2.0, 16));
        let commit_failures = Counter::default();
        let checkpoint_seconds = Histogram::new(exponential_buckets(0.000_5, 2.0, 16));
        let checkpoint_failures = Counter::default();
        let compactions = Counter::default();
        let http_connections = Gauge::default();
        let errors = Family::<Reason, Counter>::default();
        let disconnects = Family::<Reason, Counter>::default();

        registry.register(
            "connections",
            "WebSocket connections open",
            connections.clone(),
        );
        registry.register(
            "connections_accepted",
            "WebSocket connections accepted since start",
            connections_total.clone(),
        );
        registry.register("rooms_loaded", "Rooms held in memory", rooms_loaded.clone());
        registry.register(
            "http_connections",
            "HTTP connections open (upgraded WebSockets not included)",
            http_connections.clone(),
        );
        registry.register(
            "updates_received",
            "Updates received that changed a document",
            updates_in.clone(),
        );
        registry.register(
            "update_bytes_received",
            "Bytes of updates received that changed a document",
            update_bytes_in.clone(),
        );
        registry.register(
            "frames_received",
            "WebSocket frames received",
            frames_in.clone(),
        );
        registry.register(
            "bytes_received",
            "Bytes of WebSocket frames received",
            bytes_in.clone(),
        );
        registry.register("frames_sent", "WebSocket frames sent", frames_out.clone());
        registry.register(
            "bytes_sent",
            "Bytes of WebSocket frames sent",
            bytes_out.clone(),
        );
        registry.register(
            "commit_batch_writes",
            "Writes (appended updates and snapshots) per store commit",
            commit_batch_writes.clone(),
        );
        registry.register(
            "commit_duration_seconds",
            "Time per store commit (a journal append), fdatasync included",
            commit_seconds.clone(),
        );
        registry.register(
            "commit_failures",
            "Store commits that failed and will be retried",
            commit_failures.clone(),
        );
        registry.register(
            "checkpoint_duration_seconds",
            "Time per checkpoint (the journal moved into the store's tables)",
            checkpoint_seconds.clone(),
        );
        registry.register(
            "checkpoint_failures",
            "Checkpoints that failed and will be retried",
            checkpoint_failures.clone(),
        );
        registry.register(
            "compactions",
            "Snapshots written by compaction",
            compactions.clone(),
        );
        registry.register("errors", "Errors, by kind", errors.clone());
        registry.register(
            "disconnects",
            "Connections closed, by reason",
            disconnects.clone(),
        );

        Metrics {
            registry,
            connections,
            connections_total,
            rooms_loaded,
            updates_in,
            update_bytes_in,
            frames_in,
            bytes_in,
            frames_out,
            bytes_out,
            commit_batch_writes,
            commit_seconds,
            commit_failures,
            checkpoint_seconds,
            checkpoint_failures,
            compactions,
            http_connections,
            errors,
            disconnects,
        }
    }

    /// Counts an error of the given kind.
    pub fn error(&self, reason: &'static str) {
        self.errors.get_or_create(&Reason { reason }).inc();
    }

    /// Counts a disconnect for the given reason.
    pub fn disconnect(&self, reason: &'static str) {
        self.disconnects.get_or_create(&Reason { reason }).inc();
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_counters_and_labels() {
        let metrics = Metrics::new();
        metrics.connections_total.inc();
        metrics.disconnect("slow_reader");
        metrics.commit_seconds.observe(0.002);
        let text = metrics.encode();
        assert!(
            text.contains("relay_connections_accepted_total 1"),
            "{text}"
        );
        assert!(
            text.contains(r#"relay_disconnects_total{reason="slow_reader"} 1"#),
            "{text}"
        );
        assert!(
            text.contains("relay_commit_duration_seconds_count 1"),
            "{text}"
        );
    }
}
