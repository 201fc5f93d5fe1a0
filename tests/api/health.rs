use std::collections::BTreeSet;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::both_backends;
use crate::helpers::{TestApp, header};

both_backends!(health_endpoints_answer, openapi_is_served, metrics_are_served);

async fn metrics_are_served(app: TestApp) {
    app.create("notes", serde_json::json!({})).await;
    let (_events, _) = crate::helpers::SseClient::open(&app, "/v1/_events", &[]).await;
    app.settle_feed().await;

    let response = app.get("/metrics").await;

    assert_eq!(response.status(), StatusCode::OK);
    assert!(header(&response, "content-type").starts_with("text/plain"));
    let text = response.text().await.unwrap();
    assert!(text.contains("versa_http_requests_total{method=\"POST\",route=\"/v1/{collection}\",status=\"201\"}"), "{text}");
    assert!(text.contains("versa_http_request_duration_seconds_bucket"), "{text}");
    assert!(text.contains("versa_push_subscribers 1"), "{text}");
    assert!(text.contains("versa_feed_lag_seconds "), "{text}");
    assert!(text.contains("versa_feed_oldest_transaction_seconds "), "{text}");

    // SQLite writes go through the group-commit writer; PostgreSQL has none.
    let writes = counter(&text, "versa_sqlite_writes_total");
    let transactions = counter(&text, "versa_sqlite_write_transactions_total");
    match app.backend {
        crate::helpers::Backend::Sqlite => {
            assert!(writes >= 1, "{text}");
            assert!((1..=writes).contains(&transactions), "{text}");
        }
        crate::helpers::Backend::Postgres => assert_eq!((writes, transactions), (0, 0)),
    }
}

/// Reads a counter without labels from a Prometheus text exposition.
fn counter(text: &str, name: &str) -> u64 {
    let line = text.lines().find(|line| line.split(' ').next() == Some(name)).unwrap_or_else(|| panic!("{name} missing from {text}"));
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

async fn health_endpoints_answer(app: TestApp) {
    let response = app.get("/healthz").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.json::<Value>().await.unwrap(), json!({"status": "ok"}));

    let response = app.get("/readyz").await;
    assert_eq!(response.status(), StatusCode::OK);
    let expected = match app.backend {
        crate::helpers::Backend::Sqlite => "sqlite",
        crate::helpers::Backend::Postgres => "postgres",
    };
    assert_eq!(response.json::<Value>().await.unwrap(), json!({"status": "ready", "database": expected}));
}

async fn openapi_is_served(app: TestApp) {
    let response = app.get("/openapi.yaml").await;

    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(header(&response, "content-type"), "application/yaml");
    let served = response.text().await.unwrap();
    assert_eq!(served, std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.yaml")).unwrap());
}

/// Every route the server registers is documented in openapi.yaml, with the
/// same path template and method.
#[test]
fn openapi_documents_every_route() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.yaml")).unwrap();
    let document: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    let paths = document["paths"].as_mapping().expect("openapi.yaml has paths");

    let mut missing = BTreeSet::new();
    for (method, path) in versa::http::ROUTES {
        let documented = paths.get(*path).and_then(|item| item.get(*method)).is_some();
        if !documented {
            missing.insert(format!("{} {path}", method.to_uppercase()));
        }
    }

    assert!(missing.is_empty(), "routes missing from openapi.yaml: {missing:?}");
}

/// PostgreSQL may close the server's connections (a restart, a failover,
/// an administrator ending sessions). The pool does not test connections
/// before handing them out, so each closed one may fail one request with
/// 503. It must then leave the pool, and later requests succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_postgres_connections_leave_the_pool() {
    use diesel::{Connection, RunQueryDsl};

    let app = TestApp::spawn(crate::helpers::Backend::Postgres).await;
    let created = app.create("notes", json!({"title": "kept"})).await;
    let path = format!("/v1/notes/{}", created["id"].as_str().unwrap());
    // Several requests at once open every connection of the pool.
    let warm: Vec<_> = (0..8).map(|_| app.get(&path)).collect();
    for response in futures_util::future::join_all(warm).await {
        assert_eq!(response.status(), StatusCode::OK);
    }

    let url = app.database_url();
    tokio::task::spawn_blocking(move || {
        let mut admin = diesel::pg::PgConnection::establish(&url).unwrap();
        diesel::sql_query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()")
            .execute(&mut admin)
            .unwrap();
    })
    .await
    .unwrap();

    let mut statuses = Vec::new();
    for _ in 0..12 {
        statuses.push(app.get(&path).await.status());
    }
    assert!(statuses.iter().all(|status| [StatusCode::OK, StatusCode::SERVICE_UNAVAILABLE].contains(status)), "{statuses:?}");
    assert!(statuses[6..].iter().all(|status| *status == StatusCode::OK), "{statuses:?}");
}
