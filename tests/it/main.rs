//! Integration tests: the real binary, real files, real processes (the API's answers also through
//! the real router in this process). One test binary, one file per area; `support/` holds what
//! they share.

mod access;
mod access_model;
mod access_timelines;
mod audit;
mod broker;
mod cli_secret;
mod conformance;
mod consumers;
mod containers;
mod faults;
mod fuzz_corpora;
mod git;
mod http1;
mod keys;
mod launcher;
mod leaks;
mod lepton;
mod mask;
mod mount;
mod node;
mod openapi;
mod operators;
mod protocol;
mod readme;
mod rendered;
mod replicas;
mod server_api;
mod server_cli;
mod server_hardening;
mod server_mount;
mod server_tls;
mod store;
mod store_migrations;
mod supervise;
mod support;
mod web;
mod workload_identity;
