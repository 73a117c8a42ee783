//! The document API (`/api/...`, admin tokens, JSON errors): listing with pagination and live
//! connection counts, export as a binary update or JSON, applying updates (committed before the
//! 200), deleting documents (clients closed with 4404) and minting client tokens.

use std::time::Duration;

use relay::auth::{Access, Keys, now_secs};
use relay_tests::*;
use yrs::types::ToJson;
use yrs::updates::decoder::Decode;
use yrs::{Array, ArrayPrelim, Doc, GetString, Map, MapPrelim, ReadTxn, Text, Transact, Update};

fn admin() -> String {
    token(None, Access::Admin)
}

/// Asserts a JSON error response: the status, and an `error` string containing `needle`.
fn assert_error(response: &HttpResponse, status: u16, needle: &str, what: &str) {
    assert_eq!(
        response.status,
        status,
        "{what}: status (body {:?})",
        response.text()
    );
    let body = response.json();
    let message = body["error"]
        .as_str()
        .unwrap_or_else(|| panic!("{what}: no error string in {body}"));
    assert!(
        message.contains(needle),
        "{what}: error {message:?} should mention {needle:?}"
    );
}

/// `GET /api/docs` through every page of `limit` documents; returns every document listed and
/// the `next_after` of each page.
async fn list_all(
    relay: &TestRelay,
    limit: usize,
) -> (Vec<serde_json::Value>, Vec<Option<String>>) {
    let mut docs = Vec::new();
    let mut cursors = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let path = match &after {
            Some(a) => format!("/api/docs?limit={limit}&after={}", encode_query_value(a)),
            None => format!("/api/docs?limit={limit}"),
        };
        let response = relay.request_with_token("GET", &path, &admin(), b"").await;
        assert_eq!(response.status, 200, "GET {path}: {}", response.text());
        let page = response.json();
        let listed = page["docs"].as_array().expect("docs is an array").clone();
        assert!(listed.len() <= limit, "a page holds at most limit: {page}");
        docs.extend(listed);
        let next = page.get("next_after").map(|v| {
            v.as_str()
                .unwrap_or_else(|| panic!("next_after is a string: {page}"))
                .to_owned()
        });
        cursors.push(next.clone());
        match next {
            Some(next) => after = Some(next),
            None => return (docs, cursors),
        }
        assert!(cursors.len() < 100, "pagination does not end: {cursors:?}");
    }
}

fn find<'a>(docs: &'a [serde_json::Value], name: &str) -> Option<&'a serde_json::Value> {
    docs.iter().find(|d| d["name"] == name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_needs_an_admin_token_and_pages_through_every_document() {
    let relay = TestRelay::start_with(secured).await;
    let started_ms = now_secs() * 1000;
    let names: Vec<String> = (0..5).map(|i| format!("page-{i}")).collect();
    for name in &names {
        let response = relay
            .request_with_token(
                "POST",
                &format!("/api/docs/{name}/update"),
                &admin(),
                &text_update(&format!("content of {name}")),
            )
            .await;
        assert_eq!(response.status, 200, "{}", response.text());
    }

    let refusals = [
        ("no token", None, 401, "token is required"),
        (
            "a write token for page-0",
            Some(token(Some("page-0"), Access::Write)),
            403,
            "not valid",
        ),
        (
            "a read token for page-0",
            Some(token(Some("page-0"), Access::Read)),
            403,
            "not valid",
        ),
        (
            "a write token for every document",
            Some(token(None, Access::Write)),
            403,
            "",
        ),
        (
            "an admin token for page-0 only",
            Some(token(Some("page-0"), Access::Admin)),
            403,
            "not valid",
        ),
        (
            "an expired admin token",
            Some(sign_token(
                &[TEST_SECRET],
                &claims(None, Access::Admin, now_secs() - 2),
            )),
            401,
            "expired",
        ),
    ];
    for (what, token, status, needle) in &refusals {
        let response = match token {
            Some(t) => relay.request_with_token("GET", "/api/docs", t, b"").await,
            None => relay.request("GET", "/api/docs", &[], b"").await,
        };
        assert_error(&response, *status, needle, what);
    }
    // The token may also come in the query.
    let response = relay
        .request("GET", &format!("/api/docs?token={}", admin()), &[], b"")
        .await;
    assert_eq!(response.status, 200, "{}", response.text());
    assert!(
        response
            .header("content-type")
            .is_some_and(|t| t.starts_with("application/json"))
    );
    assert_error(
        &relay
            .request_with_token("GET", "/api/docs?limit=many", &admin(), b"")
            .await,
        400,
        "",
        "a limit that is not a number",
    );

    // Pages of 2: page-0 page-1 | page-2 page-3 | page-4.
    let (docs, cursors) = list_all(&relay, 2).await;
    let listed: Vec<&str> = docs
        .iter()
        .map(|d| d["name"].as_str().expect("name"))
        .collect();
    assert_eq!(listed, names, "every document once, in name order");
    assert_eq!(
        cursors,
        vec![Some("page-1".into()), Some("page-3".into()), None],
        "next_after of each page"
    );
    let now_ms = (now_secs() + 1) * 1000;
    for doc in &docs {
        let size = doc["size_bytes"].as_u64().expect("size_bytes");
        assert!(size > 0, "{doc}");
        let updated = doc["updated_at_ms"].as_u64().expect("updated_at_ms");
        assert!(
            (started_ms..=now_ms).contains(&updated),
            "last change {updated} should be between {started_ms} and {now_ms}: {doc}"
        );
        assert_eq!(doc["connections"], 0, "{doc}");
    }
    // One page with everything.
    let (all, cursors) = list_all(&relay, 100).await;
    assert_eq!(all.len(), 5);
    assert_eq!(cursors, vec![None]);

    // Live connections are counted.
    let write = token(Some("page-2"), Access::Write);
    let a = relay.join_with_token("page-2", &write).await;
    let b = relay.join_with_token("page-2", &write).await;
    let (docs, _) = list_all(&relay, 2).await;
    assert_eq!(find(&docs, "page-2").expect("listed")["connections"], 2);
    assert_eq!(find(&docs, "page-3").expect("listed")["connections"], 0);
    a.close().await;
    within("the listing to count one connection", async {
        loop {
            let (docs, _) = list_all(&relay, 100).await;
            if find(&docs, "page-2").expect("listed")["connections"] == 1 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    b.close().await;
}

/// A document with a text, a map with nested values and shared types, and an array.
fn rich_document() -> Doc {
    let doc = Doc::new();
    let text = doc.get_or_insert_text("text");
    let map = doc.get_or_insert_map("map");
    let array = doc.get_or_insert_array("array");
    let mut txn = doc.transact_mut();
    text.insert(&mut txn, 0, "héllo wörld 🎉");
    map.insert(&mut txn, "title", "Doc");
    map.insert(&mut txn, "count", 42);
    map.insert(&mut txn, "ratio", 0.5);
    map.insert(
        &mut txn,
        "nested",
        yrs::any!({"tags": ["a", "b"], "flag": true, "none": null}),
    );
    map.insert(&mut txn, "sub", MapPrelim::from([("inner", "value")]));
    array.push_back(&mut txn, "x");
    array.push_back(&mut txn, 1);
    array.push_back(&mut txn, yrs::any!({"k": [1, 2]}));
    array.push_back(&mut txn, ArrayPrelim::from(["p", "q"]));
    drop(txn);
    doc
}

fn rich_json() -> serde_json::Value {
    serde_json::json!({
        "text": "héllo wörld 🎉",
        "map": {
            "title": "Doc",
            "count": 42,
            "ratio": 0.5,
            "nested": {"tags": ["a", "b"], "flag": true, "none": null},
            "sub": {"inner": "value"},
        },
        "array": ["x", 1, {"k": [1, 2]}, ["p", "q"]],
    })
}

/// The root types of a document as `yrs` gives them, as JSON.
fn yrs_json(doc: &Doc) -> serde_json::Value {
    let text = doc.get_or_insert_text("text");
    let map = doc.get_or_insert_map("map");
    let array = doc.get_or_insert_array("array");
    let txn = doc.transact();
    serde_json::json!({
        "text": text.get_string(&txn),
        "map": serde_json::to_value(map.to_json(&txn)).expect("map JSON"),
        "array": serde_json::to_value(array.to_json(&txn)).expect("array JSON"),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_returns_the_state_as_a_binary_update_or_as_json() {
    let relay = TestRelay::start_with(secured).await;
    let source = rich_document();
    assert_eq!(yrs_json(&source), rich_json(), "test premise");
    let room = "notes/monday";
    let url = relay.ws_url_with_token(room, &token(Some(room), Access::Write));
    let mut writer = Client::join_with_doc(&url, source.clone()).await;
    writer.save(1).await;
    let path = format!("/api/docs/{}", encode_room(room));

    let response = relay.request_with_token("GET", &path, &admin(), b"").await;
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(
        response.header("content-type"),
        Some("application/octet-stream")
    );
    let copy = Doc::new();
    copy.transact_mut()
        .apply_update(Update::decode_v1(&response.body).expect("a v1 update"))
        .expect("applies");
    assert_eq!(yrs_json(&copy), rich_json(), "the binary export");
    assert_eq!(
        copy.transact().state_vector(),
        source.transact().state_vector(),
        "the export holds every update of the writer"
    );
    // Explicitly binary, and the token in the query.
    let response = relay
        .request(
            "GET",
            &format!("{path}?format=binary&token={}", admin()),
            &[],
            b"",
        )
        .await;
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(text_of_doc(&response.body), "héllo wörld 🎉");

    let response = relay
        .request_with_token("GET", &format!("{path}?format=json"), &admin(), b"")
        .await;
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.json(), rich_json(), "the JSON export");

    assert_error(
        &relay
            .request_with_token("GET", &format!("{path}?format=xml"), &admin(), b"")
            .await,
        400,
        "format",
        "an unknown format",
    );
    assert_error(
        &relay
            .request_with_token("GET", "/api/docs/never-written", &admin(), b"")
            .await,
        404,
        "no such document",
        "an unknown document",
    );
    for bad in ["%00", "a%00b", "%FF", "x%0Ay"] {
        assert_error(
            &relay
                .request_with_token("GET", &format!("/api/docs/{bad}"), &admin(), b"")
                .await,
            400,
            "",
            &format!("the invalid name {bad}"),
        );
    }
    assert_error(
        &relay.request("GET", &path, &[], b"").await,
        401,
        "token",
        "no token",
    );
    // Without a token, an unknown document looks like any other: no existence oracle.
    assert_error(
        &relay
            .request("GET", "/api/docs/never-written", &[], b"")
            .await,
        401,
        "token",
        "no token, unknown document",
    );
    assert_error(
        &relay
            .request_with_token("GET", &path, &token(Some(room), Access::Write), b"")
            .await,
        403,
        "",
        "a write token",
    );
    // An admin token for this document is enough for it.
    let response = relay
        .request_with_token("GET", &path, &token(Some(room), Access::Admin), b"")
        .await;
    assert_eq!(response.status, 200, "{}", response.text());
}

fn text_of_doc(update: &[u8]) -> String {
    let doc = Doc::new();
    doc.transact_mut()
        .apply_update(Update::decode_v1(update).expect("a v1 update"))
        .expect("applies");
    doc.get_or_insert_text("text").get_string(&doc.transact())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn posted_update_reaches_live_clients_and_is_committed_before_the_200() {
    let mut relay = TestRelay::start_with(|c| {
        secured(c);
        c.max_message_bytes = 1024;
    })
    .await;
    let room = "post";
    let path = format!("/api/docs/{room}/update");
    let mut live = relay
        .join_with_token(room, &token(Some(room), Access::Write))
        .await;

    let source = Doc::new();
    let first = append(&source, "from the API");
    let response = relay
        .request_with_token("POST", &path, &admin(), &first)
        .await;
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.json(), serde_json::json!({"committed": true}));
    // Committed: the store already lists it, with at least the update's bytes.
    let (docs, _) = list_all(&relay, 100).await;
    let listed = find(&docs, room).expect("the document is stored once the POST returns");
    assert!(
        listed["size_bytes"].as_u64().expect("size") >= first.len() as u64,
        "{listed}"
    );
    // Delivered to the live client, as is.
    assert_eq!(live.recv_msg().await, Msg::Update(first.clone()));

    // Refused bodies change nothing and reach nobody.
    let over_limit = append(&Doc::new(), &"x".repeat(2000));
    assert!(over_limit.len() > 1024);
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        ("an empty body", vec![], 400, "update"),
        (
            "random bytes",
            vec![0xde, 0xad, 0xbe, 0xef, 0x13, 0x37],
            400,
            "changed nothing",
        ),
        (
            "a truncated update",
            first[..first.len() - 2].to_vec(),
            400,
            "changed nothing",
        ),
        ("a body over --max-message-bytes", over_limit, 413, ""),
    ];
    for (what, body, status, needle) in &cases {
        let response = relay
            .request_with_token("POST", &path, &admin(), body)
            .await;
        assert_error(&response, *status, needle, what);
    }
    for (what, token, status) in [
        ("no token", None, 401),
        ("a write token", Some(token(Some(room), Access::Write)), 403),
        (
            "an admin token for another document",
            Some(token(Some("other"), Access::Admin)),
            403,
        ),
    ] {
        let evil = append(&Doc::new(), "EVIL");
        let response = match &token {
            Some(t) => relay.request_with_token("POST", &path, t, &evil).await,
            None => relay.request("POST", &path, &[], &evil).await,
        };
        assert_error(&response, status, "", what);
    }
    // A duplicate is accepted and changes nothing either.
    let response = relay
        .request_with_token("POST", &path, &admin(), &first)
        .await;
    assert_eq!(response.status, 200, "a duplicate: {}", response.text());

    // The live client's next message is the next good update: nothing else came in between.
    let second = append(&source, ", twice");
    let response = relay
        .request_with_token("POST", &path, &admin(), &second)
        .await;
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(live.recv_msg().await, Msg::Update(second));
    assert_eq!(
        text_of_update(
            &relay
                .request_with_token("GET", &format!("/api/docs/{room}"), &admin(), b"")
                .await
                .body
        ),
        "from the API, twice"
    );

    drop(live);
    relay.restart().await;
    let mut after = relay
        .join_with_token(room, &token(Some(room), Access::Read))
        .await;
    after.sync().await;
    assert_eq!(after.text(), "from the API, twice", "after a restart");
    drop(after);
    relay.stop().await;
    let stored = relay.stored_text(room);
    assert_eq!(stored, "from the API, twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_closes_clients_with_4404_and_removes_the_document() {
    let mut relay = TestRelay::start_with(secured).await;
    let write = token(Some("del"), Access::Write);
    let mut a = relay.join_with_token("del", &write).await;
    let mut b = relay.join_with_token("del", &write).await;
    a.edit("to be deleted").await;
    a.save(1).await;
    let keep = relay
        .request_with_token(
            "POST",
            "/api/docs/keep/update",
            &admin(),
            &text_update("kept"),
        )
        .await;
    assert_eq!(keep.status, 200, "{}", keep.text());

    assert_error(
        &relay.request("DELETE", "/api/docs/del", &[], b"").await,
        401,
        "token",
        "no token",
    );
    assert_error(
        &relay
            .request_with_token("DELETE", "/api/docs/del", &write, b"")
            .await,
        403,
        "",
        "a write token",
    );
    assert_eq!(
        relay
            .request_with_token("GET", "/api/docs/del", &admin(), b"")
            .await
            .status,
        200,
        "still there after the refused deletions"
    );

    let response = relay
        .request_with_token("DELETE", "/api/docs/del", &admin(), b"")
        .await;
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(
        a.expect_close().await,
        Some(4404),
        "A is told the document is gone"
    );
    assert_eq!(
        b.expect_close().await,
        Some(4404),
        "B is told the document is gone"
    );

    assert_error(
        &relay
            .request_with_token("GET", "/api/docs/del", &admin(), b"")
            .await,
        404,
        "no such document",
        "GET after DELETE",
    );
    assert_error(
        &relay
            .request_with_token("DELETE", "/api/docs/del", &admin(), b"")
            .await,
        404,
        "no such document",
        "DELETE again",
    );
    let (docs, _) = list_all(&relay, 100).await;
    let names: Vec<&str> = docs
        .iter()
        .map(|d| d["name"].as_str().expect("name"))
        .collect();
    assert_eq!(
        names,
        vec!["keep"],
        "the listing lacks the deleted document"
    );

    // A new client joining the room sees an empty document, and can start it again.
    let mut fresh = relay.join_with_token("del", &write).await;
    assert_eq!(
        fresh.sync().await,
        crdt::doc::EMPTY_UPDATE_V1,
        "nothing left"
    );
    assert_eq!(fresh.text(), "");
    fresh.edit("a new start").await;
    fresh.save(1).await;
    let response = relay
        .request_with_token("GET", "/api/docs/del?format=json", &admin(), b"")
        .await;
    assert_eq!(response.json(), serde_json::json!({"t": "a new start"}));

    drop(fresh);
    relay.restart().await;
    let response = relay
        .request_with_token("GET", "/api/docs/del?format=json", &admin(), b"")
        .await;
    assert_eq!(
        response.json(),
        serde_json::json!({"t": "a new start"}),
        "after a restart: only what came after the deletion"
    );
    let response = relay
        .request_with_token("GET", "/api/docs/keep?format=json", &admin(), b"")
        .await;
    assert_eq!(response.json(), serde_json::json!({"t": "kept"}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_minted_through_the_api_open_their_document_and_no_other() {
    let relay = TestRelay::start_with(secured).await;
    let json_header = [("Content-Type", "application/json")];
    let mint = |token: String, body: &'static str| {
        let relay = &relay;
        async move {
            let bearer = format!("Bearer {token}");
            relay
                .request(
                    "POST",
                    "/api/tokens",
                    &[json_header[0], ("Authorization", &bearer)],
                    body.as_bytes(),
                )
                .await
        }
    };

    let before = now_secs();
    let response = mint(
        admin(),
        r#"{"doc":"minted","access":"write","ttl_secs":60,"sub":"u7","name":"Grace"}"#,
    )
    .await;
    assert_eq!(response.status, 200, "{}", response.text());
    let body = response.json();
    let minted = body["token"].as_str().expect("a token").to_owned();
    let expires_at = body["expires_at"].as_u64().expect("expires_at");
    assert!(
        (before + 60..=now_secs() + 60).contains(&expires_at),
        "expires_at {expires_at} is 60 s from now"
    );
    let claims = Keys::parse(&[TEST_SECRET.to_owned()])
        .expect("keys")
        .verify(&minted)
        .expect("the minted token verifies with the relay's secret");
    assert_eq!(claims.doc.as_deref(), Some("minted"));
    assert_eq!(claims.access, Access::Write);
    assert_eq!(claims.exp, expires_at);
    assert_eq!(claims.sub.as_deref(), Some("u7"));
    assert_eq!(claims.name.as_deref(), Some("Grace"));

    // It opens a WebSocket to its document, for writing...
    let mut client = relay.join_with_token("minted", &minted).await;
    client.edit("written with a minted token").await;
    client.save(1).await;
    let response = relay
        .request_with_token("GET", "/api/docs/minted?format=json", &admin(), b"")
        .await;
    assert_eq!(
        response.json(),
        serde_json::json!({"t": "written with a minted token"})
    );
    // ... and not to another one.
    let response = relay
        .try_upgrade("elsewhere", Some(&format!("token={minted}")), &[])
        .await;
    assert_eq!(response.status, 403, "{}", response.text());
    // Nor to the API.
    assert_error(
        &relay
            .request_with_token("GET", "/api/docs/minted", &minted, b"")
            .await,
        403,
        "",
        "a minted write token on the API",
    );

    // A read token minted the same way is read-only.
    let response = mint(admin(), r#"{"doc":"minted","access":"read"}"#).await;
    assert_eq!(response.status, 200, "{}", response.text());
    let read = response.json()["token"].as_str().expect("token").to_owned();
    let mut reader = relay.join_with_token("minted", &read).await;
    reader.sync().await;
    assert_eq!(reader.text(), "written with a minted token");
    reader.edit(" EVIL").await;
    assert!(
        matches!(reader.recv_msg().await, Msg::AuthDenied(_)),
        "a minted read token cannot write"
    );

    let refusals: Vec<(&str, Option<String>, &'static str, u16)> = vec![
        (
            "no token",
            None,
            r#"{"doc":"minted","access":"write"}"#,
            401,
        ),
        (
            "a write token",
            Some(token(Some("minted"), Access::Write)),
            r#"{"doc":"minted","access":"write"}"#,
            403,
        ),
        (
            "an admin token for another document",
            Some(token(Some("mine"), Access::Admin)),
            r#"{"doc":"minted","access":"write"}"#,
            403,
        ),
        (
            "an admin token for one document minting a prefix token",
            Some(token(Some("minted"), Access::Admin)),
            r#"{"doc_prefix":"min","access":"write"}"#,
            403,
        ),
        (
            "invalid JSON",
            Some(admin()),
            r#"{"doc": "minted", "access": "#,
            400,
        ),
        (
            "an unknown access",
            Some(admin()),
            r#"{"doc":"minted","access":"owner"}"#,
            400,
        ),
        (
            "an unknown field",
            Some(admin()),
            r#"{"doc":"minted","access":"write","role":"x"}"#,
            400,
        ),
        (
            "a zero lifetime",
            Some(admin()),
            r#"{"doc":"minted","access":"write","ttl_secs":0}"#,
            400,
        ),
        (
            "a lifetime over 30 days",
            Some(admin()),
            r#"{"doc":"minted","access":"write","ttl_secs":2592001}"#,
            400,
        ),
        (
            "a write token for no document",
            Some(admin()),
            r#"{"access":"write"}"#,
            400,
        ),
        (
            "doc and doc_prefix",
            Some(admin()),
            r#"{"doc":"minted","doc_prefix":"m","access":"write"}"#,
            400,
        ),
        (
            "an invalid name",
            Some(admin()),
            r#"{"doc":"a\u0000b","access":"write"}"#,
            400,
        ),
    ];
    for (what, token, body, status) in refusals {
        let response = match token {
            Some(token) => mint(token, body).await,
            None => {
                relay
                    .request("POST", "/api/tokens", &json_header, body.as_bytes())
                    .await
            }
        };
        assert_eq!(response.status, status, "{what}: {}", response.text());
        assert!(
            response.json()["error"].is_string(),
            "{what}: a JSON error, got {}",
            response.text()
        );
    }
    // An admin token for one document may mint tokens for that document.
    let response = mint(
        token(Some("minted"), Access::Admin),
        r#"{"doc":"minted","access":"read"}"#,
    )
    .await;
    assert_eq!(response.status, 200, "{}", response.text());
    // Nothing the refused requests or the reader did changed the document.
    let response = relay
        .request_with_token("GET", "/api/docs/minted?format=json", &admin(), b"")
        .await;
    assert_eq!(
        response.json(),
        serde_json::json!({"t": "written with a minted token"})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_minted_token_never_outlives_the_token_that_minted_it() {
    let relay = TestRelay::start_with(secured).await;
    let keys = Keys::parse(&[TEST_SECRET.to_owned()]).expect("keys");
    let mint = |token: String, body: &'static str| {
        let (relay, keys) = (&relay, &keys);
        async move {
            let bearer = format!("Bearer {token}");
            let response = relay
                .request(
                    "POST",
                    "/api/tokens",
                    &[
                        ("Content-Type", "application/json"),
                        ("Authorization", &bearer),
                    ],
                    body.as_bytes(),
                )
                .await;
            assert_eq!(response.status, 200, "{}", response.text());
            let body = response.json();
            let minted = body["token"].as_str().expect("a token").to_owned();
            let expires_at = body["expires_at"].as_u64().expect("expires_at");
            let claims = keys.verify(&minted).expect("the minted token verifies");
            assert_eq!(claims.exp, expires_at, "the answer tells the real expiry");
            (minted, expires_at)
        }
    };
    // A 30-second admin token for one document asks for a 30-day admin token for it.
    let short_exp = now_secs() + 30;
    let short = sign_token(
        &[TEST_SECRET],
        &claims(Some("brief"), Access::Admin, short_exp),
    );
    let month = r#"{"doc":"brief","access":"admin","ttl_secs":2592000}"#;
    let (minted, expires_at) = mint(short, month).await;
    assert_eq!(expires_at, short_exp, "cut to the minting token's expiry");
    // Nor can the minted token extend itself in turn.
    let (_, again) = mint(minted, month).await;
    assert_eq!(again, short_exp);
    // A lifetime inside the minting token's is kept as asked.
    let before = now_secs();
    let (_, minute) = mint(admin(), r#"{"doc":"brief","access":"read","ttl_secs":60}"#).await;
    assert!(
        (before + 60..=now_secs() + 60).contains(&minute),
        "expires_at {minute} is 60 s from now"
    );
}
