//! `cathedral keys`: ed25519 key pairs, root documents and keysets — the
//! offline half of signed bundles (`docs/bundles.md`, "Keys").

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cathedral_bundle::{
    DocKind, Envelope, KeyStatus, Keyset, KeysetKey, PublicKey, Root, SecretKey, Timestamp, Trust,
    from_slice_strict,
};
use clap::Subcommand;

use crate::cmd::{
    Failure, Outcome, invalid, load_keys, parse_duration, parse_public, read, runtime, write_new,
};

#[derive(Debug, Subcommand)]
pub(crate) enum KeysCommand {
    /// Generate an ed25519 key pair: DIR/NAME.key (secret, mode 0600) and
    /// DIR/NAME.pub (the public key in hex). Prints the public key.
    ///
    /// Never overwrites a key. Keep root keys offline; signing keys sign
    /// manifests and heads and are listed in a keyset.
    Generate {
        /// Directory to write into (created if missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// File name of the pair, without extension (letters, digits, '.', '_', '-').
        #[arg(long, value_name = "NAME")]
        name: String,
    },
    /// Write a root document: the root keys and how many must sign.
    ///
    /// Version 1 is what edges pin (bootstrap `root_keys` and
    /// `root_threshold`); it must be signed by a threshold of its own keys.
    /// To rotate root keys, write version N+1 with --previous root/N.json,
    /// signed by a threshold of root N's keys and a threshold of the new
    /// keys (give all those secret keys as --sign). The result is verified
    /// as an edge would before it is written. Publish it as root/<N>.json
    /// (`cathedral bundle publish --root`).
    Root {
        /// The root's version: 1, then one more per rotation.
        #[arg(long, value_name = "N")]
        version: u64,
        /// How many distinct root keys must sign keysets and the next root.
        #[arg(long, value_name = "M")]
        threshold: usize,
        /// The root's public keys: 64 hex digits or a .pub file. Repeatable.
        #[arg(long = "key", value_name = "PUB", required = true)]
        keys: Vec<String>,
        /// The previous root document (root/<N-1>.json); required for N ≥ 2.
        #[arg(long, value_name = "FILE")]
        previous: Option<PathBuf>,
        /// Secret key files that sign: root keys of this version, and for
        /// N ≥ 2 of the previous one. Repeatable.
        #[arg(long = "sign", value_name = "FILE.key", required = true)]
        sign: Vec<PathBuf>,
        /// Where to write the signed document (never overwritten).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Write a keyset: the online signing keys that may sign manifests and
    /// heads, signed by root keys.
    ///
    /// Rotate or revoke signing keys by publishing a new version: a keyset
    /// with a higher --version and the keys that should remain. Edges pick
    /// it up on their next poll and refuse keysets below the highest they
    /// have seen, so a revoked key cannot come back.
    Keyset {
        /// The keyset's version; each new keyset needs a higher one.
        #[arg(long, value_name = "N")]
        version: u64,
        /// How long the keyset is valid (humantime: 90d, 12h, …).
        #[arg(long, value_name = "DURATION", default_value = "90d", value_parser = parse_duration)]
        expires: Duration,
        /// How many distinct signing keys must sign each manifest and head.
        #[arg(long, value_name = "T", default_value_t = 1)]
        threshold: usize,
        /// A signing key: NAME=PUB, where PUB is 64 hex digits or a .pub
        /// file, optionally @DURATION for the key's own validity (default:
        /// the keyset's). Repeatable.
        #[arg(long = "signer", value_name = "NAME=PUB[@DURATION]", required = true)]
        signers: Vec<String>,
        /// Root secret key files that sign the keyset. Repeatable.
        #[arg(long = "sign", value_name = "ROOT.key", required = true)]
        sign: Vec<PathBuf>,
        /// The current root document: if given, the keyset is verified
        /// against it (a threshold of its keys must sign) before it is written.
        #[arg(long, value_name = "ROOT.json")]
        root: Option<PathBuf>,
        /// Where to write the signed keyset (never overwritten).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
}

pub(crate) fn run(command: KeysCommand) -> Outcome {
    match command {
        KeysCommand::Generate { out, name } => generate(&out, &name),
        KeysCommand::Root {
            version,
            threshold,
            keys,
            previous,
            sign,
            out,
        } => root(version, threshold, &keys, previous.as_deref(), &sign, &out),
        KeysCommand::Keyset {
            version,
            expires,
            threshold,
            signers,
            sign,
            root,
            out,
        } => keyset(
            version,
            expires,
            threshold,
            &signers,
            &sign,
            root.as_deref(),
            &out,
        ),
    }
}

fn generate(out: &Path, name: &str) -> Outcome {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if !ok {
        return Err(invalid(format!(
            "--name {name:?}: use 1-64 letters, digits, '.', '_' and '-', not starting with '.'"
        )));
    }
    std::fs::create_dir_all(out).map_err(|e| runtime(format!("{}: {e}", out.display())))?;
    let secret_path = out.join(format!("{name}.key"));
    let public_path = out.join(format!("{name}.pub"));
    for path in [&secret_path, &public_path] {
        if path.exists() {
            return Err(invalid(format!(
                "{}: already exists; keys are never overwritten",
                path.display()
            )));
        }
    }
    let key = SecretKey::generate().map_err(runtime)?;
    key.save(&secret_path).map_err(crate::cmd::from_bundle)?;
    let public = key.public().to_hex();
    write_new(&public_path, format!("{public}\n").as_bytes())?;
    println!("{public}");
    eprintln!(
        "wrote {} (secret, 0600) and {}",
        secret_path.display(),
        public_path.display()
    );
    Ok(())
}

fn status_in(keys: &[PublicKey]) -> impl Fn(&PublicKey) -> KeyStatus + '_ {
    |k| {
        if keys.contains(k) {
            KeyStatus::Trusted
        } else {
            KeyStatus::Unknown
        }
    }
}

/// How many of `keys` signed `env` validly.
pub(crate) fn signed_by(env: &Envelope, keys: &[PublicKey]) -> usize {
    env.verify(1, status_in(keys)).map_or(0, |v| v.len())
}

fn sign_all(kind: DocKind, payload: Vec<u8>, keys: &[SecretKey]) -> Envelope {
    let mut env = Envelope::new(kind, payload);
    for k in keys {
        env.sign(k);
    }
    env
}

fn payload<T: serde::Serialize>(doc: &T) -> Vec<u8> {
    serde_json::to_vec(doc).expect("documents always serialize to JSON")
}

/// A root document read from `path`: its envelope and payload. Its
/// signatures are not judged here.
pub(crate) fn read_root(path: &Path) -> Result<(Vec<u8>, Root), Failure> {
    let bytes = read(path)?;
    let parsed = Envelope::parse(&bytes, DocKind::Root, cathedral_bundle::MAX_SMALL_DOC)
        .and_then(|env| from_slice_strict::<Root>(DocKind::Root, &env.payload))
        .map_err(|e| invalid(format!("{}: {e}", path.display())))?;
    Ok((bytes, parsed))
}

fn root(
    version: u64,
    threshold: usize,
    keys: &[String],
    previous: Option<&Path>,
    sign: &[PathBuf],
    out: &Path,
) -> Outcome {
    let keys = keys
        .iter()
        .map(|k| parse_public(k))
        .collect::<Result<Vec<_>, _>>()?;
    let doc = Root {
        version,
        threshold,
        keys,
        created: Timestamp::now(),
    };
    doc.check().map_err(invalid)?;
    let signers = load_keys(sign)?;
    let env = sign_all(DocKind::Root, payload(&doc), &signers);
    let bytes = env.to_bytes();

    let previous_root = match (version, previous) {
        (1, Some(_)) => {
            return Err(invalid(
                "--previous: root version 1 has no previous root; it is pinned in the bootstrap",
            ));
        }
        (1, None) => {
            env.verify(doc.threshold, status_in(&doc.keys))
                .map_err(|e| invalid(format!("root v1 would not verify: {e}")))?;
            None
        }
        (_, None) => {
            return Err(invalid(format!(
                "--previous: root version {version} must chain from root {} (give its file)",
                version - 1
            )));
        }
        (_, Some(path)) => {
            let (_, prev) = read_root(path)?;
            if prev.version + 1 != version {
                return Err(invalid(format!(
                    "{}: is root version {}, but version {version} follows version {}",
                    path.display(),
                    prev.version,
                    version - 1
                )));
            }
            let mut trust = Trust::pinned(prev.clone())
                .map_err(|e| invalid(format!("{}: {e}", path.display())))?;
            trust.accept_root(&bytes).map_err(|e| {
                invalid(format!(
                    "root v{version} would not chain from {} (it needs {} of root v{}'s keys and {} of its own): {e}",
                    path.display(),
                    prev.threshold,
                    prev.version,
                    doc.threshold
                ))
            })?;
            Some(prev)
        }
    };
    let allowed: BTreeSet<PublicKey> = doc
        .keys
        .iter()
        .chain(previous_root.iter().flat_map(|p| p.keys.iter()))
        .copied()
        .collect();
    if let Some(stray) = signers.iter().find(|k| !allowed.contains(&k.public())) {
        return Err(invalid(format!(
            "--sign: key {} is not a key of this root{}; edges would ignore its signature",
            stray.public(),
            if previous_root.is_some() {
                " or the previous one"
            } else {
                ""
            }
        )));
    }
    write_new(out, &bytes)?;
    println!(
        "root v{version}: {} key(s), threshold {}, signed by {} of them{} -> {}",
        doc.keys.len(),
        doc.threshold,
        signed_by(&env, &doc.keys),
        previous_root
            .as_ref()
            .map(|p| format!(
                " and by {} of root v{}'s keys",
                signed_by(&env, &p.keys),
                p.version
            ))
            .unwrap_or_default(),
        out.display()
    );
    Ok(())
}

/// `NAME=PUB[@DURATION]`.
fn parse_signer(arg: &str, keyset_expires: Timestamp) -> Result<KeysetKey, Failure> {
    let bad = |why: &str| {
        invalid(format!(
            "--signer {arg:?}: {why} (expected NAME=PUB[@DURATION])"
        ))
    };
    let (name, rest) = arg.split_once('=').ok_or_else(|| bad("no '='"))?;
    let (key, expires) = match rest.rsplit_once('@') {
        Some((key, duration)) => {
            let d = parse_duration(duration).map_err(|e| bad(&e))?;
            (key, Timestamp::now().after(d))
        }
        None => (rest, keyset_expires),
    };
    Ok(KeysetKey {
        key: parse_public(key)?,
        name: name.to_owned(),
        expires,
    })
}

fn keyset(
    version: u64,
    expires: Duration,
    threshold: usize,
    signers: &[String],
    sign: &[PathBuf],
    root: Option<&Path>,
    out: &Path,
) -> Outcome {
    let created = Timestamp::now();
    let expires_at = created.after(expires);
    let keys = signers
        .iter()
        .map(|s| parse_signer(s, expires_at))
        .collect::<Result<Vec<_>, _>>()?;
    let doc = Keyset {
        version,
        created,
        expires: expires_at,
        threshold,
        keys,
    };
    doc.check().map_err(invalid)?;
    if let Some(k) = doc.keys.iter().find(|k| k.expires <= created) {
        return Err(invalid(format!("--signer {}: already expired", k.name)));
    }
    let root_keys = load_keys(sign)?;
    let env = sign_all(DocKind::Keyset, payload(&doc), &root_keys);
    let bytes = env.to_bytes();
    let checked = match root {
        Some(path) => {
            let (_, r) = read_root(path)?;
            let mut trust = Trust::pinned(r.clone())
                .map_err(|e| invalid(format!("{}: {e}", path.display())))?;
            trust.accept_keyset(&bytes, created).map_err(|e| {
                invalid(format!(
                    "keyset v{version} would not verify against root v{} ({} of its keys must sign): {e}",
                    r.version, r.threshold
                ))
            })?;
            format!(
                ", signed by {} of root v{}'s {} keys (threshold {})",
                signed_by(&env, &r.keys),
                r.version,
                r.keys.len(),
                r.threshold
            )
        }
        None => format!(", signed by {} root key(s)", root_keys.len()),
    };
    write_new(out, &bytes)?;
    println!(
        "keyset v{version}: {} signing key(s), threshold {}, expires {}{checked} -> {}",
        doc.keys.len(),
        doc.threshold,
        doc.expires,
        out.display()
    );
    for k in &doc.keys {
        println!("  {} {} expires {}", k.name, k.key, k.expires);
    }
    Ok(())
}
