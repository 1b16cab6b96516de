//! The conformance suite every store must pass, through the service (the one door): run on
//! SQLite always and on PostgreSQL when `TEST_DATABASE_URL` is set. It covers the rows (values,
//! versions, concurrency, sealing), and the access model's timelines: grants by id across a
//! delete and a re-create of the same name, a deleted user's secrets and a re-created user of
//! the same name, derived tokens bounded by their parent, preconditions that make a batch fail
//! whole, and the audit record of every action.

use std::sync::Arc;

use secretfs::auth::TokenKind;
use secretfs::crypto::MasterKey;
use secretfs::secret::{SecretKind, SecretName, SecretValue, Timestamp, ValueLimit, Visibility};
use secretfs::service::{
    AuditAction, Caller, DEFAULT_WORKSPACE, MintUser, MintWorkload, NewBinding, NewSecret, Options,
    SecretUpdate, Service, ServiceError, WorkloadQuery,
};
use secretfs::store::postgres::PgStore;
use secretfs::store::sqlite::SqliteStore;
use secretfs::store::{
    Batch, Change, Expected, Op, SecretFilter, Store, StoreError, TokenFilter, Vault, new_id,
};

fn name(s: &str) -> SecretName {
    SecretName::parse(s).unwrap()
}

fn value(s: &str) -> SecretValue {
    SecretValue::from_slice(s.as_bytes(), ValueLimit::default()).unwrap()
}

pub(crate) fn new(n: &str, v: &str, visibility: Visibility) -> NewSecret {
    NewSecret {
        name: name(n),
        kind: SecretKind::Custom,
        visibility,
        tags: vec![],
        value: value(v),
    }
}

pub(crate) const WS: &str = DEFAULT_WORKSPACE;

/// A user created by `admin`, as the caller their first token makes them.
async fn user(service: &Service, admin: &Caller, n: &str) -> Caller {
    let (token, _) = service
        .add_user(admin, n, false, vec![WS.to_owned()])
        .await
        .unwrap();
    service
        .authenticate(token.expose_token(), "")
        .await
        .unwrap()
}

/// What a workload token reads now: name -> value.
async fn workload_values(
    service: &Service,
    token: &str,
) -> Result<Vec<(String, String)>, ServiceError> {
    let caller = service.authenticate(token, "").await?;
    let answer = service
        .workload_read(
            &caller,
            WorkloadQuery {
                values: true,
                ..Default::default()
            },
        )
        .await?;
    Ok(answer
        .secrets
        .into_iter()
        .map(|s| {
            let v = String::from_utf8(s.value.unwrap().expose_secret().to_vec()).unwrap();
            (s.meta.name.to_string(), v)
        })
        .collect())
}

async fn mint(service: &Service, caller: &Caller, names: &[&str]) -> String {
    let (token, _) = service
        .mint_workload(
            caller,
            WS,
            MintWorkload {
                secrets: names.iter().map(|n| name(n)).collect(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    token.expose_token().to_owned()
}

async fn store_story(store: Arc<dyn Store>) {
    let key = MasterKey::generate();
    let vault = Vault::open(store.clone(), &key, ValueLimit::default())
        .await
        .unwrap();
    let service = Arc::new(Service::new(vault, Options::default(), None));
    let local = service.local_caller(true).await.unwrap();

    rows_and_versions(&service, &local, &store).await;
    grants_are_by_id(&service, &local).await;
    deleted_users_take_their_private_secrets(&service, &local, &store).await;
    derived_tokens_are_bounded(&service, &local).await;
    preconditions_fail_the_whole_batch(&service, &local, &store).await;
    batches_applied_together_stand_alone(&service, &local, &store).await;
    quiet_batches_land_as_one_by_one_would(&service, &local, &store).await;
    a_user_deleted_while_creating_keeps_nothing(&service, &local, &store).await;
    every_action_is_audited(&service, &local, &store).await;

    // Another key is refused before any value is touched.
    let other = Vault::open(store.clone(), &MasterKey::generate(), ValueLimit::default()).await;
    assert!(matches!(other, Err(StoreError::KeyMismatch(_))));
}

async fn rows_and_versions(service: &Arc<Service>, local: &Caller, store: &Arc<dyn Store>) {
    let created = service
        .create_secrets(local, WS, vec![new("A", "one", Visibility::Private)])
        .await
        .unwrap();
    assert_eq!(created[0].meta.version, 1);
    assert_eq!(created[0].meta.owner, local.user().name);
    assert!(matches!(
        service
            .create_secrets(local, WS, vec![new("A", "x", Visibility::Private)])
            .await,
        Err(ServiceError::Store(StoreError::AlreadyExists(_)))
    ));
    service
        .create_secrets(local, WS, vec![new("B", "two", Visibility::Private)])
        .await
        .unwrap();
    let names: Vec<String> = service
        .list_secrets(local, WS)
        .await
        .unwrap()
        .iter()
        .map(|m| m.name.to_string())
        .collect();
    assert_eq!(names, ["A", "B"]);
    let (m, v) = service
        .local_read(local, WS, &[name("A")])
        .await
        .unwrap()
        .pop()
        .unwrap()
        .unwrap();
    assert_eq!((m.version, v.expose_secret()), (1, &b"one"[..]));

    // Concurrent replacements: every one lands, each on its own version.
    let mut tasks = Vec::new();
    for i in 0..8 {
        let (service, local) = (service.clone(), local.clone());
        tasks.push(tokio::spawn(async move {
            service
                .update_secret(
                    &local,
                    WS,
                    &name("A"),
                    SecretUpdate {
                        value: Some(value(&format!("v{i}"))),
                        ..Default::default()
                    },
                )
                .await
                .unwrap()
                .meta
                .version
        }));
    }
    let mut versions = Vec::new();
    for t in tasks {
        versions.push(t.await.unwrap());
    }
    versions.sort();
    assert_eq!(versions, (2..=9).collect::<Vec<u64>>());

    // A metadata change keeps the version and the value's update time.
    let before = service.secret(local, WS, &name("A")).await.unwrap();
    assert_eq!(before.version, 9);
    let after = service
        .update_secret(
            local,
            WS,
            &name("A"),
            SecretUpdate {
                visibility: Some(Visibility::Public),
                tags: Some(vec!["t".into()]),
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .meta;
    assert_eq!(
        (after.version, after.updated_at),
        (before.version, before.updated_at)
    );
    assert_eq!(
        (after.visibility, after.tags.as_slice()),
        (Visibility::Public, &["t".to_owned()][..])
    );

    // Reads report each missing name on its own.
    let results = service
        .local_read(local, WS, &[name("A"), name("GONE"), name("B")])
        .await
        .unwrap();
    assert!(results[0].is_ok() && results[2].is_ok());
    assert!(matches!(results[1], Err(ServiceError::NotFound(_))));

    service.delete_secret(local, WS, &name("B")).await.unwrap();
    assert!(matches!(
        service.delete_secret(local, WS, &name("B")).await,
        Err(ServiceError::NotFound(_))
    ));
    assert!(matches!(
        service
            .update_secret(local, WS, &name("B"), SecretUpdate::default())
            .await,
        Err(ServiceError::NotFound(_))
    ));

    // A ciphertext moved to another row does not open there.
    service
        .create_secrets(local, WS, vec![new("C", "three", Visibility::Private)])
        .await
        .unwrap();
    let rows = store
        .secrets(SecretFilter::Named(WS, &[name("A"), name("C")]))
        .await
        .unwrap();
    let (a, c) = (&rows[0], &rows[1]);
    store
        .apply(&Batch {
            ops: vec![Op::UpdateSecret {
                id: c.id.clone(),
                name: c.meta.name.clone(),
                expected_version: c.meta.version,
                expected: Expected {
                    owner_id: c.owner_id.clone(),
                    visibility: c.meta.visibility,
                },
                change: Change {
                    sealed: Some(a.sealed.clone()),
                    ..Default::default()
                },
                at: Timestamp::now(),
            }],
            audit: Vec::new(),
        })
        .await
        .unwrap();
    let read = service.local_read(local, WS, &[name("C")]).await.unwrap();
    assert!(
        matches!(
            read[0],
            Err(ServiceError::Store(StoreError::Undecryptable(_)))
        ),
        "{:?}",
        read[0].as_ref().err()
    );
    service.delete_secret(local, WS, &name("C")).await.unwrap();
}

/// A workload token is bound to the secret it was minted for, not to its name: after a delete
/// and a re-create of the name by someone else, the old token reads nothing.
async fn grants_are_by_id(service: &Arc<Service>, local: &Caller) {
    let alice = user(service, local, "alice").await;
    let bob = user(service, local, "bob").await;
    service
        .create_secrets(
            &alice,
            WS,
            vec![new("deploy_key", "alice-key", Visibility::Public)],
        )
        .await
        .unwrap();
    let token = mint(service, &alice, &["deploy_key"]).await;
    assert_eq!(
        workload_values(service, &token).await.unwrap(),
        [("deploy_key".to_owned(), "alice-key".to_owned())]
    );
    service
        .delete_secret(&alice, WS, &name("deploy_key"))
        .await
        .unwrap();
    service
        .create_secrets(
            &bob,
            WS,
            vec![new("deploy_key", "bob-key", Visibility::Public)],
        )
        .await
        .unwrap();
    assert_eq!(workload_values(service, &token).await.unwrap(), []);
    // Asked for by name, the old grant's secret is missing like any other.
    let caller = service.authenticate(&token, "").await.unwrap();
    let named = service
        .workload_read(
            &caller,
            WorkloadQuery {
                names: Some(vec![name("deploy_key")]),
                values: true,
                ..Default::default()
            },
        )
        .await;
    assert!(matches!(named, Err(ServiceError::NotFound(_))));
    // Bob's own token for it works.
    let bobs = mint(service, &bob, &["deploy_key"]).await;
    assert_eq!(
        workload_values(service, &bobs).await.unwrap(),
        [("deploy_key".to_owned(), "bob-key".to_owned())]
    );
    service
        .delete_secret(&bob, WS, &name("deploy_key"))
        .await
        .unwrap();
}

/// Deleting a user removes their tokens and private secrets (their public ones stay, owned by
/// the tombstone); a new user of the same name starts with nothing, and the names are free.
async fn deleted_users_take_their_private_secrets(
    service: &Arc<Service>,
    local: &Caller,
    store: &Arc<dyn Store>,
) {
    let eve = user(service, local, "eve").await;
    service
        .create_secrets(
            &eve,
            WS,
            vec![
                new("eve_private", "p", Visibility::Private),
                new("eve_public", "q", Visibility::Public),
            ],
        )
        .await
        .unwrap();
    let token = mint(service, &eve, &["eve_private", "eve_public"]).await;
    let removal = service.delete_user(local, "eve", None).await.unwrap();
    assert_eq!(removal.deleted, [name("eve_private")]);
    assert_eq!(removal.kept, [name("eve_public")]);
    assert_eq!(removal.tokens, 2, "the first token and the workload token");
    assert!(matches!(
        service.authenticate(&token, "").await,
        Err(ServiceError::Unauthorized)
    ));
    let eve_id = eve.user().id.clone();
    assert!(
        store
            .tokens(TokenFilter::User(&eve_id))
            .await
            .unwrap()
            .is_empty()
    );
    let again = user(service, local, "eve").await;
    assert_ne!(again.user().id, eve_id, "ids are never reused");
    let visible: Vec<String> = service
        .list_secrets(&again, WS)
        .await
        .unwrap()
        .iter()
        .map(|m| m.name.to_string())
        .collect();
    assert_eq!(
        visible,
        ["A", "eve_public"],
        "the new eve sees only public secrets"
    );
    // The old private name is free; the kept public secret is not hers to change.
    service
        .create_secrets(
            &again,
            WS,
            vec![new("eve_private", "new", Visibility::Private)],
        )
        .await
        .unwrap();
    assert!(matches!(
        service.delete_secret(&again, WS, &name("eve_public")).await,
        Err(ServiceError::Forbidden(_))
    ));
    // --transfer-to hands everything over.
    let heir = user(service, local, "heir").await;
    let removal = service
        .delete_user(local, "eve", Some("heir"))
        .await
        .unwrap();
    assert_eq!(removal.transferred, [name("eve_private")]);
    let mine: Vec<String> = service
        .list_secrets(&heir, WS)
        .await
        .unwrap()
        .iter()
        .filter(|m| m.owner == "heir")
        .map(|m| m.name.to_string())
        .collect();
    assert_eq!(mine, ["eve_private"]);
    service.delete_user(local, "heir", None).await.unwrap();
    service
        .delete_secret(local, WS, &name("eve_public"))
        .await
        .unwrap();
}

/// A token minted with a token never outlives it.
async fn derived_tokens_are_bounded(service: &Arc<Service>, local: &Caller) {
    let carol = user(service, local, "carol").await;
    let (short, record) = service
        .mint_user(
            &carol,
            "carol",
            MintUser {
                ttl: Some("30s".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let limit = record.expires_at.unwrap();
    let short = service
        .authenticate(short.expose_token(), "")
        .await
        .unwrap();
    // Asked for no expiry, or a long one: it gets the parent's.
    let (_, child) = service
        .mint_user(&short, "carol", MintUser::default())
        .await
        .unwrap();
    assert_eq!(child.expires_at, Some(limit));
    assert_eq!(
        child.minted_by.as_deref(),
        Some(short.token().unwrap().id.as_str())
    );
    service
        .create_secrets(&short, WS, vec![new("carol_s", "c", Visibility::Private)])
        .await
        .unwrap();
    let (_, workload) = service
        .mint_workload(
            &short,
            WS,
            MintWorkload {
                secrets: vec![name("carol_s")],
                ttl: Some("1h".into()),
                max_ttl: Some("30d".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(workload.kind, TokenKind::Workload);
    assert!(workload.expires_at.unwrap() <= limit && workload.max_expires_at.unwrap() <= limit);
    // A sub-second life is refused with the rule.
    let refused = service
        .mint_user(
            &carol,
            "carol",
            MintUser {
                ttl: Some("500ms".into()),
                ..Default::default()
            },
        )
        .await;
    assert!(
        matches!(&refused, Err(ServiceError::Invalid { message, .. }) if message.contains("at least") || message.contains("between 1s")),
        "{refused:?}"
    );
    service.delete_user(local, "carol", None).await.unwrap();
}

/// A batch whose precondition no longer holds changes nothing.
async fn preconditions_fail_the_whole_batch(
    service: &Arc<Service>,
    local: &Caller,
    store: &Arc<dyn Store>,
) {
    let dave = user(service, local, "dave").await;
    service
        .create_secrets(&dave, WS, vec![new("dave_1", "d", Visibility::Private)])
        .await
        .unwrap();
    let owner = dave.user().id.clone();
    let refused = store
        .apply(&Batch {
            ops: vec![
                Op::TombstoneUser {
                    id: owner.clone(),
                    at: Timestamp::now(),
                },
                // Says dave owns nothing: wrong.
                Op::ExpectOwned {
                    owner_id: owner.clone(),
                    expected: Vec::new(),
                },
            ],
            audit: Vec::new(),
        })
        .await;
    assert!(matches!(refused, Err(StoreError::Conflict)), "{refused:?}");
    // A write decided on a private secret does not land on it once it is public.
    let row = &store
        .secrets(SecretFilter::Named(WS, &[name("dave_1")]))
        .await
        .unwrap()[0];
    service
        .update_secret(
            &dave,
            WS,
            &name("dave_1"),
            SecretUpdate {
                visibility: Some(Visibility::Public),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let stale = store
        .apply(&Batch {
            ops: vec![Op::DeleteSecret {
                id: row.id.clone(),
                name: row.meta.name.clone(),
                expected: Expected {
                    owner_id: owner.clone(),
                    visibility: Visibility::Private,
                },
            }],
            audit: Vec::new(),
        })
        .await;
    assert!(
        matches!(stale, Err(StoreError::VersionConflict(_))),
        "{stale:?}"
    );
    // The tombstone before the failed check was rolled back: dave still acts.
    service
        .create_secrets(&dave, WS, vec![new("dave_2", "d", Visibility::Private)])
        .await
        .unwrap();
    // A secret for a user who is not live is refused by the store itself.
    let ghost = store
        .apply(&Batch {
            ops: vec![Op::InsertUser(secretfs::service::User {
                id: new_id(),
                name: "dave".into(),
                admin: false,
                created_at: Timestamp::now(),
                deleted_at: None,
                workspaces: Vec::new(),
            })],
            audit: Vec::new(),
        })
        .await;
    assert!(matches!(ghost, Err(StoreError::UserExists(_))), "{ghost:?}");
    service.delete_user(local, "dave", None).await.unwrap();
}

/// Batches applied together (`apply_each`, what concurrent identity exchanges share) each stand
/// alone: the one whose precondition fails is rolled back whole and alone, the others land.
async fn batches_applied_together_stand_alone(
    service: &Arc<Service>,
    local: &Caller,
    store: &Arc<dyn Store>,
) {
    let erin = user(service, local, "erin").await;
    let fay = user(service, local, "fay").await;
    let gus = user(service, local, "gus").await;
    service
        .create_secrets(&fay, WS, vec![new("fay_1", "f", Visibility::Private)])
        .await
        .unwrap();
    let tombstone = |c: &Caller| Op::TombstoneUser {
        id: c.user().id.clone(),
        at: Timestamp::now(),
    };
    let batch = |ops| Batch {
        ops,
        audit: Vec::new(),
    };
    let results = store
        .apply_each(&[
            batch(vec![tombstone(&erin)]),
            // Says fay owns nothing: wrong, so her tombstone must not land either.
            batch(vec![
                tombstone(&fay),
                Op::ExpectOwned {
                    owner_id: fay.user().id.clone(),
                    expected: Vec::new(),
                },
            ]),
            batch(vec![tombstone(&gus)]),
        ])
        .await;
    assert!(results[0].is_ok(), "{results:?}");
    assert!(
        matches!(results[1], Err(StoreError::Conflict)),
        "{results:?}"
    );
    assert!(results[2].is_ok(), "{results:?}");
    for (gone, who) in [(true, &erin), (false, &fay), (true, &gus)] {
        let created = service
            .create_secrets(
                who,
                WS,
                vec![new(
                    &format!("{}_2", who.user().name),
                    "x",
                    Visibility::Private,
                )],
            )
            .await;
        assert_eq!(created.is_err(), gone, "{}: {created:?}", who.user().name);
    }
    service.delete_user(local, "fay", None).await.unwrap();
}

/// Batches that only add tokens (identity exchanges, which `apply_each` writes a few
/// statements for all) end as each would alone: a removed binding or a deleted user fails its
/// batch only, the others land with their grants and audit records; a token id already taken
/// undoes the shortcut and the batches go one by one, the taken one failing alone. Enough
/// batches to fill several multi-row inserts.
async fn quiet_batches_land_as_one_by_one_would(
    service: &Arc<Service>,
    local: &Caller,
    store: &Arc<dyn Store>,
) {
    use secretfs::store::{AuditRecord, Grant, TargetKind, TokenRecord};
    let quinn = user(service, local, "quinn").await;
    let ursula = user(service, local, "ursula").await;
    service
        .create_secrets(&quinn, WS, vec![new("quinn_s", "q", Visibility::Public)])
        .await
        .unwrap();
    let secret_id = store
        .secrets(SecretFilter::Owner(&quinn.user().id))
        .await
        .unwrap()[0]
        .id
        .clone();
    service
        .add_binding(
            local,
            NewBinding {
                user: "quinn".into(),
                secrets: vec![name("quinn_s")],
                ..story_binding("quiet")
            },
        )
        .await
        .unwrap();
    let binding = store
        .bindings()
        .await
        .unwrap()
        .into_iter()
        .find(|b| b.name == "quiet")
        .unwrap()
        .id;
    service.delete_user(local, "ursula", None).await.unwrap();
    let exchange = |id: &str, binding: &str, who: &Caller| Batch {
        ops: vec![
            Op::ExpectBinding {
                id: binding.to_owned(),
            },
            Op::InsertToken(TokenRecord {
                id: id.to_owned(),
                hash: vec![7; 32],
                kind: TokenKind::Workload,
                user_id: who.user().id.clone(),
                user: who.user().name.clone(),
                workspace: Some(WS.into()),
                grants: vec![Grant {
                    secret_id: secret_id.clone(),
                    name: name("quinn_s"),
                }],
                created_at: Timestamp::now(),
                expires_at: None,
                max_expires_at: None,
                ttl_secs: None,
                revoked_at: None,
                description: "quiet".into(),
                minted_by: Some(format!("binding:{binding}")),
            }),
        ],
        audit: vec![AuditRecord {
            id: 0,
            at: Timestamp::now(),
            first_at: None,
            count: 1,
            workspace: WS.into(),
            actor: "identity:quiet".into(),
            actor_id: who.user().id.clone(),
            action: AuditAction::IdentityExchange,
            target_kind: TargetKind::Token,
            target: id.to_owned(),
            target_id: id.to_owned(),
            version: 0,
            detail: "quiet".into(),
            address: String::new(),
        }],
    };
    // 140 batches: every 7th names a binding that is gone, every 7th after it a deleted user.
    let ids: Vec<String> = (0..140).map(|_| new_id()).collect();
    let batches: Vec<Batch> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| match i % 7 {
            3 => exchange(id, "no-such-binding", &quinn),
            5 => exchange(id, &binding, &ursula),
            _ => exchange(id, &binding, &quinn),
        })
        .collect();
    assert!(batches.iter().all(Batch::quiet));
    let results = store.apply_each(&batches).await;
    // The second round repeats an id the first wrote: the shortcut fails, one by one lands.
    let again: Vec<String> = (0..40).map(|_| new_id()).collect();
    let mut second: Vec<Batch> = again
        .iter()
        .map(|id| exchange(id, &binding, &quinn))
        .collect();
    second[17] = exchange(&ids[0], &binding, &quinn);
    let second_results = store.apply_each(&second).await;
    let audited: Vec<String> = store
        .audit(&secretfs::store::AuditQuery {
            after: None,
            since: Timestamp::from_nanos(0),
            workspace: None,
            limit: 100_000,
            newest: false,
        })
        .await
        .unwrap()
        .into_iter()
        .filter(|a| a.detail == "quiet")
        .map(|a| a.target_id)
        .collect();
    // Stored with its grant and audited once, or neither.
    let check = async |id: &String, landed: bool| {
        let stored = store.tokens(TokenFilter::Id(id)).await.unwrap();
        let records = audited.iter().filter(|a| *a == id).count();
        if landed {
            assert_eq!(stored.len(), 1, "{id} was not stored");
            assert_eq!(stored[0].grants.len(), 1, "{id}: {:?}", stored[0].grants);
            assert_eq!(records, 1, "{id}: {records} audit records");
        } else {
            assert!(
                stored.is_empty(),
                "{id}: a refused exchange stored its token"
            );
            assert_eq!(records, 0, "{id}: a refused exchange was audited as done");
        }
    };
    for (i, (id, r)) in ids.iter().zip(&results).enumerate() {
        match i % 7 {
            3 => assert!(matches!(r, Err(StoreError::BindingNotFound(_))), "{r:?}"),
            5 => assert!(matches!(r, Err(StoreError::UserNotFound(_))), "{r:?}"),
            _ => assert!(r.is_ok(), "{id}: {r:?}"),
        }
        check(id, r.is_ok()).await;
    }
    for (i, (id, r)) in again.iter().zip(&second_results).enumerate() {
        if i == 17 {
            assert!(r.is_err(), "a taken token id was inserted again");
        } else {
            assert!(r.is_ok(), "{id}: {r:?}");
            check(id, true).await;
        }
    }
    // The first round's token under the repeated id is the one stored, once.
    assert_eq!(audited.iter().filter(|a| **a == ids[0]).count(), 1);
    // Its removal revokes what was minted in its name, the shortcut's tokens too.
    service.remove_binding(local, "quiet").await.unwrap();
    let revoked = store.tokens(TokenFilter::Id(&ids[0])).await.unwrap();
    assert!(
        revoked[0].revoked_at.is_some(),
        "{:?}",
        revoked[0].revoked_at
    );
}

/// Creates by a user racing their deletion: whichever commits first, nothing private of theirs
/// survives, and every create either failed or was deleted with them.
async fn a_user_deleted_while_creating_keeps_nothing(
    service: &Arc<Service>,
    local: &Caller,
    store: &Arc<dyn Store>,
) {
    let rae = user(service, local, "rae").await;
    let id = rae.user().id.clone();
    let creates: Vec<_> = (0..40)
        .map(|i| {
            let (service, rae) = (service.clone(), rae.clone());
            tokio::spawn(async move {
                tokio::time::sleep(std::time::Duration::from_millis(i * 2)).await;
                let n = format!("rae_{i}");
                service
                    .create_secrets(&rae, WS, vec![new(&n, "r", Visibility::Private)])
                    .await
                    .map(|_| n)
            })
        })
        .collect();
    tokio::time::sleep(std::time::Duration::from_millis(30)).await;
    let removal = service.delete_user(local, "rae", None).await.unwrap();
    let mut created = Vec::new();
    for c in creates {
        if let Ok(n) = c.await.unwrap() {
            created.push(n);
        }
    }
    // A create decided before the deletion but committed after it is refused.
    let late = service
        .create_secrets(&rae, WS, vec![new("rae_late", "r", Visibility::Private)])
        .await;
    assert!(matches!(late, Err(ServiceError::Unauthorized)), "{late:?}");
    let left = store.secrets(SecretFilter::Owner(&id)).await.unwrap();
    assert!(
        left.is_empty(),
        "left behind: {:?}",
        left.iter()
            .map(|s| s.meta.name.as_str())
            .collect::<Vec<_>>()
    );
    let deleted: Vec<String> = removal
        .deleted
        .iter()
        .map(|n| n.as_str().to_owned())
        .collect();
    for n in &created {
        assert!(
            deleted.contains(n),
            "{n} was created but not deleted: {deleted:?}"
        );
    }
}

/// Every action the service can take writes its record, with actor and target by name and id,
/// and no value or token.
async fn every_action_is_audited(service: &Arc<Service>, local: &Caller, store: &Arc<dyn Store>) {
    let log = store
        .audit(&secretfs::store::AuditQuery {
            after: None,
            since: Timestamp::from_nanos(0),
            workspace: None,
            limit: 100_000,
            newest: false,
        })
        .await
        .unwrap();
    let seen = |a: AuditAction| log.iter().any(|r| r.action == a);
    // Still to do in this story: a workspace, a member removed, a renewal, a revocation, a
    // key rotation (needs a key file: keys.rs) and a backup (SQLite only: keys.rs).
    for a in AuditAction::ALL {
        if matches!(
            a,
            AuditAction::WorkspaceCreate
                | AuditAction::Visibility
                | AuditAction::MemberRemove
                | AuditAction::TokenRenew
                | AuditAction::TokenRevoke
                | AuditAction::Rekey
                | AuditAction::Backup
                | AuditAction::IdentityAdd
                | AuditAction::IdentityRemove
                | AuditAction::IdentityExchange
                | AuditAction::IdentityExchangeRefused
                | AuditAction::Brokered
                | AuditAction::WorkspaceAudit
                | AuditAction::AuthFailed
        ) {
            continue;
        }
        assert!(seen(a), "no {a:?} record in {log:#?}");
    }
    service.create_workspace(local, "team").await.unwrap();
    service
        .set_audit_settings(
            local,
            secretfs::service::NewAuditSettings {
                workspace: "team".into(),
                coalesce: Some(std::time::Duration::from_secs(30)),
                retention: None,
            },
        )
        .await
        .unwrap();
    // A token nobody minted: refused, and recorded.
    assert!(
        service
            .authenticate("sfs_w_0123456789abcdef_nottherealsecret", "10.0.0.1")
            .await
            .is_err()
    );
    let frank = user(service, local, "frank").await;
    service.add_member(local, "team", "frank").await.unwrap();
    service.remove_member(local, "team", "frank").await.unwrap();
    service
        .create_secrets(&frank, WS, vec![new("frank_s", "f", Visibility::Private)])
        .await
        .unwrap();
    service
        .update_secret(
            &frank,
            WS,
            &name("frank_s"),
            SecretUpdate {
                visibility: Some(Visibility::Public),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let token = mint(service, &frank, &["frank_s"]).await;
    let workload = service.authenticate(&token, "").await.unwrap();
    service.renew(&workload).await.unwrap();
    // A call a launcher's broker made with the token's secret.
    let call = secretfs::protocol::BrokeredCall {
        secret: "frank_s".into(),
        upstream: "https://api.example.com/v1".into(),
        method: "POST".into(),
        path: "/v1/chat/completions".into(),
        status: 200,
        pid: 42,
        uid: 1000,
    };
    assert_eq!(
        service.record_brokered(&workload, &[call]).await.unwrap(),
        1
    );
    service
        .revoke_token(&frank, &workload.token().unwrap().id)
        .await
        .unwrap();
    let exchanged = identity_chapter(service, local, &frank).await;
    let log = store
        .audit(&secretfs::store::AuditQuery {
            after: None,
            since: Timestamp::from_nanos(0),
            workspace: None,
            limit: 100_000,
            newest: false,
        })
        .await
        .unwrap();
    for a in AuditAction::ALL {
        if matches!(a, AuditAction::Rekey | AuditAction::Backup) {
            continue;
        }
        assert!(log.iter().any(|r| r.action == a), "no {a:?} record");
    }
    // Names and ids of actor and target; never a value or a token.
    let mint_record = log
        .iter()
        .rev()
        .find(|r| r.action == AuditAction::TokenMint)
        .unwrap();
    assert_eq!(mint_record.actor, "frank");
    assert_eq!(mint_record.actor_id, frank.user().id);
    assert_eq!(mint_record.target_id, workload.token().unwrap().id);
    let text = format!("{log:?}");
    for needle in ["one", "alice-key", "bob-key", token.as_str()] {
        assert!(
            !text.contains(&format!("\"{needle}\"")) && !text.contains(token.as_str()),
            "{needle} in the audit log"
        );
    }
    for t in &exchanged {
        // A JWT's signature is after its last dot; a secretfs token's secret after
        // `sfs_w_ID_`. Both are base64url, which may hold `_`: split at the last `_` and a
        // fragment of a few characters was searched for, which the log held by chance now and
        // then.
        let signature = match t.rsplit_once('.') {
            Some((_, sig)) => sig,
            None => t.splitn(4, '_').nth(3).unwrap(),
        };
        assert!(
            signature.len() >= 16,
            "{signature:?} is too short to search for"
        );
        assert!(
            !text.contains(signature),
            "an identity token in the audit log"
        );
    }
    assert!(log.windows(2).all(|w| w[0].at <= w[1].at));
    // A binding whose user left its workspace, then whose user is gone: refused, and audited
    // as refused, each with its reason.
    let newest = || async {
        store
            .audit(&secretfs::store::AuditQuery {
                after: None,
                since: Timestamp::from_nanos(0),
                workspace: None,
                limit: 1,
                newest: true,
            })
            .await
            .unwrap()
            .remove(0)
    };
    service.remove_member(local, WS, "frank").await.unwrap();
    let refused = service
        .exchange("127.0.0.1", &exchanged[0], Some("kept"))
        .await;
    assert!(
        matches!(&refused, Err(ServiceError::Refused { .. })),
        "{refused:?}"
    );
    let last = newest().await;
    assert!(
        last.detail.contains("no longer a member of workspace"),
        "{last:?}"
    );
    service.delete_user(local, "frank", None).await.unwrap();
    let refused = service
        .exchange("127.0.0.1", &exchanged[0], Some("kept"))
        .await;
    assert!(
        matches!(&refused, Err(ServiceError::Refused { message, .. }) if message.contains("cannot be used now")),
        "{refused:?}"
    );
    let last = newest().await;
    assert_eq!(last.action, AuditAction::IdentityExchangeRefused);
    assert!(
        last.detail.contains("its user no longer exists"),
        "{last:?}"
    );
}

/// A test-only Ed25519 key (PKCS#8, base64 DER): the store story signs its own identity token
/// (the independent issuer is `workload_identity.rs`'s; this chapter is about what the store
/// keeps).
const STORY_KEY: &str = "MC4CAQAwBQYDK2VwBCIEINHIzFEp0zNvx74UaSl7OQ3wv9zSHWYfL12KkMAypHtH";
const STORY_JWKS: &str = r#"{"keys": [{"kty": "OKP", "crv": "Ed25519", "kid": "story", "alg": "EdDSA", "x": "J88FKwBqEAUlfnJ_WK3eo5q07vgf-snEjbL9-qmnxA0"}]}"#;

/// Frank's `frank_s` for tokens of `job:*` from the story's issuer, its keys inline.
fn story_binding(binding: &str) -> NewBinding {
    NewBinding {
        name: binding.into(),
        workspace: WS.into(),
        issuer: "https://issuer.example".into(),
        audience: "secretfs".into(),
        subject: "job:*".into(),
        user: "frank".into(),
        secrets: vec![name("frank_s")],
        jwks: Some(STORY_JWKS.into()),
        ..Default::default()
    }
}

/// A binding added, a token exchanged and one refused, the binding removed with the token it
/// minted: every identity action, on this store. Returns the tokens involved (presented and
/// minted), which the audit must not hold.
async fn identity_chapter(service: &Arc<Service>, local: &Caller, frank: &Caller) -> Vec<String> {
    use base64::Engine;
    service
        .add_binding(local, story_binding("story"))
        .await
        .unwrap();
    let now = Timestamp::now().nanos() / 1_000_000_000;
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
    header.kid = Some("story".into());
    let presented = jsonwebtoken::encode(
        &header,
        &serde_json::json!({"iss": "https://issuer.example", "aud": "secretfs", "sub": "job:1",
                            "iat": now, "exp": now + 600}),
        &jsonwebtoken::EncodingKey::from_ed_der(
            &base64::engine::general_purpose::STANDARD
                .decode(STORY_KEY)
                .unwrap(),
        ),
    )
    .unwrap();
    let exchanged = service
        .exchange("127.0.0.1", &presented, None)
        .await
        .unwrap();
    let minted = exchanged.token.expose_token().to_owned();
    let workload = service.authenticate(&minted, "").await.unwrap();
    let grants = &workload.token().unwrap().grants;
    assert_eq!(grants.len(), 1);
    assert_eq!(grants[0].name.as_str(), "frank_s");
    assert_eq!(
        workload_values(service, &minted).await.unwrap(),
        [("frank_s".to_owned(), "f".to_owned())]
    );
    // Deleted and created again under its name: a new secret, which the binding (granting by
    // id) does not give, to the token already minted nor to a new exchange.
    service
        .delete_secret(frank, WS, &name("frank_s"))
        .await
        .unwrap();
    service
        .create_secrets(frank, WS, vec![new("frank_s", "f2", Visibility::Public)])
        .await
        .unwrap();
    assert!(workload_values(service, &minted).await.unwrap().is_empty());
    let again = service
        .exchange("127.0.0.1", &presented, None)
        .await
        .unwrap();
    assert!(
        workload_values(service, again.token.expose_token())
            .await
            .unwrap()
            .is_empty(),
        "a re-created name reached an old binding"
    );
    let refused = service.exchange("127.0.0.1", "e30.e30.sig", None).await;
    assert!(
        matches!(refused, Err(ServiceError::Refused { .. })),
        "{refused:?}"
    );
    assert_eq!(service.bindings(local).await.unwrap().len(), 1);
    service.remove_binding(local, "story").await.unwrap();
    assert!(service.bindings(local).await.unwrap().is_empty());
    assert!(
        matches!(
            service.authenticate(&minted, "").await,
            Err(ServiceError::Unauthorized)
        ),
        "a removed binding's token still authenticates"
    );
    // Exchanges racing the binding's removal: whichever commits first, no token an exchange
    // minted outlives the binding (its insert is guarded by the binding's row, locked).
    service
        .add_binding(local, story_binding("race"))
        .await
        .unwrap();
    let racers: Vec<_> = (0..24)
        .map(|i| {
            let (service, presented) = (service.clone(), presented.clone());
            tokio::spawn(async move {
                tokio::time::sleep(std::time::Duration::from_millis(i)).await;
                service
                    .exchange("127.0.0.1", &presented, Some("race"))
                    .await
                    .map(|x| x.token.expose_token().to_owned())
            })
        })
        .collect();
    tokio::time::sleep(std::time::Duration::from_millis(8)).await;
    service.remove_binding(local, "race").await.unwrap();
    let mut minted_in_race = 0;
    for r in racers {
        if let Ok(token) = r.await.unwrap() {
            minted_in_race += 1;
            assert!(
                matches!(
                    service.authenticate(&token, "").await,
                    Err(ServiceError::Unauthorized)
                ),
                "a token minted while its binding was removed still authenticates"
            );
        }
    }
    eprintln!("identity race: {minted_in_race} of 24 exchanges minted before the removal");
    // Kept past frank's deletion (at the end of the story): then it mints nothing.
    service
        .add_binding(local, story_binding("kept"))
        .await
        .unwrap();
    // Concurrent exchanges commit together, and a caller dropped while it commits for the
    // others strands none of them: every exchange not cancelled is answered, with its token or
    // (its commit cut short with the caller's) a plea to try again. (The server runs each
    // exchange on a task of its own, which a client hanging up does not cancel.)
    let exchanges: Vec<_> = (0..60)
        .map(|_| {
            let (service, presented) = (service.clone(), presented.clone());
            tokio::spawn(async move {
                service
                    .exchange("127.0.0.1", &presented, Some("kept"))
                    .await
                    .map(|x| x.token.expose_token().to_owned())
            })
        })
        .collect();
    for (i, x) in exchanges.iter().enumerate() {
        if i % 4 == 1 {
            tokio::task::yield_now().await;
            x.abort();
        }
    }
    let mut answered = 0;
    for (i, x) in exchanges.into_iter().enumerate() {
        let done = tokio::time::timeout(std::time::Duration::from_secs(20), x)
            .await
            .unwrap_or_else(|_| panic!("exchange {i} was never answered"));
        match done {
            Ok(Ok(token)) => {
                service.authenticate(&token, "").await.unwrap();
                answered += 1;
            }
            Ok(Err(ServiceError::Store(StoreError::Unavailable(e)))) => {
                assert!(e.contains("try again"), "exchange {i}: {e}");
            }
            Ok(Err(e)) => panic!("exchange {i}: {e}"),
            Err(e) => assert!(e.is_cancelled() && i % 4 == 1, "exchange {i}: {e}"),
        }
    }
    assert!(answered > 0, "no exchange was answered with a token");
    vec![presented, minted]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_store_story() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("s.db"), true)
        .await
        .unwrap();
    store_story(Arc::new(store)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_store_story() {
    let Some(admin) = crate::support::postgres_url("postgres_store_story") else {
        return;
    };
    let db = crate::support::TempDatabase::new(&admin);
    // Two replicas starting at once on a new database: the migrations run once.
    let (a, b) = tokio::join!(PgStore::open(&db.url, 4), PgStore::open(&db.url, 4));
    let (a, b) = (a.unwrap(), b.unwrap());
    let migrations = std::fs::read_dir(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/store/migrations/postgres"),
    )
    .unwrap()
    .count();
    assert_eq!(
        db.query("SELECT count(*) FROM secretfs_migrations"),
        migrations.to_string()
    );
    drop(b);
    store_story(Arc::new(a)).await;
    // PostgreSQL holds ciphertext only.
    let dump = db.query("SELECT encode(sealed, 'escape') FROM secrets");
    assert!(!dump.contains("one") && !dump.contains("three"), "{dump}");
}
