//! The test application: the real server on port 0 over real HTTP, with its
//! own SQLite file or its own PostgreSQL database.

use std::time::Duration;

use diesel::{Connection, RunQueryDsl};
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde_json::Value;
use tempfile::TempDir;
use versa::config::{Overrides, Settings};
use versa::startup::Application;

/// Names the admin URL of the PostgreSQL cluster that `scripts/test` starts.
pub const POSTGRES_URL_VARIABLE: &str = "VERSA_TEST_POSTGRES_URL";

/// Collection of the records that [`TestApp::settle_feed`] writes.
pub const SENTINEL_COLLECTION: &str = "feed-sentinel";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

pub struct TestApp {
    pub address: String,
    pub client: reqwest::Client,
    pub backend: Backend,
    database_url: String,
    /// The PostgreSQL database this server created, dropped after the test
    /// so that a whole run does not fill the test cluster's disk.
    created_database: Option<String>,
    _dir: TempDir,
}

/// Runs each named scenario as two tests, `NAME::sqlite` and
/// `NAME::postgres`, each against a fresh server and database.
///
/// With `config = NAME;` first, each server loads the constant NAME as its TOML
/// configuration file.
#[macro_export]
macro_rules! both_backends {
    (config = $config:ident; $($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name($crate::helpers::TestApp::spawn_with_config($crate::helpers::Backend::Sqlite, super::$config).await).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$name($crate::helpers::TestApp::spawn_with_config($crate::helpers::Backend::Postgres, super::$config).await).await
            }
        }
    )*};
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name($crate::helpers::TestApp::spawn($crate::helpers::Backend::Sqlite).await).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$name($crate::helpers::TestApp::spawn($crate::helpers::Backend::Postgres).await).await
            }
        }
    )*};
}

impl TestApp {
    pub async fn spawn(backend: Backend) -> Self {
        Self::spawn_with(backend, |_| {}).await
    }

    /// Starts a server whose settings `customize` may change.
    pub async fn spawn_with(backend: Backend, customize: impl FnOnce(&mut Settings)) -> Self {
        Self::start(backend, None, customize).await
    }

    /// Starts a server that loads `config` as its configuration file.
    pub async fn spawn_with_config(backend: Backend, config: &str) -> Self {
        Self::start(backend, Some(config), |_| {}).await
    }

    /// Starts a second server on this server's database, with another
    /// configuration file. This server must outlive it, because it owns a
    /// SQLite database's folder.
    pub async fn restart_with_config(&self, config: &str) -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        Self::start_on(self.backend, self.database_url.clone(), None, dir, Some(config), |_| {}).await
    }

    async fn start(backend: Backend, config: Option<&str>, customize: impl FnOnce(&mut Settings)) -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        let (database_url, created_database) = match backend {
            Backend::Sqlite => (format!("sqlite://{}", dir.path().join("versa.db").display()), None),
            Backend::Postgres => {
                let url = create_postgres_database().await;
                let name = url.rsplit_once('/').map(|(_, name)| name.to_owned());
                (url, name)
            }
        };
        Self::start_on(backend, database_url, created_database, dir, config, customize).await
    }

    /// Starts a server on `database_url`, keeping its files in `dir`.
    async fn start_on(
        backend: Backend,
        database_url: String,
        created_database: Option<String>,
        dir: TempDir,
        config: Option<&str>,
        customize: impl FnOnce(&mut Settings),
    ) -> Self {
        let config_path = config.map(|text| {
            let path = dir.path().join("versa.toml");
            std::fs::write(&path, text).expect("write the configuration file");
            path
        });

        let overrides = Overrides { bind: Some("127.0.0.1:0".into()), database_url: Some(database_url.clone()) };
        let mut settings = Settings::load(config_path.as_deref(), overrides).expect("test settings");
        settings.server.workers = Some(2);
        settings.database.pool_size = 4;
        customize(&mut settings);

        let application = Application::build(settings).await.expect("server starts");
        let address = format!("http://{}", application.address());
        tokio::spawn(application.run());

        let client = reqwest::Client::builder().timeout(Duration::from_secs(90)).build().expect("HTTP client");
        Self { address, client, backend, database_url, created_database, _dir: dir }
    }

    pub fn database_url(&self) -> String {
        self.database_url.clone()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.address, path)
    }

    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.client.request(method, self.url(path))
    }

    pub async fn get(&self, path: &str) -> Response {
        self.request(Method::GET, path).send().await.expect("request sent")
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> Response {
        self.request(Method::POST, path).json(body).send().await.expect("request sent")
    }

    /// Sends a write with a JSON body of the given media type and headers.
    pub async fn send(&self, method: Method, path: &str, content_type: &str, body: &Value, headers: &[(&str, &str)]) -> Response {
        let mut request = self.request(method, path).header("content-type", content_type).body(body.to_string());
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.send().await.expect("request sent")
    }

    /// Creates a record and returns its wire form.
    pub async fn create(&self, collection: &str, body: Value) -> Value {
        let response = self.post_json(&format!("/v1/{collection}"), &body).await;
        assert_eq!(response.status(), StatusCode::CREATED);
        response.json().await.expect("JSON body")
    }

    /// Reads a record and returns its wire form.
    pub async fn read(&self, collection: &str, id: &str) -> Value {
        let response = self.get(&format!("/v1/{collection}/{id}")).await;
        assert_eq!(response.status(), StatusCode::OK);
        response.json().await.expect("JSON body")
    }

    /// Returns every change committed before this call, without the sentinel
    /// changes that [`TestApp::settle_feed`] writes.
    pub async fn all_changes(&self) -> Vec<Value> {
        self.settle_feed().await;
        self.read_feed().await.into_iter().filter(|change| change["collection"] != SENTINEL_COLLECTION).collect()
    }

    /// Waits until every change committed before this call is readable.
    ///
    /// On PostgreSQL the feed only shows changes below the oldest running
    /// transaction in the cluster, and other tests' transactions run in the
    /// same cluster. A sentinel written now gets a higher transaction id than
    /// every transaction that has already committed, so once the sentinel is
    /// readable, so is everything before it.
    pub async fn settle_feed(&self) {
        let sentinel = self.create(SENTINEL_COLLECTION, serde_json::json!({})).await;
        for _ in 0..500 {
            if self.read_feed().await.iter().any(|change| change["id"] == sentinel["id"]) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("the change feed did not show a committed change within 10 seconds");
    }

    async fn read_feed(&self) -> Vec<Value> {
        let mut changes = Vec::new();
        let mut path = "/v1/_changes?limit=1000".to_owned();
        loop {
            let page: Value = self.get(&path).await.json().await.expect("JSON body");
            let batch = page["changes"].as_array().cloned().unwrap_or_default();
            if batch.is_empty() {
                return changes;
            }
            changes.extend(batch);
            path = format!("/v1/_changes?limit=1000&since={}", page["next_cursor"].as_str().unwrap_or_default());
        }
    }
}

/// Reads a problem body and checks its content type, status and type slug.
/// Sends the requests at once, each from its own task released by one
/// barrier, and returns their statuses in request order.
pub async fn send_together(requests: Vec<RequestBuilder>) -> Vec<StatusCode> {
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(requests.len()));
    let senders: Vec<_> = requests
        .into_iter()
        .map(|request| {
            let barrier = barrier.clone();
            tokio::spawn(async move {
                barrier.wait().await;
                request.send().await.unwrap().status()
            })
        })
        .collect();
    let mut statuses = Vec::with_capacity(senders.len());
    for sender in senders {
        statuses.push(sender.await.unwrap());
    }
    statuses
}

pub async fn expect_problem(response: Response, status: StatusCode, kind: &str) -> Value {
    assert_eq!(response.status(), status);
    assert_eq!(header(&response, "content-type"), "application/problem+json");
    let body: Value = response.json().await.expect("problem body");
    assert_eq!(body["type"], format!("https://versa.dev/problems/{kind}"), "{body}");
    assert_eq!(body["status"], status.as_u16(), "{body}");
    assert!(body["title"].is_string(), "{body}");
    assert!(body["detail"].as_str().is_some_and(|detail| !detail.is_empty()), "{body}");
    body
}

pub fn header(response: &Response, name: &str) -> String {
    response.headers().get(name).map(|value| value.to_str().unwrap_or_default().to_owned()).unwrap_or_default()
}

impl Drop for TestApp {
    fn drop(&mut self) {
        let Some(name) = self.created_database.take() else { return };
        let Ok(admin_url) = std::env::var(POSTGRES_URL_VARIABLE) else { return };

        // Dropping now would leave the server's background tasks waiting
        // for connections to a database that is gone, and the test's
        // runtime waits for them when it ends. A detached thread drops it
        // once the runtime is gone; the last few of a run stay behind
        // until scripts/test removes the cluster.
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs(1));
            let dropped = diesel::pg::PgConnection::establish(&admin_url).map_err(|error| error.to_string()).and_then(|mut conn| {
                diesel::sql_query(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(&mut conn).map_err(|error| error.to_string())
            });
            if let Err(error) = dropped {
                eprintln!("could not drop the test database {name}: {error}");
            }
        });
    }
}

/// Creates an empty database in the test cluster and returns its URL.
pub async fn create_postgres_database() -> String {
    let admin_url = std::env::var(POSTGRES_URL_VARIABLE).unwrap_or_else(|_| {
        panic!("{POSTGRES_URL_VARIABLE} is not set; run the suite with scripts/test, which starts a PostgreSQL cluster")
    });
    let name = format!("versa_test_{}", uuid::Uuid::new_v4().simple());
    let statement = format!("CREATE DATABASE {name}");
    let admin = admin_url.clone();
    tokio::task::spawn_blocking(move || {
        let mut conn = diesel::pg::PgConnection::establish(&admin).expect("connect to the test cluster");
        diesel::sql_query(statement).execute(&mut conn).expect("create test database");
    })
    .await
    .expect("create database task");

    let (base, _) = admin_url.rsplit_once('/').expect("admin URL names a database");
    format!("{base}/{name}")
}

/// One Server-Sent Events frame; a comment has only `comment`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SseFrame {
    pub event: Option<String>,
    pub id: Option<String>,
    pub data: Option<Value>,
    pub comment: Option<String>,
}

/// A reader of an open `text/event-stream` response.
pub struct SseClient {
    body: std::pin::Pin<Box<dyn futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    buffer: String,
}

impl SseClient {
    /// Opens `path` and waits until the server reports the subscription
    /// ready, so that every later commit reaches it. Returns the frames
    /// received before that.
    pub async fn open(app: &TestApp, path: &str, headers: &[(&str, &str)]) -> (Self, Vec<SseFrame>) {
        let mut request = app.request(Method::GET, path).timeout(Duration::from_secs(600));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await.expect("request sent");
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(header(&response, "content-type"), "text/event-stream");
        let mut client = Self { body: Box::pin(response.bytes_stream()), buffer: String::new() };

        let mut before = Vec::new();
        loop {
            let frame = client.next_frame().await.expect("stream open until ready");
            if frame.comment.as_deref() == Some("ready") {
                return (client, before);
            }
            before.push(frame);
        }
    }

    /// Wraps an open `text/event-stream` response without waiting for it.
    pub fn from_response(response: Response) -> Self {
        assert_eq!(response.status(), StatusCode::OK);
        Self { body: Box::pin(response.bytes_stream()), buffer: String::new() }
    }

    /// Returns the next frame, or `None` when the stream ends. Fails the test
    /// after 10 seconds without one.
    pub async fn next_frame(&mut self) -> Option<SseFrame> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let text: String = self.buffer.drain(..end + 2).collect();
                return Some(parse_frame(&text));
            }
            let chunk = tokio::time::timeout(Duration::from_secs(10), futures_util::StreamExt::next(&mut self.body))
                .await
                .expect("an SSE frame within 10 seconds")?;
            self.buffer.push_str(std::str::from_utf8(&chunk.expect("stream chunk")).expect("UTF-8 stream"));
        }
    }

    /// Returns the next event frame, skipping comments.
    pub async fn next_event(&mut self) -> Option<SseFrame> {
        loop {
            let frame = self.next_frame().await?;
            if frame.comment.is_none() {
                return Some(frame);
            }
        }
    }
}

fn parse_frame(text: &str) -> SseFrame {
    let mut frame = SseFrame::default();
    for line in text.lines() {
        if let Some(comment) = line.strip_prefix(": ") {
            frame.comment = Some(comment.to_owned());
        } else if let Some(event) = line.strip_prefix("event: ") {
            frame.event = Some(event.to_owned());
        } else if let Some(id) = line.strip_prefix("id: ") {
            frame.id = Some(id.to_owned());
        } else if let Some(data) = line.strip_prefix("data: ") {
            frame.data = Some(serde_json::from_str(data).expect("JSON data"));
        }
    }
    frame
}
