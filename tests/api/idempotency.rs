use std::collections::HashMap;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::both_backends;
use crate::helpers::{TestApp, expect_problem, header};

both_backends!(repeat_returns_stored_response, key_with_other_body_is_422, concurrent_repeats_create_once, failed_create_frees_key);

async fn create_with_key(app: &TestApp, key: &str, body: &Value) -> reqwest::Response {
    app.request(Method::POST, "/v1/notes").header("idempotency-key", key).json(body).send().await.unwrap()
}

async fn repeat_returns_stored_response(app: TestApp) {
    let first = create_with_key(&app, "key-1", &json!({"title": "a"})).await;
    assert_eq!(first.status(), StatusCode::CREATED);
    assert_eq!(header(&first, "idempotent-replayed"), "");
    let location = header(&first, "location");
    let first_body: Value = first.json().await.unwrap();

    let repeat = create_with_key(&app, "key-1", &json!({"title": "a"})).await;

    assert_eq!(repeat.status(), StatusCode::CREATED);
    assert_eq!(header(&repeat, "idempotent-replayed"), "true");
    assert_eq!(header(&repeat, "location"), location);
    assert_eq!(header(&repeat, "etag"), "\"1\"");
    assert_eq!(repeat.json::<Value>().await.unwrap(), first_body);
    assert_eq!(app.all_changes().await.len(), 1);
}

async fn key_with_other_body_is_422(app: TestApp) {
    assert_eq!(create_with_key(&app, "key-2", &json!({"title": "a"})).await.status(), StatusCode::CREATED);

    let response = create_with_key(&app, "key-2", &json!({"title": "b"})).await;

    expect_problem(response, StatusCode::UNPROCESSABLE_ENTITY, "idempotency-key-reused").await;
    assert_eq!(app.all_changes().await.len(), 1);
}

async fn concurrent_repeats_create_once(app: TestApp) {
    let mut tasks = Vec::new();
    for _ in 0..12 {
        let request = app.request(Method::POST, "/v1/notes").header("idempotency-key", "same").json(&json!({"title": "x"}));
        tasks.push(tokio::spawn(async move {
            let response = request.send().await.unwrap();
            let status = response.status();
            let body: Value = response.json().await.unwrap();
            (status, body)
        }));
    }

    let mut statuses = HashMap::new();
    let mut ids = Vec::new();
    for task in tasks {
        let (status, body) = task.await.unwrap();
        *statuses.entry(status).or_insert(0) += 1;
        match status {
            StatusCode::CREATED => ids.push(body["id"].clone()),
            StatusCode::CONFLICT => assert_eq!(body["type"], "https://versa.dev/problems/idempotency-key-in-use"),
            other => panic!("unexpected status {other}: {body}"),
        }
    }

    assert!(!ids.is_empty(), "{statuses:?}");
    assert!(ids.iter().all(|id| *id == ids[0]), "{ids:?}");
    assert_eq!(app.all_changes().await.len(), 1);
}

async fn failed_create_frees_key(app: TestApp) {
    let id = "0190a0b2-7c3d-7e4f-8a9b-0c1d2e3f4a5b";
    app.create("notes", json!({"id": id})).await;

    let first_attempt = create_with_key(&app, "key-3", &json!({"id": id})).await;
    expect_problem(first_attempt, StatusCode::CONFLICT, "record-exists").await;

    let retry = create_with_key(&app, "key-3", &json!({"id": id})).await;
    expect_problem(retry, StatusCode::CONFLICT, "record-exists").await;
}
