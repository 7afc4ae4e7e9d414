//! DSSE envelopes: a payload, its type, and signatures over the pair.
//!
//! Each signature covers `PAE(payloadType, payload)` (the DSSE v1
//! pre-authentication encoding), so the payload type separates the domains:
//! a signature over a head can never be replayed as one over a manifest.
//! The payload bytes are kept exactly as received; they are verified before
//! anyone parses them.

use std::collections::BTreeSet;
use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::keys::{PublicKey, SecretKey};
use crate::time::Timestamp;

/// The four signed document types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DocKind {
    Root,
    Keyset,
    Manifest,
    Head,
}

impl DocKind {
    pub fn payload_type(self) -> &'static str {
        match self {
            DocKind::Root => "application/vnd.cathedral.root+json",
            DocKind::Keyset => "application/vnd.cathedral.keyset+json",
            DocKind::Manifest => "application/vnd.cathedral.manifest+json",
            DocKind::Head => "application/vnd.cathedral.head+json",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            DocKind::Root => "root",
            DocKind::Keyset => "keyset",
            DocKind::Manifest => "manifest",
            DocKind::Head => "head",
        }
    }
}

impl fmt::Display for DocKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawEnvelope {
    payload_type: String,
    payload: String,
    signatures: Vec<RawSignature>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSignature {
    keyid: String,
    sig: String,
}

/// One signature as carried in an envelope.
#[derive(Debug, Clone)]
pub struct Signature {
    pub key: PublicKey,
    pub sig: ed25519_dalek::Signature,
}

/// A signed document, not yet verified.
#[derive(Debug, Clone)]
pub struct Envelope {
    pub kind: DocKind,
    /// The payload bytes exactly as signed.
    pub payload: Vec<u8>,
    pub signatures: Vec<Signature>,
}

/// What a verifier knows about a key that signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyStatus {
    Trusted,
    Expired(Timestamp),
    Unknown,
}

/// Envelopes hold at most this many signatures.
const MAX_SIGNATURES: usize = 32;

impl Envelope {
    pub fn new(kind: DocKind, payload: Vec<u8>) -> Self {
        Self {
            kind,
            payload,
            signatures: Vec::new(),
        }
    }

    /// Parses an envelope of the `expected` type, at most `max` bytes. The
    /// payload is decoded but not parsed.
    pub fn parse(bytes: &[u8], expected: DocKind, max: u64) -> Result<Self> {
        let malformed = |reason: String| Error::Malformed {
            doc: expected,
            reason,
        };
        if bytes.len() as u64 > max {
            return Err(Error::Oversize {
                doc: expected.to_string(),
                size: bytes.len() as u64,
                limit: max,
            });
        }
        let raw: RawEnvelope = crate::json::from_slice_strict(expected, bytes)?;
        if raw.payload_type != expected.payload_type() {
            return Err(malformed(format!(
                "payloadType is {:?}, expected {:?}",
                raw.payload_type,
                expected.payload_type()
            )));
        }
        if raw.signatures.len() > MAX_SIGNATURES {
            return Err(malformed(format!(
                "{} signatures, at most {MAX_SIGNATURES}",
                raw.signatures.len()
            )));
        }
        let payload = BASE64
            .decode(raw.payload.as_bytes())
            .map_err(|e| malformed(format!("payload is not base64: {e}")))?;
        let mut signatures = Vec::with_capacity(raw.signatures.len());
        for (i, s) in raw.signatures.iter().enumerate() {
            let key: PublicKey = s
                .keyid
                .parse()
                .map_err(|e| malformed(format!("signatures[{i}].keyid: {e}")))?;
            let sig = BASE64
                .decode(s.sig.as_bytes())
                .map_err(|e| malformed(format!("signatures[{i}].sig is not base64: {e}")))?;
            let sig = ed25519_dalek::Signature::from_slice(&sig)
                .map_err(|_| malformed(format!("signatures[{i}].sig is not 64 bytes")))?;
            signatures.push(Signature { key, sig });
        }
        Ok(Self {
            kind: expected,
            payload,
            signatures,
        })
    }

    /// The envelope as written to an origin: pretty JSON with a final
    /// newline.
    pub fn to_bytes(&self) -> Vec<u8> {
        let raw = RawEnvelope {
            payload_type: self.kind.payload_type().into(),
            payload: BASE64.encode(&self.payload),
            signatures: self
                .signatures
                .iter()
                .map(|s| RawSignature {
                    keyid: s.key.to_hex(),
                    sig: BASE64.encode(s.sig.to_bytes()),
                })
                .collect(),
        };
        let mut out = serde_json::to_vec_pretty(&raw).expect("envelopes always serialize");
        out.push(b'\n');
        out
    }

    /// Adds (or replaces) `key`'s signature.
    pub fn sign(&mut self, key: &SecretKey) {
        let public = key.public();
        let sig = key.sign(&pae(self.kind, &self.payload));
        self.signatures.retain(|s| s.key != public);
        self.signatures.push(Signature { key: public, sig });
    }

    /// Checks the signatures: at least `threshold` distinct keys for which
    /// `status` says [`KeyStatus::Trusted`] must have signed validly.
    /// Returns those keys. Signatures by other keys are ignored when the
    /// threshold is met; when it is not, the error names the most telling
    /// problem (a bad signature, then an expired key, then an unknown key).
    pub fn verify(
        &self,
        threshold: usize,
        status: impl Fn(&PublicKey) -> KeyStatus,
    ) -> Result<Vec<PublicKey>> {
        let message = pae(self.kind, &self.payload);
        let mut valid = BTreeSet::new();
        let mut bad = None;
        let mut expired = None;
        let mut unknown = None;
        for s in &self.signatures {
            match status(&s.key) {
                KeyStatus::Trusted => {
                    if s.key.verify(&message, &s.sig) {
                        valid.insert(s.key);
                    } else {
                        bad.get_or_insert(s.key);
                    }
                }
                KeyStatus::Expired(at) => {
                    expired.get_or_insert((s.key, at));
                }
                KeyStatus::Unknown => {
                    unknown.get_or_insert(s.key);
                }
            }
        }
        if threshold > 0 && valid.len() >= threshold {
            return Ok(valid.into_iter().collect());
        }
        let doc = self.kind;
        Err(if let Some(key) = bad {
            Error::BadSignature { doc, key }
        } else if let Some((key, expired)) = expired {
            Error::ExpiredKey { doc, key, expired }
        } else if let (Some(key), true) = (unknown, valid.is_empty()) {
            Error::UnknownKey { doc, key }
        } else {
            Error::Threshold {
                doc,
                needed: threshold,
                valid: valid.len(),
            }
        })
    }
}

/// DSSE v1 pre-authentication encoding.
fn pae(kind: DocKind, payload: &[u8]) -> Vec<u8> {
    let ty = kind.payload_type();
    let mut out = Vec::with_capacity(payload.len() + ty.len() + 32);
    out.extend_from_slice(format!("DSSEv1 {} {ty} {} ", ty.len(), payload.len()).as_bytes());
    out.extend_from_slice(payload);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> SecretKey {
        SecretKey::from_seed([n; 32])
    }

    fn trusted(keys: &[&SecretKey]) -> impl Fn(&PublicKey) -> KeyStatus {
        let set: Vec<PublicKey> = keys.iter().map(|k| k.public()).collect();
        move |k| {
            if set.contains(k) {
                KeyStatus::Trusted
            } else {
                KeyStatus::Unknown
            }
        }
    }

    #[test]
    fn round_trips_and_verifies() {
        let (a, b) = (key(1), key(2));
        let mut env = Envelope::new(DocKind::Head, b"{\"x\":1}".to_vec());
        env.sign(&a);
        env.sign(&b);
        let bytes = env.to_bytes();
        let back = Envelope::parse(&bytes, DocKind::Head, 1 << 20).expect("parses");
        assert_eq!(back.payload, env.payload);
        let signers = back.verify(2, trusted(&[&a, &b])).expect("2 of 2");
        assert_eq!(signers.len(), 2);
    }

    #[test]
    fn repeated_signatures_by_one_key_count_once() {
        let a = key(1);
        let mut env = Envelope::new(DocKind::Keyset, b"{}".to_vec());
        env.sign(&a);
        let again = env.signatures[0].clone();
        env.signatures.push(again);
        let err = env.verify(2, trusted(&[&a])).expect_err("one distinct key");
        assert!(
            matches!(
                err,
                Error::Threshold {
                    valid: 1,
                    needed: 2,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn a_signature_for_one_type_does_not_verify_as_another() {
        let a = key(1);
        let mut env = Envelope::new(DocKind::Head, b"{}".to_vec());
        env.sign(&a);
        let mut text = String::from_utf8(env.to_bytes()).expect("utf8");
        text = text.replace("head+json", "manifest+json");
        let as_manifest =
            Envelope::parse(text.as_bytes(), DocKind::Manifest, 1 << 20).expect("parses");
        let err = as_manifest
            .verify(1, trusted(&[&a]))
            .expect_err("domain separated");
        assert!(matches!(err, Error::BadSignature { .. }), "{err}");
        let err = Envelope::parse(&env.to_bytes(), DocKind::Manifest, 1 << 20)
            .expect_err("wrong payload type");
        assert!(err.to_string().contains("payloadType"), "{err}");
    }

    #[test]
    fn tampered_payload_and_untrusted_keys_are_refused() {
        let (a, b) = (key(1), key(2));
        let mut env = Envelope::new(DocKind::Manifest, b"{\"v\":1}".to_vec());
        env.sign(&a);
        let mut tampered = env.clone();
        tampered.payload = b"{\"v\":2}".to_vec();
        assert!(matches!(
            tampered.verify(1, trusted(&[&a])),
            Err(Error::BadSignature { .. })
        ));
        assert!(matches!(
            env.verify(1, trusted(&[&b])),
            Err(Error::UnknownKey { .. })
        ));
        assert!(
            matches!(env.verify(0, trusted(&[&a])), Err(Error::Threshold { .. })),
            "a zero threshold never passes"
        );
        let expired = Timestamp::from_unix(1);
        assert!(matches!(
            env.verify(1, |_| KeyStatus::Expired(expired)),
            Err(Error::ExpiredKey { .. })
        ));
    }

    #[test]
    fn size_and_shape_are_checked_before_anything_else() {
        let env = Envelope::new(DocKind::Root, vec![b'x'; 100]);
        let bytes = env.to_bytes();
        assert!(matches!(
            Envelope::parse(&bytes, DocKind::Root, 10),
            Err(Error::Oversize { .. })
        ));
        for bad in [
            &b"not json"[..],
            br#"{"payloadType":"application/vnd.cathedral.root+json","payload":"!!","signatures":[]}"#,
            br#"{"payloadType":"application/vnd.cathedral.root+json","payload":"","signatures":[],"extra":1}"#,
            br#"{"payloadType":"application/vnd.cathedral.root+json","payload":"","payload":"","signatures":[]}"#,
        ] {
            assert!(
                matches!(Envelope::parse(bad, DocKind::Root, 1 << 20), Err(Error::Malformed { .. })),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
