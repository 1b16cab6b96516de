//! Workload identity, the pure part: what a binding says (its [`Rules`]), reading an issuer's
//! keys ([`KeySet`]), and verifying a presented platform token against one binding
//! ([`peek`], [`verify`], [`Rules::admits`]). Fetching keys and exchanging tokens is the
//! service's (`service::identity`).
//!
//! The decisions, each the careful one (SECURITY.md, "Workload identity"):
//! - only asymmetric algorithms (RS*, PS*, ES256/384, EdDSA); `alg: none` and HMAC are refused
//!   before any key is looked at, so a token "signed" with the issuer's public key as an HMAC
//!   secret never reaches a verifier;
//! - the algorithm is the key's, never the token's: a JWK's `alg`, or for a JWK without one the
//!   only algorithm its type allows here (RSA: RS256; P-256: ES256; P-384: ES384; Ed25519:
//!   EdDSA); a token whose header names another is refused;
//! - `iss` exact, `aud` must contain the binding's audience, `sub` present, `exp` required;
//!   `exp`, `nbf` and `iat` checked with [`LEEWAY_SECS`] of clock skew; the token's life
//!   (`exp - iat`, or `exp - now` without `iat`) at most the binding's maximum;
//! - nothing here puts a token (or any part of one) into a message.

use std::time::Duration;

use base64::Engine;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Clock skew allowed on `exp`, `nbf` and `iat`: kubelet and CI runners keep time with NTP; 30 s
/// covers a drifting node without extending a token's life noticeably.
pub const LEEWAY_SECS: u64 = 30;
/// The longest token life a binding accepts unless it says otherwise. Kubernetes projects
/// 1-hour tokens, GitHub's last minutes; a longer-lived token is a stolen one's longer use.
pub const DEFAULT_MAX_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// A binding's default (and a token's longest) workload-token life.
pub const DEFAULT_TTL: Duration = Duration::from_secs(3600);
/// Presented tokens larger than this are refused unread (Kubernetes tokens are about 1 KiB).
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;
/// The longest pattern or claim path a binding may hold.
const MAX_PATTERN: usize = 512;

/// A pattern of a binding: `*` matches any run of characters (none included), `?` exactly one,
/// everything else itself. Written here rather than taken from a glob crate because path globs
/// give `/`, `[`, `{` and `\` meanings, and a subject such as `repo:org/app:ref:refs/heads/main`
/// must match only what it reads as. Matching a Kubernetes subject against
/// `system:serviceaccount:ws-*:default` takes well under a microsecond (the identity tests
/// exchange hundreds of tokens; the match is not where their time goes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Glob(String);

impl Glob {
    pub fn parse(s: &str) -> Result<Glob, String> {
        if s.is_empty() {
            return Err("a pattern may not be empty (use * to match anything)".into());
        }
        if s.len() > MAX_PATTERN {
            return Err(format!("a pattern has at most {MAX_PATTERN} bytes"));
        }
        if s.chars().any(char::is_control) {
            return Err("a pattern may not contain control characters".into());
        }
        Ok(Glob(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `text` matches: the usual two-pointer wildcard match with backtracking to the
    /// last `*` (linear in practice, quadratic at worst in the pattern's length).
    pub fn matches(&self, text: &str) -> bool {
        let p: Vec<char> = self.0.chars().collect();
        let t: Vec<char> = text.chars().collect();
        let (mut pi, mut ti) = (0, 0);
        let mut star: Option<(usize, usize)> = None;
        while ti < t.len() {
            if pi < p.len() && (p[pi] == '?' || (p[pi] != '*' && p[pi] == t[ti])) {
                pi += 1;
                ti += 1;
            } else if pi < p.len() && p[pi] == '*' {
                star = Some((pi, ti));
                pi += 1;
            } else if let Some((sp, st)) = star {
                pi = sp + 1;
                ti = st + 1;
                star = Some((sp, st + 1));
            } else {
                return false;
            }
        }
        p[pi..].iter().all(|&c| c == '*')
    }
}

impl TryFrom<String> for Glob {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        Glob::parse(&s)
    }
}

impl From<Glob> for String {
    fn from(g: Glob) -> String {
        g.0
    }
}

/// One claim a binding requires: the value at `path` (dots between levels) must match.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimRule {
    pub path: String,
    pub pattern: Glob,
}

impl ClaimRule {
    /// Parses `PATH=GLOB` (the CLI's `--claim`).
    pub fn parse(s: &str) -> Result<ClaimRule, String> {
        let Some((path, pattern)) = s.split_once('=') else {
            return Err(format!(
                "claim rule {s:?} has no '='; write PATH=PATTERN, e.g. kubernetes.io.namespace=ws-*"
            ));
        };
        let path = path.trim();
        if path.is_empty() || path.len() > MAX_PATTERN || path.split('.').any(str::is_empty) {
            return Err(format!(
                "claim path {path:?} must be names separated by single dots"
            ));
        }
        Ok(ClaimRule {
            path: path.to_owned(),
            pattern: Glob::parse(pattern).map_err(|e| format!("claim {path}: {e}"))?,
        })
    }
}

/// Where a binding takes its issuer's keys from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "from", rename_all = "snake_case")]
pub enum KeySource {
    /// `ISSUER/.well-known/openid-configuration`, then its `jwks_uri`.
    Discovery,
    /// A JWKS document at this URL.
    Url { url: String },
    /// A JWKS document given at `identity add` (`--jwks-file`: an issuer the server cannot
    /// reach, e.g. `kubectl get --raw /openid/v1/jwks`).
    Inline { jwks: String },
}

/// A secret a binding grants, by id (the name for display and for the workload's files).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantRule {
    pub secret_id: String,
    pub name: String,
}

/// What a binding says beyond its issuer, workspace and user: stored as one JSON document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rules {
    pub audience: String,
    pub subject: Glob,
    #[serde(default)]
    pub claims: Vec<ClaimRule>,
    /// The longest life of a workload token an exchange mints.
    pub ttl_secs: u64,
    /// The longest life (`exp - iat`) of a presented token.
    pub max_lifetime_secs: u64,
    pub keys: KeySource,
    pub grants: Vec<GrantRule>,
}

/// Why a presented token was refused. Messages name the check and the binding's expectation,
/// never the token; values read from an unverified token are quoted, cut and escaped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the subject token is not a JWT (three base64url parts separated by dots): {0}")]
    Malformed(String),
    #[error("the subject token is larger than {MAX_TOKEN_BYTES} bytes")]
    TooLarge,
    #[error("the subject token is unsigned (alg \"none\"); only signed tokens are accepted")]
    Unsigned,
    #[error(
        "the subject token uses the symmetric algorithm {0}; only asymmetric algorithms (RS*, PS*, ES256, ES384, EdDSA) are accepted"
    )]
    Symmetric(String),
    #[error("the subject token's algorithm {0} is not supported")]
    UnsupportedAlgorithm(String),
    #[error("the subject token has no \"iss\" claim")]
    NoIssuer,
    #[error("no identity binding trusts the issuer {0}")]
    UnknownIssuer(String),
    #[error(
        "the issuer publishes no key {0}; the token was signed by a key it does not publish (its keys are fetched again for an unknown key at most once per --jwks-refetch-interval)"
    )]
    UnknownKey(String),
    #[error(
        "the token's algorithm {token} is not its key's ({key}); the algorithm is taken from the key"
    )]
    AlgorithmMismatch { token: String, key: String },
    #[error("the token's signature does not verify against the issuer's key")]
    BadSignature,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet (nbf is in the future)")]
    NotYetValid,
    #[error("the token was issued in the future (iat); check the issuer's clock")]
    IssuedInFuture,
    #[error("the token's issuer is not {0:?}")]
    WrongIssuer(String),
    #[error("the token's audience does not include {0:?}")]
    WrongAudience(String),
    #[error("the token has no {0:?} claim")]
    MissingClaim(String),
    #[error("the token lives {lifetime_secs} s, longer than the binding's maximum of {max_secs} s")]
    TooLong { lifetime_secs: u64, max_secs: u64 },
    #[error("the token's sub {0} does not match the binding's subject {1:?}")]
    SubjectMismatch(String, String),
    #[error("the token's claim {0} is {1}, which does not match {2:?}")]
    ClaimMismatch(String, String, String),
    #[error("cannot get the issuer's keys: {0}")]
    KeysUnavailable(String),
}

/// What every refusal decided before the token's signature verified is told, word for word:
/// an unknown issuer, a scope that names no binding, a key the issuer does not publish, a
/// signature that does not verify. A forged token learns nothing of which issuers are trusted or
/// which bindings exist.
pub const UNADMITTED: &str = "no identity binding admits the token";

impl Refusal {
    /// Whether this refusal depends on the server's bindings and was decided before the token's
    /// signature verified against a trusted key: then the caller gets [`UNADMITTED`] and nothing
    /// else. (A token that is not a signed JWT at all, or names no issuer, is told so: that says
    /// nothing of the server.)
    pub fn before_signature(&self) -> bool {
        matches!(
            self,
            Refusal::UnknownIssuer(_)
                | Refusal::UnknownKey(_)
                | Refusal::AlgorithmMismatch { .. }
                | Refusal::BadSignature
                | Refusal::KeysUnavailable(_)
        )
    }

    /// What the caller is told: the check that failed and what the token held, never what a
    /// binding expects (its audience, patterns, key URLs) nor why the issuer's keys could not be
    /// had: an anonymous caller with a validly signed token of its own (any GitHub repository
    /// can mint one) must not be able to map the bindings. The audit record and the log carry
    /// the whole reason ([`std::fmt::Display`]).
    pub fn public(&self) -> String {
        match self {
            Refusal::WrongIssuer(_) => "the token's issuer is not the binding's".into(),
            Refusal::WrongAudience(_) => "the token's audience is not one a binding accepts".into(),
            Refusal::SubjectMismatch(sub, _) => {
                format!("the token's sub {sub} does not match a binding's subject pattern")
            }
            Refusal::ClaimMismatch(path, got, _) => {
                format!(
                    "the token's claim {path} is {got}, which a binding's pattern does not match"
                )
            }
            Refusal::TooLong { lifetime_secs, .. } => {
                format!("the token lives {lifetime_secs} s, longer than a binding accepts")
            }
            Refusal::KeysUnavailable(_) => {
                "cannot get the issuer's keys now; try again later (the server's log says why)"
                    .into()
            }
            other => other.to_string(),
        }
    }
}

/// A value read from an unverified token, for a message: quoted, escaped and cut, as every
/// user-supplied string in an error is.
pub use crate::secret::quote_for_error as shown;

/// What the exchange reads of a token before it knows which key verifies it: the header's
/// algorithm and key id, the claimed issuer and subject. Nothing here is trusted.
#[derive(Debug, Clone)]
pub struct Peek {
    pub alg: Algorithm,
    pub kid: Option<String>,
    pub iss: String,
    pub sub: Option<String>,
}

fn b64_json(part: &str, what: &str) -> Result<Value, Refusal> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part.trim_end_matches('='))
        .map_err(|_| Refusal::Malformed(format!("its {what} is not base64url")))?;
    serde_json::from_slice(&bytes)
        .map_err(|_| Refusal::Malformed(format!("its {what} is not JSON")))
}

/// Reads the header and the claimed issuer; refuses unsigned and symmetric tokens here, before
/// any key is chosen.
pub fn peek(token: &str) -> Result<Peek, Refusal> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(Refusal::TooLarge);
    }
    let parts: Vec<&str> = token.split('.').collect();
    if parts.len() != 3 {
        return Err(Refusal::Malformed(format!("it has {} parts", parts.len())));
    }
    let header = b64_json(parts[0], "header")?;
    let alg = header
        .get("alg")
        .and_then(Value::as_str)
        .ok_or_else(|| Refusal::Malformed("its header names no \"alg\"".into()))?;
    if alg.eq_ignore_ascii_case("none") {
        return Err(Refusal::Unsigned);
    }
    if alg.to_ascii_uppercase().starts_with("HS") {
        return Err(Refusal::Symmetric(shown(alg)));
    }
    let alg = match alg {
        "RS256" => Algorithm::RS256,
        "RS384" => Algorithm::RS384,
        "RS512" => Algorithm::RS512,
        "PS256" => Algorithm::PS256,
        "PS384" => Algorithm::PS384,
        "PS512" => Algorithm::PS512,
        "ES256" => Algorithm::ES256,
        "ES384" => Algorithm::ES384,
        "EdDSA" => Algorithm::EdDSA,
        other => return Err(Refusal::UnsupportedAlgorithm(shown(other))),
    };
    if parts[2].is_empty() {
        return Err(Refusal::Unsigned);
    }
    let kid = header.get("kid").and_then(Value::as_str).map(str::to_owned);
    let claims = b64_json(parts[1], "payload")?;
    let iss = claims
        .get("iss")
        .and_then(Value::as_str)
        .ok_or(Refusal::NoIssuer)?
        .to_owned();
    let sub = claims.get("sub").and_then(Value::as_str).map(str::to_owned);
    Ok(Peek { alg, kid, iss, sub })
}

/// One verifying key of an issuer, with the only algorithm it verifies.
pub struct VerifyKey {
    pub kid: Option<String>,
    pub alg: Algorithm,
    key: DecodingKey,
}

/// An issuer's published keys, as far as they can verify signatures.
#[derive(Default)]
pub struct KeySet {
    keys: Vec<VerifyKey>,
}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kids: Vec<_> = self.keys.iter().map(|k| (&k.kid, k.alg)).collect();
        f.debug_struct("KeySet").field("keys", &kids).finish()
    }
}

/// The algorithm a key verifies: its `alg`, else the one its type allows here.
fn key_algorithm(jwk: &Jwk) -> Result<Algorithm, String> {
    let declared = match jwk.common.key_algorithm {
        None => None,
        Some(a) => Some(match a {
            KeyAlgorithm::RS256 => Algorithm::RS256,
            KeyAlgorithm::RS384 => Algorithm::RS384,
            KeyAlgorithm::RS512 => Algorithm::RS512,
            KeyAlgorithm::PS256 => Algorithm::PS256,
            KeyAlgorithm::PS384 => Algorithm::PS384,
            KeyAlgorithm::PS512 => Algorithm::PS512,
            KeyAlgorithm::ES256 => Algorithm::ES256,
            KeyAlgorithm::ES384 => Algorithm::ES384,
            KeyAlgorithm::EdDSA => Algorithm::EdDSA,
            other => return Err(format!("its alg {other:?} is not an asymmetric signature")),
        }),
    };
    let allowed: &[Algorithm] = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => &[
            Algorithm::RS256,
            Algorithm::RS384,
            Algorithm::RS512,
            Algorithm::PS256,
            Algorithm::PS384,
            Algorithm::PS512,
        ],
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => &[Algorithm::ES256],
            EllipticCurve::P384 => &[Algorithm::ES384],
            _ => return Err("its curve is not P-256 or P-384".into()),
        },
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
            &[Algorithm::EdDSA]
        }
        AlgorithmParameters::OctetKeyPair(_) => return Err("its curve is not Ed25519".into()),
        AlgorithmParameters::OctetKey(_) => return Err("it is a symmetric key".into()),
        _ => return Err("its key type is not RSA, EC or OKP".into()),
    };
    match declared {
        Some(a) if allowed.contains(&a) => Ok(a),
        Some(a) => Err(format!("its alg {a:?} does not fit its key type")),
        None => Ok(allowed[0]),
    }
}

impl KeySet {
    /// Reads a JWKS document. Keys that cannot verify a signature here (encryption keys,
    /// symmetric keys, unknown types) are skipped and named in the second list, so that one
    /// odd key in an issuer's set does not lock out the others.
    pub fn parse(json: &[u8]) -> Result<(KeySet, Vec<String>), String> {
        #[derive(Deserialize)]
        struct Doc {
            keys: Vec<Value>,
        }
        let doc: Doc = serde_json::from_slice(json)
            .map_err(|e| format!("not a JWKS document (a JSON object with \"keys\"): {e}"))?;
        let mut set = KeySet::default();
        let mut skipped = Vec::new();
        for (i, raw) in doc.keys.into_iter().enumerate() {
            let label = raw
                .get("kid")
                .and_then(Value::as_str)
                .map(shown)
                .unwrap_or_else(|| format!("#{i}"));
            let jwk: Jwk = match serde_json::from_value(raw) {
                Ok(j) => j,
                Err(e) => {
                    skipped.push(format!("key {label}: {e}"));
                    continue;
                }
            };
            if jwk.common.public_key_use == Some(PublicKeyUse::Encryption) {
                skipped.push(format!("key {label}: an encryption key"));
                continue;
            }
            let alg = match key_algorithm(&jwk) {
                Ok(a) => a,
                Err(e) => {
                    skipped.push(format!("key {label}: {e}"));
                    continue;
                }
            };
            match DecodingKey::from_jwk(&jwk) {
                Ok(key) => set.keys.push(VerifyKey {
                    kid: jwk.common.key_id.clone(),
                    alg,
                    key,
                }),
                Err(e) => skipped.push(format!("key {label}: {e}")),
            }
        }
        Ok((set, skipped))
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The key a token names: of its `kid`, the one of its algorithm if there is one (an
    /// issuer may publish an RSA and an EC key under one id), else the first (which then
    /// refuses the token's algorithm by name); a token without `kid` only when the set has one
    /// key.
    pub fn find(&self, kid: Option<&str>, alg: Algorithm) -> Option<&VerifyKey> {
        match kid {
            Some(kid) => {
                let mut named = self.keys.iter().filter(|k| k.kid.as_deref() == Some(kid));
                let first = named.clone().next();
                named.find(|k| k.alg == alg).or(first)
            }
            None if self.keys.len() == 1 => self.keys.first(),
            None => None,
        }
    }

    /// Whether the set holds a key of this id.
    pub fn has(&self, kid: Option<&str>) -> bool {
        match kid {
            Some(kid) => self.keys.iter().any(|k| k.kid.as_deref() == Some(kid)),
            None => self.keys.len() == 1,
        }
    }
}

/// What a binding checks a token against.
#[derive(Debug, Clone, Copy)]
pub struct Policy<'a> {
    pub issuer: &'a str,
    pub audience: &'a str,
    pub max_lifetime: Duration,
}

/// A token whose signature and times verified.
#[derive(Debug, Clone)]
pub struct Verified {
    pub claims: Value,
    pub sub: String,
    /// When it stops being accepted, seconds since the epoch: `exp`, or Kubernetes'
    /// `kubernetes.io.warnafter` when that is earlier (see [`effective_exp`]).
    pub exp: u64,
}

/// A token's end of life: `exp`, or earlier `kubernetes.io.warnafter`. Kubernetes extends the
/// `exp` of projected tokens to a year for clients that cannot refresh
/// (`--service-account-extend-token-expiration`, on by default) and records in `warnafter` when
/// the token would have expired; kubelet rewrites the file on the unextended schedule, so a
/// token past its `warnafter` is an old copy, not the pod's current one, and is not accepted.
pub fn effective_exp(claims: &Value, exp: u64) -> u64 {
    claims
        .get("kubernetes.io")
        .and_then(|k| k.get("warnafter"))
        .and_then(Value::as_u64)
        .map_or(exp, |w| w.min(exp))
}

/// Verifies `token` (already [`peek`]ed) with `key` under `policy` at `now` (seconds since the
/// epoch; `exp` and `nbf` are checked by jsonwebtoken against the system clock).
pub fn verify(
    token: &str,
    peeked: &Peek,
    key: &VerifyKey,
    policy: Policy<'_>,
    now: u64,
) -> Result<Verified, Refusal> {
    if peeked.alg != key.alg {
        return Err(Refusal::AlgorithmMismatch {
            token: format!("{:?}", peeked.alg),
            key: format!("{:?}", key.alg),
        });
    }
    let mut v = Validation::new(key.alg);
    v.leeway = LEEWAY_SECS;
    v.validate_exp = true;
    v.validate_nbf = true;
    v.validate_aud = true;
    v.set_issuer(&[policy.issuer]);
    v.set_audience(&[policy.audience]);
    v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    let data = jsonwebtoken::decode::<Value>(token, &key.key, &v).map_err(|e| {
        use jsonwebtoken::errors::ErrorKind as K;
        match e.kind() {
            K::InvalidSignature => Refusal::BadSignature,
            K::ExpiredSignature => Refusal::Expired,
            K::ImmatureSignature => Refusal::NotYetValid,
            K::InvalidIssuer => Refusal::WrongIssuer(policy.issuer.to_owned()),
            K::InvalidAudience => Refusal::WrongAudience(policy.audience.to_owned()),
            K::MissingRequiredClaim(c) => Refusal::MissingClaim(c.clone()),
            K::InvalidAlgorithm => Refusal::AlgorithmMismatch {
                token: format!("{:?}", peeked.alg),
                key: format!("{:?}", key.alg),
            },
            // Fixed words: jsonwebtoken's own messages may quote what the token held (serde's
            // "invalid type: string ..."), which no caller, log or audit record should get back.
            K::InvalidClaimFormat(_) => {
                Refusal::Malformed("a claim of it has the wrong type".into())
            }
            K::Json(_) | K::Base64(_) | K::Utf8(_) | K::InvalidToken => {
                Refusal::Malformed("its header or payload cannot be read".into())
            }
            _ => Refusal::Malformed("it cannot be verified with the issuer's key".into()),
        }
    })?;
    let claims = data.claims;
    let exp = claims
        .get("exp")
        .and_then(Value::as_u64)
        .ok_or_else(|| Refusal::Malformed("its \"exp\" is not a whole number of seconds".into()))?;
    let iat = match claims.get("iat") {
        None => None,
        Some(v) => Some(v.as_u64().ok_or_else(|| {
            Refusal::Malformed("its \"iat\" is not a whole number of seconds".into())
        })?),
    };
    if iat.is_some_and(|iat| iat > now + LEEWAY_SECS) {
        return Err(Refusal::IssuedInFuture);
    }
    let exp = effective_exp(&claims, exp);
    // The leeway is for clocks, not for life: a workload token never outlives the token it was
    // exchanged for (jsonwebtoken allowed `exp` up to the leeway ago).
    if exp <= now {
        return Err(Refusal::Expired);
    }
    let lifetime = exp.saturating_sub(iat.unwrap_or(now));
    let max = policy.max_lifetime.as_secs();
    if lifetime > max + LEEWAY_SECS {
        return Err(Refusal::TooLong {
            lifetime_secs: lifetime,
            max_secs: max,
        });
    }
    let sub = claims
        .get("sub")
        .and_then(Value::as_str)
        .ok_or_else(|| Refusal::MissingClaim("sub".into()))?
        .to_owned();
    Ok(Verified { claims, sub, exp })
}

/// The values at a claim path, as text: a string, number or boolean is one value, an array of
/// them several. A level's key may itself hold dots (`kubernetes.io`), so a path can be read in
/// several ways; it must resolve in exactly one (`None` otherwise), so that a claim named
/// `kubernetes.io.namespace` at the top cannot stand in for the nested one, or the reverse.
pub fn claim_values(claims: &Value, path: &str) -> Option<Vec<String>> {
    fn resolve<'a>(at: &'a Value, segments: &[&str], found: &mut Vec<&'a Value>) {
        if segments.is_empty() {
            found.push(at);
            return;
        }
        let Some(obj) = at.as_object() else {
            return;
        };
        for end in 1..=segments.len() {
            if let Some(v) = obj.get(&segments[..end].join(".")) {
                resolve(v, &segments[end..], found);
            }
        }
    }
    let segments: Vec<&str> = path.split('.').collect();
    let mut found = Vec::new();
    resolve(claims, &segments, &mut found);
    let [at] = found.as_slice() else {
        return None;
    };
    let scalar = |v: &Value| match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    };
    Some(match at {
        Value::Array(items) => items.iter().filter_map(scalar).collect(),
        other => scalar(other).into_iter().collect(),
    })
}

impl Rules {
    /// Whether a verified token's subject and claims match this binding.
    pub fn admits(&self, v: &Verified) -> Result<(), Refusal> {
        if !self.subject.matches(&v.sub) {
            return Err(Refusal::SubjectMismatch(
                shown(&v.sub),
                self.subject.as_str().to_owned(),
            ));
        }
        for rule in &self.claims {
            let Some(values) = claim_values(&v.claims, &rule.path) else {
                return Err(Refusal::ClaimMismatch(
                    rule.path.clone(),
                    "ambiguous (more than one claim reads as this path)".into(),
                    rule.pattern.as_str().to_owned(),
                ));
            };
            if !values.iter().any(|x| rule.pattern.matches(x)) {
                let got = match values.first() {
                    Some(x) => shown(x),
                    None => "absent".into(),
                };
                return Err(Refusal::ClaimMismatch(
                    rule.path.clone(),
                    got,
                    rule.pattern.as_str().to_owned(),
                ));
            }
        }
        Ok(())
    }
}

/// Whether `ip` is this host by its kind, whatever host this is: loopback (all of 127.0.0.0/8,
/// `::1`), unspecified and "this network" (0.0.0.0/8, `::`: a connection to them reaches this
/// host), link-local (169.254.0.0/16, fe80::/10), in IPv4-mapped and IPv4-compatible IPv6 forms
/// too. (The host's own interface addresses are checked where the fetch is made:
/// `service::jwks`.)
pub fn is_local_ip(ip: std::net::IpAddr) -> bool {
    use std::net::IpAddr;
    match ip {
        IpAddr::V4(v4) => v4.is_loopback() || v4.octets()[0] == 0 || v4.is_link_local(),
        IpAddr::V6(v6) => {
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_unicast_link_local()
                || v6.to_ipv4().is_some_and(|v4| is_local_ip(IpAddr::V4(v4)))
        }
    }
}

/// Whether `url` names this host outright: `localhost` (or a name under it), or an address
/// [`is_local_ip`] accepts however it is spelled (`127.1`, `2130706433`, `0x7f.1`,
/// `[::ffff:127.0.0.1]`), read as the URL standard reads it, which is how the HTTP client will
/// read it. A name that only resolves to this host is not "outright": it is refused where the
/// fetch resolves it.
pub fn names_this_host(url: &str) -> bool {
    let Ok(parsed) = url::Url::parse(url) else {
        return false;
    };
    match parsed.host() {
        Some(url::Host::Domain(d)) => {
            let d = d.trim_end_matches('.').to_ascii_lowercase();
            d == "localhost" || d.ends_with(".localhost")
        }
        Some(url::Host::Ipv4(v4)) => is_local_ip(v4.into()),
        Some(url::Host::Ipv6(v6)) => is_local_ip(v6.into()),
        None => false,
    }
}

/// Whether a URL the server fetches keys from is acceptable: HTTPS, or plain HTTP to loopback
/// (tests, and an issuer proxied on the same host).
pub fn fetchable(url: &str) -> Result<(), String> {
    if url.starts_with("https://") || (url.starts_with("http://") && names_this_host(url)) {
        return Ok(());
    }
    Err(format!(
        "{} must be an https:// URL (plain http:// only to this host: 127.0.0.1, [::1] or localhost)",
        shown(url)
    ))
}

#[cfg(test)]
mod tests;
