//! Users, workspaces and memberships. Users are ids: a deleted user's tokens and private secrets
//! go with them, their public secrets stay (owned by the tombstone, or transferred), and a new
//! user of the same name is a new id that starts with nothing.

use std::time::Duration;

use super::{Caller, DEFAULT_WORKSPACE, Service, ServiceError, Who};
use crate::auth::Token;
use crate::secret::{SecretName, Timestamp, Visibility};
use crate::store::{
    AuditAction, Batch, Expected, Op, SecretFilter, StoreError, TargetKind, TokenFilter,
    TokenRecord, User, new_id, valid_account_name, vault::MAX_RETRIES,
};

const NAME_RULE: &str =
    "1 to 64 characters: letters, digits, '_', '.', '@' or '-', not starting with '.' or '-'";

fn check_name(what: &str, name: &str) -> Result<(), ServiceError> {
    if valid_account_name(name) {
        Ok(())
    } else {
        Err(ServiceError::invalid_on(
            "name",
            format!("invalid {what} name {name:?}: {NAME_RULE}"),
        ))
    }
}

/// The first admin of a new store, prepared (see [`Service::first_admin`]).
pub struct FirstAdmin {
    pub token: Token,
    batch: Batch,
}

/// What removing a user removed, kept and handed over (names, for the answer and the log).
#[derive(Debug, Clone, Default)]
pub struct UserRemoval {
    pub tokens: usize,
    /// Private secrets deleted with the user.
    pub deleted: Vec<SecretName>,
    /// Public secrets kept, owned by the deleted user.
    pub kept: Vec<SecretName>,
    /// Secrets handed to `--transfer-to`.
    pub transferred: Vec<SecretName>,
}

fn names(list: &[SecretName]) -> String {
    list.iter()
        .map(SecretName::as_str)
        .collect::<Vec<_>>()
        .join(",")
}

impl Service {
    /// The live user called `name`, or 404.
    pub(super) async fn live_user(&self, name: &str) -> Result<User, ServiceError> {
        self.store()
            .users()
            .await?
            .into_iter()
            .find(|u| u.live() && u.name == name)
            .ok_or_else(|| ServiceError::NotFound(format!("user \"{name}\" not found")))
    }

    /// Every live user with their workspaces (admins).
    pub async fn users(&self, caller: &Caller) -> Result<Vec<User>, ServiceError> {
        caller.admin()?;
        Ok(self
            .store()
            .users()
            .await?
            .into_iter()
            .filter(User::live)
            .collect())
    }

    /// The workspaces the caller belongs to.
    pub fn workspaces(&self, caller: &Caller) -> Result<Vec<String>, ServiceError> {
        Ok(caller.manager()?.workspaces.clone())
    }

    /// A new user, a member of `workspaces`, with a first user token (shown once). Only admins;
    /// the token expires no later than the caller's own.
    pub async fn add_user(
        &self,
        caller: &Caller,
        name: &str,
        admin: bool,
        workspaces: Vec<String>,
    ) -> Result<(Token, TokenRecord), ServiceError> {
        caller.admin()?;
        check_name("user", name)?;
        let (user, batch, token, record) = Self::user_batch(name, admin, workspaces, Some(caller));
        match self.commit(caller, batch).await {
            Err(ServiceError::Store(StoreError::UserExists(n))) => Err(ServiceError::Conflict(
                format!("user \"{n}\" already exists"),
            )),
            other => other,
        }?;
        tracing::info!(user = %user.name, admin = user.admin, "user created");
        Ok((token, record))
    }

    /// The ops and audit records that create a user, its memberships and first token.
    fn user_batch(
        name: &str,
        admin: bool,
        workspaces: Vec<String>,
        caller: Option<&Caller>,
    ) -> (User, Batch, Token, TokenRecord) {
        let user = User {
            id: new_id(),
            name: name.to_owned(),
            admin,
            created_at: Timestamp::now(),
            deleted_at: None,
            workspaces,
        };
        let (token, record) = Self::first_token(&user, caller);
        let audit = |ws: &str, action, kind, target: &str, id: &str, detail: String| match caller {
            Some(c) => c.audit(ws, action, (kind, target, id), 0, detail),
            None => crate::store::AuditRecord {
                id: 0,
                at: Timestamp::now(),
                first_at: None,
                count: 1,
                workspace: ws.to_owned(),
                actor: "secretfs serve --init".into(),
                actor_id: String::new(),
                action,
                target_kind: kind,
                target: target.to_owned(),
                target_id: id.to_owned(),
                version: 0,
                detail,
                address: String::new(),
            },
        };
        let mut batch = Batch {
            ops: vec![Op::InsertUser(user.clone())],
            audit: vec![audit(
                "",
                AuditAction::UserAdd,
                TargetKind::User,
                &user.name,
                &user.id,
                if admin { "admin".into() } else { String::new() },
            )],
        };
        for ws in &user.workspaces {
            batch.ops.push(Op::AddMember {
                user_id: user.id.clone(),
                workspace: ws.clone(),
            });
            batch.audit.push(audit(
                ws,
                AuditAction::MemberAdd,
                TargetKind::Member,
                &user.name,
                &user.id,
                String::new(),
            ));
        }
        batch.ops.push(Op::InsertToken(record.clone()));
        batch.audit.push(audit(
            "",
            AuditAction::TokenMint,
            TargetKind::Token,
            &record.id,
            &record.id,
            format!("first user token for {}", user.name),
        ));
        (user, batch, token, record)
    }

    /// `serve --init`, first step: the first admin of a store that has none, in the default
    /// workspace, with its token, not yet stored (the caller hands the token over first, so
    /// that a token that cannot be handed over never exists). `None` when there is an admin.
    pub async fn first_admin(&self, name: &str) -> Result<Option<FirstAdmin>, ServiceError> {
        if self.has_admin().await? {
            return Ok(None);
        }
        let (_, batch, token, _) =
            Self::user_batch(name, true, vec![DEFAULT_WORKSPACE.to_owned()], None);
        Ok(Some(FirstAdmin { token, batch }))
    }

    /// `serve --init`, second step: stores the first admin. False when another replica
    /// initialised the store meanwhile.
    pub async fn create_first_admin(&self, admin: FirstAdmin) -> Result<bool, ServiceError> {
        match self.commit_unchecked(admin.batch).await {
            Err(ServiceError::Store(StoreError::UserExists(_))) => Ok(false),
            Err(e) => Err(e),
            Ok(()) => Ok(true),
        }
    }

    /// Whether the store has an admin yet (`serve` warns when it has none).
    pub async fn has_admin(&self) -> Result<bool, ServiceError> {
        Ok(self
            .store()
            .users()
            .await?
            .iter()
            .any(|u| u.live() && u.admin))
    }

    /// The local CLI's user, created on first use as a member of the default workspace.
    pub(super) async fn add_local_user(&self, name: &str) -> Result<User, ServiceError> {
        let user = User {
            id: new_id(),
            name: name.to_owned(),
            admin: false,
            created_at: Timestamp::now(),
            deleted_at: None,
            workspaces: vec![DEFAULT_WORKSPACE.to_owned()],
        };
        let audit = |action, kind, ws: &str| crate::store::AuditRecord {
            id: 0,
            at: Timestamp::now(),
            first_at: None,
            count: 1,
            workspace: ws.to_owned(),
            actor: name.to_owned(),
            actor_id: user.id.clone(),
            action,
            target_kind: kind,
            target: name.to_owned(),
            target_id: user.id.clone(),
            version: 0,
            detail: "the local store's user".into(),
            address: String::new(),
        };
        let batch = Batch {
            ops: vec![
                Op::InsertUser(user.clone()),
                Op::AddMember {
                    user_id: user.id.clone(),
                    workspace: DEFAULT_WORKSPACE.to_owned(),
                },
            ],
            audit: vec![
                audit(AuditAction::UserAdd, TargetKind::User, ""),
                audit(
                    AuditAction::MemberAdd,
                    TargetKind::Member,
                    DEFAULT_WORKSPACE,
                ),
            ],
        };
        match self.commit_unchecked(batch).await {
            // Another local process created it at the same moment.
            Err(ServiceError::Store(StoreError::UserExists(_))) => self.live_user(name).await,
            Err(e) => Err(e),
            Ok(()) => Ok(user),
        }
    }

    /// Removes a user (admins; not yourself): their tokens and memberships go, their private
    /// secrets are deleted, their public ones stay, owned by the tombstone; or, with
    /// `transfer_to`, every secret of theirs is handed to that user. One transaction, which
    /// fails and is retried if the user's secrets changed while it was prepared.
    pub async fn delete_user(
        &self,
        caller: &Caller,
        name: &str,
        transfer_to: Option<&str>,
    ) -> Result<UserRemoval, ServiceError> {
        let admin = caller.admin()?;
        if admin.name == name && !caller.local() {
            return Err(ServiceError::Conflict(
                "an admin cannot remove themselves".into(),
            ));
        }
        for attempt in 0..MAX_RETRIES {
            if attempt > 0 {
                pause_before_retry(attempt).await;
            }
            let target = self.live_user(name).await?;
            let heir = match transfer_to {
                Some(t) if t == name => {
                    return Err(ServiceError::invalid_on(
                        "transfer_to",
                        "a user's secrets cannot be transferred to that same user",
                    ));
                }
                Some(t) => Some(self.live_user(t).await?),
                None => None,
            };
            let owned = self
                .store()
                .secrets(SecretFilter::Owner(&target.id))
                .await?;
            let tokens = self.store().tokens(TokenFilter::User(&target.id)).await?;
            if let Some(heir) = &heir {
                self.check_transfer(caller, &owned, heir)?;
            }
            let mut removal = UserRemoval {
                tokens: tokens.len(),
                ..Default::default()
            };
            // The user's row first: from here on (PostgreSQL locks it for the rest of the
            // transaction) nothing can be created for, minted for or done by them, and what
            // committed before is seen by the checks that follow.
            let mut batch = Batch {
                ops: vec![Op::TombstoneUser {
                    id: target.id.clone(),
                    at: Timestamp::now(),
                }],
                audit: Vec::new(),
            };
            let mut owned_now: Vec<(String, Visibility)> = owned
                .iter()
                .map(|s| (s.id.clone(), s.meta.visibility))
                .collect();
            owned_now.sort_by(|a, b| a.0.cmp(&b.0));
            batch.ops.push(Op::ExpectOwned {
                owner_id: target.id.clone(),
                expected: owned_now,
            });
            let mut token_ids: Vec<String> = tokens.iter().map(|t| t.id.clone()).collect();
            token_ids.sort();
            batch.ops.push(Op::ExpectTokens {
                user_id: target.id.clone(),
                expected: token_ids,
            });
            let mut workspaces = target.workspaces.clone();
            workspaces.sort();
            batch.ops.push(Op::ExpectMemberships {
                user_id: target.id.clone(),
                expected: workspaces,
            });
            match &heir {
                Some(heir) => {
                    batch.ops.push(Op::TransferSecrets {
                        from: target.id.clone(),
                        to: heir.id.clone(),
                        to_name: heir.name.clone(),
                    });
                    for s in &owned {
                        removal.transferred.push(s.meta.name.clone());
                        batch.audit.push(caller.audit(
                            &s.workspace,
                            AuditAction::Update,
                            (TargetKind::Secret, s.meta.name.as_str(), &s.id),
                            s.meta.version,
                            format!("owner={} (from deleted user {})", heir.name, target.name),
                        ));
                    }
                }
                None => {
                    for s in owned
                        .iter()
                        .filter(|s| s.meta.visibility == Visibility::Private)
                    {
                        removal.deleted.push(s.meta.name.clone());
                        batch.ops.push(Op::DeleteSecret {
                            id: s.id.clone(),
                            name: s.meta.name.clone(),
                            expected: Expected {
                                owner_id: target.id.clone(),
                                visibility: Visibility::Private,
                            },
                        });
                        batch.audit.push(caller.audit(
                            &s.workspace,
                            AuditAction::Delete,
                            (TargetKind::Secret, s.meta.name.as_str(), &s.id),
                            s.meta.version,
                            format!("private secret of deleted user {}", target.name),
                        ));
                    }
                    removal.kept = owned
                        .iter()
                        .filter(|s| s.meta.visibility == Visibility::Public)
                        .map(|s| s.meta.name.clone())
                        .collect();
                }
            }
            // Tokens already revoked were recorded when they were; the user's removal deletes
            // them without another record.
            for t in tokens.iter().filter(|t| t.revoked_at.is_none()) {
                batch.audit.push(caller.audit(
                    t.workspace.as_deref().unwrap_or(""),
                    AuditAction::TokenRevoke,
                    (TargetKind::Token, &t.id, &t.id),
                    0,
                    format!("token of deleted user {}", target.name),
                ));
            }
            batch.ops.push(Op::DeleteTokensOf {
                user_id: target.id.clone(),
            });
            for ws in &target.workspaces {
                batch.audit.push(caller.audit(
                    ws,
                    AuditAction::MemberRemove,
                    (TargetKind::Member, &target.name, &target.id),
                    0,
                    format!("user {} deleted", target.name),
                ));
            }
            batch.ops.push(Op::RemoveMemberships {
                user_id: target.id.clone(),
            });
            let summary = match &heir {
                Some(h) => format!(
                    "removed {} tokens; transferred {} secrets to {} ({})",
                    removal.tokens,
                    removal.transferred.len(),
                    h.name,
                    names(&removal.transferred)
                ),
                None => format!(
                    "removed {} tokens and {} private secrets ({}); kept {} public secrets ({}) \
                     owned by the deleted user",
                    removal.tokens,
                    removal.deleted.len(),
                    names(&removal.deleted),
                    removal.kept.len(),
                    names(&removal.kept)
                ),
            };
            batch.audit.push(caller.audit(
                "",
                AuditAction::UserDelete,
                (TargetKind::User, &target.name, &target.id),
                0,
                summary,
            ));
            match self.commit(caller, batch).await {
                // The user's secrets, tokens or memberships changed while this was prepared
                // (PostgreSQL may see a secret change between the checks and the deletes), or
                // the user or the heir was deleted meanwhile: decide again on what is there now.
                Err(ServiceError::Store(
                    StoreError::Conflict
                    | StoreError::VersionConflict(_)
                    | StoreError::NotFound(_)
                    | StoreError::UserNotFound(_),
                )) => continue,
                Err(e) => return Err(e),
                Ok(()) => {
                    tracing::info!(user = %target.name, tokens = removal.tokens, deleted = removal.deleted.len(), kept = removal.kept.len(), transferred = removal.transferred.len(), "user removed");
                    return Ok(removal);
                }
            }
        }
        Err(StoreError::Conflict.into())
    }

    /// Whether `caller` may hand `owned` to `heir`: the heir must belong to every workspace the
    /// secrets are in (else nobody could see them), and private secrets are handed over only
    /// where admins may act for users (it gives the heir, possibly the admin, what only the
    /// deleted user could read).
    fn check_transfer(
        &self,
        caller: &Caller,
        owned: &[crate::store::StoredSecret],
        heir: &User,
    ) -> Result<(), ServiceError> {
        let mut outside: Vec<&str> = owned
            .iter()
            .map(|s| s.workspace.as_str())
            .filter(|w| !heir.workspaces.iter().any(|h| h == w))
            .collect();
        outside.sort();
        outside.dedup();
        if !outside.is_empty() {
            return Err(ServiceError::invalid_on(
                "transfer_to",
                format!(
                    "user \"{}\" is not a member of {}, which hold secrets to transfer; add them \
                     first",
                    heir.name,
                    outside.join(", ")
                ),
            ));
        }
        let private = owned
            .iter()
            .any(|s| s.meta.visibility == Visibility::Private);
        if private && !self.options.admin_impersonation && !caller.local() {
            return Err(ServiceError::Forbidden(
                "this server does not let admins act for users (--no-admin-impersonation), and \
                 transferring private secrets would: delete the user without --transfer-to, or \
                 have the owner make them public first"
                    .into(),
            ));
        }
        Ok(())
    }

    /// A new workspace (admins); the admin becomes its first member.
    pub async fn create_workspace(&self, caller: &Caller, name: &str) -> Result<(), ServiceError> {
        let admin = caller.admin()?.clone();
        check_name("workspace", name)?;
        let batch = Batch {
            ops: vec![
                Op::CreateWorkspace {
                    name: name.to_owned(),
                    at: Timestamp::now(),
                },
                Op::AddMember {
                    user_id: admin.id.clone(),
                    workspace: name.to_owned(),
                },
            ],
            audit: vec![
                caller.audit(
                    name,
                    AuditAction::WorkspaceCreate,
                    (TargetKind::Workspace, name, name),
                    0,
                    String::new(),
                ),
                caller.audit(
                    name,
                    AuditAction::MemberAdd,
                    (TargetKind::Member, &admin.name, &admin.id),
                    0,
                    "the workspace's creator".into(),
                ),
            ],
        };
        match self.commit(caller, batch).await {
            Err(ServiceError::Store(StoreError::WorkspaceExists(w))) => Err(
                ServiceError::Conflict(format!("workspace \"{w}\" already exists")),
            ),
            other => other,
        }
    }

    /// Adds an existing user to a workspace (admins).
    pub async fn add_member(
        &self,
        caller: &Caller,
        workspace: &str,
        user: &str,
    ) -> Result<(), ServiceError> {
        self.change_membership(caller, workspace, user, true).await
    }

    /// Removes a user from a workspace (admins): from then on they see nothing of it, and their
    /// workload tokens for its secrets read nothing.
    pub async fn remove_member(
        &self,
        caller: &Caller,
        workspace: &str,
        user: &str,
    ) -> Result<(), ServiceError> {
        self.change_membership(caller, workspace, user, false).await
    }

    /// One membership added or removed, with its audit record, in one batch.
    async fn change_membership(
        &self,
        caller: &Caller,
        workspace: &str,
        user: &str,
        add: bool,
    ) -> Result<(), ServiceError> {
        caller.admin()?;
        let target = self.live_user(user).await?;
        let (user_id, ws) = (target.id.clone(), workspace.to_owned());
        let (op, action) = if add {
            (
                Op::AddMember {
                    user_id,
                    workspace: ws,
                },
                AuditAction::MemberAdd,
            )
        } else {
            (
                Op::RemoveMember {
                    user_id,
                    workspace: ws,
                },
                AuditAction::MemberRemove,
            )
        };
        let batch = Batch {
            ops: vec![op],
            audit: vec![caller.audit(
                workspace,
                action,
                (TargetKind::Member, &target.name, &target.id),
                0,
                String::new(),
            )],
        };
        // The store names the user by id; the answer names them as the caller did. (An unknown
        // workspace is answered where every store error becomes a status.)
        self.commit(caller, batch).await.map_err(|e| match e {
            ServiceError::Store(StoreError::NotAMember { .. }) => ServiceError::NotFound(format!(
                "user \"{user}\" is not a member of workspace \"{workspace}\""
            )),
            other => other,
        })
    }

    /// Whether the caller holds a user token with admin rights (what `whoami` reports).
    pub fn is_admin(caller: &Caller) -> bool {
        matches!(&caller.who, Who::User { user, .. } if user.admin)
    }
}

/// Between two tries of a removal whose precondition (the user's secrets, tokens, memberships)
/// another writer broke: 1 ms doubling to 64 ms, with up to as much again at random, so a burst
/// of the user's own creates (40 in 80 ms in `store.rs::sqlite_store_story`, which failed about
/// one run in three without it) cannot break all sixteen tries, each having read just before the
/// next create committed. At most 1.4 s in all.
async fn pause_before_retry(attempt: usize) {
    let base = Duration::from_millis(1 << attempt.min(6));
    let mut jitter = [0u8; 1];
    let _ = getrandom::fill(&mut jitter);
    let extra = base.mul_f64(f64::from(jitter[0]) / 255.0);
    tokio::time::sleep(base + extra).await;
}
