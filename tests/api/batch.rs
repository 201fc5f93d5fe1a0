//! `POST /v1/_batch`, atomic and not.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::both_backends;
use crate::helpers::{TestApp, expect_problem};

both_backends!(
    separate_batch_reports_each_result,
    atomic_batch_commits_in_order,
    atomic_batch_writes_nothing_on_failure,
    atomic_batch_races_single_writer,
    batch_rejects_bad_envelopes,
);

async fn batch(app: &TestApp, body: Value) -> reqwest::Response {
    app.post_json("/v1/_batch", &body).await
}

async fn separate_batch_reports_each_result(app: TestApp) {
    let first = app.create("notes", json!({"n": 1})).await;
    let second = app.create("notes", json!({"n": 2})).await;
    let (first_id, second_id) = (first["id"].as_str().unwrap(), second["id"].as_str().unwrap());

    let response = batch(
        &app,
        json!({"operations": [
            {"op": "create", "collection": "notes", "data": {"n": 3}},
            {"op": "update", "collection": "notes", "id": first_id, "version": 7, "patch": {"n": 10}},
            {"op": "delete", "collection": "notes", "id": second_id, "version": 1},
            {"op": "rename", "collection": "notes"},
            {"op": "replace", "collection": "notes", "id": first_id, "data": {"n": 11}},
        ]}),
    )
    .await;

    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["atomic"], false);
    let results = body["results"].as_array().unwrap();
    let statuses: Vec<_> = results.iter().map(|result| result["status"].clone()).collect();
    assert_eq!(statuses, vec![json!(201), json!(409), json!(204), json!(400), json!(428)]);
    assert_eq!(results[0]["record"]["n"], 3);
    assert_eq!(results[1]["problem"]["type"], "https://versa.dev/problems/version-conflict");
    assert_eq!(results[1]["problem"]["current"]["n"], 1);
    assert_eq!(results[3]["problem"]["type"], "https://versa.dev/problems/invalid-operation");
    assert_eq!(results[4]["problem"]["type"], "https://versa.dev/problems/precondition-required");
    let indexes: Vec<_> = results.iter().map(|result| result["index"].clone()).collect();
    assert_eq!(indexes, vec![json!(0), json!(1), json!(2), json!(3), json!(4)]);

    assert_eq!(app.read("notes", first_id).await["version"], 1);
    assert_eq!(app.all_changes().await.len(), 4);
}

async fn atomic_batch_commits_in_order(app: TestApp) {
    let existing = app.create("notes", json!({"n": 0})).await;
    let id = existing["id"].as_str().unwrap();
    let new_id = "0190a0b2-7c3d-7e4f-8a9b-0c1d2e3f4a5b";
    app.settle_feed().await;
    let start: Value = app.get("/v1/_changes?collections=notes").await.json().await.unwrap();

    let response = batch(
        &app,
        json!({"atomic": true, "operations": [
            {"op": "create", "collection": "notes", "id": new_id, "data": {"n": 1}},
            {"op": "update", "collection": "notes", "id": id, "version": 1, "patch": {"n": 5}},
            {"op": "update", "collection": "notes", "id": new_id, "version": 1, "patch": {"n": 2}},
            {"op": "create", "collection": "tasks", "data": {"t": true}},
        ]}),
    )
    .await;

    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["atomic"], true);
    let statuses: Vec<_> = body["results"].as_array().unwrap().iter().map(|result| result["status"].clone()).collect();
    assert_eq!(statuses, vec![json!(201), json!(200), json!(200), json!(201)]);
    assert_eq!(app.read("notes", new_id).await["n"], 2);

    // Paging one change at a time returns the batch's changes in operation order.
    app.settle_feed().await;
    let mut cursor = start["next_cursor"].as_str().unwrap().to_owned();
    let mut seen = Vec::new();
    for _ in 0..10 {
        let page: Value = app.get(&format!("/v1/_changes?limit=1&collections=notes,tasks&since={cursor}")).await.json().await.unwrap();
        let Some(change) = page["changes"].as_array().unwrap().first().cloned() else { break };
        seen.push((change["collection"].as_str().unwrap().to_owned(), change["version"].as_i64().unwrap(), change["operation"].as_str().unwrap().to_owned()));
        cursor = page["next_cursor"].as_str().unwrap().to_owned();
    }
    let expected = vec![
        ("notes".to_owned(), 1, "created".to_owned()),
        ("notes".to_owned(), 2, "updated".to_owned()),
        ("notes".to_owned(), 2, "updated".to_owned()),
        ("tasks".to_owned(), 1, "created".to_owned()),
    ];
    assert_eq!(seen, expected);
}

async fn atomic_batch_writes_nothing_on_failure(app: TestApp) {
    let existing = app.create("notes", json!({"n": 0})).await;
    let id = existing["id"].as_str().unwrap();
    let update = app.send(Method::PATCH, &format!("/v1/notes/{id}"), "application/json", &json!({"n": 1}), &[("if-match", "\"1\"")]).await;
    assert_eq!(update.status(), StatusCode::OK);

    let response = batch(
        &app,
        json!({"atomic": true, "operations": [
            {"op": "create", "collection": "notes", "id": "0190a0b2-7c3d-7e4f-8a9b-0c1d2e3f4a5b", "data": {"n": 1}},
            {"op": "update", "collection": "notes", "id": id, "version": 1, "patch": {"n": 5}},
            {"op": "delete", "collection": "notes", "id": "0190a0b2-7c3d-7e4f-8a9b-0c1d2e3f4a5c", "version": 1},
        ]}),
    )
    .await;

    let problem = expect_problem(response, StatusCode::CONFLICT, "batch-failed").await;
    let failures = problem["failures"].as_array().unwrap();
    assert_eq!(failures.len(), 2, "{problem}");
    assert_eq!(failures[0]["index"], 1);
    assert_eq!(failures[0]["status"], 409);
    assert_eq!(failures[0]["problem"]["current"]["n"], 1);
    assert_eq!(failures[0]["problem"]["current_version"], 2);
    assert_eq!(failures[1]["index"], 2);
    assert_eq!(failures[1]["status"], 404);

    let missing = app.get("/v1/notes/0190a0b2-7c3d-7e4f-8a9b-0c1d2e3f4a5b").await;
    expect_problem(missing, StatusCode::NOT_FOUND, "record-not-found").await;
    assert_eq!(app.all_changes().await.len(), 2);
}

/// A single PATCH and an atomic batch race for the same version of record
/// A; the batch also writes B. Exactly one wins A, and B changes only when
/// the batch won.
async fn atomic_batch_races_single_writer(app: TestApp) {
    for round in 0..8 {
        let a = app.create("notes", json!({"round": round})).await["id"].as_str().unwrap().to_owned();
        let b = app.create("notes", json!({"round": round})).await["id"].as_str().unwrap().to_owned();

        let single = app
            .request(Method::PATCH, &format!("/v1/notes/{a}"))
            .header("content-type", "application/json")
            .header("if-match", "\"1\"")
            .body(json!({"by": "single"}).to_string());
        let batch_request = app.request(Method::POST, "/v1/_batch").json(&json!({"atomic": true, "operations": [
            {"op": "update", "collection": "notes", "id": b, "version": 1, "patch": {"by": "batch"}},
            {"op": "update", "collection": "notes", "id": a, "version": 1, "patch": {"by": "batch"}},
        ]}));
        let (single, batch_response) = tokio::join!(single.send(), batch_request.send());
        let (single, batch_response) = (single.unwrap().status(), batch_response.unwrap().status());

        let record_a = app.read("notes", &a).await;
        let record_b = app.read("notes", &b).await;
        assert_eq!(record_a["version"], 2);
        if batch_response == StatusCode::OK {
            assert_eq!(single, StatusCode::CONFLICT);
            assert_eq!(record_a["by"], "batch");
            assert_eq!(record_b["version"], 2);
        } else {
            assert_eq!(batch_response, StatusCode::CONFLICT);
            assert_eq!(single, StatusCode::OK);
            assert_eq!(record_a["by"], "single");
            assert_eq!(record_b["version"], 1);
        }
    }
}

async fn batch_rejects_bad_envelopes(app: TestApp) {
    for body in [json!([]), json!({"operations": []}), json!({"atomic": "yes", "operations": [{}]}), json!({"operations": [{}], "extra": 1})] {
        expect_problem(batch(&app, body).await, StatusCode::BAD_REQUEST, "invalid-body").await;
    }

    let operations: Vec<Value> = (0..101).map(|n| json!({"op": "create", "collection": "notes", "data": {"n": n}})).collect();
    let problem = expect_problem(batch(&app, json!({"operations": operations})).await, StatusCode::PAYLOAD_TOO_LARGE, "batch-too-large").await;
    assert_eq!(problem["max_batch_operations"], 100);
    assert!(app.all_changes().await.is_empty());
}
