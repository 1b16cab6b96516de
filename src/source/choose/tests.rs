use super::*;

fn named<T>(value: T, by: &str) -> Option<Named<T>> {
    Some(Named::new(value, by))
}

fn token(by: &str) -> Option<Named<Token>> {
    named(Token::from_string("sfs_w_x_y".into()), by)
}

#[test]
fn the_first_level_that_names_a_source_decides_and_two_at_one_level_are_refused() {
    let flags = Given {
        url: named("https://a".into(), "--url"),
        token_file: named("/t".into(), "--token-file"),
        ..Default::default()
    };
    let env = Given {
        store: named("/s.db".into(), "SECRETFS_STORE"),
        ca_file: Some("/ca.pem".into()),
        ..Default::default()
    };
    assert_eq!(
        choose(&[&flags, &env], Fallback::Store),
        Ok(SourceSpec::Server {
            urls: "https://a".into(),
            credential: CredentialSpec::TokenFile("/t".into()),
            ca_file: Some("/ca.pem".into()),
        })
    );
    let env_both = Given {
        store: named("/s.db".into(), "SECRETFS_STORE"),
        url: named("https://a".into(), "SECRETFS_URL"),
        ..Default::default()
    };
    let err = choose(&[&Given::default(), &env_both], Fallback::Store).unwrap_err();
    assert_eq!(
        err,
        [
            "SECRETFS_STORE and SECRETFS_URL each name a source (a directory, the local store or a \
          server); give one"
        ]
    );
    // A flag settles what the environment leaves ambiguous.
    let flag = Given {
        store: named("/mine.db".into(), "--store"),
        ..Default::default()
    };
    assert!(matches!(
        choose(&[&flag, &env_both], Fallback::Store),
        Ok(SourceSpec::Store { path: Some(p), .. }) if p == std::path::Path::new("/mine.db")
    ));
    assert_eq!(
        choose(&[&Given::default()], Fallback::Dir("/run/secrets".into())),
        Ok(SourceSpec::Dir {
            path: "/run/secrets".into(),
            wait: None
        })
    );
}

#[test]
fn credentials_follow_the_same_order_and_two_at_one_level_are_refused() {
    let env = |t: bool, f: bool, i: bool| Given {
        token: if t { token("SECRETFS_TOKEN") } else { None },
        token_file: if f {
            named("/env.tok".into(), "SECRETFS_TOKEN_FILE")
        } else {
            None
        },
        identity_file: if i {
            named("/sa.jwt".into(), "SECRETFS_IDENTITY_TOKEN_FILE")
        } else {
            None
        },
        ..Default::default()
    };
    let flag_file = Given {
        token_file: named("/flag.tok".into(), "--token-file"),
        ..Default::default()
    };
    // The flag wins over anything the environment says, ambiguous or not.
    assert_eq!(
        credential(&[&flag_file, &env(true, true, true)]),
        Ok(CredentialSpec::TokenFile("/flag.tok".into()))
    );
    assert_eq!(
        credential(&[&Given::default(), &env(false, false, true)]),
        Ok(CredentialSpec::Identity {
            file: "/sa.jwt".into(),
            binding: None
        })
    );
    assert_eq!(
        credential(&[&Given::default(), &env(true, true, false)]),
        Err(
            "SECRETFS_TOKEN and SECRETFS_TOKEN_FILE are two credentials for the server; give \
             one (a workload token, a token file or an identity token file)"
                .into()
        )
    );
    assert!(
        credential(&[&env(false, true, true)])
            .unwrap_err()
            .starts_with("SECRETFS_TOKEN_FILE and SECRETFS_IDENTITY_TOKEN_FILE are two")
    );
    assert!(credential(&[&Given::default()]).is_err());
}

#[test]
fn a_credential_given_outright_for_a_source_that_takes_none_is_named() {
    let flags = Given {
        identity_file: named("/sa.jwt".into(), "--identity-token-file"),
        ..Default::default()
    };
    let err = choose(&[&flags], Fallback::Store).unwrap_err();
    assert!(
        err[0].starts_with("--identity-token-file is a credential for a server"),
        "{err:?}"
    );
    // From the environment it is ambient, and ignored.
    let env = Given {
        token: token("SECRETFS_TOKEN"),
        ..Default::default()
    };
    assert!(choose(&[&Given::default(), &env], Fallback::Store).is_ok());
}

#[test]
fn a_login_is_told_what_in_the_environment_comes_before_it() {
    let url = "https://secrets.example.com";
    assert!(shadowing_login(&Given::default(), url).is_empty());
    let same_server = Given {
        url: named(url.into(), "SECRETFS_URL"),
        ..Default::default()
    };
    assert!(shadowing_login(&same_server, url).is_empty());
    let env = Given {
        store: named("/root/dev-store.db".into(), "SECRETFS_STORE"),
        url: named("https://other.example.com".into(), "SECRETFS_URL"),
        token_file: named("/t".into(), "SECRETFS_TOKEN_FILE"),
        ..Default::default()
    };
    let said = shadowing_login(&env, url);
    assert_eq!(said.len(), 3, "{said:?}");
    assert!(
        said[0]
            .starts_with("SECRETFS_STORE is set: commands use the local store /root/dev-store.db")
    );
    assert!(said[1].contains("the server https://other.example.com"));
    assert!(said[2].starts_with("SECRETFS_TOKEN_FILE is set"));
}
