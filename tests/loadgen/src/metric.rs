//! The named figures a scenario measures: one key per figure, defined here and nowhere else, used
//! by the scenarios that set them, the report that prints them and the JSON results (where each
//! is written under its [key](Metric::key)).

use std::fmt;
use std::str::FromStr;

macro_rules! metrics {
    ($($(#[doc = $doc:literal])+ $variant:ident = $key:literal,)+) => {
        /// A named figure of an [`Outcome`](crate::scenario::Outcome).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Metric {
            $($(#[doc = $doc])+ $variant,)+
        }

        impl Metric {
            /// Every figure, in the order of this list.
            pub const ALL: &[Metric] = &[$(Metric::$variant),+];

            /// Its key in the JSON results and in summaries.
            pub fn key(self) -> &'static str {
                match self {
                    $(Metric::$variant => $key,)+
                }
            }
        }
    };
}

metrics! {
    // Traffic.
    /// Updates the writers sent.
    UpdatesSent = "updates_sent",
    /// Updates sent per second of the measurement.
    UpdatesPerS = "updates_per_s",
    /// Updates that reached a client other than their writer.
    Deliveries = "deliveries",
    /// Deliveries there should be: every update to every other client of its room.
    DeliveriesExpected = "deliveries_expected",
    /// Updates a server sent back to their own writer (not counted as deliveries).
    Echoes = "echoes",
    /// Updates acknowledged (the relay's *saved*; for peers without it, delivery to the observer).
    AckedUpdates = "acked_updates",
    /// Acknowledged updates per second.
    AckedPerS = "acked_per_s",
    /// Median ms from sending an update to the server's acknowledgement of it (Hocuspocus'
    /// SyncStatus, in the timed presets).
    AckP50Ms = "ack_p50_ms",
    /// 95th percentile of the same, ms.
    AckP95Ms = "ack_p95_ms",
    /// 99th percentile of the same, ms.
    AckP99Ms = "ack_p99_ms",

    // Connections and joins.
    /// Connections held open (idle).
    Connections = "connections",
    /// Seconds to open every connection.
    ConnectS = "connect_s",
    /// Server CPU seconds spent accepting every connection (idle).
    ConnectCpuS = "connect_cpu_s",
    /// Clients joining at once (join storm).
    Clients = "clients",
    /// Joiners that received the whole document (join storm).
    Synced = "synced",
    /// Joiners whose first sync step 2 carried the whole document (join storm).
    FirstStep2Full = "first_step2_full",
    /// Median seconds from the storm's start to a joiner holding the document.
    SyncP50S = "sync_p50_s",
    /// Longest seconds from the storm's start to a joiner holding the document.
    SyncMaxS = "sync_max_s",
    /// The join storm's document, MiB encoded.
    DocMib = "doc_mib",
    /// Seconds to upload the join storm's document.
    UploadS = "upload_s",

    // What the server used.
    /// Server CPU seconds (user + system) over the measurement.
    ServerCpuS = "server_cpu_s",
    /// Wall-clock seconds the server CPU was measured over.
    MeasureWallS = "measure_wall_s",
    /// Server CPU seconds per 1,000 deliveries.
    CpuSPer1kDeliveries = "cpu_s_per_1k_deliveries",
    /// Server CPU seconds per 1,000 updates (sent, or acknowledged in the durable preset).
    CpuSPer1kUpdates = "cpu_s_per_1k_updates",
    /// CPU seconds of the nats-servers (cluster mode) over the measurement.
    NatsCpuS = "nats_cpu_s",
    /// nats-servers' CPU seconds per 1,000 deliveries (cluster mode).
    NatsCpuSPer1kDeliveries = "nats_cpu_s_per_1k_deliveries",
    /// nats-servers' CPU seconds per 1,000 updates (cluster mode).
    NatsCpuSPer1kUpdates = "nats_cpu_s_per_1k_updates",
    /// Sum of the nats-servers' VmRSS at the end of the measurement, MiB (cluster mode).
    NatsRssMib = "nats_rss_mib",
    /// Server VmRSS before the clients came, MiB.
    RssBeforeMib = "rss_before_mib",
    /// Server VmRSS at the end of the measurement, MiB.
    RssSteadyMib = "rss_steady_mib",
    /// Server VmHWM (peak resident memory), MiB.
    RssPeakMib = "rss_peak_mib",
    /// Server memory per idle room with one connection, KiB.
    KibPerRoom = "kib_per_room",

    // The generator.
    /// Share of a core the generator used.
    GenCpuFraction = "gen_cpu_fraction",
    /// 99th percentile of the generator's event-loop lag, ms.
    GenLagP99Ms = "gen_lag_p99_ms",

    // The large document.
    /// Edits of the trace replayed (one update each).
    Edits = "edits",
    /// Edits the server had applied when the ingest ended.
    EditsApplied = "edits_applied",
    /// Seconds until the server had applied every edit.
    IngestS = "ingest_s",
    /// Edits applied per second.
    IngestEditsPerS = "ingest_edits_per_s",
    /// Seconds until the relay's *saved* for the whole trace.
    IngestDurableS = "ingest_durable_s",
    /// Server CPU seconds over the ingest.
    IngestCpuS = "ingest_cpu_s",
    /// The document encoded as one update, bytes.
    DocBytes = "doc_bytes",
    /// The updates sent, bytes.
    UpdateBytes = "update_bytes",
    /// The store on disk after the ingest (and the relay's compaction), bytes.
    StoreBytesAfterIngest = "store_bytes_after_ingest",
    /// The store on disk at the end, after the reload, bytes.
    StoreBytes = "store_bytes",
    /// The store at the end ÷ the encoded document.
    StorePerDoc = "store_per_doc",
    /// Bytes the server processes wrote to storage (ingest, compaction, reload).
    WrittenBytes = "written_bytes",
    /// Bytes written ÷ update bytes sent.
    WrittenPerUpdateByte = "written_per_update_byte",
    /// Milliseconds from the restart to a client holding the whole document.
    ReloadMs = "reload_ms",
}

impl fmt::Display for Metric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `pad`, so that summaries can align keys with `{:<28}`.
        f.pad(self.key())
    }
}

impl FromStr for Metric {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Metric::ALL
            .iter()
            .copied()
            .find(|m| m.key() == s)
            .ok_or_else(|| format!("unknown metric {s:?}"))
    }
}

impl serde::Serialize for Metric {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.key())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_is_unique_and_parses_back() {
        let mut keys: Vec<&str> = Metric::ALL.iter().map(|m| m.key()).collect();
        for m in Metric::ALL {
            assert_eq!(m.key().parse::<Metric>(), Ok(*m));
        }
        keys.sort_unstable();
        keys.dedup();
        assert_eq!(keys.len(), Metric::ALL.len(), "a key is used twice");
    }

    #[test]
    fn display_pads_like_a_string() {
        assert_eq!(format!("{:<12}|", Metric::Edits), "edits       |");
    }
}
