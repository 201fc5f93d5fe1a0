//! Lost updates and double commits under concurrent clients.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::both_backends;
use crate::helpers::{TestApp, send_together};

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
