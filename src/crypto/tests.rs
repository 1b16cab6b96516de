use super::*;
use proptest::prelude::*;

fn binding(version: u64) -> Binding<'static> {
    Binding {
        workspace: "default",
        name: "HF_TOKEN",
        secret_id: "id-1",
        version,
    }
}

#[test]
fn round_trip_and_layout() {
    let sealer = Sealer::new(&MasterKey::generate());
    let sealed = sealer.seal(&binding(1), b"canary-value");
    assert_eq!(sealed.len(), b"canary-value".len() + OVERHEAD);
    assert_eq!(sealed[0], 1);
    assert!(
        !sealed.windows(6).any(|w| w == b"canary"),
        "plaintext visible in ciphertext"
    );
    assert_eq!(
        &*sealer.open(&binding(1), &sealed).unwrap(),
        b"canary-value"
    );
    // Two seals of the same value differ (fresh nonce).
    assert_ne!(sealer.seal(&binding(1), b"canary-value"), sealed);
}

#[test]
fn swapped_binding_fails() {
    let sealer = Sealer::new(&MasterKey::generate());
    let sealed = sealer.seal(&binding(3), b"v");
    for other in [
        Binding {
            version: 2,
            ..binding(3)
        },
        Binding {
            name: "OPENAI_API_KEY",
            ..binding(3)
        },
        Binding {
            workspace: "other",
            ..binding(3)
        },
        Binding {
            secret_id: "id-2",
            ..binding(3)
        },
        // Length prefixes: moving a byte between fields changes the encoding.
        Binding {
            workspace: "defaul",
            name: "tHF_TOKEN",
            ..binding(3)
        },
    ] {
        assert_eq!(
            sealer.open(&other, &sealed),
            Err(DecryptionFailed),
            "{other:?}"
        );
    }
}

#[test]
fn wrong_key_and_garbage_fail() {
    let a = Sealer::new(&MasterKey::generate());
    let b = Sealer::new(&MasterKey::generate());
    let sealed = a.seal(&binding(1), b"value");
    assert_eq!(b.open(&binding(1), &sealed), Err(DecryptionFailed));
    for bad in [&[][..], &[1u8; 10][..], &sealed[..sealed.len() - 1]] {
        assert_eq!(a.open(&binding(1), bad), Err(DecryptionFailed));
    }
    let mut other_format = sealed.clone();
    other_format[0] = 2;
    assert_eq!(a.open(&binding(1), &other_format), Err(DecryptionFailed));
}

#[test]
fn debug_is_redacted() {
    let key = MasterKey::from_bytes([0xAB; KEY_LEN]);
    assert!(
        !format!("{key:?}").contains("171") && !format!("{key:?}").to_lowercase().contains("ab,")
    );
    assert_eq!(format!("{:?}", Sealer::new(&key)), "Sealer([REDACTED])");
}

proptest! {
    #[test]
    fn any_value_round_trips(value in proptest::collection::vec(any::<u8>(), 1..2048), version in 1u64..u64::MAX) {
        let sealer = Sealer::new(&MasterKey::from_bytes([7; KEY_LEN]));
        let b = Binding { version, ..binding(1) };
        let sealed = sealer.seal(&b, &value);
        prop_assert_eq!(&*sealer.open(&b, &sealed).unwrap(), &value[..]);
    }

    #[test]
    fn any_flipped_bit_fails(value in proptest::collection::vec(any::<u8>(), 1..256), pos in any::<prop::sample::Index>(), bit in 0u8..8) {
        let sealer = Sealer::new(&MasterKey::from_bytes([9; KEY_LEN]));
        let mut sealed = sealer.seal(&binding(1), &value);
        let i = pos.index(sealed.len());
        sealed[i] ^= 1 << bit;
        prop_assert_eq!(sealer.open(&binding(1), &sealed), Err(DecryptionFailed));
    }
}

#[test]
fn a_ring_opens_old_values_and_seals_with_the_new_key() {
    let (old, new) = (MasterKey::generate(), MasterKey::generate());
    let before = Sealer::new(&old).seal(&binding(1), b"value");
    let ring = Sealer::with_previous(&new, std::slice::from_ref(&old));
    let (plain, key) = ring.open_with_key(&binding(1), &before).unwrap();
    assert_eq!((&plain[..], key), (&b"value"[..], 1));
    let after = ring.seal(&binding(1), b"value");
    assert_eq!(
        Sealer::new(&new)
            .open(&binding(1), &after)
            .unwrap()
            .as_slice(),
        b"value"
    );
    assert_eq!(
        Sealer::new(&old).open(&binding(1), &after),
        Err(DecryptionFailed)
    );
}

#[test]
fn a_merged_ring_holds_each_key_once_and_seals_with_the_newest() {
    let (old, new) = (MasterKey::generate(), MasterKey::generate());
    let before = Sealer::new(&old);
    let sealed_old = before.seal(&binding(1), b"old");
    // What a process does on each re-read of the key file: merging again adds nothing.
    let mut ring = Sealer::with_previous(&new, &[old.duplicate()]).keeping(&before);
    assert_eq!(ring.key_count(), 2);
    for _ in 0..3 {
        ring = Sealer::new(&new).keeping(&ring);
    }
    assert_eq!(ring.key_count(), 2);
    assert_eq!(
        ring.open(&binding(1), &sealed_old).unwrap().as_slice(),
        b"old"
    );
    let sealed_new = ring.seal(&binding(1), b"new");
    assert!(before.open(&binding(1), &sealed_new).is_err());
    assert!(Sealer::new(&new).open(&binding(1), &sealed_new).is_ok());
}
