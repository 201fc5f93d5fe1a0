//! Server-Sent Events: live delivery, resume without gaps or duplicates,
//! filters, resets, heartbeats and several instances on one database.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::both_backends;
use crate::helpers::{Backend, SseClient, TestApp, expect_problem};

both_backends!(
    events_resume_after_restart,
    events_deliver_live_changes,
    events_resume_from_last_event_id,
    events_resume_under_concurrent_writes,
    events_filter_by_ids,
    events_reject_bad_parameters,
    events_reach_other_instances,
);

async fn events_deliver_live_changes(app: TestApp) {
    let (mut events, before) = SseClient::open(&app, "/v1/_events?collections=notes", &[]).await;
    assert!(before.is_empty());

    app.create("tasks", json!({"ignored": true})).await;
    let created = app.create("notes", json!({"title": "a"})).await;
    let path = format!("/v1/notes/{}", created["id"].as_str().unwrap());
    let updated: Value = app.send(Method::PATCH, &path, "application/json", &json!({"title": "b"}), &[("if-match", "\"1\"")]).await.json().await.unwrap();
    let deleted = app.request(Method::DELETE, &path).header("if-match", "\"2\"").send().await.unwrap();
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);

    let first = events.next_event().await.unwrap();
    assert_eq!(first.event.as_deref(), Some("notes.created"));
    let data = first.data.unwrap();
    assert_eq!(data["type"], "notes.created");
    assert_eq!(data["payload"], created);
    assert_eq!(data["cursor"].as_str(), first.id.as_deref());

    let second = events.next_event().await.unwrap();
    assert_eq!(second.event.as_deref(), Some("notes.updated"));
    assert_eq!(second.data.unwrap()["payload"], updated);

    let third = events.next_event().await.unwrap();
    assert_eq!(third.event.as_deref(), Some("notes.deleted"));
    let tombstone = &third.data.unwrap()["payload"];
    assert_eq!(tombstone["deleted"], true);
    assert_eq!(tombstone["version"], 3);
}

async fn events_resume_from_last_event_id(app: TestApp) {
    let (mut events, _) = SseClient::open(&app, "/v1/_events?collections=notes", &[]).await;
    let first = app.create("notes", json!({"n": 1})).await;
    let first_event = events.next_event().await.unwrap();
    assert_eq!(first_event.data.as_ref().unwrap()["payload"]["id"], first["id"]);
    drop(events);

    // Changes made while disconnected arrive first, then live ones.
    let missed_a = app.create("notes", json!({"n": 2})).await;
    let missed_b = app.create("notes", json!({"n": 3})).await;
    app.settle_feed().await;
    let last_id = first_event.id.unwrap();
    let (mut events, caught_up) = SseClient::open(&app, "/v1/_events?collections=notes", &[("last-event-id", &last_id)]).await;
    let live = app.create("notes", json!({"n": 4})).await;
    let next = events.next_event().await.unwrap();

    let ids: Vec<_> = caught_up.iter().map(|frame| frame.data.as_ref().unwrap()["payload"]["id"].clone()).collect();
    assert_eq!(ids, vec![missed_a["id"].clone(), missed_b["id"].clone()]);
    assert_eq!(next.data.unwrap()["payload"]["id"], live["id"]);

    app.settle_feed().await;
    let (_, from_since) = SseClient::open(&app, &format!("/v1/_events?collections=notes&since={last_id}"), &[]).await;
    assert_eq!(from_since.len(), 3);
}

/// A subscriber reconnects from a cursor while a writer keeps updating one
/// record: it must see every later version exactly once, in order.
async fn events_resume_under_concurrent_writes(app: TestApp) {
    const WRITES: i64 = 30;
    let created = app.create("counters", json!({"n": 0})).await;
    let id = created["id"].as_str().unwrap().to_owned();
    // The create must be readable before the subscription starts at the end
    // of the feed, or it would arrive as the first live event.
    app.settle_feed().await;
    let (mut first, _) = SseClient::open(&app, "/v1/_events?collections=counters", &[]).await;

    let writer = {
        let client = app.client.clone();
        let url = app.url(&format!("/v1/counters/{id}"));
        tokio::spawn(async move {
            for version in 1..=WRITES {
                let response = client
                    .patch(&url)
                    .header("content-type", "application/json")
                    .header("if-match", format!("\"{version}\""))
                    .body(json!({"n": version}).to_string())
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), StatusCode::OK);
            }
        })
    };

    // Read a few live events, then reconnect from the last one mid-stream.
    let mut versions = Vec::new();
    let mut cursor = String::new();
    for _ in 0..5 {
        let frame = first.next_event().await.unwrap();
        versions.push(frame.data.unwrap()["payload"]["version"].as_i64().unwrap());
        cursor = frame.id.unwrap();
    }
    drop(first);
    let (mut second, caught_up) = SseClient::open(&app, "/v1/_events?collections=counters", &[("last-event-id", &cursor)]).await;
    versions.extend(caught_up.iter().map(|frame| frame.data.as_ref().unwrap()["payload"]["version"].as_i64().unwrap()));
    while versions.last().copied() != Some(WRITES + 1) {
        let frame = second.next_event().await.unwrap();
        versions.push(frame.data.unwrap()["payload"]["version"].as_i64().unwrap());
    }
    writer.await.unwrap();

    let expected: Vec<i64> = (2..=WRITES + 1).collect();
    assert_eq!(versions, expected);
}

async fn events_filter_by_ids(app: TestApp) {
    let watched = app.create("notes", json!({"n": 1})).await;
    let other = app.create("notes", json!({"n": 2})).await;
    let watched_path = format!("/v1/notes/{}", watched["id"].as_str().unwrap());
    let other_path = format!("/v1/notes/{}", other["id"].as_str().unwrap());
    let (mut events, _) = SseClient::open(&app, &format!("/v1/_events?ids={}", watched["id"].as_str().unwrap()), &[]).await;

    app.send(Method::PATCH, &other_path, "application/json", &json!({"n": 20}), &[("if-match", "\"1\"")]).await;
    app.send(Method::PATCH, &watched_path, "application/json", &json!({"n": 10}), &[("if-match", "\"1\"")]).await;

    let frame = events.next_event().await.unwrap();
    assert_eq!(frame.data.unwrap()["payload"]["id"], watched["id"]);
}

async fn events_reject_bad_parameters(app: TestApp) {
    expect_problem(app.get("/v1/_events?since=nope").await, StatusCode::BAD_REQUEST, "invalid-cursor").await;
    expect_problem(app.get("/v1/_events?since=Yzo5OTk5OTk5OTk5OTk6MQ").await, StatusCode::BAD_REQUEST, "invalid-cursor").await;
    expect_problem(app.get("/v1/_events?ids=nope").await, StatusCode::BAD_REQUEST, "invalid-query").await;
    expect_problem(app.get("/v1/_events?other=1").await, StatusCode::BAD_REQUEST, "invalid-query").await;
    let response = app.request(Method::GET, "/v1/_events").header("last-event-id", "nope").send().await.unwrap();
    expect_problem(response, StatusCode::BAD_REQUEST, "invalid-cursor").await;
}

/// A write on one instance reaches a subscriber of another instance on the
/// same database.
async fn events_reach_other_instances(app: TestApp) {
    let other = app.restart_with_config("").await;
    let (mut events, _) = SseClient::open(&other, "/v1/_events?collections=notes", &[]).await;

    let started = std::time::Instant::now();
    let created = app.create("notes", json!({"from": "first instance"})).await;
    let frame = events.next_event().await.unwrap();

    assert_eq!(frame.data.unwrap()["payload"]["id"], created["id"]);
    assert!(started.elapsed() < std::time::Duration::from_secs(2), "took {:?}", started.elapsed());
}

/// A commit on PostgreSQL is announced on the channel that every instance
/// listens on. Without the announcement other instances would still find
/// the change, but only at their next poll.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_commits_are_announced() {
    use futures_util::StreamExt;

    let app = TestApp::spawn(Backend::Postgres).await;
    let (client, mut connection) = tokio_postgres::connect(&app.database_url(), tokio_postgres::NoTls).await.unwrap();
    let (sender, mut notifications) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(Ok(message)) = messages.next().await {
            if let tokio_postgres::AsyncMessage::Notification(notification) = message {
                let _ = sender.send((notification.channel().to_owned(), notification.payload().to_owned()));
            }
        }
    });
    client.batch_execute("LISTEN versa_changes").await.unwrap();

    app.create("notes", json!({})).await;

    let received = tokio::time::timeout(std::time::Duration::from_secs(5), notifications.recv()).await;
    let (channel, sender_tag) = received.expect("no notification within 5 s").expect("listener ended");
    assert_eq!(channel, "versa_changes");
    // The payload tags the sending instance, which skips its own.
    assert_eq!(sender_tag.len(), 32, "{sender_tag}");
    assert!(sender_tag.chars().all(|c| c.is_ascii_hexdigit()), "{sender_tag}");
}

const PUSH_SETTINGS: &str = "[server]\nheartbeat_seconds = 1\n[database]\nchange_retention_seconds = 1\n";

both_backends!(config = PUSH_SETTINGS; events_send_heartbeats, expired_cursor_gets_reset);

async fn events_send_heartbeats(app: TestApp) {
    let (mut events, _) = SseClient::open(&app, "/v1/_events", &[]).await;

    let frame = events.next_frame().await.unwrap();

    assert_eq!(frame.comment.as_deref(), Some("heartbeat"));
}

async fn expired_cursor_gets_reset(app: TestApp) {
    let start: Value = app.get("/v1/_changes").await.json().await.unwrap();
    let old_cursor = start["next_cursor"].as_str().unwrap().to_owned();
    app.create("notes", json!({})).await;
    for _ in 0..100 {
        if app.get(&format!("/v1/_changes?since={old_cursor}")).await.status() == StatusCode::GONE {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }

    let response = app.request(Method::GET, &format!("/v1/_events?since={old_cursor}")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let text = response.text().await.unwrap();

    assert!(text.starts_with("event: reset\ndata: "), "{text}");
    assert!(text.contains("\"type\":\"reset\""), "{text}");
}

/// A subscriber that stops reading is reset once it falls further behind
/// than the push buffer, instead of making the server buffer without bound,
/// and its place in the broadcast is released.
async fn slow_subscriber_is_reset(backend: crate::helpers::Backend) {
    use versa::domain::CollectionName;
    use versa::push::{Hub, PushMessage, subscribe};
    use versa::service::records::{self, WriteContext};

    let app = TestApp::spawn(backend).await;
    let url = versa::storage::DatabaseUrl::parse(&app.database_url()).unwrap();
    let db = tokio::task::spawn_blocking(move || versa::storage::Database::connect(&url, 2, std::time::Duration::from_secs(5)).unwrap())
        .await
        .unwrap();
    let hub = Hub::start(db.clone(), 4).await.unwrap();
    let mut messages = subscribe(hub.clone(), Default::default(), None, std::time::Duration::from_secs(60));
    assert!(matches!(messages.recv().await, Some(PushMessage::Ready)));

    let notes = CollectionName::parse("notes").unwrap();
    let context = WriteContext { principal: "tester".into(), policy: Default::default(), lease_token: None };
    // Each change is read by the feed reader before the next is written, so
    // the subscriber receives them live, one at a time, fills its queue and
    // then falls behind the broadcast.
    for n in 0..200 {
        let before = hub.head();
        records::create(&db, &notes, json!({"n": n}), &context, None).await.unwrap();
        while hub.head() == before {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
    }

    let mut events = 0;
    let reason = loop {
        match tokio::time::timeout(std::time::Duration::from_secs(10), messages.recv()).await.expect("a message within 10 s") {
            Some(PushMessage::Event(_)) => events += 1,
            Some(PushMessage::Reset { reason, lagged }) => {
                assert!(lagged);
                break reason;
            }
            Some(_) => {}
            None => panic!("the subscription ended without a reset after {events} events"),
        }
    };

    assert!(events < 200, "{events}");
    assert_eq!(reason, "the subscriber fell too far behind");
    assert!(messages.recv().await.is_none(), "the subscription must end after a reset");
    drop(messages);
    for _ in 0..100 {
        if hub.subscriber_count() == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(hub.subscriber_count(), 0, "the reset subscription still holds its place in the broadcast");
    hub.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_subscriber_is_reset_sqlite() {
    slow_subscriber_is_reset(crate::helpers::Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_subscriber_is_reset_postgres() {
    slow_subscriber_is_reset(crate::helpers::Backend::Postgres).await;
}

/// A subscriber resumes on a freshly started server from the last cursor it
/// got before the restart, and loses nothing written in between.
async fn events_resume_after_restart(app: TestApp) {
    let (mut events, _) = SseClient::open(&app, "/v1/_events?collections=notes", &[]).await;
    app.create("notes", json!({"n": 1})).await;
    let cursor = events.next_event().await.unwrap().id.unwrap();
    drop(events);
    let missed = app.create("notes", json!({"n": 2})).await;
    app.settle_feed().await;

    let restarted = app.restart_with_config("").await;
    let (mut events, caught_up) = SseClient::open(&restarted, "/v1/_events?collections=notes", &[("last-event-id", &cursor)]).await;
    let live = restarted.create("notes", json!({"n": 3})).await;

    assert_eq!(caught_up.len(), 1);
    assert_eq!(caught_up[0].data.as_ref().unwrap()["payload"]["id"], missed["id"]);
    assert_eq!(events.next_event().await.unwrap().data.unwrap()["payload"]["id"], live["id"]);
}

const TINY_BUFFER: &str = "[server]\npush_buffer = 4\n";

both_backends!(config = TINY_BUFFER; catch_up_under_writes_is_not_reset);

/// A client that reads promptly is not reset when the live stream runs
/// ahead of its catch-up: the missed changes are read from the table again.
async fn catch_up_under_writes_is_not_reset(app: TestApp) {
    let start: Value = app.get("/v1/_changes").await.json().await.unwrap();
    let start = start["next_cursor"].as_str().unwrap().to_owned();
    let mut expected = Vec::new();
    for n in 0..40 {
        expected.push(app.create("notes", json!({"n": n})).await["id"].clone());
    }
    app.settle_feed().await;

    let writer = {
        let client = app.client.clone();
        let url = app.url("/v1/notes");
        tokio::spawn(async move {
            let mut ids = Vec::new();
            for n in 40..80 {
                let body: Value = client.post(&url).json(&json!({"n": n})).send().await.unwrap().json().await.unwrap();
                ids.push(body["id"].clone());
            }
            ids
        })
    };
    let response = app.request(Method::GET, &format!("/v1/_events?collections=notes&since={start}")).send().await.unwrap();
    let mut events = crate::helpers::SseClient::from_response(response);
    let later = writer.await.unwrap();
    expected.extend(later);

    let mut received = Vec::new();
    while received.len() < expected.len() {
        let frame = events.next_event().await.expect("the stream stays open");
        assert_ne!(frame.event.as_deref(), Some("reset"), "reset after {} events", received.len());
        received.push(frame.data.unwrap()["payload"]["id"].clone());
    }
    assert_eq!(received, expected);
}
