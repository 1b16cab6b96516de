//! Process hardening for anything that holds secret values in memory: no core dumps, not
//! dumpable (so same-uid processes cannot ptrace it or read its memory through /proc).

/// Applies the hardening; failures are logged, not fatal (a container may forbid prctl).
pub fn harden_process() {
    if let Err(e) = nix::sys::prctl::set_dumpable(false) {
        tracing::warn!(error = %e, "cannot mark the process non-dumpable");
    }
    if let Err(e) = nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_CORE, 0, 0) {
        tracing::warn!(error = %e, "cannot disable core dumps");
    }
}
