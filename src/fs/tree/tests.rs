use std::time::{Duration, UNIX_EPOCH};

use proptest::prelude::*;

use super::*;
use crate::secret::Timestamp;

fn meta(name: &str, version: u64) -> ValueStamp {
    ValueStamp {
        name: SecretName::parse(name).unwrap(),
        version,
        updated_at: Timestamp::from_nanos(1_000 + version as i64),
    }
}

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

fn owner() -> Ownership {
    Ownership::new(1000, 1000, 0o400).unwrap()
}

/// A tree serving `secrets` (name, version, value).
fn tree(secrets: &[(&str, u64, &str)]) -> Tree<Vec<u8>> {
    let mut t = Tree::new(owner(), at(1));
    sync(&mut t, secrets);
    t
}

/// Of `metas`, the secrets whose value `t` does not hold (what a refresh fetches), as the daemon
/// decides it: from the tree's `held` values.
fn stale(t: &Tree<Vec<u8>>, metas: &[ValueStamp]) -> Vec<SecretName> {
    let held = t.held();
    metas
        .iter()
        .filter(|m| !held.contains(m))
        .map(|m| m.name.clone())
        .collect()
}

fn sync(t: &mut Tree<Vec<u8>>, secrets: &[(&str, u64, &str)]) -> Changes {
    let metas: Vec<ValueStamp> = secrets.iter().map(|(n, v, _)| meta(n, *v)).collect();
    let stale: Vec<String> = stale(t, &metas).iter().map(|n| n.to_string()).collect();
    let fresh = secrets
        .iter()
        .filter(|(n, _, _)| stale.iter().any(|s| s == n))
        .map(|(n, _, v)| (SecretName::parse(n).unwrap(), v.as_bytes().to_vec()))
        .collect();
    t.apply(&metas, fresh, at(2))
}

fn check_lookup(t: &Tree<Vec<u8>>, parent: u64, name: &str, expected: Result<&str, FsError>) {
    let got = t
        .lookup(parent, name)
        .map(|a| t.read(a.ino, 0, 1 << 20).unwrap().to_vec());
    assert_eq!(
        got,
        expected.map(|v| v.as_bytes().to_vec()),
        "lookup {parent}/{name}"
    );
}

#[test]
fn lookups() {
    let t = tree(&[("A", 1, "alpha"), ("B", 3, "beta")]);
    check_lookup(&t, ROOT, "A", Ok("alpha"));
    check_lookup(&t, ROOT, "B", Ok("beta"));
    check_lookup(&t, ROOT, "C", Err(FsError::NotFound));
    check_lookup(&t, ROOT, "", Err(FsError::NotFound));
    let a = t.lookup(ROOT, "A").unwrap().ino;
    check_lookup(&t, a, "B", Err(FsError::NotADirectory));
    check_lookup(&t, 999, "B", Err(FsError::NotFound));
}

#[test]
fn attributes_are_true() {
    let t = tree(&[("A", 2, "alpha")]);
    let a = t.lookup(ROOT, "A").unwrap();
    assert_eq!(
        (a.kind, a.size, a.perm, a.nlink, a.uid, a.gid),
        (Kind::File, 5, 0o400, 1, 1000, 1000)
    );
    assert_eq!(a.mtime, Timestamp::from_nanos(1_002).to_system_time());
    assert_eq!(t.getattr(a.ino), Ok(a));
    let root = t.getattr(ROOT).unwrap();
    assert_eq!(
        (root.kind, root.perm, root.nlink),
        (Kind::Directory, 0o500, 2)
    );
    assert_eq!(t.read(ROOT, 0, 10), Err(FsError::IsADirectory));
}

#[test]
fn reads_respect_offset_and_size() {
    let t = tree(&[("A", 1, "0123456789")]);
    let ino = t.lookup(ROOT, "A").unwrap().ino;
    assert_eq!(t.read(ino, 0, 4).unwrap(), b"0123");
    assert_eq!(t.read(ino, 8, 100).unwrap(), b"89");
    assert_eq!(t.read(ino, 10, 100).unwrap(), b"");
    assert_eq!(t.read(ino, u64::MAX, u32::MAX).unwrap(), b"");
}

#[test]
fn readdir_lists_dots_then_names_and_resumes() {
    let t = tree(&[("b", 1, "x"), ("a", 1, "y"), ("c", 1, "z")]);
    let all = t.readdir(ROOT, 0).unwrap();
    let names: Vec<&str> = all.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, [".", "..", "a", "b", "c"]);
    assert_eq!(
        all.iter().map(|e| e.next_offset).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5]
    );
    let rest: Vec<String> = t
        .readdir(ROOT, 3)
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(rest, ["b", "c"]);
    assert!(t.readdir(ROOT, 5).unwrap().is_empty());
    let a = t.lookup(ROOT, "a").unwrap().ino;
    assert_eq!(t.readdir(a, 0), Err(FsError::NotADirectory));
}

#[test]
fn rotation_makes_a_new_inode_and_keeps_the_old_one_while_looked_up() {
    let mut t = tree(&[("A", 1, "old")]);
    let old = t.lookup(ROOT, "A").unwrap().ino;
    let changes = sync(&mut t, &[("A", 2, "new")]);
    assert_eq!(
        changes,
        Changes {
            replaced: vec![("A".into(), old)],
            ..Default::default()
        }
    );
    let new = t.lookup(ROOT, "A").unwrap();
    assert_ne!(new.ino, old);
    assert_eq!(t.read(new.ino, 0, 10).unwrap(), b"new");
    // The old inode still serves the old bytes (an fd opened before the rotation), unlinked.
    assert_eq!(t.read(old, 0, 10).unwrap(), b"old");
    assert_eq!(t.getattr(old).unwrap().nlink, 0);
    assert_eq!(t.inodes(), 2);
    t.forget(old, 1);
    assert_eq!(t.read(old, 0, 10), Err(FsError::NotFound));
    assert_eq!(t.inodes(), 1);
}

#[test]
fn rotation_of_an_unlooked_inode_frees_it_at_once() {
    let mut t = tree(&[("A", 1, "old")]);
    sync(&mut t, &[("A", 2, "new")]);
    assert_eq!(t.inodes(), 1);
}

#[test]
fn unchanged_refresh_changes_nothing_and_keeps_inodes() {
    let mut t = tree(&[("A", 1, "a"), ("B", 1, "b")]);
    let before = t.lookup(ROOT, "A").unwrap();
    let metas = [meta("A", 1), meta("B", 1)];
    assert!(stale(&t, &metas).is_empty());
    assert!(t.apply(&metas, vec![], at(9)).is_empty());
    assert_eq!(t.lookup(ROOT, "A").unwrap(), before);
    assert_eq!(
        t.getattr(ROOT).unwrap().mtime,
        at(2),
        "an empty refresh moved the directory mtime"
    );
}

#[test]
fn additions_and_removals() {
    let mut t = tree(&[("A", 1, "a"), ("B", 1, "b")]);
    let b = t.lookup(ROOT, "B").unwrap().ino;
    let changes = sync(&mut t, &[("A", 1, "a"), ("C", 1, "c")]);
    assert_eq!(changes.added, ["C"]);
    assert_eq!(changes.removed, [("B".to_owned(), b)]);
    check_lookup(&t, ROOT, "B", Err(FsError::NotFound));
    check_lookup(&t, ROOT, "C", Ok("c"));
    assert_eq!(t.getattr(ROOT).unwrap().mtime, at(2));
}

#[test]
fn recreated_secret_at_the_same_version_is_seen_as_new() {
    let mut t = tree(&[("A", 1, "first")]);
    let mut m = meta("A", 1);
    m.updated_at = Timestamp::from_nanos(9_999);
    assert_eq!(stale(&t, std::slice::from_ref(&m)).len(), 1);
    let changes = t.apply(
        &[m.clone()],
        vec![(m.name.clone(), b"second".to_vec())],
        at(3),
    );
    assert_eq!(changes.replaced.len(), 1);
    check_lookup(&t, ROOT, "A", Ok("second"));
}

#[test]
fn a_failed_fetch_keeps_the_last_known_good_value() {
    let mut t = tree(&[("A", 1, "good")]);
    let changes = t.apply(&[meta("A", 2), meta("NEW", 1)], vec![], at(3));
    assert!(changes.is_empty());
    check_lookup(&t, ROOT, "A", Ok("good"));
    check_lookup(&t, ROOT, "NEW", Err(FsError::NotFound));
}

#[test]
fn modes() {
    for (file, dir) in [(0o400, 0o500), (0o440, 0o550), (0o444, 0o555)] {
        assert_eq!(Ownership::new(0, 0, file).unwrap().dir_mode(), dir);
    }
    for bad in [0o600, 0o500, 0o4400, 0o040, 0o000, 0o1444] {
        let e = Ownership::new(0, 0, bad).unwrap_err();
        assert!(e.contains("read bits only"), "{bad:o}: {e}");
    }
}

#[test]
fn rendered_files_live_beside_the_secrets_and_a_secret_of_their_name_is_not_served() {
    let mut t = tree(&[("A", 1, "a1")]);
    t.reserve_rendered(["conf".to_owned(), "B".to_owned()]);
    let c = t.put_rendered(
        "conf",
        b"r1".to_vec(),
        Some(0o440),
        vec![("A".into(), 1)],
        at(3),
    );
    assert_eq!(c.added, vec!["conf".to_owned()]);
    let first = t.lookup(ROOT, "conf").unwrap();
    assert_eq!(
        (first.perm, t.read(first.ino, 0, 10).unwrap()),
        (0o440, &b"r1"[..])
    );
    assert_eq!(
        t.rendered_contents(first.ino),
        Some(&[("A".to_owned(), 1)][..])
    );
    // Not a secret: not counted, not held, not removed by a round that does not list it.
    assert_eq!(t.len(), 1);
    assert_eq!(t.held().len(), 1);
    let c = sync(&mut t, &[("A", 2, "a2"), ("B", 1, "shadowed")]);
    assert_eq!(c.shadowed, vec!["B".to_owned()]);
    assert!(t.lookup(ROOT, "B").is_err());
    assert_eq!(
        sync(&mut t, &[("A", 2, "a2"), ("B", 1, "shadowed")])
            .shadowed
            .len(),
        0
    );
    assert!(t.lookup(ROOT, "conf").is_ok());
    assert_eq!(t.secret_value("conf").map(|v| v.1), None);
    assert_eq!(t.secret_value("A").map(|v| v.1), Some(2));
    // A new rendering is a new inode; the old one lives while the kernel holds it.
    let c = t.put_rendered("conf", b"r2".to_vec(), None, vec![("A".into(), 2)], at(4));
    assert_eq!(c.replaced, vec![("conf".to_owned(), first.ino)]);
    let second = t.lookup(ROOT, "conf").unwrap();
    assert_ne!(second.ino, first.ino);
    assert_eq!(second.perm, 0o400);
    assert_eq!(t.read(first.ino, 0, 10).unwrap(), b"r1");
    assert_eq!(t.getattr(first.ino).unwrap().nlink, 0);
    // Looked up twice above.
    t.forget(first.ino, 2);
    assert!(t.getattr(first.ino).is_err());
}

proptest! {
    /// Random refreshes, lookups and forgets keep the tree consistent: every name points at a
    /// current inode with that name's latest value, inode numbers are never reused, and no
    /// superseded inode outlives its last lookup.
    #[test]
    fn invariants(ops in proptest::collection::vec((0u8..3, 0usize..4, 1u64..4), 1..60)) {
        let names = ["a", "b", "c", "d"];
        let mut t: Tree<Vec<u8>> = Tree::new(owner(), at(1));
        let mut versions = [0u64; 4];
        let mut held: Vec<(u64, u64)> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for (op, i, n) in ops {
            match op {
                0 => {
                    versions[i] = if versions[i] == 0 { 1 } else { versions[i] + n };
                    if n == 3 { versions[i] = 0; }
                    let live: Vec<(String, u64, String)> = names.iter().zip(versions).filter(|(_, v)| *v > 0)
                        .map(|(nm, v)| (nm.to_string(), v, format!("{nm}-{v}"))).collect();
                    let refs: Vec<(&str, u64, &str)> = live.iter().map(|(a, b, c)| (a.as_str(), *b, c.as_str())).collect();
                    sync(&mut t, &refs);
                }
                1 => if let Ok(a) = t.lookup(ROOT, names[i]) { held.push((a.ino, 1)); seen.insert(a.ino); },
                _ => if !held.is_empty() { let (ino, k) = held.remove(i % held.len()); t.forget(ino, k); },
            }
            for (k, nm) in names.iter().enumerate() {
                let want = (versions[k] > 0).then(|| format!("{nm}-{}", versions[k]).into_bytes());
                let got = t.entries.get(*nm).map(|ino| t.nodes[ino].value.clone());
                prop_assert_eq!(got, want);
            }
            for (ino, node) in &t.nodes {
                prop_assert!(node.current || node.lookups.load(Ordering::Relaxed) > 0, "leaked inode {}", ino);
                prop_assert_eq!(node.current, t.entries.get(&node.name) == Some(ino));
            }
            let held_inos: std::collections::HashSet<u64> = held.iter().map(|h| h.0).collect();
            for ino in held_inos {
                prop_assert!(t.nodes.contains_key(&ino), "inode {} freed while the kernel holds it", ino);
            }
        }
    }
}
