//! `/proc/self/mountinfo`: which filesystems are mounted where. Pure parsing plus one read, so
//! the daemon (is the mount point already taken?) and the unmount guard (is the mount it watches
//! still there?) ask the same question the same way.

use std::path::Path;

/// One mount, as much of it as secretfs needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// The kernel's id of this mount (field 1); unique among the live mounts.
    pub id: u64,
    /// `major:minor` of the filesystem (field 3): a FUSE connection's own anonymous device.
    pub dev: String,
    /// Where it is mounted, unescaped.
    pub point: String,
    pub fstype: String,
    pub source: String,
}

impl MountEntry {
    /// Whether this is a secretfs FUSE mount: `fuse.secretfs` when fusermount3 mounted it,
    /// plain `fuse` with source `secretfs` when the kernel was asked directly (as root).
    pub fn is_secretfs(&self) -> bool {
        self.fstype == "fuse.secretfs"
            || (self.fstype.starts_with("fuse") && self.source == "secretfs")
    }
}

/// Parses mountinfo text; lines that do not have the documented shape are skipped.
pub fn parse(text: &str) -> Vec<MountEntry> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<MountEntry> {
    // id parent major:minor root point options [optional fields...] - fstype source super-options
    let fields: Vec<&str> = line.split(' ').collect();
    let dash = fields.iter().position(|f| *f == "-")?;
    Some(MountEntry {
        id: fields.first()?.parse().ok()?,
        dev: (*fields.get(2)?).to_owned(),
        point: unescape(fields.get(4)?),
        fstype: (*fields.get(dash + 1)?).to_owned(),
        source: (*fields.get(dash + 2)?).to_owned(),
    })
}

/// The mounts of this process's mount namespace (empty when /proc cannot be read).
pub fn read() -> Vec<MountEntry> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|t| parse(&t))
        .unwrap_or_default()
}

/// The topmost secretfs mount at `dir` (an absolute, canonical path), if any. Mounts stack, and
/// mountinfo lists them in the order they were made, so the last one is the one paths reach.
pub fn secretfs_at(entries: &[MountEntry], dir: &Path) -> Option<MountEntry> {
    let wanted = dir.to_string_lossy();
    entries
        .iter()
        .rev()
        .find(|e| e.point == wanted)
        .filter(|e| e.is_secretfs())
        .cloned()
}

/// mountinfo escapes space, tab, newline and backslash as three octal digits (`\040`).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match octal {
            Some(d) if b[i] == b'\\' => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            _ => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes() {
        assert_eq!(unescape(r"/tmp/a\040b"), "/tmp/a b");
        assert_eq!(unescape(r"/plain"), "/plain");
        assert_eq!(unescape(r"/x\\"), r"/x\\");
    }

    #[test]
    fn entries_and_the_topmost_secretfs_mount() {
        let text = "\
22 1 0:21 / /proc rw,nosuid - proc proc rw
45 27 0:40 / /tmp/k\\0409/mnt ro,nosuid shared:1 - fuse secretfs ro,user_id=0
46 45 0:41 / /tmp/k\\0409/mnt ro - fuse.secretfs secretfs ro
47 27 0:42 / /tmp/other ro - fuse.sshfs host:/ ro
garbage line
";
        let entries = parse(text);
        assert_eq!(entries.len(), 4);
        assert_eq!(entries[1].id, 45);
        assert_eq!(entries[1].dev, "0:40");
        assert_eq!(entries[1].point, "/tmp/k 9/mnt");
        assert!(entries[1].is_secretfs() && entries[2].is_secretfs());
        assert!(!entries[3].is_secretfs());
        let top = secretfs_at(&entries, Path::new("/tmp/k 9/mnt")).unwrap();
        assert_eq!((top.id, top.dev.as_str()), (46, "0:41"));
        assert_eq!(secretfs_at(&entries, Path::new("/tmp/other")), None);
        assert_eq!(secretfs_at(&entries, Path::new("/nowhere")), None);
    }
}
