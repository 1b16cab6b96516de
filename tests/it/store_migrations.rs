//! SQLite's own file: reopened and migrated once, and a migration that finds owners who are gone.

use secretfs::crypto::MasterKey;
use secretfs::secret::{Timestamp, ValueLimit, Visibility};
use secretfs::service::{Options, Service};
use secretfs::store::sqlite::SqliteStore;
use secretfs::store::{Batch, Op, SecretFilter, Store, Vault, new_id};
use std::sync::Arc;

use crate::store::{WS, new};

#[tokio::test]
async fn sqlite_reopens_and_migrates_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db");
    // Two openers of a new file at once: one initialises, the other sees the result.
    let (a, b) = tokio::join!(
        SqliteStore::open(&path, true),
        SqliteStore::open(&path, true)
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    let key = MasterKey::generate();
    let vault = Vault::open(Arc::new(a), &key, ValueLimit::default())
        .await
        .unwrap();
    let service = Service::new(vault, Options::default(), None);
    let local = service.local_caller(true).await.unwrap();
    service
        .create_secrets(&local, WS, vec![new("A", "1", Visibility::Private)])
        .await
        .unwrap();
    let again = Vault::open(Arc::new(b), &key, ValueLimit::default())
        .await
        .unwrap();
    let again = Service::new(again, Options::default(), None);
    let local = again.local_caller(false).await.unwrap();
    assert_eq!(again.list_secrets(&local, WS).await.unwrap().len(), 1);
}

/// A server store from before ids: the owner of secrets who is no user any more (deleting a
/// user left their secrets then) becomes a tombstone, so a new user of the name gets none of
/// them; a living user keeps theirs.
#[tokio::test]
async fn sqlite_migration_tombstones_owners_who_are_gone() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.db");
    {
        let options = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true);
        let pool = sqlx::SqlitePool::connect_with(options).await.unwrap();
        let old = concat!(
            include_str!("../../src/store/migrations/sqlite/0001.sql"),
            include_str!("../../src/store/migrations/sqlite/0002.sql"),
            "PRAGMA application_id = 1397117745; -- 'SFS1', secretfs's
             CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL);
             INSERT INTO schema_migrations VALUES (1, 0), (2, 0);
             INSERT INTO users (name, admin, created_at) VALUES ('alice', 1, 0);
             INSERT INTO members (user_name, workspace) VALUES ('alice', 'default');
             INSERT INTO secrets (workspace, name, id, kind, visibility, owner, version, sealed, created_at, updated_at)
                 VALUES ('default', 'MINE', 'id-mine', 'custom', 'private', 'alice', 1, x'00', 0, 0),
                        ('default', 'LEFT', 'id-left', 'custom', 'private', 'ghost', 1, x'00', 0, 0);"
        );
        sqlx::raw_sql(old).execute(&pool).await.unwrap();
        pool.close().await;
    }
    let store = SqliteStore::open(&path, false).await.unwrap();
    let users = store.users().await.unwrap();
    let alice = users.iter().find(|u| u.name == "alice").unwrap();
    let ghost = users.iter().find(|u| u.name == "ghost").unwrap();
    assert!(alice.deleted_at.is_none() && alice.workspaces == ["default"]);
    assert!(ghost.deleted_at.is_some(), "{ghost:?}");
    assert!(ghost.workspaces.is_empty(), "{ghost:?}");
    let mine = store.secrets(SecretFilter::Owner(&alice.id)).await.unwrap();
    assert_eq!(mine.len(), 1);
    assert_eq!(mine[0].meta.name.as_str(), "MINE");
    // A new user named ghost is another id and owns nothing.
    let fresh = new_id();
    store
        .apply(&Batch {
            ops: vec![Op::InsertUser(secretfs::service::User {
                id: fresh.clone(),
                name: "ghost".into(),
                admin: false,
                created_at: Timestamp::now(),
                deleted_at: None,
                workspaces: vec!["default".into()],
            })],
            audit: Vec::new(),
        })
        .await
        .unwrap();
    assert!(
        store
            .secrets(SecretFilter::Owner(&fresh))
            .await
            .unwrap()
            .is_empty()
    );
    let left = store.secrets(SecretFilter::Owner(&ghost.id)).await.unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].meta.name.as_str(), "LEFT");
}
