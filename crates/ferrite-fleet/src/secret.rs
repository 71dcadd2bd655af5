//! Secrets: the server key, machine tokens and their keyed hashes.
//!
//! Machine tokens (device credentials `fd_…`, claim tokens `fc_…`, API tokens `fa_…`) are 32
//! random bytes from the operating system, printed as a prefix and 64 lowercase hex digits. They
//! are shown once and stored only as `HMAC-SHA256(server key, token)`: a *keyed fast* hash, as
//! the design asks for high-entropy machine tokens. A slow password hash would protect nothing
//! more here (guessing 256 random bits is hopeless) and would make a reconnect storm of
//! 10,000 devices cost minutes of CPU. The key means a stolen database alone does not let
//! anyone check guesses offline.
//!
//! The server key is 32 random bytes created on first open in `fleet.key` (hex, mode 0600)
//! beside the database.

use std::fmt;
use std::io::Write;
use std::path::Path;

use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use subtle::ConstantTimeEq;

use crate::FleetError;

/// A keyed hash of a token: HMAC-SHA256 output.
pub(crate) type TokenHash = [u8; 32];

/// Name of the server key file inside the fleet folder.
pub(crate) const KEY_FILE: &str = "fleet.key";

/// What a token is for; its prefix tells a human (and a secret scanner) which kind it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TokenKind {
    /// A device credential (MQTT password).
    Device,
    /// A provisioning claim token.
    Claim,
    /// An HTTP API token.
    Api,
}

impl TokenKind {
    pub(crate) const fn prefix(self) -> &'static str {
        match self {
            Self::Device => "fd_",
            Self::Claim => "fc_",
            Self::Api => "fa_",
        }
    }
}

/// A freshly generated secret, shown to its owner once and never stored.
///
/// `Debug` does not print it; use [`SecretToken::expose`] where it must be shown.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretToken(String);

impl SecretToken {
    /// The token text, to hand to the device or operator once.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Take the token text.
    pub fn into_string(self) -> String {
        self.0
    }
}

impl fmt::Debug for SecretToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretToken(…)")
    }
}

/// The server key and everything done with it.
pub(crate) struct Secrets {
    key: hmac::Key,
    rng: SystemRandom,
}

impl Secrets {
    /// Load `dir/fleet.key`, creating it (mode 0600) on first use.
    pub(crate) fn load_or_create(dir: &Path) -> Result<Self, FleetError> {
        let path = dir.join(KEY_FILE);
        let rng = SystemRandom::new();
        let bytes = match std::fs::read_to_string(&path) {
            Ok(text) => decode_hex(text.trim()).ok_or_else(|| FleetError::Corrupt {
                what: path.display().to_string(),
                reason: "not 64 hex digits".into(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let bytes = random_bytes(&rng)?;
                write_private(&path, encode_hex(&bytes).as_bytes())?;
                bytes
            }
            Err(e) => return Err(FleetError::io(&path, e)),
        };
        Ok(Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, &bytes),
            rng,
        })
    }

    /// A new random token of `kind` and its hash.
    pub(crate) fn new_token(
        &self,
        kind: TokenKind,
    ) -> Result<(SecretToken, TokenHash), FleetError> {
        let bytes = random_bytes(&self.rng)?;
        let token = format!("{}{}", kind.prefix(), encode_hex(&bytes));
        let hash = self.hash(token.as_bytes());
        Ok((SecretToken(token), hash))
    }

    /// The keyed hash of a presented token.
    pub(crate) fn hash(&self, token: &[u8]) -> TokenHash {
        let tag = hmac::sign(&self.key, token);
        let mut out = [0u8; 32];
        out.copy_from_slice(tag.as_ref());
        out
    }

    /// `n` random bytes as lowercase hex (identifiers, serial numbers).
    pub(crate) fn random_hex(&self, n: usize) -> Result<String, FleetError> {
        Ok(encode_hex(&self.random_vec(n)?))
    }

    /// `n` random bytes.
    pub(crate) fn random_vec(&self, n: usize) -> Result<Vec<u8>, FleetError> {
        let mut v = vec![0u8; n];
        self.rng
            .fill(&mut v)
            .map_err(|_| FleetError::Crypto("the system random source failed".into()))?;
        Ok(v)
    }
}

/// Constant-time equality of two hashes.
pub(crate) fn hash_eq(a: &TokenHash, b: &TokenHash) -> bool {
    bool::from(a.ct_eq(b))
}

fn random_bytes(rng: &SystemRandom) -> Result<[u8; 32], FleetError> {
    let mut b = [0u8; 32];
    rng.fill(&mut b)
        .map_err(|_| FleetError::Crypto("the system random source failed".into()))?;
    Ok(b)
}

/// Write a file only its owner can read, atomically (temporary file, then rename).
pub(crate) fn write_private(path: &Path, contents: &[u8]) -> Result<(), FleetError> {
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let result = (|| {
        let mut f = options.open(&tmp)?;
        f.write_all(contents)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    result.map_err(|e| FleetError::io(path, e))
}

/// Lowercase hex.
pub(crate) fn encode_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    s
}

/// Decode exactly 32 bytes of hex.
pub(crate) fn decode_hex(s: &str) -> Option<[u8; 32]> {
    let bytes = s.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in bytes.chunks_exact(2).enumerate() {
        let hi = char::from(pair[0]).to_digit(16)?;
        let lo = char::from(pair[1]).to_digit(16)?;
        out[i] = u8::try_from(hi * 16 + lo).ok()?;
    }
    Some(out)
}

/// Stored hashes are written as hex in JSON records.
pub(crate) mod hex32 {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub(crate) fn serialize<S: Serializer>(v: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::encode_hex(v))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let s = String::deserialize(d)?;
        super::decode_hex(&s).ok_or_else(|| D::Error::custom("expected 64 hex digits"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_is_created_once_with_private_mode_and_reused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = Secrets::load_or_create(dir.path()).expect("create");
        let b = Secrets::load_or_create(dir.path()).expect("load");
        assert_eq!(a.hash(b"x"), b.hash(b"x"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(KEY_FILE))
                .expect("meta")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let other = tempfile::tempdir().expect("tempdir");
        let c = Secrets::load_or_create(other.path()).expect("create");
        assert_ne!(a.hash(b"x"), c.hash(b"x"), "the hash is keyed per server");
    }

    #[test]
    fn tokens_have_prefix_and_entropy() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = Secrets::load_or_create(dir.path()).expect("create");
        let (t1, h1) = s.new_token(TokenKind::Device).expect("token");
        let (t2, _) = s.new_token(TokenKind::Device).expect("token");
        assert!(t1.expose().starts_with("fd_"));
        assert_eq!(t1.expose().len(), 3 + 64);
        assert_ne!(t1, t2);
        assert!(hash_eq(&h1, &s.hash(t1.expose().as_bytes())));
        assert!(!format!("{t1:?}").contains(&t1.expose()[3..]));
        let (a, _) = s.new_token(TokenKind::Api).expect("token");
        assert!(a.expose().starts_with("fa_"));
    }

    #[test]
    fn hex_round_trip() {
        let b = [0xa5u8; 32];
        assert_eq!(decode_hex(&encode_hex(&b)), Some(b));
        assert_eq!(decode_hex("zz"), None);
        assert_eq!(decode_hex(&"g".repeat(64)), None);
    }

    #[test]
    fn damaged_key_file_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join(KEY_FILE), "nope").expect("write");
        assert!(matches!(
            Secrets::load_or_create(dir.path()),
            Err(FleetError::Corrupt { .. })
        ));
    }
}
