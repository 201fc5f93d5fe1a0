//! Versa: versioned JSON records over HTTP for applications where many
//! people edit the same records at once.
//!
//! The crate is layered: [`http`] parses requests and maps errors to problem
//! bodies, [`service`] runs each operation as one transaction, [`domain`]
//! contains the rules with no I/O, and [`storage`] contains the queries for SQLite
//! and PostgreSQL. [`startup`] wires them into a server.

pub mod auth;
pub mod cli;
pub mod config;
pub mod domain;
pub mod http;
pub mod push;
pub mod service;
pub mod startup;
pub mod storage;
pub mod telemetry;
