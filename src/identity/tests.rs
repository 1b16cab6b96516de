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
    assert_eq!(claim_values(&claims, "kubernetes.io.namespace"), ["ws-1"]);
    assert_eq!(claim_values(&claims, "kubernetes.io.pod.name"), ["job-0"]);
    assert_eq!(claim_values(&claims, "groups"), ["a", "b"]);
    assert_eq!(claim_values(&claims, "n"), ["3"]);
    assert_eq!(claim_values(&claims, "ok"), ["true"]);
    assert_eq!(claim_values(&claims, "repository"), ["org/app"]);
    assert!(
        claim_values(&claims, "kubernetes.io").is_empty(),
        "an object is no value"
    );
    assert!(claim_values(&claims, "kubernetes.io.pod.name.x").is_empty());
    assert!(claim_values(&claims, "missing").is_empty());
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
    let k = set.find(Some("r")).unwrap();
    assert_eq!(
        k.alg,
        Algorithm::RS256,
        "an RSA key without alg verifies RS256 only"
    );
    assert!(
        set.find(None).is_some(),
        "one key: a token without kid may use it"
    );
    assert!(set.find(Some("enc")).is_none());
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
}
