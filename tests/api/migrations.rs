//! Each `down.sql` undoes its `up.sql`, on both back ends.

use std::time::Duration;

use versa::storage::{Database, DatabaseUrl, migrations};

async fn database_url(backend: crate::helpers::Backend, dir: &tempfile::TempDir) -> String {
    match backend {
        crate::helpers::Backend::Sqlite => format!("sqlite://{}", dir.path().join("m.db").display()),
        crate::helpers::Backend::Postgres => crate::helpers::create_postgres_database().await,
    }
}

async fn round_trip(backend: crate::helpers::Backend) {
    let dir = tempfile::tempdir().unwrap();
    let url = DatabaseUrl::parse(&database_url(backend, &dir).await).unwrap();

    tokio::task::spawn_blocking(move || {
        let db = Database::connect(&url, 1, Duration::from_secs(5)).unwrap();
        db.with_writer_blocking(|conn| {
            assert_eq!(migrations::run_pending(conn)?, 3);
            assert!(migrations::is_current(conn)?);
            assert_eq!(migrations::revert_all(conn)?, 3);
            assert!(!migrations::is_current(conn)?);
            assert_eq!(migrations::run_pending(conn)?, 3);
            assert!(migrations::is_current(conn)?);
            Ok(())
        })
        .unwrap();
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn migrations_round_trip_sqlite() {
    round_trip(crate::helpers::Backend::Sqlite).await;
}

#[tokio::test]
async fn migrations_round_trip_postgres() {
    round_trip(crate::helpers::Backend::Postgres).await;
}
