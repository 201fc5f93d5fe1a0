use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::both_backends;
use crate::helpers::{TestApp, expect_problem};

both_backends!(
    feed_lists_changes_in_order,
    feed_pages_with_small_limit,
    feed_filters_by_collection,
    feed_cursor_is_present_when_empty,
    feed_rejects_malformed_cursor,
    long_poll_returns_on_commit,
    long_poll_returns_empty_at_deadline,
);

async fn feed_lists_changes_in_order(app: TestApp) {
    let created = app.create("notes", json!({"n": 0})).await;
    let id = created["id"].as_str().unwrap();
    let path = format!("/v1/notes/{id}");
    app.send(Method::PATCH, &path, "application/json", &json!({"n": 1}), &[("if-match", "\"1\"")]).await;

    let changes = app.all_changes().await;

    assert_eq!(changes.len(), 2);
    assert_eq!(changes[0]["collection"], "notes");
    assert_eq!(changes[0]["id"], id);
    assert_eq!(changes[0]["version"], 1);
    assert_eq!(changes[0]["operation"], "created");
    assert_eq!(changes[0]["principal"], "anonymous");
    assert_eq!(changes[0]["changed_at"], created["created_at"]);
    assert_eq!(changes[1]["version"], 2);
    assert_eq!(changes[1]["operation"], "updated");
    assert_ne!(changes[0]["cursor"], changes[1]["cursor"]);
}

async fn feed_pages_with_small_limit(app: TestApp) {
    for n in 0..5 {
        app.create("notes", json!({"n": n})).await;
    }
    app.settle_feed().await;

    let mut seen = Vec::new();
    let mut path = "/v1/_changes?limit=2&collections=notes".to_owned();
    for _ in 0..10 {
        let page: Value = app.get(&path).await.json().await.unwrap();
        let changes = page["changes"].as_array().unwrap();
        if changes.is_empty() {
            break;
        }
        assert!(changes.len() <= 2);
        seen.extend(changes.iter().map(|change| change["id"].as_str().unwrap().to_owned()));
        path = format!("/v1/_changes?limit=2&collections=notes&since={}", page["next_cursor"].as_str().unwrap());
    }

    assert_eq!(seen.len(), 5);
    let mut unique = seen.clone();
    unique.dedup();
    assert_eq!(unique, seen);
}

async fn feed_filters_by_collection(app: TestApp) {
    app.create("notes", json!({})).await;
    app.create("tasks", json!({})).await;
    app.create("people", json!({})).await;
    app.settle_feed().await;

    let page: Value = app.get("/v1/_changes?collections=tasks,people").await.json().await.unwrap();

    let collections: Vec<_> = page["changes"].as_array().unwrap().iter().map(|change| change["collection"].clone()).collect();
    assert_eq!(collections, vec![json!("tasks"), json!("people")]);
}

async fn feed_cursor_is_present_when_empty(app: TestApp) {
    let page: Value = app.get("/v1/_changes").await.json().await.unwrap();
    assert_eq!(page["changes"], json!([]));
    let start = page["next_cursor"].as_str().unwrap().to_owned();

    app.create("notes", json!({})).await;
    app.settle_feed().await;
    let page: Value = app.get(&format!("/v1/_changes?collections=notes&since={start}")).await.json().await.unwrap();
    assert_eq!(page["changes"].as_array().unwrap().len(), 1);
    let end = page["next_cursor"].as_str().unwrap();

    let page: Value = app.get(&format!("/v1/_changes?collections=notes&since={end}")).await.json().await.unwrap();
    assert_eq!(page["changes"], json!([]));
    assert_eq!(page["next_cursor"], end);
}

async fn feed_rejects_malformed_cursor(app: TestApp) {
    // "YTox" is "a:1" and "YzotMTox" is "c:-1:1", both base64 but not feed
    // positions; "Yzo5OTk5OTk5OTk5OTk6MQ" is "c:999999999999:1", past the end.
    let paths = ["/v1/_changes?since=nope", "/v1/_changes?since=YTox", "/v1/_changes?since=YzotMTox", "/v1/_changes?since=Yzo5OTk5OTk5OTk5OTk6MQ"];
    for path in paths {
        expect_problem(app.get(path).await, StatusCode::BAD_REQUEST, "invalid-cursor").await;
    }
    for path in ["/v1/_changes?wait=61", "/v1/_changes?collections=Bad", "/v1/_changes?limit=0", "/v1/_changes?unknown=1"] {
        expect_problem(app.get(path).await, StatusCode::BAD_REQUEST, "invalid-query").await;
    }
}

async fn long_poll_returns_on_commit(app: TestApp) {
    let start: Value = app.get("/v1/_changes").await.json().await.unwrap();
    let cursor = start["next_cursor"].as_str().unwrap().to_owned();

    let writer = {
        let client = app.client.clone();
        let url = app.url("/v1/notes");
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            client.post(url).json(&json!({"late": true})).send().await.unwrap().status()
        })
    };
    let began = Instant::now();
    let page: Value = app.get(&format!("/v1/_changes?since={cursor}&wait=20")).await.json().await.unwrap();

    assert_eq!(writer.await.unwrap(), StatusCode::CREATED);
    assert_eq!(page["changes"].as_array().unwrap().len(), 1);
    // The write happens 0.5 s in; the long-poll must return within a
    // second of it, long before its 20 s deadline.
    assert!(began.elapsed() < Duration::from_millis(1500), "the long-poll returned after {:?}", began.elapsed());
}

async fn long_poll_returns_empty_at_deadline(app: TestApp) {
    let began = Instant::now();
    let page: Value = app.get("/v1/_changes?wait=1").await.json().await.unwrap();

    assert_eq!(page["changes"], json!([]));
    assert!(began.elapsed() >= Duration::from_secs(1));
}

const SHORT_RETENTION: &str = "[database]\nchange_retention_seconds = 1\n";

both_backends!(config = SHORT_RETENTION; expired_cursor_is_410);

async fn expired_cursor_is_410(app: TestApp) {
    let start: Value = app.get("/v1/_changes").await.json().await.unwrap();
    let old_cursor = start["next_cursor"].as_str().unwrap().to_owned();
    app.create("notes", json!({})).await;
    app.settle_feed().await;

    // Retention is 1 s and the pruner runs every 0.5 s.
    let mut status = StatusCode::OK;
    for _ in 0..100 {
        status = app.get(&format!("/v1/_changes?since={old_cursor}")).await.status();
        if status != StatusCode::OK {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status, StatusCode::GONE);
    let problem = expect_problem(app.get(&format!("/v1/_changes?since={old_cursor}")).await, StatusCode::GONE, "cursor-expired").await;
    assert!(problem["detail"].as_str().unwrap().contains("retention"));

    let page: Value = app.get("/v1/_changes").await.json().await.unwrap();
    let fresh = page["next_cursor"].as_str().unwrap();
    assert_eq!(app.get(&format!("/v1/_changes?since={fresh}")).await.status(), StatusCode::OK);
}

both_backends!(feed_follower_misses_nothing_under_concurrent_writers);

/// Eight writers update six records, some through two-record atomic
/// batches, while a follower pages through the feed three changes at a
/// time. The follower must see every committed change exactly once, and
/// each record's versions in increasing order.
async fn feed_follower_misses_nothing_under_concurrent_writers(app: TestApp) {
    const WRITERS: usize = 8;
    const ROUNDS: usize = 12;
    let mut ids = Vec::new();
    for n in 0..6 {
        ids.push(app.create("hot", json!({"n": n})).await["id"].as_str().unwrap().to_owned());
    }
    app.settle_feed().await;
    let start: Value = app.get("/v1/_changes?collections=hot").await.json().await.unwrap();
    let start = start["next_cursor"].as_str().unwrap().to_owned();

    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let follower = {
        let client = app.client.clone();
        let base = app.url("/v1/_changes?collections=hot&limit=3");
        let done = done.clone();
        tokio::spawn(async move {
            let mut cursor = start;
            let mut seen = Vec::new();
            let mut empty_after_done = 0;
            loop {
                let page: Value = client.get(format!("{base}&since={cursor}")).send().await.unwrap().json().await.unwrap();
                let changes = page["changes"].as_array().unwrap().clone();
                cursor = page["next_cursor"].as_str().unwrap().to_owned();
                if changes.is_empty() {
                    if done.load(std::sync::atomic::Ordering::SeqCst) {
                        empty_after_done += 1;
                        if empty_after_done > 20 {
                            return seen;
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(25)).await;
                }
                seen.extend(changes.iter().map(|change| (change["id"].as_str().unwrap().to_owned(), change["version"].as_i64().unwrap())));
            }
        })
    };

    let mut writers = Vec::new();
    for writer in 0..WRITERS {
        let client = app.client.clone();
        let base = app.url("");
        let ids = ids.clone();
        writers.push(tokio::spawn(async move {
            let mut committed = Vec::new();
            for round in 0..ROUNDS {
                let first = &ids[(writer + round) % ids.len()];
                let second = &ids[(writer + round + 1) % ids.len()];
                let read = |id: &String| client.get(format!("{base}/v1/hot/{id}")).send();
                let a: Value = read(first).await.unwrap().json().await.unwrap();
                if round % 2 == 0 {
                    let response = client
                        .patch(format!("{base}/v1/hot/{first}"))
                        .header("content-type", "application/json")
                        .header("if-match", format!("\"{}\"", a["version"]))
                        .body(json!({"by": writer}).to_string())
                        .send()
                        .await
                        .unwrap();
                    if response.status() == StatusCode::OK {
                        let body: Value = response.json().await.unwrap();
                        committed.push((first.clone(), body["version"].as_i64().unwrap()));
                    }
                } else {
                    let b: Value = read(second).await.unwrap().json().await.unwrap();
                    let response = client
                        .post(format!("{base}/v1/_batch"))
                        .json(&json!({"atomic": true, "operations": [
                            {"op": "update", "collection": "hot", "id": second, "version": b["version"], "patch": {"by": writer}},
                            {"op": "update", "collection": "hot", "id": first, "version": a["version"], "patch": {"by": writer}},
                        ]}))
                        .send()
                        .await
                        .unwrap();
                    if response.status() == StatusCode::OK {
                        let body: Value = response.json().await.unwrap();
                        for result in body["results"].as_array().unwrap() {
                            committed.push((result["record"]["id"].as_str().unwrap().to_owned(), result["record"]["version"].as_i64().unwrap()));
                        }
                    }
                }
            }
            committed
        }));
    }
    let mut committed = Vec::new();
    for writer in writers {
        committed.extend(writer.await.unwrap());
    }
    app.settle_feed().await;
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let seen = follower.await.unwrap();

    let mut expected = committed.clone();
    expected.sort();
    let mut received = seen.clone();
    received.sort();
    assert_eq!(received, expected, "the follower missed or repeated changes");
    for id in &ids {
        let versions: Vec<i64> = seen.iter().filter(|(seen_id, _)| seen_id == id).map(|(_, version)| *version).collect();
        assert!(versions.windows(2).all(|pair| pair[0] < pair[1]), "versions of {id} out of order: {versions:?}");
    }
    assert!(!committed.is_empty());
}

/// An open transaction that wrote a change holds the feed back: a later
/// commit is not shown until the open one ends, and then both arrive in
/// transaction order. A reader that skipped ahead would lose the first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feed_waits_for_open_transaction_postgres() {
    use diesel::{Connection, RunQueryDsl};

    let app = TestApp::spawn(crate::helpers::Backend::Postgres).await;
    app.settle_feed().await;
    let start: Value = app.get("/v1/_changes?collections=notes").await.json().await.unwrap();
    let start = start["next_cursor"].as_str().unwrap().to_owned();

    let (opened_tx, opened_rx) = tokio::sync::oneshot::channel();
    let (commit_tx, commit_rx) = std::sync::mpsc::channel::<()>();
    let url = app.database_url();
    let slow_writer = tokio::task::spawn_blocking(move || {
        let mut conn = diesel::pg::PgConnection::establish(&url).unwrap();
        conn.transaction::<_, diesel::result::Error, _>(|conn| {
            diesel::sql_query(
                "INSERT INTO changes (collection, record_id, version, operation, principal, changed_at) \
                 VALUES ('notes', '0190a0b2-7c3d-7e4f-8a9b-0c1d2e3f4a5b', 1, 'created', 'slow', now())",
            )
            .execute(conn)?;
            opened_tx.send(()).unwrap();
            commit_rx.recv().unwrap();
            Ok(())
        })
        .unwrap();
    });
    opened_rx.await.unwrap();

    let fast = app.create("notes", json!({"fast": true})).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let held: Value = app.get(&format!("/v1/_changes?collections=notes&since={start}")).await.json().await.unwrap();
    assert_eq!(held["changes"], json!([]), "the feed passed an open transaction");

    commit_tx.send(()).unwrap();
    slow_writer.await.unwrap();
    app.settle_feed().await;
    let page: Value = app.get(&format!("/v1/_changes?collections=notes&since={start}")).await.json().await.unwrap();
    let ids: Vec<_> = page["changes"].as_array().unwrap().iter().map(|change| change["id"].clone()).collect();
    assert_eq!(ids, vec![json!("0190a0b2-7c3d-7e4f-8a9b-0c1d2e3f4a5b"), fast["id"].clone()]);
}
