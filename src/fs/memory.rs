//! Locked memory for secret values: anonymous mappings that are `mlock`ed (never swapped),
//! excluded from core dumps and from forked children, and zeroed before they are returned to the
//! kernel.
//!
//! Values fetched together share one mapping (a [`LockedPool`]), so a thousand 100-byte secrets
//! pin 25 pages rather than a thousand. Each value is a [`LockedSlot`]: a range of its pool that is
//! zeroed as soon as the slot is dropped (the value was replaced or removed and the kernel
//! forgot it), and the pool itself is unmapped when its last slot goes.

#![allow(unsafe_code)]

use std::ptr::NonNull;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Set once mlock has failed, so the warning is logged once, not per pool.
static MLOCK_WARNED: AtomicBool = AtomicBool::new(false);

/// Caps glibc's malloc at two arenas. By default every thread that allocates gets its own arena
/// (up to 8 per core), each holding pages; a daemon of a few mostly idle threads needs two.
pub fn limit_malloc_arenas() {
    // SAFETY: mallopt only adjusts allocator parameters; called before the daemon's threads start.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// Fixes glibc's mmap threshold at 128 KiB. fuser allocates a 16 MiB read buffer per FUSE
/// session with `calloc`; by default, once one such buffer is freed, glibc raises its threshold
/// above that size, and the next buffer comes from the heap, zeroed by hand: 16 MiB resident
/// per session (measured: 10.6 MiB per volume of the node agent, `scripts/bench-node`). Fixed,
/// every large buffer is a fresh mapping the kernel zero-fills on touch: resident only where a
/// request was written.
pub fn fix_mmap_threshold() {
    // SAFETY: mallopt only adjusts allocator parameters; called before the agent's threads
    // start.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
}

/// Whether locking memory has failed in this process (values may then reach swap).
pub fn mlock_failed() -> bool {
    MLOCK_WARNED.load(Ordering::Relaxed)
}

/// One anonymous mapping holding several values.
pub struct LockedPool {
    ptr: NonNull<u8>,
    len: usize,
    locked: bool,
}

// SAFETY: the pool owns its mapping exclusively. After construction its bytes are only read
// through `LockedSlot::bytes` (shared, immutable), except for a slot's own range, which is
// zeroed once in that slot's `Drop` when no reader can hold it any more.
unsafe impl Send for LockedPool {}
// SAFETY: as above; concurrent readers only ever read.
unsafe impl Sync for LockedPool {}

impl LockedPool {
    /// Copies `values` into one new locked mapping and returns a slot per value, in order.
    pub fn store<'a>(
        values: impl IntoIterator<Item = &'a [u8]>,
    ) -> std::io::Result<Vec<LockedSlot>> {
        let values: Vec<&[u8]> = values.into_iter().collect();
        let total: usize = values.iter().map(|v| v.len()).sum();
        if values.is_empty() {
            return Ok(Vec::new());
        }
        let page = page_size();
        let len = total.max(1).div_ceil(page) * page;
        // SAFETY: a fresh private anonymous mapping; no existing memory is affected.
        let raw = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if raw == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let ptr = NonNull::new(raw.cast::<u8>()).expect("mmap returned a non-null mapping");
        // SAFETY: advice and locking on the mapping just created, over its whole length.
        let locked = unsafe {
            libc::madvise(raw, len, libc::MADV_DONTDUMP);
            libc::madvise(raw, len, libc::MADV_DONTFORK);
            libc::mlock(raw, len) == 0
        };
        if !locked && !MLOCK_WARNED.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                error = %std::io::Error::last_os_error(),
                "cannot lock secret memory (RLIMIT_MEMLOCK too low?); values may be swapped to disk: \
                 raise the limit (ulimit -l) or run with CAP_IPC_LOCK"
            );
        }
        let pool = Arc::new(LockedPool { ptr, len, locked });
        let mut slots = Vec::with_capacity(values.len());
        let mut offset = 0;
        for v in values {
            // SAFETY: `offset + v.len() <= total <= len`, inside the mapping, and the ranges of
            // different values do not overlap; nothing else references the pool yet.
            unsafe {
                std::ptr::copy_nonoverlapping(v.as_ptr(), pool.ptr.as_ptr().add(offset), v.len());
            }
            slots.push(LockedSlot(Arc::new(Range {
                pool: pool.clone(),
                offset,
                len: v.len(),
            })));
            offset += v.len();
        }
        Ok(slots)
    }

    /// Whether the pages are locked in memory.
    pub fn is_locked(&self) -> bool {
        self.locked
    }
}

impl Drop for LockedPool {
    fn drop(&mut self) {
        // SAFETY: the last reference is gone; the whole mapping is ours to wipe and unmap.
        unsafe {
            zero(self.ptr.as_ptr(), self.len);
            if self.locked {
                libc::munlock(self.ptr.as_ptr().cast(), self.len);
            }
            libc::munmap(self.ptr.as_ptr().cast(), self.len);
        }
    }
}

/// One value inside a [`LockedPool`]. Clones share the value (the node agent's volumes of one
/// identity hold one copy of each); its range is zeroed when the last clone goes.
#[derive(Clone)]
pub struct LockedSlot(Arc<Range>);

/// A value's bytes in its pool.
struct Range {
    pool: Arc<LockedPool>,
    offset: usize,
    len: usize,
}

impl LockedSlot {
    pub fn bytes(&self) -> &[u8] {
        let r = &*self.0;
        // SAFETY: the range lies inside the pool's mapping, was fully written before the slot
        // was created, and is only written again in its `Drop`, once no clone is left.
        unsafe { std::slice::from_raw_parts(r.pool.ptr.as_ptr().add(r.offset), r.len) }
    }

    pub fn is_locked(&self) -> bool {
        self.0.pool.locked
    }
}

impl AsRef<[u8]> for LockedSlot {
    fn as_ref(&self) -> &[u8] {
        self.bytes()
    }
}

impl std::fmt::Debug for LockedSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[REDACTED]")
    }
}

impl Drop for Range {
    fn drop(&mut self) {
        // SAFETY: this range belongs to its slot alone, and the last clone of the slot is gone,
        // so no reader holds a borrow of it; other ranges are disjoint and untouched.
        unsafe { zero(self.pool.ptr.as_ptr().add(self.offset), self.len) }
    }
}

/// Zeroes `len` bytes at `ptr` with volatile writes the compiler cannot elide.
///
/// # Safety
/// `ptr..ptr+len` must be valid for writes and not borrowed elsewhere.
unsafe fn zero(ptr: *mut u8, len: usize) {
    for i in 0..len {
        // SAFETY: in bounds by the caller's contract.
        unsafe { std::ptr::write_volatile(ptr.add(i), 0) };
    }
    std::sync::atomic::compiler_fence(Ordering::SeqCst);
}

fn page_size() -> usize {
    // SAFETY: sysconf has no memory-safety preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(size).unwrap_or(4096)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_hold_their_values() {
        let slots = LockedPool::store([&b"alpha"[..], b"", b"gamma-value"]).unwrap();
        let got: Vec<&[u8]> = slots.iter().map(|s| s.bytes()).collect();
        assert_eq!(got, [&b"alpha"[..], b"", b"gamma-value"]);
        assert_eq!(format!("{:?}", slots[0]), "[REDACTED]");
    }

    #[test]
    fn dropping_a_slot_zeroes_only_its_range() {
        let mut slots = LockedPool::store([&b"first"[..], b"second"]).unwrap();
        let pool = slots[0].0.pool.clone();
        let first = slots.remove(0);
        let clone = first.clone();
        drop(first);
        // A clone keeps the value.
        assert_eq!(clone.bytes(), b"first");
        drop(clone);
        // SAFETY: reading the pool's first bytes, which the dropped slot owned, in a test.
        let wiped = unsafe { std::slice::from_raw_parts(pool.ptr.as_ptr(), 5) };
        assert_eq!(wiped, [0; 5]);
        assert_eq!(slots[0].bytes(), b"second");
    }
}
