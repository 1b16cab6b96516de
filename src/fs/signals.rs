//! The signals that end the daemon, taken by one thread: the daemon blocks them before any
//! thread exists, and the guard holds them for its whole life.

use nix::sys::signal::{SigSet, Signal};

/// The signals that end the daemon. They are blocked in every thread (a thread that did not
/// block them could be picked to receive one and die with its default action) and taken with
/// `sigwait` by one thread.
pub fn shutdown_signals() -> SigSet {
    let mut set = SigSet::empty();
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGINT);
    set.add(Signal::SIGHUP);
    set
}

/// Blocks the shutdown signals in the calling thread, and so in every thread it spawns after.
/// Call first thing, before any thread exists.
pub fn block_shutdown_signals() {
    // Blocking signals cannot fail for a valid set.
    let _ = shutdown_signals().thread_block();
}
