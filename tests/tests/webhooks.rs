//! Webhooks: a local HTTP receiver gets `created`, debounced `changed` and `deleted` events, each
//! signed with HMAC-SHA256 over the body; failed deliveries are retried with backoff and never
//! slow editing down.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use relay::auth::Access;
use relay::config::{Config, Secret};
use relay::webhook::{DEBOUNCE, sign};
use relay_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// One request the receiver got.
#[derive(Debug)]
struct Delivery {
    /// `POST /hook HTTP/1.1`.
    request_line: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    event: serde_json::Value,
    /// The status the receiver answered with.
    answered: u16,
    /// When it arrived.
    at: Instant,
}

impl Delivery {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn kind(&self) -> &str {
        self.event["event"].as_str().unwrap_or("?")
    }

    fn document(&self) -> &str {
        self.event["document"].as_str().unwrap_or("?")
    }

    fn size(&self) -> u64 {
        self.event["size_bytes"]
            .as_u64()
            .unwrap_or_else(|| panic!("size_bytes is a number: {}", self.event))
    }
}

/// A tiny HTTP server on a loopback port that records every request and answers each with the
/// next status of its script (200 once the script is used up).
struct Receiver {
    url: String,
    rx: mpsc::UnboundedReceiver<Delivery>,
}

impl Receiver {
    async fn start(script: &[u16]) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}/hook", listener.local_addr().expect("address"));
        let script = Arc::new(Mutex::new(script.iter().copied().collect::<VecDeque<_>>()));
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (tx, script) = (tx.clone(), script.clone());
                tokio::spawn(async move {
                    if let Err(error) = serve(stream, &tx, &script).await {
                        eprintln!("webhook receiver: {error}");
                    }
                });
            }
        });
        Receiver { url, rx }
    }

    /// The next request, failing the test with `what` after `limit`.
    async fn next_within(&mut self, limit: Duration, what: &str) -> Delivery {
        within_for(limit, what, self.rx.recv())
            .await
            .expect("the receiver runs")
    }

    async fn next(&mut self) -> Delivery {
        self.next_within(DEADLINE, "a webhook request").await
    }
}

async fn serve(
    mut stream: TcpStream,
    tx: &mpsc::UnboundedSender<Delivery>,
    script: &Mutex<VecDeque<u16>>,
) -> std::io::Result<()> {
    let invalid =
        |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned());
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(()); // a connection without a request
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8(buf[..head_end].to_vec()).map_err(|_| invalid("head"))?;
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default().to_owned();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .ok_or_else(|| invalid("the webhook request has no Content-Length"))?;
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < length {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(invalid("closed inside the body"));
        }
        body.extend_from_slice(&chunk[..n]);
    }
    body.truncate(length);
    let answered = script
        .lock()
        .expect("script lock")
        .pop_front()
        .unwrap_or(200);
    let response = format!(
        "HTTP/1.1 {answered} {}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        if answered == 200 { "OK" } else { "Error" }
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await?;
    // Checked by the test (a panic here would only end this task).
    let event = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
    let _ = tx.send(Delivery {
        request_line,
        headers,
        body,
        event,
        answered,
        at: Instant::now(),
    });
    Ok(())
}

/// Asserts that the delivery is a JSON POST to the URL, signed with `secret`.
fn assert_signed(delivery: &Delivery, secret: &str) {
    assert!(
        delivery.request_line.starts_with("POST /hook "),
        "webhooks are POSTed to the URL: {}",
        delivery.request_line
    );
    assert!(
        delivery.event.is_object(),
        "the body is a JSON object: {:?}",
        String::from_utf8_lossy(&delivery.body)
    );
    let expected = format!("sha256={}", sign(secret.as_bytes(), &delivery.body));
    assert_eq!(
        delivery.header("x-relay-signature"),
        Some(expected.as_str()),
        "signature of {}",
        delivery.event
    );
    assert!(
        delivery
            .header("content-type")
            .is_some_and(|t| t.starts_with("application/json")),
        "{:?}",
        delivery.headers
    );
}

fn with_webhook(url: &str, webhook_secret: Option<&str>) -> impl FnOnce(&mut Config) + use<> {
    let url = url.to_owned();
    let webhook_secret = webhook_secret.map(|s| Secret(s.to_owned()));
    move |config| {
        config.secrets = vec![Secret(TEST_SECRET.into())];
        config.webhook_url = Some(url);
        config.webhook_secret = webhook_secret;
    }
}

/// The stored size of a document, as the API lists it.
async fn listed_size(relay: &TestRelay, name: &str) -> u64 {
    let response = relay
        .request_with_token("GET", "/api/docs", &token(None, Access::Admin), b"")
        .await;
    assert_eq!(response.status, 200, "{}", response.text());
    let list: serde_json::Value = serde_json::from_slice(&response.body).expect("JSON");
    list["docs"]
        .as_array()
        .expect("docs")
        .iter()
        .find(|d| d["name"] == name)
        .and_then(|d| d["size_bytes"].as_u64())
        .unwrap_or_else(|| panic!("{name} is listed: {list}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn created_changed_and_deleted_events_are_signed_debounced_and_sized() {
    const HOOK_SECRET: &str = "webhook-signing-secret";
    let mut hook = Receiver::start(&[]).await;
    let relay = TestRelay::start_with(with_webhook(&hook.url, Some(HOOK_SECRET))).await;
    let mut all = Vec::new();

    // A burst of 20 edits, each committed on its own.
    let mut writer = relay
        .join_with_token("wh", &token(Some("wh"), Access::Write))
        .await;
    let burst_start = Instant::now();
    for i in 0..20 {
        writer.edit(&format!("edit {i}; ")).await;
        writer.save(i).await;
    }
    let burst = burst_start.elapsed();
    assert!(
        burst < DEBOUNCE,
        "test premise: the burst ({burst:?}) fits in one debounce period ({DEBOUNCE:?})"
    );

    let created = hook.next().await;
    assert_eq!(
        (created.kind(), created.document()),
        ("created", "wh"),
        "{}",
        created.event
    );
    assert!(created.size() > 0, "{}", created.event);
    assert!(created.event["at_ms"].as_u64().is_some_and(|t| t > 0));
    let changed = hook.next().await;
    assert_eq!(
        (changed.kind(), changed.document()),
        ("changed", "wh"),
        "{}",
        changed.event
    );
    assert_eq!(
        changed.size(),
        listed_size(&relay, "wh").await,
        "the size after the whole burst"
    );
    assert!(
        changed.at.duration_since(created.at) + Duration::from_millis(100) >= DEBOUNCE,
        "changes are reported after the debounce period, not at once: {:?}",
        changed.at.duration_since(created.at)
    );
    all.extend([created, changed]);

    // Once for the burst: a sentinel document edited now reports its change a debounce period
    // later, after any second report for the burst would have come.
    let mut sentinel = relay
        .join_with_token("wh-sentinel", &token(Some("wh-sentinel"), Access::Write))
        .await;
    sentinel.edit("sentinel").await;
    sentinel.save(1).await;
    loop {
        let delivery = hook.next().await;
        let done = delivery.kind() == "changed" && delivery.document() == "wh-sentinel";
        assert!(
            delivery.document() == "wh-sentinel",
            "no further event for the burst: {}",
            delivery.event
        );
        all.push(delivery);
        if done {
            break;
        }
    }
    assert_eq!(
        all.iter()
            .filter(|d| d.document() == "wh-sentinel")
            .map(Delivery::kind)
            .collect::<Vec<_>>(),
        vec!["created", "changed"]
    );

    // Deleting reports at once, with size 0.
    let response = relay
        .request_with_token("DELETE", "/api/docs/wh", &token(None, Access::Admin), b"")
        .await;
    assert_eq!(response.status, 200, "{}", response.text());
    let deleted = hook.next().await;
    assert_eq!(
        (deleted.kind(), deleted.document(), deleted.size()),
        ("deleted", "wh", 0),
        "{}",
        deleted.event
    );
    all.push(deleted);

    for delivery in &all {
        assert_signed(delivery, HOOK_SECRET);
        assert_eq!(delivery.answered, 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_deliveries_are_retried_with_backoff_and_never_slow_editing() {
    // Two failures, then success.
    let mut hook = Receiver::start(&[500, 500]).await;
    // Without --webhook-secret, events are signed with the first --secret.
    let relay = TestRelay::start_with(with_webhook(&hook.url, None)).await;
    let mut writer = relay
        .join_with_token("retry", &token(Some("retry"), Access::Write))
        .await;
    writer.edit("first").await;
    writer.save(0).await;

    let first = hook.next().await;
    assert_eq!((first.kind(), first.answered), ("created", 500));
    // Editing goes on at full speed while the delivery waits for its retries.
    let mut slowest = Duration::ZERO;
    for i in 1..=5 {
        let start = Instant::now();
        writer.edit(&format!(" {i}")).await;
        writer.save(i).await;
        slowest = slowest.max(start.elapsed());
    }
    assert!(
        slowest < Duration::from_millis(400),
        "a save acknowledgement took {slowest:?} while a webhook was failing"
    );
    let second = hook.next().await;
    assert_eq!((second.kind(), second.answered), ("created", 500));
    let third = hook.next().await;
    assert_eq!((third.kind(), third.answered), ("created", 200));
    assert_eq!(first.body, second.body, "the same event is retried");
    assert_eq!(first.body, third.body, "the same event is retried");
    let (gap1, gap2) = (second.at - first.at, third.at - second.at);
    assert!(
        gap1 >= Duration::from_millis(400) && gap2 >= Duration::from_millis(900) && gap2 > gap1,
        "retries back off: {gap1:?}, then {gap2:?}"
    );
    // The change report still comes, once.
    let changed = hook.next().await;
    assert_eq!(
        (changed.kind(), changed.document(), changed.answered),
        ("changed", "retry", 200)
    );
    assert_eq!(changed.size(), listed_size(&relay, "retry").await);
    for delivery in [&first, &second, &third, &changed] {
        assert_signed(delivery, TEST_SECRET);
    }
    relay
        .wait_metric(
            r#"relay_errors_total{reason="webhook_failed_attempt"}"#,
            |v| v == 2.0,
        )
        .await;
    assert_eq!(
        relay
            .metric(r#"relay_errors_total{reason="webhook_given_up"}"#)
            .await,
        None
    );
    // The edits made meanwhile are all there.
    let mut reader = relay
        .join_with_token("retry", &token(Some("retry"), Access::Read))
        .await;
    reader.sync().await;
    assert_eq!(reader.text(), "first 1 2 3 4 5");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_document_deleted_while_its_change_report_waits_reports_later_changes() {
    let mut hook = Receiver::start(&[]).await;
    let relay = TestRelay::start_with(with_webhook(&hook.url, None)).await;
    let write = token(Some("again"), Access::Write);
    let mut writer = relay.join_with_token("again", &write).await;
    writer.edit("first life").await;
    writer.save(1).await;
    let created = hook.next().await;
    assert_eq!((created.kind(), created.document()), ("created", "again"));
    // Deleted within the debounce period: its pending change report is moot.
    let response = relay
        .request_with_token(
            "DELETE",
            "/api/docs/again",
            &token(None, Access::Admin),
            b"",
        )
        .await;
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(writer.expect_close().await, Some(4404));
    let deleted = hook.next().await;
    assert_eq!((deleted.kind(), deleted.document()), ("deleted", "again"));

    // The document starts again (the room stays loaded: a client is connected) and changes.
    let mut second = relay.join_with_token("again", &write).await;
    second.edit("second life").await;
    second.save(1).await;
    let created = hook.next().await;
    assert_eq!(
        (created.kind(), created.document()),
        ("created", "again"),
        "{}",
        created.event
    );
    // Reported a debounce period after the commit (3 s of slack).
    let changed = hook
        .next_within(
            DEBOUNCE + Duration::from_secs(3),
            "the `changed` event of the document written again after its deletion",
        )
        .await;
    assert_eq!(
        (changed.kind(), changed.document()),
        ("changed", "again"),
        "{}",
        changed.event
    );
    assert_eq!(changed.size(), listed_size(&relay, "again").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_without_any_secret_to_sign_with_are_refused_at_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let config = Config {
        data_dir: dir.path().join("data"),
        webhook_url: Some("http://127.0.0.1:9/hook".into()),
        ..Config::default()
    };
    let result = within(
        "relay::run to refuse the configuration",
        relay::run(config, listener, tokio_util::sync::CancellationToken::new()),
    )
    .await;
    match result {
        Err(relay::RunError::Config(error)) => {
            assert_eq!(error.name, "--webhook-url", "{error}");
        }
        other => panic!("expected a configuration error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_that_never_answers_does_not_hold_up_loading_rooms() {
    // Accepts connections and reads requests, never answers: each delivery attempt waits for
    // the relay's 10-second request timeout.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}/hook", listener.local_addr().expect("address"));
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    let relay = TestRelay::start_with(with_webhook(&url, None)).await;
    let admin = token(None, Access::Admin);
    // Each new document is a `created` event, and each delivery used to tie up one thread of
    // the blocking pool that also loads rooms (512 threads) for the whole timeout: past that
    // many, loading a room waited for a delivery to time out.
    for i in 0..560 {
        let path = format!("/api/docs/hook-{i}/update");
        let response = within_for(
            Duration::from_secs(5),
            &format!("creating document {i} while the webhook hangs"),
            relay.request_with_token("POST", &path, &admin, &text_update("x")),
        )
        .await;
        assert_eq!(response.status, 200, "{}", response.text());
    }
    let mut writer = relay
        .join_with_token("after", &token(Some("after"), Access::Write))
        .await;
    writer.edit("still fast").await;
    writer.save(1).await;
    // What the two delivery workers could not take was dropped and counted.
    relay
        .wait_metric(r#"relay_errors_total{reason="webhook_queue_full"}"#, |v| {
            v > 0.0
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_webhook_key_is_the_first_secret_without_its_key_id() {
    let mut hook = Receiver::start(&[]).await;
    let spec = format!("hooks:{TEST_SECRET}");
    let url = hook.url.clone();
    let relay = TestRelay::start_with(|config| {
        config.secrets = vec![Secret(spec.clone())];
        config.webhook_url = Some(url);
    })
    .await;
    let write = sign_token(
        &[&spec],
        &claims(Some("kid"), Access::Write, relay::auth::now_secs() + 3600),
    );
    let mut writer = relay.join_with_token("kid", &write).await;
    writer.edit("signed").await;
    writer.save(1).await;
    let created = hook.next().await;
    assert_eq!(created.kind(), "created");
    // Signed with the secret, not with the key id and the colon in front of it.
    assert_signed(&created, TEST_SECRET);
}
