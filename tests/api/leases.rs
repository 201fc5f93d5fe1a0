//! Edit leases.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::both_backends;
use crate::helpers::{SseClient, TestApp, expect_problem, header, send_together};

const LEASES: &str = r#"
[collections.notes]
lease_ttl_seconds = 30

[collections.docs]
leases = "required"

[collections.plain]
leases = "off"

[collections.feed-sentinel]
"#;

both_backends!(
    config = LEASES;
    lease_lifecycle,
    concurrent_acquires_have_one_winner,
    expired_lease_is_free,
    required_mode_needs_the_token,
    lease_requests_are_validated,
    lease_transitions_are_pushed,
    other_instance_sees_the_lease,
    socket_lease_is_renewed_and_released,
    socket_lease_ends_with_the_socket,
    list_includes_leases_on_request,
);

async fn list_includes_leases_on_request(app: TestApp) {
    let leased = record(&app, "notes").await;
    record(&app, "notes").await;
    let lease: Value = acquire(&app, &leased, None).await.json().await.unwrap();

    let plain: Value = app.get("/v1/notes").await.json().await.unwrap();
    assert_eq!(plain.get("leases"), None);

    let page: Value = app.get("/v1/notes?include=leases").await.json().await.unwrap();
    assert_eq!(page["items"].as_array().unwrap().len(), 2);
    let leases = page["leases"].as_object().unwrap();
    assert_eq!(leases.len(), 1);
    let id = leased.rsplit('/').next().unwrap();
    assert_eq!(leases[id], json!({"holder": "anonymous", "acquired_at": lease["acquired_at"], "expires_at": lease["expires_at"]}));

    expect_problem(app.get("/v1/notes?include=everything").await, StatusCode::BAD_REQUEST, "invalid-query").await;
}

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn socket(app: &TestApp) -> Socket {
    let url = app.url("/v1/_ws").replacen("http://", "ws://", 1);
    tokio_tungstenite::connect_async(url).await.unwrap().0
}

async fn exchange(socket: &mut Socket, message: Value) -> Value {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    socket.send(Message::text(message.to_string())).await.unwrap();
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(10), socket.next()).await.unwrap().unwrap().unwrap();
        if let Message::Text(text) = frame {
            return serde_json::from_str(&text).unwrap();
        }
    }
}

async fn socket_lease_is_renewed_and_released(app: TestApp) {
    let path = record(&app, "notes").await;
    let id = path.rsplit('/').next().unwrap().to_owned();
    let mut socket = socket(&app).await;

    let acquired = exchange(&mut socket, json!({"type": "acquire_lease", "collection": "notes", "id": id, "ttl_seconds": 2})).await;
    assert_eq!(acquired["type"], "lease_acquired", "{acquired}");
    assert_eq!(acquired["payload"]["holder"], "anonymous");
    assert_eq!(acquired["payload"]["token"].as_str().unwrap().len(), 64);

    let refused = exchange(&mut socket, json!({"type": "acquire_lease", "collection": "notes", "id": id})).await;
    assert_eq!(refused["type"], "error");
    assert_eq!(refused["payload"]["code"], "locked");
    assert_eq!(refused["payload"]["holder"], "anonymous");

    // Twice the lease's lifetime later it is still held, because the open
    // socket renews it.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(app.get(&format!("{path}/lease")).await.status(), StatusCode::OK);

    let released = exchange(&mut socket, json!({"type": "release_lease", "collection": "notes", "id": id})).await;
    assert_eq!(released, json!({"type": "lease_released", "payload": {"collection": "notes", "id": id}}));
    expect_problem(app.get(&format!("{path}/lease")).await, StatusCode::NOT_FOUND, "lease-not-found").await;
}

async fn socket_lease_ends_with_the_socket(app: TestApp) {
    let path = record(&app, "notes").await;
    let id = path.rsplit('/').next().unwrap().to_owned();
    let mut socket = socket(&app).await;
    let acquired = exchange(&mut socket, json!({"type": "acquire_lease", "collection": "notes", "id": id})).await;
    assert_eq!(acquired["type"], "lease_acquired", "{acquired}");

    // Dropped without a close frame, as a crashed browser would.
    drop(socket);

    let mut status = StatusCode::OK;
    for _ in 0..100 {
        status = app.get(&format!("{path}/lease")).await.status();
        if status == StatusCode::NOT_FOUND {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(acquire(&app, &path, None).await.status(), StatusCode::CREATED);
}

async fn record(app: &TestApp, collection: &str) -> String {
    let created = app.create(collection, json!({"title": "a"})).await;
    format!("/v1/{collection}/{}", created["id"].as_str().unwrap())
}

async fn acquire(app: &TestApp, path: &str, body: Option<Value>) -> reqwest::Response {
    let mut request = app.request(Method::POST, &format!("{path}/lease"));
    if let Some(body) = body {
        request = request.json(&body);
    }
    request.send().await.unwrap()
}

async fn lease_lifecycle(app: TestApp) {
    let path = record(&app, "notes").await;

    let response = acquire(&app, &path, None).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let lease: Value = response.json().await.unwrap();
    let token = lease["token"].as_str().unwrap().to_owned();
    assert_eq!(token.len(), 64);
    assert_eq!(lease["holder"], "anonymous");
    let acquired = chrono::DateTime::parse_from_rfc3339(lease["acquired_at"].as_str().unwrap()).unwrap();
    let expires = chrono::DateTime::parse_from_rfc3339(lease["expires_at"].as_str().unwrap()).unwrap();
    assert_eq!((expires - acquired).num_seconds(), 30);

    let shown: Value = app.get(&format!("{path}/lease")).await.json().await.unwrap();
    assert_eq!(shown, json!({"holder": "anonymous", "acquired_at": lease["acquired_at"], "expires_at": lease["expires_at"]}));
    let read = app.get(&path).await;
    assert_eq!(header(&read, "versa-lease"), format!("holder=\"anonymous\", expires_at=\"{}\"", lease["expires_at"].as_str().unwrap()));

    let second = acquire(&app, &path, None).await;
    let problem = expect_problem(second, StatusCode::LOCKED, "locked").await;
    assert_eq!(problem["holder"], "anonymous");
    assert_eq!(problem["expires_at"], lease["expires_at"]);

    let renewed = app.request(Method::PUT, &format!("{path}/lease")).header("lease-token", &token).json(&json!({"ttl_seconds": 120})).send().await.unwrap();
    assert_eq!(renewed.status(), StatusCode::OK);
    let renewed: Value = renewed.json().await.unwrap();
    assert_eq!(renewed.get("token"), None);
    assert!(renewed["expires_at"].as_str().unwrap() > lease["expires_at"].as_str().unwrap());

    let released = app.request(Method::DELETE, &format!("{path}/lease")).header("lease-token", &token).send().await.unwrap();
    assert_eq!(released.status(), StatusCode::NO_CONTENT);
    expect_problem(app.get(&format!("{path}/lease")).await, StatusCode::NOT_FOUND, "lease-not-found").await;
    assert_eq!(header(&app.get(&path).await, "versa-lease"), "");

    let again = app.request(Method::DELETE, &format!("{path}/lease")).header("lease-token", &token).send().await.unwrap();
    expect_problem(again, StatusCode::GONE, "lease-gone").await;
}

async fn concurrent_acquires_have_one_winner(app: TestApp) {
    let path = record(&app, "notes").await;
    let statuses = send_together((0..32).map(|_| app.request(Method::POST, &format!("{path}/lease"))).collect()).await;

    assert_eq!(statuses.iter().filter(|status| **status == StatusCode::CREATED).count(), 1, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|status| **status == StatusCode::LOCKED).count(), 31, "{statuses:?}");
}

async fn expired_lease_is_free(app: TestApp) {
    let path = record(&app, "notes").await;
    let first: Value = acquire(&app, &path, Some(json!({"ttl_seconds": 1}))).await.json().await.unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;

    let second = acquire(&app, &path, None).await;
    assert_eq!(second.status(), StatusCode::CREATED);
    let second: Value = second.json().await.unwrap();

    let stale = app.request(Method::DELETE, &format!("{path}/lease")).header("lease-token", first["token"].as_str().unwrap()).send().await.unwrap();
    expect_problem(stale, StatusCode::GONE, "lease-gone").await;
    let renew = app.request(Method::PUT, &format!("{path}/lease")).header("lease-token", first["token"].as_str().unwrap()).send().await.unwrap();
    expect_problem(renew, StatusCode::GONE, "lease-gone").await;
    let shown: Value = app.get(&format!("{path}/lease")).await.json().await.unwrap();
    assert_eq!(shown["expires_at"], second["expires_at"]);
}

async fn required_mode_needs_the_token(app: TestApp) {
    let path = record(&app, "docs").await;
    let lease: Value = acquire(&app, &path, None).await.json().await.unwrap();
    let token = lease["token"].as_str().unwrap();
    let patch = |headers: Vec<(&'static str, String)>, version: i64| {
        let mut request = app
            .request(Method::PATCH, &path)
            .header("content-type", "application/merge-patch+json")
            .header("if-match", format!("\"{version}\""))
            .body(json!({"title": "b"}).to_string());
        for (name, value) in headers {
            request = request.header(name, value);
        }
        request.send()
    };

    let locked = patch(vec![], 1).await.unwrap();
    let problem = expect_problem(locked, StatusCode::LOCKED, "locked").await;
    assert_eq!(problem["holder"], "anonymous");
    expect_problem(patch(vec![("lease-token", "wrong".into())], 1).await.unwrap(), StatusCode::LOCKED, "locked").await;
    let delete = app.request(Method::DELETE, &path).header("if-match", "\"1\"").send().await.unwrap();
    expect_problem(delete, StatusCode::LOCKED, "locked").await;

    // The lease never bypasses the version check.
    expect_problem(patch(vec![("lease-token", token.to_owned())], 7).await.unwrap(), StatusCode::CONFLICT, "version-conflict").await;
    assert_eq!(patch(vec![("lease-token", token.to_owned())], 1).await.unwrap().status(), StatusCode::OK);

    let batch = app.post_json("/v1/_batch", &json!({"operations": [
        {"op": "update", "collection": "docs", "id": path.rsplit('/').next().unwrap(), "version": 2, "patch": {"n": 1}},
        {"op": "update", "collection": "docs", "id": path.rsplit('/').next().unwrap(), "version": 2, "patch": {"n": 2}, "lease_token": token},
    ]})).await;
    let results: Value = batch.json().await.unwrap();
    assert_eq!(results["results"][0]["status"], 423);
    assert_eq!(results["results"][1]["status"], 200);

    let released = app.request(Method::DELETE, &format!("{path}/lease")).header("lease-token", token).send().await.unwrap();
    assert_eq!(released.status(), StatusCode::NO_CONTENT);
    assert_eq!(patch(vec![], 3).await.unwrap().status(), StatusCode::OK);
}

async fn lease_requests_are_validated(app: TestApp) {
    let path = record(&app, "notes").await;
    for body in [json!({"ttl_seconds": 0}), json!({"ttl_seconds": 301}), json!({"ttl_seconds": "long"}), json!({"other": 1})] {
        expect_problem(acquire(&app, &path, Some(body)).await, StatusCode::BAD_REQUEST, "invalid-lease").await;
    }
    let no_token = app.request(Method::PUT, &format!("{path}/lease")).send().await.unwrap();
    expect_problem(no_token, StatusCode::BAD_REQUEST, "invalid-lease").await;

    let missing = acquire(&app, "/v1/notes/0190a0b2-7c3d-7e4f-8a9b-0c1d2e3f4a5b", None).await;
    expect_problem(missing, StatusCode::NOT_FOUND, "record-not-found").await;

    let plain = record(&app, "plain").await;
    expect_problem(acquire(&app, &plain, None).await, StatusCode::NOT_FOUND, "leases-off").await;
    expect_problem(app.get(&format!("{plain}/lease")).await, StatusCode::NOT_FOUND, "leases-off").await;
}

async fn lease_transitions_are_pushed(app: TestApp) {
    let path = record(&app, "notes").await;
    let id = path.rsplit('/').next().unwrap().to_owned();
    app.settle_feed().await;
    let (mut events, _) = SseClient::open(&app, &format!("/v1/_events?ids={id}"), &[]).await;

    let lease: Value = acquire(&app, &path, None).await.json().await.unwrap();
    let token = lease["token"].as_str().unwrap();
    app.request(Method::PUT, &format!("{path}/lease")).header("lease-token", token).send().await.unwrap();
    app.request(Method::DELETE, &format!("{path}/lease")).header("lease-token", token).send().await.unwrap();
    acquire(&app, &path, Some(json!({"ttl_seconds": 1}))).await;

    let mut types = Vec::new();
    while types.len() < 5 {
        let frame = events.next_event().await.unwrap();
        let data = frame.data.unwrap();
        assert_eq!(data["payload"]["collection"], "notes");
        assert_eq!(data["payload"]["id"], id.as_str());
        assert_eq!(data["payload"]["holder"], "anonymous");
        assert!(data["payload"]["expires_at"].is_string());
        types.push(frame.event.unwrap());
    }
    assert_eq!(types, vec!["lease.acquired", "lease.renewed", "lease.released", "lease.acquired", "lease.expired"]);
}

async fn other_instance_sees_the_lease(app: TestApp) {
    let path = record(&app, "notes").await;
    let other = app.restart_with_config(LEASES).await;

    let lease: Value = acquire(&app, &path, None).await.json().await.unwrap();

    let shown: Value = other.get(&format!("{path}/lease")).await.json().await.unwrap();
    assert_eq!(shown["expires_at"], lease["expires_at"]);
    expect_problem(acquire(&other, &path, None).await, StatusCode::LOCKED, "locked").await;
}

const LEASES_WITH_AUTH: &str = r#"
[[auth.tokens]]
principal = "alice"
sha256 = "43dd47c3c09b91fa6c62f8227abd0a3958c608f5b8b477adc042d963af6dc84b"
roles = ["editor"]

[[auth.tokens]]
principal = "ada"
sha256 = "10a4c7c9fc5206d6f36dc6944a81bb6f4a3cb0e25014ae3b12e6c3e52712292a"
roles = ["admin"]

[[auth.tokens]]
principal = "Élise"
sha256 = "52219d01565c550f324484fe4e7ef268785bbd2e03966bc276f7260641ad3f80"
roles = ["editor"]

[collections.notes]
break_leases = ["admin"]
"#;

both_backends!(config = LEASES_WITH_AUTH; breaking_needs_the_role, non_ascii_holder_is_encoded);

/// Sends a holder's name outside ASCII percent-encoded as UTF-8 (RFC 8187),
/// because a quoted header value cannot carry it.
async fn non_ascii_holder_is_encoded(app: TestApp) {
    let created: Value = app.request(Method::POST, "/v1/notes").bearer_auth("elise-token").json(&json!({})).send().await.unwrap().json().await.unwrap();
    let path = format!("/v1/notes/{}", created["id"].as_str().unwrap());
    let lease: Value = app.request(Method::POST, &format!("{path}/lease")).bearer_auth("elise-token").send().await.unwrap().json().await.unwrap();

    let read = app.request(Method::GET, &path).bearer_auth("editor-token").send().await.unwrap();

    let expected = format!("holder*=UTF-8''%C3%89lise, expires_at=\"{}\"", lease["expires_at"].as_str().unwrap());
    assert_eq!(header(&read, "versa-lease"), expected);
}

async fn breaking_needs_the_role(app: TestApp) {
    let created: Value = app.request(Method::POST, "/v1/notes").bearer_auth("editor-token").json(&json!({})).send().await.unwrap().json().await.unwrap();
    let path = format!("/v1/notes/{}", created["id"].as_str().unwrap());
    let (mut events, _) = SseClient::open(&app, &format!("/v1/_events?ids={}", created["id"].as_str().unwrap()), &[("authorization", "Bearer admin-token")]).await;
    let lease = app.request(Method::POST, &format!("{path}/lease")).bearer_auth("editor-token").send().await.unwrap();
    assert_eq!(lease.status(), StatusCode::CREATED);

    let same_principal = app.request(Method::POST, &format!("{path}/lease")).bearer_auth("editor-token").send().await.unwrap();
    expect_problem(same_principal, StatusCode::LOCKED, "locked").await;
    let refused = app.request(Method::DELETE, &format!("{path}/lease?force=true")).bearer_auth("editor-token").send().await.unwrap();
    expect_problem(refused, StatusCode::FORBIDDEN, "forbidden").await;

    let broken = app.request(Method::DELETE, &format!("{path}/lease?force=true")).bearer_auth("admin-token").send().await.unwrap();
    assert_eq!(broken.status(), StatusCode::NO_CONTENT);

    // On PostgreSQL the create may arrive live, after the subscription.
    let mut frame = events.next_event().await.unwrap();
    if frame.event.as_deref() == Some("notes.created") {
        frame = events.next_event().await.unwrap();
    }
    assert_eq!(frame.event.as_deref(), Some("lease.acquired"));
    let frame = events.next_event().await.unwrap();
    assert_eq!(frame.event.as_deref(), Some("lease.broken"));
    let payload = &frame.data.unwrap()["payload"];
    assert_eq!(payload["holder"], "alice");
    assert_eq!(payload["broken_by"], "ada");
}
