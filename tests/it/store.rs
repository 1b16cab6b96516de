//! One story every store implementation must pass, run on SQLite (and on PostgreSQL when that
//! store exists and `TEST_DATABASE_URL` is set).

use std::sync::Arc;

use secretfs::crypto::MasterKey;
use secretfs::secret::{SecretKind, SecretName, SecretValue, ValueLimit, Visibility};
use secretfs::store::postgres::PgStore;
use secretfs::store::sqlite::SqliteStore;
use secretfs::store::{
    Actor, AuditAction, DEFAULT_WORKSPACE, NewSecret, SecretUpdate, Store, StoreError, Vault,
};

fn name(s: &str) -> SecretName {
    SecretName::parse(s).unwrap()
}

fn value(s: &str) -> SecretValue {
    SecretValue::from_slice(s.as_bytes(), ValueLimit::default()).unwrap()
}

fn new(n: &str, v: &str) -> NewSecret {
    NewSecret {
        name: name(n),
        kind: SecretKind::Custom,
        visibility: Visibility::Private,
        tags: vec![],
        value: value(v),
    }
}

async fn store_story(store: Arc<dyn Store>) {
    let ws = DEFAULT_WORKSPACE;
    let key = MasterKey::generate();
    let vault = Vault::open(store.clone(), &key, ValueLimit::default())
        .await
        .unwrap();

    let meta = vault
        .create(ws, &Actor::local("alice"), new("A", "one"))
        .await
        .unwrap();
    assert_eq!((meta.version, meta.owner.as_str()), (1, "alice"));
    assert!(matches!(
        vault.create(ws, &Actor::local("bob"), new("A", "x")).await,
        Err(StoreError::AlreadyExists(_))
    ));
    vault
        .create(ws, &Actor::local("alice"), new("B", "two"))
        .await
        .unwrap();
    let names: Vec<String> = vault
        .list(ws)
        .await
        .unwrap()
        .iter()
        .map(|m| m.name.to_string())
        .collect();
    assert_eq!(names, ["A", "B"]);

    let (m, v) = vault
        .read(ws, &Actor::local("alice"), &name("A"))
        .await
        .unwrap();
    assert_eq!((m.version, v.expose_secret()), (1, &b"one"[..]));

    // Concurrent replacements: every one lands, each on its own version.
    let vault = Arc::new(vault);
    let mut tasks = Vec::new();
    for i in 0..8 {
        let vault = vault.clone();
        tasks.push(tokio::spawn(async move {
            vault
                .update(
                    ws,
                    &Actor::local("alice"),
                    &name("A"),
                    SecretUpdate {
                        value: Some(value(&format!("v{i}"))),
                        ..Default::default()
                    },
                )
                .await
                .unwrap()
                .version
        }));
    }
    let mut versions = Vec::new();
    for t in tasks {
        versions.push(t.await.unwrap());
    }
    versions.sort();
    assert_eq!(versions, (2..=9).collect::<Vec<u64>>());
    let (m, _) = vault
        .read(ws, &Actor::local("alice"), &name("A"))
        .await
        .unwrap();
    assert_eq!(m.version, 9);

    // A metadata change keeps the version and the value's update time.
    let before = vault.meta(ws, &name("A")).await.unwrap();
    let after = vault
        .update(
            ws,
            &Actor::local("alice"),
            &name("A"),
            SecretUpdate {
                visibility: Some(Visibility::Public),
                tags: Some(vec!["t".into()]),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        (after.version, after.updated_at),
        (before.version, before.updated_at)
    );
    assert_eq!(
        (after.visibility, after.tags.as_slice()),
        (Visibility::Public, &["t".to_owned()][..])
    );

    // Reads report each missing name on its own.
    let results = vault
        .read_many(
            ws,
            &Actor::local("w"),
            &[name("A"), name("GONE"), name("B")],
        )
        .await
        .unwrap();
    assert!(results[0].is_ok() && results[2].is_ok());
    assert!(matches!(results[1], Err(StoreError::NotFound(_))));

    vault
        .delete(ws, &Actor::local("alice"), &name("B"))
        .await
        .unwrap();
    assert!(matches!(
        vault.delete(ws, &Actor::local("alice"), &name("B")).await,
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(
        vault
            .update(ws, &Actor::local("a"), &name("B"), SecretUpdate::default())
            .await,
        Err(StoreError::NotFound(_))
    ));

    // Every change and read was audited, in order, without values.
    let log = store.audit_log(ws, 1000).await.unwrap();
    let count = |a| log.iter().filter(|r| r.action == a).count();
    assert_eq!(count(AuditAction::Create), 2);
    assert_eq!(count(AuditAction::Update), 9);
    assert_eq!(count(AuditAction::Delete), 1);
    assert_eq!(count(AuditAction::Read), 4);
    assert!(log.windows(2).all(|w| w[0].at <= w[1].at));

    // A ciphertext moved to another row does not open there.
    let a = store.get(ws, &name("A")).await.unwrap();
    vault
        .create(ws, &Actor::local("alice"), new("C", "three"))
        .await
        .unwrap();
    let c = store.get(ws, &name("C")).await.unwrap();
    let change = secretfs::store::Change {
        sealed: Some(a.sealed.clone()),
        ..Default::default()
    };
    let audit = log[0].clone();
    store
        .update(
            ws,
            &name("C"),
            c.meta.version,
            &change,
            c.meta.updated_at,
            &audit,
        )
        .await
        .unwrap();
    assert!(matches!(
        vault.read(ws, &Actor::local("w"), &name("C")).await,
        Err(StoreError::Undecryptable(_))
    ));

    // Another key is refused before any value is touched.
    let other = Vault::open(store.clone(), &MasterKey::generate(), ValueLimit::default()).await;
    assert!(matches!(other, Err(StoreError::KeyMismatch(_))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_store_story() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("s.db"), true)
        .await
        .unwrap();
    store_story(Arc::new(store)).await;
}

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
    vault
        .create(DEFAULT_WORKSPACE, &Actor::local("u"), new("A", "1"))
        .await
        .unwrap();
    let again = Vault::open(Arc::new(b), &key, ValueLimit::default())
        .await
        .unwrap();
    assert_eq!(again.list(DEFAULT_WORKSPACE).await.unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_store_story() {
    let Some(admin) = crate::support::postgres_url("postgres_store_story") else {
        return;
    };
    let db = crate::support::TempDatabase::new(&admin);
    // Two replicas starting at once on a new database: the migration runs once.
    let (a, b) = tokio::join!(PgStore::open(&db.url, 4), PgStore::open(&db.url, 4));
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(db.query("SELECT count(*) FROM secretfs_migrations"), "1");
    drop(b);
    store_story(Arc::new(a)).await;
    // PostgreSQL holds ciphertext only.
    let dump = db.query("SELECT encode(sealed, 'escape') FROM secrets");
    assert!(!dump.contains("one") && !dump.contains("three"), "{dump}");
}
