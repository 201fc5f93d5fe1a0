use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::both_backends;
use crate::helpers::{TestApp, expect_problem, header};

both_backends!(history_is_newest_first_and_paged, revision_returns_snapshot, history_errors);

async fn history_is_newest_first_and_paged(app: TestApp) {
    let created = app.create("notes", json!({"n": 0})).await;
    let path = format!("/v1/notes/{}", created["id"].as_str().unwrap());
    for n in 1..5 {
        let response = app.send(Method::PATCH, &path, "application/json", &json!({"n": n}), &[("if-match", &format!("\"{n}\""))]).await;
        assert_eq!(response.status(), StatusCode::OK);
    }

    let first: Value = app.get(&format!("{path}/versions?limit=3")).await.json().await.unwrap();
    let versions: Vec<_> = first["items"].as_array().unwrap().iter().map(|item| item["version"].clone()).collect();
    assert_eq!(versions, vec![json!(5), json!(4), json!(3)]);
    assert_eq!(first["items"][0]["operation"], "updated");
    assert_eq!(first["items"][0]["changed_fields"], json!(["/n"]));

    let cursor = first["next_cursor"].as_str().unwrap();
    let second: Value = app.get(&format!("{path}/versions?limit=3&cursor={cursor}")).await.json().await.unwrap();
    let versions: Vec<_> = second["items"].as_array().unwrap().iter().map(|item| item["version"].clone()).collect();
    assert_eq!(versions, vec![json!(2), json!(1)]);
    assert_eq!(second["items"][1]["operation"], "created");
    assert_eq!(second["next_cursor"], Value::Null);
}

async fn revision_returns_snapshot(app: TestApp) {
    let created = app.create("notes", json!({"title": "a"})).await;
    let path = format!("/v1/notes/{}", created["id"].as_str().unwrap());
    app.send(Method::PUT, &path, "application/json", &json!({"title": "b"}), &[("if-match", "\"1\"")]).await;

    let response = app.get(&format!("{path}/versions/1")).await;

    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(header(&response, "etag"), "\"1\"");
    assert_eq!(response.json::<Value>().await.unwrap(), created);
}

async fn history_errors(app: TestApp) {
    let missing = "/v1/notes/0190a0b2-7c3d-7e4f-8a9b-0c1d2e3f4a5b";
    expect_problem(app.get(&format!("{missing}/versions")).await, StatusCode::NOT_FOUND, "record-not-found").await;

    let created = app.create("notes", json!({"title": "a"})).await;
    let path = format!("/v1/notes/{}", created["id"].as_str().unwrap());
    expect_problem(app.get(&format!("{path}/versions/2")).await, StatusCode::NOT_FOUND, "revision-not-found").await;
    expect_problem(app.get(&format!("{path}/versions/0")).await, StatusCode::BAD_REQUEST, "invalid-version").await;
    expect_problem(app.get(&format!("{path}/versions?cursor=zz")).await, StatusCode::BAD_REQUEST, "invalid-cursor").await;
}
