//! secretfs: workspace secrets for AI and data workloads.
//!
//! The library holds every layer; `src/main.rs` only parses arguments and maps errors to exit
//! codes. See ARCHITECTURE.md for the map.

pub mod api;
pub mod auth;
pub mod cli;
pub mod client;
pub mod connections;
pub mod crypto;
pub mod fs;
pub mod fuzz_targets;
pub mod harden;
pub mod identity;
pub mod keyfile;
pub mod launch;
pub mod metrics;
pub mod node;
pub mod notify;
pub mod protocol;
pub mod render;
pub mod secret;
pub mod server;
pub mod service;
pub mod source;
pub mod store;
pub mod token_file;
