//! The daemon's filesystem: a flat, read-only directory of secret files held in locked memory.
//!
//! `tree` is the pure model, `memory` the locked value storage, `fuse` the fuser adapter, and
//! `mount` the lifecycle (checks, mount, refresh, signals, unmount).

pub mod doctor;
pub mod fuse;
pub mod memory;
pub mod mount;
pub mod tree;
