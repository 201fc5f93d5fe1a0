//! The `versa` binary as an operator runs it.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

const VERSA: &str = env!("CARGO_BIN_EXE_versa");

/// Starts `versa serve` on a free loopback port in `dir` and returns the
/// process, its log and the address from its `listening` line.
fn start_server(dir: &std::path::Path, args: &[&str], envs: &[(&str, &str)]) -> (std::process::Child, BufReader<std::process::ChildStderr>, String) {
    let mut child = Command::new(VERSA)
        .arg("serve")
        .args(args)
        .envs(envs.iter().copied())
        .env_remove("VERSA_CONFIG")
        .env("RUST_LOG", "info")
        .current_dir(dir)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());

    let mut line = String::new();
    while stderr.read_line(&mut line).unwrap() > 0 {
        if line.contains("listening") {
            let address = line.split("address=").nth(1).and_then(|rest| rest.split_whitespace().next()).map(str::to_owned);
            return (child, stderr, address.expect("an address on the listening line"));
        }
        line.clear();
    }
    let status = child.wait().unwrap();
    panic!("the server exited with {status} before listening");
}

#[test]
fn serve_logs_address_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    // The bind address comes from the environment, the database from a flag.
    let (child, mut stderr, address) = start_server(dir.path(), &["--database-url", "sqlite://test.db"], &[("VERSA_BIND", "127.0.0.1:0")]);
    assert!(address.starts_with("127.0.0.1:"), "{address}");
    let status = get_status(&format!("http://{address}/healthz"));
    assert_eq!(status, 200);
    assert!(dir.path().join("test.db").exists());

    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
    let mut child = child;
    let exit = child.wait().unwrap();

    assert!(exit.success(), "{exit:?}");
    assert!(rest.contains("server stopped"), "{rest}");
}

#[test]
fn migrate_creates_default_database() {
    let dir = tempfile::tempdir().unwrap();

    let output = Command::new(VERSA)
        .arg("migrate")
        .env_remove("VERSA_DATABASE_URL")
        .env_remove("VERSA_CONFIG")
        .current_dir(dir.path())
        .output()
        .unwrap();

    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(dir.path().join("versa.db").exists());
}

#[test]
fn bad_config_stops_with_message() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("versa.toml"), "[server]\nconflict_status = 400\n").unwrap();

    let output = Command::new(VERSA)
        .args(["serve", "--config", "versa.toml"])
        .current_dir(dir.path())
        .output()
        .unwrap();

    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("invalid value for server.conflict_status: must be 409 or 412, got 400"), "{stderr}");
}

/// A minimal blocking GET that returns the status code.
fn get_status(url: &str) -> u16 {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let client = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
        client.get(url).send().await.unwrap().status().as_u16()
    })
}

#[test]
fn check_config_describes_collections() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("task.json"), r#"{"type": "object", "properties": {"done": {"type": "boolean"}}}"#).unwrap();
    std::fs::write(
        dir.path().join("versa.toml"),
        "[collections.notes]\nmerge = \"fields\"\nkeep_revisions = 5\nleases = \"required\"\nread = [\"viewer\"]\n\
         [collections.tasks]\nschema_file = \"task.json\"\n",
    )
    .unwrap();

    let output = Command::new(VERSA).args(["check-config", "versa.toml"]).current_dir(dir.path()).output().unwrap();

    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("collections: 2 declared"), "{stdout}");
    assert!(stdout.contains("merge: fields"), "{stdout}");
    assert!(stdout.contains("the newest 5 revisions per record"), "{stdout}");
    assert!(stdout.contains("schema: validated on every write"), "{stdout}");
}

#[test]
fn check_config_names_bad_key() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("[collections.notes]\nschema = { type = \"object\", properties = { version = { type = \"integer\" } } }\n", "collections.notes.schema"),
        ("[collections.notes]\nschema = { type = 5 }\n", "collections.notes.schema"),
        ("[collections.notes]\nmerge = \"sometimes\"\n", "merge"),
        ("[collections.notes]\nkeep_revisions = 0\n", "collections.notes.keep_revisions"),
        ("[collections.notes]\nlast_writer_wins = [\"viewed_at\"]\n", "collections.notes.last_writer_wins"),
        ("[collections.notes]\nschema_file = \"missing.json\"\n", "collections.notes.schema_file"),
        ("[collections.Notes]\n", "collections.Notes"),
        ("[collections.notes]\ncolour = \"red\"\n", "colour"),
    ];

    for (text, key) in cases {
        std::fs::write(dir.path().join("bad.toml"), text).unwrap();
        let output = Command::new(VERSA).args(["check-config", "bad.toml"]).current_dir(dir.path()).output().unwrap();

        assert!(!output.status.success(), "{text}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(key), "{key} missing from: {stderr}");
    }
}

#[test]
fn example_config_is_valid() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/versa.toml");

    let output = Command::new(VERSA).args(["check-config", example]).output().unwrap();

    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(String::from_utf8_lossy(&output.stdout).contains("collections: 3 declared"));
}

#[test]
fn sigterm_closes_event_streams() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, _stderr, address) = start_server(dir.path(), &["--bind", "127.0.0.1:0", "--database-url", "sqlite://test.db"], &[]);

    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let (text, elapsed) = runtime.block_on(async {
        let client = reqwest::Client::new();
        let response = client.get(format!("http://{address}/v1/_events")).send().await.unwrap();
        let mut body = Box::pin(response.bytes_stream());
        let mut text = String::new();
        while !text.contains(": ready") {
            let chunk = futures_util::StreamExt::next(&mut body).await.unwrap().unwrap();
            text.push_str(std::str::from_utf8(&chunk).unwrap());
        }

        let started = std::time::Instant::now();
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        while let Some(Ok(chunk)) = tokio::time::timeout(Duration::from_secs(20), futures_util::StreamExt::next(&mut body)).await.unwrap() {
            text.push_str(std::str::from_utf8(&chunk).unwrap());
        }
        (text, started.elapsed())
    });
    let exit = child.wait().unwrap();

    assert!(exit.success(), "{exit:?}");
    assert!(text.contains("event: shutdown\n"), "{text}");
    assert!(elapsed < Duration::from_secs(10), "the stream stayed open for {elapsed:?}");
}

#[test]
fn serve_refuses_public_bind_without_auth() {
    let dir = tempfile::tempdir().unwrap();

    let output = Command::new(VERSA)
        .args(["serve", "--bind", "0.0.0.0:0", "--database-url", "sqlite://test.db"])
        .env_remove("VERSA_CONFIG")
        .current_dir(dir.path())
        .output()
        .unwrap();

    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("refusing to listen on 0.0.0.0:0 without authentication"), "{stderr}");
    assert!(stderr.contains("[auth]"), "{stderr}");
}
