//! Web pages of other origins: refused by default on every path a page could use (WebSocket
//! upgrades, long-polling, the document API), decided from the listen address or `--public-url`
//! and never from the request's `Host` (DNS rebinding), and allowed with CORS when listed in
//! `--allowed-origin`. Requests without an `Origin` (Node, Python, curl) are not affected.

use relay::auth::Access;
use relay::config::Secret;
use relay_tests::*;

const EVIL: &str = "https://evil.example";
const APP: &str = "https://app.example";

fn own_origin(relay: &TestRelay) -> String {
    format!("http://{}", relay.addr())
}

/// A cross-site form post: `text/plain` needs no CORS preflight, so a browser sends it.
async fn cross_site_update(relay: &TestRelay, origin: &str, room: &str) -> HttpResponse {
    relay
        .request(
            "POST",
            &format!("/api/docs/{}/update", encode_room(room)),
            &[("Origin", origin), ("Content-Type", "text/plain")],
            &text_update("written by another site"),
        )
        .await
}

async fn preflight(relay: &TestRelay, origin: &str, path: &str) -> HttpResponse {
    relay
        .request(
            "OPTIONS",
            path,
            &[
                ("Origin", origin),
                ("Access-Control-Request-Method", "POST"),
                ("Access-Control-Request-Headers", "content-type"),
            ],
            b"",
        )
        .await
}

fn assert_forbidden_origin(response: &HttpResponse, what: &str) {
    assert_eq!(response.status, 403, "{what}: {}", response.text());
    assert!(
        response.text().contains("origin not allowed"),
        "{what}: {}",
        response.text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_default_relay_refuses_pages_of_other_origins_on_every_path() {
    let relay = TestRelay::start().await;
    assert!(relay.config().allowed_origins.is_empty());
    let port = relay.addr().port();

    // Another site's page opening ws://127.0.0.1:PORT/<room>, and a rebound DNS name whose Host
    // matches its Origin.
    let rebound = format!("rebind.example:{port}");
    let rebound_origin = format!("http://{rebound}");
    for (what, headers) in [
        ("another site", vec![("Origin", EVIL)]),
        (
            "a rebound name",
            vec![
                ("Origin", rebound_origin.as_str()),
                ("Host", rebound.as_str()),
            ],
        ),
        ("a sandboxed frame", vec![("Origin", "null")]),
    ] {
        let response = relay.try_upgrade("private", None, &headers).await;
        assert_forbidden_origin(&response, what);
    }
    // The relay's own pages (the demo, and every browser test, load from 127.0.0.1:PORT), its
    // other loopback names, and clients that are not web pages.
    for origin in [
        own_origin(&relay),
        format!("http://localhost:{port}"),
        format!("http://[::1]:{port}"),
    ] {
        let response = relay
            .try_upgrade("private", None, &[("Origin", &origin)])
            .await;
        assert_eq!(response.status, 101, "{origin}: {}", response.text());
    }
    assert_eq!(relay.try_upgrade("private", None, &[]).await.status, 101);

    // The document API and long-polling: refused before anything runs.
    assert_forbidden_origin(
        &cross_site_update(&relay, EVIL, "private").await,
        "a cross-site POST to the API",
    );
    assert_forbidden_origin(
        &relay
            .request("GET", "/api/docs", &[("Origin", EVIL)], b"")
            .await,
        "a cross-site API listing",
    );
    assert_forbidden_origin(
        &relay.open_poll("private", None, &[("Origin", EVIL)]).await,
        "a poll session",
    );
    assert_forbidden_origin(
        &preflight(&relay, EVIL, "/poll?room=private").await,
        "a CORS preflight",
    );
    let listing = relay.request("GET", "/api/docs", &[], b"").await;
    assert_eq!(listing.status, 200, "{}", listing.text());
    let listed: serde_json::Value = serde_json::from_slice(&listing.body).expect("JSON");
    assert_eq!(
        listed["docs"],
        serde_json::json!([]),
        "nothing was written by the refused requests"
    );
    // The relay's own page may post through the API, and open a poll session.
    let own = cross_site_update(&relay, &own_origin(&relay), "private").await;
    assert_eq!(own.status, 200, "{}", own.text());
    let own = relay
        .open_poll("private", None, &[("Origin", &own_origin(&relay))])
        .await;
    assert_eq!(own.status, 200, "{}", own.text());
    // Paths no page can abuse stay open to every origin.
    let health = relay
        .request("GET", "/healthz", &[("Origin", EVIL)], b"")
        .await;
    assert_eq!(health.status, 200);
    assert_eq!(
        relay
            .metric(r#"relay_errors_total{reason="origin_refused"}"#)
            .await,
        Some(7.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_an_allow_list_a_rebound_host_still_fails_and_the_api_checks_the_origin() {
    let relay = TestRelay::start_with(|c| {
        c.secrets = vec![Secret(TEST_SECRET.into())];
        c.allowed_origins = vec![APP.into()];
    })
    .await;
    let write = token(Some("doc"), Access::Write);
    let query = format!("token={}", encode_query_value(&write));
    // The origin check used to accept an Origin equal to the Host the request was sent to.
    let rebound = format!("rebind.example:{}", relay.addr().port());
    let rebound_origin = format!("http://{rebound}");
    let response = relay
        .try_upgrade(
            "doc",
            Some(&query),
            &[("Origin", &rebound_origin), ("Host", &rebound)],
        )
        .await;
    assert_forbidden_origin(&response, "a rebound name with its own Host");
    // The API: another site's page is refused even with a valid admin token...
    let bearer = format!("Bearer {}", token(None, Access::Admin));
    let response = relay
        .request(
            "GET",
            "/api/docs",
            &[("Origin", EVIL), ("Authorization", &bearer)],
            b"",
        )
        .await;
    assert_forbidden_origin(&response, "the API from another site");
    // ... and the allowed app gets the answer, readable by its scripts.
    let response = relay
        .request(
            "GET",
            "/api/docs",
            &[("Origin", APP), ("Authorization", &bearer)],
            b"",
        )
        .await;
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.header("access-control-allow-origin"), Some(APP));
    assert!(
        response
            .header("vary")
            .is_some_and(|v| v.to_ascii_lowercase().contains("origin")),
        "{:?}",
        response.headers
    );
    let response = relay
        .try_upgrade("doc", Some(&query), &[("Origin", APP)])
        .await;
    assert_eq!(response.status, 101, "{}", response.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_polling_behind_an_allow_list_accepts_the_relays_own_origin_and_refuses_with_403() {
    let relay = TestRelay::start_with(|c| c.allowed_origins = vec![APP.into()]).await;
    let own = own_origin(&relay);
    // The demo served by the relay falls back to long-polling from its own origin.
    let response = preflight(&relay, &own, "/poll?room=demo").await;
    assert_eq!(response.status, 204, "{}", response.text());
    assert_eq!(
        response.header("access-control-allow-origin"),
        Some(own.as_str())
    );
    let opened = relay.open_poll("demo", None, &[("Origin", &own)]).await;
    assert_eq!(opened.status, 200, "{}", opened.text());
    // An allowed app: preflight, open, poll; the sequence header is readable by its scripts.
    let response = preflight(&relay, APP, "/poll?room=demo").await;
    assert_eq!(response.status, 204, "{}", response.text());
    assert_eq!(response.header("access-control-allow-origin"), Some(APP));
    let methods = response
        .header("access-control-allow-methods")
        .unwrap_or_default();
    assert!(
        methods.contains("POST") && methods.contains("GET") && methods.contains("DELETE"),
        "{methods}"
    );
    let opened = relay.open_poll("demo", None, &[("Origin", APP)]).await;
    assert_eq!(opened.status, 200, "{}", opened.text());
    assert_eq!(opened.header("access-control-allow-origin"), Some(APP));
    let session: serde_json::Value = serde_json::from_slice(&opened.body).expect("JSON");
    let id = session["session"].as_str().expect("a session id");
    let polled = relay
        .request("GET", &format!("/poll/{id}?ack=0"), &[("Origin", APP)], b"")
        .await;
    assert_eq!(polled.status, 200, "{}", polled.text());
    assert_eq!(polled.header("access-control-allow-origin"), Some(APP));
    assert_eq!(
        polled.header("access-control-expose-headers"),
        Some("x-relay-last-seq")
    );
    // Other origins: 403, as PROTOCOL.md says, for the preflight and the request alike.
    assert_forbidden_origin(
        &preflight(&relay, EVIL, "/poll?room=demo").await,
        "preflight",
    );
    assert_forbidden_origin(
        &relay.open_poll("demo", None, &[("Origin", EVIL)]).await,
        "open",
    );
    let polled = relay
        .request(
            "GET",
            &format!("/poll/{id}?ack=0"),
            &[("Origin", EVIL)],
            b"",
        )
        .await;
    assert_forbidden_origin(&polled, "a poll of a known session");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_proxy_the_public_url_is_the_relays_own_origin() {
    let relay = TestRelay::start_with(|c| {
        c.public_urls = vec!["https://relay.example/".into()];
    })
    .await;
    let response = relay
        .try_upgrade("doc", None, &[("Origin", "https://relay.example")])
        .await;
    assert_eq!(response.status, 101, "{}", response.text());
    let opened = relay
        .open_poll("doc", None, &[("Origin", "https://relay.example")])
        .await;
    assert_eq!(opened.status, 200, "{}", opened.text());
    // The public URL replaces the listen address: the loopback origin is another site now.
    let response = relay
        .try_upgrade("doc", None, &[("Origin", &own_origin(&relay))])
        .await;
    assert_forbidden_origin(&response, "the listen address behind a proxy");
}
