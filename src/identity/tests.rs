use super::*;
use base64::Engine;
use proptest::prelude::*;
use serde_json::json;

fn part(v: &Value) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
}

fn token(header: Value, claims: Value, sig: &str) -> String {
    format!("{}.{}.{sig}", part(&header), part(&claims))
}

#[test]
fn globs_match_only_what_they_read_as() {
    let g = Glob::parse("system:serviceaccount:ws-*:default").unwrap();
    assert!(g.matches("system:serviceaccount:ws-abc:default"));
    assert!(g.matches("system:serviceaccount:ws-:default"));
    assert!(!g.matches("system:serviceaccount:other:default"));
    assert!(!g.matches("system:serviceaccount:ws-abc:default2"));
    let g = Glob::parse("repo:org/app:ref:refs/heads/[main]").unwrap();
    assert!(g.matches("repo:org/app:ref:refs/heads/[main]"));
    assert!(!g.matches("repo:org/app:ref:refs/heads/m"));
    assert!(Glob::parse("a?c").unwrap().matches("abc"));
    assert!(!Glob::parse("a?c").unwrap().matches("ac"));
    assert!(Glob::parse("*").unwrap().matches(""));
    assert!(Glob::parse("").is_err());
    assert!(Glob::parse("a\nb").is_err());
}

proptest! {
    #[test]
    fn a_glob_without_wildcards_is_equality(a in "[a-z:/.-]{0,12}", b in "[a-z:/.-]{0,12}") {
        prop_assume!(!a.is_empty());
        prop_assert_eq!(Glob::parse(&a).unwrap().matches(&b), a == b);
    }

    #[test]
    fn a_star_between_a_prefix_and_a_suffix(p in "[a-z]{0,5}", mid in "[a-z*?]{0,5}", s in "[a-z]{0,5}") {
        let g = Glob::parse(&format!("{p}*{s}")).unwrap();
        let text = format!("{p}{mid}{s}");
        prop_assert!(g.matches(&text));
    }
}

#[test]
fn claim_paths_reach_nested_claims_and_dotted_keys() {
    let claims = json!({
        "sub": "system:serviceaccount:ws-1:default",
        "kubernetes.io": {"namespace": "ws-1", "pod": {"name": "job-0", "uid": "u"}},
        "groups": ["a", "b"],
        "n": 3,
        "ok": true,
        "repository": "org/app",
    });
    let at = |p: &str| claim_values(&claims, p).unwrap_or_else(|| panic!("{p} is ambiguous"));
    assert_eq!(at("kubernetes.io.namespace"), ["ws-1"]);
    assert_eq!(at("kubernetes.io.pod.name"), ["job-0"]);
    assert_eq!(at("groups"), ["a", "b"]);
    assert_eq!(at("n"), ["3"]);
    assert_eq!(at("ok"), ["true"]);
    assert_eq!(at("repository"), ["org/app"]);
    assert!(at("kubernetes.io").is_empty(), "an object is no value");
    assert!(claim_values(&claims, "kubernetes.io.pod.name.x").is_none());
    assert!(claim_values(&claims, "missing").is_none());
}

#[test]
fn a_claim_path_read_two_ways_matches_nothing() {
    // A top-level "kubernetes.io.namespace" beside the nested one: neither stands in for the
    // other, whichever an issuer lets a user shape.
    let claims = json!({
        "kubernetes.io": {"namespace": "ws-1"},
        "kubernetes.io.namespace": "ws-evil",
    });
    assert_eq!(claim_values(&claims, "kubernetes.io.namespace"), None);
    let rules = Rules {
        audience: "a".into(),
        subject: Glob::parse("*").unwrap(),
        claims: vec![ClaimRule::parse("kubernetes.io.namespace=ws-*").unwrap()],
        ttl_secs: 60,
        max_lifetime_secs: 60,
        keys: KeySource::Discovery,
        grants: Vec::new(),
    };
    let v = Verified {
        claims,
        sub: "s".into(),
        exp: 0,
    };
    let e = rules.admits(&v).unwrap_err();
    assert!(e.to_string().contains("ambiguous"), "{e}");
}

#[test]
fn kubernetes_extended_tokens_end_at_their_warnafter() {
    let claims = json!({"kubernetes.io": {"warnafter": 1_000}});
    assert_eq!(effective_exp(&claims, 999_999), 1_000);
    assert_eq!(effective_exp(&claims, 500), 500);
    assert_eq!(effective_exp(&json!({}), 500), 500);
}

#[test]
fn what_the_caller_is_told_leaves_out_what_a_binding_expects() {
    let r = Refusal::SubjectMismatch("\"repo:x\"".into(), "repo:secret-org/*".into());
    assert!(r.to_string().contains("secret-org"));
    assert!(!r.public().contains("secret-org"), "{}", r.public());
    let r = Refusal::WrongAudience("internal-audience".into());
    assert!(!r.public().contains("internal-audience"));
    let r = Refusal::KeysUnavailable("cannot reach https://10.0.0.5/jwks".into());
    assert!(!r.public().contains("10.0.0.5"));
    let r = Refusal::ClaimMismatch(
        "ref".into(),
        "\"refs/heads/x\"".into(),
        "refs/tags/*".into(),
    );
    assert!(!r.public().contains("refs/tags"));
}

#[test]
fn claim_rules_parse_with_their_problems_named() {
    let r = ClaimRule::parse("kubernetes.io.namespace=ws-*").unwrap();
    assert_eq!(r.path, "kubernetes.io.namespace");
    assert!(r.pattern.matches("ws-9"));
    assert!(
        ClaimRule::parse("repository")
            .unwrap_err()
            .contains("no '='")
    );
    assert!(
        ClaimRule::parse("a..b=x")
            .unwrap_err()
            .contains("single dots")
    );
    assert!(ClaimRule::parse("a=").unwrap_err().contains("empty"));
}

#[test]
fn unsigned_and_symmetric_tokens_are_refused_before_any_key() {
    let claims = json!({"iss": "https://issuer", "sub": "s"});
    let none = token(json!({"alg": "none"}), claims.clone(), "");
    assert_eq!(peek(&none).unwrap_err(), Refusal::Unsigned);
    let none = token(json!({"alg": "NONE"}), claims.clone(), "x");
    assert_eq!(peek(&none).unwrap_err(), Refusal::Unsigned);
    let hs = token(json!({"alg": "HS256", "kid": "k"}), claims.clone(), "c2ln");
    assert!(matches!(peek(&hs).unwrap_err(), Refusal::Symmetric(_)));
    let empty_sig = token(json!({"alg": "RS256"}), claims.clone(), "");
    assert_eq!(peek(&empty_sig).unwrap_err(), Refusal::Unsigned);
    let odd = token(json!({"alg": "ES512"}), claims.clone(), "c2ln");
    assert!(matches!(
        peek(&odd).unwrap_err(),
        Refusal::UnsupportedAlgorithm(_)
    ));
    let no_iss = token(json!({"alg": "RS256"}), json!({"sub": "s"}), "c2ln");
    assert_eq!(peek(&no_iss).unwrap_err(), Refusal::NoIssuer);
    assert!(matches!(peek("a.b").unwrap_err(), Refusal::Malformed(_)));
    assert_eq!(
        peek(&"a".repeat(MAX_TOKEN_BYTES + 1)).unwrap_err(),
        Refusal::TooLarge
    );
    let ok = token(json!({"alg": "RS256", "kid": "k1"}), claims, "c2ln");
    let p = peek(&ok).unwrap();
    assert_eq!(
        (p.alg, p.kid.as_deref(), p.iss.as_str()),
        (Algorithm::RS256, Some("k1"), "https://issuer")
    );
}

#[test]
fn refusals_never_carry_the_token() {
    let canary = "CANARYTOKENPART";
    let t = token(json!({"alg": "HS256"}), json!({"iss": canary}), canary);
    let e = peek(&t).unwrap_err().to_string();
    assert!(!e.contains(canary), "{e}");
    let t = format!("{canary}.{canary}");
    assert!(!peek(&t).unwrap_err().to_string().contains(canary));
}

#[test]
fn key_sets_take_the_algorithm_from_the_key_and_skip_what_cannot_sign() {
    let doc = json!({"keys": [
        {"kty": "RSA", "kid": "r", "n": "sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw", "e": "AQAB"},
        {"kty": "RSA", "kid": "enc", "use": "enc", "n": "AQAB", "e": "AQAB"},
        {"kty": "oct", "kid": "sym", "k": "c2VjcmV0"},
        {"kty": "RSA", "kid": "oaep", "alg": "RSA-OAEP", "n": "AQAB", "e": "AQAB"},
        {"kty": "XYZ", "kid": "odd"},
    ]});
    let (set, skipped) = KeySet::parse(&serde_json::to_vec(&doc).unwrap()).unwrap();
    assert_eq!(set.len(), 1, "{skipped:?}");
    assert_eq!(skipped.len(), 4, "{skipped:?}");
    let k = set.find(Some("r"), Algorithm::RS256).unwrap();
    assert_eq!(
        k.alg,
        Algorithm::RS256,
        "an RSA key without alg verifies RS256 only"
    );
    assert!(
        set.find(None, Algorithm::RS256).is_some(),
        "one key: a token without kid may use it"
    );
    assert!(set.find(Some("enc"), Algorithm::RS256).is_none());
    assert_eq!(
        set.find(Some("r"), Algorithm::PS256).unwrap().alg,
        Algorithm::RS256,
        "a kid's only key is found for another algorithm, to be refused by name"
    );
    assert!(KeySet::parse(b"[]").is_err());
}

#[test]
fn only_https_or_loopback_http_is_fetched() {
    assert!(fetchable("https://oidc.example.com/x").is_ok());
    assert!(fetchable("http://127.0.0.1:8080/jwks").is_ok());
    assert!(fetchable("http://localhost/jwks").is_ok());
    assert!(fetchable("http://[::1]:9/jwks").is_ok());
    assert!(fetchable("http://example.com/jwks").is_err());
    assert!(fetchable("http://127.0.0.1.example.com/jwks").is_err());
    assert!(fetchable("file:///etc/passwd").is_err());
    assert!(
        names_this_host("https://127.0.0.1:8443/jwks") && names_this_host("https://localhost/x")
    );
    assert!(!names_this_host("https://localhost.example.com/x"));
}

/// Every spelling of this host a URL can hold, as the HTTP client reads it: the forms an
/// attacker's discovery document used to reach a local listener.
#[test]
fn this_host_is_named_in_every_spelling() {
    for url in [
        "https://127.0.0.1/k",
        "https://127.1/k",
        "https://127.0.0.3:9/k",
        "https://0.0.0.0/k",
        "https://0/k",
        "https://2130706433/k",
        "https://0x7f.1/k",
        "https://0177.0.0.1/k",
        "https://[::1]/k",
        "https://[::]/k",
        "https://[::ffff:127.0.0.1]/k",
        "https://[::ffff:7f00:1]/k",
        "https://[::127.0.0.1]/k",
        "https://169.254.169.254/latest",
        "https://[fe80::1]/k",
        "https://LOCALHOST./k",
        "https://api.localhost/k",
    ] {
        assert!(names_this_host(url), "{url}");
    }
    for url in [
        "https://128.0.0.1/k",
        "https://10.0.0.1/k",
        "https://[2001:db8::1]/k",
        "https://oidc.example.com/k",
        "https://localhost.example.com/k",
        "not a url",
    ] {
        assert!(!names_this_host(url), "{url}");
    }
}
