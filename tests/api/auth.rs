//! Authentication, permissions, rate limits and CORS.

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::both_backends;
use crate::helpers::{SseClient, TestApp, expect_problem, header};

const EDITOR: &str = "editor-token";
const VIEWER: &str = "viewer-token";
const ADMIN: &str = "admin-token";
const HS256_SECRET: &str = "test-secret-of-at-least-32-bytes!!";

const TOKENS_AND_HS256: &str = r#"
[[auth.tokens]]
principal = "alice"
sha256 = "43dd47c3c09b91fa6c62f8227abd0a3958c608f5b8b477adc042d963af6dc84b"
roles = ["editor"]

[[auth.tokens]]
principal = "victor"
sha256 = "d036bd6d01a1cae081d39a2f8dab751dc042de814fd60df31fcb553170950f29"
roles = ["viewer"]

[[auth.tokens]]
principal = "ada"
sha256 = "10a4c7c9fc5206d6f36dc6944a81bb6f4a3cb0e25014ae3b12e6c3e52712292a"
roles = ["admin"]

[auth.jwt]
hs256_secret = "test-secret-of-at-least-32-bytes!!"
issuer = "https://id.test"
audience = "versa"

[collections.notes]
read = ["viewer", "editor", "admin"]
write = ["editor", "admin"]

[collections.secrets]
read = ["admin"]
write = ["admin"]

[collections.feed-sentinel]
"#;

const RS256: &str = concat!("[auth.jwt]\npublic_key_file = \"", env!("CARGO_MANIFEST_DIR"), "/tests/keys/rsa_public.pem\"\naudience = \"versa\"\n");
const ES256: &str = concat!("[auth.jwt]\npublic_key_file = \"", env!("CARGO_MANIFEST_DIR"), "/tests/keys/ec_public.pem\"\naudience = \"versa\"\n");
const RATE_LIMITED: &str = r#"
[server]
rate_limit_per_second = 1
rate_limit_burst = 2

[[auth.tokens]]
principal = "alice"
sha256 = "43dd47c3c09b91fa6c62f8227abd0a3958c608f5b8b477adc042d963af6dc84b"
"#;
const CORS: &str = r#"
[server]
cors_origins = ["http://localhost:4200"]
"#;

both_backends!(
    config = TOKENS_AND_HS256;
    missing_or_bad_credentials_are_401,
    open_paths_need_no_token,
    roles_decide_reads_and_writes,
    forbidden_collection_hides_existence,
    batch_needs_write_on_every_collection,
    feed_shows_only_readable_collections,
    event_stream_hides_unreadable_changes,
    websocket_rejects_unreadable_collection,
    hs256_tokens_are_checked,
);
both_backends!(config = RS256; rs256_tokens_are_checked);
both_backends!(config = ES256; es256_tokens_are_checked);
both_backends!(config = RATE_LIMITED; burst_beyond_limit_is_429);
both_backends!(config = CORS; cors_preflight_allows_frontend);

async fn call(app: &TestApp, method: Method, path: &str, token: Option<&str>, body: Option<Value>) -> reqwest::Response {
    let mut request = app.request(method, path);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    request.send().await.unwrap()
}

fn jwt(claims: Value, algorithm: Algorithm, key: &EncodingKey) -> String {
    jsonwebtoken::encode(&Header::new(algorithm), &claims, key).unwrap()
}

fn claims(extra: Value) -> Value {
    let now = chrono::Utc::now().timestamp();
    let mut claims = json!({"sub": "jwt-user", "roles": ["editor"], "iss": "https://id.test", "aud": "versa", "exp": now + 300, "nbf": now - 10});
    for (name, value) in extra.as_object().unwrap() {
        if value.is_null() {
            claims.as_object_mut().unwrap().remove(name);
        } else {
            claims[name] = value.clone();
        }
    }
    claims
}

async fn missing_or_bad_credentials_are_401(app: TestApp) {
    let missing = call(&app, Method::GET, "/v1/notes", None, None).await;
    assert_eq!(header(&missing, "www-authenticate"), "Bearer realm=\"versa\"");
    expect_problem(missing, StatusCode::UNAUTHORIZED, "unauthenticated").await;

    let response = app.request(Method::GET, "/v1/notes").header("authorization", "Basic YWxpY2U6c2VjcmV0").send().await.unwrap();
    assert_eq!(header(&response, "www-authenticate"), "Bearer realm=\"versa\"");
    expect_problem(response, StatusCode::UNAUTHORIZED, "unauthenticated").await;

    let wrong = call(&app, Method::GET, "/v1/notes", Some("not-a-token"), None).await;
    assert_eq!(header(&wrong, "www-authenticate"), "Bearer realm=\"versa\", error=\"invalid_token\"");
    let problem = expect_problem(wrong, StatusCode::UNAUTHORIZED, "unauthenticated").await;
    assert!(!problem.to_string().contains("not-a-token"), "the token must not be echoed: {problem}");
}

async fn open_paths_need_no_token(app: TestApp) {
    for path in ["/healthz", "/readyz", "/openapi.yaml", "/metrics"] {
        assert_eq!(app.get(path).await.status(), StatusCode::OK, "{path}");
    }
}

async fn roles_decide_reads_and_writes(app: TestApp) {
    let created = call(&app, Method::POST, "/v1/notes", Some(EDITOR), Some(json!({"title": "a"}))).await;
    assert_eq!(created.status(), StatusCode::CREATED);
    let created: Value = created.json().await.unwrap();
    assert_eq!(created["created_by"], "alice");
    let path = format!("/v1/notes/{}", created["id"].as_str().unwrap());

    assert_eq!(call(&app, Method::GET, &path, Some(VIEWER), None).await.status(), StatusCode::OK);
    assert_eq!(call(&app, Method::GET, "/v1/notes", Some(VIEWER), None).await.status(), StatusCode::OK);
    assert_eq!(call(&app, Method::GET, &format!("{path}/versions"), Some(VIEWER), None).await.status(), StatusCode::OK);

    let refused = call(&app, Method::POST, "/v1/notes", Some(VIEWER), Some(json!({"title": "b"}))).await;
    let problem = expect_problem(refused, StatusCode::FORBIDDEN, "forbidden").await;
    assert!(problem["detail"].as_str().unwrap().contains("write"), "{problem}");
    let patch = app.request(Method::PATCH, &path).bearer_auth(VIEWER).header("if-match", "\"1\"").json(&json!({"title": "c"})).send().await.unwrap();
    expect_problem(patch, StatusCode::FORBIDDEN, "forbidden").await;

    let admin_patch = app.request(Method::PATCH, &path).bearer_auth(ADMIN).header("if-match", "\"1\"").json(&json!({"title": "d"})).send().await.unwrap();
    assert_eq!(admin_patch.status(), StatusCode::OK);
    assert_eq!(admin_patch.json::<Value>().await.unwrap()["updated_by"], "ada");
}

async fn forbidden_collection_hides_existence(app: TestApp) {
    let secret: Value = call(&app, Method::POST, "/v1/secrets", Some(ADMIN), Some(json!({"code": 1}))).await.json().await.unwrap();
    let existing = format!("/v1/secrets/{}", secret["id"].as_str().unwrap());
    let missing = "/v1/secrets/0190a0b2-7c3d-7e4f-8a9b-0c1d2e3f4a5b";

    for path in [existing.as_str(), missing, &format!("{existing}/versions"), "/v1/secrets"] {
        let response = call(&app, Method::GET, path, Some(EDITOR), None).await;
        let problem = expect_problem(response, StatusCode::FORBIDDEN, "forbidden").await;
        assert!(problem["detail"].as_str().unwrap().contains("read"), "{path}: {problem}");
    }
}

async fn batch_needs_write_on_every_collection(app: TestApp) {
    let operations = json!([
        {"op": "create", "collection": "notes", "data": {"n": 1}},
        {"op": "create", "collection": "secrets", "data": {"n": 2}},
    ]);

    let atomic = call(&app, Method::POST, "/v1/_batch", Some(EDITOR), Some(json!({"atomic": true, "operations": operations}))).await;
    let problem = expect_problem(atomic, StatusCode::FORBIDDEN, "batch-failed").await;
    assert_eq!(problem["failures"][0]["index"], 1);

    let separate: Value = call(&app, Method::POST, "/v1/_batch", Some(EDITOR), Some(json!({"operations": operations}))).await.json().await.unwrap();
    assert_eq!(separate["results"][0]["status"], 201);
    assert_eq!(separate["results"][1]["status"], 403);
}

async fn feed_shows_only_readable_collections(app: TestApp) {
    call(&app, Method::POST, "/v1/secrets", Some(ADMIN), Some(json!({"n": 1}))).await;
    let note: Value = call(&app, Method::POST, "/v1/notes", Some(EDITOR), Some(json!({"n": 2}))).await.json().await.unwrap();

    // The admin sees both changes once the feed has caught up.
    for _ in 0..200 {
        let page: Value = call(&app, Method::GET, "/v1/_changes", Some(ADMIN), None).await.json().await.unwrap();
        if page["changes"].as_array().unwrap().len() == 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }

    let page: Value = call(&app, Method::GET, "/v1/_changes", Some(VIEWER), None).await.json().await.unwrap();
    let ids: Vec<_> = page["changes"].as_array().unwrap().iter().map(|change| change["id"].clone()).collect();
    assert_eq!(ids, vec![note["id"].clone()]);

    let named = call(&app, Method::GET, "/v1/_changes?collections=secrets", Some(VIEWER), None).await;
    expect_problem(named, StatusCode::FORBIDDEN, "forbidden").await;
}

async fn event_stream_hides_unreadable_changes(app: TestApp) {
    let (mut events, _) = SseClient::open(&app, "/v1/_events", &[("authorization", "Bearer viewer-token")]).await;

    call(&app, Method::POST, "/v1/secrets", Some(ADMIN), Some(json!({"n": 1}))).await;
    let note: Value = call(&app, Method::POST, "/v1/notes", Some(EDITOR), Some(json!({"n": 2}))).await.json().await.unwrap();

    let frame = events.next_event().await.unwrap();
    assert_eq!(frame.event.as_deref(), Some("notes.created"));
    assert_eq!(frame.data.unwrap()["payload"]["id"], note["id"]);
}

async fn websocket_rejects_unreadable_collection(app: TestApp) {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::{Message, client::IntoClientRequest};

    let mut request = app.url("/v1/_ws").replacen("http://", "ws://", 1).into_client_request().unwrap();
    request.headers_mut().insert("authorization", "Bearer viewer-token".parse().unwrap());
    let (mut socket, _) = tokio_tungstenite::connect_async(request).await.unwrap();

    socket.send(Message::text(json!({"type": "subscribe", "id": "s", "collections": ["secrets"]}).to_string())).await.unwrap();
    let reply = loop {
        match socket.next().await.unwrap().unwrap() {
            Message::Text(text) => break serde_json::from_str::<Value>(&text).unwrap(),
            _ => continue,
        }
    };
    assert_eq!(reply["type"], "error");
    assert_eq!(reply["payload"]["code"], "invalid-subscription");

    let anonymous = tokio_tungstenite::connect_async(app.url("/v1/_ws").replacen("http://", "ws://", 1)).await;
    assert!(anonymous.is_err(), "a WebSocket without a token must be refused");
}

async fn hs256_tokens_are_checked(app: TestApp) {
    let key = EncodingKey::from_secret(HS256_SECRET.as_bytes()).unwrap();
    let valid = jwt(claims(json!({})), Algorithm::HS256, &key);
    let created = call(&app, Method::POST, "/v1/notes", Some(&valid), Some(json!({"n": 1}))).await;
    assert_eq!(created.status(), StatusCode::CREATED);
    assert_eq!(created.json::<Value>().await.unwrap()["created_by"], "jwt-user");

    let now = chrono::Utc::now().timestamp();
    let other_key = EncodingKey::from_secret(b"another-secret-of-at-least-32-bytes").unwrap();
    let rejected = [
        ("expired", jwt(claims(json!({"exp": now - 3600})), Algorithm::HS256, &key)),
        ("not yet valid", jwt(claims(json!({"nbf": now + 3600})), Algorithm::HS256, &key)),
        ("wrong audience", jwt(claims(json!({"aud": "other"})), Algorithm::HS256, &key)),
        ("wrong issuer", jwt(claims(json!({"iss": "https://evil.test"})), Algorithm::HS256, &key)),
        ("no expiry", jwt(claims(json!({"exp": null})), Algorithm::HS256, &key)),
        ("no audience", jwt(claims(json!({"aud": null})), Algorithm::HS256, &key)),
        ("no issuer", jwt(claims(json!({"iss": null})), Algorithm::HS256, &key)),
        ("wrong signature", jwt(claims(json!({})), Algorithm::HS256, &other_key)),
        ("alg none", unsigned_token(&claims(json!({})))),
    ];
    for (case, token) in rejected {
        let response = call(&app, Method::GET, "/v1/notes", Some(&token), None).await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{case}");
        assert_eq!(header(&response, "www-authenticate"), "Bearer realm=\"versa\", error=\"invalid_token\"", "{case}");
    }

    let viewer = jwt(claims(json!({"roles": ["viewer"]})), Algorithm::HS256, &key);
    let refused = call(&app, Method::POST, "/v1/notes", Some(&viewer), Some(json!({"n": 2}))).await;
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
}

/// A token with `"alg": "none"` and no signature.
fn unsigned_token(claims: &Value) -> String {
    use base64::Engine;
    let encode = |value: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(value.to_string());
    format!("{}.{}.", encode(&json!({"alg": "none", "typ": "JWT"})), encode(claims))
}

async fn rs256_tokens_are_checked(app: TestApp) {
    let private = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/keys/rsa_private.pem")).unwrap();
    let key = EncodingKey::from_rsa_pem(&private).unwrap();
    let valid = jwt(claims(json!({"iss": null})), Algorithm::RS256, &key);
    assert_eq!(call(&app, Method::GET, "/v1/notes", Some(&valid), None).await.status(), StatusCode::OK);

    // Algorithm confusion: an HS256 token whose secret is the public key.
    let public = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/keys/rsa_public.pem")).unwrap();
    let confused = jwt(claims(json!({"iss": null})), Algorithm::HS256, &EncodingKey::from_secret(&public).unwrap());
    assert_eq!(call(&app, Method::GET, "/v1/notes", Some(&confused), None).await.status(), StatusCode::UNAUTHORIZED);
}

async fn es256_tokens_are_checked(app: TestApp) {
    let private = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/keys/ec_private.pem")).unwrap();
    let key = EncodingKey::from_ec_pem(&private).unwrap();
    let valid = jwt(claims(json!({"iss": null})), Algorithm::ES256, &key);
    assert_eq!(call(&app, Method::GET, "/v1/notes", Some(&valid), None).await.status(), StatusCode::OK);

    let rsa = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/keys/rsa_private.pem")).unwrap();
    let wrong = jwt(claims(json!({"iss": null})), Algorithm::RS256, &EncodingKey::from_rsa_pem(&rsa).unwrap());
    assert_eq!(call(&app, Method::GET, "/v1/notes", Some(&wrong), None).await.status(), StatusCode::UNAUTHORIZED);
}

async fn burst_beyond_limit_is_429(app: TestApp) {
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(call(&app, Method::GET, "/v1/notes", Some(EDITOR), None).await);
    }

    assert_eq!(statuses[0].status(), StatusCode::OK);
    assert_eq!(statuses[1].status(), StatusCode::OK);
    let limited = statuses.pop().unwrap();
    assert!(header(&limited, "retry-after").parse::<u64>().unwrap() >= 1);
    expect_problem(limited, StatusCode::TOO_MANY_REQUESTS, "rate-limited").await;
}

async fn cors_preflight_allows_frontend(app: TestApp) {
    let preflight = app
        .request(Method::OPTIONS, "/v1/notes/0190a0b2-7c3d-7e4f-8a9b-0c1d2e3f4a5b")
        .header("origin", "http://localhost:4200")
        .header("access-control-request-method", "PATCH")
        .header("access-control-request-headers", "if-match, content-type, idempotency-key")
        .send()
        .await
        .unwrap();
    assert_eq!(preflight.status(), StatusCode::OK);
    assert_eq!(header(&preflight, "access-control-allow-origin"), "http://localhost:4200");
    let allowed = header(&preflight, "access-control-allow-headers").to_lowercase();
    for name in ["if-match", "content-type", "idempotency-key"] {
        assert!(allowed.contains(name), "{name} missing from {allowed}");
    }

    let created = app.request(Method::POST, "/v1/notes").header("origin", "http://localhost:4200").json(&json!({})).send().await.unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
    let exposed = header(&created, "access-control-expose-headers").to_lowercase();
    for name in ["etag", "location", "versa-merged", "versa-lease"] {
        assert!(exposed.contains(name), "{name} missing from {exposed}");
    }

    let other = app
        .request(Method::OPTIONS, "/v1/notes")
        .header("origin", "http://evil.test")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert_eq!(header(&other, "access-control-allow-origin"), "");
}
