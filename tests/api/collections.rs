//! Declared collections: schemas, merge policies, retention, restore and
//! unconditional writes.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::both_backends;
use crate::helpers::{TestApp, expect_problem, header, send_together};

const CONFIG: &str = r#"
[collections.notes]
schema = { type = "object", properties = { title = { type = "string" }, tags = { type = "array", items = { type = "string" } } }, required = ["title"] }
merge = "fields"
last_writer_wins = ["/viewed_at"]
keep_revisions = 3

[collections.tasks]
allow_unconditional_writes = true

[collections.drafts]
merge = "fields"

[collections.feed-sentinel]
"#;

both_backends!(
    config = CONFIG;
    undeclared_collection_is_404,
    schema_rejects_invalid_create,
    schema_checks_patch_results,
    stale_write_to_other_field_merges,
    overlapping_stale_write_conflicts,
    equal_changes_do_not_conflict,
    last_writer_wins_never_conflicts,
    keep_revisions_prunes_history,
    restore_writes_old_version,
    restore_undeletes_record,
    unconditional_write_where_allowed,
    nested_siblings_merge,
    overlapping_conflict_names_who_and_when,
    schema_failures_write_nothing,
    restore_of_pruned_version_is_404,
    stale_writes_that_never_merge,
    feed_rejects_undeclared_collection,
    concurrent_disjoint_writes_all_merge,
    batch_merges_with_racing_writers,
);

/// Weak tags, JSON Patch `test` operations and deletes stay conflicts even
/// where merging is on.
async fn stale_writes_that_never_merge(app: TestApp) {
    let path = note(&app, json!({"title": "a", "body": "b"})).await;
    assert_eq!(patch(&app, &path, 1, json!({"body": "theirs"})).await.status(), StatusCode::OK);

    let weak = app.send(Method::PATCH, &path, "application/merge-patch+json", &json!({"title": "x"}), &[("if-match", "W/\"1\"")]).await;
    expect_problem(weak, StatusCode::CONFLICT, "version-conflict").await;

    let tested = json!([{"op": "test", "path": "/version", "value": 1}, {"op": "replace", "path": "/title", "value": "x"}]);
    let response = app.send(Method::PATCH, &path, "application/json-patch+json", &tested, &[("if-match", "\"1\"")]).await;
    expect_problem(response, StatusCode::CONFLICT, "version-conflict").await;

    for member in ["/created_by", "/deleted"] {
        let reserved = json!([{"op": "add", "path": member, "value": "x"}]);
        let response = app.send(Method::PATCH, &path, "application/json-patch+json", &reserved, &[("if-match", "\"1\"")]).await;
        expect_problem(response, StatusCode::BAD_REQUEST, "patch-failed").await;
    }

    let untested = json!([{"op": "replace", "path": "/title", "value": "merged"}]);
    let response = app.send(Method::PATCH, &path, "application/json-patch+json", &untested, &[("if-match", "\"1\"")]).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(header(&response, "versa-merged"), "true");

    let delete = app.request(Method::DELETE, &path).header("if-match", "\"1\"").send().await.unwrap();
    expect_problem(delete, StatusCode::CONFLICT, "version-conflict").await;
}

async fn feed_rejects_undeclared_collection(app: TestApp) {
    let response = app.get("/v1/_changes?collections=notes,other").await;
    expect_problem(response, StatusCode::NOT_FOUND, "collection-not-found").await;
}

async fn nested_siblings_merge(app: TestApp) {
    let path = note(&app, json!({"title": "a", "address": {"city": "A", "zip": "1"}})).await;
    assert_eq!(patch(&app, &path, 1, json!({"address": {"zip": "2"}})).await.status(), StatusCode::OK);

    let response = patch(&app, &path, 1, json!({"address": {"city": "B"}})).await;

    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(header(&response, "versa-merged"), "true");
    assert_eq!(response.json::<Value>().await.unwrap()["address"], json!({"city": "B", "zip": "2"}));
}

async fn overlapping_conflict_names_who_and_when(app: TestApp) {
    let path = note(&app, json!({"title": "a", "address": {"city": "A", "zip": "1"}})).await;
    let theirs: Value = patch(&app, &path, 1, json!({"address": {"city": "C"}})).await.json().await.unwrap();

    let response = patch(&app, &path, 1, json!({"address": {"city": "B", "zip": "9"}})).await;

    let problem = expect_problem(response, StatusCode::CONFLICT, "version-conflict").await;
    let conflicts = problem["conflicts"].as_array().unwrap();
    assert_eq!(conflicts.len(), 1, "{problem}");
    assert_eq!(conflicts[0]["path"], "/address/city");
    assert_eq!(conflicts[0]["base"], "A");
    assert_eq!(conflicts[0]["yours"], "B");
    assert_eq!(conflicts[0]["theirs"], "C");
    assert_eq!(conflicts[0]["changed_by"], "anonymous");
    assert_eq!(conflicts[0]["changed_at"], theirs["updated_at"]);
}

async fn schema_failures_write_nothing(app: TestApp) {
    let path = note(&app, json!({"title": "a"})).await;
    let invalid = json!({"title": 1});

    let replace = app.send(Method::PUT, &path, "application/json", &invalid, &[("if-match", "\"1\"")]).await;
    expect_problem(replace, StatusCode::UNPROCESSABLE_ENTITY, "validation-failed").await;

    let create_at = app.send(Method::PUT, "/v1/notes/0190a0b2-7c3d-7e4f-8a9b-0c1d2e3f4a5b", "application/json", &invalid, &[("if-none-match", "*")]).await;
    expect_problem(create_at, StatusCode::UNPROCESSABLE_ENTITY, "validation-failed").await;

    let batch = app.post_json("/v1/_batch", &json!({"atomic": true, "operations": [
        {"op": "create", "collection": "notes", "data": {"title": "fine"}},
        {"op": "replace", "collection": "notes", "id": path.rsplit('/').next().unwrap(), "version": 1, "data": {"title": 2}},
    ]})).await;
    let problem = expect_problem(batch, StatusCode::UNPROCESSABLE_ENTITY, "batch-failed").await;
    assert_eq!(problem["failures"][0]["index"], 1);
    assert_eq!(problem["failures"][0]["problem"]["type"], "https://versa.dev/problems/validation-failed");

    assert_eq!(app.all_changes().await.len(), 1);
}

const LOOSE: &str = "[collections.loose]\n[collections.feed-sentinel]\n";
const STRICTER: &str = "[collections.loose]\nschema = { type = \"object\", properties = { title = { type = \"string\" } } }\n[collections.feed-sentinel]\n";

both_backends!(config = LOOSE; restore_checks_current_schema);

/// Checks that a revision written before the schema existed cannot be
/// restored once it fails the schema.
async fn restore_checks_current_schema(app: TestApp) {
    let created = app.create("loose", json!({"title": 5})).await;
    let path = format!("/v1/loose/{}", created["id"].as_str().unwrap());
    assert_eq!(patch(&app, &path, 1, json!({"title": "text"})).await.status(), StatusCode::OK);

    let stricter = app.restart_with_config(STRICTER).await;
    let response = stricter.request(Method::POST, &format!("{path}/versions/1/restore")).header("if-match", "\"2\"").send().await.unwrap();

    let problem = expect_problem(response, StatusCode::UNPROCESSABLE_ENTITY, "validation-failed").await;
    assert_eq!(problem["errors"][0]["path"], "/title");
    assert_eq!(stricter.read("loose", path.rsplit('/').next().unwrap()).await["version"], 2);
}

async fn restore_of_pruned_version_is_404(app: TestApp) {
    let path = note(&app, json!({"title": "v1"})).await;
    for version in 1..4 {
        assert_eq!(patch(&app, &path, version, json!({"title": format!("v{}", version + 1)})).await.status(), StatusCode::OK);
    }

    let response = app.request(Method::POST, &format!("{path}/versions/1/restore")).header("if-match", "\"4\"").send().await.unwrap();
    expect_problem(response, StatusCode::NOT_FOUND, "revision-not-found").await;

    let stale = app.request(Method::POST, &format!("{path}/versions/3/restore")).header("if-match", "\"3\"").send().await.unwrap();
    expect_problem(stale, StatusCode::CONFLICT, "version-conflict").await;
}

async fn patch(app: &TestApp, path: &str, version: i64, body: Value) -> reqwest::Response {
    app.send(Method::PATCH, path, "application/merge-patch+json", &body, &[("if-match", &format!("\"{version}\""))]).await
}

async fn note(app: &TestApp, body: Value) -> String {
    let created = app.create("notes", body).await;
    format!("/v1/notes/{}", created["id"].as_str().unwrap())
}

async fn undeclared_collection_is_404(app: TestApp) {
    expect_problem(app.get("/v1/other").await, StatusCode::NOT_FOUND, "collection-not-found").await;
    let response = app.post_json("/v1/other", &json!({})).await;
    expect_problem(response, StatusCode::NOT_FOUND, "collection-not-found").await;
    let response = app.get("/v1/other/0190a0b2-7c3d-7e4f-8a9b-0c1d2e3f4a5b").await;
    expect_problem(response, StatusCode::NOT_FOUND, "collection-not-found").await;
}

async fn schema_rejects_invalid_create(app: TestApp) {
    let response = app.post_json("/v1/notes", &json!({"title": 5})).await;
    let problem = expect_problem(response, StatusCode::UNPROCESSABLE_ENTITY, "validation-failed").await;
    assert_eq!(problem["errors"].as_array().unwrap().len(), 1);
    assert_eq!(problem["errors"][0]["path"], "/title");
    assert!(problem["errors"][0]["message"].as_str().unwrap().contains("string"), "{problem}");

    let response = app.post_json("/v1/notes", &json!({"tags": ["a"]})).await;
    let problem = expect_problem(response, StatusCode::UNPROCESSABLE_ENTITY, "validation-failed").await;
    assert_eq!(problem["errors"][0]["path"], "");

    let response = app.request(Method::POST, "/v1/notes").header("idempotency-key", "k").json(&json!({"title": 1})).send().await.unwrap();
    expect_problem(response, StatusCode::UNPROCESSABLE_ENTITY, "validation-failed").await;
    assert!(app.all_changes().await.is_empty());
}

async fn schema_checks_patch_results(app: TestApp) {
    let path = note(&app, json!({"title": "a", "tags": ["x"]})).await;

    let response = patch(&app, &path, 1, json!({"title": null})).await;
    let problem = expect_problem(response, StatusCode::UNPROCESSABLE_ENTITY, "validation-failed").await;
    assert_eq!(problem["errors"][0]["path"], "");

    let json_patch = json!([{"op": "replace", "path": "/tags/0", "value": 1}]);
    let response = app.send(Method::PATCH, &path, "application/json-patch+json", &json_patch, &[("if-match", "\"1\"")]).await;
    let problem = expect_problem(response, StatusCode::UNPROCESSABLE_ENTITY, "validation-failed").await;
    assert_eq!(problem["errors"][0]["path"], "/tags/0");

    let current = app.read("notes", path.rsplit('/').next().unwrap()).await;
    assert_eq!(current["version"], 1);
    assert_eq!(current["title"], "a");
    assert_eq!(app.all_changes().await.len(), 1);
}

async fn stale_write_to_other_field_merges(app: TestApp) {
    let path = note(&app, json!({"title": "a", "body": "b"})).await;
    assert_eq!(patch(&app, &path, 1, json!({"body": "theirs"})).await.status(), StatusCode::OK);

    let response = patch(&app, &path, 1, json!({"title": "mine"})).await;

    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(header(&response, "versa-merged"), "true");
    assert_eq!(header(&response, "etag"), "\"3\"");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["title"], "mine");
    assert_eq!(body["body"], "theirs");
    assert_eq!(body["version"], 3);

    let fresh = patch(&app, &path, 3, json!({"body": "again"})).await;
    assert_eq!(fresh.status(), StatusCode::OK);
    assert_eq!(header(&fresh, "versa-merged"), "");
}

async fn overlapping_stale_write_conflicts(app: TestApp) {
    let path = note(&app, json!({"title": "a", "body": "b", "tags": ["x"]})).await;
    assert_eq!(patch(&app, &path, 1, json!({"title": "theirs", "body": "theirs"})).await.status(), StatusCode::OK);

    let response = patch(&app, &path, 1, json!({"title": "mine", "tags": ["y"]})).await;

    let problem = expect_problem(response, StatusCode::CONFLICT, "version-conflict").await;
    let paths: Vec<_> = problem["conflicts"].as_array().unwrap().iter().map(|conflict| conflict["path"].clone()).collect();
    assert_eq!(paths, vec![json!("/title")]);
    let current = app.read("notes", path.rsplit('/').next().unwrap()).await;
    assert_eq!(current["tags"], json!(["x"]));
    assert_eq!(current["version"], 2);
}

async fn equal_changes_do_not_conflict(app: TestApp) {
    let path = note(&app, json!({"title": "a", "body": "b"})).await;
    assert_eq!(patch(&app, &path, 1, json!({"title": "same", "body": "theirs"})).await.status(), StatusCode::OK);

    let response = patch(&app, &path, 1, json!({"title": "same"})).await;

    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(header(&response, "versa-merged"), "true");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["title"], "same");
    assert_eq!(body["body"], "theirs");
}

async fn last_writer_wins_never_conflicts(app: TestApp) {
    let path = note(&app, json!({"title": "a", "viewed_at": 0})).await;
    assert_eq!(patch(&app, &path, 1, json!({"viewed_at": 1})).await.status(), StatusCode::OK);

    let response = patch(&app, &path, 1, json!({"viewed_at": 2})).await;

    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(header(&response, "versa-merged"), "true");
    assert_eq!(response.json::<Value>().await.unwrap()["viewed_at"], 2);
}

async fn keep_revisions_prunes_history(app: TestApp) {
    let path = note(&app, json!({"title": "v1"})).await;
    for version in 1..5 {
        let response = patch(&app, &path, version, json!({"title": format!("v{}", version + 1)})).await;
        assert_eq!(response.status(), StatusCode::OK);
    }

    let history: Value = app.get(&format!("{path}/versions")).await.json().await.unwrap();
    let versions: Vec<_> = history["items"].as_array().unwrap().iter().map(|item| item["version"].clone()).collect();
    assert_eq!(versions, vec![json!(5), json!(4), json!(3)]);
    expect_problem(app.get(&format!("{path}/versions/2")).await, StatusCode::NOT_FOUND, "revision-not-found").await;

    let response = patch(&app, &path, 2, json!({"tags": ["x"]})).await;
    let problem = expect_problem(response, StatusCode::CONFLICT, "version-conflict").await;
    assert_eq!(problem["base_available"], false);
    assert_eq!(problem["conflicts"], json!([]));
    assert!(problem["detail"].as_str().unwrap().contains("no field comparison"), "{problem}");
}

async fn restore_writes_old_version(app: TestApp) {
    let created = app.create("tasks", json!({"title": "first", "done": false})).await;
    let path = format!("/v1/tasks/{}", created["id"].as_str().unwrap());
    let replaced = app.send(Method::PUT, &path, "application/json", &json!({"title": "second"}), &[("if-match", "\"1\"")]).await;
    assert_eq!(replaced.status(), StatusCode::OK);

    let missing_version = app.request(Method::POST, &format!("{path}/versions/1/restore")).send().await.unwrap();
    expect_problem(missing_version, StatusCode::PRECONDITION_REQUIRED, "precondition-required").await;

    let response = app.request(Method::POST, &format!("{path}/versions/1/restore")).header("if-match", "\"2\"").send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(header(&response, "etag"), "\"3\"");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["title"], "first");
    assert_eq!(body["done"], false);
    assert_eq!(body["version"], 3);

    let stale = app.request(Method::POST, &format!("{path}/versions/1/restore")).json(&json!({"version": 2})).send().await.unwrap();
    let problem = expect_problem(stale, StatusCode::CONFLICT, "version-conflict").await;
    assert_eq!(problem["current_version"], 3);

    let unknown = app.request(Method::POST, &format!("{path}/versions/9/restore")).header("if-match", "\"3\"").send().await.unwrap();
    expect_problem(unknown, StatusCode::NOT_FOUND, "revision-not-found").await;

    let operations: Vec<_> = app.all_changes().await.iter().map(|change| change["operation"].clone()).collect();
    assert_eq!(operations, vec![json!("created"), json!("updated"), json!("restored")]);
}

async fn restore_undeletes_record(app: TestApp) {
    let created = app.create("tasks", json!({"title": "kept"})).await;
    let id = created["id"].as_str().unwrap();
    let path = format!("/v1/tasks/{id}");
    let deleted = app.request(Method::DELETE, &path).header("if-match", "\"1\"").send().await.unwrap();
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);

    let deletion = app.request(Method::POST, &format!("{path}/versions/2/restore")).header("if-match", "\"2\"").send().await.unwrap();
    expect_problem(deletion, StatusCode::UNPROCESSABLE_ENTITY, "restore-of-deletion").await;

    let response = app.request(Method::POST, &format!("{path}/versions/1/restore")).header("if-match", "\"2\"").send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);

    let record = app.read("tasks", id).await;
    assert_eq!(record["title"], "kept");
    assert_eq!(record["version"], 3);
    assert_eq!(record.get("deleted"), None);
}

async fn unconditional_write_where_allowed(app: TestApp) {
    let created = app.create("tasks", json!({"title": "a"})).await;
    let path = format!("/v1/tasks/{}", created["id"].as_str().unwrap());

    let response = app.send(Method::PUT, &path, "application/json", &json!({"title": "b"}), &[("if-match", "*")]).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(header(&response, "etag"), "\"2\"");

    let missing = app.send(Method::PUT, "/v1/tasks/0190a0b2-7c3d-7e4f-8a9b-0c1d2e3f4a5b", "application/json", &json!({}), &[("if-match", "*")]).await;
    expect_problem(missing, StatusCode::NOT_FOUND, "record-not-found").await;

    let note_path = note(&app, json!({"title": "a"})).await;
    let refused = app.send(Method::PUT, &note_path, "application/json", &json!({"title": "b"}), &[("if-match", "*")]).await;
    expect_problem(refused, StatusCode::PRECONDITION_REQUIRED, "unconditional-write-not-allowed").await;
}

/// Writers that all start from version 1 and each change another field all
/// commit, however their writes interleave: a writer that loses a race is
/// merged into the newer version, never refused.
async fn concurrent_disjoint_writes_all_merge(app: TestApp) {
    const WRITERS: usize = 12;
    let fields: serde_json::Map<String, Value> = (0..WRITERS).map(|n| (format!("f{n}"), json!(0))).collect();
    let created = app.create("drafts", Value::Object(fields)).await;
    let id = created["id"].as_str().unwrap().to_owned();
    let path = format!("/v1/drafts/{id}");

    let writers = (0..WRITERS).map(|n| {
        app.request(Method::PATCH, &path)
            .header("content-type", "application/merge-patch+json")
            .header("if-match", "\"1\"")
            .body(json!({format!("f{n}"): n + 1}).to_string())
    });
    let statuses = send_together(writers.collect()).await;

    assert!(statuses.iter().all(|status| *status == StatusCode::OK), "{statuses:?}");
    let record = app.read("drafts", &id).await;
    assert_eq!(record["version"], WRITERS as i64 + 1);
    for n in 0..WRITERS {
        assert_eq!(record[format!("f{n}")], n + 1, "field f{n} in {record}");
    }
}

/// An atomic batch and single writers all start from version 1 and change
/// different fields: in a merging collection every one of them commits,
/// whichever commits first.
async fn batch_merges_with_racing_writers(app: TestApp) {
    const WRITERS: usize = 6;
    for round in 0..6 {
        let created = app.create("drafts", json!({"round": round})).await;
        let id = created["id"].as_str().unwrap().to_owned();
        let path = format!("/v1/drafts/{id}");

        let mut requests: Vec<_> = (0..WRITERS)
            .map(|n| {
                app.request(Method::PATCH, &path)
                    .header("content-type", "application/merge-patch+json")
                    .header("if-match", "\"1\"")
                    .body(json!({format!("single{n}"): n}).to_string())
            })
            .collect();
        requests.push(app.request(Method::POST, "/v1/_batch").json(&json!({"atomic": true, "operations": [
            {"op": "update", "collection": "drafts", "id": id, "version": 1, "patch": {"batch": round}},
        ]})));
        let statuses = send_together(requests).await;

        assert!(statuses.iter().all(|status| *status == StatusCode::OK), "round {round}: {statuses:?}");
        let record = app.read("drafts", &id).await;
        assert_eq!(record["version"], WRITERS as i64 + 2);
        assert_eq!(record["batch"], round);
    }
}
