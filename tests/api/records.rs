use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::both_backends;
use crate::helpers::{TestApp, expect_problem, header};

both_backends!(
    create_returns_record_with_headers,
    create_with_client_id,
    create_with_taken_id_is_409,
    get_returns_etag,
    get_if_none_match_is_304,
    get_unknown_record_is_404,
    put_replaces_and_ignores_server_members,
    put_if_none_match_star_creates,
    delete_leaves_tombstone,
    write_after_delete_is_409_with_tombstone,
);

async fn create_returns_record_with_headers(app: TestApp) {
    let response = app.post_json("/v1/notes", &json!({"title": "First", "tags": ["a"]})).await;

    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(header(&response, "etag"), "\"1\"");
    assert_eq!(header(&response, "content-type"), "application/json");
    let location = header(&response, "location");
    let body: Value = response.json().await.unwrap();
    let id = body["id"].as_str().unwrap();
    assert_eq!(location, format!("/v1/notes/{id}"));
    assert_eq!(uuid::Uuid::parse_str(id).unwrap().get_version_num(), 7);
    assert_eq!(body["version"], 1);
    assert_eq!(body["title"], "First");
    assert_eq!(body["tags"], json!(["a"]));
    assert_eq!(body["created_by"], "anonymous");
    assert_eq!(body["updated_by"], "anonymous");
    assert_eq!(body["created_at"], body["updated_at"]);
    assert!(chrono::DateTime::parse_from_rfc3339(body["created_at"].as_str().unwrap()).is_ok());
    assert_eq!(body.as_object().unwrap().len(), 8, "{body}");
}

async fn create_with_client_id(app: TestApp) {
    let id = "0190a0b2-7c3d-7e4f-8a9b-0c1d2e3f4a5b";
    let body = app.create("notes", json!({"id": id, "title": "mine"})).await;

    assert_eq!(body["id"], id);
    assert_eq!(app.read("notes", id).await["title"], "mine");
}

async fn create_with_taken_id_is_409(app: TestApp) {
    let id = "0190a0b2-7c3d-7e4f-8a9b-0c1d2e3f4a5b";
    app.create("notes", json!({"id": id, "title": "first"})).await;

    let response = app.post_json("/v1/notes", &json!({"id": id, "title": "second"})).await;

    assert_eq!(header(&response, "etag"), "\"1\"");
    let problem = expect_problem(response, StatusCode::CONFLICT, "record-exists").await;
    assert_eq!(problem["current"]["title"], "first");
    assert_eq!(app.read("notes", id).await["title"], "first");
    assert_eq!(app.all_changes().await.len(), 1);
}

async fn get_returns_etag(app: TestApp) {
    let created = app.create("notes", json!({"title": "a"})).await;
    let id = created["id"].as_str().unwrap();

    let response = app.get(&format!("/v1/notes/{id}")).await;

    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(header(&response, "etag"), "\"1\"");
    assert_eq!(header(&response, "cache-control"), "no-cache");
    assert_eq!(response.json::<Value>().await.unwrap(), created);

    let head = app.request(Method::HEAD, &format!("/v1/notes/{id}")).send().await.unwrap();
    assert_eq!(head.status(), StatusCode::OK);
    assert_eq!(header(&head, "etag"), "\"1\"");
    assert!(head.bytes().await.unwrap().is_empty());
}

async fn get_if_none_match_is_304(app: TestApp) {
    let created = app.create("notes", json!({"title": "a"})).await;
    let path = format!("/v1/notes/{}", created["id"].as_str().unwrap());

    for tag in ["\"1\"", "W/\"1\"", "\"7\", \"1\"", "*"] {
        let response = app.request(Method::GET, &path).header("if-none-match", tag).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::NOT_MODIFIED, "If-None-Match: {tag}");
        assert_eq!(header(&response, "etag"), "\"1\"");
        assert!(response.bytes().await.unwrap().is_empty());
    }

    let response = app.request(Method::GET, &path).header("if-none-match", "\"2\"").send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

async fn get_unknown_record_is_404(app: TestApp) {
    let response = app.get("/v1/notes/0190a0b2-7c3d-7e4f-8a9b-0c1d2e3f4a5b").await;
    expect_problem(response, StatusCode::NOT_FOUND, "record-not-found").await;
}

async fn put_replaces_and_ignores_server_members(app: TestApp) {
    let created = app.create("notes", json!({"title": "a", "body": "b"})).await;
    let id = created["id"].as_str().unwrap();
    let path = format!("/v1/notes/{id}");

    let replacement = json!({"title": "z", "created_by": "mallory", "created_at": "1999-01-01T00:00:00Z", "deleted": true, "version": 1});
    let response = app.send(Method::PUT, &path, "application/json", &replacement, &[]).await;

    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(header(&response, "etag"), "\"2\"");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["version"], 2);
    assert_eq!(body["title"], "z");
    assert_eq!(body.get("body"), None);
    assert_eq!(body["created_by"], "anonymous");
    assert_eq!(body["created_at"], created["created_at"]);
    assert_eq!(body.get("deleted"), None);
    assert_eq!(app.read("notes", id).await, body);
}

async fn put_if_none_match_star_creates(app: TestApp) {
    let path = "/v1/notes/0190a0b2-7c3d-7e4f-8a9b-0c1d2e3f4a5b";

    let response = app.send(Method::PUT, path, "application/json", &json!({"title": "new"}), &[("if-none-match", "*")]).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(header(&response, "etag"), "\"1\"");
    assert_eq!(header(&response, "location"), path);

    let again = app.send(Method::PUT, path, "application/json", &json!({"title": "again"}), &[("if-none-match", "*")]).await;
    let problem = expect_problem(again, StatusCode::CONFLICT, "record-exists").await;
    assert_eq!(problem["current"]["title"], "new");
}

async fn delete_leaves_tombstone(app: TestApp) {
    let created = app.create("notes", json!({"title": "a"})).await;
    let id = created["id"].as_str().unwrap();
    let path = format!("/v1/notes/{id}");

    let response = app.request(Method::DELETE, &format!("{path}?version=1")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::NO_CONTENT);

    let problem = expect_problem(app.get(&path).await, StatusCode::NOT_FOUND, "record-deleted").await;
    assert_eq!(problem["deleted"], true);
    assert_eq!(problem["version"], 2);
    assert_eq!(problem["deleted_by"], "anonymous");

    let tombstone: Value = app.get(&format!("{path}/versions/2")).await.json().await.unwrap();
    assert_eq!(tombstone["deleted"], true);
    assert_eq!(tombstone["version"], 2);
    assert_eq!(tombstone.get("title"), None);

    let operations: Vec<Value> = app.all_changes().await.iter().map(|change| change["operation"].clone()).collect();
    assert_eq!(operations, vec![json!("created"), json!("deleted")]);
}

async fn write_after_delete_is_409_with_tombstone(app: TestApp) {
    let created = app.create("notes", json!({"title": "a"})).await;
    let path = format!("/v1/notes/{}", created["id"].as_str().unwrap());
    let deleted = app.request(Method::DELETE, &path).header("if-match", "\"1\"").send().await.unwrap();
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);

    let response = app.send(Method::PATCH, &path, "application/merge-patch+json", &json!({"title": "b"}), &[("if-match", "\"1\"")]).await;

    assert_eq!(header(&response, "etag"), "\"2\"");
    let problem = expect_problem(response, StatusCode::CONFLICT, "version-conflict").await;
    assert_eq!(problem["current"]["deleted"], true);
    assert_eq!(problem["current"]["version"], 2);
    assert_eq!(problem["current_version"], 2);
    assert_eq!(problem["expected_version"], 1);
    assert_eq!(app.all_changes().await.len(), 2);
}
