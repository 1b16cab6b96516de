//! Sealing values for storage: XChaCha20-Poly1305 under a 256-bit master key.
//!
//! Pure: no IO. Every value is sealed with a fresh random 192-bit nonce (large enough that random
//! nonces never collide in practice, unlike AES-GCM's 96 bits) and associated data that binds the
//! ciphertext to its workspace, secret name, secret id and version, so a ciphertext copied into
//! another row, or an old version replayed into a newer one, fails to open.
//!
//! Sealed layout: `[format = 1][nonce: 24 bytes][ciphertext][tag: 16 bytes]`.

use std::fmt;

use chacha20poly1305::aead::{AeadInOut, KeyInit};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use zeroize::Zeroizing;

/// Length of the master key in bytes.
pub const KEY_LEN: usize = 32;
const FORMAT_V1: u8 = 1;
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;
/// The bytes a sealed value adds to its plaintext.
pub const OVERHEAD: usize = 1 + NONCE_LEN + TAG_LEN;

/// The only error opening can return: wrong key, tampered bytes and moved rows look the same,
/// so the error cannot help an attacker tell them apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("decryption failed: the ciphertext does not match this key and row")]
pub struct DecryptionFailed;

/// The 256-bit master key. `Debug` is redacted; the bytes are zeroized on drop.
pub struct MasterKey(Zeroizing<[u8; KEY_LEN]>);

impl MasterKey {
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        MasterKey(Zeroizing::new(bytes))
    }

    /// A new key from the operating system's random source.
    pub fn generate() -> Self {
        let mut key = Zeroizing::new([0u8; KEY_LEN]);
        getrandom::fill(key.as_mut()).expect("the OS random source failed");
        MasterKey(key)
    }

    pub fn expose_key(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// A second copy of the key (for a key ring being rebuilt); deliberately not `Clone`.
    pub fn duplicate(&self) -> MasterKey {
        MasterKey::from_bytes(*self.0)
    }
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKey([REDACTED])")
    }
}

/// What a ciphertext is bound to. Encoded with length prefixes so no two different tuples
/// produce the same bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Binding<'a> {
    pub workspace: &'a str,
    pub name: &'a str,
    /// The secret's random id, fixed at creation: a secret deleted and created again under the
    /// same name does not accept the old secret's ciphertexts.
    pub secret_id: &'a str,
    pub version: u64,
}

impl Binding<'_> {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.workspace.len() + self.name.len());
        out.extend_from_slice(b"secretfs/value/v1");
        for field in [self.workspace, self.name, self.secret_id] {
            out.extend_from_slice(&(field.len() as u32).to_be_bytes());
            out.extend_from_slice(field.as_bytes());
        }
        out.extend_from_slice(&self.version.to_be_bytes());
        out
    }
}

/// Seals values under the current master key; opens them under the current key or any
/// previous one (during a key rotation, until every value has been re-sealed).
pub struct Sealer {
    /// `[0]` seals; all are tried, in order, to open. Each with a fingerprint of its key, so
    /// rings can be merged without holding a key twice.
    ciphers: Vec<([u8; 8], XChaCha20Poly1305)>,
}

impl fmt::Debug for Sealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Sealer([REDACTED])")
    }
}

impl Sealer {
    pub fn new(key: &MasterKey) -> Self {
        Self::with_previous(key, &[])
    }

    /// Seals with `current`; also opens what `previous` keys sealed.
    pub fn with_previous(current: &MasterKey, previous: &[MasterKey]) -> Self {
        let mut sealer = Sealer {
            ciphers: Vec::with_capacity(1 + previous.len()),
        };
        for key in std::iter::once(current).chain(previous) {
            sealer.push(
                fingerprint(key),
                XChaCha20Poly1305::new(key.expose_key().into()),
            );
        }
        sealer
    }

    fn push(&mut self, id: [u8; 8], cipher: XChaCha20Poly1305) {
        if !self.ciphers.iter().any(|(known, _)| *known == id) {
            self.ciphers.push((id, cipher));
        }
    }

    /// This sealer, also opening what `older`'s keys sealed: a process that learns of a
    /// rotation keeps opening the rows it cached before the re-sealing reached them.
    pub fn keeping(mut self, older: &Sealer) -> Sealer {
        for (id, cipher) in &older.ciphers {
            self.push(*id, cipher.clone());
        }
        self
    }

    /// How many keys this sealer opens with.
    pub fn key_count(&self) -> usize {
        self.ciphers.len()
    }

    /// Seals `plaintext` for the row `binding` describes.
    pub fn seal(&self, binding: &Binding<'_>, plaintext: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).expect("the OS random source failed");
        let nonce = XNonce::from(nonce);
        // Allocated at its final size, so the in-place encryption never reallocates and leaves
        // no copy of the plaintext behind in freed memory.
        let mut body = Vec::with_capacity(plaintext.len() + TAG_LEN);
        body.extend_from_slice(plaintext);
        // Encryption only fails for messages over 256 GiB; values are at most 1 MiB.
        self.ciphers[0]
            .1
            .encrypt_in_place(&nonce, &binding.encode(), &mut body)
            .expect("XChaCha20-Poly1305 cannot fail on a value under 1 MiB");
        let mut out = Vec::with_capacity(OVERHEAD + plaintext.len());
        out.push(FORMAT_V1);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&body);
        out
    }

    /// Opens a sealed value; any mismatch (key, binding, tampering, truncation) is
    /// [`DecryptionFailed`].
    pub fn open(
        &self,
        binding: &Binding<'_>,
        sealed: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, DecryptionFailed> {
        self.open_with_key(binding, sealed).map(|(plain, _)| plain)
    }

    /// Opens a sealed value and says which key did it (0: the current one).
    pub fn open_with_key(
        &self,
        binding: &Binding<'_>,
        sealed: &[u8],
    ) -> Result<(Zeroizing<Vec<u8>>, usize), DecryptionFailed> {
        if sealed.len() < OVERHEAD || sealed[0] != FORMAT_V1 {
            return Err(DecryptionFailed);
        }
        let nonce = XNonce::try_from(&sealed[1..1 + NONCE_LEN]).map_err(|_| DecryptionFailed)?;
        let aad = binding.encode();
        for (i, (_, cipher)) in self.ciphers.iter().enumerate() {
            let mut body = Zeroizing::new(sealed[1 + NONCE_LEN..].to_vec());
            if cipher.decrypt_in_place(&nonce, &aad, &mut *body).is_ok() {
                return Ok((body, i));
            }
        }
        Err(DecryptionFailed)
    }
}

/// A key's identity within a ring: a domain-separated hash, never shown anywhere.
fn fingerprint(key: &MasterKey) -> [u8; 8] {
    use sha2::Digest;
    let digest = sha2::Sha256::new()
        .chain_update(b"secretfs/key-id/v1")
        .chain_update(key.expose_key())
        .finalize();
    let mut id = [0u8; 8];
    id.copy_from_slice(&digest[..8]);
    id
}

#[cfg(test)]
mod tests;
