//! The secret model: names, values, kinds (templates), visibility and metadata.
//!
//! Pure: no IO, no async, no framework types. Every other layer (store, server, filesystem,
//! launcher) speaks in these types, so the rules here are enforced once.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, Schema, SchemaFormat, Type};
use zeroize::Zeroizing;

/// The longest secret name accepted: the DNS-name limit, long enough for any env var name and
/// short enough to be a single path component everywhere.
pub const NAME_MAX_LEN: usize = 253;

/// The hard ceiling on a value's size (1 MiB). A store may be configured lower, never higher: the
/// FUSE daemon keeps every value in locked memory, so this bounds what one secret can pin.
pub const VALUE_MAX_LEN: usize = 1 << 20;

/// The rule a name must follow, stated in every name error so the user can fix the name.
pub const NAME_RULE: &str = "a name is 1 to 253 characters: a letter or '_' first, then letters, \
                             digits, '.', '_' or '-' (so never '/', '.' or '..')";

/// A validated secret name: `^[A-Za-z_][A-Za-z0-9._-]{0,252}$`.
///
/// Valid names are safe as a single path component (FUSE file, URL path segment) and as most
/// environment variable names.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct SecretName(String);

/// Why a string is not a valid secret name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid secret name {shown}: {problem}; {NAME_RULE}")]
pub struct NameError {
    shown: String,
    problem: &'static str,
}

impl SecretName {
    /// Checks `s` against the name rule.
    pub fn parse(s: &str) -> Result<Self, NameError> {
        let fail = |problem| {
            Err(NameError {
                shown: quote_for_error(s),
                problem,
            })
        };
        let Some(first) = s.chars().next() else {
            return fail("it is empty");
        };
        if s.len() > NAME_MAX_LEN {
            return fail("it is longer than 253 characters");
        }
        if !(first.is_ascii_alphabetic() || first == '_') {
            return fail("it must start with a letter or '_'");
        }
        if s.contains('/') {
            return fail("it contains '/'");
        }
        if !s
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        {
            return fail("it contains a character other than letters, digits, '.', '_' or '-'");
        }
        Ok(SecretName(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Quotes a user-supplied string for an error message, shortened so a pasted blob cannot flood
/// the terminal.
pub fn quote_for_error(s: &str) -> String {
    const SHOWN: usize = 64;
    if s.chars().count() <= SHOWN {
        format!("{s:?}")
    } else {
        let head: String = s.chars().take(SHOWN).collect();
        format!("{head:?}...")
    }
}

impl FromStr for SecretName {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, NameError> {
        SecretName::parse(s)
    }
}

impl TryFrom<String> for SecretName {
    type Error = NameError;
    fn try_from(s: String) -> Result<Self, NameError> {
        SecretName::parse(&s)
    }
}

/// The name rule as the OpenAPI document states it (ECMA-262), checked against `parse` by a test.
pub const NAME_PATTERN: &str = "^[A-Za-z_][A-Za-z0-9._-]*$";

impl utoipa::PartialSchema for SecretName {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .pattern(Some(NAME_PATTERN))
            .min_length(Some(1))
            .max_length(Some(NAME_MAX_LEN))
            .description(Some(NAME_RULE))
            .into()
    }
}

impl ToSchema for SecretName {}

impl<'de> Deserialize<'de> for SecretName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        SecretName::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for SecretName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for SecretName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl AsRef<str> for SecretName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// The most a value may weigh in a given store: at most [`VALUE_MAX_LEN`], configurable down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ValueLimit(usize);

impl ValueLimit {
    /// A limit of `bytes`; refuses 0 and anything above the 1 MiB ceiling.
    pub fn new(bytes: usize) -> Result<Self, ValueError> {
        if bytes == 0 || bytes > VALUE_MAX_LEN {
            return Err(ValueError::BadLimit { limit: bytes });
        }
        Ok(ValueLimit(bytes))
    }

    pub fn bytes(self) -> usize {
        self.0
    }
}

impl Default for ValueLimit {
    fn default() -> Self {
        ValueLimit(VALUE_MAX_LEN)
    }
}

/// Why bytes are not an acceptable value. Never carries the bytes themselves.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    #[error("secret value is empty; provide at least one byte")]
    Empty,
    #[error(
        "secret value is {len} bytes, over the limit of {limit} bytes; store a smaller value \
         (or a reference to where the large one lives)"
    )]
    TooLarge { len: usize, limit: usize },
    #[error("value limit {limit} is out of range; it must be 1 to {VALUE_MAX_LEN} bytes")]
    BadLimit { limit: usize },
    #[error("not a valid SSH public key: {0}")]
    SshPublicKey(&'static str),
}

/// Makes room for `more` bytes at the end of `buf` without leaving a copy of what it holds in
/// freed memory: a full buffer moves once into a new one of at least twice the size, and the
/// old one is wiped as it drops (a plain `Vec` would reallocate and leave the bytes behind).
pub fn reserve_zeroized(buf: &mut Zeroizing<Vec<u8>>, more: usize) {
    let need = buf.len() + more;
    if need > buf.capacity() {
        let mut bigger = Zeroizing::new(Vec::with_capacity(need.max(buf.capacity() * 2)));
        bigger.extend_from_slice(buf);
        *buf = bigger;
    }
}

/// A secret's value: bytes that are never printed, serialized or left behind in freed memory.
///
/// `Debug` prints `[REDACTED]`; there is no `Display`, `Serialize` or `Clone`. The bytes are
/// zeroized on drop. Read them with [`SecretValue::expose_secret`], at the last moment, so that
/// grepping for it lists every place a value is used.
pub struct SecretValue(Zeroizing<Vec<u8>>);

impl SecretValue {
    /// Wraps `bytes` after checking they are non-empty and within `limit`.
    pub fn new(bytes: Zeroizing<Vec<u8>>, limit: ValueLimit) -> Result<Self, ValueError> {
        if bytes.is_empty() {
            return Err(ValueError::Empty);
        }
        if bytes.len() > limit.bytes() {
            return Err(ValueError::TooLarge {
                len: bytes.len(),
                limit: limit.bytes(),
            });
        }
        Ok(SecretValue(bytes))
    }

    /// Copies `bytes` into a new value (for tests and for values that arrive as slices).
    pub fn from_slice(bytes: &[u8], limit: ValueLimit) -> Result<Self, ValueError> {
        SecretValue::new(Zeroizing::new(bytes.to_vec()), limit)
    }

    /// The value's bytes. Every call site is a place a secret leaves its wrapper.
    pub fn expose_secret(&self) -> &[u8] {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Always false: an empty value cannot be constructed. Present for clippy's `len_without_is_empty`.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[REDACTED]")
    }
}

/// Visibility of a secret inside its workspace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Visibility {
    /// Only the owner may use it (the default).
    #[default]
    Private,
    /// Every member of the workspace may use it.
    Public,
}

impl Visibility {
    pub fn as_str(self) -> &'static str {
        match self {
            Visibility::Private => "private",
            Visibility::Public => "public",
        }
    }
}

impl fmt::Display for Visibility {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Visibility {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "private" => Ok(Visibility::Private),
            "public" => Ok(Visibility::Public),
            _ => Err(format!(
                "unknown visibility {}; use \"private\" or \"public\"",
                quote_for_error(s)
            )),
        }
    }
}

/// The template a secret was created from. It suggests a name and checks the value's shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum SecretKind {
    #[default]
    Custom,
    SshPublicKey,
    Github,
    Huggingface,
    Openai,
    Datadog,
    Ngc,
}

/// A note about a value that does not stop it from being stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning(pub String);

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl SecretKind {
    pub const ALL: [SecretKind; 7] = [
        SecretKind::Custom,
        SecretKind::SshPublicKey,
        SecretKind::Github,
        SecretKind::Huggingface,
        SecretKind::Openai,
        SecretKind::Datadog,
        SecretKind::Ngc,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SecretKind::Custom => "custom",
            SecretKind::SshPublicKey => "ssh-public-key",
            SecretKind::Github => "github",
            SecretKind::Huggingface => "huggingface",
            SecretKind::Openai => "openai",
            SecretKind::Datadog => "datadog",
            SecretKind::Ngc => "ngc",
        }
    }

    /// The human name of the template, for messages and the web page.
    pub fn label(self) -> &'static str {
        match self {
            SecretKind::Custom => "custom secret",
            SecretKind::SshPublicKey => "SSH public key",
            SecretKind::Github => "GitHub token",
            SecretKind::Huggingface => "Hugging Face token",
            SecretKind::Openai => "OpenAI API key",
            SecretKind::Datadog => "Datadog API key",
            SecretKind::Ngc => "NGC API key",
        }
    }

    /// The name the template suggests: the variable the provider's own tools read.
    pub fn default_name(self) -> Option<&'static str> {
        match self {
            SecretKind::Custom => None,
            SecretKind::SshPublicKey => Some("SSH_PUBLIC_KEY"),
            SecretKind::Github => Some("GITHUB_TOKEN"),
            SecretKind::Huggingface => Some("HF_TOKEN"),
            SecretKind::Openai => Some("OPENAI_API_KEY"),
            SecretKind::Datadog => Some("DD_API_KEY"),
            SecretKind::Ngc => Some("NGC_API_KEY"),
        }
    }

    /// What a value of this template looks like, for messages and the web page's hints.
    pub fn expected_format(self) -> Option<&'static str> {
        match self {
            SecretKind::Custom => None,
            SecretKind::SshPublicKey => {
                Some("one OpenSSH public key line, e.g. \"ssh-ed25519 AAAA... comment\"")
            }
            SecretKind::Github => Some("a prefix such as ghp_ or github_pat_"),
            SecretKind::Huggingface => Some("the prefix hf_"),
            SecretKind::Openai => Some("the prefix sk-"),
            SecretKind::Datadog => Some("32 hexadecimal characters"),
            SecretKind::Ngc => Some("the prefix nvapi- (or a legacy 64+ character key)"),
        }
    }

    /// Checks a value against the template. An SSH public key must parse (an error); a token
    /// that does not look like the provider's only earns warnings, because providers change
    /// their formats and a user may know better.
    pub fn check(self, value: &SecretValue) -> Result<Vec<Warning>, ValueError> {
        let bytes = value.expose_secret();
        let mut warnings = Vec::new();
        if self == SecretKind::SshPublicKey {
            check_ssh_public_key(bytes)?;
            return Ok(warnings);
        }
        if self == SecretKind::Custom {
            return Ok(warnings);
        }
        let Ok(text) = std::str::from_utf8(bytes) else {
            warnings.push(Warning(format!(
                "the value is not UTF-8 text, which every {} is",
                self.label()
            )));
            return Ok(warnings);
        };
        if text.ends_with('\n') {
            warnings.push(Warning(
                "the value ends with a newline, which a token usually does not; if it came from \
                 `echo`, store it again with `printf '%s'`"
                    .to_owned(),
            ));
        }
        let token = text.trim_end_matches(['\n', '\r']);
        let looks_right = match self {
            SecretKind::Github => ["ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_"]
                .iter()
                .any(|p| token.starts_with(p)),
            SecretKind::Huggingface => token.starts_with("hf_"),
            SecretKind::Openai => token.starts_with("sk-"),
            SecretKind::Datadog => {
                token.len() == 32 && token.bytes().all(|b| b.is_ascii_hexdigit())
            }
            SecretKind::Ngc => {
                token.starts_with("nvapi-")
                    || (token.len() >= 64 && token.bytes().all(|b| b.is_ascii_alphanumeric()))
            }
            SecretKind::Custom | SecretKind::SshPublicKey => true,
        };
        if !looks_right {
            warnings.push(Warning(format!(
                "the value does not match the {} format (expected {}); storing it anyway",
                self.label(),
                self.expected_format().unwrap_or("")
            )));
        }
        if token.chars().any(char::is_whitespace) {
            warnings.push(Warning(format!(
                "the value contains whitespace, which no {} does",
                self.label()
            )));
        }
        Ok(warnings)
    }
}

impl fmt::Display for SecretKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SecretKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let wanted = s.trim().to_ascii_lowercase();
        let alias = match wanted.as_str() {
            "ssh" | "ssh-key" | "sshkey" => Some(SecretKind::SshPublicKey),
            "hf" | "hugging-face" => Some(SecretKind::Huggingface),
            "gh" => Some(SecretKind::Github),
            "dd" => Some(SecretKind::Datadog),
            _ => None,
        };
        alias
            .or_else(|| SecretKind::ALL.into_iter().find(|k| k.as_str() == wanted))
            .ok_or_else(|| {
                let names: Vec<&str> = SecretKind::ALL.iter().map(|k| k.as_str()).collect();
                format!(
                    "unknown secret type {}; use one of {}",
                    quote_for_error(s),
                    names.join(", ")
                )
            })
    }
}

/// The key types OpenSSH writes into `.pub` files.
const SSH_KEY_TYPES: &[&str] = &[
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
    "ssh-dss",
];

/// An SSH public key line: `TYPE BASE64 [COMMENT]`, where the base64 blob begins with the same
/// type as a length-prefixed string (which is how OpenSSH itself tells a mangled key).
/// The type and the base64 body of a valid OpenSSH public key line (what `authorized_keys` needs
/// of it: the comment is the secret's name there); `None` when the line is not one.
pub fn ssh_public_key_fields(bytes: &[u8]) -> Option<(&str, &str)> {
    check_ssh_public_key(bytes).ok()?;
    let mut fields = std::str::from_utf8(bytes).ok()?.split_ascii_whitespace();
    Some((fields.next()?, fields.next()?))
}

fn check_ssh_public_key(bytes: &[u8]) -> Result<(), ValueError> {
    use base64::Engine as _;
    let bad = |why| Err(ValueError::SshPublicKey(why));
    let Ok(text) = std::str::from_utf8(bytes) else {
        return bad("it is not text");
    };
    if text.contains("PRIVATE KEY") {
        return bad("this is a private key; store the public key (the .pub file) instead");
    }
    let line = text.strip_suffix('\n').unwrap_or(text);
    let line = line.strip_suffix('\r').unwrap_or(line);
    if line.contains('\n') {
        return bad("it spans several lines; store one key per secret");
    }
    let mut fields = line.split_ascii_whitespace();
    let (Some(kind), Some(body)) = (fields.next(), fields.next()) else {
        return bad("expected \"TYPE BASE64 [COMMENT]\", e.g. \"ssh-ed25519 AAAA... user@host\"");
    };
    if !SSH_KEY_TYPES.contains(&kind) {
        return bad(
            "unknown key type; expected ssh-ed25519, ssh-rsa, ecdsa-sha2-nistp256/384/521 or an sk- key",
        );
    }
    let Ok(blob) = base64::engine::general_purpose::STANDARD.decode(body) else {
        return bad("the key body is not valid base64");
    };
    let inner_type = blob
        .get(..4)
        .map(|l| u32::from_be_bytes([l[0], l[1], l[2], l[3]]) as usize)
        .and_then(|len| blob.get(4..4 + len));
    if inner_type != Some(kind.as_bytes()) {
        return bad("the key body does not match its type (a truncated or mangled key?)");
    }
    Ok(())
}

/// A point in time, in nanoseconds since the Unix epoch (UTC). Stored as an integer in both
/// stores and shown as RFC 3339.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(i64);

impl Timestamp {
    pub fn now() -> Self {
        Timestamp::from_system_time(SystemTime::now())
    }

    pub fn from_nanos(nanos: i64) -> Self {
        Timestamp(nanos)
    }

    pub fn from_system_time(t: SystemTime) -> Self {
        let nanos = match t.duration_since(UNIX_EPOCH) {
            Ok(d) => i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
            Err(e) => -i64::try_from(e.duration().as_nanos()).unwrap_or(i64::MAX),
        };
        Timestamp(nanos)
    }

    pub fn nanos(self) -> i64 {
        self.0
    }

    pub fn to_system_time(self) -> SystemTime {
        if self.0 >= 0 {
            UNIX_EPOCH + Duration::from_nanos(self.0.unsigned_abs())
        } else {
            UNIX_EPOCH - Duration::from_nanos(self.0.unsigned_abs())
        }
    }

    /// RFC 3339 in UTC with second precision, e.g. `2026-11-26T16:27:13Z`.
    pub fn rfc3339(self) -> String {
        humantime::format_rfc3339_seconds(self.to_system_time()).to_string()
    }
}

impl utoipa::PartialSchema for Timestamp {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::DateTime)))
            .description(Some("RFC 3339, UTC"))
            .into()
    }
}

impl ToSchema for Timestamp {}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_rfc3339_weak(s.trim_end_matches('Z'))
            .map(Timestamp::from_system_time)
            .map_err(|e| serde::de::Error::custom(format!("bad time {s:?}: {e}")))
    }
}

impl Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_rfc3339_micros(self.to_system_time()).to_string())
    }
}

/// One value of one secret: which secret, which version, written when. A secret deleted and
/// created again starts over at version 1, but not at the same time, so the three together name
/// one value. It is all a workload learns about a secret besides the value: what a source
/// answers, what a mount's tree holds, and what a reader sends as held so the service skips
/// sending that value again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValueStamp {
    pub name: SecretName,
    pub version: u64,
    pub updated_at: Timestamp,
}

impl ValueStamp {
    /// Whether `meta` describes this value as a reader over the API knows it: times cross the
    /// wire at microseconds, so `meta`'s is cut to that before comparing.
    pub fn describes_as_sent(&self, meta: &SecretMeta) -> bool {
        self.name == meta.name
            && self.version == meta.version
            && self.updated_at.nanos() == meta.updated_at.nanos() / 1000 * 1000
    }
}

impl SecretMeta {
    /// Which value this metadata describes, exactly.
    pub fn stamp(&self) -> ValueStamp {
        ValueStamp {
            name: self.name.clone(),
            version: self.version,
            updated_at: self.updated_at,
        }
    }
}

/// The longest tag, and the most tags one secret may carry.
pub const TAG_MAX_LEN: usize = 64;
pub const TAGS_MAX: usize = 32;

/// Checks a list of tags: each 1 to 64 printable characters without whitespace or ','; at most
/// 32 given; duplicates removed, order kept.
pub fn validate_tags(tags: &[String]) -> Result<Vec<String>, String> {
    // Counted as given, before duplicates go: the rule the API document states (`maxItems`).
    if tags.len() > TAGS_MAX {
        return Err(format!(
            "{} tags given; a secret carries at most {TAGS_MAX}",
            tags.len()
        ));
    }
    let mut out: Vec<String> = Vec::with_capacity(tags.len());
    for tag in tags {
        if tag.is_empty() || tag.chars().count() > TAG_MAX_LEN {
            return Err(format!(
                "invalid tag {}: a tag is 1 to {TAG_MAX_LEN} characters",
                quote_for_error(tag)
            ));
        }
        if tag
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == ',')
        {
            return Err(format!(
                "invalid tag {}: a tag has no whitespace, control characters or ','",
                quote_for_error(tag)
            ));
        }
        if !out.contains(tag) {
            out.push(tag.clone());
        }
    }
    if out.len() > TAGS_MAX {
        return Err(format!(
            "{} tags given; a secret carries at most {TAGS_MAX}",
            out.len()
        ));
    }
    Ok(out)
}

/// Everything about a secret except its value: what lists, APIs and audit records show.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SecretMeta {
    pub name: SecretName,
    pub kind: SecretKind,
    pub visibility: Visibility,
    pub owner: String,
    pub tags: Vec<String>,
    /// 1 at creation, +1 on every replacement of the value.
    pub version: u64,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// The name among `known` closest to `wanted`, when one is close enough to be a typo of it (a
/// letter or two off, or the same name in another case): for "did you mean". Only names the
/// asker may see go in `known`.
pub fn closest<'a>(wanted: &str, known: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let limit = (wanted.chars().count() / 4).clamp(1, 3);
    known
        .into_iter()
        .filter(|k| *k != wanted)
        .map(|k| {
            let exact_but_case = k.eq_ignore_ascii_case(wanted);
            let d =
                strsim::damerau_levenshtein(&wanted.to_ascii_lowercase(), &k.to_ascii_lowercase());
            (if exact_but_case { 0 } else { d.max(1) }, k)
        })
        .filter(|(d, _)| *d <= limit)
        .min()
        .map(|(_, k)| k)
}

/// ` (did you mean "NAME"?)`, or nothing.
pub fn did_you_mean<'a>(wanted: &str, known: impl IntoIterator<Item = &'a str>) -> String {
    closest(wanted, known).map_or(String::new(), |k| format!("; did you mean \"{k}\"?"))
}

/// The mode of a file that holds a secret (a mounted one, a rendered one): read bits only, the
/// owner's included. Write and execute make no sense on a read-only file of secrets, and
/// setuid or sticky bits even less.
pub fn file_mode(mode: u32) -> Result<u16, String> {
    if mode & !0o444 != 0 || mode & 0o400 == 0 {
        return Err(format!(
            "mode {mode:04o} is not allowed: secret files are read-only, so use read bits \
             only, owner included (0400, 0440 or 0444)"
        ));
    }
    Ok(mode as u16)
}

#[cfg(test)]
mod tests;
