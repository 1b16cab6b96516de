use super::*;

#[test]
fn header_templates() {
    let h = HeaderTemplate::parse("Authorization: Bearer {}").unwrap();
    assert_eq!(h.name, "authorization");
    assert_eq!(h.value(b"k1").as_slice(), b"Bearer k1");
    assert_eq!(h.shown(), "authorization: Bearer {}");
    let h = HeaderTemplate::parse("x-api-key: {}").unwrap();
    assert_eq!(h.value(b"k").as_slice(), b"k");
    // base64("x-access-token:t")
    let h = HeaderTemplate::parse("Authorization: Basic {basic:x-access-token}").unwrap();
    assert_eq!(h.value(b"t").as_slice(), b"Basic eC1hY2Nlc3MtdG9rZW46dA==");
    for (bad, says) in [
        ("Authorization Bearer {}", "has no ':'"),
        ("Auth orization: {}", "not an HTTP header name"),
        ("Host: {}", "belongs to the connection"),
        ("x-key: Bearer", "has no {}"),
        ("x-key: {} {}", "names the value twice"),
        ("x-key: {basic:a:b}", "without ':'"),
        ("x-key: {basic:u", "not closed"),
    ] {
        let e = HeaderTemplate::parse(bad).unwrap_err();
        assert!(e.contains(says), "{bad}: {e}");
    }
}

#[test]
fn upstreams_are_https_base_urls() {
    assert_eq!(
        parse_upstream("https://api.example.com/v1")
            .unwrap()
            .as_str(),
        "https://api.example.com/v1"
    );
    for (bad, says) in [
        ("http://api.example.com", "not https"),
        ("api.example.com", "not a URL"),
        ("https://u:p@api.example.com", "user or password"),
        ("https://api.example.com/?a=1", "query or fragment"),
    ] {
        let e = parse_upstream(bad).unwrap_err();
        assert!(e.contains(says), "{bad}: {e}");
    }
    // What may be a credential is never echoed: a user, a password, a query, a header without
    // its ':'.
    for (bad, secret) in [
        ("https://u:sk-live-123@api.example.com", "sk-live-123"),
        ("https://api.example.com/v1?key=sk-live-123", "sk-live-123"),
        ("not a url sk-live-123", "sk-live-123"),
    ] {
        let e = parse_upstream(bad).unwrap_err();
        assert!(!e.contains(secret), "{e}");
    }
    let e = HeaderTemplate::parse("Bearer sk-live-123").unwrap_err();
    assert!(!e.contains("sk-live-123"), "{e}");
}

fn planned(secret: &str) -> BrokerPlan {
    BrokerPlan {
        name: "b".into(),
        secret: SecretName::parse(secret).unwrap(),
        upstream: None,
        header: None,
        url_env: None,
        key_env: None,
        ca_file: None,
        socket_env: None,
    }
}

#[test]
fn kinds_give_their_clients_variables_and_the_plan_overrides_them() {
    let r = complete(&planned("K"), Some(SecretKind::Openai)).unwrap();
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].upstream.as_str(), "https://api.openai.com/v1");
    assert_eq!(r[0].url_env.as_deref(), Some("OPENAI_BASE_URL"));
    assert_eq!(r[0].key_env.as_deref(), Some("OPENAI_API_KEY"));
    let mut p = planned("K");
    p.url_env = Some("MY_URL".into());
    p.upstream = Some(parse_upstream("https://proxy.example/v1").unwrap());
    let r = complete(&p, Some(SecretKind::Huggingface)).unwrap();
    assert_eq!(r[0].url_env.as_deref(), Some("MY_URL"));
    assert_eq!(r[0].key_env.as_deref(), Some("HF_TOKEN"));
    assert_eq!(r[0].upstream.as_str(), "https://proxy.example/v1");
    // GitHub: git's listener, and the API's with its own defaults.
    let r = complete(&planned("G"), Some(SecretKind::Github)).unwrap();
    assert_eq!(r.len(), 2);
    assert_eq!(r[0].git_instead_of.as_deref(), Some("https://github.com/"));
    assert_eq!(r[1].name, "b/api");
    assert_eq!(r[1].upstream.as_str(), "https://api.github.com/");
    // A kind with no known API, or a directory's secret, needs the spec to say everything.
    for kind in [Some(SecretKind::Custom), Some(SecretKind::Ngc), None] {
        let e = complete(&planned("C"), kind).unwrap_err();
        assert!(e.contains("give upstream"), "{e}");
    }
    let mut p = planned("C");
    p.upstream = Some(parse_upstream("https://api.example.com").unwrap());
    p.url_env = Some("EXAMPLE_URL".into());
    let r = complete(&p, Some(SecretKind::Custom)).unwrap();
    assert_eq!(r[0].header.shown(), "authorization: Bearer {}");
}

#[test]
fn variables_add_to_gits_count_and_the_proxy_bypass() {
    let routes = complete(&planned("G"), Some(SecretKind::Github)).unwrap();
    let addrs = vec![
        Address {
            base: "http://127.0.0.1:1/p".into(),
            socket: None,
            placeholder: "ph1".into(),
        },
        Address {
            base: "http://127.0.0.1:2/q".into(),
            socket: None,
            placeholder: "ph2".into(),
        },
    ];
    let existing = |n: &str| match n {
        "GIT_CONFIG_COUNT" => Some("2".to_owned()),
        "no_proxy" => Some("corp.example".to_owned()),
        _ => None,
    };
    let vars = variables(&routes, &addrs, &existing);
    let get = |n: &str| vars.iter().find(|(k, _)| k == n).map(|(_, v)| v.as_str());
    assert_eq!(
        get("GIT_CONFIG_KEY_2"),
        Some("url.http://127.0.0.1:1/p/.insteadOf")
    );
    assert_eq!(get("GIT_CONFIG_VALUE_2"), Some("https://github.com/"));
    assert_eq!(get("GIT_CONFIG_COUNT"), Some("3"));
    assert_eq!(get("GITHUB_API_URL"), Some("http://127.0.0.1:2/q"));
    assert_eq!(get("GH_TOKEN"), Some("ph2"));
    assert_eq!(get("no_proxy"), Some("corp.example,127.0.0.1,localhost"));
    assert_eq!(get("NO_PROXY"), Some("127.0.0.1,localhost"));
    assert_eq!(names_set(&routes), vec!["GITHUB_API_URL", "GH_TOKEN"]);
}

#[test]
fn a_socket_broker_names_its_path_in_a_variable() {
    assert_eq!(default_socket_env("my-api.v2"), "MY_API_V2_SOCKET");
    assert_eq!(default_socket_env("2x"), "_2X_SOCKET");
    let mut p = planned("C");
    p.upstream = Some(parse_upstream("https://api.example.com").unwrap());
    p.url_env = Some("EXAMPLE_URL".into());
    p.socket_env = Some("EXAMPLE_SOCKET".into());
    let routes = complete(&p, None).unwrap();
    let addrs = [Address {
        base: "http://localhost/p".into(),
        socket: Some("/run/b/x.sock".into()),
        placeholder: "ph".into(),
    }];
    let vars = variables(&routes, &addrs, &|_| None);
    assert!(vars.contains(&("EXAMPLE_SOCKET".into(), "/run/b/x.sock".into())));
    assert!(vars.contains(&("EXAMPLE_URL".into(), "http://localhost/p".into())));
    assert_eq!(names_set(&routes), vec!["EXAMPLE_URL", "EXAMPLE_SOCKET"]);
    assert!(render(&routes).contains("EXAMPLE_URL=<broker b: http://localhost/PREFIX>"));
}
