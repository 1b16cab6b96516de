//! Load tests: their own test binary, so that cargo runs them after the functional tests
//! instead of beside them (a thousand reader threads would starve the timing-sensitive ones),
//! and one at a time (`SERIAL`).

#[path = "../it/support/mod.rs"]
#[allow(dead_code, unused_imports)]
mod support;

mod cases;

/// Held by each load test: they measure throughput and memory, so they must not share the
/// machine with each other. An async mutex: the server load test holds it across awaits.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
