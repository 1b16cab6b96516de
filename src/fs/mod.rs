//! The daemon's filesystem: a flat, read-only directory of secret files held in locked memory.
//!
//! `tree` is the pure model, `memory` the locked value storage, `fuse` the fuser adapter,
//! `mount` the lifecycle (checks, mount, signals, unmount), `refresh` the rounds that keep the
//! tree in step with its source, `mountinfo` what is mounted where, `probe` whether a mount's
//! daemon answers (asked with a deadline), and `guard` the process that unmounts after a killed
//! daemon.

pub mod doctor;
mod error;
pub mod fuse;
pub mod guard;
pub mod memory;
pub mod mount;
pub mod mountinfo;
pub mod probe;
mod refresh;
mod rendered;
mod signals;
pub mod status;
pub mod tree;
pub mod volume;
