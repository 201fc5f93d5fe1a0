//! The WebSocket protocol at `/v1/_ws`.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::both_backends;
use crate::helpers::TestApp;

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn open(app: &TestApp) -> Socket {
    let url = app.url("/v1/_ws").replacen("http://", "ws://", 1);
    let (socket, response) = tokio_tungstenite::connect_async(url).await.expect("WebSocket handshake");
    assert_eq!(response.status(), 101);
    socket
}

async fn send(socket: &mut Socket, message: Value) {
    socket.send(Message::text(message.to_string())).await.unwrap();
}

/// Returns the next JSON message, skipping pings; `None` when closed.
async fn next(socket: &mut Socket) -> Option<Value> {
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(10), socket.next()).await.expect("a message within 10 s")?;
        match frame.expect("WebSocket frame") {
            Message::Text(text) => return Some(serde_json::from_str(&text).unwrap()),
            Message::Close(_) => return None,
            _ => continue,
        }
    }
}

both_backends!(
    socket_delivers_tagged_events,
    socket_resumes_and_unsubscribes,
    socket_reports_bad_messages,
);

async fn socket_delivers_tagged_events(app: TestApp) {
    let mut socket = open(&app).await;
    send(&mut socket, json!({"type": "subscribe", "id": "n", "collections": ["notes"]})).await;
    assert_eq!(next(&mut socket).await.unwrap(), json!({"type": "subscribed", "subscription": "n"}));
    send(&mut socket, json!({"type": "subscribe", "id": "t", "collections": ["tasks"]})).await;
    assert_eq!(next(&mut socket).await.unwrap(), json!({"type": "subscribed", "subscription": "t"}));

    let note = app.create("notes", json!({"title": "a"})).await;
    let event = next(&mut socket).await.unwrap();
    assert_eq!(event["type"], "notes.created");
    assert_eq!(event["subscription"], "n");
    assert_eq!(event["payload"], note);
    assert!(event["cursor"].is_string());

    let task = app.create("tasks", json!({"done": false})).await;
    let event = next(&mut socket).await.unwrap();
    assert_eq!(event["subscription"], "t");
    assert_eq!(event["payload"]["id"], task["id"]);

    send(&mut socket, json!({"type": "ping", "payload": {"n": 1}})).await;
    assert_eq!(next(&mut socket).await.unwrap(), json!({"type": "pong", "payload": {"n": 1}}));
}

async fn socket_resumes_and_unsubscribes(app: TestApp) {
    let start: Value = app.get("/v1/_changes").await.json().await.unwrap();
    let first = app.create("notes", json!({"n": 1})).await;
    // On PostgreSQL a commit becomes readable once older transactions end;
    // only then is it part of the catch-up rather than delivered live.
    app.settle_feed().await;
    let mut socket = open(&app).await;

    send(&mut socket, json!({"type": "subscribe", "id": "s", "collections": ["notes"], "since": start["next_cursor"]})).await;
    let caught_up = next(&mut socket).await.unwrap();
    assert_eq!(caught_up["payload"]["id"], first["id"]);
    assert_eq!(next(&mut socket).await.unwrap()["type"], "subscribed");

    send(&mut socket, json!({"type": "unsubscribe", "id": "s"})).await;
    assert_eq!(next(&mut socket).await.unwrap(), json!({"type": "unsubscribed", "subscription": "s"}));
    app.create("notes", json!({"n": 2})).await;
    send(&mut socket, json!({"type": "ping"})).await;
    assert_eq!(next(&mut socket).await.unwrap()["type"], "pong");
}

async fn socket_reports_bad_messages(app: TestApp) {
    let mut socket = open(&app).await;
    let cases = [
        (json!("not an object"), "invalid-message"),
        (json!({"type": "dance"}), "invalid-message"),
        (json!({"type": "subscribe", "id": "x", "collections": ["Bad"]}), "invalid-subscription"),
        (json!({"type": "subscribe", "id": "x", "since": "nope"}), "invalid-subscription"),
        // A well-formed cursor past the end of the feed, which no server issued.
        (json!({"type": "subscribe", "id": "x", "since": "Yzo5OTk5OTk5OTk5OTk6MQ"}), "invalid-subscription"),
        (json!({"type": "unsubscribe", "id": "missing"}), "unknown-subscription"),
    ];
    for (message, code) in cases {
        send(&mut socket, message.clone()).await;
        let reply = next(&mut socket).await.unwrap();
        assert_eq!(reply["type"], "error", "{message}");
        assert_eq!(reply["payload"]["code"], code, "{message}");
        assert!(reply["payload"]["message"].as_str().is_some_and(|text| !text.is_empty()));
    }

    send(&mut socket, json!({"type": "subscribe", "id": "x"})).await;
    assert_eq!(next(&mut socket).await.unwrap()["type"], "subscribed");
    send(&mut socket, json!({"type": "subscribe", "id": "x"})).await;
    assert_eq!(next(&mut socket).await.unwrap()["payload"]["code"], "duplicate-subscription");
}

const SMALL_LIMITS: &str = "[server]\nmax_subscriptions = 2\nmax_ws_message_bytes = 1024\n";

both_backends!(config = SMALL_LIMITS; socket_enforces_limits);

async fn socket_enforces_limits(app: TestApp) {
    let mut socket = open(&app).await;
    for id in ["a", "b"] {
        send(&mut socket, json!({"type": "subscribe", "id": id})).await;
        assert_eq!(next(&mut socket).await.unwrap()["type"], "subscribed");
    }
    send(&mut socket, json!({"type": "subscribe", "id": "c"})).await;
    assert_eq!(next(&mut socket).await.unwrap()["payload"]["code"], "too-many-subscriptions");

    send(&mut socket, json!({"type": "ping", "payload": "x".repeat(4096)})).await;
    let closing = loop {
        match tokio::time::timeout(Duration::from_secs(10), socket.next()).await.unwrap() {
            Some(Ok(Message::Close(frame))) => break frame,
            Some(Ok(_)) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    assert_eq!(closing.map(|frame| frame.code), Some(CloseCode::Size));
}
