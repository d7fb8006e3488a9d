//! cofferfs: a Tencent Cloud Data Coffer Service coffer as a local directory.
//! The library behind the `cofferfs` binary; `main.rs` only parses the CLI.

// StoreError carries code, status, request and trace ids for the log line; it
// travels only on failure paths that already cost a network round trip.
#![allow(clippy::result_large_err)]

pub mod client;
pub mod commands;
pub mod fs;
pub mod history;
pub mod mount;
pub mod options;
pub mod protocol;
pub mod server;
pub mod store;
pub mod transfer;
