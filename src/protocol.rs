//! The HTTP API's conversation, written once: every request body and answer the server's
//! handlers (`api/*`) write and the client (`client.rs`) reads, the error body, and the
//! workload read. Pure serde types: no HTTP, no store.
//!
//! Values cross the wire only inside the types here, never as a plain `String`: request bodies
//! hold them as [`TextValue`] / [`Base64Value`] (zeroized, checked against the store's limit by
//! the receiver with [`value_of`]), and the workload read's answer serialises from and
//! deserialises into [`SecretValue`] directly.

use std::fmt;

use base64::Engine as _;
use serde::de::{self, Deserializer, Visitor};
use serde::ser::{SerializeStruct, Serializer};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use zeroize::Zeroizing;

use crate::auth::{Token, TokenKind};
use crate::secret::{
    SecretKind, SecretMeta, SecretName, SecretValue, Timestamp, ValueError, ValueLimit, Visibility,
};

/// Every error answer: `{"code": ..., "message": ..., "field": ...}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// `bad_request`, `unauthorized`, `forbidden`, `not_found`, `conflict`, `invalid`,
    /// `too_large`, `unsupported_media_type`, `out_of_space`, `unavailable`, `internal`,
    /// `not_implemented`.
    pub code: String,
    pub message: String,
    /// The request field the error is about (`name`, `value`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// String rules the server enforces, as the OpenAPI document states them (the fields stay
// `String`: the handlers parse them and say what is wrong with a value in their own words).

/// A user, workspace or binding name: `store::valid_account_name`.
pub struct AccountName;

/// The rule of [`AccountName`] as a pattern (ECMA-262), checked against the function by a test.
pub const ACCOUNT_NAME_PATTERN: &str = "^[A-Za-z0-9_@][A-Za-z0-9_.@-]*$";

impl utoipa::PartialSchema for AccountName {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        string_rule(
            ACCOUNT_NAME_PATTERN,
            64,
            "1 to 64 letters, digits, '_', '.', '@' or '-', not starting with '.' or '-'",
        )
    }
}

impl ToSchema for AccountName {}

/// A tag: `secret::validate_tags`.
pub struct Tag;

/// The rule of [`Tag`] as a pattern: no whitespace, control character or ','.
pub const TAG_PATTERN: &str = "^[^\\s,\\u0000-\\u001f\\u007f-\\u009f]*$";

impl utoipa::PartialSchema for Tag {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        string_rule(
            TAG_PATTERN,
            crate::secret::TAG_MAX_LEN,
            "1 to 64 characters without whitespace, control characters or ','",
        )
    }
}

impl ToSchema for Tag {}

/// A duration: the document states its canonical form (one number and a unit, always between 1s
/// and 366d); the server also reads `humantime`'s other forms ("1h 30m", "2weeks").
pub struct Duration;

/// The canonical forms of [`Duration`]: up to 9999 seconds or minutes, 999 hours, 366 days.
pub const DURATION_PATTERN: &str =
    "^([1-9][0-9]{0,3}[sm]|[1-9][0-9]{0,2}h|([1-9]|[1-9][0-9]|[12][0-9]{2}|3[0-5][0-9]|36[0-6])d)$";

impl utoipa::PartialSchema for Duration {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        string_rule(
            DURATION_PATTERN,
            6,
            "a duration between 1s and 366d: \"90s\", \"15m\", \"1h\", \"30d\" (the server \
             also reads forms like \"1h 30m\")",
        )
    }
}

impl ToSchema for Duration {}

/// A moment of the audit log: an RFC 3339 UTC time, or a duration ago.
pub struct Since;

/// The canonical forms of [`Since`]: a [`DURATION_PATTERN`] or a UTC time to the second (days
/// to the 28th, so that every string of the pattern is a date).
pub const SINCE_PATTERN: &str = "^([1-9][0-9]{0,3}[sm]|[1-9][0-9]{0,2}h|([1-9]|[1-9][0-9]|[12][0-9]{2}|3[0-5][0-9]|36[0-6])d|20[0-9]{2}-(0[1-9]|1[0-2])-(0[1-9]|1[0-9]|2[0-8])T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]Z)$";

impl utoipa::PartialSchema for Since {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        string_rule(
            SINCE_PATTERN,
            20,
            "an RFC 3339 UTC time (\"2026-01-31T12:00:00Z\") or a duration ago (\"1h\")",
        )
    }
}

impl ToSchema for Since {}

/// A moment a client sends back (`Held::updated_at`): RFC 3339 in UTC, as the server writes it.
pub struct UtcTime;

impl utoipa::PartialSchema for UtcTime {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        string_rule(
            "^(19[7-9][0-9]|2[0-9]{3})-(0[1-9]|1[0-2])-(0[1-9]|1[0-9]|2[0-8])T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\\.[0-9]{1,9})?Z$",
            30,
            "RFC 3339 in UTC (\"2026-01-31T12:00:00.5Z\"), as the server's answers have it",
        )
    }
}

impl ToSchema for UtcTime {}

/// The longest a long-poll is held (`wait_secs`' maximum; `service::MAX_WAIT`).
pub const WAIT_SECS_MAX: u64 = 60;

/// How long a long-poll may hold: a number and a unit (`ms`, `s`, `m`); held at most 60s.
pub struct Wait;

/// The rule of [`Wait`].
pub const WAIT_PATTERN: &str = "^[0-9]{1,4}(ms|s|m)$";

impl utoipa::PartialSchema for Wait {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        string_rule(
            WAIT_PATTERN,
            6,
            "a number and a unit, ms, s or m (\"30s\"); the server holds at most 60s",
        )
    }
}

impl ToSchema for Wait {}

/// Secret names, comma-separated (a query string's list).
pub struct NameList;

impl utoipa::PartialSchema for NameList {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::schema::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .pattern(Some(
                "^([A-Za-z_][A-Za-z0-9._-]*(,[A-Za-z_][A-Za-z0-9._-]*)*)?$",
            ))
            .description(Some("secret names, comma-separated"))
            .into()
    }
}

impl ToSchema for NameList {}

fn string_rule(
    pattern: &str,
    max: usize,
    rule: &str,
) -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
    utoipa::openapi::schema::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::String)
        .pattern(Some(pattern))
        .min_length(Some(1))
        .max_length(Some(max))
        .description(Some(rule))
        .into()
}

// ---------------------------------------------------------------------------------------------
// Values in request bodies.

/// A value sent as UTF-8 text (`"value"`), held zeroized from the moment it is parsed.
pub struct TextValue(Zeroizing<String>);

/// A value sent as base64 (`"value_base64"`), the text held zeroized until it is decoded.
pub struct Base64Value(Zeroizing<String>);

impl TextValue {
    pub fn new(text: Zeroizing<String>) -> Self {
        TextValue(text)
    }
}

impl Base64Value {
    /// The base64 form of `value`, for a request body.
    pub fn encode(value: &SecretValue) -> Self {
        Base64Value(Zeroizing::new(
            base64::engine::general_purpose::STANDARD.encode(value.expose_secret()),
        ))
    }
}

impl fmt::Debug for TextValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[REDACTED]")
    }
}

impl fmt::Debug for Base64Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[REDACTED]")
    }
}

impl Serialize for TextValue {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl Serialize for Base64Value {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

/// Takes a JSON string into zeroized memory: borrowed input is copied once into a buffer of
/// its exact size, an owned one is moved, so no growing buffer leaves copies behind.
struct ZeroizedString;

impl<'de> Visitor<'de> for ZeroizedString {
    type Value = Zeroizing<String>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        let mut s = Zeroizing::new(String::with_capacity(v.len()));
        s.push_str(v);
        Ok(s)
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(Zeroizing::new(v))
    }
}

impl<'de> Deserialize<'de> for TextValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_string(ZeroizedString).map(TextValue)
    }
}

impl Serialize for Token {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.expose_token())
    }
}

impl<'de> Deserialize<'de> for Token {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_string(ZeroizedString)
            .map(Token::from_zeroizing)
    }
}

impl<'de> Deserialize<'de> for Base64Value {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_string(ZeroizedString).map(Base64Value)
    }
}

/// Why a body's value is unusable; the message names the field and never the value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValueProblem(pub String);

/// The value of a body: at most one of `value` and `value_base64`, decoded without copies left
/// behind and checked against `limit`. `None` when neither is given.
pub fn value_of(
    value: Option<TextValue>,
    value_base64: Option<Base64Value>,
    limit: ValueLimit,
) -> Result<Option<SecretValue>, ValueProblem> {
    let bytes = match (value, value_base64) {
        (Some(_), Some(_)) => {
            return Err(ValueProblem(
                "give either value or value_base64, not both".into(),
            ));
        }
        // Moved, not copied: the text's buffer becomes the value's.
        (Some(TextValue(mut text)), None) => {
            Zeroizing::new(std::mem::take(&mut *text).into_bytes())
        }
        (None, Some(Base64Value(b64))) => Zeroizing::new(
            base64::engine::general_purpose::STANDARD
                .decode(b64.as_bytes())
                .map_err(|_| ValueProblem("value_base64 is not valid base64".into()))?,
        ),
        (None, None) => return Ok(None),
    };
    SecretValue::new(bytes, limit)
        .map(Some)
        .map_err(|e: ValueError| ValueProblem(e.to_string()))
}

/// An optional field that, when given, holds a value: `null` is refused like any other wrong
/// type (the document types these fields without `null`, and so does the server).
pub(crate) fn no_null<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(d).map(Some)
}

// ---------------------------------------------------------------------------------------------
// Secrets, as users manage them.

/// `POST /api/v1/workspaces/{ws}/secrets`, and each entry of an import.
#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(no_recursion)]
pub struct CreateSecret {
    #[schema(value_type = SecretName)]
    pub name: String,
    /// The value as text (exactly one of `value` and `value_base64`)...
    #[serde(
        default,
        deserialize_with = "no_null",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = String, min_length = 1, max_length = 1048576)]
    pub value: Option<TextValue>,
    /// ...or as base64, for bytes that are not UTF-8.
    #[serde(
        default,
        deserialize_with = "no_null",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = String, format = Byte, min_length = 4)]
    pub value_base64: Option<Base64Value>,
    /// The template the secret follows (default `custom`).
    #[serde(
        default,
        deserialize_with = "no_null",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = SecretKind)]
    pub kind: Option<String>,
    /// Default `private`.
    #[serde(
        default,
        deserialize_with = "no_null",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Visibility)]
    pub visibility: Option<String>,
    #[serde(default)]
    #[schema(value_type = Vec<Tag>, max_items = 32)]
    pub tags: Vec<String>,
}

/// `PATCH /api/v1/workspaces/{ws}/secrets/{name}`: what is given changes.
#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateSecret {
    /// A new value as text (at most one of `value` and `value_base64`): a new version.
    #[serde(
        default,
        deserialize_with = "no_null",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = String, min_length = 1, max_length = 1048576)]
    pub value: Option<TextValue>,
    #[serde(
        default,
        deserialize_with = "no_null",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = String, format = Byte, min_length = 4)]
    pub value_base64: Option<Base64Value>,
    #[serde(
        default,
        deserialize_with = "no_null",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Visibility)]
    pub visibility: Option<String>,
    #[serde(
        default,
        deserialize_with = "no_null",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Vec<Tag>, max_items = 32)]
    pub tags: Option<Vec<String>>,
}

/// `POST /api/v1/workspaces/{ws}/secrets:import`: all or none.
#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImportSecrets {
    #[schema(min_items = 1)]
    pub secrets: Vec<CreateSecret>,
}

/// A created or updated secret's metadata, with what its template noticed about the value (a
/// token that does not look like its provider's): stored anyway, but worth showing.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Written {
    #[serde(flatten)]
    pub meta: SecretMeta,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// The answer to an import.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Imported {
    pub secrets: Vec<Written>,
}

// ---------------------------------------------------------------------------------------------
// Accounts and tokens.

/// `GET /api/v1/whoami`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct WhoAmI {
    pub user: String,
    pub user_id: String,
    pub admin: bool,
    pub workspaces: Vec<String>,
    pub token: TokenInfo,
}

/// A token as listed: everything but the token.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TokenInfo {
    pub id: String,
    pub masked: String,
    pub kind: TokenKind,
    pub user: String,
    pub user_id: String,
    pub workspace: Option<String>,
    /// The names of the secrets a workload token was minted for.
    pub secrets: Vec<SecretName>,
    /// Their ids: what the token may read (a later secret of the same name is not one of them).
    pub secret_ids: Vec<String>,
    pub created_at: Timestamp,
    pub expires_at: Option<Timestamp>,
    pub max_expires_at: Option<Timestamp>,
    /// How far a renewal extends a workload token.
    pub ttl_secs: Option<u64>,
    pub revoked: bool,
    pub description: String,
    /// The token that minted this one, if a token did.
    pub minted_by: Option<String>,
}

/// A minted token: the one answer that holds a token in the clear.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Minted {
    pub token: Token,
    #[serde(flatten)]
    pub info: TokenInfo,
}

/// `POST /api/v1/workspaces/{ws}/tokens`.
#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MintWorkload {
    #[schema(value_type = Vec<SecretName>, min_items = 1)]
    pub secrets: Vec<String>,
    /// How long it is valid, and how far each renewal extends it ("1h").
    #[serde(
        default,
        deserialize_with = "no_null",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Duration)]
    pub ttl: Option<String>,
    /// The longest it may live, renewals included ("30d").
    #[serde(
        default,
        deserialize_with = "no_null",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Duration)]
    pub max_ttl: Option<String>,
    #[serde(default)]
    pub description: String,
}

/// `POST /api/v1/users/{name}/tokens`.
#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MintUser {
    #[serde(
        default,
        deserialize_with = "no_null",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Duration)]
    pub ttl: Option<String>,
    #[serde(default)]
    pub description: String,
}

/// `POST /api/v1/tokens/renew`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Renewed {
    pub id: String,
    pub expires_at: Timestamp,
    pub max_expires_at: Option<Timestamp>,
}

/// `POST /api/v1/identity/bindings`: trust tokens of `issuer` whose `aud`, `sub` and claims
/// match, acting as `user` for exactly `secrets`.
#[derive(Debug, Default, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewBinding {
    #[schema(value_type = AccountName)]
    pub name: String,
    #[serde(default = "default_workspace")]
    pub workspace: String,
    pub issuer: String,
    pub audience: String,
    pub subject: String,
    /// `PATH=PATTERN` rules on further claims (`kubernetes.io.namespace=ws-*`).
    #[serde(default)]
    pub claims: Vec<String>,
    pub user: String,
    #[schema(value_type = Vec<SecretName>, min_items = 1)]
    pub secrets: Vec<String>,
    /// The longest life of a workload token an exchange mints ("1h").
    #[serde(
        default,
        deserialize_with = "no_null",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Duration)]
    pub ttl: Option<String>,
    /// The longest life (exp - iat) of a presented token ("24h").
    #[serde(
        default,
        deserialize_with = "no_null",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Duration)]
    pub max_token_lifetime: Option<String>,
    /// The issuer's keys from this URL instead of OIDC discovery.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_url: Option<String>,
    /// The issuer's keys as a JWKS document (an issuer the server cannot reach).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks: Option<String>,
}

fn default_workspace() -> String {
    "default".into()
}

/// A binding as listed (its rules; never a key or a token).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BindingInfo {
    pub id: String,
    pub name: String,
    pub workspace: String,
    pub issuer: String,
    pub audience: String,
    pub subject: String,
    pub claims: Vec<String>,
    pub user: String,
    pub user_id: String,
    pub secrets: Vec<String>,
    pub secret_ids: Vec<String>,
    pub ttl_secs: u64,
    pub max_token_lifetime_secs: u64,
    /// `discovery`, `url URL` or `inline` (N keys).
    pub keys: String,
    pub created_at: Timestamp,
}

/// `POST /api/v1/identity/exchange`'s answer (RFC 8693, 2.2.1).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Exchanged {
    pub access_token: Token,
    pub issued_token_type: String,
    pub token_type: String,
    pub expires_in: u64,
    /// The binding that admitted the token, and the workspace and secrets it grants.
    pub binding: String,
    pub workspace: String,
    pub secrets: Vec<SecretName>,
}

/// RFC 8693's token types this server reads and issues.
pub const GRANT_TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
pub const TOKEN_TYPE_JWT: &str = "urn:ietf:params:oauth:token-type:jwt";
pub const TOKEN_TYPE_ACCESS: &str = "urn:ietf:params:oauth:token-type:access_token";

/// `POST /api/v1/users`.
#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewUser {
    #[schema(value_type = AccountName)]
    pub name: String,
    #[serde(default)]
    pub admin: bool,
    /// Workspaces to join (default: `default`).
    #[serde(
        default,
        deserialize_with = "no_null",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Vec<AccountName>)]
    pub workspaces: Option<Vec<String>>,
}

/// A user as `GET /api/v1/users` lists them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct UserInfo {
    pub id: String,
    pub name: String,
    pub admin: bool,
    pub created_at: Timestamp,
    /// The workspaces the user belongs to.
    pub workspaces: Vec<String>,
}

/// What `DELETE /api/v1/users/{name}` did.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Removed {
    pub user: String,
    pub tokens: usize,
    pub deleted: Vec<SecretName>,
    pub kept: Vec<SecretName>,
    pub transferred: Vec<SecretName>,
}

/// `POST /api/v1/workspaces`, and its answer.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewWorkspace {
    #[schema(value_type = AccountName)]
    pub name: String,
}

/// `POST /api/v1/workspaces/{ws}/members`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewMember {
    #[schema(value_type = AccountName)]
    pub user: String,
}

/// One record of `GET /api/v1/audit`: who did what to what, by name and by id.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AuditLine {
    /// The record's number, in the order records were committed: `after` resumes past it.
    #[serde(default)]
    pub id: u64,
    /// When it happened; for a coalesced record, the last of its events.
    pub at: Timestamp,
    /// A coalesced record's first event (absent for a record of one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_at: Option<Timestamp>,
    /// How many alike events the record stands for (reads of one version by one token,
    /// failed authentications from one address for one reason); 1 for every change.
    #[serde(default = "one")]
    pub count: u64,
    pub workspace: String,
    pub actor: String,
    pub actor_id: String,
    /// `create`, `read`, `user-delete`, ... (see the README's list; the document's enum is the
    /// store's `AuditAction`, set by `api/openapi.rs`).
    pub action: String,
    /// `secret`, `user`, `workspace`, `member`, `token`, `key`, `store`, `binding` (the store's
    /// `TargetKind`).
    pub target_kind: String,
    pub target: String,
    pub target_id: String,
    pub version: u64,
    pub detail: String,
    pub address: String,
    /// The target's name when it is a secret, which clients of the first API versions read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

fn one() -> u64 {
    1
}

/// `GET` and `PUT /api/v1/workspaces/{name}/audit`: a workspace's own coalescing interval and
/// retention, in seconds; an absent field is the server's default (`serve --audit-coalesce`,
/// `--audit-retention`), and a `PUT` without it returns to that default.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AuditSettingsBody {
    /// Repeated events within this many seconds are one record (10 s to an hour).
    #[serde(
        default,
        deserialize_with = "whole_number_or_null",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(minimum = 10, maximum = 3600)]
    pub coalesce_secs: Option<u64>,
    /// Records of repeated events are deleted after this many seconds (an hour to 100 years).
    #[serde(
        default,
        deserialize_with = "whole_number_or_null",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(minimum = 3600, maximum = 3153600000_u64)]
    pub retention_secs: Option<u64>,
}

/// `POST /api/v1/admin/rotate-key`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Resealed {
    pub resealed: usize,
}

// ---------------------------------------------------------------------------------------------
// The workload read: the one answer that carries values.

/// A value a reader already holds: answered without its value when it is still current.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Held {
    #[schema(value_type = SecretName)]
    pub name: String,
    #[serde(deserialize_with = "whole_number")]
    #[schema(minimum = 0, maximum = 9007199254740991_u64)]
    pub version: u64,
    #[schema(value_type = UtcTime)]
    pub updated_at: Timestamp,
}

/// A version as JSON may carry it: `3` or `3.0` (JSON has one number type, and a client that
/// keeps numbers as floats sends the second; the schema's `integer` admits both).
/// An optional whole number that, when given, is one (`null` refused, as by [`no_null`]).
fn some_whole_number<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    whole_number(d).map(Some)
}

/// An optional whole number where `null` means absent (a setting returned to its default).
fn whole_number_or_null<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    #[derive(Deserialize)]
    struct Whole(#[serde(deserialize_with = "whole_number")] u64);
    Ok(Option::<Whole>::deserialize(d)?.map(|w| w.0))
}

/// The largest version a client may send back: the largest whole number every JSON reader keeps
/// exactly (2^53 - 1); a store reaches it after that many replacements of one value.
const VERSION_MAX: u64 = (1 << 53) - 1;

fn whole_number<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    struct Whole;
    impl Visitor<'_> for Whole {
        type Value = u64;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a whole number from 0")
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<u64, E> {
            (v <= VERSION_MAX)
                .then_some(v)
                .ok_or_else(|| E::custom("a whole number from 0 to 2^53 - 1"))
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<u64, E> {
            u64::try_from(v)
                .map_err(|_| E::custom("a whole number from 0"))
                .and_then(|v| self.visit_u64(v))
        }
        fn visit_f64<E: de::Error>(self, v: f64) -> Result<u64, E> {
            // Exactly representable whole numbers only (below 2^53).
            if v.fract() == 0.0 && (0.0..=VERSION_MAX as f64).contains(&v) {
                #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                Ok(v as u64)
            } else {
                Err(E::custom("a whole number from 0"))
            }
        }
    }
    d.deserialize_any(Whole)
}

impl Held {
    pub fn of(meta: &SecretMeta) -> Self {
        Held {
            name: meta.name.as_str().to_owned(),
            version: meta.version,
            updated_at: meta.updated_at,
        }
    }
}

/// The body of an action that takes no arguments (`POST /api/v1/tokens/renew`,
/// `POST /api/v1/admin/rotate-key`): `{}`.
#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NoArguments {}

/// `POST /api/v1/workload/brokered`: calls a launcher's broker made for its workload with
/// secrets of this token, for the audit log (never a value, a placeholder or a query string).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BrokeredCalls {
    #[schema(min_items = 1, max_items = 1000)]
    pub calls: Vec<BrokeredCall>,
}

/// The most calls one `POST /api/v1/workload/brokered` carries.
pub const BROKERED_CALLS_MAX: usize = 1000;

/// The longest path a brokered call records (and so the longest a broker forwards).
pub const BROKERED_PATH_MAX: usize = 2048;

/// A method a brokered call may record (and so a broker may forward): 1 to 16 capital letters.
pub fn brokered_method(method: &str) -> bool {
    (1..=16).contains(&method.len()) && method.bytes().all(|b| b.is_ascii_uppercase())
}

/// One call through a broker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BrokeredCall {
    /// The secret whose value the broker added.
    #[schema(value_type = SecretName)]
    pub secret: String,
    /// Where the call went: the broker's upstream.
    #[schema(pattern = r"^https://[!-~]+$", max_length = 2048)]
    pub upstream: String,
    #[schema(pattern = "^[A-Z]{1,16}$")]
    pub method: String,
    /// The path under the upstream, without its query string.
    #[schema(pattern = r#"^/[!"$->@-~]*$"#, max_length = 2048)]
    pub path: String,
    /// The upstream's status, or 0 when there was none (the client left, or the upstream
    /// failed after it may have had the request); the broker's own refusals are not sent.
    #[serde(deserialize_with = "whole_number")]
    #[schema(minimum = 0, maximum = 599)]
    pub status: u64,
    /// The calling process and its user, as the broker's host sees them.
    #[serde(deserialize_with = "whole_number")]
    #[schema(minimum = 0, maximum = 4294967295_u64)]
    pub pid: u64,
    #[serde(deserialize_with = "whole_number")]
    #[schema(minimum = 0, maximum = 4294967295_u64)]
    pub uid: u64,
}

impl BrokeredCall {
    /// What is wrong with it, against the rules its schema states.
    pub fn problem(&self) -> Option<String> {
        let visible = |s: &str| s.bytes().all(|b| (b'!'..=b'~').contains(&b));
        if !(self.upstream.starts_with("https://")
            && self.upstream.len() > 8
            && self.upstream.len() <= 2048
            && visible(&self.upstream))
        {
            return Some(
                "upstream must be an https:// URL of visible ASCII, at most 2048 bytes".into(),
            );
        }
        if !brokered_method(&self.method) {
            return Some("method must be 1 to 16 capital letters".into());
        }
        if !(self.path.starts_with('/')
            && self.path.len() <= BROKERED_PATH_MAX
            && visible(&self.path)
            && !self.path.contains(['?', '#']))
        {
            return Some(
                "path must start with / and be visible ASCII without ? or #, at most 2048 bytes"
                    .into(),
            );
        }
        if self.status > 599 {
            return Some("status must be 0 (no answer) to 599".into());
        }
        if self.pid > u64::from(u32::MAX) || self.uid > u64::from(u32::MAX) {
            return Some("pid and uid are at most 4294967295".into());
        }
        None
    }
}

/// The answer: how many calls were recorded.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BrokeredRecorded {
    pub recorded: u64,
}

/// `POST /api/v1/workload/read`: one request per resolve or refresh round.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkloadReadRequest {
    /// Only these, answered per name (found in `secrets`, else in `missing`); without it, every
    /// secret of the token's set it may read now.
    #[serde(
        default,
        deserialize_with = "no_null",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Vec<SecretName>)]
    pub names: Option<Vec<String>>,
    /// `false`: names, versions and the revision only.
    #[serde(default = "yes")]
    pub values: bool,
    /// The values the reader holds: those still current come back without their value.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub held: Vec<Held>,
    /// A long-poll: hold the request up to `wait_secs` (at most 60) while the revision is
    /// `since`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    #[serde(
        default,
        deserialize_with = "some_whole_number",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = u64, minimum = 0, maximum = 60)]
    pub wait_secs: Option<u64>,
}

fn yes() -> bool {
    true
}

impl Default for WorkloadReadRequest {
    fn default() -> Self {
        WorkloadReadRequest {
            names: None,
            values: true,
            held: Vec::new(),
            since: None,
            wait_secs: None,
        }
    }
}

/// One secret as a workload receives it: its value as UTF-8 text (`value`) when it is text,
/// else as base64 (`value_base64`); neither when the value was not asked for or is held.
#[derive(Debug)]
pub struct WorkloadSecret {
    pub name: SecretName,
    pub version: u64,
    pub kind: SecretKind,
    pub visibility: Visibility,
    pub owner: String,
    pub updated_at: Timestamp,
    pub value: Option<SecretValue>,
}

impl Serialize for WorkloadSecret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut st = s.serialize_struct("WorkloadSecret", 7)?;
        st.serialize_field("name", &self.name)?;
        st.serialize_field("version", &self.version)?;
        st.serialize_field("kind", &self.kind)?;
        st.serialize_field("visibility", &self.visibility)?;
        st.serialize_field("owner", &self.owner)?;
        st.serialize_field("updated_at", &self.updated_at)?;
        if let Some(v) = &self.value {
            match std::str::from_utf8(v.expose_secret()) {
                Ok(text) => st.serialize_field("value", text)?,
                Err(_) => st.serialize_field("value_base64", &Base64Value::encode(v))?,
            }
        }
        st.end()
    }
}

/// A [`WorkloadSecret`] as sent: what it deserializes from, and its schema in the document.
/// The value lands in zeroized memory and becomes a [`SecretValue`] without another copy.
#[derive(Deserialize, ToSchema)]
#[schema(as = WorkloadSecret)]
struct SentSecret {
    name: SecretName,
    version: u64,
    kind: SecretKind,
    visibility: Visibility,
    owner: String,
    updated_at: Timestamp,
    /// The value as UTF-8 text when it is text (absent when not asked for, or held)...
    #[serde(default)]
    #[schema(value_type = Option<String>, nullable = false)]
    value: Option<TextValue>,
    /// ...else as base64.
    #[serde(default)]
    #[schema(value_type = Option<String>, nullable = false, format = Byte)]
    value_base64: Option<Base64Value>,
}

impl utoipa::PartialSchema for WorkloadSecret {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        <SentSecret as utoipa::PartialSchema>::schema()
    }
}

impl ToSchema for WorkloadSecret {
    fn schemas(
        schemas: &mut Vec<(
            String,
            utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>,
        )>,
    ) {
        <SentSecret as ToSchema>::schemas(schemas);
    }
}

impl<'de> Deserialize<'de> for WorkloadSecret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let sent = SentSecret::deserialize(d)?;
        let value = value_of(sent.value, sent.value_base64, ValueLimit::default())
            .map_err(|p| de::Error::custom(p.0))?;
        Ok(WorkloadSecret {
            name: sent.name,
            version: sent.version,
            kind: sent.kind,
            visibility: sent.visibility,
            owner: sent.owner,
            updated_at: sent.updated_at,
            value,
        })
    }
}

/// When the reading token expires and how far a renewal extends it, so a reader knows when to
/// renew without asking.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TokenLife {
    pub expires_at: Option<Timestamp>,
    pub ttl_secs: Option<u64>,
}

/// The workload read's answer (`GET /api/v1/workload/secrets` and `POST /api/v1/workload/read`).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct WorkloadRead {
    /// Changes whenever a secret of the set changes or becomes (un)readable.
    pub revision: String,
    pub workspace: String,
    pub secrets: Vec<WorkloadSecret>,
    /// Names asked for that this token cannot read now: never created, deleted, not granted,
    /// or not visible to its user, all the same answer so that none reveals more.
    #[serde(default)]
    pub missing: Vec<SecretName>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<TokenLife>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(s: &[u8]) -> SecretValue {
        SecretValue::from_slice(s, ValueLimit::default()).unwrap()
    }

    fn secret(v: Option<SecretValue>) -> WorkloadSecret {
        WorkloadSecret {
            name: SecretName::parse("API_KEY").unwrap(),
            version: 3,
            kind: SecretKind::Custom,
            visibility: Visibility::Private,
            owner: "alice".into(),
            updated_at: Timestamp::from_nanos(1_700_000_000_123_456_000),
            value: v,
        }
    }

    #[test]
    fn a_workload_secret_round_trips_text_bytes_and_no_value() {
        for (v, key) in [
            (Some(value(b"text value")), Some("value")),
            (Some(value(&[0xff, 0x00, 0x80])), Some("value_base64")),
            (None, None),
        ] {
            let bytes = v.as_ref().map(|v| v.expose_secret().to_vec());
            let json = serde_json::to_value(secret(v)).unwrap();
            let keys: Vec<&str> = json
                .as_object()
                .unwrap()
                .keys()
                .map(|k| k.as_str())
                .collect();
            for k in ["value", "value_base64"] {
                assert_eq!(keys.contains(&k), key == Some(k), "{keys:?}");
            }
            let back: WorkloadSecret = serde_json::from_value(json).unwrap();
            assert_eq!(back.value.map(|v| v.expose_secret().to_vec()), bytes);
            assert_eq!(back.version, 3);
            assert_eq!(
                back.updated_at,
                Timestamp::from_nanos(1_700_000_000_123_456_000)
            );
        }
    }

    #[test]
    fn a_workload_secret_with_both_forms_or_bad_base64_is_refused_without_the_value() {
        for body in [
            r#"{"name":"A","version":1,"kind":"custom","visibility":"private","owner":"o","updated_at":"2026-01-01T00:00:00Z","value":"canary-1","value_base64":"Y2FuYXJ5"}"#,
            r#"{"name":"A","version":1,"kind":"custom","visibility":"private","owner":"o","updated_at":"2026-01-01T00:00:00Z","value_base64":"canary-2!"}"#,
        ] {
            let e = serde_json::from_str::<WorkloadSecret>(body)
                .unwrap_err()
                .to_string();
            assert!(!e.contains("canary"), "{e}");
            assert!(e.contains("value"), "{e}");
        }
    }

    #[test]
    fn values_in_bodies_are_checked_once_in_one_place() {
        let limit = ValueLimit::new(4).unwrap();
        let text = |s: &str| Some(TextValue::new(Zeroizing::new(s.to_owned())));
        assert_eq!(
            value_of(text("abcd"), None, limit)
                .unwrap()
                .unwrap()
                .expose_secret(),
            b"abcd"
        );
        assert!(value_of(text("abcde"), None, limit).is_err());
        assert!(value_of(text("a"), Some(Base64Value::encode(&value(b"a"))), limit).is_err());
        assert_eq!(value_of(None, None, limit).unwrap().map(|_| ()), None);
        let b64: Base64Value = serde_json::from_str("\"not base64!\"").unwrap();
        assert_eq!(
            value_of(None, Some(b64), limit).unwrap_err().0,
            "value_base64 is not valid base64"
        );
    }

    #[test]
    fn a_read_request_defaults_to_values_of_everything() {
        let r: WorkloadReadRequest = serde_json::from_str("{}").unwrap();
        assert!(r.values && r.names.is_none() && r.held.is_empty() && r.wait_secs.is_none());
        assert!(serde_json::from_str::<WorkloadReadRequest>(r#"{"nmes":[]}"#).is_err());
    }
}
