use super::*;

fn name(s: &str) -> SecretName {
    SecretName::parse(s).unwrap()
}

fn template(text: &str) -> RenderedFile {
    RenderedFile {
        name: "out".into(),
        recipe: Recipe::Template(parse_template("t.tmpl", text).unwrap()),
        mode: None,
        env: None,
    }
}

fn builtin_file(which: Builtin) -> RenderedFile {
    RenderedFile {
        name: which.as_str().into(),
        recipe: Recipe::Builtin {
            which,
            secret: None,
        },
        mode: None,
        env: None,
    }
}

/// Renders `file` from (name, kind, value) triples.
fn render(
    file: &RenderedFile,
    secrets: &[(&str, SecretKind, &[u8])],
) -> Result<Vec<u8>, Vec<String>> {
    let names: Vec<SecretName> = secrets.iter().map(|(n, _, _)| name(n)).collect();
    let listed: Vec<Listed<'_>> = names.iter().zip(secrets).map(|(n, s)| (n, s.1)).collect();
    file.render(&listed, |n| {
        secrets
            .iter()
            .find(|(m, _, _)| *m == n.as_str())
            .map(|s| s.2)
    })
    .map(|r| r.bytes.to_vec())
}

#[test]
fn a_template_fills_in_secrets_through_their_filters() {
    let file = template(
        "{\"password\": {{ secret \"DB\" | json }}, \"raw\": \"{{secret \"DB\"}}\"}\n\
         url={{ secret \"DB\" | url }} b64={{ secret \"DB\" | base64 }} sh={{ secret \"DB\" | shell }}\n\
         {{ \"{{\" }} stays",
    );
    let out = render(&file, &[("DB", SecretKind::Custom, b"p\"a ss'/")]).unwrap();
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "{\"password\": \"p\\\"a ss'/\", \"raw\": \"p\"a ss'/\"}\n\
         url=p%22a%20ss%27%2F b64=cCJhIHNzJy8= sh='p\"a ss'\\''/'\n{{ stays"
    );
    assert_eq!(file.uses(&[]).unwrap(), vec![name("DB")]);
}

#[test]
fn json_output_parses_back_to_the_exact_value() {
    let value = "q\"uote \\back\nnew\r\tline\u{1}\u{7f} \u{2028} naïve 雪 🔑";
    let file = template("{{ secret \"V\" | json }}");
    let out = render(&file, &[("V", SecretKind::Custom, value.as_bytes())]).unwrap();
    let back: String = serde_json::from_slice(&out).unwrap();
    assert_eq!(back, value);
}

#[test]
fn filters_chain_left_to_right_and_bytes_need_base64_before_text_filters() {
    let file = template("{{ secret \"V\" | base64 | json }}");
    let out = render(&file, &[("V", SecretKind::Custom, &[0xff, 0x00])]).unwrap();
    assert_eq!(out, b"\"/wA=\"");
    let err = render(
        &template("x\n{{ secret \"V\" | json }}"),
        &[("V", SecretKind::Custom, &[0xff])],
    )
    .unwrap_err();
    assert_eq!(err.len(), 1);
    assert!(
        err[0].contains("t.tmpl, line 2") && err[0].contains("base64"),
        "{err:?}"
    );
}

#[test]
fn every_template_problem_is_reported_at_once_with_its_line() {
    let text = "a {{ env \"HOME\" }}\nb {{ secret \"X\" | jsn }}\nc {{ secret X }}\nd {{ secret \"1bad\" }}\ne {{ open";
    let err = parse_template("t.tmpl", text).unwrap_err();
    assert_eq!(err.len(), 5, "{err:#?}");
    for (i, e) in err.iter().enumerate() {
        assert!(e.starts_with(&format!("t.tmpl, line {}", i + 1)), "{e}");
    }
    assert!(err[0].contains("only secrets it names"));
    assert!(err[1].contains("unknown filter \"jsn\""));
}

#[test]
fn a_missing_secret_fails_the_rendering_naming_it_and_its_line() {
    let file = template("{{ secret \"A\" }}\n{{ secret \"GONE\" }}\n{{ secret \"ALSO_GONE\" }}");
    let err = render(&file, &[("A", SecretKind::Custom, b"canary-render")]).unwrap_err();
    assert_eq!(err.len(), 2, "{err:?}");
    assert!(err[0].contains("line 2") && err[0].contains("\"GONE\""));
    assert!(err.iter().all(|e| !e.contains("canary")));
}

const KEY_A: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGq7SuGgEHhZ2xxb9vb4fBxfWmq6l5k3V5w8e2a1b2c3 alice@laptop";

#[test]
fn authorized_keys_holds_every_key_named_by_its_secret_and_nothing_else() {
    let file = builtin_file(Builtin::AuthorizedKeys);
    let out = render(
        &file,
        &[
            ("ALICE_KEY", SecretKind::SshPublicKey, KEY_A.as_bytes()),
            ("TOKEN", SecretKind::Github, b"ghp_canary"),
            (
                "BAD",
                SecretKind::SshPublicKey,
                b"command=\"sh\" ssh-ed25519 AAAA",
            ),
        ],
    )
    .unwrap();
    let text = String::from_utf8(out).unwrap();
    let body = KEY_A.split(' ').nth(1).unwrap();
    assert_eq!(
        text,
        format!("ssh-ed25519 {body} ALICE_KEY\n# BAD: not an OpenSSH public key, left out\n")
    );
    assert_eq!(render(&file, &[]).unwrap(), b"");
}

#[test]
fn git_credentials_percent_encode_the_token_and_refuse_a_multi_line_one() {
    let file = builtin_file(Builtin::GitCredentials);
    let out = render(&file, &[("GH", SecretKind::Github, b"ghp_a/b\n")]).unwrap();
    assert_eq!(out, b"https://x-access-token:ghp_a%2Fb@github.com\n");
    // A token that cannot go in is left out (and named); the others still count.
    let names = [name("BAD"), name("GOOD")];
    let listed: Vec<Listed<'_>> = names.iter().map(|n| (n, SecretKind::Github)).collect();
    let r = file
        .render(&listed, |n| {
            Some(if n.as_str() == "BAD" {
                &b"ghp_a\nhttps://evil"[..]
            } else {
                &b"ghp_good"[..]
            })
        })
        .unwrap();
    assert_eq!(
        r.bytes.as_slice(),
        b"https://x-access-token:ghp_good@github.com\n"
    );
    assert_eq!(r.left_out.len(), 1);
    assert!(r.left_out[0].contains("\"BAD\""), "{:?}", r.left_out);
    // Nor does a line break another reader knows (U+2028), or a space, reach a token file.
    let hf = builtin_file(Builtin::HuggingfaceToken);
    for bad in ["hf_a\u{2028}b", "hf_a b"] {
        assert!(
            render(&hf, &[("HF", SecretKind::Huggingface, bad.as_bytes())]).is_err(),
            "{bad:?}"
        );
    }
}

#[test]
fn a_single_secret_builtin_needs_exactly_one_or_a_choice() {
    let file = builtin_file(Builtin::HuggingfaceToken);
    assert_eq!(
        render(&file, &[("HF", SecretKind::Huggingface, b"hf_x\n")]).unwrap(),
        b"hf_x"
    );
    let none = render(&file, &[]).unwrap_err();
    assert!(none[0].contains("no Hugging Face token"), "{none:?}");
    let two = [
        ("A", SecretKind::Huggingface, &b"hf_a"[..]),
        ("B", SecretKind::Huggingface, &b"hf_b"[..]),
    ];
    let several = render(&file, &two).unwrap_err();
    assert!(
        several[0].contains("\"A\", \"B\"") && several[0].contains("secret = "),
        "{several:?}"
    );
    let chosen = RenderedFile {
        recipe: Recipe::Builtin {
            which: Builtin::HuggingfaceToken,
            secret: Some(name("B")),
        },
        ..file
    };
    assert_eq!(render(&chosen, &two).unwrap(), b"hf_b");
}

#[test]
fn the_docker_config_logs_in_to_nvcr_with_the_ngc_key() {
    let out = render(
        &builtin_file(Builtin::DockerConfig),
        &[("NGC", SecretKind::Ngc, b"nvapi-k")],
    )
    .unwrap();
    let json: serde_json::Value = serde_json::from_slice(&out).unwrap();
    let auth = json["auths"]["nvcr.io"]["auth"].as_str().unwrap();
    let pair = base64::engine::general_purpose::STANDARD
        .decode(auth)
        .unwrap();
    assert_eq!(pair, b"$oauthtoken:nvapi-k");
}

#[test]
fn loading_reports_every_bad_entry_at_once() {
    let spec: FilesSpec = toml::from_str(
        r#"
        [files."a/b"]
        builtin = "authorized_keys"
        [files.both]
        builtin = "git-credentials"
        template = "x.tmpl"
        [files.unknown]
        builtin = "kubeconfig"
        [files.mode]
        builtin = "git-credentials"
        mode = "0600"
        [files.missing]
        template = "nope.tmpl"
        [files.ok]
        template = "ok.tmpl"
        mode = "0440"
        "#,
    )
    .unwrap();
    let read = |p: &Path| {
        if p.ends_with("ok.tmpl") {
            Ok("{{ secret \"A\" }}".to_owned())
        } else {
            Err(std::io::Error::from(std::io::ErrorKind::NotFound))
        }
    };
    let err = load(&spec.files, Path::new("/base"), read).unwrap_err();
    assert_eq!(err.len(), 5, "{err:#?}");
    let spec: FilesSpec =
        toml::from_str("[files.ok]\ntemplate = \"ok.tmpl\"\nmode = \"0440\"").unwrap();
    let files = load(&spec.files, Path::new("/base"), read).unwrap();
    assert_eq!(files[0].mode, Some(0o440));
}

proptest::proptest! {
    /// Any text, as a JSON-filtered value, parses back to itself.
    #[test]
    fn json_escaping_round_trips(value in "\\PC*|[\\x00-\\x7f\u{80}-\u{10ffff}]{0,40}") {
        let out = render(&template("{{ secret \"V\" | json }}"), &[("V", SecretKind::Custom, value.as_bytes())]).unwrap();
        let back: String = serde_json::from_slice(&out).unwrap();
        proptest::prop_assert_eq!(back, value);
    }

    /// Any text is a template that parses or is refused, never a panic; text without a tag is
    /// itself; a parsed one renders with every name it uses.
    #[test]
    fn any_text_parses_or_is_refused(text in "(\\PC|\\{\\{|\\}\\}| secret | \"A\" |\\|)*") {
        match parse_template("t", &text) {
            Ok(t) => {
                let file = RenderedFile { name: "f".into(), recipe: Recipe::Template(t), mode: None, env: None };
                let names = file.uses(&[]).unwrap();
                let listed: Vec<Listed<'_>> = names.iter().map(|n| (n, SecretKind::Custom)).collect();
                let out = file.render(&listed, |_| Some(&b"v"[..])).unwrap().bytes;
                if !text.contains("{{") {
                    proptest::prop_assert_eq!(out.as_slice(), text.as_bytes());
                }
            }
            Err(problems) => proptest::prop_assert!(!problems.is_empty()),
        }
    }
}
