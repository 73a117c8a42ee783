//! Webhooks: a signed JSON POST to `--webhook-url` when a document is created, changed (at most
//! once per debounce period per document) or deleted.
//!
//! Rooms hand events to a bounded queue without waiting; when it is full, events are dropped
//! and counted, so a slow or dead endpoint never holds up editing. One task debounces changes
//! and sends deliveries, each retried with backoff on its own task.
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

/// Starts the webhook task; returns the handle rooms report to.
pub fn start(url: String, secret: Vec<u8>, size_of: SizeOf, metrics: Arc<Metrics>) -> Webhooks {
    let (tx, rx) = mpsc::channel(QUEUE);
    let sender = Arc::new(Sender {
        url,
        secret,
        metrics: metrics.clone(),
    });
    tokio::spawn(dispatch(rx, sender, size_of));
    Webhooks { tx, metrics }
}

struct Sender {
    url: String,
    secret: Vec<u8>,
    metrics: Arc<Metrics>,
}

/// Debounces changes per document, sends everything else at once.
async fn dispatch(mut rx: mpsc::Receiver<Queued>, sender: Arc<Sender>, size_of: SizeOf) {
    let mut due: HashMap<Arc<str>, (Instant, Option<ChangeFlag>)> = HashMap::new();
    loop {
        let next = due.values().map(|(at, _)| *at).min();
        let sleep = async {
            match next {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
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
                    deliver(&sender, &size_of, kind, &document);
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
                    deliver(&sender, &size_of, EventKind::Changed, &document);
                }
            }
        }
    }
}

fn deliver(sender: &Arc<Sender>, size_of: &SizeOf, kind: EventKind, document: &str) {
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
    let body = serde_json::to_vec(&event).expect("the event serializes");
    let sender = sender.clone();
    tokio::spawn(async move {
        let signature = format!("sha256={}", sign(&sender.secret, &body));
        let mut delay = FIRST_RETRY;
        for attempt in 1..=ATTEMPTS {
            let url = sender.url.clone();
            let (body2, signature2) = (body.clone(), signature.clone());
            let outcome =
                tokio::task::spawn_blocking(move || post(&url, &body2, &signature2)).await;
            match outcome {
                Ok(Ok(())) => {
                    tracing::debug!(document = %event.document, kind = ?event.event, "webhook delivered");
                    return;
                }
                Ok(Err(error)) => {
                    tracing::warn!(document = %event.document, attempt, %error, "webhook delivery failed");
                }
                Err(error) => {
                    tracing::warn!(document = %event.document, attempt, %error, "webhook delivery panicked");
                }
            }
            sender.metrics.error("webhook_failed_attempt");
            if attempt < ATTEMPTS {
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
        }
        sender.metrics.error("webhook_given_up");
        tracing::error!(document = %event.document, kind = ?event.event, "webhook given up after {ATTEMPTS} attempts");
    });
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
