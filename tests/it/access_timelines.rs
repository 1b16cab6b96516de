//! The access model on ordinary admin timelines, against real servers on SQLite and on
//! PostgreSQL: each of the five ways the name-based model broke, as a regression test, and what
//! a mount does when its token is revoked.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::{Daemon, Http, Scratch, Server, eventually, fuse_available};

const SECRETS: &str = "/api/v1/workspaces/default/secrets";

fn create(h: &Http, token: &str, name: &str, value: &str, visibility: &str) {
    let (status, v) = h.call(
        "POST",
        SECRETS,
        token,
        Some(json!({ "name": name, "value": value, "visibility": visibility })),
    );
    assert_eq!(status, 201, "{v}");
}

fn mint(h: &Http, token: &str, secrets: &[&str], extra: Value) -> (u16, Value) {
    let mut body = json!({ "secrets": secrets });
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    h.call(
        "POST",
        "/api/v1/workspaces/default/tokens",
        token,
        Some(body),
    )
}

fn workload_token(h: &Http, token: &str, secrets: &[&str]) -> String {
    let (status, v) = mint(h, token, secrets, json!({}));
    assert_eq!(status, 201, "{v}");
    v["token"].as_str().unwrap().to_owned()
}

/// The values a workload token reads now (name -> value), or the refusal's status.
fn read(h: &Http, token: &str) -> Result<Vec<(String, String)>, u16> {
    let (status, v) = h.call("GET", "/api/v1/workload/secrets", token, None);
    if status != 200 {
        return Err(status);
    }
    Ok(v["secrets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap().to_owned(),
                s["value"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect())
}

fn pair(n: &str, v: &str) -> (String, String) {
    (n.to_owned(), v.to_owned())
}

/// 1. A value cannot be planted into another user's workload: a token is bound to the secret
///    it was minted for, not to its name.
fn a_recreated_name_is_another_secret(h: &Http, admin: &str) {
    let alice = h.user(admin, "alice1");
    let bob = h.user(admin, "bob1");
    create(h, &alice, "deploy_key", "alice-key", "public");
    let token = workload_token(h, &alice, &["deploy_key"]);
    assert_eq!(read(h, &token), Ok(vec![pair("deploy_key", "alice-key")]));
    assert_eq!(
        h.call("DELETE", &format!("{SECRETS}/deploy_key"), &alice, None)
            .0,
        204
    );
    create(h, &bob, "deploy_key", "bob-key", "public");
    assert_eq!(
        read(h, &token),
        Ok(vec![]),
        "bob's value reached alice's workload"
    );
    let (status, _) = h.call(
        "GET",
        "/api/v1/workload/secrets?names=deploy_key",
        &token,
        None,
    );
    assert_eq!(status, 404);
    // The token's own listing still names what it was minted for, by id.
    let (_, tokens) = h.call("GET", "/api/v1/tokens", &alice, None);
    let listed = tokens
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["kind"] == "workload")
        .unwrap()
        .clone();
    assert_eq!(listed["secrets"], json!(["deploy_key"]));
    assert_eq!(listed["secret_ids"].as_array().unwrap().len(), 1);
    assert_eq!(
        h.call("DELETE", &format!("{SECRETS}/deploy_key"), &bob, None)
            .0,
        204
    );
}

/// 2. A deleted user's private secrets go with them: the next user of the name starts with
///    nothing and finds the names free.
fn a_deleted_user_leaves_nothing_private_behind(h: &Http, admin: &str) {
    let eve = h.user(admin, "eve");
    create(h, &eve, "eve_secret", "old-eve", "private");
    create(h, &eve, "eve_shared", "shared", "public");
    let (status, removed) = h.call("DELETE", "/api/v1/users/eve", admin, None);
    assert_eq!(status, 200, "{removed}");
    assert_eq!(removed["deleted"], json!(["eve_secret"]));
    assert_eq!(removed["kept"], json!(["eve_shared"]));
    assert_eq!(removed["tokens"], 1);
    let (status, _) = h.call("GET", &format!("{SECRETS}/eve_secret"), admin, None);
    assert_eq!(status, 404);
    let eve2 = h.user(admin, "eve");
    assert_eq!(
        mint(h, &eve2, &["eve_secret"], json!({})).0,
        404,
        "the new eve can mint a token for the old eve's secret"
    );
    // The name is free, and what she creates is hers.
    create(h, &eve2, "eve_secret", "new-eve", "private");
    let token = workload_token(h, &eve2, &["eve_secret"]);
    assert_eq!(read(h, &token), Ok(vec![pair("eve_secret", "new-eve")]));
    // The kept public secret is shown with its deleted owner's name, and only admins change it.
    let (_, shared) = h.call("GET", &format!("{SECRETS}/eve_shared"), &eve2, None);
    assert_eq!(shared["owner"], "eve");
    assert_eq!(
        h.call("DELETE", &format!("{SECRETS}/eve_shared"), &eve2, None)
            .0,
        403
    );
    assert_eq!(
        h.call("DELETE", &format!("{SECRETS}/eve_shared"), admin, None)
            .0,
        204
    );
    assert_eq!(h.call("DELETE", "/api/v1/users/eve", admin, None).0, 200);
}

/// Holds a long-poll on `token` (since its current revision), runs `end` while it is held, and
/// returns the poll's status and how long after `end` it answered.
fn held_poll(h: &Http, token: &str, end: impl FnOnce()) -> (u16, Value, Duration) {
    let (_, now) = h.call("GET", "/api/v1/workload/secrets", token, None);
    let revision = now["revision"].as_str().unwrap().to_owned();
    std::thread::scope(|scope| {
        let poll = scope.spawn(|| {
            let answer = h.call(
                "GET",
                &format!("/api/v1/workload/secrets?wait=20s&since={revision}"),
                token,
                None,
            );
            (answer, Instant::now())
        });
        std::thread::sleep(Duration::from_millis(300));
        let at = Instant::now();
        end();
        let ((status, body), answered) = poll.join().unwrap();
        (status, body, answered.saturating_duration_since(at))
    })
}

/// 3. A held long-poll ends as soon as its principal does, and returns no value: revoked,
///    expired, its user deleted. A membership removed answers the set without the secret.
fn held_long_polls_end_with_their_principal(h: &Http, admin: &str) {
    let carl = h.user(admin, "carl");
    create(h, &carl, "carl_s", "before", "private");

    let token = workload_token(h, &carl, &["carl_s"]);
    let id = token.split('_').nth(2).unwrap().to_owned();
    let (status, body, after) = held_poll(h, &token, || {
        assert_eq!(
            h.call("DELETE", &format!("/api/v1/tokens/{id}"), &carl, None)
                .0,
            204
        );
        assert_eq!(
            h.call(
                "PATCH",
                &format!("{SECRETS}/carl_s"),
                &carl,
                Some(json!({ "value": "after-revoke" }))
            )
            .0,
            200
        );
    });
    assert_eq!(status, 401, "a revoked token's held poll answered {body}");
    assert!(after < Duration::from_secs(2), "answered after {after:?}");
    assert!(!body.to_string().contains("after-revoke"));

    // A token that expires while its poll is held (2 s, not renewable).
    let (_, w) = mint(
        h,
        &carl,
        &["carl_s"],
        json!({ "ttl": "2s", "max_ttl": "2s" }),
    );
    let short = w["token"].as_str().unwrap().to_owned();
    let started = Instant::now();
    let (status, body, _) = held_poll(h, &short, || {});
    assert_eq!(status, 401, "an expired token's held poll answered {body}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );

    // Its user deleted.
    let token = workload_token(h, &carl, &["carl_s"]);
    let (status, body, after) = held_poll(h, &token, || {
        assert_eq!(h.call("DELETE", "/api/v1/users/carl", admin, None).0, 200);
    });
    assert_eq!(status, 401, "a deleted user's held poll answered {body}");
    assert!(after < Duration::from_secs(2), "answered after {after:?}");

    // A membership removed: the secret is no longer the user's to use.
    let dora = h.user(admin, "dora");
    create(h, &dora, "dora_s", "v", "private");
    let token = workload_token(h, &dora, &["dora_s"]);
    let (status, body, after) = held_poll(h, &token, || {
        assert_eq!(
            h.call(
                "DELETE",
                "/api/v1/workspaces/default/members/dora",
                admin,
                None
            )
            .0,
            204
        );
    });
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["secrets"], json!([]), "{body}");
    assert!(after < Duration::from_secs(2), "answered after {after:?}");
    assert_eq!(h.call("DELETE", "/api/v1/users/dora", admin, None).0, 200);
}

/// 4. A token minted with a token expires no later than it.
fn derived_tokens_do_not_outlive_their_parent(h: &Http, admin: &str) {
    let fay = h.user(admin, "fay");
    let (status, short) = h.call(
        "POST",
        "/api/v1/users/fay/tokens",
        &fay,
        Some(json!({ "ttl": "30s" })),
    );
    assert_eq!(status, 201, "{short}");
    let limit = short["expires_at"].as_str().unwrap().to_owned();
    let short = short["token"].as_str().unwrap().to_owned();
    let (status, child) = h.call("POST", "/api/v1/users/fay/tokens", &short, Some(json!({})));
    assert_eq!(status, 201, "{child}");
    assert_eq!(
        child["expires_at"],
        json!(limit),
        "a 30 s token minted {child}"
    );
    create(h, &short, "fay_s", "v", "private");
    let (_, w) = mint(
        h,
        &short,
        &["fay_s"],
        json!({ "ttl": "1h", "max_ttl": "30d" }),
    );
    assert!(w["expires_at"].as_str().unwrap() <= limit.as_str(), "{w}");
    assert!(
        w["max_expires_at"].as_str().unwrap() <= limit.as_str(),
        "{w}"
    );
    // A sub-second life is refused with the rule, not stored as zero.
    let (status, v) = h.call(
        "POST",
        "/api/v1/users/fay/tokens",
        &fay,
        Some(json!({ "ttl": "500ms" })),
    );
    assert_eq!((status, v["field"].as_str()), (422, Some("ttl")), "{v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("between 1s and 366d"),
        "{v}"
    );
    assert_eq!(h.call("DELETE", "/api/v1/users/fay", admin, None).0, 200);
}

/// 4b. Revoking a token revokes what was minted with it, to the last generation, in the same
///     transaction: a user token minted with a user token, and a workload token minted with
///     that one, stop working with the first; a sibling minted with another token does not. Each
///     revocation is audited.
fn revocation_reaches_what_a_token_minted(h: &Http, admin: &str) {
    let gil = h.user(admin, "gil");
    let mint_user = |with: &str| {
        let (status, v) = h.call("POST", "/api/v1/users/gil/tokens", with, Some(json!({})));
        assert_eq!(status, 201, "{v}");
        (
            v["token"].as_str().unwrap().to_owned(),
            v["id"].as_str().unwrap().to_owned(),
        )
    };
    let (parent, parent_id) = mint_user(&gil);
    let (child, child_id) = mint_user(&parent);
    create(h, &child, "gil_s", "v", "private");
    let grandchild = workload_token(h, &child, &["gil_s"]);
    let sibling = workload_token(h, &gil, &["gil_s"]);
    assert!(read(h, &grandchild).is_ok());
    assert_eq!(
        h.call("DELETE", &format!("/api/v1/tokens/{parent_id}"), &gil, None)
            .0,
        204
    );
    assert_eq!(
        h.call("GET", "/api/v1/whoami", &child, None).0,
        401,
        "the child lives on"
    );
    assert_eq!(read(h, &grandchild), Err(401), "the grandchild lives on");
    assert_eq!(
        read(h, &sibling).map(|v| v.len()),
        Ok(1),
        "a sibling went too"
    );
    let (_, audit) = h.call("GET", "/api/v1/audit?limit=1000", admin, None);
    let revoked: Vec<&str> = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["action"] == "token-revoke")
        .map(|a| a["target"].as_str().unwrap())
        .collect();
    let grandchild_id = grandchild.split('_').nth(2).unwrap();
    let sibling_id = sibling.split('_').nth(2).unwrap();
    for id in [parent_id.as_str(), child_id.as_str(), grandchild_id] {
        assert_eq!(
            revoked.iter().filter(|r| **r == id).count(),
            1,
            "{id} is audited once: {revoked:?}"
        );
    }
    assert!(!revoked.contains(&sibling_id), "{revoked:?}");
    assert_eq!(h.call("DELETE", "/api/v1/users/gil", admin, None).0, 200);
}

/// 5. Every account action is in the audit log, with both names when an admin acts for
///    another user, and no token.
fn account_actions_are_audited(h: &Http, admin: &str) {
    let gus = h.user(admin, "gus");
    let (_, ws) = h.call(
        "POST",
        "/api/v1/workspaces",
        admin,
        Some(json!({ "name": "ops" })),
    );
    assert_eq!(ws["name"], "ops");
    assert_eq!(
        h.call(
            "POST",
            "/api/v1/workspaces/ops/members",
            admin,
            Some(json!({ "user": "gus" }))
        )
        .0,
        204
    );
    assert_eq!(
        h.call("DELETE", "/api/v1/workspaces/ops/members/gus", admin, None)
            .0,
        204
    );
    let (status, for_gus) = h.call("POST", "/api/v1/users/gus/tokens", admin, Some(json!({})));
    assert_eq!(status, 201);
    create(h, &gus, "gus_s", "v", "private");
    let token = workload_token(h, &gus, &["gus_s"]);
    let (status, _) = h.call("POST", "/api/v1/tokens/renew", &token, None);
    assert_eq!(status, 200);
    let id = token.split('_').nth(2).unwrap();
    assert_eq!(
        h.call("DELETE", &format!("/api/v1/tokens/{id}"), admin, None)
            .0,
        204
    );
    assert_eq!(h.call("DELETE", "/api/v1/users/gus", admin, None).0, 200);
    let (status, log) = h.call("GET", "/api/v1/audit", admin, None);
    assert_eq!(status, 200);
    let log = log.as_array().unwrap().clone();
    let has = |action: &str, pred: &dyn Fn(&Value) -> bool| {
        log.iter().any(|r| r["action"] == action && pred(r))
    };
    assert!(has("user-add", &|r| r["target"] == "gus"
        && r["target_id"] != ""));
    assert!(has("workspace-create", &|r| r["target"] == "ops"));
    assert!(has("member-add", &|r| r["workspace"] == "ops"
        && r["target"] == "gus"));
    assert!(has("member-remove", &|r| r["workspace"] == "ops"
        && r["target"] == "gus"));
    let admin_mint = for_gus["id"].as_str().unwrap();
    assert!(has("token-mint", &|r| r["target"] == admin_mint
        && r["detail"]
            .as_str()
            .unwrap()
            .contains("for gus minted by admin admin")));
    assert!(has("token-renew", &|r| r["target"] == id));
    assert!(has("token-revoke", &|r| r["target"] == id
        && r["detail"].as_str().unwrap().contains("revoked by admin")));
    assert!(has("user-delete", &|r| r["target"] == "gus"
        && r["detail"]
            .as_str()
            .unwrap()
            .contains("private secrets (gus_s)")));
    assert!(has("delete", &|r| r["target"] == "gus_s"));
    let text = serde_json::to_string(&log).unwrap();
    assert!(!text.contains(&token) && !text.contains(for_gus["token"].as_str().unwrap()));
}

fn scenarios(h: &Http, admin: &str) {
    a_recreated_name_is_another_secret(h, admin);
    a_deleted_user_leaves_nothing_private_behind(h, admin);
    held_long_polls_end_with_their_principal(h, admin);
    derived_tokens_do_not_outlive_their_parent(h, admin);
    revocation_reaches_what_a_token_minted(h, admin);
    account_actions_are_audited(h, admin);
}

#[test]
fn identity_scenarios_on_sqlite() {
    let s = Scratch::new();
    let server = Server::start(&s);
    scenarios(&Http::new(&server), &server.admin_token);
}

#[test]
fn identity_scenarios_on_postgres() {
    let Some(admin_url) = crate::support::postgres_url("identity_scenarios_on_postgres") else {
        return;
    };
    let db = crate::support::TempDatabase::new(&admin_url);
    let s = Scratch::new();
    let server = Server::start_pg(&s, &db.url, &s.path().join("pg.key"), true);
    scenarios(&Http::new(&server), &server.admin_token);
}

/// `serve --no-admin-impersonation`: an admin cannot mint a token for another user (and so
/// cannot read their private secrets through one); for themselves they still can.
#[test]
fn admins_can_be_kept_from_acting_as_users() {
    let s = Scratch::new();
    let server = Server::start_with(&s, &["--no-admin-impersonation"]);
    let h = Http::new(&server);
    let admin = &server.admin_token;
    h.user(admin, "hal");
    let (status, v) = h.call("POST", "/api/v1/users/hal/tokens", admin, Some(json!({})));
    assert_eq!(status, 403, "{v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("--no-admin-impersonation"),
        "{v}"
    );
    let (status, _) = h.call("POST", "/api/v1/users/admin/tokens", admin, Some(json!({})));
    assert_eq!(status, 201);
    // Handing hal's private secret to the admin would be acting as hal: refused, nothing lost.
    let hal = h.user(admin, "hal2");
    create(&h, &hal, "hal_private", "p", "private");
    let (status, v) = h.call(
        "DELETE",
        "/api/v1/users/hal2?transfer_to=admin",
        admin,
        None,
    );
    assert_eq!(status, 403, "{v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("without --transfer-to"),
        "{v}"
    );
    let (status, v) = h.call("GET", "/api/v1/workspaces/default/secrets", &hal, None);
    assert_eq!(status, 200, "{v}");
    assert!(v.to_string().contains("hal_private"), "{v}");
    // Without the transfer the user goes, and their private secret with them.
    let (status, v) = h.call("DELETE", "/api/v1/users/hal2", admin, None);
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["deleted"], json!(["hal_private"]), "{v}");
}

/// The CLI says what removing a user removed, without a prompt, and can hand the secrets over.
#[test]
fn user_delete_says_what_went_and_can_transfer() {
    let s = Scratch::new();
    let server = Server::start(&s);
    let h = Http::new(&server);
    let admin_file = s.path().join("server.db.admin-token");
    let ivy = h.user(&server.admin_token, "ivy");
    h.user(&server.admin_token, "jon");
    create(&h, &ivy, "ivy_private", "p", "private");
    create(&h, &ivy, "ivy_public", "q", "public");
    let cli = |args: &[&str]| {
        let mut cmd = s.cmd(args);
        cmd.env("SECRETFS_URL", &server.url)
            .env("SECRETFS_TOKEN_FILE", &admin_file)
            .env_remove("SECRETFS_STORE");
        crate::support::run_with(cmd, b"")
    };
    let out = cli(&["user", "delete", "ivy", "--transfer-to", "jon"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("2 secrets transferred to \"jon\" (ivy_private, ivy_public)"),
        "{}",
        out.stderr
    );
    // An heir outside a workspace that holds the secrets could not see them: refused.
    h.user(&server.admin_token, "lou");
    let (status, v) = h.call(
        "DELETE",
        "/api/v1/workspaces/default/members/lou",
        &server.admin_token,
        None,
    );
    assert_eq!(status, 204, "{v}");
    let out = cli(&["user", "delete", "jon", "--transfer-to", "lou"]);
    assert_ne!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stderr.contains("\"lou\" is not a member of default"),
        "{}",
        out.stderr
    );
    let out = cli(&["user", "delete", "jon", "--transfer-to", "nobody"]);
    assert_ne!(out.code, 0, "{}", out.stderr);
    assert!(out.stderr.contains("nobody"), "{}", out.stderr);
    let kim = h.user(&server.admin_token, "kim");
    create(&h, &kim, "kim_private", "p", "private");
    let out = cli(&["user", "delete", "kim"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("1 private secrets deleted (kim_private)")
            && out.stderr.contains("0 public secrets kept"),
        "{}",
        out.stderr
    );
}

/// A mount whose token is revoked stops receiving new values within a second, keeps serving
/// what it had, and says why.
#[test]
fn a_mount_whose_token_is_revoked_keeps_what_it_had_and_says_why() {
    if !fuse_available("a_mount_whose_token_is_revoked_keeps_what_it_had_and_says_why") {
        return;
    }
    let s = Scratch::new();
    let server = Server::start(&s);
    let h = Http::new(&server);
    let lou = h.user(&server.admin_token, "lou");
    create(&h, &lou, "M", "kept", "private");
    let token = workload_token(&h, &lou, &["M"]);
    std::fs::write(s.path().join("w.tok"), &token).unwrap();
    let mnt = s.path().join("mnt");
    let url = server.url.clone();
    let d = Daemon::start_with(&s, &mnt, &["--token-file", "w.tok"], |c| {
        c.env("SECRETFS_URL", &url).env_remove("SECRETFS_STORE");
    });
    assert_eq!(std::fs::read(mnt.join("M")).unwrap(), b"kept");
    let id = token.split('_').nth(2).unwrap();
    let revoked = Instant::now();
    assert_eq!(
        h.call("DELETE", &format!("/api/v1/tokens/{id}"), &lou, None)
            .0,
        204
    );
    assert!(
        eventually(5, || d.log().contains("refused the token")),
        "{}",
        d.log()
    );
    assert!(
        revoked.elapsed() < Duration::from_secs(2),
        "{:?}",
        revoked.elapsed()
    );
    assert_eq!(
        h.call(
            "PATCH",
            &format!("{SECRETS}/M"),
            &lou,
            Some(json!({ "value": "new" }))
        )
        .0,
        200
    );
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(std::fs::read(mnt.join("M")).unwrap(), b"kept");
}

/// The small edges: query-string mistakes answer the JSON error format; a token description
/// has a limit; a Lepton item with two values is refused naming the field.
#[test]
fn malformed_queries_long_descriptions_and_double_values_are_refused_clearly() {
    let s = Scratch::new();
    let server = Server::start(&s);
    let h = Http::new(&server);
    let admin = &server.admin_token;
    create(&h, admin, "Q", "v", "private");
    let w = workload_token(&h, admin, &["Q"]);
    for (path, token) in [
        ("/api/v1/workload/secrets?values=maybe", w.as_str()),
        ("/api/v1/audit?limit=-1", admin.as_str()),
        ("/api/v1/tokens?all=perhaps", admin.as_str()),
    ] {
        let (status, v) = h.call("GET", path, token, None);
        assert_eq!(status, 400, "{path}: {v}");
        assert_eq!(v["code"], "bad_request", "{path}: {v}");
        assert!(
            v["message"]
                .as_str()
                .unwrap()
                .starts_with("invalid query string"),
            "{v}"
        );
    }
    let (status, v) = mint(&h, admin, &["Q"], json!({ "description": "d".repeat(257) }));
    assert_eq!(
        (status, v["field"].as_str()),
        (422, Some("description")),
        "{v}"
    );
    let (status, _) = mint(&h, admin, &["Q"], json!({ "description": "d".repeat(256) }));
    assert_eq!(status, 201);
    let (status, v) = h.call(
        "POST",
        "/api/v2/workspaces/default/usersecrets",
        admin,
        Some(json!([{ "name": "TWO", "value": "a", "value_base64": "Yg==" }])),
    );
    assert_eq!(
        (status, v["field"].as_str()),
        (400, Some("value_base64")),
        "{v}"
    );
    assert_eq!(h.call("GET", &format!("{SECRETS}/TWO"), admin, None).0, 404);
}
