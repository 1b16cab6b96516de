//! Workload identity: what a platform token is given, what it is refused and told, and who
//! may bind what.

#[allow(unused_imports)]
use super::*;
#[test]
fn a_platform_token_reads_exactly_its_bindings_secrets_and_every_refusal_says_why() {
    let Some(w) = world(
        "a_platform_token_reads_exactly_its_bindings_secrets_and_every_refusal_says_why",
        &[],
    ) else {
        return;
    };
    // A binding names secrets its user may use: bob's private key is refused, with the name.
    let out = add(
        &w.s,
        &w.server,
        "bad",
        &w.issuer.url,
        K8S_AUD,
        "*",
        &["--user", "alice", "-s", "BOBS_KEY", "--claim", "nodots"],
    );
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("\"BOBS_KEY\""), "{}", out.stderr);
    assert!(
        out.stderr.contains("no '='"),
        "every problem at once: {}",
        out.stderr
    );
    w.bind_lepton("lepton", &["--ttl", "10m"]);
    let listed = identity(&w.s, &w.server, &["list", "-o", "json"]);
    let listed: Value = serde_json::from_str(&listed.stdout).unwrap();
    assert_eq!(listed[0]["name"], "lepton");
    assert_eq!(listed[0]["secrets"], json!(["HF_TOKEN", "SHARED"]));
    assert_eq!(listed[0]["keys"], "discovery");

    // Accepted: a Lepton pod's token reads its binding's two secrets, nothing else.
    let token = w
        .issuer
        .mint(json!({"claims": k8s("ws-abc", "default", "job-0"), "ttl": 600}));
    let (status, x) = exchange(&w.rt, &w.api, &token, None);
    assert_eq!(status, 200, "{x}");
    assert_eq!(x["token_type"], "Bearer");
    assert_eq!(
        x["issued_token_type"],
        "urn:ietf:params:oauth:token-type:access_token"
    );
    assert_eq!(x["binding"], "lepton");
    let life = x["expires_in"].as_u64().unwrap();
    assert!((590..=600).contains(&life), "the binding's 10m ttl: {life}");
    let access = x["access_token"].as_str().unwrap();
    assert_eq!(reads(&w.rt, &w.api, access), ["HF_TOKEN", "SHARED"]);
    let (status, _) = w.rt.block_on(w.api.workload(access, "?names=NOT_BOUND"));
    assert_ne!(status, 200, "a secret outside the binding");
    // The workload token expires with the presented token when that comes first.
    let short = w
        .issuer
        .mint(json!({"claims": k8s("ws-abc", "default", "job-1"), "ttl": 120}));
    let (_, x) = exchange(&w.rt, &w.api, &short, None);
    assert!(x["expires_in"].as_u64().unwrap() <= 120, "{x}");

    // Refused, each for its own reason.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut claims_aud = k8s("ws-abc", "default", "p");
    claims_aud["aud"] = json!(["https://other.example"]);
    let mut claims_nbf = k8s("ws-abc", "default", "p");
    claims_nbf["nbf"] = json!(now + 600);
    let mut claims_nosub = k8s("ws-abc", "default", "p");
    claims_nosub["sub"] = Value::Null;
    let other = Issuer::start(&w.s, &tools_python("", "jwt").unwrap(), "");
    // A key the issuer signs with but does not publish (it becomes the current one: the other
    // cases name k1).
    w.issuer.post(
        "/rotate",
        json!({"alg": "RS256", "kid": "hidden", "publish": false}),
    );
    let cases: Vec<(&str, String, &str)> = vec![
        ("wrong audience", w.issuer.mint(json!({"claims": claims_aud, "kid": "k1"})), "audience is not one a binding accepts"),
        ("wrong issuer", other.mint(json!({"claims": k8s("ws-abc", "default", "p")})), UNADMITTED),
        ("expired", w.issuer.mint(json!({"claims": k8s("ws-abc", "default", "p"), "iat_offset": -700, "ttl": 600, "kid": "k1"})), "expired"),
        ("issued in the future", w.issuer.mint(json!({"claims": k8s("ws-abc", "default", "p"), "iat_offset": 300, "kid": "k1"})), "issued in the future"),
        ("expired within the clock skew", w.issuer.mint(json!({"claims": k8s("ws-abc", "default", "p"), "iat_offset": -610, "ttl": 600, "kid": "k1"})), "expired"),
        ("not yet valid", w.issuer.mint(json!({"claims": claims_nbf, "kid": "k1"})), "not valid yet"),
        ("alg none", w.issuer.mint(json!({"claims": k8s("ws-abc", "default", "p"), "variant": "none", "kid": "k1"})), "unsigned"),
        ("HS256 keyed with the public key", w.issuer.mint(json!({"claims": k8s("ws-abc", "default", "p"), "variant": "hs256-public", "kid": "k1"})), "symmetric algorithm \"HS256\""),
        ("header alg other than the key's", w.issuer.mint(json!({"claims": k8s("ws-abc", "default", "p"), "variant": "wrong-alg-header", "kid": "k1"})), UNADMITTED),
        ("unknown key", w.issuer.mint(json!({"claims": k8s("ws-abc", "default", "p"), "kid": "hidden"})), UNADMITTED),
        ("tampered", w.issuer.mint(json!({"claims": k8s("ws-abc", "default", "p"), "variant": "tampered", "kid": "k1"})), UNADMITTED),
        ("subject", w.issuer.mint(json!({"claims": k8s("ws-abc", "builder", "p"), "kid": "k1"})), "does not match a binding's subject pattern"),
        ("claim", w.issuer.mint(json!({"claims": k8s("ws-xyz", "default", "p"), "kid": "k1"})), "claim kubernetes.io.namespace is \"ws-xyz\""),
        ("no sub", w.issuer.mint(json!({"claims": claims_nosub, "kid": "k1"})), "no \"sub\" claim"),
        ("too long a life", w.issuer.mint(json!({"claims": k8s("ws-abc", "default", "p"), "ttl": 3 * 86400, "kid": "k1"})), "longer than a binding accepts"),
    ];
    for (what, token, says) in &cases {
        let (status, v) = exchange(&w.rt, &w.api, token, None);
        assert_eq!(status, 400, "{what}: {v}");
        assert_eq!(v["error"], "invalid_grant", "{what}: {v}");
        let message = v["error_description"].as_str().unwrap();
        assert!(message.contains(says), "{what}: {message}");
        // Before the signature verifies (an issuer, a key, a signature), one answer, word for
        // word; after it, what the token failed.
        if *says == UNADMITTED {
            assert_eq!(message, UNADMITTED, "{what}");
        }
        assert!(
            !message.contains(token.as_str()),
            "{what}: the token in the answer"
        );
        for expected in [
            "system:serviceaccount:ws-*:default",
            "=ws-abc",
            "lepton",
            K8S_AUD,
        ] {
            assert!(
                !message.contains(expected),
                "{what}: the binding's {expected} told: {message}"
            );
        }
    }
    // A malformed request is refused before any token is looked at, with every problem.
    let (status, text, _) = w.rt.block_on(w.api.raw(
        "POST",
        "/api/v1/identity/exchange",
        None,
        Some((
            "application/x-www-form-urlencoded",
            b"grant_type=password".to_vec(),
        )),
    ));
    assert_eq!(status, 400, "{text}");
    assert!(
        text.contains("grant_type must be") && text.contains("subject_token is missing"),
        "{text}"
    );

    // Every exchange is audited, accepted or refused, with binding, issuer and sub.
    let audit = w.audit();
    let accepted: Vec<&Value> = audit
        .iter()
        .filter(|a| a["action"] == "identity-exchange")
        .collect();
    let refused: Vec<&Value> = audit
        .iter()
        .filter(|a| a["action"] == "identity-exchange-refused")
        .collect();
    assert_eq!(accepted.len(), 2, "{accepted:?}");
    // One record per kind of refusal: the two expired tokens are refused alike (issuer, sub,
    // reason), so the second is counted into the first's interval, written when it ends.
    assert_eq!(refused.len(), cases.len() - 1, "{refused:?}");
    let details: std::collections::BTreeSet<&str> = refused
        .iter()
        .map(|r| r["detail"].as_str().unwrap())
        .collect();
    assert_eq!(details.len(), refused.len(), "{refused:?}");
    assert!(
        accepted[0]["target"] == "lepton"
            && accepted[0]["detail"]
                .as_str()
                .unwrap()
                .contains("sub \"system:serviceaccount:ws-abc:default\""),
        "{:?}",
        accepted[0]
    );
    // The audit keeps what the answer does not say.
    for reason in [
        "no identity binding trusts the issuer",
        "publishes no key \"hidden\"",
        "signature does not verify",
        "is not its key's",
    ] {
        assert!(
            refused
                .iter()
                .any(|a| a["detail"].as_str().unwrap().contains(reason)),
            "{reason}: {refused:?}"
        );
    }
    let subject_refusal = refused
        .iter()
        .find(|a| a["detail"].as_str().unwrap().contains("builder"))
        .expect("the subject refusal");
    assert_eq!(subject_refusal["target"], "lepton", "{subject_refusal}");
    assert!(
        subject_refusal["detail"]
            .as_str()
            .unwrap()
            .contains(&w.issuer.url)
    );
    assert!(
        audit
            .iter()
            .any(|a| a["action"] == "identity-add" && a["target"] == "lepton")
    );
    // No presented or minted token reaches the log or the audit.
    let log = w.server.log();
    let audit_text = serde_json::to_string(&audit).unwrap();
    for (what, token, _) in &cases {
        let signature = token.rsplit('.').next().unwrap();
        if signature.len() > 8 {
            assert!(
                !log.contains(signature),
                "{what}: the token in the server's log"
            );
            assert!(
                !audit_text.contains(signature),
                "{what}: the token in the audit"
            );
        }
    }
    assert!(!log.contains(access) && !audit_text.contains(access));
}

/// An attacker without a trusted issuer's key learns nothing from refusals: a forged token
/// carrying a trusted `iss`, with a real binding's name as `scope`, a guessed one, or none, and a
/// token of an issuer nobody trusts all get the same status and the same body, byte for byte.
/// A genuinely signed token that a binding refuses gets that same answer whenever it names a
/// scope (so binding names cannot be probed with a token anyone can mint at some issuers). And
/// the refusals come slower and slower from one address, the same answer later, while an
/// admitted exchange from that address is never held up.
#[test]
fn a_forged_token_learns_nothing_of_bindings_or_issuers() {
    let Some(w) = world("a_forged_token_learns_nothing_of_bindings_or_issuers", &[]) else {
        return;
    };
    w.bind_lepton("lepton", &[]);
    let attacker = Issuer::start(&w.s, &tools_python("", "jwt").unwrap(), "/attacker");
    let mut forged_claims = k8s("ws-abc", "default", "job-0");
    forged_claims["iss"] = json!(w.issuer.url);
    let forged = attacker.mint(json!({"claims": forged_claims}));
    let untrusted = attacker.mint(json!({"claims": k8s("ws-abc", "default", "job-0")}));
    let mut wrong_aud = k8s("ws-abc", "default", "job-0");
    wrong_aud["aud"] = json!(["https://other.example"]);
    let genuine_refused = w.issuer.mint(json!({"claims": wrong_aud}));
    let raw = |token: &str, scope: Option<&str>| {
        let mut form = format!(
            "grant_type={}&subject_token_type={}&subject_token={token}",
            enc(GRANT),
            enc(JWT)
        );
        if let Some(s) = scope {
            form.push_str(&format!("&scope={}", enc(s)));
        }
        let (status, text, _) = w.rt.block_on(w.api.raw(
            "POST",
            "/api/v1/identity/exchange",
            None,
            Some(("application/x-www-form-urlencoded", form.into_bytes())),
        ));
        (status, text)
    };
    let probes = [
        ("forged, real scope", raw(&forged, Some("lepton"))),
        ("forged, guessed scope", raw(&forged, Some("lepton-prod"))),
        ("forged, no scope", raw(&forged, None)),
        (
            "untrusted issuer, real scope",
            raw(&untrusted, Some("lepton")),
        ),
        ("untrusted issuer, no scope", raw(&untrusted, None)),
        (
            "genuine but refused, real scope",
            raw(&genuine_refused, Some("lepton")),
        ),
        (
            "genuine but refused, guessed scope",
            raw(&genuine_refused, Some("lepton-prod")),
        ),
    ];
    let (first_status, first_body) = &probes[0].1;
    assert_eq!(*first_status, 400, "{first_body}");
    assert!(first_body.contains(UNADMITTED), "{first_body}");
    for (what, (status, body)) in &probes {
        assert_eq!((status, body), (first_status, first_body), "{what}");
    }
    // Without a scope, a genuinely signed token is told what it failed.
    let (status, told) = raw(&genuine_refused, None);
    assert_eq!(status, 400);
    assert!(told.contains("audience"), "{told}");
    assert_ne!(&told, first_body);

    // Past the burst, each refusal from this address comes later than the last, the same answer;
    // an admitted exchange in between is not held up.
    let mut delays = Vec::new();
    for _ in 0..6 {
        let started = Instant::now();
        let (status, body) = raw(&forged, Some("lepton"));
        assert_eq!((status, &body), (400, first_body));
        delays.push(started.elapsed());
    }
    assert!(
        delays[5] >= Duration::from_millis(300) && delays[5] > delays[0],
        "{delays:?}"
    );
    let good = w
        .issuer
        .mint(json!({"claims": k8s("ws-abc", "default", "job-1")}));
    let started = Instant::now();
    let (status, v) = exchange(&w.rt, &w.api, &good, None);
    assert_eq!(status, 200, "{v}");
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "an admitted exchange was held up: {:?}",
        started.elapsed()
    );
}

#[test]
fn github_tokens_match_on_their_claims_and_bindings_can_be_named() {
    if let Some(w) = world(
        "github_tokens_match_on_their_claims_and_bindings_can_be_named",
        &[],
    ) {
        github_bindings(&w);
    }
}

#[test]
fn bindings_on_postgres() {
    if let Some(w) = world_on_postgres("bindings_on_postgres") {
        github_bindings(&w);
    }
}

/// With `--no-admin-impersonation` an admin binds their own secrets only.
#[test]
fn without_impersonation_an_admin_binds_only_their_own_secrets() {
    let Some(w) = world(
        "without_impersonation_an_admin_binds_only_their_own_secrets",
        &["--no-admin-impersonation"],
    ) else {
        return;
    };
    let out = add(
        &w.s,
        &w.server,
        "as-alice",
        &w.issuer.url,
        K8S_AUD,
        "*",
        &["--user", "alice", "-s", "HF_TOKEN"],
    );
    assert_ne!(out.code, 0);
    assert!(
        out.stderr.contains("--no-admin-impersonation"),
        "{}",
        out.stderr
    );
    // A user who is no admin may not bind at all, not even their own secrets.
    let mut cmd = w.s.cmd(&[
        "identity",
        "--url",
        &w.server.url,
        "add",
        "mine",
        "--issuer",
        &w.issuer.url,
        "--audience",
        K8S_AUD,
        "--subject",
        "*",
        "--user",
        "alice",
        "-s",
        "HF_TOKEN",
    ]);
    cmd.env("SECRETFS_TOKEN", &w.alice);
    let out = crate::support::run_with(cmd, b"");
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("admin"), "{}", out.stderr);
}

/// A binding acts with its creator's authority as it stands at each exchange: the server
/// restarted with `--no-admin-impersonation`, an admin's binding of another user's secrets stops.
#[test]
fn a_binding_acts_with_its_creators_authority_as_it_stands() {
    let Some(mut w) = world(
        "a_binding_acts_with_its_creators_authority_as_it_stands",
        &[],
    ) else {
        return;
    };
    w.bind_lepton("lepton", &[]);
    let token = w
        .issuer
        .mint(json!({"claims": k8s("ws-abc", "default", "a")}));
    assert_eq!(exchange(&w.rt, &w.api, &token, None).0, 200);
    w.server.kill(nix::sys::signal::Signal::SIGTERM);
    w.server.restart_with(&w.s, &["--no-admin-impersonation"]);
    let (status, v) = exchange(&w.rt, &w.api, &token, None);
    assert_eq!(status, 400, "{v}");
    assert!(
        v["error_description"]
            .as_str()
            .unwrap()
            .contains("cannot be used now"),
        "{v}"
    );
    let refusal = w
        .audit()
        .into_iter()
        .rev()
        .find(|a| a["action"] == "identity-exchange-refused")
        .unwrap();
    assert!(
        refusal["detail"]
            .as_str()
            .unwrap()
            .contains("--no-admin-impersonation"),
        "{refusal}"
    );
}

/// Keys from a file; two bindings of one issuer told apart by claims and named by scope; a
/// binding removed with the tokens it minted.
fn github_bindings(w: &World) {
    let python = tools_python("", "jwt").unwrap();
    let gh = Issuer::start(&w.s, &python, "/gh");
    gh.post(
        "/rotate",
        json!({"alg": "ES256", "kid": "ec1", "keep_old": false}),
    );
    let jwks = w.rt.block_on(gh.api.call("GET", "/jwks", "", None)).1;
    let jwks_file = w.s.path().join("gh-jwks.json");
    std::fs::write(&jwks_file, jwks.to_string()).unwrap();
    // Keys from a file: an issuer the server need not reach.
    for (name, r) in [("main", "refs/heads/main"), ("any-branch", "refs/heads/*")] {
        let out = add(
            &w.s,
            &w.server,
            name,
            &gh.url,
            "secretfs",
            &format!("repo:org/app:ref:{r}"),
            &[
                "--claim",
                "repository=org/app",
                "--claim",
                &format!("ref={r}"),
                "--user",
                "alice",
                "-s",
                "OPENAI_API_KEY",
                "--jwks-file",
                jwks_file.to_str().unwrap(),
            ],
        );
        assert_eq!(out.code, 0, "{}", out.stderr);
    }
    let main = gh.mint(json!({"claims": github("org/app", "refs/heads/main")}));
    let (status, v) = exchange(&w.rt, &w.api, &main, None);
    assert_eq!(status, 400, "two bindings admit it: {v}");
    assert!(
        v["error_description"]
            .as_str()
            .unwrap()
            .contains("scope=NAME"),
        "{v}"
    );
    let (status, v) = exchange(&w.rt, &w.api, &main, Some("main"));
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["binding"], "main");
    assert_eq!(
        reads(&w.rt, &w.api, v["access_token"].as_str().unwrap()),
        ["OPENAI_API_KEY"]
    );
    let branch = gh.mint(json!({"claims": github("org/app", "refs/heads/feature")}));
    let (status, v) = exchange(&w.rt, &w.api, &branch, None);
    assert_eq!(status, 200, "only any-branch admits a feature branch: {v}");
    assert_eq!(v["binding"], "any-branch");
    let fork = gh.mint(json!({"claims": github("evil/app", "refs/heads/main")}));
    let (status, v) = exchange(&w.rt, &w.api, &fork, None);
    assert_eq!(status, 400, "{v}");
    let why = v["error_description"].as_str().unwrap();
    assert!(
        why.contains("does not match a binding's subject pattern"),
        "{why}"
    );
    assert!(
        !why.contains("repo:org/app") && !why.contains("any-branch"),
        "{why}"
    );
    let refusal = w
        .audit()
        .into_iter()
        .rev()
        .find(|a| a["action"] == "identity-exchange-refused")
        .unwrap();
    let detail = refusal["detail"].as_str().unwrap();
    assert!(
        detail.contains("binding main:") && detail.contains("binding any-branch:"),
        "{detail}"
    );
    assert!(
        detail.contains("repo:org/app:ref:refs/heads/*"),
        "the audit has the whole reason: {detail}"
    );

    // Removing a binding revokes what its exchanges minted, at once.
    let (_, v) = exchange(&w.rt, &w.api, &branch, None);
    let access = v["access_token"].as_str().unwrap().to_owned();
    assert_eq!(reads(&w.rt, &w.api, &access), ["OPENAI_API_KEY"]);
    let out = identity(&w.s, &w.server, &["remove", "any-branch"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let (status, _) = w.rt.block_on(w.api.workload(&access, ""));
    assert_eq!(status, 401, "the removed binding's token still reads");
    let (status, v) = exchange(&w.rt, &w.api, &branch, None);
    assert_eq!(status, 400, "{v}");
    let out = identity(&w.s, &w.server, &["remove", "any-branch"]);
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("not found"), "{}", out.stderr);
}
