use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::both_backends;
use crate::helpers::{TestApp, expect_problem, header};

both_backends!(
    malformed_json_is_400,
    wrong_content_type_is_415,
    body_over_limit_is_413,
    deep_nesting_is_400,
    invalid_path_values_are_400,
    unknown_routes_are_404_and_405,
);

async fn malformed_json_is_400(app: TestApp) {
    let response = app.request(Method::POST, "/v1/notes").header("content-type", "application/json").body("{\"a\": ").send().await.unwrap();
    expect_problem(response, StatusCode::BAD_REQUEST, "invalid-json").await;

    let response = app.request(Method::POST, "/v1/notes").header("content-type", "application/json").send().await.unwrap();
    expect_problem(response, StatusCode::BAD_REQUEST, "invalid-body").await;

    let response = app.post_json("/v1/notes", &json!([1, 2])).await;
    expect_problem(response, StatusCode::BAD_REQUEST, "invalid-body").await;
    assert!(app.all_changes().await.is_empty());
}

async fn wrong_content_type_is_415(app: TestApp) {
    let response = app.request(Method::POST, "/v1/notes").header("content-type", "text/plain").body("{}").send().await.unwrap();
    expect_problem(response, StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported-media-type").await;

    let response = app.request(Method::POST, "/v1/notes").body("{}").send().await.unwrap();
    expect_problem(response, StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported-media-type").await;

    let response = app.send(Method::POST, "/v1/notes", "application/merge-patch+json", &json!({}), &[]).await;
    expect_problem(response, StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported-media-type").await;
}

async fn body_over_limit_is_413(app: TestApp) {
    let app = TestApp::spawn_with(app.backend, |settings| settings.server.max_body_bytes = 1024).await;
    let big = json!({"text": "x".repeat(2048)});

    let response = app.post_json("/v1/notes", &big).await;

    let problem = expect_problem(response, StatusCode::PAYLOAD_TOO_LARGE, "payload-too-large").await;
    assert_eq!(problem["max_body_bytes"], 1024);
    assert!(app.all_changes().await.is_empty());
}

async fn deep_nesting_is_400(app: TestApp) {
    let mut body = "1".to_owned();
    for _ in 0..100 {
        body = format!("[{body}]");
    }
    let body = format!("{{\"deep\": {body}}}");

    let response = app.request(Method::POST, "/v1/notes").header("content-type", "application/json").body(body).send().await.unwrap();

    expect_problem(response, StatusCode::BAD_REQUEST, "json-too-deep").await;
}

async fn invalid_path_values_are_400(app: TestApp) {
    expect_problem(app.get("/v1/Notes").await, StatusCode::BAD_REQUEST, "invalid-collection-name").await;
    expect_problem(app.get("/v1/notes/not-a-uuid").await, StatusCode::BAD_REQUEST, "invalid-record-id").await;
    expect_problem(app.get(&format!("/v1/{}", "a".repeat(64))).await, StatusCode::BAD_REQUEST, "invalid-collection-name").await;
}

async fn unknown_routes_are_404_and_405(app: TestApp) {
    expect_problem(app.get("/nothing").await, StatusCode::NOT_FOUND, "not-found").await;
    expect_problem(app.get("/v1/_unknown").await, StatusCode::NOT_FOUND, "not-found").await;

    let response = app.request(Method::POST, "/v1/_changes").send().await.unwrap();
    assert_eq!(header(&response, "allow"), "GET");
    expect_problem(response, StatusCode::METHOD_NOT_ALLOWED, "method-not-allowed").await;

    let response = app.request(Method::POST, "/v1/notes/0190a0b2-7c3d-7e4f-8a9b-0c1d2e3f4a5b").send().await.unwrap();
    assert_eq!(header(&response, "allow"), "GET, PUT, PATCH, DELETE");
    expect_problem(response, StatusCode::METHOD_NOT_ALLOWED, "method-not-allowed").await;
}
