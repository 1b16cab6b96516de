//! The audit over time, on both engines: repeated events coalesced into records with counts
//! (reads, failed authentications), pruning past the retention under write load without losing
//! a change record, and the export as JSON lines that resumes after a restart or `kill -9` with
//! nothing missing or twice.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use nix::sys::signal::Signal;
use serde_json::{Value, json};

use crate::support::{
    Api, CANARY, Scratch, Server, TempDatabase, assert_no_canary, eventually, postgres_url,
    run_with,
};

/// Which store a test runs on.
#[derive(Clone, Copy, Debug)]
enum Engine {
    Sqlite,
    Postgres,
}

/// A server on `engine` with `extra` flags (the PostgreSQL database lives as long as it does).
fn start(engine: Engine, s: &Scratch, test: &str, extra: &[&str]) -> Option<(Server, Store)> {
    match engine {
        Engine::Sqlite => {
            let server = Server::start_with(s, extra);
            let db = server.db.clone();
            Some((server, Store::Sqlite(db)))
        }
        Engine::Postgres => {
            let admin_url = postgres_url(test)?;
            let db = TempDatabase::new(&admin_url);
            let key = s.path().join("pg.key");
            let server = Server::start_pg_with(s, &db.url, &key, true, extra);
            Some((server, Store::Postgres(db)))
        }
    }
}

/// The store under a server, for what a test checks (or plants) below the API.
enum Store {
    Sqlite(PathBuf),
    Postgres(TempDatabase),
}

impl Store {
    fn sql(&self, sql: &str) -> String {
        match self {
            Store::Sqlite(db) => {
                let out = std::process::Command::new("sqlite3")
                    .args(["-cmd", ".timeout 10000", db.to_str().unwrap(), sql])
                    .output()
                    .expect("sqlite3");
                assert!(
                    out.status.success(),
                    "sqlite3 {sql}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                String::from_utf8_lossy(&out.stdout).trim().to_owned()
            }
            Store::Postgres(db) => db.query(sql),
        }
    }

    fn count(&self, condition: &str) -> u64 {
        self.sql(&format!("SELECT count(*) FROM audit WHERE {condition}"))
            .parse()
            .unwrap()
    }

    /// Appends `n` records of `action` at `at` (nanoseconds) in `workspace`, as an older server
    /// would have written them.
    fn plant(&self, n: u64, at: i64, workspace: &str, action: &str) {
        let columns = "at, workspace, actor, actor_id, action, target_kind, target, target_id, \
                       version, detail, address";
        let values = format!(
            "{at}, '{workspace}', 'workload:old', 'u-old', '{action}', 'secret', 'OLD', 's-old', \
             1, 'planted', '127.0.0.1'"
        );
        let sql = match self {
            Store::Sqlite(_) => format!(
                "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {n}) \
                 INSERT INTO audit ({columns}) SELECT {values} FROM n"
            ),
            Store::Postgres(_) => format!(
                "INSERT INTO audit ({columns}) SELECT {values} FROM generate_series(1, {n})"
            ),
        };
        self.sql(&sql);
    }
}

/// Every record of the server's log, in commit order, through the export's own API call.
async fn whole_log(api: &Api, admin: &str) -> Vec<Value> {
    let mut out: Vec<Value> = Vec::new();
    loop {
        let after = out.last().map_or(0, |r| r["id"].as_u64().unwrap());
        let (status, page) = api
            .call(
                "GET",
                &format!("/api/v1/audit?after={after}&limit=5000"),
                admin,
                None,
            )
            .await;
        assert_eq!(status, 200, "{page}");
        let page = page.as_array().unwrap().clone();
        if page.is_empty() {
            return out;
        }
        out.extend(page);
    }
}

/// `n` workload reads of `token` by 16 readers at once; how many were answered each version.
async fn read_many(api: &Arc<Api>, token: &str, n: usize) -> BTreeMap<u64, usize> {
    let mut readers = tokio::task::JoinSet::new();
    for r in 0..16 {
        let (api, token) = (api.clone(), token.to_owned());
        let share = n / 16 + usize::from(r < n % 16);
        readers.spawn(async move {
            let mut versions = BTreeMap::<u64, usize>::new();
            for _ in 0..share {
                let (status, v) = api.workload(&token, "").await;
                assert_eq!(status, 200, "{v}");
                *versions
                    .entry(v["secrets"][0]["version"].as_u64().unwrap())
                    .or_default() += 1;
            }
            versions
        });
    }
    let mut versions = BTreeMap::new();
    while let Some(answered) = readers.join_next().await {
        for (v, n) in answered.unwrap() {
            *versions.entry(v).or_default() += n;
        }
    }
    versions
}

fn burst_of_reads(engine: Engine, test: &str) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let s = Scratch::new();
    let Some((mut server, _store)) = start(engine, &s, test, &["--audit-coalesce", "10s"]) else {
        return;
    };
    let api = Arc::new(Api::new(&server));
    let admin = server.admin_token.clone();
    let started = Instant::now();
    rt.block_on(async {
        let alice = api.user(&admin, "alice").await;
        assert_eq!(api.create(&alice, "BURST", CANARY, "private").await.0, 201);
        let (_, w) = api.mint(&alice, &["BURST"], json!({})).await;
        let w = w["token"].as_str().unwrap().to_owned();
        assert_eq!(read_many(&api, &w, 5000).await, BTreeMap::from([(1, 5000)]));
        // The value rotates in the middle of the burst.
        let (status, v) = api
            .call(
                "PATCH",
                "/api/v1/workspaces/default/secrets/BURST",
                &alice,
                Some(json!({ "value": format!("{CANARY}-2") })),
            )
            .await;
        assert_eq!(status, 200, "{v}");
        assert_eq!(read_many(&api, &w, 5000).await, BTreeMap::from([(2, 5000)]));
        // Refused reads: each is a record of its own, never coalesced; a name of a secret of
        // the workspace is named, a name of none (a value passed by mistake?) only counted.
        assert_eq!(
            api.create(&admin, "NOT_MINE", CANARY, "private").await.0,
            201
        );
        for _ in 0..3 {
            assert_eq!(
                api.workload(&w, &format!("?names=BURST,NOT_MINE,{CANARY}_AS_A_NAME"))
                    .await
                    .0,
                404
            );
        }
    });
    let took = started.elapsed();
    // A clean stop writes what was counted and not yet written.
    server.kill(Signal::SIGTERM);
    server.restart(&s);
    let api = Api::new(&server);
    let log = rt.block_on(whole_log(&api, &admin));
    let reads: Vec<&Value> = log
        .iter()
        .filter(|r| r["action"] == "read" && r["target"] == "BURST")
        .collect();
    for version in [1, 2] {
        let of: Vec<&&Value> = reads.iter().filter(|r| r["version"] == version).collect();
        let total: u64 = of.iter().map(|r| r["count"].as_u64().unwrap()).sum();
        assert_eq!(total, 5000, "version {version}: {of:#?}");
        // The first read of each version is a record of its own, written when it happened.
        assert_eq!(of[0]["count"], 1, "{of:#?}");
        assert!(of[0].get("first_at").is_none(), "{of:#?}");
        for r in &of[1..] {
            assert!(r["first_at"].as_str().unwrap() <= r["at"].as_str().unwrap());
        }
    }
    let refused: Vec<&Value> = log
        .iter()
        .filter(|r| r["action"] == "read-refused")
        .collect();
    assert_eq!(refused.len(), 3, "{refused:#?}");
    assert!(
        refused.iter().all(|r| r["target"] == "NOT_MINE"
            && r["count"] == 1
            && r["detail"] == "not readable by this token: NOT_MINE; 1 name of no secret"),
        "{refused:#?}"
    );
    // A handful: per version its first read and one record per 10-second interval it spanned.
    let most = 2 * (2 + took.as_secs() as usize / 10);
    assert!(
        reads.len() <= most,
        "{} records for 10,000 reads in {took:?}",
        reads.len()
    );
    // The CLI shows the counts.
    let mut cmd = s.cmd(&["audit"]);
    cmd.env("SECRETFS_URL", &server.url)
        .env("SECRETFS_TOKEN", &admin)
        .env_remove("SECRETFS_STORE");
    let out = run_with(cmd, b"");
    assert_eq!(out.code, 0, "{}", out.stderr);
    let counted = reads
        .iter()
        .find(|r| r["count"].as_u64().unwrap() > 1)
        .unwrap();
    assert!(
        out.stdout.contains(&format!("×{} since", counted["count"])),
        "{}",
        out.stdout
    );
    assert_no_canary("audit log", serde_json::to_string(&log).unwrap().as_bytes());
}

#[test]
fn a_burst_of_reads_is_a_handful_of_records_with_the_right_count_sqlite() {
    burst_of_reads(
        Engine::Sqlite,
        "a_burst_of_reads_is_a_handful_of_records_with_the_right_count_sqlite",
    );
}

#[test]
fn a_burst_of_reads_is_a_handful_of_records_with_the_right_count_postgres() {
    burst_of_reads(
        Engine::Postgres,
        "a_burst_of_reads_is_a_handful_of_records_with_the_right_count_postgres",
    );
}

fn failed_authentications(engine: Engine, test: &str) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let s = Scratch::new();
    // No slowing down: a thousand failures in a few seconds.
    let Some((mut server, _store)) = start(engine, &s, test, &["--failure-burst", "1000000"])
    else {
        return;
    };
    let api = Api::new(&server);
    let admin = server.admin_token.clone();
    let revoked_id = rt.block_on(async {
        let alice = api.user(&admin, "alice").await;
        assert_eq!(api.create(&alice, "A", CANARY, "private").await.0, 201);
        let (_, good) = api.mint(&alice, &["A"], json!({})).await;
        let good = good["token"].as_str().unwrap().to_owned();
        let (_, bad) = api.mint(&alice, &["A"], json!({})).await;
        let revoked = bad["token"].as_str().unwrap().to_owned();
        let revoked_id = bad["id"].as_str().unwrap().to_owned();
        let (status, _) = api
            .call(
                "DELETE",
                &format!("/api/v1/tokens/{revoked_id}"),
                &alice,
                None,
            )
            .await;
        assert_eq!(status, 204);
        // A token nobody minted: the revoked one's id with another secret part is a real id,
        // so the unknown one gets an id of its own.
        let unknown = format!("{CANARY}-not-a-token");
        for i in 0..1000 {
            let token = if i % 2 == 0 { &unknown } else { &revoked };
            assert_eq!(api.workload(token, "").await.0, 401);
            if i % 100 == 0 {
                assert_eq!(api.workload(&good, "").await.0, 200);
            }
        }
        revoked_id
    });
    server.kill(Signal::SIGTERM);
    server.restart(&s);
    let api = Api::new(&server);
    let log = rt.block_on(whole_log(&api, &admin));
    let failed: Vec<&Value> = log
        .iter()
        .filter(|r| r["action"] == "auth-failed")
        .collect();
    let by_reason = |reason: &str| -> Vec<&Value> {
        failed
            .iter()
            .copied()
            .filter(|r| r["detail"].as_str().unwrap().contains(reason))
            .collect()
    };
    let unknown = by_reason("reason=malformed");
    let revoked = by_reason("reason=revoked");
    assert_eq!(unknown.len() + revoked.len(), failed.len(), "{failed:#?}");
    for (what, records) in [("malformed", &unknown), ("revoked", &revoked)] {
        let total: u64 = records.iter().map(|r| r["count"].as_u64().unwrap()).sum();
        assert_eq!(total, 500, "{what}: {records:#?}");
        // The first is written at once, the rest counted in one record: the valid reads in
        // between changed nothing about them.
        assert_eq!(records.len(), 2, "{what}: {records:#?}");
        assert_eq!(records[0]["count"], 1);
        assert!(records.iter().all(|r| r["address"] == "127.0.0.1"));
    }
    // A real token is named; an unknown one is not (its text is the client's, not ours).
    assert!(revoked.iter().all(|r| r["target"] == revoked_id.as_str()));
    assert!(unknown.iter().all(|r| r["target"] == ""));
    assert_no_canary("audit log", serde_json::to_string(&log).unwrap().as_bytes());
    assert_no_canary("server log", server.log().as_bytes());
}

#[test]
fn failed_authentications_are_coalesced_per_address_and_reason_sqlite() {
    failed_authentications(
        Engine::Sqlite,
        "failed_authentications_are_coalesced_per_address_and_reason_sqlite",
    );
}

#[test]
fn failed_authentications_are_coalesced_per_address_and_reason_postgres() {
    failed_authentications(
        Engine::Postgres,
        "failed_authentications_are_coalesced_per_address_and_reason_postgres",
    );
}

fn pruning_under_load(engine: Engine, test: &str) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let s = Scratch::new();
    let Some((mut server, store)) = start(engine, &s, test, &[]) else {
        return;
    };
    let api = Api::new(&server);
    let admin = server.admin_token.clone();
    rt.block_on(async {
        let (status, v) = api
            .call(
                "POST",
                "/api/v1/workspaces",
                &admin,
                Some(json!({ "name": "keeps" })),
            )
            .await;
        assert_eq!(status, 201, "{v}");
        // This workspace keeps its records of reads for 400 days.
        let (status, v) = api
            .call(
                "PUT",
                "/api/v1/workspaces/keeps/audit",
                &admin,
                Some(json!({ "retention_secs": 400 * 86_400 })),
            )
            .await;
        assert_eq!(status, 204, "{v}");
    });
    server.kill(Signal::SIGTERM);
    // Records from 200 days ago: reads and failed authentications to prune, changes to keep,
    // and reads of the workspace that keeps them longer.
    let day: i64 = 86_400 * 1_000_000_000;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64;
    let old = now - 200 * day;
    store.plant(30_000, old, "default", "read");
    store.plant(5_000, old, "", "auth-failed");
    store.plant(300, old, "default", "create");
    store.plant(300, old, "default", "token-revoke");
    store.plant(2_000, old, "keeps", "read");
    store.plant(1_000, now - day, "default", "read");
    server.restart_with(
        &s,
        &[
            "--audit-prune-every",
            "1s",
            "--metrics-listen",
            "127.0.0.1:0",
        ],
    );
    let api = Api::new(&server);
    // Changes go on while the pruner deletes: each one's record must land.
    let created = rt.block_on(async {
        let mut created = 0;
        for i in 0..150 {
            let (status, v) = api
                .create(&admin, &format!("LOAD_{i}"), CANARY, "private")
                .await;
            assert_eq!(status, 201, "{v}");
            created += 1;
        }
        created
    });
    let cutoff = now - 100 * day;
    assert!(
        eventually(60, || store.count(&format!(
            "action IN ('read', 'auth-failed') AND at < {cutoff} AND workspace <> 'keeps'"
        )) == 0),
        "the old reads were not pruned: {}",
        server.log()
    );
    assert_eq!(
        store.count(&format!("action = 'create' AND at = {old}")),
        300
    );
    assert_eq!(
        store.count(&format!("action = 'token-revoke' AND at = {old}")),
        300
    );
    assert_eq!(
        store.count("workspace = 'keeps' AND action = 'read'"),
        2_000
    );
    assert_eq!(
        store.count(&format!("action = 'read' AND at = {}", now - day)),
        1_000
    );
    assert_eq!(
        store.count("action = 'create' AND target LIKE 'LOAD_%'"),
        created
    );
    assert_eq!(
        rt.block_on(server.metric("audit_records_pruned_total")),
        35_000.0
    );
}

#[test]
fn pruning_under_write_load_loses_no_change_record_sqlite() {
    pruning_under_load(
        Engine::Sqlite,
        "pruning_under_write_load_loses_no_change_record_sqlite",
    );
}

#[test]
fn pruning_under_write_load_loses_no_change_record_postgres() {
    pruning_under_load(
        Engine::Postgres,
        "pruning_under_write_load_loses_no_change_record_postgres",
    );
}

/// Every exported line of `base` and the files rotated from it, oldest first: the ids in the
/// order written, and the text of all of them.
fn exported(dir: &std::path::Path, base: &str) -> (Vec<u64>, String) {
    let mut rotated: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            // Rotated files: BASE.YYYYMMDDTHHMMSSZ (the position and the lock are beside them).
            name.starts_with(&format!("{base}.2"))
        })
        .collect();
    rotated.sort();
    rotated.push(dir.join(base));
    let mut ids = Vec::new();
    let mut text = String::new();
    for p in rotated {
        let body = std::fs::read_to_string(&p).unwrap_or_default();
        for line in body.lines() {
            let v: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("{}: {e}: {line:?}", p.display()));
            ids.push(v["id"].as_u64().unwrap());
        }
        text.push_str(&body);
    }
    (ids, text)
}

/// Every id of the store's audit, in order.
fn stored_ids(store: &Store) -> Vec<u64> {
    store
        .sql("SELECT id FROM audit ORDER BY id")
        .lines()
        .map(|l| l.trim().parse().unwrap())
        .collect()
}

// The local store: an export, a crash between writing lines and saving the position, a crash
// in the middle of a line, and `kill -9` of a follower rotating its file: in the end every
// record is in the files once, in commit order.
#[test]
fn the_export_resumes_after_a_restart_with_nothing_missing_or_twice() {
    let s = Scratch::new();
    let store = Store::Sqlite(s.store());
    for i in 0..10 {
        s.ok(&["secret", "create", &format!("E{i}")], CANARY.as_bytes());
    }
    let out = s.path().join("audit.jsonl");
    let to = out.to_str().unwrap();
    s.ok(&["audit", "export", "--to", to], b"");
    let (ids, _) = exported(s.path(), "audit.jsonl");
    assert_eq!(ids, stored_ids(&store));
    let creates = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .filter(|l| l.contains("\"action\":\"create\""))
        .count();
    assert_eq!(creates, 10, "one record per create");
    // A second run with nothing new writes nothing.
    s.ok(&["audit", "export", "--to", to], b"");
    assert_eq!(exported(s.path(), "audit.jsonl").0, ids);

    // Killed after writing lines, before saving the position: the position file is behind.
    for i in 0..5 {
        s.ok(
            &["secret", "update", &format!("E{i}")],
            format!("{CANARY}{i}").as_bytes(),
        );
    }
    s.ok(&["audit", "export", "--to", to], b"");
    std::fs::write(
        s.path().join("audit.jsonl.position"),
        format!("{} 0\n", ids[3]),
    )
    .unwrap();
    // And killed in the middle of a line.
    let mut f = std::fs::OpenOptions::new().append(true).open(&out).unwrap();
    std::io::Write::write_all(&mut f, b"{\"id\":99999,\"at\":\"2026-").unwrap();
    drop(f);
    s.ok(&["secret", "delete", "E9"], b"");
    s.ok(&["audit", "export", "--to", to], b"");
    assert_eq!(exported(s.path(), "audit.jsonl").0, stored_ids(&store));

    // A follower rotating at 2 KiB, killed while records are committed.
    let mut follower = crate::support::Running::spawn(
        "audit export --follow",
        s.cmd(&[
            "audit",
            "export",
            "--to",
            to,
            "--follow",
            "--poll",
            "20ms",
            "--rotate-size",
            "2K",
            "--keep",
            "0",
        ])
        .stdout(std::process::Stdio::null()),
    );
    // Once the follower runs (it has written the next record), a second export to the same
    // file is refused, naming why.
    s.ok(&["secret", "create", "E_FOLLOWED"], CANARY.as_bytes());
    assert!(eventually(10, || exported(s.path(), "audit.jsonl").0
        == stored_ids(&store)));
    let second = s.run(&["audit", "export", "--to", to], b"");
    assert!(
        second.code != 0 && second.stderr.contains("another export is writing"),
        "{}",
        second.stderr
    );
    for i in 10..40 {
        s.ok(&["secret", "create", &format!("E{i}")], CANARY.as_bytes());
        if i == 25 {
            follower.signal_and_wait(Signal::SIGKILL, std::time::Duration::from_secs(5));
        }
    }
    s.ok(
        &[
            "audit",
            "export",
            "--to",
            to,
            "--rotate-size",
            "2K",
            "--keep",
            "0",
        ],
        b"",
    );
    let (ids, text) = exported(s.path(), "audit.jsonl");
    assert_eq!(ids, stored_ids(&store));
    let files = std::fs::read_dir(s.path())
        .unwrap()
        .filter(|e| {
            let name = e.as_ref().unwrap().file_name();
            name.to_string_lossy().starts_with("audit.jsonl.2")
        })
        .count();
    assert!(files >= 2, "the export rotated {files} times");
    assert_no_canary("exported audit", text.as_bytes());
    // The local CLI shows the same log.
    let table = s.ok(&["audit"], b"");
    assert_eq!(table.lines().count(), ids.len(), "{table}");
}

// Replicas over one PostgreSQL commit records concurrently: the export follows one of them
// and, once the writers stop, holds every record of the store once, in id order. PostgreSQL
// draws ids before commit; the audit's turn-taking lock is what keeps a record committed late
// with a lower id from being passed over.
#[test]
fn the_export_follows_replicas_in_commit_order() {
    let test = "the_export_follows_replicas_in_commit_order";
    let Some(admin_url) = postgres_url(test) else {
        return;
    };
    let db = TempDatabase::new(&admin_url);
    let s = Scratch::new();
    let key = s.path().join("pg.key");
    let a = Server::start_pg(&s, &db.url, &key, true);
    let b = Server::start_pg(&s, &db.url, &key, false);
    let admin = a.admin_token.clone();
    let out = s.path().join("replicas.jsonl");
    let mut export = s.cmd(&[
        "audit",
        "export",
        "--to",
        out.to_str().unwrap(),
        "--follow",
        "--poll",
        "10ms",
    ]);
    export
        .env("SECRETFS_URL", &a.url)
        .env("SECRETFS_TOKEN", &admin)
        .env_remove("SECRETFS_STORE");
    let mut follower = crate::support::Running::spawn("audit export --follow", &mut export);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let apis = [Arc::new(Api::new(&a)), Arc::new(Api::new(&b))];
        let mut writers = tokio::task::JoinSet::new();
        for w in 0..4 {
            let (api, admin) = (apis[w % 2].clone(), admin.clone());
            writers.spawn(async move {
                for i in 0..40 {
                    let (status, v) = api
                        .create(&admin, &format!("R{w}_{i}"), CANARY, "private")
                        .await;
                    assert_eq!(status, 201, "{v}");
                }
            });
        }
        while let Some(done) = writers.join_next().await {
            done.unwrap();
        }
    });
    let store = Store::Postgres(db);
    let all = stored_ids(&store);
    assert!(
        eventually(20, || exported(s.path(), "replicas.jsonl").0.last()
            == all.last()),
        "the follower did not catch up"
    );
    follower.signal_and_wait(Signal::SIGTERM, std::time::Duration::from_secs(5));
    let (ids, text) = exported(s.path(), "replicas.jsonl");
    assert_eq!(ids, all);
    assert!(ids.len() >= 160);
    assert_no_canary("exported audit", text.as_bytes());
}

// A workspace's own interval applies: the server's is a minute, this workspace's 10 s, and the
// counted reads are written when those 10 s end, while the server goes on running. Shorter than
// the minimum is refused, naming the rule.
#[test]
fn a_workspace_coalesces_over_its_own_interval() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let s = Scratch::new();
    let server = Server::start(&s);
    let api = Api::new(&server);
    let admin = server.admin_token.clone();
    rt.block_on(async {
        let (status, v) = api
            .call(
                "PUT",
                "/api/v1/workspaces/default/audit",
                &admin,
                Some(json!({ "coalesce_secs": 5 })),
            )
            .await;
        assert_eq!(status, 422, "{v}");
        assert!(v["message"].as_str().unwrap().contains("10s to 1h"), "{v}");
        let (status, v) = api
            .call(
                "PUT",
                "/api/v1/workspaces/default/audit",
                &admin,
                Some(json!({ "coalesce_secs": 10 })),
            )
            .await;
        assert_eq!(status, 204, "{v}");
        let (_, got) = api
            .call("GET", "/api/v1/workspaces/default/audit", &admin, None)
            .await;
        assert_eq!(got, json!({ "coalesce_secs": 10 }));
        let (w, _) = api.reader_of(&admin, "OWN", CANARY).await;
        for _ in 0..3 {
            assert_eq!(api.workload(&w, "").await.0, 200);
        }
    });
    let counted = |log: &[Value]| {
        log.iter()
            .find(|r| r["action"] == "read" && r["count"].as_u64() == Some(3))
            .cloned()
    };
    let mut log = Vec::new();
    assert!(
        eventually(25, || {
            log = rt.block_on(whole_log(&api, &admin));
            counted(&log).is_some()
        }),
        "no counted record after the workspace's interval: {log:#?}"
    );
    // The first read was written at once, the next three counted (reader_of read once).
    let reads: Vec<&Value> = log.iter().filter(|r| r["action"] == "read").collect();
    assert_eq!(reads.len(), 2, "{reads:#?}");
    assert_eq!(reads[0]["count"], 1);
    assert!(
        log.iter().any(|r| r["action"] == "workspace-audit"
            && r["detail"] == "coalesce=10s retention=server default"),
        "{log:#?}"
    );
}

// The unhappy order: a token read, then revoked, then presented again, then the server killed
// with SIGKILL before any interval ended. The refusal was recorded before it was answered, so
// it is there after the restart, with the token named, as is the revocation (a change).
#[test]
fn a_refusal_is_recorded_before_its_answer_and_survives_kill_9() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let s = Scratch::new();
    let mut server = Server::start(&s);
    let api = Api::new(&server);
    let admin = server.admin_token.clone();
    let token_id = rt.block_on(async {
        let (w, _) = api.reader_of(&admin, "KILLED", CANARY).await;
        // sfs_w_ID_SECRET: the id is the 16 hex digits after the kind.
        let id = w[6..22].to_owned();
        let (status, _) = api
            .call("DELETE", &format!("/api/v1/tokens/{id}"), &admin, None)
            .await;
        assert_eq!(status, 204);
        assert_eq!(api.workload(&w, "").await.0, 401);
        id
    });
    server.kill(Signal::SIGKILL);
    server.restart(&s);
    let api = Api::new(&server);
    let log = rt.block_on(whole_log(&api, &admin));
    let refused: Vec<&Value> = log
        .iter()
        .filter(|r| r["action"] == "auth-failed")
        .collect();
    assert_eq!(refused.len(), 1, "{log:#?}");
    assert_eq!(refused[0]["target"], token_id.as_str());
    assert!(
        refused[0]["detail"]
            .as_str()
            .unwrap()
            .starts_with("reason=revoked"),
        "{refused:#?}"
    );
    assert!(
        log.iter()
            .any(|r| r["action"] == "token-revoke" && r["target_id"] == token_id.as_str()),
        "{log:#?}"
    );
    assert_no_canary("audit log", serde_json::to_string(&log).unwrap().as_bytes());
}
