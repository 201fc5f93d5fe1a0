//! Integration tests: every scenario runs against the real server over HTTP,
//! once on SQLite and once on PostgreSQL.

mod helpers;

mod auth;
mod batch;
mod changes;
mod cli;
mod collections;
mod concurrency;
mod errors;
mod events;
mod health;
mod idempotency;
mod leases;
mod list;
mod migrations;
mod patch;
mod preconditions;
mod records;
mod socket;
mod versions;
