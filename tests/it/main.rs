//! Integration tests: the real binary, real files, real processes. One test binary, one file per
//! area.

mod access;
mod access_model;
mod cli_secret;
mod containers;
mod faults;
mod fuzz_corpora;
mod identity;
mod keys;
mod launcher;
mod leaks;
mod lepton;
mod mount;
mod replicas;
mod server;
mod store;
mod support;
mod web;
