//! The access rules as a model, checked against the real API over random histories.
//!
//! The model (`Model`, a few hundred lines of plain Rust, by ids, never names) knows users,
//! their membership of one workspace, secrets, workload tokens and their grants. A generator
//! makes action sequences over few users and few names, so that names collide, users are
//! deleted and re-created, secrets are deleted and re-created by others, visibility flips,
//! memberships come and go, tokens are minted, revoked and expire, and long-polls are held.
//! After every step, every principal's view through the real server (the native list, the
//! Lepton list, workload reads, and a held long-poll when its answer is due) must equal the
//! model's, and every action's status must be the model's.
//!
//! CI runs a fixed seed, bounded; `SECRETFS_MODEL_CASES` (and `SECRETFS_MODEL_STEPS`) run
//! longer (the figures are in RELIABILITY.md).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use serde_json::{Value, json};

use crate::support::{Http, Scratch, Server};

const USERS: usize = 3;
const NAMES: usize = 2;

#[derive(Debug, Clone)]
enum Action {
    AddUser(usize),
    DeleteUser(usize),
    AddMember(usize),
    RemoveMember(usize),
    Create(usize, usize, bool),
    Delete(usize, usize),
    SetVisibility(usize, usize, bool),
    Update(usize, usize),
    /// A workload token for these names; `short`: it expires in a second.
    Mint(usize, Vec<usize>, bool),
    /// Its user revokes the n-th token minted (modulo their count).
    Revoke(usize),
    /// Waits until the n-th token minted has expired (if it was short).
    Expire(usize),
    /// Holds a long-poll on the n-th token minted.
    HoldPoll(usize),
}

fn any_action() -> impl Strategy<Value = Action> {
    let u = 0..USERS;
    let n = 0..NAMES;
    prop_oneof![
        2 => u.clone().prop_map(Action::AddUser),
        1 => u.clone().prop_map(Action::DeleteUser),
        1 => u.clone().prop_map(Action::AddMember),
        1 => u.clone().prop_map(Action::RemoveMember),
        4 => (u.clone(), n.clone(), any::<bool>()).prop_map(|(a, b, c)| Action::Create(a, b, c)),
        2 => (u.clone(), n.clone()).prop_map(|(a, b)| Action::Delete(a, b)),
        2 => (u.clone(), n.clone(), any::<bool>()).prop_map(|(a, b, c)| Action::SetVisibility(a, b, c)),
        2 => (u.clone(), n.clone()).prop_map(|(a, b)| Action::Update(a, b)),
        4 => (u, prop::collection::vec(n, 1..=2), prop::bool::weighted(0.1))
            .prop_map(|(a, b, c)| Action::Mint(a, b, c)),
        1 => (0..8usize).prop_map(Action::Revoke),
        1 => (0..8usize).prop_map(Action::Expire),
        2 => (0..8usize).prop_map(Action::HoldPoll),
    ]
}

// --- the model ---

#[derive(Debug, Clone)]
struct MUser {
    /// Which of the USERS slots (its name) this user is.
    slot: usize,
    live: bool,
    member: bool,
}

#[derive(Debug, Clone)]
struct MSecret {
    name: usize,
    owner: usize,
    public: bool,
    value: String,
    version: u64,
}

#[derive(Debug, Clone)]
struct MToken {
    user: usize,
    grants: Vec<usize>,
    revoked: bool,
    expires: Option<Instant>,
}

/// The reference model. Users, secrets and tokens are indexes into these vectors: ids that are
/// never reused, as the server's are.
#[derive(Debug, Default, Clone)]
struct Model {
    users: Vec<MUser>,
    secrets: Vec<Option<MSecret>>,
    tokens: Vec<MToken>,
    values: u64,
}

/// What a workload token sees: its secrets (name, value, version), or a refusal's status.
type WorkloadView = Result<Vec<(usize, String, u64)>, u16>;

impl Model {
    /// The live user in slot `slot`.
    fn live(&self, slot: usize) -> Option<usize> {
        self.users.iter().position(|u| u.slot == slot && u.live)
    }

    fn secret_named(&self, name: usize) -> Option<usize> {
        self.secrets
            .iter()
            .position(|s| s.as_ref().is_some_and(|s| s.name == name))
    }

    fn may_use(&self, user: usize, s: &MSecret) -> bool {
        let u = &self.users[user];
        u.live && u.member && (s.owner == user || s.public)
    }

    fn next_value(&mut self) -> String {
        self.values += 1;
        format!("value-{}", self.values)
    }

    /// The status the API answers for a change of secret `name` by the user in `slot`: 401,
    /// 404, 403, or 200 with the secret's index.
    fn changing(&self, slot: usize, name: usize) -> Result<usize, u16> {
        let user = self.live(slot).ok_or(401u16)?;
        if !self.users[user].member {
            return Err(404);
        }
        let id = self.secret_named(name).ok_or(404u16)?;
        let s = self.secrets[id].as_ref().unwrap();
        if !self.may_use(user, s) {
            return Err(404);
        }
        if s.owner != user {
            return Err(403);
        }
        Ok(id)
    }

    /// Applies `a` and returns the status the API must answer (0: not a request).
    fn apply(&mut self, a: &Action, now: Instant) -> u16 {
        match *a {
            Action::AddUser(slot) => {
                if self.live(slot).is_some() {
                    return 409;
                }
                self.users.push(MUser {
                    slot,
                    live: true,
                    member: true,
                });
                201
            }
            Action::DeleteUser(slot) => {
                let Some(user) = self.live(slot) else {
                    return 404;
                };
                self.users[user].live = false;
                self.users[user].member = false;
                for s in self.secrets.iter_mut() {
                    if s.as_ref().is_some_and(|s| s.owner == user && !s.public) {
                        *s = None;
                    }
                }
                for t in self.tokens.iter_mut().filter(|t| t.user == user) {
                    t.revoked = true;
                }
                200
            }
            Action::AddMember(slot) => match self.live(slot) {
                Some(user) => {
                    self.users[user].member = true;
                    204
                }
                None => 404,
            },
            Action::RemoveMember(slot) => match self.live(slot) {
                Some(user) if self.users[user].member => {
                    self.users[user].member = false;
                    204
                }
                _ => 404,
            },
            Action::Create(slot, name, public) => {
                let Some(user) = self.live(slot) else {
                    return 401;
                };
                if !self.users[user].member {
                    return 404;
                }
                if self.secret_named(name).is_some() {
                    return 409;
                }
                let value = self.next_value();
                self.secrets.push(Some(MSecret {
                    name,
                    owner: user,
                    public,
                    value,
                    version: 1,
                }));
                201
            }
            Action::Delete(slot, name) => match self.changing(slot, name) {
                Ok(id) => {
                    self.secrets[id] = None;
                    204
                }
                Err(status) => status,
            },
            Action::SetVisibility(slot, name, public) => match self.changing(slot, name) {
                Ok(id) => {
                    self.secrets[id].as_mut().unwrap().public = public;
                    200
                }
                Err(status) => status,
            },
            Action::Update(slot, name) => match self.changing(slot, name) {
                Ok(id) => {
                    let value = self.next_value();
                    let s = self.secrets[id].as_mut().unwrap();
                    s.value = value;
                    s.version += 1;
                    200
                }
                Err(status) => status,
            },
            Action::Mint(slot, ref names, short) => {
                let Some(user) = self.live(slot) else {
                    return 401;
                };
                if !self.users[user].member {
                    return 404;
                }
                let mut grants = Vec::new();
                for &name in names {
                    match self.secret_named(name) {
                        Some(id) if self.may_use(user, self.secrets[id].as_ref().unwrap()) => {
                            if !grants.contains(&id) {
                                grants.push(id);
                            }
                        }
                        _ => return 404,
                    }
                }
                self.tokens.push(MToken {
                    user,
                    grants,
                    revoked: false,
                    expires: short.then(|| now + Duration::from_secs(1)),
                });
                201
            }
            Action::Revoke(n) => {
                if self.tokens.is_empty() {
                    return 0;
                }
                let t = n % self.tokens.len();
                if !self.users[self.tokens[t].user].live {
                    // Its user (and with them the token) is gone: their user token is refused.
                    return 401;
                }
                self.tokens[t].revoked = true;
                204
            }
            Action::Expire(_) | Action::HoldPoll(_) => 0,
        }
    }

    fn workload_view(&self, t: usize, now: Instant) -> WorkloadView {
        let token = &self.tokens[t];
        if token.revoked || !self.users[token.user].live || token.expires.is_some_and(|e| e <= now)
        {
            return Err(401);
        }
        let mut seen: Vec<(usize, String, u64)> = token
            .grants
            .iter()
            .filter_map(|&id| self.secrets[id].as_ref())
            .filter(|s| self.may_use(token.user, s))
            .map(|s| (s.name, s.value.clone(), s.version))
            .collect();
        seen.sort();
        Ok(seen)
    }

    /// What a user lists: (name, owner slot, public, version), or 404 for a non-member.
    fn user_view(&self, user: usize) -> Result<Vec<(usize, usize, bool, u64)>, u16> {
        if !self.users[user].member {
            return Err(404);
        }
        let mut seen: Vec<_> = self
            .secrets
            .iter()
            .flatten()
            .filter(|s| self.may_use(user, s))
            .map(|s| (s.name, self.users[s.owner].slot, s.public, s.version))
            .collect();
        seen.sort();
        Ok(seen)
    }
}

// --- the real thing ---

/// A held long-poll: the token it is held on, the view it started from, and its answer.
struct Poll {
    token: usize,
    started_from: WorkloadView,
    answer: std::sync::mpsc::Receiver<(u16, Value)>,
}

/// One history against the server, in a workspace and with user names of its own.
struct Real<'a> {
    h: &'a Arc<Http>,
    admin: &'a str,
    case: usize,
    /// The user token of each live model user.
    user_tokens: BTreeMap<usize, String>,
    tokens: Vec<String>,
    poll: Option<Poll>,
}

impl Real<'_> {
    fn ws(&self) -> String {
        format!("m{}", self.case)
    }

    fn user_name(&self, slot: usize) -> String {
        format!("m{}u{slot}", self.case)
    }

    fn secret_name(name: usize) -> String {
        format!("s{name}")
    }

    fn name_index(name: &str) -> usize {
        name.trim_start_matches('s').parse().unwrap()
    }

    fn secrets_path(&self) -> String {
        format!("/api/v1/workspaces/{}/secrets", self.ws())
    }

    /// The token the user in `slot` acts with: its live user's, else the last one it had (now
    /// refused), else garbage of the right shape.
    fn token_of(&self, model: &Model, slot: usize) -> String {
        let user = model
            .live(slot)
            .or_else(|| model.users.iter().rposition(|u| u.slot == slot));
        user.and_then(|u| self.user_tokens.get(&u).cloned())
            .unwrap_or_else(|| {
                "sfs_u_0000000000000000_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".into()
            })
    }

    /// Runs `a` on the server (before the model applies it) and returns its status.
    fn apply(&mut self, model: &Model, a: &Action) -> u16 {
        let h = self.h;
        match *a {
            Action::AddUser(slot) => {
                let (status, v) = h.call(
                    "POST",
                    "/api/v1/users",
                    self.admin,
                    Some(json!({ "name": self.user_name(slot), "workspaces": [self.ws()] })),
                );
                if status == 201 {
                    self.user_tokens
                        .insert(model.users.len(), v["token"].as_str().unwrap().to_owned());
                }
                status
            }
            Action::DeleteUser(slot) => {
                let path = format!("/api/v1/users/{}", self.user_name(slot));
                h.call("DELETE", &path, self.admin, None).0
            }
            Action::AddMember(slot) => {
                let path = format!("/api/v1/workspaces/{}/members", self.ws());
                h.call(
                    "POST",
                    &path,
                    self.admin,
                    Some(json!({ "user": self.user_name(slot) })),
                )
                .0
            }
            Action::RemoveMember(slot) => {
                let path = format!(
                    "/api/v1/workspaces/{}/members/{}",
                    self.ws(),
                    self.user_name(slot)
                );
                h.call("DELETE", &path, self.admin, None).0
            }
            Action::Create(slot, name, public) => {
                let value = format!("value-{}", model.values + 1);
                let body = json!({
                    "name": Self::secret_name(name),
                    "value": value,
                    "visibility": if public { "public" } else { "private" },
                });
                h.call(
                    "POST",
                    &self.secrets_path(),
                    &self.token_of(model, slot),
                    Some(body),
                )
                .0
            }
            Action::Delete(slot, name) => {
                let path = format!("{}/{}", self.secrets_path(), Self::secret_name(name));
                h.call("DELETE", &path, &self.token_of(model, slot), None).0
            }
            Action::SetVisibility(slot, name, public) => {
                let path = format!("{}/{}", self.secrets_path(), Self::secret_name(name));
                let body = json!({ "visibility": if public { "public" } else { "private" } });
                h.call("PATCH", &path, &self.token_of(model, slot), Some(body))
                    .0
            }
            Action::Update(slot, name) => {
                let path = format!("{}/{}", self.secrets_path(), Self::secret_name(name));
                let body = json!({ "value": format!("value-{}", model.values + 1) });
                h.call("PATCH", &path, &self.token_of(model, slot), Some(body))
                    .0
            }
            Action::Mint(slot, ref names, short) => {
                let names: Vec<String> = names.iter().map(|&n| Self::secret_name(n)).collect();
                let mut body = json!({ "secrets": names });
                if short {
                    body["ttl"] = "1s".into();
                    body["max_ttl"] = "1s".into();
                }
                let path = format!("/api/v1/workspaces/{}/tokens", self.ws());
                let (status, v) = h.call("POST", &path, &self.token_of(model, slot), Some(body));
                if status == 201 {
                    self.tokens.push(v["token"].as_str().unwrap().to_owned());
                }
                status
            }
            Action::Revoke(n) => {
                if self.tokens.is_empty() {
                    return 0;
                }
                let t = n % self.tokens.len();
                let id = self.tokens[t].split('_').nth(2).unwrap().to_owned();
                let slot = model.users[model.tokens[t].user].slot;
                let owner = model.tokens[t].user;
                let token = self
                    .user_tokens
                    .get(&owner)
                    .cloned()
                    .unwrap_or_else(|| self.token_of(model, slot));
                h.call("DELETE", &format!("/api/v1/tokens/{id}"), &token, None)
                    .0
            }
            Action::Expire(n) => {
                if let Some(expires) = (!model.tokens.is_empty())
                    .then(|| model.tokens[n % model.tokens.len()].expires)
                    .flatten()
                {
                    // A little past it: expiry is compared at the server's own clock.
                    let until = expires + Duration::from_millis(150);
                    std::thread::sleep(until.saturating_duration_since(Instant::now()));
                }
                0
            }
            Action::HoldPoll(n) => {
                if self.poll.is_some() || model.tokens.is_empty() {
                    return 0;
                }
                let t = n % model.tokens.len();
                let started_from = model.workload_view(t, Instant::now());
                if started_from.is_err() {
                    return 0;
                }
                let (_, now) = h.call("GET", "/api/v1/workload/secrets", &self.tokens[t], None);
                let Some(revision) = now["revision"].as_str().map(str::to_owned) else {
                    return 0;
                };
                let (tx, rx) = std::sync::mpsc::channel();
                let (h, token) = (self.h.clone(), self.tokens[t].clone());
                std::thread::spawn(move || {
                    let path = format!("/api/v1/workload/secrets?wait=30s&since={revision}");
                    // The history (and the server) may end first: then nobody waits for it.
                    if let Ok(answer) = h.try_call("GET", &path, &token, None) {
                        let _ = tx.send(answer);
                    }
                });
                self.poll = Some(Poll {
                    token: t,
                    started_from,
                    answer: rx,
                });
                0
            }
        }
    }

    fn workload_view(&self, t: usize) -> WorkloadView {
        let (status, v) = self
            .h
            .call("GET", "/api/v1/workload/secrets", &self.tokens[t], None);
        parse_workload(status, &v)
    }

    fn user_view(&self, user: usize) -> Result<Vec<(usize, usize, bool, u64)>, u16> {
        let token = &self.user_tokens[&user];
        let (status, v) = self.h.call("GET", &self.secrets_path(), token, None);
        if status != 200 {
            return Err(status);
        }
        let slot_of = |owner: &str| -> usize {
            (0..USERS)
                .find(|&s| self.user_name(s) == owner)
                .unwrap_or_else(|| panic!("unknown owner {owner}"))
        };
        let mut seen: Vec<_> = v
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                (
                    Self::name_index(m["name"].as_str().unwrap()),
                    slot_of(m["owner"].as_str().unwrap()),
                    m["visibility"] == "public",
                    m["version"].as_u64().unwrap(),
                )
            })
            .collect();
        seen.sort();
        // The Lepton route shows the same set (without versions).
        let (status, lepton) = self.h.call(
            "GET",
            &format!("/api/v2/workspaces/{}/usersecrets", self.ws()),
            token,
            None,
        );
        assert_eq!(status, 200, "{lepton}");
        let mut lepton: Vec<(usize, usize, bool)> = lepton
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                (
                    Self::name_index(m["name"].as_str().unwrap()),
                    slot_of(m["owner"].as_str().unwrap()),
                    m["visibility"] == "public",
                )
            })
            .collect();
        lepton.sort();
        let native: Vec<(usize, usize, bool)> = seen.iter().map(|s| (s.0, s.1, s.2)).collect();
        assert_eq!(
            lepton, native,
            "the Lepton route disagrees with the native one"
        );
        Ok(seen)
    }
}

fn parse_workload(status: u16, v: &Value) -> WorkloadView {
    if status != 200 {
        return Err(status);
    }
    let mut seen: Vec<(usize, String, u64)> = v["secrets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                Real::name_index(s["name"].as_str().unwrap()),
                s["value"].as_str().unwrap().to_owned(),
                s["version"].as_u64().unwrap(),
            )
        })
        .collect();
    seen.sort();
    Ok(seen)
}

/// Runs one history; an error names the step and what differed.
fn run_history(
    h: &Arc<Http>,
    admin: &str,
    case: usize,
    actions: &[Action],
) -> Result<(), TestCaseError> {
    let ws = format!("m{case}");
    let (status, v) = h.call(
        "POST",
        "/api/v1/workspaces",
        admin,
        Some(json!({ "name": ws })),
    );
    prop_assert_eq!(status, 201, "{}", v);
    let mut model = Model::default();
    let mut real = Real {
        h,
        admin,
        case,
        user_tokens: BTreeMap::new(),
        tokens: Vec::new(),
        poll: None,
    };
    // Every user exists at the start, so that most actions act; the history deletes and
    // re-creates them.
    for slot in 0..USERS {
        let a = Action::AddUser(slot);
        prop_assert_eq!(real.apply(&model, &a), model.apply(&a, Instant::now()));
    }
    // Tokens whose refusal was seen once: a refused token is asked again only if the model
    // says it may read again (it never does), which keeps failed authentications (each slowed
    // down by the server) few.
    let mut refused_seen = vec![false; 0];
    for (step, a) in actions.iter().enumerate() {
        let got = real.apply(&model, a);
        if std::env::var_os("SECRETFS_MODEL_STATS").is_some() {
            let kind = format!("{a:?}");
            eprintln!("STAT {} {got}", kind.split('(').next().unwrap());
        }
        let want = model.apply(a, Instant::now());
        prop_assert_eq!(got, want, "step {}: {:?}", step, a);
        let now = Instant::now();
        // A held long-poll: due when its token's view moved (then it answers with the view of
        // now), else still held.
        if let Some(poll) = real.poll.take() {
            let view = model.workload_view(poll.token, now);
            if view != poll.started_from {
                let (status, body) =
                    poll.answer
                        .recv_timeout(Duration::from_secs(3))
                        .map_err(|_| {
                            TestCaseError::fail(format!("step {step}: a held poll did not answer"))
                        })?;
                // A short token may expire between the model's answer and the poll's.
                let expected = model.workload_view(poll.token, Instant::now());
                prop_assert_eq!(
                    parse_workload(status, &body),
                    expected,
                    "step {}: the held poll on token {} after {:?}",
                    step,
                    poll.token,
                    a
                );
            } else {
                match poll.answer.try_recv() {
                    Ok((status, body)) => prop_assert!(
                        false,
                        "step {}: a held poll answered {} {} while its view did not change",
                        step,
                        status,
                        body
                    ),
                    Err(_) => real.poll = Some(poll),
                }
            }
        }
        for user in 0..model.users.len() {
            if model.users[user].live {
                prop_assert_eq!(
                    real.user_view(user),
                    model.user_view(user),
                    "step {}: user {} after {:?}",
                    step,
                    user,
                    a
                );
            }
        }
        refused_seen.resize(model.tokens.len(), false);
        for (t, seen) in refused_seen.iter_mut().enumerate() {
            let want = model.workload_view(t, Instant::now());
            if want.is_err() {
                if *seen {
                    continue;
                }
                *seen = true;
            }
            let got = real.workload_view(t);
            // Only a short token crossing its expiry between the two reads may differ.
            if model.tokens[t].expires.is_some() && got != want {
                continue;
            }
            prop_assert_eq!(
                got,
                want,
                "step {}: workload token {} after {:?}",
                step,
                t,
                a
            );
        }
    }
    // A poll still held ends with the history.
    drop(real.poll.take());
    Ok(())
}

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn check_against(server: &Server, cases: usize) {
    let h = Arc::new(Http::new(server));
    let steps = env_number("SECRETFS_MODEL_STEPS", 45);
    let config = Config {
        cases: cases as u32,
        failure_persistence: None,
        ..Config::default()
    };
    // A fixed seed: CI runs the same histories every time.
    let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &[7; 32]);
    let mut runner = TestRunner::new_with_rng(config, rng);
    let case = std::sync::atomic::AtomicUsize::new(0);
    let started = Instant::now();
    let result = runner.run(
        &prop::collection::vec(any_action(), steps / 3..steps),
        |actions| {
            let n = case.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            run_history(&h, &server.admin_token, n, &actions)
        },
    );
    eprintln!(
        "access model: {} histories (with shrinking) in {:.1} s",
        case.load(std::sync::atomic::Ordering::Relaxed),
        started.elapsed().as_secs_f64()
    );
    if let Err(e) = result {
        panic!("{e}");
    }
}

/// A failure burst no history reaches.
const UNTHROTTLED: &[&str] = &["--failure-burst", "1000000"];

#[test]
fn the_api_agrees_with_the_access_model_on_sqlite() {
    let s = Scratch::new();
    // Thousands of refused requests from one address: the model is about who gets what, not
    // about how slowly a refusal comes (server_api.rs tests that).
    let server = Server::start_with(&s, UNTHROTTLED);
    check_against(&server, env_number("SECRETFS_MODEL_CASES", 40));
}

#[test]
fn the_api_agrees_with_the_access_model_on_postgres() {
    let Some(admin_url) =
        crate::support::postgres_url("the_api_agrees_with_the_access_model_on_postgres")
    else {
        return;
    };
    let db = crate::support::TempDatabase::new(&admin_url);
    let s = Scratch::new();
    let server = Server::start_pg_with(&s, &db.url, &s.path().join("pg.key"), true, UNTHROTTLED);
    check_against(&server, env_number("SECRETFS_MODEL_CASES", 40) / 4);
}

/// Histories the generator found or that guard a known edge, replayed as they are.
#[test]
fn named_histories() {
    let s = Scratch::new();
    let server = Server::start_with(&s, UNTHROTTLED);
    let h = Arc::new(Http::new(&server));
    let histories: Vec<Vec<Action>> = vec![
        // A member removed: their workload token reads nothing of the workspace any more.
        vec![
            Action::Create(0, 0, false),
            Action::Mint(0, vec![0], false),
            Action::RemoveMember(0),
            Action::AddMember(0),
        ],
        // A held poll across a name deleted and re-created by someone else.
        vec![
            Action::Create(0, 1, true),
            Action::Mint(1, vec![1], false),
            Action::HoldPoll(0),
            Action::Delete(0, 1),
            Action::Create(2, 1, true),
        ],
        // A user deleted and re-created while their token's poll is held.
        vec![
            Action::Create(1, 0, false),
            Action::Mint(1, vec![0], false),
            Action::HoldPoll(0),
            Action::DeleteUser(1),
            Action::AddUser(1),
            Action::Create(1, 0, false),
        ],
    ];
    for (n, actions) in histories.iter().enumerate() {
        if let Err(e) = run_history(&h, &server.admin_token, 10_000 + n, actions) {
            panic!("history {n}: {e}");
        }
    }
}
