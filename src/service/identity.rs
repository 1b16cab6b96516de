//! Workload identity: bindings (admins add, list and remove them) and the exchange of a
//! platform's signed token for a workload token of exactly one binding's secrets. Every
//! exchange is audited, accepted (`identity-exchange`) or refused
//! (`identity-exchange-refused`), with the binding, the issuer and the `sub`, never the token.
//! The rules of verification are `crate::identity`'s; the issuers' keys `jwks.rs`'s.

use std::time::Duration;

use super::{Caller, Service, ServiceError, may_use};
use crate::auth::{Token, TokenKind, mint};
use crate::identity::{
    ClaimRule, DEFAULT_MAX_LIFETIME, DEFAULT_TTL, Glob, GrantRule, KeySet, KeySource, Peek, Policy,
    Refusal, Rules, UNADMITTED, Verified, fetchable, peek, shown, verify,
};
use crate::secret::{SecretName, Timestamp};
use crate::store::{
    AuditAction, AuditRecord, Batch, BindingRecord, Grant, Op, StoreError, TargetKind, TokenRecord,
    User, minted_by_binding, valid_account_name,
};

/// A binding to add (the API's `NewBinding`, names parsed).
#[derive(Debug, Clone, Default)]
pub struct NewBinding {
    pub name: String,
    pub workspace: String,
    pub issuer: String,
    pub audience: String,
    pub subject: String,
    pub claims: Vec<String>,
    pub user: String,
    pub secrets: Vec<SecretName>,
    pub ttl: Option<String>,
    pub max_token_lifetime: Option<String>,
    pub jwks_url: Option<String>,
    pub jwks: Option<String>,
}

/// A stored binding with its rules read.
#[derive(Debug, Clone)]
pub struct Binding {
    pub record: BindingRecord,
    pub rules: Rules,
}

/// What an accepted exchange returns: the workload token (shown once) and what it grants.
#[derive(Debug)]
pub struct Exchange {
    pub token: Token,
    pub record: TokenRecord,
    pub binding: String,
}

fn rules_of(record: &BindingRecord) -> Result<Rules, ServiceError> {
    serde_json::from_str(&record.rules).map_err(|e| {
        ServiceError::Store(StoreError::Internal(format!(
            "identity binding {:?} has unreadable rules: {e}",
            record.name
        )))
    })
}

/// `created_by` of a binding added through the local store (its key holder may do anything).
const LOCAL_CREATOR: &str = "local";

/// What the caller is told when the binding that admitted its token cannot be used (the audit
/// says why).
const UNUSABLE: &str =
    "the identity binding that admits the token cannot be used now; ask an admin";

fn now_secs() -> u64 {
    u64::try_from(Timestamp::now().nanos() / 1_000_000_000).unwrap_or(0)
}

/// The rules of a binding request, checked without IO; each part `None` where a problem was
/// reported.
struct Checked {
    subject: Option<Glob>,
    claims: Vec<ClaimRule>,
    ttl: Option<Duration>,
    max_lifetime: Option<Duration>,
    keys: Option<KeySource>,
}

/// Checks a binding request's own fields, every problem at once.
fn check_binding(req: &NewBinding, problems: &mut Vec<String>) -> Checked {
    if !valid_account_name(&req.name) {
        problems.push(format!(
            "binding name {} must be 1 to 64 letters, digits, '_', '.', '@' or '-'",
            shown(&req.name)
        ));
    }
    if req.issuer.is_empty() {
        problems.push("issuer must be the token's \"iss\", exactly".into());
    }
    if req.audience.is_empty() {
        problems.push("audience must be the \"aud\" the tokens carry".into());
    }
    let subject = Glob::parse(&req.subject)
        .map_err(|e| problems.push(format!("subject: {e}")))
        .ok();
    let mut claims = Vec::new();
    for c in &req.claims {
        match ClaimRule::parse(c) {
            Ok(r) => claims.push(r),
            Err(e) => problems.push(e),
        }
    }
    let wild = |p: &str| p.chars().all(|c| c == '*' || c == '?');
    if wild(&req.subject) && claims.iter().all(|c: &ClaimRule| wild(c.pattern.as_str())) {
        problems.push(
            "a subject of wildcards only, with no claim that is more, admits every token of \
             the issuer (every GitHub repository, every pod of a cluster): narrow the subject \
             or add a --claim with a value"
                .into(),
        );
    }
    let mut life = |field: &'static str, s: &Option<String>, default: Duration| {
        super::tokens::parse_ttl(field, s.as_deref(), default)
            .map_err(|e| problems.push(e.to_string()))
            .ok()
    };
    let ttl = life("ttl", &req.ttl, DEFAULT_TTL);
    let max_lifetime = life(
        "max_token_lifetime",
        &req.max_token_lifetime,
        DEFAULT_MAX_LIFETIME,
    );
    let keys = key_source(req, problems);
    if req.secrets.is_empty() {
        problems.push("name at least one secret the binding grants".into());
    }
    Checked {
        subject,
        claims,
        ttl,
        max_lifetime,
        keys,
    }
}

/// Where the issuer's keys come from: a JWKS URL, an inline JWKS, or OIDC discovery.
fn key_source(req: &NewBinding, problems: &mut Vec<String>) -> Option<KeySource> {
    let checked = match (&req.jwks_url, &req.jwks) {
        (Some(_), Some(_)) => {
            Err("give the issuer's keys one way: jwks_url or jwks, not both".to_owned())
        }
        (Some(url), None) => fetchable(url)
            .map(|()| KeySource::Url { url: url.clone() })
            .map_err(|e| format!("jwks_url {e}")),
        (None, Some(doc)) => match KeySet::parse(doc.as_bytes()) {
            Ok((set, _)) if !set.is_empty() => Ok(KeySource::Inline { jwks: doc.clone() }),
            Ok((_, skipped)) => Err(format!(
                "the JWKS holds no key that can verify a signature ({})",
                skipped.join("; ")
            )),
            Err(e) => Err(format!("jwks: {e}")),
        },
        (None, None) => fetchable(&req.issuer)
            .map(|()| KeySource::Discovery)
            .map_err(|e| format!("issuer {e}, for OIDC discovery; or give jwks_url or jwks")),
    };
    checked.map_err(|e| problems.push(e)).ok()
}

/// One binding's verdict on a token: admitted with what it verified, or refused and why.
type Verdict = Result<Verified, Refusal>;

/// The signature and standard-claim checks one exchange has made, by what they depend on
/// (issuer, audience, maximum lifetime, key source): fifty bindings of one cluster's issuer and
/// audience cost one signature check, not fifty (measured: `scripts/bench-node`).
type Checks = Vec<((String, String, u64, crate::identity::KeySource), Verdict)>;

/// A refusing binding: its name, id, workspace and reason.
struct Refuser {
    name: String,
    id: String,
    workspace: String,
    why: Refusal,
}

/// Whether a binding may still act: `Err` says (for the audit) why it cannot.
fn acting_user(
    record: &BindingRecord,
    users: &[User],
    admin_impersonation: bool,
) -> Result<User, String> {
    let name = &record.name;
    let Some(user) = users.iter().find(|u| u.id == record.user_id && u.live()) else {
        return Err(format!("binding {name}: its user no longer exists"));
    };
    // Its user left the workspace: a token would read nothing; say so instead.
    if !user.workspaces.contains(&record.workspace) {
        return Err(format!(
            "binding {name}: its user {} is no longer a member of workspace {}",
            user.name, record.workspace
        ));
    }
    // A binding acts with the authority of the admin who added it, as it would be judged now:
    // still an admin, and (for another user's secrets) still allowed to act as them.
    let creator = users.iter().find(|u| u.id == record.created_by && u.live());
    let why = match creator {
        None if record.created_by == LOCAL_CREATOR => None,
        None => Some("the admin who added it no longer exists"),
        Some(c) if !c.admin => Some("the user who added it is no longer an admin"),
        Some(c) if c.id != user.id && !admin_impersonation => {
            Some("it acts as another user than its creator, which --no-admin-impersonation forbids")
        }
        Some(_) => None,
    };
    match why {
        Some(why) => Err(format!("binding {name}: {why}")),
        None => Ok(user.clone()),
    }
}

/// The workload token an accepted exchange mints: the binding's grants, until the platform
/// token's own expiry or the binding's ttl, whichever comes first, never renewed past it.
fn workload_token(
    record: &BindingRecord,
    rules: &Rules,
    verified: &Verified,
    user: &User,
) -> (Token, TokenRecord) {
    let ttl = Duration::from_secs(rules.ttl_secs);
    let ends = i64::try_from(verified.exp).unwrap_or(i64::MAX);
    let until =
        Timestamp::from_nanos(ends.saturating_mul(1_000_000_000)).min(super::tokens::after(ttl));
    let (token, stored) = mint(TokenKind::Workload);
    let grants = rules
        .grants
        .iter()
        .filter_map(|g| {
            Some(Grant {
                secret_id: g.secret_id.clone(),
                name: SecretName::parse(&g.name).ok()?,
            })
        })
        .collect();
    let description: String = format!("identity {} sub {}", record.name, verified.sub)
        .chars()
        .take(super::tokens::DESCRIPTION_MAX)
        .collect();
    let life = u64::try_from(until.nanos() - Timestamp::now().nanos()).unwrap_or(0) / 1_000_000_000;
    let record = TokenRecord {
        id: stored.id,
        hash: stored.hash,
        kind: TokenKind::Workload,
        user_id: user.id.clone(),
        user: user.name.clone(),
        workspace: Some(record.workspace.clone()),
        grants,
        created_at: Timestamp::now(),
        expires_at: Some(until),
        // Renewal cannot extend it: the next workload token comes from the next exchange.
        max_expires_at: Some(until),
        ttl_secs: Some(life.max(1)),
        revoked_at: None,
        description,
        minted_by: Some(minted_by_binding(&record.id)),
    };
    (token, record)
}

/// What a caller no binding admitted is told, and what the audit gets (each binding's whole
/// reason). The caller learns what its token failed only once it verified against a trusted
/// key, and only when it named no binding (a validly signed token, which anyone can mint at some
/// issuers, must not tell a real binding name from a guessed one): once per distinct reason,
/// without the bindings' names or expectations. Otherwise the one answer of every refusal.
/// Returns (public, detail, unavailable).
fn unadmitted(refusers: &[Refuser], scope: Option<&str>) -> (String, String, bool) {
    let detail = refusers
        .iter()
        .map(|r| format!("binding {}: {}", r.name, r.why))
        .collect::<Vec<_>>()
        .join("; ");
    let mut verified: Vec<String> = refusers
        .iter()
        .filter(|r| !r.why.before_signature())
        .map(|r| r.why.public())
        .collect();
    verified.dedup();
    let unavailable = refusers
        .iter()
        .any(|r| matches!(r.why, Refusal::KeysUnavailable(_)));
    let (public, unavailable) = match scope {
        None if !verified.is_empty() => (format!("{UNADMITTED}: {}", verified.join("; ")), false),
        // Unreachable keys are a 503 (try again soon) only without a scope: it tells that the
        // issuer is trusted, and only while its keys cannot be had.
        None if unavailable => (Refusal::KeysUnavailable(String::new()).public(), true),
        _ => (UNADMITTED.to_owned(), false),
    };
    (public, detail, unavailable)
}

impl Service {
    /// Adds a binding (admins only). Every problem of the request is reported at once. The
    /// issuer's keys are fetched (or the inline set read) now, so that a binding that could
    /// never verify a token is refused here with the reason rather than at its first exchange.
    pub async fn add_binding(
        &self,
        caller: &Caller,
        req: NewBinding,
    ) -> Result<Binding, ServiceError> {
        let me = caller.admin()?.clone();
        let mut problems = Vec::new();
        let checked = check_binding(&req, &mut problems);
        let user = match self.live_user(&req.user).await {
            Ok(u) => Some(u),
            Err(e) => {
                problems.push(e.to_string());
                None
            }
        };
        if let Some(u) = &user {
            // Binding another user's secrets is acting as them: the rule of minting their
            // tokens (`--no-admin-impersonation` turns both off).
            if u.id != me.id && !self.options.admin_impersonation {
                return Err(ServiceError::Forbidden(
                    "this server does not let admins act as other users \
                     (--no-admin-impersonation): bind your own secrets"
                        .into(),
                ));
            }
            if !u.workspaces.contains(&req.workspace) {
                problems.push(format!(
                    "user \"{}\" is not a member of workspace \"{}\"",
                    u.name, req.workspace
                ));
            }
        }
        let mut grants = match user
            .as_ref()
            .filter(|u| u.workspaces.contains(&req.workspace))
        {
            Some(u) => self.grant_rules(u, &req, &mut problems).await?,
            None => Vec::new(),
        };
        if !problems.is_empty() {
            return Err(ServiceError::invalid(problems.join("; ")));
        }
        let (Some(subject), Some(ttl), Some(max_lifetime), Some(keys), Some(user)) = (
            checked.subject,
            checked.ttl,
            checked.max_lifetime,
            checked.keys,
            user,
        ) else {
            unreachable!("every missing part is a problem reported above");
        };
        // Through the cache: the keys fetched here serve the first exchanges too.
        self.jwks
            .keys(&req.issuer, &keys, None)
            .await
            .map_err(|e| ServiceError::invalid(e.to_string()))?;
        grants.sort_by(|a, b| a.name.cmp(&b.name));
        let rules = Rules {
            audience: req.audience,
            subject,
            claims: checked.claims,
            ttl_secs: ttl.as_secs(),
            max_lifetime_secs: max_lifetime.as_secs(),
            keys,
            grants,
        };
        let record = BindingRecord {
            id: crate::store::new_id(),
            name: req.name,
            workspace: req.workspace,
            user_id: user.id.clone(),
            user: user.name.clone(),
            issuer: req.issuer,
            rules: serde_json::to_string(&rules).expect("rules serialize"),
            created_at: Timestamp::now(),
            created_by: if caller.local() {
                LOCAL_CREATOR.to_owned()
            } else {
                me.id.clone()
            },
        };
        let names: Vec<&str> = rules.grants.iter().map(|g| g.name.as_str()).collect();
        let audit = caller.audit(
            &record.workspace,
            AuditAction::IdentityAdd,
            (TargetKind::Binding, &record.name, &record.id),
            0,
            format!(
                "issuer {} sub {} as {} for {}",
                record.issuer,
                rules.subject.as_str(),
                user.name,
                names.join(",")
            ),
        );
        self.commit(
            caller,
            Batch {
                ops: vec![Op::InsertBinding(record.clone())],
                audit: vec![audit],
            },
        )
        .await?;
        tracing::info!(binding = %record.name, issuer = %record.issuer, user = %user.name, "identity binding added");
        Ok(Binding { record, rules })
    }

    /// The grants of a binding: each named secret the user may use in the workspace, by id
    /// (a missing one is a problem, named).
    async fn grant_rules(
        &self,
        user: &User,
        req: &NewBinding,
        problems: &mut Vec<String>,
    ) -> Result<Vec<GrantRule>, ServiceError> {
        let snap = self.snapshot(&req.workspace).await?;
        let mut grants: Vec<GrantRule> = Vec::new();
        let mut missing = Vec::new();
        for name in &req.secrets {
            match snap.by_name.get(name).filter(|s| may_use(user, s)) {
                Some(s) if !grants.iter().any(|g| g.secret_id == s.id) => grants.push(GrantRule {
                    secret_id: s.id.clone(),
                    name: name.to_string(),
                }),
                Some(_) => {}
                None => missing.push(format!("\"{name}\"")),
            }
        }
        if !missing.is_empty() {
            problems.push(format!(
                "user \"{}\" has no secret{} {} in workspace \"{}\" (their own or public)",
                user.name,
                if missing.len() == 1 { "" } else { "s" },
                missing.join(", "),
                req.workspace
            ));
        }
        Ok(grants)
    }

    /// Every binding (admins only).
    pub async fn bindings(&self, caller: &Caller) -> Result<Vec<Binding>, ServiceError> {
        caller.admin()?;
        self.store()
            .bindings()
            .await?
            .into_iter()
            .map(|record| {
                let rules = rules_of(&record)?;
                Ok(Binding { record, rules })
            })
            .collect()
    }

    /// Removes a binding (admins only) and revokes every token its exchanges minted, in one
    /// transaction: a mount or run holding one stops receiving values at its next request.
    pub async fn remove_binding(&self, caller: &Caller, name: &str) -> Result<(), ServiceError> {
        caller.admin()?;
        let not_found = || ServiceError::NotFound(format!("identity binding \"{name}\" not found"));
        let record = self
            .store()
            .bindings()
            .await?
            .into_iter()
            .find(|b| b.name == name)
            .ok_or_else(not_found)?;
        let audit = caller.audit(
            &record.workspace,
            AuditAction::IdentityRemove,
            (TargetKind::Binding, &record.name, &record.id),
            0,
            format!("issuer {}", record.issuer),
        );
        match self
            .commit(
                caller,
                Batch {
                    ops: vec![Op::DeleteBinding {
                        id: record.id.clone(),
                        at: Timestamp::now(),
                    }],
                    audit: vec![audit],
                },
            )
            .await
        {
            Err(ServiceError::Store(StoreError::BindingNotFound(_))) => Err(not_found()),
            other => other,
        }?;
        tracing::info!(binding = %name, "identity binding removed; its tokens revoked");
        Ok(())
    }

    /// Exchanges a platform token for a workload token of the one binding that admits it
    /// (`scope` names the binding when several might). Accepted or refused, it is audited.
    pub async fn exchange(
        &self,
        address: &str,
        subject_token: &str,
        scope: Option<&str>,
    ) -> Result<Exchange, ServiceError> {
        let mut attempt = Attempt {
            address,
            issuer: String::new(),
            sub: String::new(),
            binding: None,
            workspace: String::new(),
        };
        let peeked = match peek(subject_token) {
            Ok(p) => p,
            Err(r) => return Err(self.refuse(&attempt, r.to_string(), None, false).await),
        };
        attempt.issuer = peeked.iss.clone();
        attempt.sub = peeked.sub.clone().unwrap_or_default();
        let directory = self.directory().await?;
        let candidates: Vec<BindingRecord> = directory
            .bindings
            .iter()
            .filter(|b| b.issuer == peeked.iss && scope.is_none_or(|s| s == b.name))
            .cloned()
            .collect();
        if candidates.is_empty() {
            // An issuer no binding trusts, or a scope that names no binding of it: the answer of
            // every refusal before a signature verifies, so neither can be probed.
            let detail = match scope {
                Some(s) => format!(
                    "no identity binding named {} trusts the issuer {}",
                    shown(s),
                    shown(&peeked.iss)
                ),
                None => Refusal::UnknownIssuer(shown(&peeked.iss)).to_string(),
            };
            return Err(self
                .refuse(&attempt, UNADMITTED.into(), Some(detail), false)
                .await);
        }
        let now = now_secs();
        let mut admitted: Vec<(BindingRecord, Rules, Verified)> = Vec::new();
        let mut refusers = Vec::new();
        let mut seen = Checks::default();
        for record in candidates {
            let rules = rules_of(&record)?;
            match self
                .judge(&record, &rules, subject_token, &peeked, now, &mut seen)
                .await
            {
                Ok(v) => admitted.push((record, rules, v)),
                Err(why) => refusers.push(Refuser {
                    name: record.name,
                    id: record.id,
                    workspace: record.workspace,
                    why,
                }),
            }
        }
        if admitted.len() > 1 {
            let names: Vec<String> = admitted.iter().map(|a| a.0.name.clone()).collect();
            let why = format!(
                "the token matches several identity bindings ({}); name one with scope=NAME",
                names.join(", ")
            );
            return Err(self.refuse(&attempt, why, None, false).await);
        }
        let Some((record, rules, verified)) = admitted.pop() else {
            if let [only] = refusers.as_slice() {
                attempt.binding = Some((only.name.clone(), only.id.clone()));
                attempt.workspace = only.workspace.clone();
            }
            let (public, detail, unavailable) = unadmitted(&refusers, scope);
            return Err(self
                .refuse(&attempt, public, Some(detail), unavailable)
                .await);
        };
        attempt.binding = Some((record.name.clone(), record.id.clone()));
        attempt.workspace = record.workspace.clone();
        attempt.sub = verified.sub.clone();
        let user = match acting_user(&record, &directory.users, self.options.admin_impersonation) {
            Ok(u) => u,
            Err(why) => {
                return Err(self
                    .refuse(&attempt, UNUSABLE.into(), Some(why), false)
                    .await);
            }
        };
        let (token, token_record) = workload_token(&record, &rules, &verified, &user);
        let audit = attempt.record(
            AuditAction::IdentityExchange,
            format!("identity:{}", record.name),
            user.id.clone(),
            format!(
                "issuer {} sub {} as {}: token {} until {}",
                record.issuer,
                shown(&verified.sub),
                user.name,
                token_record.id,
                token_record
                    .expires_at
                    .map(Timestamp::rfc3339)
                    .unwrap_or_default()
            ),
        );
        let batch = Batch {
            ops: vec![
                // Removed meanwhile: no token (its removal revokes only the tokens it sees).
                Op::ExpectBinding {
                    id: record.id.clone(),
                },
                Op::InsertToken(token_record.clone()),
            ],
            audit: vec![audit],
        };
        match self.commit_grouped(batch).await {
            Err(ServiceError::Store(StoreError::BindingNotFound(_))) => {
                let why = format!("binding {} was removed", record.name);
                return Err(self
                    .refuse(&attempt, UNUSABLE.into(), Some(why), false)
                    .await);
            }
            other => other?,
        }
        tracing::info!(binding = %record.name, token = %token_record.id, "identity exchanged");
        Ok(Exchange {
            token,
            record: token_record,
            binding: record.name,
        })
    }

    /// One binding's verdict on a token: its issuer's key, the signature and the standard
    /// claims (`crate::identity::verify`, once per exchange for bindings that check them
    /// alike: `seen`), then the binding's own rules.
    async fn judge(
        &self,
        record: &BindingRecord,
        rules: &Rules,
        subject_token: &str,
        peeked: &Peek,
        now: u64,
        seen: &mut Checks,
    ) -> Verdict {
        let alike = (
            record.issuer.clone(),
            rules.audience.clone(),
            rules.max_lifetime_secs,
            rules.keys.clone(),
        );
        let verified = match seen.iter().find(|(k, _)| *k == alike) {
            Some((_, v)) => v.clone(),
            None => {
                let v = self
                    .verify_for(record, rules, subject_token, peeked, now)
                    .await;
                seen.push((alike, v.clone()));
                v
            }
        }?;
        rules.admits(&verified)?;
        Ok(verified)
    }

    /// The signature and the standard claims, as `record`'s issuer, keys, audience and
    /// maximum lifetime check them.
    async fn verify_for(
        &self,
        record: &BindingRecord,
        rules: &Rules,
        subject_token: &str,
        peeked: &Peek,
        now: u64,
    ) -> Verdict {
        let keys = self
            .jwks
            .keys(&record.issuer, &rules.keys, peeked.kid.as_deref())
            .await?;
        let key = keys
            .find(peeked.kid.as_deref(), peeked.alg)
            .ok_or_else(|| {
                Refusal::UnknownKey(match &peeked.kid {
                    Some(k) => shown(k),
                    None => "(the token names no kid and the issuer has several)".into(),
                })
            })?;
        let policy = Policy {
            issuer: &record.issuer,
            audience: &rules.audience,
            max_lifetime: Duration::from_secs(rules.max_lifetime_secs),
        };
        verify(subject_token, peeked, key, policy, now)
    }

    /// Audits a refused exchange (on its own, without announcing a change: a flood of bad
    /// tokens must not empty every cache) and builds its error: `public` for the caller,
    /// `detail` (when it says more) for the audit and the log.
    async fn refuse(
        &self,
        r: &Attempt<'_>,
        public: String,
        detail: Option<String>,
        unavailable: bool,
    ) -> ServiceError {
        let why = detail.as_deref().unwrap_or(&public);
        let shown_or_dash = |s: &str| if s.is_empty() { "-".into() } else { shown(s) };
        let record = r.record(
            AuditAction::IdentityExchangeRefused,
            "identity".into(),
            String::new(),
            format!(
                "issuer {} sub {}: {why}",
                shown_or_dash(&r.issuer),
                shown_or_dash(&r.sub)
            ),
        );
        // Coalesced like failed authentications, by the kind of reason: a client retrying a
        // refused token, or sending a new one each time, is one record with a count.
        if let Err(e) = self
            .record_refusal(record, super::audit::reason_kind(why))
            .await
        {
            tracing::error!(error = %e, "cannot write the audit record of a refused exchange");
            return e;
        }
        tracing::info!(issuer = %shown(&r.issuer), reason = %why, "identity exchange refused");
        ServiceError::Refused {
            message: public,
            unavailable,
        }
    }
}

/// What an exchange's audit record says of the attempt, accepted or refused.
struct Attempt<'a> {
    address: &'a str,
    issuer: String,
    sub: String,
    binding: Option<(String, String)>,
    /// The binding's workspace, once one is identified.
    workspace: String,
}

impl Attempt<'_> {
    /// The attempt's audit record: about its binding, once one is identified.
    fn record(
        &self,
        action: AuditAction,
        actor: String,
        actor_id: String,
        detail: String,
    ) -> AuditRecord {
        let (target, target_id) = self.binding.clone().unwrap_or_default();
        AuditRecord {
            id: 0,
            at: Timestamp::now(),
            first_at: None,
            count: 1,
            workspace: self.workspace.clone(),
            actor,
            actor_id,
            action,
            target_kind: TargetKind::Binding,
            target,
            target_id,
            version: 0,
            detail,
            address: self.address.to_owned(),
        }
    }
}
