//! Integration tests: the real binary, real files, real processes. One test binary, one file per
//! area.

mod cli_secret;
mod launcher;
mod lepton;
mod mount;
mod server;
mod store;
mod support;
