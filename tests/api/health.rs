use std::collections::BTreeSet;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::both_backends;
use crate::helpers::{TestApp, header};

both_backends!(health_endpoints_answer, openapi_is_served);

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
