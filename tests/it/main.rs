//! Integration tests: the real binary, real files, real processes. One test binary, one file per
//! area.

mod cli_secret;
mod launcher;
mod lepton;
mod mount;
mod replicas;
mod server;
mod store;
mod support;
