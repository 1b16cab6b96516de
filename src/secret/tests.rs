use super::*;

fn check_name(input: &str, ok: bool) {
    let got = SecretName::parse(input);
    assert_eq!(got.is_ok(), ok, "name {input:?}: {got:?}");
    if let Err(e) = got {
        // Every refusal states the rule, so the user can fix the name without the docs.
        assert!(e.to_string().contains(NAME_RULE), "{e}");
    }
}

#[test]
fn names_accepted() {
    for name in [
        "HF_TOKEN",
        "SSH_PUBLIC_KEY.alice",
        "MY_KEY-2",
        "_x",
        "a",
        "HUGGING_FACE_HUB_TOKEN_read",
        "db-password",
        "a.b.c",
        "a..b",
    ] {
        check_name(name, true);
    }
    check_name(&"a".repeat(253), true);
}

#[test]
fn names_refused() {
    for name in [
        "", ".", "..", ".hidden", "1abc", "-x", "a/b", "/etc", "a b", "a\0b", "ключ", "a:b", "a=b",
        "x\n",
    ] {
        check_name(name, false);
    }
    check_name(&"a".repeat(254), false);
}

#[test]
fn name_error_names_the_problem() {
    let e = SecretName::parse("a/b").unwrap_err().to_string();
    assert!(
        e.starts_with("invalid secret name \"a/b\": it contains '/'"),
        "{e}"
    );
    let e = SecretName::parse("").unwrap_err().to_string();
    assert!(e.contains("it is empty"), "{e}");
    // A pasted blob is shortened in the message.
    let e = SecretName::parse(&"é".repeat(500)).unwrap_err().to_string();
    assert!(e.len() < 400, "{e}");
}

#[test]
fn value_limits() {
    let limit = ValueLimit::default();
    assert_eq!(limit.bytes(), 1 << 20);
    assert_eq!(
        SecretValue::from_slice(b"", limit).unwrap_err(),
        ValueError::Empty
    );
    assert!(SecretValue::from_slice(&vec![7; 1 << 20], limit).is_ok());
    assert_eq!(
        SecretValue::from_slice(&vec![7; (1 << 20) + 1], limit).unwrap_err(),
        ValueError::TooLarge {
            len: (1 << 20) + 1,
            limit: 1 << 20
        }
    );
    let small = ValueLimit::new(10).unwrap();
    assert!(SecretValue::from_slice(b"0123456789", small).is_ok());
    assert!(matches!(
        SecretValue::from_slice(b"0123456789a", small),
        Err(ValueError::TooLarge { len: 11, limit: 10 })
    ));
    // Configurable down, never up, never to zero.
    assert!(ValueLimit::new((1 << 20) + 1).is_err());
    assert!(ValueLimit::new(0).is_err());
}

#[test]
fn debug_is_redacted() {
    let v = SecretValue::from_slice(b"canary-8d1f0c-do-not-leak", ValueLimit::default()).unwrap();
    assert_eq!(format!("{v:?}"), "[REDACTED]");
    assert_eq!(format!("{v:#?}"), "[REDACTED]");
    // Also inside containers that derive Debug.
    let wrapped = Some((1, v));
    assert!(!format!("{wrapped:?}").contains("canary"));
}

fn ssh(value: &str) -> Result<Vec<Warning>, ValueError> {
    SecretKind::SshPublicKey
        .check(&SecretValue::from_slice(value.as_bytes(), ValueLimit::default()).unwrap())
}

const ED25519: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGTbSLMnIUW9PfsFTPGr1N9h2zjnrHzJdMqz6UcCBnuv alice@laptop";

#[test]
fn ssh_public_keys() {
    assert_eq!(ssh(ED25519), Ok(vec![]));
    assert_eq!(ssh(&format!("{ED25519}\n")), Ok(vec![]));
    let no_comment = ED25519.rsplit_once(' ').unwrap().0;
    assert_eq!(ssh(no_comment), Ok(vec![]));
    for (bad, why) in [
        ("ssh-ed25519", "expected \"TYPE BASE64"),
        ("ssh-foo AAAA", "unknown key type"),
        ("ssh-ed25519 not*base64", "not valid base64"),
        // A valid ed25519 body labelled as RSA.
        (
            &ED25519.replace("ssh-ed25519", "ssh-rsa"),
            "does not match its type",
        ),
        (
            "-----BEGIN OPENSSH PRIVATE KEY-----\nb3Blbn\n-----END OPENSSH PRIVATE KEY-----\n",
            "private key",
        ),
        (&format!("{ED25519}\n{ED25519}\n"), "several lines"),
    ] {
        let err = ssh(bad).unwrap_err().to_string();
        assert!(err.contains(why), "{bad:?}: {err}");
    }
}

fn warnings(kind: SecretKind, value: &str) -> Vec<String> {
    let v = SecretValue::from_slice(value.as_bytes(), ValueLimit::default()).unwrap();
    kind.check(&v).unwrap().into_iter().map(|w| w.0).collect()
}

#[test]
fn token_templates_warn_but_accept() {
    use SecretKind::*;
    for (kind, good) in [
        (Github, "ghp_0123456789abcdefABCDEF0123456789abcd"),
        (Github, "github_pat_11AAAA_xyz"),
        (Huggingface, "hf_abcdefghijklmnopqrstuvwxyz"),
        (Openai, "sk-proj-abc123"),
        (Datadog, "0123456789abcdef0123456789abcdef"),
        (Ngc, "nvapi-abcdef"),
        (Custom, "anything at all\n"),
    ] {
        assert_eq!(warnings(kind, good), Vec::<String>::new(), "{kind}");
    }
    for (kind, bad) in [
        (Github, "hf_wrong"),
        (Huggingface, "ghp_wrong"),
        (Openai, "nope"),
        (Datadog, "0123"),
        (Ngc, "short"),
    ] {
        let w = warnings(kind, bad);
        assert_eq!(w.len(), 1, "{kind}: {w:?}");
        assert!(
            w[0].contains(kind.label()) && w[0].contains("storing it anyway"),
            "{w:?}"
        );
        // A warning never repeats the value.
        assert!(!w[0].contains(bad), "{w:?}");
    }
    let w = warnings(Huggingface, "hf_abc\n");
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(w[0].contains("newline"));
}

#[test]
fn kinds_parse_and_suggest_names() {
    for kind in SecretKind::ALL {
        assert_eq!(kind.as_str().parse::<SecretKind>(), Ok(kind));
    }
    assert_eq!("hf".parse::<SecretKind>(), Ok(SecretKind::Huggingface));
    assert_eq!("SSH".parse::<SecretKind>(), Ok(SecretKind::SshPublicKey));
    assert!(
        "aws"
            .parse::<SecretKind>()
            .unwrap_err()
            .contains("ssh-public-key")
    );
    let names: Vec<_> = SecretKind::ALL
        .iter()
        .filter_map(|k| k.default_name())
        .collect();
    assert_eq!(
        names,
        [
            "SSH_PUBLIC_KEY",
            "GITHUB_TOKEN",
            "HF_TOKEN",
            "OPENAI_API_KEY",
            "DD_API_KEY",
            "NGC_API_KEY"
        ]
    );
    for name in names {
        check_name(name, true);
    }
}

#[test]
fn visibility_parse() {
    assert_eq!(" Public ".parse::<Visibility>(), Ok(Visibility::Public));
    assert_eq!("private".parse::<Visibility>(), Ok(Visibility::Private));
    assert_eq!(Visibility::default(), Visibility::Private);
    assert!("shared".parse::<Visibility>().is_err());
}

#[test]
fn tags() {
    let t = |v: &[&str]| validate_tags(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
    assert_eq!(t(&["hf", "team=ml", "hf"]).unwrap(), ["hf", "team=ml"]);
    assert!(t(&[""]).is_err());
    assert!(t(&["a b"]).is_err());
    assert!(t(&["a,b"]).is_err());
    assert!(t(&[&"x".repeat(65)]).is_err());
    let many: Vec<String> = (0..33).map(|i| format!("t{i}")).collect();
    assert!(validate_tags(&many).is_err());
}

#[test]
fn timestamps_round_trip() {
    let t = Timestamp::from_nanos(1_764_174_433_123_456_789);
    assert_eq!(Timestamp::from_system_time(t.to_system_time()), t);
    assert_eq!(t.rfc3339(), "2025-11-26T16:27:13Z");
    assert_eq!(
        serde_json::to_string(&t).unwrap(),
        "\"2025-11-26T16:27:13.123456Z\""
    );
}

#[test]
fn a_held_value_is_matched_exactly_locally_and_at_microseconds_over_the_wire() {
    let meta = |version: u64, nanos: i64| SecretMeta {
        name: SecretName::parse("A").unwrap(),
        kind: SecretKind::Custom,
        visibility: Visibility::Private,
        owner: "u".into(),
        tags: vec![],
        version,
        created_at: Timestamp::from_nanos(nanos),
        updated_at: Timestamp::from_nanos(nanos),
    };
    let held = |version: u64, nanos: i64| ValueStamp {
        name: SecretName::parse("A").unwrap(),
        version,
        updated_at: Timestamp::from_nanos(nanos),
    };
    // Locally: a secret re-created at the same version within a microsecond is another value.
    assert_eq!(meta(1, 5_000_123).stamp(), held(1, 5_000_123));
    assert_ne!(meta(1, 5_000_456).stamp(), held(1, 5_000_123));
    assert_ne!(meta(1, 5_000_123).stamp(), held(2, 5_000_123));
    // Over the wire the reader knows the time at microseconds only.
    assert!(held(1, 5_000_000).describes_as_sent(&meta(1, 5_000_999)));
    assert!(!held(1, 5_000_000).describes_as_sent(&meta(1, 5_001_000)));
    assert!(!held(1, 5_000_000).describes_as_sent(&meta(2, 5_000_999)));
}

#[test]
fn reserving_moves_a_full_buffer_once_and_keeps_its_bytes() {
    let mut buf = Zeroizing::new(Vec::with_capacity(4));
    buf.extend_from_slice(b"abcd");
    reserve_zeroized(&mut buf, 1);
    assert!(buf.capacity() >= 8, "{}", buf.capacity());
    assert_eq!(&buf[..], b"abcd");
    let before = buf.as_ptr();
    reserve_zeroized(&mut buf, 3);
    assert_eq!(buf.as_ptr(), before, "room was there: no move");
}

#[test]
fn a_typo_gets_the_closest_name_and_a_stranger_gets_none() {
    let known = ["db-password", "HF_TOKEN", "OPENAI_API_KEY"];
    assert_eq!(closest("db-pasword", known), Some("db-password"));
    assert_eq!(closest("hf_token", known), Some("HF_TOKEN"));
    assert_eq!(closest("OPENAI_APIKEY", known), Some("OPENAI_API_KEY"));
    assert_eq!(closest("github", known), None);
    assert_eq!(
        closest("db-password", known),
        None,
        "the name itself is no suggestion"
    );
    assert_eq!(
        did_you_mean("db-pasword", known),
        "; did you mean \"db-password\"?"
    );
    assert_eq!(did_you_mean("x", known), "");
}
