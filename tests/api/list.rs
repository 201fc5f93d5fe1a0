use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::both_backends;
use crate::helpers::{TestApp, expect_problem, header};

both_backends!(
    list_pages_through_every_record,
    list_filters_by_top_level_fields,
    list_sorts_by_field,
    list_etag_gives_304_until_change,
    list_rejects_bad_parameters,
    list_omits_deleted_records,
);

async fn page_ids(app: &TestApp, path: &str) -> (Vec<String>, Option<String>) {
    let response = app.get(path).await;
    assert_eq!(response.status(), StatusCode::OK);
    let page: Value = response.json().await.unwrap();
    let ids = page["items"].as_array().unwrap().iter().map(|item| item["id"].as_str().unwrap().to_owned()).collect();
    (ids, page["next_cursor"].as_str().map(str::to_owned))
}

async fn list_pages_through_every_record(app: TestApp) {
    let mut created = Vec::new();
    for n in 0..7 {
        created.push(app.create("notes", json!({"n": n})).await["id"].as_str().unwrap().to_owned());
    }
    app.create("other", json!({"n": 0})).await;

    let mut seen = Vec::new();
    let mut path = "/v1/notes?limit=3".to_owned();
    loop {
        let (ids, cursor) = page_ids(&app, &path).await;
        seen.extend(ids);
        match cursor {
            Some(cursor) => path = format!("/v1/notes?limit=3&cursor={cursor}"),
            None => break,
        }
    }

    assert_eq!(seen, created);
}

async fn list_filters_by_top_level_fields(app: TestApp) {
    let open = app.create("tasks", json!({"status": "open", "count": 3})).await;
    let closed = app.create("tasks", json!({"status": "closed", "count": "3"})).await;
    app.create("tasks", json!({"status": "open", "count": 4})).await;

    let (ids, _) = page_ids(&app, "/v1/tasks?status=open&count=3").await;
    assert_eq!(ids, vec![open["id"].as_str().unwrap()]);

    let (ids, _) = page_ids(&app, "/v1/tasks?count=3").await;
    assert_eq!(ids, vec![open["id"].as_str().unwrap(), closed["id"].as_str().unwrap()]);

    let (ids, _) = page_ids(&app, "/v1/tasks?status=open&status=closed&count=3").await;
    assert_eq!(ids.len(), 2);

    let (ids, _) = page_ids(&app, "/v1/tasks?missing=1").await;
    assert!(ids.is_empty());
}

async fn list_sorts_by_field(app: TestApp) {
    for (name, rank) in [("b", 2), ("c", 10), ("a", 1)] {
        app.create("people", json!({"name": name, "rank": rank})).await;
    }

    let names = |page: Value| page["items"].as_array().unwrap().iter().map(|item| item["name"].clone()).collect::<Vec<_>>();
    let page: Value = app.get("/v1/people?sort=rank").await.json().await.unwrap();
    assert_eq!(names(page), vec![json!("a"), json!("b"), json!("c")]);

    let page: Value = app.get("/v1/people?sort=-name").await.json().await.unwrap();
    assert_eq!(names(page), vec![json!("c"), json!("b"), json!("a")]);

    let first: Value = app.get("/v1/people?sort=-rank&limit=2").await.json().await.unwrap();
    assert_eq!(names(first.clone()), vec![json!("c"), json!("b")]);
    let cursor = first["next_cursor"].as_str().unwrap();
    let second: Value = app.get(&format!("/v1/people?sort=-rank&limit=2&cursor={cursor}")).await.json().await.unwrap();
    assert_eq!(names(second.clone()), vec![json!("a")]);
    assert_eq!(second["next_cursor"], Value::Null);
}

async fn list_etag_gives_304_until_change(app: TestApp) {
    let created = app.create("notes", json!({"title": "a"})).await;
    let first = app.get("/v1/notes").await;
    let etag = header(&first, "etag");
    assert!(etag.starts_with("\"l-"), "{etag}");

    let again = app.request(Method::GET, "/v1/notes").header("if-none-match", &etag).send().await.unwrap();
    assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(header(&again, "etag"), etag);

    let path = format!("/v1/notes/{}", created["id"].as_str().unwrap());
    app.send(Method::PATCH, &path, "application/json", &json!({"title": "b"}), &[("if-match", "\"1\"")]).await;
    let changed = app.request(Method::GET, "/v1/notes").header("if-none-match", &etag).send().await.unwrap();
    assert_eq!(changed.status(), StatusCode::OK);
    assert_ne!(header(&changed, "etag"), etag);
}

async fn list_rejects_bad_parameters(app: TestApp) {
    let bad = ["/v1/notes?limit=0", "/v1/notes?limit=1001", "/v1/notes?limit=x", "/v1/notes?sort=a.b", "/v1/notes?a%20b=1", "/v1/notes?created_at=x", "/v1/notes?version=two"];
    for path in bad {
        expect_problem(app.get(path).await, StatusCode::BAD_REQUEST, "invalid-query").await;
    }
    expect_problem(app.get("/v1/notes?cursor=garbage").await, StatusCode::BAD_REQUEST, "invalid-cursor").await;

    for n in 0..3 {
        app.create("notes", json!({"n": n})).await;
    }
    let page: Value = app.get("/v1/notes?limit=1").await.json().await.unwrap();
    let cursor = page["next_cursor"].as_str().unwrap();
    let other_query = app.get(&format!("/v1/notes?limit=1&n=1&cursor={cursor}")).await;
    expect_problem(other_query, StatusCode::BAD_REQUEST, "invalid-cursor").await;
}

async fn list_omits_deleted_records(app: TestApp) {
    let kept_record = app.create("notes", json!({"n": 1})).await;
    let deleted_record = app.create("notes", json!({"n": 2})).await;
    let path = format!("/v1/notes/{}", deleted_record["id"].as_str().unwrap());
    let deleted = app.request(Method::DELETE, &path).header("if-match", "\"1\"").send().await.unwrap();
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);

    let (ids, _) = page_ids(&app, "/v1/notes").await;

    assert_eq!(ids, vec![kept_record["id"].as_str().unwrap()]);
}
