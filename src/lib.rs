//! secretfs: workspace secrets for AI and data workloads.
//!
//! The library holds every layer; `src/main.rs` only parses arguments and maps errors to exit
//! codes. See ARCHITECTURE.md for the map.

pub mod cli;
pub mod crypto;
pub mod fs;
pub mod harden;
pub mod keyfile;
pub mod launch;
pub mod secret;
pub mod source;
pub mod store;
