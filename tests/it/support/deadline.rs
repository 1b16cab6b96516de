//! Bounded waits on what may never answer: a call on a mount whose daemon is dead but whose
//! connection another process still holds blocks in the kernel for good, so every such call in a
//! test goes through here, and a test that would hang fails by name instead.

use std::path::Path;
use std::time::Duration;

/// How long a file operation on a mount may take before the test fails: a live daemon answers
/// in microseconds, a loaded machine in milliseconds.
pub const FS_LIMIT: Duration = Duration::from_secs(10);

/// Runs `f` on a thread of its own and returns what it returns, or fails the test naming `what`
/// when it has not returned within `limit`. The thread is left behind, parked in the call; the
/// test's process ends with the test.
pub fn within<T: Send + 'static>(
    what: &str,
    limit: Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name(format!("within: {what}"))
        .spawn(move || {
            let _ = tx.send(f());
        })
        .expect("spawn a bounded call");
    match rx.recv_timeout(limit) {
        Ok(v) => v,
        Err(_) => panic!("{what} did not return within {limit:?} (a mount nobody answers?)"),
    }
}

/// Runs `f` on a thread of its own: what it returns within `limit`, or `None` (the thread is
/// left parked in the call). For a test that expects a call to hang.
pub fn try_within<T: Send + 'static>(
    limit: Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> Option<T> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("try_within".into())
        .spawn(move || {
            let _ = tx.send(f());
        })
        .expect("spawn a bounded call");
    rx.recv_timeout(limit).ok()
}

/// `std::fs::metadata(path)`, bounded.
pub fn stat_within(path: &Path, limit: Duration) -> std::io::Result<std::fs::Metadata> {
    let p = path.to_owned();
    within(&format!("stat {}", path.display()), limit, move || {
        std::fs::metadata(p)
    })
}

/// `std::fs::read(path)`, bounded by [`FS_LIMIT`].
pub fn read_within(path: &Path) -> std::io::Result<Vec<u8>> {
    let p = path.to_owned();
    within(&format!("read {}", path.display()), FS_LIMIT, move || {
        std::fs::read(p)
    })
}

/// The names in directory `dir`, bounded by [`FS_LIMIT`].
pub fn list_within(dir: &Path) -> std::io::Result<Vec<String>> {
    let d = dir.to_owned();
    within(&format!("list {}", dir.display()), FS_LIMIT, move || {
        std::fs::read_dir(d)?
            .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect()
    })
}
