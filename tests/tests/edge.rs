//! What a client costs the relay before and after it proves who it is: request bodies are read
//! only once the token or the long-polling session is checked, and within `--body-timeout-secs`;
//! HTTP connections are bounded by `--max-http-connections`; one token holds at most
//! `--max-connections-per-token` connections; and a long-polling session that never polls ends
//! after `--poll-start-timeout-secs`.

use std::time::Duration;

use relay::auth::Access;
use relay_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

type Headers<'a> = Vec<(&'a str, &'a str)>;

/// Sends the head of a request that announces a body of `declared` bytes, and then only `sent`
/// of them; returns the connection, still open on the client's side.
async fn send_head(
    relay: &TestRelay,
    method_path: &str,
    headers: &[(&str, &str)],
    declared: usize,
    sent: usize,
) -> TcpStream {
    let mut stream = TcpStream::connect(relay.addr()).await.expect("connect");
    let mut head = format!(
        "{method_path} HTTP/1.1\r\nHost: {}\r\nContent-Length: {declared}\r\n",
        relay.addr()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await.expect("write");
    stream.write_all(&vec![0u8; sent]).await.expect("write");
    stream
}

/// A request that holds its body back must be answered from its headers alone.
async fn refused_without_the_body(
    relay: &TestRelay,
    method_path: &str,
    headers: &[(&str, &str)],
) -> HttpResponse {
    let mut stream = send_head(relay, method_path, headers, 1000, 0).await;
    // Promptly: well within the deadline a stalled body would be given.
    let response = within_for(
        Duration::from_secs(3),
        &format!("the answer to {method_path} without its body"),
        read_http_response(&mut stream),
    )
    .await
    .expect("a response");
    // And the relay closes the connection rather than wait for the body.
    let mut rest = Vec::new();
    let end = within_for(
        Duration::from_secs(3),
        "the connection to close",
        stream.read_to_end(&mut rest),
    )
    .await;
    assert!(end.is_err() || rest.is_empty(), "{method_path}: {rest:?}");
    response
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_without_a_valid_token_or_session_are_refused_before_their_body_is_read() {
    let relay = TestRelay::start_with(|c| {
        secured(c);
        // Longer than the test waits: an answer can only come from the headers.
        c.body_timeout_secs = 60;
    })
    .await;
    let read = format!("Bearer {}", token(Some("doc"), Access::Read));
    let cases: [(&str, Headers, u16); 6] = [
        ("POST /api/docs/doc/update", vec![], 401),
        (
            "POST /api/docs/doc/update",
            vec![("Authorization", "Bearer not.a.jwt")],
            401,
        ),
        (
            "POST /api/docs/doc/update",
            vec![("Authorization", read.as_str())],
            403,
        ),
        ("POST /api/tokens", vec![], 401),
        (
            "POST /api/tokens",
            vec![("Authorization", read.as_str())],
            403,
        ),
        ("POST /poll/0123456789abcdef0123456789abcdef", vec![], 404),
    ];
    for (request, headers, status) in &cases {
        let response = refused_without_the_body(&relay, request, headers).await;
        assert_eq!(
            response.status,
            *status,
            "{request} {headers:?}: {}",
            response.text()
        );
    }
    relay.assert_healthy().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_body_is_cut_off_at_the_deadline() {
    let relay = TestRelay::start_with(|c| {
        secured(c);
        c.body_timeout_secs = 1;
    })
    .await;
    let admin = format!("Bearer {}", token(None, Access::Admin));
    let opened = relay
        .request(
            "POST",
            &format!(
                "/poll?room=doc&token={}",
                encode_query_value(&token(Some("doc"), Access::Write))
            ),
            &[],
            b"",
        )
        .await;
    assert_eq!(opened.status, 200, "{}", opened.text());
    let session: serde_json::Value = serde_json::from_slice(&opened.body).expect("JSON");
    let send = format!(
        "POST /poll/{}",
        session["session"].as_str().expect("a session")
    );
    for (request, headers) in [
        (
            "POST /api/docs/doc/update",
            vec![("Authorization", admin.as_str())],
        ),
        (send.as_str(), vec![]),
    ] {
        let started = Instant::now();
        // An authorized request whose body stops 10 bytes in.
        let mut stream = send_head(&relay, request, &headers, 1000, 10).await;
        let response = within("the deadline's answer", read_http_response(&mut stream))
            .await
            .expect("a response");
        assert_eq!(response.status, 408, "{request}: {}", response.text());
        assert!(
            started.elapsed() >= Duration::from_millis(900),
            "{request}: cut off after {:?}, before the 1 s deadline",
            started.elapsed()
        );
        // The connection is closed: the rest of the body is not waited for.
        let mut rest = Vec::new();
        let closed = within("the connection to close", stream.read_to_end(&mut rest)).await;
        assert!(
            closed.is_err() || rest.is_empty(),
            "{request}: nothing more after the 408"
        );
    }
    assert_eq!(
        relay
            .metric(r#"relay_errors_total{reason="body_timeout"}"#)
            .await,
        Some(2.0)
    );
    // A body that arrives in time is taken.
    let response = relay
        .request(
            "POST",
            "/api/docs/doc/update",
            &[("Authorization", admin.as_str())],
            &text_update("in time"),
        )
        .await;
    assert_eq!(response.status, 200, "{}", response.text());
}

/// Sends a complete request on a kept-alive connection and reads its answer; `None` if the relay
/// closed the connection instead.
async fn healthz_on(stream: &mut TcpStream, addr: std::net::SocketAddr) -> Option<u16> {
    let request = format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    read_http_response(stream).await.ok().map(|r| r.status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_connections_are_bounded() {
    const LIMIT: usize = 3;
    let relay = TestRelay::start_with(|c| c.max_http_connections = LIMIT).await;
    let addr = relay.addr();
    // Fill every slot with a connection that is kept alive after its answer. A slot may still be
    // held for a moment by an earlier connection that is closing: a connection refused then is
    // simply opened again.
    let mut held = Vec::new();
    within("every slot to be held", async {
        while held.len() < LIMIT {
            let mut stream = TcpStream::connect(addr).await.expect("connect");
            if healthz_on(&mut stream, addr).await == Some(200) {
                held.push(stream);
            }
        }
    })
    .await;
    // One more is closed at once, without an answer.
    let mut extra = TcpStream::connect(addr).await.expect("connect");
    assert_eq!(
        within(
            "the extra connection to be closed",
            healthz_on(&mut extra, addr)
        )
        .await,
        None,
        "a connection over --max-http-connections"
    );
    // The held ones still work.
    for stream in &mut held {
        assert_eq!(healthz_on(stream, addr).await, Some(200));
    }
    // Once one closes, its slot is free again.
    drop(held.pop());
    within("a freed slot", async {
        loop {
            let mut stream = TcpStream::connect(addr).await.expect("connect");
            if healthz_on(&mut stream, addr).await == Some(200) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    drop(held);
    // Read once the slots of the dropped connections are back (a refused read is repeated).
    let refused = within("the metrics", async {
        loop {
            if let Ok((200, text)) = http_get(addr, "/metrics").await {
                let sample = r#"relay_errors_total{reason="too_many_http_connections"}"#;
                return metric_value(&text, sample);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(refused >= Some(1.0), "{refused:?}");
    // Upgraded WebSockets hand their slot back: more sockets than HTTP slots stay open (an
    // attempt may meet the slot of the previous upgrade not yet given back, and is repeated).
    let mut sockets = Vec::new();
    within("twice as many WebSockets as HTTP slots", async {
        while sockets.len() < LIMIT * 2 {
            match Client::try_connect(&relay.ws_url("ws"), None).await {
                Ok(socket) => sockets.push(socket),
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    })
    .await;
    for socket in &mut sockets {
        assert!(matches!(socket.recv_msg().await, Msg::SyncStep1(_)));
    }
}

fn session_id(response: &HttpResponse) -> String {
    assert_eq!(response.status, 200, "{}", response.text());
    let body: serde_json::Value = serde_json::from_slice(&response.body).expect("JSON");
    body["session"].as_str().expect("a session id").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_token_holds_at_most_its_connections() {
    let relay = TestRelay::start_with(|c| {
        secured(c);
        c.max_connections_per_token = 2;
    })
    .await;
    let shared = token(Some("doc"), Access::Read);
    let first = session_id(&relay.open_poll("doc", Some(&shared), &[]).await);
    let mut socket = relay.join_with_token("doc", &shared).await;
    // A third connection with the same token: refused, whichever the transport.
    let refused = relay.open_poll("doc", Some(&shared), &[]).await;
    assert_eq!(refused.status, 429, "{}", refused.text());
    assert!(
        refused
            .text()
            .contains("too many connections with this token")
    );
    let query = format!("token={}", encode_query_value(&shared));
    let upgrade = relay.try_upgrade("doc", Some(&query), &[]).await;
    assert_eq!(upgrade.status, 429, "{}", upgrade.text());
    // Another token is not affected.
    let other = sign_token(
        &[TEST_SECRET],
        &relay_tests::claims(Some("doc"), Access::Read, relay::auth::now_secs() + 7200),
    );
    assert_ne!(other, shared);
    session_id(&relay.open_poll("doc", Some(&other), &[]).await);
    // Closing one gives its slot back.
    let closed = relay
        .request("DELETE", &format!("/poll/{first}"), &[], b"")
        .await;
    assert_eq!(closed.status, 204);
    within("the freed slot", async {
        loop {
            let response = relay.open_poll("doc", Some(&shared), &[]).await;
            if response.status == 200 {
                return;
            }
            assert_eq!(response.status, 429, "{}", response.text());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    // The WebSocket is still served.
    socket.sync().await;
    assert_eq!(
        relay
            .metric(r#"relay_errors_total{reason="too_many_connections_for_token"}"#)
            .await
            .map(|v| v >= 2.0),
        Some(true)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_that_never_polls_ends_after_the_start_timeout() {
    let relay = TestRelay::start_with(|c| {
        secured(c);
        c.poll_start_timeout_secs = 1;
        c.max_connections_per_token = 1;
    })
    .await;
    let read = token(Some("doc"), Access::Read);
    let started = Instant::now();
    let idle = session_id(&relay.open_poll("doc", Some(&read), &[]).await);
    // Its token's only slot is taken...
    assert_eq!(relay.open_poll("doc", Some(&read), &[]).await.status, 429);
    // ... until the session that never polled ends (the client timeout is 60 s).
    relay
        .wait_metric(r#"relay_disconnects_total{reason="client_timeout"}"#, |v| {
            v >= 1.0
        })
        .await;
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "ended after {:?}",
        started.elapsed()
    );
    relay.wait_metric("relay_connections", |v| v == 0.0).await;
    session_id(&relay.open_poll("doc", Some(&read), &[]).await);
    // A late poll gets what was queued (the greeting), then learns why the session ended.
    let late = within("the 410", async {
        let mut ack = 0;
        loop {
            let polled = relay
                .request("GET", &format!("/poll/{idle}?ack={ack}"), &[], b"")
                .await;
            if polled.status != 200 {
                return polled;
            }
            ack = polled
                .header("x-relay-last-seq")
                .and_then(|v| v.parse().ok())
                .expect("x-relay-last-seq");
        }
    })
    .await;
    assert_eq!(late.status, 410, "{}", late.text());
    let body: serde_json::Value = serde_json::from_slice(&late.body).expect("JSON");
    assert_eq!(
        body,
        serde_json::json!({ "code": 1001, "reason": "client_timeout" })
    );
}
