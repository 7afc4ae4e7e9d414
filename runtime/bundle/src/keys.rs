//! ed25519 keys. A key is named by its public key in hex (its key id);
//! secret keys live in small JSON files written with mode 0600.

use std::fmt;
use std::fs;
use std::io::Write;
use std::path::Path;
use std::str::FromStr;

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Deserializer, Serialize, Serializer, de};

use crate::error::{Error, Result};

/// An ed25519 public key. Its hex form is the key id used in documents.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PublicKey([u8; 32]);

/// Key ids are the public keys themselves, so a threshold of "distinct
/// keys" cannot be met by two ids for one key.
pub type KeyId = PublicKey;

impl PublicKey {
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Strict verification: canonical `S`, and weak (small-order) public
    /// keys or `R` values are rejected.
    pub fn verify(&self, message: &[u8], signature: &ed25519_dalek::Signature) -> bool {
        match VerifyingKey::from_bytes(&self.0) {
            Ok(key) => !key.is_weak() && key.verify_strict(message, signature).is_ok(),
            Err(_) => false,
        }
    }

    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }

    /// The first 16 hex digits, for log lines and listings.
    pub fn short(&self) -> String {
        hex(&self.0[..8])
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.short())
    }
}

impl FromStr for PublicKey {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bytes = parse_hex32(s).map_err(|e| format!("public key {s:?}: {e}"))?;
        let key = VerifyingKey::from_bytes(&bytes)
            .map_err(|_| format!("public key {s:?}: not a valid ed25519 point"))?;
        if key.is_weak() {
            return Err(format!("public key {s:?}: a weak (small-order) key"));
        }
        Ok(Self(bytes))
    }
}

impl Serialize for PublicKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for PublicKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(de::Error::custom)
    }
}

/// An ed25519 signing key.
pub struct SecretKey(SigningKey);

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretKey(public {})", self.public().short())
    }
}

const SECRET_KIND: &str = "cathedral-ed25519-secret";

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SecretFile {
    kind: String,
    public: String,
    secret: String,
}

impl SecretKey {
    /// A new key from the operating system's random source.
    pub fn generate() -> Result<Self, String> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| format!("no randomness: {e}"))?;
        Ok(Self(SigningKey::from_bytes(&seed)))
    }

    pub fn from_seed(seed: [u8; 32]) -> Self {
        Self(SigningKey::from_bytes(&seed))
    }

    pub fn public(&self) -> PublicKey {
        PublicKey(self.0.verifying_key().to_bytes())
    }

    pub fn sign(&self, message: &[u8]) -> ed25519_dalek::Signature {
        self.0.sign(message)
    }

    /// Reads a key file written by [`SecretKey::save`].
    pub fn load(path: &Path) -> Result<Self> {
        let err = |reason: String| Error::KeyFile {
            path: path.to_path_buf(),
            reason,
        };
        let text = fs::read(path).map_err(|e| err(e.to_string()))?;
        let file: SecretFile = serde_json::from_slice(&text)
            .map_err(|e| err(format!("not a secret key file: {e}")))?;
        if file.kind != SECRET_KIND {
            return Err(err(format!("kind is {:?}, not {SECRET_KIND:?}", file.kind)));
        }
        let seed = parse_hex32(&file.secret).map_err(|e| err(format!("secret: {e}")))?;
        let key = Self::from_seed(seed);
        if key.public().to_hex() != file.public {
            return Err(err("the public key does not match the secret key".into()));
        }
        Ok(key)
    }

    /// Writes the key file with mode 0600; refuses to overwrite one.
    pub fn save(&self, path: &Path) -> Result<()> {
        let file = SecretFile {
            kind: SECRET_KIND.into(),
            public: self.public().to_hex(),
            secret: hex(self.0.as_bytes()),
        };
        let mut text = serde_json::to_vec_pretty(&file).map_err(|e| Error::KeyFile {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        text.push(b'\n');
        let mut options = fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut out = options.open(path).map_err(|e| Error::io(path, e))?;
        out.write_all(&text).map_err(|e| Error::io(path, e))?;
        out.sync_all().map_err(|e| Error::io(path, e))
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

fn parse_hex32(s: &str) -> Result<[u8; 32], String> {
    if s.len() != 64 {
        return Err(format!("expected 64 hex digits, got {}", s.len()));
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        let pair = s.get(i * 2..i * 2 + 2).ok_or("not ASCII hex")?;
        if pair.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err("hex digits must be lowercase".into());
        }
        *byte = u8::from_str_radix(pair, 16).map_err(|_| "not hex")?;
    }
    Ok(out)
}

/// A lowercase blake3 hex digest, checked for shape.
pub(crate) fn check_hash_hex(s: &str) -> Result<(), String> {
    if s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        Ok(())
    } else {
        Err(format!("{s:?} is not a lowercase blake3 hex digest"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_files_round_trip_and_are_private() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("k.key");
        let key = SecretKey::generate().expect("random");
        key.save(&path).expect("save");
        let again = SecretKey::load(&path).expect("load");
        assert_eq!(key.public(), again.public());
        assert!(key.save(&path).is_err(), "never overwrites a key");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&path).expect("meta").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn public_keys_parse_strictly() {
        let key = SecretKey::from_seed([7; 32]).public();
        assert_eq!(key.to_hex().parse::<PublicKey>(), Ok(key));
        assert!(key.to_hex().to_uppercase().parse::<PublicKey>().is_err());
        assert!("abcd".parse::<PublicKey>().is_err());
        // The identity point is a small-order key.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        assert!(hex(&identity).parse::<PublicKey>().is_err());
    }
}
