use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::both_backends;
use crate::helpers::{TestApp, expect_problem};

both_backends!(
    merge_patch_follows_rfc_7396,
    plain_json_patch_is_merge_patch,
    json_patch_applies_operations,
    json_patch_failure_writes_nothing,
    json_patch_cannot_touch_server_members,
    merge_patch_id_must_match_url,
);

async fn note(app: &TestApp, body: Value) -> (String, String) {
    let created = app.create("notes", body).await;
    let id = created["id"].as_str().unwrap().to_owned();
    (format!("/v1/notes/{id}"), id)
}

async fn merge_patch_follows_rfc_7396(app: TestApp) {
    let (path, _) = note(&app, json!({"a": "b", "c": {"d": "e", "f": "g"}, "list": [1, 2]})).await;

    let patch = json!({"a": "z", "c": {"f": null, "h": 1}, "list": [3]});
    let response = app.send(Method::PATCH, &path, "application/merge-patch+json", &patch, &[("if-match", "\"1\"")]).await;

    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["a"], "z");
    assert_eq!(body["c"], json!({"d": "e", "h": 1}));
    assert_eq!(body["list"], json!([3]));
    assert_eq!(body["version"], 2);
}

async fn plain_json_patch_is_merge_patch(app: TestApp) {
    let (path, id) = note(&app, json!({"a": 1, "b": 2})).await;

    let response = app.send(Method::PATCH, &path, "application/json; charset=utf-8", &json!({"b": null}), &[("if-match", "\"1\"")]).await;

    assert_eq!(response.status(), StatusCode::OK);
    let body = app.read("notes", &id).await;
    assert_eq!(body["a"], 1);
    assert_eq!(body.get("b"), None);
}

async fn json_patch_applies_operations(app: TestApp) {
    let (path, _) = note(&app, json!({"tags": ["a"], "title": "t"})).await;

    let patch = json!([
        {"op": "test", "path": "/version", "value": 1},
        {"op": "add", "path": "/tags/-", "value": "b"},
        {"op": "replace", "path": "/title", "value": "u"}
    ]);
    let response = app.send(Method::PATCH, &path, "application/json-patch+json", &patch, &[("if-match", "\"1\"")]).await;

    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["tags"], json!(["a", "b"]));
    assert_eq!(body["title"], "u");
    assert_eq!(body["version"], 2);
}

async fn json_patch_failure_writes_nothing(app: TestApp) {
    let (path, id) = note(&app, json!({"title": "t"})).await;

    let patch = json!([
        {"op": "replace", "path": "/title", "value": "u"},
        {"op": "remove", "path": "/missing"}
    ]);
    let response = app.send(Method::PATCH, &path, "application/json-patch+json", &patch, &[("if-match", "\"1\"")]).await;

    let problem = expect_problem(response, StatusCode::UNPROCESSABLE_ENTITY, "patch-failed").await;
    assert_eq!(problem["errors"][0]["path"], "/missing");
    let body = app.read("notes", &id).await;
    assert_eq!(body["title"], "t");
    assert_eq!(body["version"], 1);
    assert_eq!(app.all_changes().await.len(), 1);

    let not_a_patch = app.send(Method::PATCH, &path, "application/json-patch+json", &json!({"op": "add"}), &[("if-match", "\"1\"")]).await;
    expect_problem(not_a_patch, StatusCode::BAD_REQUEST, "invalid-body").await;
}

async fn json_patch_cannot_touch_server_members(app: TestApp) {
    let (path, _) = note(&app, json!({"title": "t"})).await;

    let patches = [
        json!([{"op": "replace", "path": "/version", "value": 9}]),
        json!([{"op": "replace", "path": "", "value": {"x": 1, "version": 99}}]),
    ];
    for patch in patches {
        let response = app.send(Method::PATCH, &path, "application/json-patch+json", &patch, &[("if-match", "\"1\"")]).await;
        expect_problem(response, StatusCode::BAD_REQUEST, "patch-failed").await;
    }
    assert_eq!(app.all_changes().await.len(), 1);
}

async fn merge_patch_id_must_match_url(app: TestApp) {
    let (path, _) = note(&app, json!({"title": "t"})).await;

    let body = json!({"id": "0190a0b2-7c3d-7e4f-8a9b-0c1d2e3f4a5b", "title": "u"});
    let response = app.send(Method::PATCH, &path, "application/merge-patch+json", &body, &[("if-match", "\"1\"")]).await;

    expect_problem(response, StatusCode::BAD_REQUEST, "invalid-body").await;
}
