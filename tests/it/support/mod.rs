//! Shared helpers for the integration tests, one file per kind of thing a test needs: a scratch
//! environment running the real binary and the canary checks (`scratch`), mount daemons
//! (`daemon`), bounded waits on what may never answer (`deadline`), processes that end with the
//! test (`process`), servers (`server`), raw HTTP to a server or to the router in-process
//! (`api`, `http`), a service manager's notify socket (`notify`), PostgreSQL (`postgres`), what
//! the host lets one process see of another (`host`), another host in a network namespace
//! (`netns`), and a private CA (`tls`).
//!
//! Everything is re-exported here, so a test names `crate::support::X` whichever file holds it.

mod api;
mod daemon;
mod deadline;
mod host;
mod http;
mod netns;
mod notify;
mod postgres;
mod process;
mod scratch;
mod server;
mod tls;

pub use api::{Api, names};
pub use daemon::{Daemon, eventually, fuse_available, is_mounted, open_up};
pub use deadline::{FS_LIMIT, list_within, read_within, stat_within, try_within, within};
pub use host::{NO_PTRACE, assert_hardened, may_inspect, memory_holds, python, tools_python};
pub use http::{Http, add_user};
pub use netns::OtherHost;
pub use notify::NotifySocket;
pub use postgres::{OwnPostgres, TempDatabase, postgres_url};
pub use process::{Running, stop};
pub use scratch::{CANARY, Out, Scratch, assert_no_canary, bin, run_with, unique_canary};
pub use server::Server;
pub use tls::private_ca;
