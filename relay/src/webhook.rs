//! Webhooks: a signed JSON POST to `--webhook-url` when a document is created, changed (at most
//! once per debounce period per document) or deleted.
//!
//! Rooms hand events to a bounded queue without waiting; when it is full, events are dropped
//! and counted, so a slow or dead endpoint never holds up editing. One task debounces changes
//! and hands deliveries to a few worker threads of their own, through a second bounded queue
//! (full: dropped and counted too). Each worker posts and retries with backoff. They are not
//! the runtime's blocking pool, which loads rooms: an endpoint that never answers once tied up
//! that whole pool, and joining a new room waited seconds for a free thread.
//!
//! The body is signed with HMAC-SHA256 (key: `--webhook-secret`, or the first `--secret` without
//! its `KID:`), sent as `X-Relay-Signature: sha256=<hex>` so the receiver can check it.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use hmac::{Hmac, Mac};
use serde::Serialize;
use sha2::Sha256;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::clock::sleep_until_opt;
use crate::telemetry::Metrics;

/// The signature header.
pub const SIGNATURE_HEADER: &str = "X-Relay-Signature";
/// How long changes to one document are gathered into one event.
pub const DEBOUNCE: Duration = Duration::from_secs(2);
/// Attempts per delivery (the first and five retries) before it is given up and logged.
const ATTEMPTS: u32 = 6;
/// First retry delay, doubled each time.
const FIRST_RETRY: Duration = Duration::from_millis(500);
/// Events queued before new ones are dropped.
const QUEUE: usize = 4096;
/// Time limit of one HTTP attempt.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Threads that post deliveries; at most this many requests are in flight.
const WORKERS: usize = 2;
/// Deliveries waiting for a worker before new ones are dropped.
const DELIVERY_QUEUE: usize = 256;

/// What happened to a document.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// Its first update was committed.
    Created,
    /// Updates were committed (debounced).
    Changed,
    /// It was deleted.
    Deleted,
}

/// The JSON body of a webhook.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    /// `created`, `changed` or `deleted`.
    pub event: EventKind,
    /// The document name.
    pub document: String,
    /// Bytes stored for it (0 once deleted).
    pub size_bytes: u64,
    /// When the relay sent the event, in milliseconds since the Unix epoch.
    pub at_ms: u64,
}

/// A room's "changed since the last report" flag: the room raises it and reports only if it
/// was down; the dispatcher lowers it just before reading the size it sends. So each room has at
/// most one change event queued, and a change after a report is never missed.
pub type ChangeFlag = Arc<AtomicBool>;

type Queued = (EventKind, Arc<str>, Option<ChangeFlag>);

/// The rooms' handle for reporting events.
#[derive(Clone)]
pub struct Webhooks {
    tx: mpsc::Sender<Queued>,
    metrics: Arc<Metrics>,
}

impl Webhooks {
    /// Reports that a document was created or deleted, without waiting; dropped (and counted)
    /// when the queue is full.
    pub fn notify(&self, kind: EventKind, document: &Arc<str>) {
        self.queue((kind, document.clone(), None));
    }

    /// Reports committed changes to a document, unless a report is already queued.
    pub fn changed(&self, document: &Arc<str>, flag: &ChangeFlag) {
        if !flag.swap(true, Ordering::AcqRel) {
            self.queue((EventKind::Changed, document.clone(), Some(flag.clone())));
        }
    }

    fn queue(&self, event: Queued) {
        if let Err(
            mpsc::error::TrySendError::Full((_, _, flag))
            | mpsc::error::TrySendError::Closed((_, _, flag)),
        ) = self.tx.try_send(event)
        {
            if let Some(flag) = flag {
                flag.store(false, Ordering::Release);
            }
            self.metrics.error("webhook_queue_full");
        }
    }
}

/// Signs `body` with `secret`: the hex HMAC-SHA256.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(body);
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Looks up a document's stored size when an event is sent.
pub type SizeOf = Arc<dyn Fn(&str) -> u64 + Send + Sync>;

/// Starts the webhook task and its delivery workers; returns the handle rooms report to.
///
/// # Errors
/// When the operating system cannot start a thread.
pub fn start(
    url: String,
    secret: Vec<u8>,
    size_of: SizeOf,
    metrics: Arc<Metrics>,
) -> std::io::Result<Webhooks> {
    let (tx, rx) = mpsc::channel(QUEUE);
    let (deliveries, queue) = std::sync::mpsc::sync_channel::<Event>(DELIVERY_QUEUE);
    let sender = Arc::new(Sender {
        url,
        secret,
        metrics: metrics.clone(),
    });
    // The workers share one queue; each holds the lock only while it waits for the next job.
    let queue = Arc::new(std::sync::Mutex::new(queue));
    for i in 0..WORKERS {
        let (queue, sender) = (queue.clone(), sender.clone());
        std::thread::Builder::new()
            .name(format!("webhook-{i}"))
            .spawn(move || work(&queue, &sender))?;
    }
    tokio::spawn(dispatch(rx, deliveries, size_of, metrics.clone()));
    Ok(Webhooks { tx, metrics })
}

struct Sender {
    url: String,
    secret: Vec<u8>,
    metrics: Arc<Metrics>,
}

/// A delivery worker: posts each event, retrying with backoff, until the queue closes (every
/// sender, the dispatcher's, is gone).
fn work(queue: &std::sync::Mutex<std::sync::mpsc::Receiver<Event>>, sender: &Sender) {
    loop {
        let next = queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .recv();
        let Ok(event) = next else {
            return;
        };
        post_with_retries(sender, &event);
    }
}

fn post_with_retries(sender: &Sender, event: &Event) {
    let body = serde_json::to_vec(event).expect("the event serializes");
    let signature = format!("sha256={}", sign(&sender.secret, &body));
    let mut delay = FIRST_RETRY;
    for attempt in 1..=ATTEMPTS {
        match post(&sender.url, &body, &signature) {
            Ok(()) => {
                tracing::debug!(document = %event.document, kind = ?event.event, "webhook delivered");
                return;
            }
            Err(error) => {
                tracing::warn!(document = %event.document, attempt, %error, "webhook delivery failed");
            }
        }
        sender.metrics.error("webhook_failed_attempt");
        if attempt < ATTEMPTS {
            std::thread::sleep(delay);
            delay *= 2;
        }
    }
    sender.metrics.error("webhook_given_up");
    tracing::error!(document = %event.document, kind = ?event.event, "webhook given up after {ATTEMPTS} attempts");
}

/// Debounces changes per document, sends everything else at once.
async fn dispatch(
    mut rx: mpsc::Receiver<Queued>,
    deliveries: std::sync::mpsc::SyncSender<Event>,
    size_of: SizeOf,
    metrics: Arc<Metrics>,
) {
    let deliver = |kind, document: &str| {
        let event = Event {
            event: kind,
            document: document.to_owned(),
            size_bytes: if kind == EventKind::Deleted {
                0
            } else {
                size_of(document)
            },
            at_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
        };
        if deliveries.try_send(event).is_err() {
            tracing::warn!(document, ?kind, "webhook workers are behind; event dropped");
            metrics.error("webhook_queue_full");
        }
    };
    let mut due: HashMap<Arc<str>, (Instant, Option<ChangeFlag>)> = HashMap::new();
    loop {
        let next = due.values().map(|(at, _)| *at).min();
        let sleep = sleep_until_opt(next);
        tokio::select! {
            event = rx.recv() => match event {
                Some((EventKind::Changed, document, flag)) => {
                    due.entry(document).or_insert_with(|| (Instant::now() + DEBOUNCE, flag));
                }
                Some((kind, document, _)) => {
                    if kind == EventKind::Deleted
                        && let Some((_, Some(flag))) = due.remove(&document)
                    {
                        flag.store(false, Ordering::Release);
                    }
                    deliver(kind, &document);
                }
                None => break,
            },
            () = sleep => {
                let now = Instant::now();
                let ready: Vec<Arc<str>> = due
                    .iter()
                    .filter(|(_, (at, _))| *at <= now)
                    .map(|(d, _)| d.clone())
                    .collect();
                for document in ready {
                    if let Some((_, Some(flag))) = due.remove(&document) {
                        // Lowered before the size is read: a commit after this reports again.
                        flag.store(false, Ordering::Release);
                    }
                    deliver(EventKind::Changed, &document);
                }
            }
        }
    }
}

fn post(url: &str, body: &[u8], signature: &str) -> Result<(), String> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(REQUEST_TIMEOUT))
        .http_status_as_error(false)
        .build()
        .into();
    let response = agent
        .post(url)
        .header("content-type", "application/json")
        .header(SIGNATURE_HEADER, signature)
        .send(body)
        .map_err(|e| e.to_string())?;
    let status = response.status();
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("HTTP {status}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_the_hex_hmac_sha256_of_the_body() {
        // RFC 4231, test case 2.
        assert_eq!(
            sign(b"Jefe", b"what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
