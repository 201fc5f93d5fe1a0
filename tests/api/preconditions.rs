use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::both_backends;
use crate::helpers::{TestApp, expect_problem, header};

both_backends!(
    write_without_version_is_428,
    if_match_star_is_428,
    header_and_body_disagree_is_400,
    body_version_alone_is_accepted,
    stale_write_reports_conflicts,
    weak_if_match_never_matches,
    if_match_on_missing_record_is_404,
    malformed_if_match_is_400,
    stale_delete_is_409,
    conflict_status_412_when_configured,
);

async fn create_note(app: &TestApp, body: Value) -> String {
    let created = app.create("notes", body).await;
    format!("/v1/notes/{}", created["id"].as_str().unwrap())
}

async fn write_without_version_is_428(app: TestApp) {
    let path = create_note(&app, json!({"title": "a"})).await;

    for method in [Method::PUT, Method::PATCH] {
        let response = app.send(method, &path, "application/json", &json!({"title": "b"}), &[]).await;
        expect_problem(response, StatusCode::PRECONDITION_REQUIRED, "precondition-required").await;
    }
    let response = app.request(Method::DELETE, &path).send().await.unwrap();
    expect_problem(response, StatusCode::PRECONDITION_REQUIRED, "precondition-required").await;

    assert_eq!(app.read("notes", path.rsplit('/').next().unwrap()).await["version"], 1);
}

async fn if_match_star_is_428(app: TestApp) {
    let path = create_note(&app, json!({"title": "a"})).await;

    let response = app.send(Method::PUT, &path, "application/json", &json!({"title": "b"}), &[("if-match", "*")]).await;

    expect_problem(response, StatusCode::PRECONDITION_REQUIRED, "unconditional-write-not-allowed").await;
}

async fn header_and_body_disagree_is_400(app: TestApp) {
    let path = create_note(&app, json!({"title": "a"})).await;

    let response = app.send(Method::PUT, &path, "application/json", &json!({"title": "b", "version": 2}), &[("if-match", "\"1\"")]).await;

    expect_problem(response, StatusCode::BAD_REQUEST, "invalid-precondition").await;
    assert_eq!(app.all_changes().await.len(), 1);
}

async fn body_version_alone_is_accepted(app: TestApp) {
    let path = create_note(&app, json!({"title": "a"})).await;

    let response = app.send(Method::PATCH, &path, "application/json", &json!({"title": "b", "version": 1}), &[]).await;
    assert_eq!(response.status(), StatusCode::OK);

    let same = app.send(Method::PUT, &path, "application/json", &json!({"title": "c", "version": 2}), &[("if-match", "\"2\"")]).await;
    assert_eq!(same.status(), StatusCode::OK);
    assert_eq!(header(&same, "etag"), "\"3\"");
}

async fn stale_write_reports_conflicts(app: TestApp) {
    let path = create_note(&app, json!({"title": "a", "body": "b", "tags": ["x"]})).await;
    let first = app.send(Method::PATCH, &path, "application/merge-patch+json", &json!({"title": "theirs", "body": "theirs"}), &[("if-match", "\"1\"")]).await;
    assert_eq!(first.status(), StatusCode::OK);

    let response = app
        .send(Method::PATCH, &path, "application/merge-patch+json", &json!({"title": "mine", "tags": ["y"]}), &[("if-match", "\"1\"")])
        .await;

    assert_eq!(header(&response, "etag"), "\"2\"");
    let problem = expect_problem(response, StatusCode::CONFLICT, "version-conflict").await;
    assert_eq!(problem["expected_version"], 1);
    assert_eq!(problem["current_version"], 2);
    assert_eq!(problem["base_available"], true);
    assert_eq!(problem["current"]["title"], "theirs");
    assert_eq!(problem["current"]["version"], 2);

    let since = problem["revisions_since"].as_array().unwrap();
    assert_eq!(since.len(), 1);
    assert_eq!(since[0]["version"], 2);
    assert_eq!(since[0]["changed_by"], "anonymous");
    assert_eq!(since[0]["changed_fields"], json!(["/body", "/title"]));

    let conflicts = problem["conflicts"].as_array().unwrap();
    assert_eq!(conflicts.len(), 1, "{problem}");
    assert_eq!(conflicts[0]["path"], "/title");
    assert_eq!(conflicts[0]["base"], "a");
    assert_eq!(conflicts[0]["yours"], "mine");
    assert_eq!(conflicts[0]["theirs"], "theirs");
    assert_eq!(conflicts[0]["changed_by"], "anonymous");
    assert_eq!(conflicts[0]["changed_at"], since[0]["changed_at"]);

    // The refused write left no trace.
    let current = app.read("notes", path.rsplit('/').next().unwrap()).await;
    assert_eq!(current["version"], 2);
    assert_eq!(current["tags"], json!(["x"]));
    let history: Value = app.get(&format!("{path}/versions")).await.json().await.unwrap();
    assert_eq!(history["items"].as_array().unwrap().len(), 2);
    assert_eq!(app.all_changes().await.len(), 2);
}

async fn weak_if_match_never_matches(app: TestApp) {
    let path = create_note(&app, json!({"title": "a"})).await;

    let response = app.send(Method::PUT, &path, "application/json", &json!({"title": "b"}), &[("if-match", "W/\"1\"")]).await;

    let problem = expect_problem(response, StatusCode::CONFLICT, "version-conflict").await;
    assert_eq!(problem["current_version"], 1);
    assert!(problem["detail"].as_str().unwrap().contains("weak entity tags"), "{problem}");
    assert_eq!(app.all_changes().await.len(), 1);
}

async fn if_match_on_missing_record_is_404(app: TestApp) {
    let path = "/v1/notes/0190a0b2-7c3d-7e4f-8a9b-0c1d2e3f4a5b";

    let response = app.send(Method::PUT, path, "application/json", &json!({"title": "b"}), &[("if-match", "\"1\"")]).await;
    expect_problem(response, StatusCode::NOT_FOUND, "record-not-found").await;

    let response = app.send(Method::PATCH, path, "application/json", &json!({"title": "b", "version": 1}), &[]).await;
    expect_problem(response, StatusCode::NOT_FOUND, "record-not-found").await;
    assert!(app.all_changes().await.is_empty());
}

async fn malformed_if_match_is_400(app: TestApp) {
    let path = create_note(&app, json!({"title": "a"})).await;

    for value in ["1", "\"abc\"", "\"1", "\"0\""] {
        let response = app.send(Method::PUT, &path, "application/json", &json!({"title": "b"}), &[("if-match", value)]).await;
        expect_problem(response, StatusCode::BAD_REQUEST, "invalid-precondition").await;
    }
}

async fn stale_delete_is_409(app: TestApp) {
    let path = create_note(&app, json!({"title": "a"})).await;
    let updated = app.send(Method::PUT, &path, "application/json", &json!({"title": "b"}), &[("if-match", "\"1\"")]).await;
    assert_eq!(updated.status(), StatusCode::OK);

    let response = app.request(Method::DELETE, &path).header("if-match", "\"1\"").send().await.unwrap();

    let problem = expect_problem(response, StatusCode::CONFLICT, "version-conflict").await;
    assert_eq!(problem["current"]["title"], "b");
    assert_eq!(problem["conflicts"], json!([]));
    assert_eq!(app.read("notes", path.rsplit('/').next().unwrap()).await["version"], 2);
}

async fn conflict_status_412_when_configured(app: TestApp) {
    let app = TestApp::spawn_with(app.backend, |settings| settings.server.conflict_status = 412).await;
    let path = create_note(&app, json!({"title": "a"})).await;
    app.send(Method::PUT, &path, "application/json", &json!({"title": "b"}), &[("if-match", "\"1\"")]).await;

    let response = app.send(Method::PUT, &path, "application/json", &json!({"title": "c"}), &[("if-match", "\"1\"")]).await;

    assert_eq!(header(&response, "etag"), "\"2\"");
    let problem = expect_problem(response, StatusCode::PRECONDITION_FAILED, "version-conflict").await;
    assert_eq!(problem["current"]["title"], "b");
}
