//! Tokens: their format, generation and verification. Pure apart from the random source and
//! reading token files.
//!
//! A token is `sfs_<kind>_<id>_<secret>`: `kind` is `u` (user) or `w` (workload), `id` 16 hex
//! digits (public: it names the token in lists, logs and revocations), `secret` 256 random bits
//! in base64url. Only SHA-256 of the secret is stored (a 256-bit random secret needs no slow
//! hash), looked up by id and compared in constant time.

use std::fmt;

use base64::Engine as _;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

/// What a token may do.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum TokenKind {
    /// Manages secrets; never reads a value.
    User,
    /// Reads the values of a fixed set of secrets; nothing else.
    Workload,
}

impl TokenKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TokenKind::User => "user",
            TokenKind::Workload => "workload",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "user" => Some(TokenKind::User),
            "workload" => Some(TokenKind::Workload),
            _ => None,
        }
    }

    fn letter(self) -> char {
        match self {
            TokenKind::User => 'u',
            TokenKind::Workload => 'w',
        }
    }
}

/// A bearer token in the clear: exists only between minting and the one response that shows
/// it, and between reading a token file and sending a request. `Debug` is redacted.
pub struct Token(Zeroizing<String>);

impl utoipa::PartialSchema for Token {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::schema::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .description(Some("sfs_u_... (user) or sfs_w_... (workload): shown once"))
            .into()
    }
}

impl utoipa::ToSchema for Token {}

impl Token {
    /// The token's text, for an `Authorization` header or the one answer that shows it.
    pub fn expose_token(&self) -> &str {
        &self.0
    }

    pub fn from_string(s: String) -> Self {
        Token(Zeroizing::new(s))
    }

    pub fn from_zeroizing(s: Zeroizing<String>) -> Self {
        Token(s)
    }
}

/// A copy lives as long as the original would: in zeroized memory, gone with the launch or the
/// request that needed it.
impl Clone for Token {
    fn clone(&self) -> Self {
        Token(self.0.clone())
    }
}

/// Compared in constant time, as every token comparison is.
impl PartialEq for Token {
    fn eq(&self, other: &Self) -> bool {
        self.0.as_bytes().ct_eq(other.0.as_bytes()).into()
    }
}

impl Eq for Token {}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token([REDACTED])")
    }
}

/// What is stored for a token: its public id and the hash of its secret part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Minted {
    pub id: String,
    pub hash: Vec<u8>,
}

/// 128 random bits in hex: an id that is never reused (users, secrets), a path no one guesses
/// (a broker's prefix and socket directory).
pub fn new_id() -> String {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).expect("the OS random source failed");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Mints a new token of `kind`: the token to show once, and what to store.
pub fn mint(kind: TokenKind) -> (Token, Minted) {
    let mut id = [0u8; 8];
    getrandom::fill(&mut id).expect("the OS random source failed");
    let mut secret = Zeroizing::new([0u8; 32]);
    getrandom::fill(secret.as_mut()).expect("the OS random source failed");
    let id: String = id.iter().map(|b| format!("{b:02x}")).collect();
    let encoded = Zeroizing::new(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(*secret));
    let token = Token(Zeroizing::new(format!(
        "sfs_{}_{id}_{}",
        kind.letter(),
        encoded.as_str()
    )));
    let hash = Sha256::digest(secret.as_ref()).to_vec();
    (token, Minted { id, hash })
}

/// A presented token, split: its kind letter, id and the hash of its secret part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Presented {
    pub kind: TokenKind,
    pub id: String,
    hash: [u8; 32],
}

impl Presented {
    /// Parses a presented token; `None` for anything not of the token format (which is answered
    /// like a wrong token).
    pub fn parse(token: &str) -> Option<Presented> {
        let rest = token.strip_prefix("sfs_")?;
        let (kind, rest) = rest.split_once('_')?;
        let kind = match kind {
            "u" => TokenKind::User,
            "w" => TokenKind::Workload,
            _ => return None,
        };
        let (id, secret) = rest.split_once('_')?;
        if id.len() != 16 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let secret = Zeroizing::new(
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(secret)
                .ok()?,
        );
        if secret.len() != 32 {
            return None;
        }
        Some(Presented {
            kind,
            id: id.to_owned(),
            hash: Sha256::digest(secret.as_slice()).into(),
        })
    }

    /// Whether this token's secret hashes to `stored`, compared in constant time.
    pub fn matches(&self, stored: &[u8]) -> bool {
        stored.len() == 32 && bool::from(self.hash.ct_eq(stored))
    }
}

/// A token shown in lists: the id and the first characters, never the secret part.
pub fn masked(id: &str, kind: TokenKind) -> String {
    format!("sfs_{}_{id}_…", kind.letter())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_tokens_verify_and_others_do_not() {
        let (token, stored) = mint(TokenKind::Workload);
        assert!(token.expose_token().starts_with("sfs_w_"));
        assert_eq!(token.expose_token().len(), 4 + 2 + 16 + 1 + 43);
        let p = Presented::parse(token.expose_token()).unwrap();
        assert_eq!(
            (p.kind, p.id.as_str()),
            (TokenKind::Workload, stored.id.as_str())
        );
        assert!(p.matches(&stored.hash));
        let (_, other) = mint(TokenKind::Workload);
        assert!(!p.matches(&other.hash));
        assert!(!p.matches(&[]));
        assert_eq!(format!("{token:?}"), "Token([REDACTED])");
    }

    #[test]
    fn garbage_is_not_a_token() {
        let (token, _) = mint(TokenKind::User);
        let t = token.expose_token();
        for bad in [
            "",
            "Bearer x",
            "sfs_x_0123456789abcdef_AAAA",
            "sfs_u_0123_AAAA",
            &t[..t.len() - 1],
            &format!("{t}A"),
            &t.replace("sfs_", "sfx_"),
        ] {
            assert!(Presented::parse(bad).is_none(), "{bad:?}");
        }
    }
}
