//! What an edge trusts and the checks every fetched document goes through:
//! the root chain, the keyset, heads and manifests, and the version
//! high-water marks that refuse replays.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::documents::{Head, Keyset, Manifest, Root, Scope, parse_version};
use crate::envelope::{DocKind, Envelope, KeyStatus};
use crate::error::{Error, Result};
use crate::json::from_slice_strict;
use crate::keys::PublicKey;
use crate::path::PathLimits;
use crate::time::Timestamp;

/// Root, keyset and head documents are small.
pub const MAX_SMALL_DOC: u64 = 64 * 1024;

/// The persisted trust state (`trust.json` in the edge's state directory).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustState {
    /// The root pinned in the bootstrap when this state was built.
    pub anchor: Root,
    /// The newest root reached by the chain from the anchor.
    pub root: Root,
    /// The newest keyset accepted.
    pub keyset: Option<Keyset>,
    /// Per scope (`environment/region`), the highest manifest version seen.
    pub high_water: BTreeMap<String, u64>,
}

/// A manifest whose signatures, scope, expiry and contents passed.
#[derive(Debug, Clone)]
pub struct VerifiedManifest {
    pub manifest: Manifest,
    /// The envelope bytes as received.
    pub envelope: Vec<u8>,
    /// blake3 of `envelope`: the manifest's name on the origin and on disk.
    pub hash: String,
}

#[derive(Debug, Clone)]
pub struct Trust {
    state: TrustState,
}

impl Trust {
    /// Trust anchored at the root pinned in the bootstrap.
    pub fn pinned(anchor: Root) -> Result<Self> {
        anchor.check()?;
        Ok(Self {
            state: TrustState {
                root: anchor.clone(),
                anchor,
                keyset: None,
                high_water: BTreeMap::new(),
            },
        })
    }

    /// Resumes persisted state. If the bootstrap now pins a different
    /// anchor, the root chain and keyset start again from it, but the
    /// high-water marks are kept (rollback protection survives re-pinning).
    /// The flag says whether that happened.
    pub fn resume(state: TrustState, anchor: Root) -> Result<(Self, bool)> {
        anchor.check()?;
        if state.anchor == anchor {
            Ok((Self { state }, false))
        } else {
            let mut fresh = Self::pinned(anchor)?;
            fresh.state.high_water = state.high_water;
            Ok((fresh, true))
        }
    }

    pub fn state(&self) -> &TrustState {
        &self.state
    }

    pub fn root(&self) -> &Root {
        &self.state.root
    }

    pub fn keyset(&self) -> Option<&Keyset> {
        self.state.keyset.as_ref()
    }

    /// The next root in the chain: version = current + 1, signed by a
    /// threshold of the current root's keys and of its own.
    pub fn accept_root(&mut self, bytes: &[u8]) -> Result<Root> {
        let env = Envelope::parse(bytes, DocKind::Root, MAX_SMALL_DOC)?;
        let current = &self.state.root;
        env.verify(current.threshold, |k| status_in(&current.keys, k))?;
        let next: Root = from_slice_strict(DocKind::Root, &env.payload)?;
        next.check()?;
        env.verify(next.threshold, |k| status_in(&next.keys, k))?;
        if next.version != current.version + 1 {
            return Err(if next.version <= current.version {
                Error::Rollback {
                    doc: DocKind::Root,
                    scope: String::new(),
                    version: next.version,
                    highest: current.version,
                }
            } else {
                Error::Malformed {
                    doc: DocKind::Root,
                    reason: format!(
                        "version {} does not follow {} (roots chain one by one)",
                        next.version, current.version
                    ),
                }
            });
        }
        // The keyset held stays: it was signed by a root of this chain, and
        // its version still bounds what a later keyset must exceed.
        self.state.root = next.clone();
        Ok(next)
    }

    /// A keyset signed by the current root. Returns it when it is newer
    /// than the one held; an identical one is `Ok(None)`; an older one, or
    /// the same version with other content, is refused.
    pub fn accept_keyset(&mut self, bytes: &[u8], now: Timestamp) -> Result<Option<Keyset>> {
        let env = Envelope::parse(bytes, DocKind::Keyset, MAX_SMALL_DOC)?;
        let root = &self.state.root;
        env.verify(root.threshold, |k| status_in(&root.keys, k))?;
        let ks: Keyset = from_slice_strict(DocKind::Keyset, &env.payload)?;
        ks.check()?;
        if let Some(held) = &self.state.keyset {
            if ks.version < held.version {
                return Err(Error::Rollback {
                    doc: DocKind::Keyset,
                    scope: String::new(),
                    version: ks.version,
                    highest: held.version,
                });
            }
            if ks.version == held.version {
                return if ks == *held {
                    Ok(None)
                } else {
                    Err(Error::Malformed {
                        doc: DocKind::Keyset,
                        reason: format!(
                            "version {} differs from the keyset already accepted with that version",
                            ks.version
                        ),
                    })
                };
            }
        }
        if ks.expires <= now {
            return Err(Error::Expired {
                doc: DocKind::Keyset,
                expired: ks.expires,
                now,
            });
        }
        self.state.keyset = Some(ks.clone());
        Ok(Some(ks))
    }

    /// Verifies a keyset-signed envelope; key expiry is checked at `now`
    /// unless `now` is `None`.
    fn verify_signed(&self, env: &Envelope, now: Option<Timestamp>) -> Result<()> {
        let Some(ks) = &self.state.keyset else {
            return Err(Error::UnknownKey {
                doc: env.kind,
                key: env
                    .signatures
                    .first()
                    .map(|s| s.key)
                    .unwrap_or(PublicKey::from_bytes([0; 32])),
            });
        };
        if let Some(now) = now
            && ks.expires <= now
        {
            return Err(Error::Expired {
                doc: DocKind::Keyset,
                expired: ks.expires,
                now,
            });
        }
        env.verify(ks.threshold, |k| match ks.key(k) {
            Some(entry) => match now {
                Some(now) if entry.expires <= now => KeyStatus::Expired(entry.expires),
                _ => KeyStatus::Trusted,
            },
            None => KeyStatus::Unknown,
        })?;
        Ok(())
    }

    /// A head for `scope`, signed by the keyset and unexpired. Its version
    /// is not judged here (see [`Trust::freshness`]).
    pub fn verify_head(&self, bytes: &[u8], scope: &Scope, now: Timestamp) -> Result<Head> {
        let env = Envelope::parse(bytes, DocKind::Head, MAX_SMALL_DOC)?;
        self.verify_signed(&env, Some(now))?;
        let head: Head = from_slice_strict(DocKind::Head, &env.payload)?;
        head.check_for(scope)?;
        if head.expires <= now {
            return Err(Error::Expired {
                doc: DocKind::Head,
                expired: head.expires,
                now,
            });
        }
        Ok(head)
    }

    /// A manifest for `scope`, signed by the keyset, unexpired, for this
    /// `running` runtime version, within `max_bytes`.
    pub fn verify_manifest(
        &self,
        bytes: &[u8],
        scope: &Scope,
        now: Timestamp,
        running: &str,
        limits: &ManifestLimits,
    ) -> Result<VerifiedManifest> {
        let env = Envelope::parse(bytes, DocKind::Manifest, limits.max_manifest)?;
        self.verify_signed(&env, Some(now))?;
        let manifest: Manifest = from_slice_strict(DocKind::Manifest, &env.payload)?;
        manifest.check(&limits.paths, limits.max_bundle)?;
        if manifest.environment != scope.environment || !manifest.regions.contains(&scope.region) {
            return Err(Error::WrongScope {
                doc: DocKind::Manifest,
                expected: scope.to_string(),
                got: format!("{}/{}", manifest.environment, manifest.regions.join(",")),
            });
        }
        if manifest.expires <= now {
            return Err(Error::Expired {
                doc: DocKind::Manifest,
                expired: manifest.expires,
                now,
            });
        }
        let required = parse_version(&manifest.min_runtime).map_err(|reason| Error::Malformed {
            doc: DocKind::Manifest,
            reason,
        })?;
        let have = parse_version(running).map_err(|reason| Error::Malformed {
            doc: DocKind::Manifest,
            reason: format!("running version: {reason}"),
        })?;
        if have < required {
            return Err(Error::RuntimeTooOld {
                required: manifest.min_runtime.clone(),
                running: running.to_string(),
            });
        }
        Ok(VerifiedManifest {
            manifest,
            hash: blake3::hash(bytes).to_hex().to_string(),
            envelope: bytes.to_vec(),
        })
    }

    /// Re-checks a manifest this node activated before (at start, from its
    /// own disk): the signatures must still verify against the keyset held,
    /// but expiry is not judged — a node keeps serving its last good bundle
    /// when the origin is out of reach.
    pub fn reverify_stored(&self, bytes: &[u8], limits: &ManifestLimits) -> Result<Manifest> {
        let env = Envelope::parse(bytes, DocKind::Manifest, limits.max_manifest)?;
        self.verify_signed(&env, None)?;
        let manifest: Manifest = from_slice_strict(DocKind::Manifest, &env.payload)?;
        manifest.check(&limits.paths, limits.max_bundle)?;
        Ok(manifest)
    }

    pub fn high_water(&self, scope: &Scope) -> u64 {
        self.state
            .high_water
            .get(&scope.to_string())
            .copied()
            .unwrap_or(0)
    }

    /// Whether `version` is news for `scope`: above the high-water mark is
    /// `Ok(true)`, equal is `Ok(false)` (current, or reverted from and so
    /// quarantined), below is a rollback.
    pub fn freshness(&self, doc: DocKind, scope: &Scope, version: u64) -> Result<bool> {
        let highest = self.high_water(scope);
        if version < highest {
            Err(Error::Rollback {
                doc,
                scope: format!(" for {scope}"),
                version,
                highest,
            })
        } else {
            Ok(version > highest)
        }
    }

    /// Raises the high-water mark of `scope` to at least `version`.
    pub fn raise(&mut self, scope: &Scope, version: u64) {
        let hw = self.state.high_water.entry(scope.to_string()).or_insert(0);
        *hw = (*hw).max(version);
    }
}

/// Size limits a manifest is held to.
#[derive(Debug, Clone, Copy)]
pub struct ManifestLimits {
    /// The envelope's bytes.
    pub max_manifest: u64,
    /// The sum of the files' sizes.
    pub max_bundle: u64,
    pub paths: PathLimits,
}

impl Default for ManifestLimits {
    fn default() -> Self {
        Self {
            max_manifest: 8 << 20,
            max_bundle: 2 << 30,
            paths: PathLimits::default(),
        }
    }
}

fn status_in(keys: &[PublicKey], k: &PublicKey) -> KeyStatus {
    if keys.contains(k) {
        KeyStatus::Trusted
    } else {
        KeyStatus::Unknown
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::documents::{ConfigRef, FileEntry, KeysetKey, Totals};
    use crate::keys::SecretKey;

    const NOW: u64 = 1_800_000_000;

    fn key(n: u8) -> SecretKey {
        SecretKey::from_seed([n; 32])
    }

    fn ts(offset: i64) -> Timestamp {
        Timestamp::from_unix(NOW.saturating_add_signed(offset))
    }

    fn signed<T: Serialize>(kind: DocKind, doc: &T, signers: &[&SecretKey]) -> Vec<u8> {
        let mut env = Envelope::new(kind, serde_json::to_vec(doc).expect("serializes"));
        for k in signers {
            env.sign(k);
        }
        env.to_bytes()
    }

    fn root(version: u64, threshold: usize, keys: &[&SecretKey]) -> Root {
        Root {
            version,
            threshold,
            keys: keys.iter().map(|k| k.public()).collect(),
            created: ts(-1000),
        }
    }

    fn keyset(version: u64, keys: &[(&str, &SecretKey, i64)]) -> Keyset {
        Keyset {
            version,
            created: ts(-1000),
            expires: ts(100_000),
            threshold: 1,
            keys: keys
                .iter()
                .map(|(name, k, exp)| KeysetKey {
                    key: k.public(),
                    name: (*name).into(),
                    expires: ts(*exp),
                })
                .collect(),
        }
    }

    fn scope() -> Scope {
        Scope::new("production", "eu-central-1")
    }

    fn head(version: u64) -> Head {
        Head {
            environment: "production".into(),
            region: "eu-central-1".into(),
            version,
            manifest: blake3::hash(b"m").to_hex().to_string(),
            manifest_size: 10,
            issued: ts(-10),
            expires: ts(3600),
        }
    }

    fn manifest(version: u64) -> Manifest {
        let body = b"[routes]";
        Manifest {
            format: 1,
            environment: "production".into(),
            regions: vec!["eu-central-1".into(), "us-east-1".into()],
            version,
            created: ts(-10),
            expires: ts(86_400),
            min_runtime: "0.1.0".into(),
            config: ConfigRef {
                edge: "config/edge.toml".into(),
                regions: None,
            },
            files: vec![FileEntry {
                path: "config/edge.toml".into(),
                blake3: blake3::hash(body).to_hex().to_string(),
                size: body.len() as u64,
                content_type: "application/toml".into(),
            }],
            totals: Totals {
                files: 1,
                bytes: body.len() as u64,
            },
        }
    }

    /// Root keys 1 and 2 (threshold 2), signing key 10 in keyset v1.
    fn trusted() -> Trust {
        let (r1, r2) = (key(1), key(2));
        let mut t = Trust::pinned(root(1, 2, &[&r1, &r2])).expect("anchor");
        let ks = keyset(1, &[("signer-a", &key(10), 100_000)]);
        t.accept_keyset(&signed(DocKind::Keyset, &ks, &[&r1, &r2]), ts(0))
            .expect("keyset v1");
        t
    }

    #[test]
    fn the_root_chain_needs_both_thresholds_and_consecutive_versions() {
        let (r1, r2, r3, r4) = (key(1), key(2), key(3), key(4));
        let next = root(2, 2, &[&r3, &r4]);
        let check = |signers: &[&SecretKey], doc: &Root| {
            let mut t = trusted();
            t.accept_root(&signed(DocKind::Root, doc, signers))
        };
        assert!(
            matches!(
                check(&[&r1, &r2], &next),
                Err(Error::Threshold { .. } | Error::UnknownKey { .. })
            ),
            "old keys alone"
        );
        assert!(check(&[&r3, &r4], &next).is_err(), "new keys alone");
        assert!(
            check(&[&r1, &r3, &r4], &next).is_err(),
            "one old key of two"
        );
        assert!(check(&[&r1, &r2, &r3, &r4], &next).is_ok());
        let skip = root(3, 2, &[&r3, &r4]);
        assert!(matches!(
            check(&[&r1, &r2, &r3, &r4], &skip),
            Err(Error::Malformed { .. })
        ));
        let replay = root(1, 2, &[&r1, &r2]);
        assert!(matches!(
            check(&[&r1, &r2], &replay),
            Err(Error::Rollback { .. })
        ));
        // After rotation, keysets must be signed by the new root.
        let mut t = trusted();
        t.accept_root(&signed(DocKind::Root, &next, &[&r1, &r2, &r3, &r4]))
            .expect("rotated");
        let ks2 = keyset(2, &[("signer-b", &key(11), 100_000)]);
        assert!(
            t.accept_keyset(&signed(DocKind::Keyset, &ks2, &[&r1, &r2]), ts(0))
                .is_err()
        );
        assert!(
            t.accept_keyset(&signed(DocKind::Keyset, &ks2, &[&r3, &r4]), ts(0))
                .is_ok()
        );
    }

    #[test]
    fn keysets_cannot_be_replayed_or_forked() {
        let (r1, r2) = (key(1), key(2));
        let mut t = trusted();
        let v1 = keyset(1, &[("signer-a", &key(10), 100_000)]);
        assert_eq!(
            t.accept_keyset(&signed(DocKind::Keyset, &v1, &[&r1, &r2]), ts(0))
                .expect("same keyset again"),
            None
        );
        let fork = keyset(1, &[("signer-x", &key(66), 100_000)]);
        assert!(matches!(
            t.accept_keyset(&signed(DocKind::Keyset, &fork, &[&r1, &r2]), ts(0)),
            Err(Error::Malformed { .. })
        ));
        let v2 = keyset(2, &[("signer-b", &key(11), 100_000)]);
        t.accept_keyset(&signed(DocKind::Keyset, &v2, &[&r1, &r2]), ts(0))
            .expect("v2");
        assert!(
            matches!(
                t.accept_keyset(&signed(DocKind::Keyset, &v1, &[&r1, &r2]), ts(0)),
                Err(Error::Rollback { .. })
            ),
            "the old keyset would bring back a revoked key"
        );
        // The revoked key no longer signs heads.
        let h = signed(DocKind::Head, &head(5), &[&key(10)]);
        assert!(matches!(
            t.verify_head(&h, &scope(), ts(0)),
            Err(Error::UnknownKey { .. })
        ));
        let mut expired = keyset(3, &[("signer-c", &key(12), 100_000)]);
        expired.expires = ts(-1);
        assert!(matches!(
            t.accept_keyset(&signed(DocKind::Keyset, &expired, &[&r1, &r2]), ts(0)),
            Err(Error::Expired { .. })
        ));
        let one_root_key = keyset(4, &[("signer-d", &key(13), 100_000)]);
        assert!(matches!(
            t.accept_keyset(&signed(DocKind::Keyset, &one_root_key, &[&r1]), ts(0)),
            Err(Error::Threshold { .. })
        ));
    }

    #[test]
    fn heads_are_checked_for_signer_scope_and_expiry() {
        let t = trusted();
        let signer = key(10);
        let ok = t
            .verify_head(
                &signed(DocKind::Head, &head(5), &[&signer]),
                &scope(),
                ts(0),
            )
            .expect("valid head");
        assert_eq!(ok.version, 5);
        let other = Scope::new("production", "us-east-1");
        assert!(matches!(
            t.verify_head(&signed(DocKind::Head, &head(5), &[&signer]), &other, ts(0)),
            Err(Error::WrongScope { .. })
        ));
        assert!(
            matches!(
                t.verify_head(
                    &signed(DocKind::Head, &head(5), &[&signer]),
                    &scope(),
                    ts(7200)
                ),
                Err(Error::Expired { .. })
            ),
            "a frozen head"
        );
        assert!(matches!(
            t.verify_head(
                &signed(DocKind::Head, &head(5), &[&key(99)]),
                &scope(),
                ts(0)
            ),
            Err(Error::UnknownKey { .. })
        ));
        // A key past its own expiry in the keyset.
        let (r1, r2) = (key(1), key(2));
        let mut t2 = trusted();
        let ks = keyset(2, &[("old", &key(20), 10), ("new", &key(21), 100_000)]);
        t2.accept_keyset(&signed(DocKind::Keyset, &ks, &[&r1, &r2]), ts(0))
            .expect("v2");
        assert!(matches!(
            t2.verify_head(
                &signed(DocKind::Head, &head(5), &[&key(20)]),
                &scope(),
                ts(60)
            ),
            Err(Error::ExpiredKey { .. })
        ));
        // The head's bytes are not a manifest's: domain separation.
        let as_manifest = signed(DocKind::Head, &manifest(5), &[&signer]);
        assert!(
            t.verify_manifest(
                &as_manifest,
                &scope(),
                ts(0),
                "0.1.0",
                &ManifestLimits::default()
            )
            .is_err()
        );
    }

    #[test]
    fn manifests_are_checked_for_scope_expiry_and_runtime() {
        let t = trusted();
        let signer = key(10);
        let limits = ManifestLimits::default();
        let verify = |m: &Manifest, running: &str, now: Timestamp| {
            t.verify_manifest(
                &signed(DocKind::Manifest, m, &[&signer]),
                &scope(),
                now,
                running,
                &limits,
            )
        };
        let good = verify(&manifest(5), "0.1.0", ts(0)).expect("valid");
        assert_eq!(good.hash, blake3::hash(&good.envelope).to_hex().to_string());
        let mut elsewhere = manifest(5);
        elsewhere.regions = vec!["us-east-1".into()];
        assert!(matches!(
            verify(&elsewhere, "0.1.0", ts(0)),
            Err(Error::WrongScope { .. })
        ));
        let mut staging = manifest(5);
        staging.environment = "staging".into();
        assert!(matches!(
            verify(&staging, "0.1.0", ts(0)),
            Err(Error::WrongScope { .. })
        ));
        assert!(matches!(
            verify(&manifest(5), "0.1.0", ts(100_000)),
            Err(Error::Expired { .. })
        ));
        let mut newer = manifest(5);
        newer.min_runtime = "0.2.0".into();
        assert!(matches!(
            verify(&newer, "0.1.9", ts(0)),
            Err(Error::RuntimeTooOld { .. })
        ));
        assert!(
            verify(&newer, "0.10.0", ts(0)).is_ok(),
            "versions compare as numbers"
        );
        let small = ManifestLimits {
            max_manifest: 100,
            ..limits
        };
        assert!(matches!(
            t.verify_manifest(
                &signed(DocKind::Manifest, &manifest(5), &[&signer]),
                &scope(),
                ts(0),
                "0.1.0",
                &small
            ),
            Err(Error::Oversize { .. })
        ));
        // A stored manifest is re-verified without judging expiry.
        let stored = signed(DocKind::Manifest, &manifest(5), &[&signer]);
        assert!(t.reverify_stored(&stored, &limits).is_ok());
    }

    #[test]
    fn high_water_marks_refuse_rollbacks_and_survive_repinning() {
        let mut t = trusted();
        let s = scope();
        assert!(t.freshness(DocKind::Head, &s, 1).expect("news"));
        t.raise(&s, 7);
        assert!(!t.freshness(DocKind::Head, &s, 7).expect("current"));
        assert!(t.freshness(DocKind::Head, &s, 8).expect("news"));
        assert!(matches!(
            t.freshness(DocKind::Head, &s, 6),
            Err(Error::Rollback {
                version: 6,
                highest: 7,
                ..
            })
        ));
        t.raise(&s, 3);
        assert_eq!(t.high_water(&s), 7, "never lowered");
        let other = Scope::new("production", "us-east-1");
        assert!(t.freshness(DocKind::Head, &other, 1).expect("per scope"));

        let state = t.state().clone();
        let (same, repinned) =
            Trust::resume(state.clone(), state.anchor.clone()).expect("same anchor");
        assert!(!repinned);
        assert!(same.keyset().is_some());
        let (fresh, repinned) = Trust::resume(state, root(1, 1, &[&key(5)])).expect("new anchor");
        assert!(repinned);
        assert!(
            fresh.keyset().is_none(),
            "the keyset came from the old root"
        );
        assert_eq!(fresh.high_water(&s), 7);
    }
}
