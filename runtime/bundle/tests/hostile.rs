//! Hostile bytes: thousands of deterministic mutations of valid signed
//! documents. Whatever the bytes, verification returns (never panics), and
//! anything it accepts carries exactly the payload that was signed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use cathedral_bundle::{
    ConfigRef, DocKind, Envelope, FileEntry, Head, Keyset, KeysetKey, Manifest, ManifestLimits,
    Root, Scope, SecretKey, Timestamp, Totals, Trust,
};

/// xorshift64*: deterministic, so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn signed<T: serde::Serialize>(kind: DocKind, doc: &T, keys: &[&SecretKey]) -> Vec<u8> {
    let mut env = Envelope::new(kind, serde_json::to_vec(doc).unwrap());
    for k in keys {
        env.sign(k);
    }
    env.to_bytes()
}

/// One mutation of `bytes`: flip, replace, delete, insert, duplicate a
/// span, or truncate.
fn mutate(rng: &mut Rng, bytes: &[u8]) -> Vec<u8> {
    let mut out = bytes.to_vec();
    let rounds = 1 + rng.below(4);
    for _ in 0..rounds {
        if out.is_empty() {
            out.push(b'{');
        }
        let i = rng.below(out.len());
        match rng.below(6) {
            0 => out[i] ^= 1 << rng.below(8),
            1 => {
                const BYTES: &[u8] = b"{}[]\",:0aZ\\\n\x00\xff";
                out[i] = BYTES[rng.below(BYTES.len())];
            }
            2 => {
                out.remove(i);
            }
            3 => out.insert(i, rng.next() as u8),
            4 => {
                let end = (i + 1 + rng.below(32)).min(out.len());
                let span = out[i..end].to_vec();
                out.splice(i..i, span);
            }
            _ => out.truncate(i),
        }
    }
    out
}

struct Fixture {
    trust: Trust,
    scope: Scope,
    now: Timestamp,
    head: Vec<u8>,
    manifest: Vec<u8>,
    keyset: Vec<u8>,
    root2: Vec<u8>,
}

fn fixture() -> Fixture {
    let (r1, r2, s) = (
        SecretKey::from_seed([1; 32]),
        SecretKey::from_seed([2; 32]),
        SecretKey::from_seed([9; 32]),
    );
    let now = Timestamp::from_unix(1_800_000_000);
    let later = now.after(Duration::from_secs(86_400));
    let anchor = Root {
        version: 1,
        threshold: 2,
        keys: vec![r1.public(), r2.public()],
        created: now,
    };
    let mut trust = Trust::pinned(anchor).unwrap();
    let keyset = Keyset {
        version: 1,
        created: now,
        expires: later,
        threshold: 1,
        keys: vec![KeysetKey {
            key: s.public(),
            name: "signer".into(),
            expires: later,
        }],
    };
    let keyset_bytes = signed(DocKind::Keyset, &keyset, &[&r1, &r2]);
    trust.accept_keyset(&keyset_bytes, now).unwrap();
    let body = b"[routes.a]\npath = \"/\"\nstatic = \"../site\"\n";
    let manifest = Manifest {
        format: 1,
        environment: "production".into(),
        regions: vec!["eu-central-1".into()],
        version: 3,
        created: now,
        expires: later,
        min_runtime: "0.1.0".into(),
        config: ConfigRef {
            edge: "config/edge.toml".into(),
            regions: None,
        },
        files: vec![
            FileEntry {
                path: "config/edge.toml".into(),
                blake3: blake3::hash(body).to_hex().to_string(),
                size: body.len() as u64,
                content_type: "application/toml".into(),
            },
            FileEntry {
                path: "site/index.html".into(),
                blake3: blake3::hash(b"hi").to_hex().to_string(),
                size: 2,
                content_type: "text/html".into(),
            },
        ],
        totals: Totals {
            files: 2,
            bytes: body.len() as u64 + 2,
        },
    };
    let manifest_bytes = signed(DocKind::Manifest, &manifest, &[&s]);
    let head = Head {
        environment: "production".into(),
        region: "eu-central-1".into(),
        version: 3,
        manifest: blake3::hash(&manifest_bytes).to_hex().to_string(),
        manifest_size: manifest_bytes.len() as u64,
        issued: now,
        expires: later,
    };
    let root2 = Root {
        version: 2,
        threshold: 1,
        keys: vec![r2.public()],
        created: now,
    };
    Fixture {
        trust,
        scope: Scope::new("production", "eu-central-1"),
        now,
        head: signed(DocKind::Head, &head, &[&s]),
        manifest: manifest_bytes,
        keyset: keyset_bytes,
        root2: signed(DocKind::Root, &root2, &[&r1, &r2]),
    }
}

/// The payload inside an envelope, if it parses at all.
fn payload(bytes: &[u8], kind: DocKind) -> Option<Vec<u8>> {
    Envelope::parse(bytes, kind, 1 << 20)
        .ok()
        .map(|e| e.payload)
}

#[test]
fn mutated_documents_are_refused_or_carry_the_signed_payload() {
    let f = fixture();
    let limits = ManifestLimits::default();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut accepted = [0usize; 4];
    const ROUNDS: usize = 2_000;
    for round in 0..ROUNDS {
        let m = mutate(&mut rng, &f.head);
        if f.trust.verify_head(&m, &f.scope, f.now).is_ok() {
            assert_eq!(
                payload(&m, DocKind::Head),
                payload(&f.head, DocKind::Head),
                "round {round}"
            );
            accepted[0] += 1;
        }
        let m = mutate(&mut rng, &f.manifest);
        if f.trust
            .verify_manifest(&m, &f.scope, f.now, "0.1.0", &limits)
            .is_ok()
        {
            assert_eq!(
                payload(&m, DocKind::Manifest),
                payload(&f.manifest, DocKind::Manifest),
                "round {round}"
            );
            accepted[1] += 1;
        }
        let m = mutate(&mut rng, &f.keyset);
        let mut t = f.trust.clone();
        if t.accept_keyset(&m, f.now).is_ok() {
            assert_eq!(
                payload(&m, DocKind::Keyset),
                payload(&f.keyset, DocKind::Keyset),
                "round {round}"
            );
            accepted[2] += 1;
        }
        let m = mutate(&mut rng, &f.root2);
        let mut t = f.trust.clone();
        if t.accept_root(&m).is_ok() {
            assert_eq!(
                payload(&m, DocKind::Root),
                payload(&f.root2, DocKind::Root),
                "round {round}"
            );
            accepted[3] += 1;
        }
    }
    // The untouched documents pass, so the refusals above were earned.
    assert!(f.trust.verify_head(&f.head, &f.scope, f.now).is_ok());
    assert!(
        f.trust
            .verify_manifest(&f.manifest, &f.scope, f.now, "0.1.0", &limits)
            .is_ok()
    );
    assert!(f.trust.clone().accept_root(&f.root2).is_ok());
    // Most mutations must be refused; the few accepted ones only touched
    // the envelope's formatting, never the signed bytes.
    for (kind, n) in ["head", "manifest", "keyset", "root"].iter().zip(accepted) {
        assert!(
            n < ROUNDS / 10,
            "{kind}: {n} of {ROUNDS} mutations accepted"
        );
    }
}

#[test]
fn arbitrary_bytes_never_panic_the_parsers() {
    let f = fixture();
    let limits = ManifestLimits::default();
    let mut rng = Rng(42);
    for _ in 0..2_000 {
        let len = rng.below(300);
        let bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        assert!(f.trust.verify_head(&bytes, &f.scope, f.now).is_err());
        assert!(
            f.trust
                .verify_manifest(&bytes, &f.scope, f.now, "0.1.0", &limits)
                .is_err()
        );
        assert!(f.trust.clone().accept_keyset(&bytes, f.now).is_err());
        assert!(f.trust.clone().accept_root(&bytes).is_err());
    }
}
