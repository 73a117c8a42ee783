//! A real two-user concurrent editing session replayed through the relay: Joseph Gentle's
//! `friendsforever` trace (`tests/data/editing-traces/friendsforever.concurrent.json.gz`, CC BY
//! 4.0, attribution in the README beside it), 26,078 transactions by two agents.
//!
//! Each agent is a client with a yrs document. Each transaction is made on exactly the version it
//! was typed on: the trace names its parents, and the version they make holds every earlier
//! transaction of the agent itself and a prefix of the other agent's. Before typing, the client
//! applies the other agent's updates, as the relay delivered them, up to that prefix and no
//! further (later ones wait in its inbox). The final text on both clients, on a newcomer, and in
//! the store after a restart must be the recorded `endContent`.
//!
//! An update the relay did not forward is one that changed nothing on the relay: a deletion the
//! receiving agent had already made itself. The replay checks that every such gap is indeed
//! already in the receiver's document, so an update lost by the relay would fail the test.

use std::collections::{HashMap, VecDeque};
use std::io::Read;
use std::path::PathBuf;

use crdt::protocol::encode_update;
use futures_util::SinkExt;
use relay_tests::*;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use yrs::updates::decoder::Decode;
use yrs::{ClientID, Doc, ID, OffsetKind, Options, ReadTxn, Text, Transact, Update};

/// One transaction of the trace.
struct Txn {
    agent: usize,
    parents: Vec<usize>,
    /// (position, number deleted, inserted text), positions in Unicode code points.
    patches: Vec<(u32, u32, String)>,
}

struct Trace {
    end_content: String,
    txns: Vec<Txn>,
}

fn trace_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("data/editing-traces/friendsforever.concurrent.json.gz")
}

fn load_trace() -> Trace {
    let path = trace_path();
    let file = std::fs::File::open(&path).unwrap_or_else(|e| {
        panic!(
            "cannot open the editing trace {}: {e}. It is committed in the repository \
             (tests/data/editing-traces/).",
            path.display()
        )
    });
    let mut json = String::new();
    flate2::read::GzDecoder::new(file)
        .read_to_string(&mut json)
        .expect("a gzipped JSON trace");
    let value: serde_json::Value = serde_json::from_str(&json).expect("valid JSON");
    assert_eq!(value["kind"], "concurrent", "a concurrent trace");
    assert_eq!(value["numAgents"], 2, "two agents");
    let txns: Vec<Txn> = value["txns"]
        .as_array()
        .expect("txns")
        .iter()
        .map(|t| Txn {
            agent: t["agent"].as_u64().expect("agent") as usize,
            parents: t["parents"]
                .as_array()
                .expect("parents")
                .iter()
                .map(|p| p.as_u64().expect("a parent index") as usize)
                .collect(),
            patches: t["patches"]
                .as_array()
                .expect("patches")
                .iter()
                .map(|p| {
                    (
                        p[0].as_u64().expect("position") as u32,
                        p[1].as_u64().expect("deleted") as u32,
                        p[2].as_str().expect("inserted").to_owned(),
                    )
                })
                .collect(),
        })
        .collect();
    for txn in &txns {
        for (_, _, inserted) in &txn.patches {
            assert!(
                inserted.chars().all(|c| (c as u32) < 0x10000),
                "a character outside the Basic Multilingual Plane: positions would need code points"
            );
        }
    }
    Trace {
        end_content: value["endContent"].as_str().expect("endContent").to_owned(),
        txns,
    }
}

/// For each transaction, how many transactions of each agent its own version holds (itself
/// included). The trace is in causal order (parents come first), and each agent's transactions
/// form a chain, so a version is a prefix of each agent's transactions.
fn versions(txns: &[Txn]) -> Vec<[usize; 2]> {
    let mut out: Vec<[usize; 2]> = Vec::with_capacity(txns.len());
    let mut own = [0usize; 2];
    for (i, txn) in txns.iter().enumerate() {
        let mut v = [0usize; 2];
        for &p in &txn.parents {
            assert!(p < i, "transaction {i}: parent {p} comes later");
            v = [v[0].max(out[p][0]), v[1].max(out[p][1])];
        }
        assert_eq!(
            v[txn.agent], own[txn.agent],
            "transaction {i} is not typed on every earlier transaction of its agent"
        );
        own[txn.agent] += 1;
        v[txn.agent] += 1;
        out.push(v);
    }
    out
}

/// One agent: its client, the other agent's updates received but not applied yet, and how many
/// of the other agent's transactions its document holds.
struct Agent {
    client: Client,
    inbox: VecDeque<(usize, Vec<u8>)>,
    other_applied: usize,
}

/// What an agent sent: its updates in order, whether each inserts anything, and each one's index
/// by content (the relay forwards an update unchanged, so its bytes identify it).
#[derive(Default)]
struct Sent {
    updates: Vec<Vec<u8>>,
    inserts: Vec<bool>,
    index: HashMap<Vec<u8>, usize>,
}

/// Whether `doc` already holds everything in `update` (its insertions and its deletions).
fn holds(doc: &Doc, update: &[u8]) -> bool {
    let update = Update::decode_v1(update).expect("an update we made");
    let txn = doc.transact();
    let sv = txn.state_vector();
    let inserted = update.insertions(true);
    if inserted
        .iter()
        .any(|(client, ranges)| ranges.iter().any(|r| sv.get(client) < r.end))
    {
        return false;
    }
    let deleted = txn.snapshot().delete_set;
    update.delete_set().iter().all(|(&client, ranges)| {
        ranges.iter().all(|r| {
            r.clone()
                .all(|clock| deleted.contains(&ID::new(client, clock)))
        })
    })
}

impl Agent {
    /// Reads one message from the relay into the inbox (updates of the other agent).
    async fn receive(&mut self, other: &Sent) {
        loop {
            let frame = self.client.recv_frame().await;
            for message in decode_all(&frame) {
                if let Msg::Update(update) = message {
                    let k = *other
                        .index
                        .get(&update)
                        .expect("the relay forwards the other agent's updates unchanged");
                    self.inbox.push_back((k, update));
                    return;
                }
            }
        }
    }

    /// Brings the document to hold exactly the first `need` transactions of the other agent.
    async fn catch_up(&mut self, need: usize, other: &Sent) {
        while self.other_applied < need {
            let next = self.other_applied;
            match self.inbox.front() {
                Some((k, _)) if *k < next => {
                    // Arrived after it was found already held: applying it would change nothing.
                    self.inbox.pop_front();
                }
                Some((k, _)) if *k == next => {
                    let (_, update) = self.inbox.pop_front().expect("front");
                    apply(&self.client.doc, &update);
                    self.other_applied += 1;
                }
                Some((k, _)) => {
                    // The relay skipped `next` (it changed nothing there). It must then be a
                    // deletion this agent made already; anything else would be a lost update.
                    assert!(
                        holds(&self.client.doc, &other.updates[next]),
                        "the relay forwarded update {k} of the other agent but not update {next}, \
                         which the receiver does not have"
                    );
                    self.other_applied += 1;
                }
                // Only a deletion can be missing: an insertion always changes the relay's
                // document, so the relay forwards it.
                None if !other.inserts[next] && holds(&self.client.doc, &other.updates[next]) => {
                    // Nothing to wait for: the document is the same with or without it.
                    self.other_applied += 1;
                }
                None => self.receive(other).await,
            }
        }
    }
}

fn agent_doc(client_id: u64) -> Doc {
    let mut options = Options::with_client_id(ClientID::new(client_id));
    // Positions count code points; every character of this trace is in the Basic Multilingual
    // Plane (checked when it is loaded), where UTF-16 units are code points.
    options.offset_kind = OffsetKind::Utf16;
    Doc::with_options(options)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_trace_replayed_through_the_relay_ends_as_recorded() {
    let trace = load_trace();
    let versions = versions(&trace.txns);
    let mut relay = TestRelay::start().await;
    let room = "friendsforever";
    let mut agents = Vec::new();
    for id in [1, 2] {
        agents.push(Agent {
            client: Client::join_with_doc(&relay.ws_url(room), agent_doc(id)).await,
            inbox: VecDeque::new(),
            other_applied: 0,
        });
    }
    let mut sent = [Sent::default(), Sent::default()];
    let started = std::time::Instant::now();
    for (i, txn) in trace.txns.iter().enumerate() {
        let a = txn.agent;
        let b = 1 - a;
        let (mine, others) = if a == 0 {
            let (x, y) = sent.split_at_mut(1);
            (&mut x[0], &y[0])
        } else {
            let (x, y) = sent.split_at_mut(1);
            (&mut y[0], &x[0])
        };
        let agent = &mut agents[a];
        agent.catch_up(versions[i][b], others).await;
        let doc = &agent.client.doc;
        let text = doc.get_or_insert_text(TEXT);
        let update = {
            let mut t = doc.transact_mut();
            for (position, deleted, inserted) in &txn.patches {
                let len = text.len(&t);
                assert!(
                    position + deleted <= len,
                    "transaction {i}: patch at {position} (-{deleted}) on a text of {len}: \
                     not the version it was typed on"
                );
                if *deleted > 0 {
                    text.remove_range(&mut t, *position, *deleted);
                }
                if !inserted.is_empty() {
                    text.insert(&mut t, *position, inserted);
                }
            }
            t.encode_update_v1()
        };
        mine.index.insert(update.clone(), mine.updates.len());
        mine.updates.push(update.clone());
        mine.inserts.push(
            txn.patches
                .iter()
                .any(|(_, _, inserted)| !inserted.is_empty()),
        );
        // Queued without a flush: the socket is flushed when the other agent is about to need
        // it (below), so runs of one agent's typing go out in a few writes.
        within(
            "queueing an update",
            agent
                .client
                .sink
                .feed(WsMessage::Binary(encode_update(&update).into())),
        )
        .await
        .expect("queue an update");
        if trace.txns.get(i + 1).is_none_or(|next| next.agent != a) {
            within("flushing", agent.client.sink.flush())
                .await
                .expect("flush");
        }
    }
    // Both agents take in everything the other sent.
    for a in 0..2 {
        let other = &sent[1 - a];
        agents[a].catch_up(other.updates.len(), other).await;
    }
    eprintln!(
        "{} transactions ({} and {}) replayed in {:?}",
        trace.txns.len(),
        sent[0].updates.len(),
        sent[1].updates.len(),
        started.elapsed()
    );
    for (a, agent) in agents.iter().enumerate() {
        assert!(
            agent.client.text() == trace.end_content,
            "agent {a}'s text differs from endContent: {}",
            first_difference(&agent.client.text(), &trace.end_content)
        );
    }
    // What the relay holds: a newcomer, then the store after a restart.
    for agent in &mut agents {
        agent.client.save(1).await;
    }
    let mut newcomer = relay.join(room).await;
    newcomer.sync().await;
    assert!(
        newcomer.text() == trace.end_content,
        "a newcomer's text: {}",
        first_difference(&newcomer.text(), &trace.end_content)
    );
    assert_eq!(
        newcomer.doc.transact().state_vector(),
        agents[0].client.doc.transact().state_vector()
    );
    drop((agents, newcomer));
    relay.restart().await;
    relay.stop().await;
    let stored = relay.stored_text(room);
    assert!(
        stored == trace.end_content,
        "the stored text: {}",
        first_difference(&stored, &trace.end_content)
    );
}

/// Where two long texts first differ, for a readable failure.
fn first_difference(actual: &str, expected: &str) -> String {
    let at = actual
        .chars()
        .zip(expected.chars())
        .take_while(|(x, y)| x == y)
        .count();
    let around = |s: &str| {
        s.chars()
            .skip(at.saturating_sub(30))
            .take(60)
            .collect::<String>()
    };
    format!(
        "lengths {} and {} (expected), first difference at character {at}: {:?} against {:?}",
        actual.chars().count(),
        expected.chars().count(),
        around(actual),
        around(expected)
    )
}
