//! Real-world editing traces (`josephg/editing-traces`, sequential format) replayed into yrs
//! documents, one update per edit.

use std::io::Read;
use std::path::Path;

use anyhow::{Context, bail};
use serde::Deserialize;
use yrs::updates::decoder::Decode;
use yrs::{Doc, GetString, ReadTxn, StateVector, Text, Transact};

/// A sequential trace: apply every patch in order to `start_content` to get `end_content`.
#[derive(Debug, Deserialize)]
pub struct Trace {
    /// The text before the first edit.
    #[serde(rename = "startContent")]
    pub start_content: String,
    /// The text after the last edit.
    #[serde(rename = "endContent")]
    pub end_content: String,
    /// The transactions.
    pub txns: Vec<TraceTxn>,
}

/// One transaction of a trace.
#[derive(Debug, Deserialize)]
pub struct TraceTxn {
    /// `[position, deleted, inserted]` in code points.
    pub patches: Vec<(usize, usize, String)>,
}

impl Trace {
    /// Reads a `.json.gz` trace.
    ///
    /// # Errors
    /// When the file cannot be read or parsed.
    pub fn load(path: &Path) -> anyhow::Result<Trace> {
        let file = std::fs::File::open(path).with_context(|| format!("open {}", path.display()))?;
        let mut json = String::new();
        flate2::read::GzDecoder::new(file)
            .read_to_string(&mut json)
            .with_context(|| format!("gunzip {}", path.display()))?;
        let trace: Trace = serde_json::from_str(&json).context("parse the trace")?;
        if !trace.start_content.is_empty() {
            bail!("traces that start with content are not supported");
        }
        if !trace.end_content.is_ascii() {
            bail!("only ASCII traces are supported (positions are code points)");
        }
        Ok(trace)
    }

    /// The patches in order, at most `limit`.
    pub fn patches(&self, limit: Option<usize>) -> impl Iterator<Item = &(usize, usize, String)> {
        self.txns
            .iter()
            .flat_map(|t| t.patches.iter())
            .take(limit.unwrap_or(usize::MAX))
    }
}

/// Replays the first `limit` edits of `trace` into the text `text_name` of `doc`, one
/// transaction per edit, calling `emit` (if any) with the update (v1) of each edit.
pub fn replay(
    trace: &Trace,
    limit: Option<usize>,
    doc: &Doc,
    text_name: &str,
    mut emit: Option<&mut dyn FnMut(Vec<u8>)>,
) {
    let text = doc.get_or_insert_text(text_name);
    for (pos, deleted, inserted) in trace.patches(limit) {
        let mut txn = doc.transact_mut();
        if *deleted > 0 {
            text.remove_range(&mut txn, *pos as u32, *deleted as u32);
        }
        if !inserted.is_empty() {
            text.insert(&mut txn, *pos as u32, inserted);
        }
        if let Some(emit) = emit.as_mut() {
            emit(txn.encode_update_v1());
        }
    }
}

/// The text `name` of `doc`.
pub fn text_of(doc: &Doc, name: &str) -> String {
    let text = doc.get_or_insert_text(name);
    text.get_string(&doc.transact())
}

/// A large document built from real edits: the trace replayed again and again, each replay
/// into its own text (`t0`, `t1`, ...) by its own client, until the encoded state reaches
/// `target_bytes`. Returns one update per replay (what a client uploads) and the size of the
/// whole state (all replays applied to one document, encoded).
pub fn large_document(
    trace: &Trace,
    edits_per_replay: Option<usize>,
    target_bytes: usize,
) -> (Vec<Vec<u8>>, usize) {
    let mut chunks = Vec::new();
    let mut approx = 0;
    let mut i = 0u64;
    // The replays are independent (own client, own root text), so the whole state is about the
    // sum of their states; the exact size is computed once at the end.
    while approx < target_bytes {
        let author = Doc::with_client_id(1000 + i);
        replay(trace, edits_per_replay, &author, &format!("t{i}"), None);
        let update = author
            .transact()
            .encode_state_as_update_v1(&StateVector::default());
        approx += update.len();
        chunks.push(update);
        i += 1;
    }
    let doc = Doc::new();
    {
        let mut txn = doc.transact_mut();
        for c in &chunks {
            txn.apply_update(yrs::Update::decode_v1(c).expect("own update decodes"))
                .expect("own update applies");
        }
    }
    let size = doc
        .transact()
        .encode_state_as_update_v1(&StateVector::default())
        .len();
    (chunks, size)
}
