//! Lost updates and double commits under concurrent clients.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::both_backends;
use crate::helpers::{TestApp, expect_problem, header, send_together};

both_backends!(concurrent_increments_lose_nothing, same_version_writes_commit_once);

const CLIENTS: usize = 16;
const INCREMENTS_PER_CLIENT: usize = 5;

/// Runs clients that read, increment and write back with If-Match, retrying
/// on 409. Every acknowledged write must be in the final count.
async fn concurrent_increments_lose_nothing(app: TestApp) {
    let created = app.create("counters", json!({"value": 0})).await;
    let path = format!("/v1/counters/{}", created["id"].as_str().unwrap());

    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let client = app.client.clone();
        let url = app.url(&path);
        clients.push(tokio::spawn(async move {
            let mut acknowledged = 0;
            let mut conflicts = 0;
            while acknowledged < INCREMENTS_PER_CLIENT {
                let current: Value = client.get(&url).send().await.unwrap().json().await.unwrap();
                let next = current["value"].as_i64().unwrap() + 1;
                let response = client
                    .patch(&url)
                    .header("content-type", "application/merge-patch+json")
                    .header("if-match", format!("\"{}\"", current["version"]))
                    .body(json!({"value": next}).to_string())
                    .send()
                    .await
                    .unwrap();
                match response.status() {
                    StatusCode::OK => acknowledged += 1,
                    StatusCode::CONFLICT => conflicts += 1,
                    other => panic!("unexpected status {other}"),
                }
            }
            (acknowledged, conflicts)
        }));
    }

    let mut acknowledged = 0;
    for client in clients {
        acknowledged += client.await.unwrap().0;
    }

    let record = app.read("counters", created["id"].as_str().unwrap()).await;
    assert_eq!(acknowledged, CLIENTS * INCREMENTS_PER_CLIENT);
    assert_eq!(record["value"], acknowledged as i64);
    assert_eq!(record["version"], acknowledged as i64 + 1);
    assert_eq!(app.all_changes().await.len(), acknowledged + 1);
}

/// Twenty writers all based on version 1: exactly one commits.
async fn same_version_writes_commit_once(app: TestApp) {
    let created = app.create("notes", json!({"title": "base"})).await;
    let id = created["id"].as_str().unwrap().to_owned();
    let path = format!("/v1/notes/{id}");

    let writers = (0..20).map(|n| {
        app.request(Method::PUT, &path)
            .header("content-type", "application/json")
            .header("if-match", "\"1\"")
            .body(json!({"title": format!("writer {n}")}).to_string())
    });
    let statuses = send_together(writers.collect()).await;

    assert_eq!(statuses.iter().filter(|status| **status == StatusCode::OK).count(), 1, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|status| **status == StatusCode::CONFLICT).count(), 19, "{statuses:?}");
    let history: Value = app.get(&format!("{path}/versions")).await.json().await.unwrap();
    assert_eq!(history["items"].as_array().unwrap().len(), 2);
    assert_eq!(app.all_changes().await.len(), 2);
    assert_eq!(app.read("notes", &id).await["version"], 2);
}

const LIMITED_NOTES: &str = "[collections.notes]\nschema = { type = \"object\", properties = { n = { type = \"integer\", maximum = 10 } } }\n";

both_backends!(config = LIMITED_NOTES; kept_versions_stay_conflicts);

/// Checks that a write based on a version this instance kept, which
/// another instance has since moved on, gets a 409 with the current
/// record, whatever the kept row would have made of the write.
async fn kept_versions_stay_conflicts(app: TestApp) {
    let other = app.restart_with_config(LIMITED_NOTES).await;
    let created = app.create("notes", json!({"n": 1})).await;
    let path = format!("/v1/notes/{}", created["id"].as_str().unwrap());
    assert_eq!(app.get(&path).await.status(), StatusCode::OK);

    let moved = other.send(Method::PATCH, &path, "application/merge-patch+json", &json!({"n": 2}), &[("if-match", "\"1\"")]).await;
    assert_eq!(moved.status(), StatusCode::OK);

    let stale_writes = [
        ("application/merge-patch+json", json!({"n": 3})),
        // Passes its test against version 1 only.
        ("application/json-patch+json", json!([{"op": "test", "path": "/n", "value": 1}, {"op": "replace", "path": "/n", "value": 4}])),
        // Invalid on any base. A stale write is still a conflict first.
        ("application/merge-patch+json", json!({"n": 11})),
    ];
    for (content_type, body) in stale_writes {
        let response = app.send(Method::PATCH, &path, content_type, &body, &[("if-match", "\"1\"")]).await;
        assert_eq!(header(&response, "etag"), "\"2\"", "{body}");
        let problem = expect_problem(response, StatusCode::CONFLICT, "version-conflict").await;
        assert_eq!(problem["current_version"], 2, "{body}");
        assert_eq!(problem["current"]["n"], 2, "{body}");
    }

    // Based on the current version, the same instance writes at once.
    let response = app.send(Method::PATCH, &path, "application/merge-patch+json", &json!({"n": 5}), &[("if-match", "\"2\"")]).await;
    assert_eq!(response.status(), StatusCode::OK);
    let record: Value = response.json().await.unwrap();
    assert_eq!(record["version"], 3);
    assert_eq!(record["n"], 5);
    assert_eq!(other.read("notes", created["id"].as_str().unwrap()).await["n"], 5);
}
