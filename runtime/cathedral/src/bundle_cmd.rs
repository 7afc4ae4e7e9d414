//! `cathedral bundle`: sign, verify and publish bundles (build is in
//! `bundle_build`, push and activate in `admin_client`). A built bundle
//! directory holds `manifest.json` (the payload), `manifest.signed.json`
//! once signed, and `blobs/<blake3>`.

use std::collections::{BTreeMap, BTreeSet};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cathedral_bundle::{
    DocKind, Envelope, Head, Keyset, MANIFEST_FILE, MAX_SMALL_DOC, Manifest, ManifestLimits,
    OriginDir, PathLimits, PublicKey, Root, SIGNED_MANIFEST_FILE, Scope, Timestamp, Trust,
    from_slice_strict,
};
use clap::{ArgGroup, Args, Subcommand};

use crate::admin_client::{ActivateArgs, PushArgs};
use crate::bundle_build::{self, BuildArgs};
use crate::cmd::{
    Failure, Outcome, bytes, from_bundle, invalid, load_keys, parse_duration, parse_public, read,
    replace, runtime,
};
use crate::keys_cmd::{read_root, signed_by};

/// The runtime version manifests are checked against.
const RUNNING: &str = env!("CARGO_PKG_VERSION");

/// Copies larger than this show a progress bar (on a terminal).
const PROGRESS_ABOVE: u64 = 8 << 20;

#[derive(Debug, Subcommand)]
pub(crate) enum BundleCommand {
    /// Build an unsigned bundle from an edge config, its region overlays
    /// and every file they name (modules, static roots, CA files).
    ///
    /// Paths in the config are rewritten to the files' places in the
    /// bundle, and the result is validated for each --region as an edge
    /// will validate it; every problem is listed (exit 2). Writes
    /// DIR/manifest.json and DIR/blobs/.
    Build(BuildArgs),
    /// Sign a built bundle: adds a signature per --key to
    /// DIR/manifest.signed.json (created on first use), so signers can
    /// sign one after another.
    Sign {
        /// The bundle directory (from `bundle build`).
        #[arg(value_name = "DIR")]
        dir: PathBuf,
        /// A signing key file (listed in the keyset). Repeatable.
        #[arg(long = "key", value_name = "FILE.key", required = true)]
        keys: Vec<PathBuf>,
    },
    /// Verify a signed bundle directory or an origin as an edge would,
    /// printing each check (✓/✗); exits 2 at the first failure.
    ///
    /// --dir DIR --keyset KEYSET.json: the keyset against the root keys,
    /// the manifest against the keyset, every blob's blake3 and size, the
    /// config for each region.
    ///
    /// --origin DIR --environment E --region R: the root chain
    /// (root/2.json, …), keyset.json, heads/E/R.json, the manifest it
    /// names, every blob, the config.
    Verify(VerifyArgs),
    /// Publish a signed bundle to an origin directory: blobs the origin
    /// lacks, the manifest, then a freshly signed head per region.
    ///
    /// Heads go last, so an edge never sees a head before its manifest and
    /// blobs. Run it again to re-sign the heads before they expire (heads
    /// are short-lived on purpose: an edge refuses an expired head, so a
    /// frozen origin shows). The manifest must verify against the origin's
    /// keyset, and a head's version never goes down.
    Publish(PublishArgs),
    /// Ask edges to sync now: POST /bundles/notify on each admin API,
    /// concurrently. Exits 1 if any edge failed.
    Push(PushArgs),
    /// Switch an edge back to the bundle it ran before (an audited local
    /// override): POST /bundles/previous on its admin API. Prints the
    /// edge's answer ({"from":N,"to":M}); waits up to 2 minutes for it.
    ///
    /// The version switched from is quarantined on that edge: to move on,
    /// publish a higher version.
    Activate(ActivateArgs),
}

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("what").args(["dir", "origin"]).required(true)))]
pub(crate) struct VerifyArgs {
    /// A built and signed bundle directory.
    #[arg(long, value_name = "DIR", requires = "keyset")]
    dir: Option<PathBuf>,
    /// The keyset to check a bundle directory against.
    #[arg(long, value_name = "KEYSET.json", requires = "dir")]
    keyset: Option<PathBuf>,
    /// An origin directory.
    #[arg(long, value_name = "ORIGIN_DIR", requires_all = ["environment", "region"])]
    origin: Option<PathBuf>,
    /// The environment whose head to check (with --origin).
    #[arg(long, value_name = "ENV", requires = "origin")]
    environment: Option<String>,
    /// A region whose head to check (with --origin). Repeatable.
    #[arg(long = "region", value_name = "REGION", requires = "origin")]
    region: Vec<String>,
    /// A pinned root key (as in the bootstrap's root_keys): 64 hex digits
    /// or a .pub file. Repeatable.
    #[arg(long = "root-key", value_name = "PUB", required = true)]
    root_keys: Vec<String>,
    /// How many root keys must sign (the bootstrap's root_threshold).
    #[arg(long, value_name = "M", default_value_t = 1)]
    root_threshold: usize,
}

#[derive(Debug, Args)]
pub(crate) struct PublishArgs {
    /// The signed bundle directory.
    #[arg(value_name = "DIR")]
    dir: PathBuf,
    /// The origin directory (created if missing).
    #[arg(long, value_name = "ORIGIN_DIR")]
    origin: PathBuf,
    /// Signing key files that sign the heads (listed in the keyset).
    /// Repeatable.
    #[arg(long = "key", value_name = "FILE.key", required = true)]
    keys: Vec<PathBuf>,
    /// How long the heads are valid (humantime: 1d, 6h, …).
    #[arg(long, value_name = "DURATION", default_value = "1d", value_parser = parse_duration)]
    head_expires: Duration,
    /// Root documents to publish first (root/<n>.json), in order.
    /// Repeatable.
    #[arg(long = "root", value_name = "ROOT.json")]
    roots: Vec<PathBuf>,
    /// A keyset to publish first (keyset.json and keysets/<n>.json).
    #[arg(long, value_name = "KEYSET.json")]
    keyset: Option<PathBuf>,
}

pub(crate) fn run(command: BundleCommand) -> Outcome {
    match command {
        BundleCommand::Build(args) => bundle_build::run(args),
        BundleCommand::Sign { dir, keys } => sign(&dir, &keys),
        BundleCommand::Verify(args) => verify(&args),
        BundleCommand::Publish(args) => publish(&args),
        BundleCommand::Push(args) => crate::admin_client::push(args),
        BundleCommand::Activate(args) => crate::admin_client::activate(args),
    }
}

fn parse_manifest(path: &Path, payload: &[u8]) -> Result<Manifest, Failure> {
    let m: Manifest = from_slice_strict(DocKind::Manifest, payload)
        .map_err(|e| invalid(format!("{}: {e}", path.display())))?;
    m.check(&PathLimits::default(), u64::MAX)
        .map_err(|e| invalid(format!("{}: {e}", path.display())))?;
    Ok(m)
}

fn sign(dir: &Path, keys: &[PathBuf]) -> Outcome {
    let payload_path = dir.join(MANIFEST_FILE);
    let signed_path = dir.join(SIGNED_MANIFEST_FILE);
    let payload = read(&payload_path)?;
    let manifest = parse_manifest(&payload_path, &payload)?;
    let keys = load_keys(keys)?;
    let mut env = if signed_path.exists() {
        let bytes = read(&signed_path)?;
        let env = Envelope::parse(
            &bytes,
            DocKind::Manifest,
            ManifestLimits::default().max_manifest,
        )
        .map_err(|e| invalid(format!("{}: {e}", signed_path.display())))?;
        if env.payload != payload {
            return Err(invalid(format!(
                "{}: signs another payload than {MANIFEST_FILE}; remove it to start over",
                signed_path.display()
            )));
        }
        env
    } else {
        Envelope::new(DocKind::Manifest, payload)
    };
    for k in &keys {
        env.sign(k);
    }
    replace(&signed_path, &env.to_bytes())?;
    let signers: Vec<String> = env.signatures.iter().map(|s| s.key.short()).collect();
    println!(
        "manifest v{} signed; {} signature(s): {} -> {}",
        manifest.version,
        signers.len(),
        signers.join(", "),
        signed_path.display()
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// verify

/// Prints checks as they pass; the first failure ends the command.
struct Checks;

impl Checks {
    fn pass(&self, line: impl std::fmt::Display) {
        println!("✓ {line}");
    }

    fn fail(&self, line: impl std::fmt::Display) -> Failure {
        eprintln!("✗ {line}");
        Failure::Reported
    }
}

fn pinned_root(args: &VerifyArgs) -> Result<Root, Failure> {
    let keys = args
        .root_keys
        .iter()
        .map(|k| parse_public(k))
        .collect::<Result<Vec<_>, _>>()?;
    let root = Root {
        version: 1,
        threshold: args.root_threshold,
        keys,
        created: Timestamp::from_unix(0),
    };
    root.check()
        .map_err(|e| invalid(format!("--root-key/--root-threshold: {e}")))?;
    Ok(root)
}

fn verify(args: &VerifyArgs) -> Outcome {
    let pinned = pinned_root(args)?;
    match (&args.dir, &args.keyset, &args.origin, &args.environment) {
        (Some(dir), Some(keyset), _, _) => verify_dir(dir, keyset, pinned),
        (_, _, Some(origin), Some(env)) => verify_origin(origin, env, &args.region, pinned),
        _ => Err(invalid(
            "give --dir DIR --keyset FILE, or --origin DIR --environment E --region R",
        )),
    }
}

fn keyset_line(trust: &Trust, env_bytes: &[u8], ks: &Keyset) -> String {
    let root = trust.root();
    let signers = Envelope::parse(env_bytes, DocKind::Keyset, MAX_SMALL_DOC)
        .map_or(0, |env| signed_by(&env, &root.keys));
    format!(
        "keyset v{} signed by {signers} of {} root keys (threshold {}); {} signing key(s), {} needed, expires {}",
        ks.version,
        root.keys.len(),
        root.threshold,
        ks.keys.len(),
        ks.threshold,
        ks.expires
    )
}

fn keyset_signers(ks: &Keyset) -> Vec<PublicKey> {
    ks.keys.iter().map(|k| k.key).collect()
}

fn verify_dir(dir: &Path, keyset_path: &Path, pinned: Root) -> Outcome {
    let checks = Checks;
    let now = Timestamp::now();
    let mut trust = Trust::pinned(pinned).map_err(invalid)?;
    let ks_bytes = read(keyset_path)?;
    let ks = match trust.accept_keyset(&ks_bytes, now) {
        Ok(Some(ks)) => ks,
        Ok(None) => return Err(invalid("keyset: not accepted")),
        Err(e) => return Err(checks.fail(format!("{}: {e}", keyset_path.display()))),
    };
    checks.pass(keyset_line(&trust, &ks_bytes, &ks));

    let signed_path = dir.join(SIGNED_MANIFEST_FILE);
    let bytes = read(&signed_path)?;
    let manifest = verify_manifest(&checks, &trust, &ks, &signed_path, &bytes, None, now)?;
    check_blobs(&checks, &manifest, |hash| Ok(dir.join("blobs").join(hash)))?;
    check_config(&checks, &manifest, |hash| Ok(dir.join("blobs").join(hash)))
}

/// Verifies a manifest envelope for its first region (all of a manifest's
/// regions are in one document) or for `scope`.
fn verify_manifest(
    checks: &Checks,
    trust: &Trust,
    ks: &Keyset,
    path: &Path,
    bytes: &[u8],
    scope: Option<&Scope>,
    now: Timestamp,
) -> Result<Manifest, Failure> {
    let scope = match scope {
        Some(s) => s.clone(),
        None => {
            let env = Envelope::parse(
                bytes,
                DocKind::Manifest,
                ManifestLimits::default().max_manifest,
            )
            .map_err(|e| checks.fail(format!("{}: {e}", path.display())))?;
            let m: Manifest = from_slice_strict(DocKind::Manifest, &env.payload)
                .map_err(|e| checks.fail(format!("{}: {e}", path.display())))?;
            let region = m.regions.first().cloned().unwrap_or_default();
            Scope::new(m.environment, region)
        }
    };
    let verified = trust
        .verify_manifest(bytes, &scope, now, RUNNING, &ManifestLimits::default())
        .map_err(|e| checks.fail(format!("{}: {e}", path.display())))?;
    let m = verified.manifest;
    let signers = Envelope::parse(
        bytes,
        DocKind::Manifest,
        ManifestLimits::default().max_manifest,
    )
    .map_or(0, |env| signed_by(&env, &keyset_signers(ks)));
    checks.pass(format!(
        "manifest v{} for {}/{} signed by {signers} of {} keyset keys ({} needed), expires {}, needs runtime {} (this is {RUNNING})",
        m.version,
        m.environment,
        m.regions.join(","),
        ks.keys.len(),
        ks.threshold,
        m.expires,
        m.min_runtime
    ));
    Ok(m)
}

/// Hashes every blob (streaming) against the manifest.
fn check_blobs(
    checks: &Checks,
    manifest: &Manifest,
    blob: impl Fn(&str) -> Result<PathBuf, cathedral_bundle::Error>,
) -> Outcome {
    let mut done: BTreeSet<&str> = BTreeSet::new();
    for f in &manifest.files {
        if !done.insert(&f.blake3) {
            continue;
        }
        let path = blob(&f.blake3).map_err(|e| checks.fail(format!("{}: {e}", f.path)))?;
        let (hash, size) = match hash_file(&path) {
            Ok(x) => x,
            Err(e) => return Err(checks.fail(format!("{} ({}): {e}", f.path, path.display()))),
        };
        if size != f.size {
            return Err(checks.fail(format!(
                "{} ({}): {size} bytes, the manifest says {}",
                f.path,
                path.display(),
                f.size
            )));
        }
        if hash != f.blake3 {
            return Err(checks.fail(format!(
                "{} ({}): blake3 {hash}, the manifest says {}",
                f.path,
                path.display(),
                f.blake3
            )));
        }
    }
    checks.pass(format!(
        "{} files, {}, every blake3 matches",
        manifest.totals.files,
        bytes(manifest.totals.bytes)
    ));
    Ok(())
}

fn hash_file(path: &Path) -> std::io::Result<(String, u64)> {
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(buf.get(..n).unwrap_or_default());
        size += n as u64;
    }
    Ok((hasher.finalize().to_hex().to_string(), size))
}

/// Validates the bundled config for every region of the manifest.
fn check_config(
    checks: &Checks,
    manifest: &Manifest,
    blob: impl Fn(&str) -> Result<PathBuf, cathedral_bundle::Error>,
) -> Outcome {
    let text = |path: &str| {
        let entry = manifest.file(path)?;
        let bytes = std::fs::read(blob(&entry.blake3).ok()?).ok()?;
        Some((
            PathBuf::from(format!("bundle:{path}")),
            String::from_utf8(bytes).ok()?,
        ))
    };
    let errors = bundle_build::validate(manifest, &manifest.regions, text);
    if let Some(first) = errors.first() {
        return Err(checks.fail(format!(
            "config: {first}{}",
            if errors.len() > 1 {
                format!(" (and {} more)", errors.len() - 1)
            } else {
                String::new()
            }
        )));
    }
    checks.pass(format!("config valid for {}", manifest.regions.join(", ")));
    Ok(())
}

fn verify_origin(origin: &Path, environment: &str, regions: &[String], pinned: Root) -> Outcome {
    let checks = Checks;
    let now = Timestamp::now();
    let dir = OriginDir::existing(origin).map_err(invalid)?;

    // Root v1: edges use the pinned root; the origin's copy must be it.
    let root1 = dir.root_path(1);
    if root1.exists() {
        let (bytes, doc) = read_root(&root1).map_err(|f| match f {
            Failure::Invalid(m) | Failure::Runtime(m) => checks.fail(m),
            Failure::Reported => Failure::Reported,
        })?;
        let same = doc.threshold == pinned.threshold && {
            let mut a = doc.keys.clone();
            let mut b = pinned.keys.clone();
            a.sort();
            b.sort();
            a == b
        };
        if !same {
            return Err(checks.fail(format!(
                "{}: its keys or threshold differ from the pinned root",
                root1.display()
            )));
        }
        let env = Envelope::parse(&bytes, DocKind::Root, MAX_SMALL_DOC).map_err(invalid)?;
        let n = signed_by(&env, &pinned.keys);
        if n < pinned.threshold {
            return Err(checks.fail(format!(
                "{}: signed by {n} of the pinned keys, {} needed",
                root1.display(),
                pinned.threshold
            )));
        }
        checks.pass(format!(
            "root v1 is the pinned root ({} keys, threshold {}), signed by {n} of them",
            pinned.keys.len(),
            pinned.threshold
        ));
    } else {
        checks.pass(format!(
            "root v1 pinned ({} keys, threshold {}); the origin has no root/1.json",
            pinned.keys.len(),
            pinned.threshold
        ));
    }

    let mut trust = Trust::pinned(pinned).map_err(invalid)?;
    for version in 2.. {
        let path = dir.root_path(version);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
            Err(e) => return Err(runtime(format!("{}: {e}", path.display()))),
        };
        let previous = trust.root().clone();
        let next = trust
            .accept_root(&bytes)
            .map_err(|e| checks.fail(format!("{}: {e}", path.display())))?;
        let env = Envelope::parse(&bytes, DocKind::Root, MAX_SMALL_DOC).map_err(invalid)?;
        checks.pass(format!(
            "root v{version} signed by {} of root v{}'s {} keys and {} of its own {} (threshold {})",
            signed_by(&env, &previous.keys),
            previous.version,
            previous.keys.len(),
            signed_by(&env, &next.keys),
            next.keys.len(),
            next.threshold
        ));
    }

    let ks_path = dir.keyset_path();
    let ks_bytes =
        std::fs::read(&ks_path).map_err(|e| checks.fail(format!("{}: {e}", ks_path.display())))?;
    let ks = match trust.accept_keyset(&ks_bytes, now) {
        Ok(Some(ks)) => ks,
        Ok(None) => return Err(invalid("keyset: not accepted")),
        Err(e) => return Err(checks.fail(format!("{}: {e}", ks_path.display()))),
    };
    checks.pass(keyset_line(&trust, &ks_bytes, &ks));

    let mut checked: BTreeSet<String> = BTreeSet::new();
    for region in regions {
        let scope = Scope::new(environment, region);
        let head_path = dir
            .head_path(&scope)
            .map_err(|e| invalid(format!("--environment/--region: {e}")))?;
        let head_bytes = std::fs::read(&head_path)
            .map_err(|e| checks.fail(format!("{}: {e}", head_path.display())))?;
        let head = trust
            .verify_head(&head_bytes, &scope, now)
            .map_err(|e| checks.fail(format!("{}: {e}", head_path.display())))?;
        let head_signers = Envelope::parse(&head_bytes, DocKind::Head, MAX_SMALL_DOC)
            .map_or(0, |env| signed_by(&env, &keyset_signers(&ks)));
        checks.pass(format!(
            "head {scope}: version {}, manifest {}, signed by {head_signers} of {} keyset keys ({} needed), expires {}",
            head.version,
            &head.manifest[..16.min(head.manifest.len())],
            ks.keys.len(),
            ks.threshold,
            head.expires
        ));

        let m_path = dir.manifest_path(&head.manifest).map_err(invalid)?;
        let m_bytes = std::fs::read(&m_path)
            .map_err(|e| checks.fail(format!("{}: {e}", m_path.display())))?;
        let actual = blake3::hash(&m_bytes).to_hex().to_string();
        if m_bytes.len() as u64 != head.manifest_size || actual != head.manifest {
            return Err(checks.fail(format!(
                "{}: {} bytes with blake3 {actual}; the head says {} bytes with blake3 {}",
                m_path.display(),
                m_bytes.len(),
                head.manifest_size,
                head.manifest
            )));
        }
        checks.pass(format!(
            "manifest {}: blake3 and size ({}) match the head",
            m_path.display(),
            bytes(head.manifest_size)
        ));
        let manifest = verify_manifest(&checks, &trust, &ks, &m_path, &m_bytes, Some(&scope), now)?;
        if manifest.version != head.version {
            return Err(checks.fail(format!(
                "{}: version {}, the head says {}",
                m_path.display(),
                manifest.version,
                head.version
            )));
        }
        if checked.insert(head.manifest.clone()) {
            check_blobs(&checks, &manifest, |h| dir.blob_path(h))?;
            check_config(&checks, &manifest, |h| dir.blob_path(h))?;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// publish

/// The root chain as an edge pinned to the origin's own root/1.json would
/// walk it.
fn origin_roots(dir: &OriginDir) -> Result<Trust, Failure> {
    let root1 = dir.root_path(1);
    if !root1.exists() {
        return Err(invalid(format!(
            "{}: missing; publish the root first (--root root-1.json)",
            root1.display()
        )));
    }
    let (_, anchor) = read_root(&root1)?;
    let mut trust =
        Trust::pinned(anchor).map_err(|e| invalid(format!("{}: {e}", root1.display())))?;
    for version in 2.. {
        let path = dir.root_path(version);
        let Ok(bytes) = std::fs::read(&path) else {
            break;
        };
        trust
            .accept_root(&bytes)
            .map_err(|e| invalid(format!("{}: {e}", path.display())))?;
    }
    Ok(trust)
}

/// [`origin_roots`] and then keyset.json.
fn origin_trust(dir: &OriginDir, now: Timestamp) -> Result<Trust, Failure> {
    let mut trust = origin_roots(dir)?;
    let ks_path = dir.keyset_path();
    let ks_bytes = std::fs::read(&ks_path).map_err(|e| {
        invalid(format!(
            "{}: {e}; publish a keyset first (--keyset keyset.json)",
            ks_path.display()
        ))
    })?;
    trust
        .accept_keyset(&ks_bytes, now)
        .map_err(|e| invalid(format!("{}: {e}", ks_path.display())))?;
    Ok(trust)
}

/// Publishes root documents and a keyset, each only if it verifies
/// against the origin's chain as it stands (so nothing an edge would
/// refuse is ever put in front of edges).
fn publish_trust(
    origin: &OriginDir,
    roots: &[PathBuf],
    keyset: Option<&Path>,
    now: Timestamp,
) -> Outcome {
    let mut docs = roots
        .iter()
        .map(|p| read_root(p).map(|(bytes, root)| (p, bytes, root)))
        .collect::<Result<Vec<_>, _>>()?;
    docs.sort_by_key(|(_, _, root)| root.version);
    for (path, bytes, root) in docs {
        let at = |e: cathedral_bundle::Error| invalid(format!("{}: {e}", path.display()));
        let published = origin.root_path(root.version).exists();
        if root.version == 1 {
            let env = Envelope::parse(&bytes, DocKind::Root, MAX_SMALL_DOC).map_err(at)?;
            let n = signed_by(&env, &root.keys);
            if n < root.threshold {
                return Err(invalid(format!(
                    "{}: root v1 is signed by {n} of its keys, {} needed",
                    path.display(),
                    root.threshold
                )));
            }
        } else if !published {
            origin_roots(origin)?.accept_root(&bytes).map_err(at)?;
        }
        origin.put_root(root.version, &bytes).map_err(at)?;
        println!(
            "root v{} -> {}",
            root.version,
            origin.root_path(root.version).display()
        );
    }
    if let Some(path) = keyset {
        let at = |e: cathedral_bundle::Error| invalid(format!("{}: {e}", path.display()));
        let bytes = read(path)?;
        let ks: Keyset = Envelope::parse(&bytes, DocKind::Keyset, MAX_SMALL_DOC)
            .and_then(|e| from_slice_strict(DocKind::Keyset, &e.payload))
            .map_err(at)?;
        origin_roots(origin)?
            .accept_keyset(&bytes, now)
            .map_err(at)?;
        origin.put_keyset(ks.version, &bytes).map_err(at)?;
        println!(
            "keyset v{} -> {}",
            ks.version,
            origin.keyset_path().display()
        );
    }
    Ok(())
}

/// The head currently published for `scope`, read without verification.
fn current_head(dir: &OriginDir, scope: &Scope) -> Option<Head> {
    let bytes = std::fs::read(dir.head_path(scope).ok()?).ok()?;
    let env = Envelope::parse(&bytes, DocKind::Head, MAX_SMALL_DOC).ok()?;
    from_slice_strict(DocKind::Head, &env.payload).ok()
}

fn publish(args: &PublishArgs) -> Outcome {
    let now = Timestamp::now();
    let signed_path = args.dir.join(SIGNED_MANIFEST_FILE);
    let envelope = read(&signed_path)?;
    let env = Envelope::parse(
        &envelope,
        DocKind::Manifest,
        ManifestLimits::default().max_manifest,
    )
    .map_err(|e| invalid(format!("{}: {e}", signed_path.display())))?;
    let manifest = parse_manifest(&signed_path, &env.payload)?;
    let keys = load_keys(&args.keys)?;
    let origin = OriginDir::open(&args.origin).map_err(from_bundle)?;

    publish_trust(&origin, &args.roots, args.keyset.as_deref(), now)?;

    // Everything an edge will check, before anything of the bundle lands.
    let trust = origin_trust(&origin, now)?;
    let hash = blake3::hash(&envelope).to_hex().to_string();
    let mut heads = Vec::new();
    for region in &manifest.regions {
        let scope = Scope::new(&manifest.environment, region);
        trust
            .verify_manifest(&envelope, &scope, now, RUNNING, &ManifestLimits::default())
            .map_err(|e| {
                invalid(format!(
                    "{}: an edge of {scope} would refuse it: {e}",
                    signed_path.display()
                ))
            })?;
        if let Some(current) = current_head(&origin, &scope) {
            if current.version > manifest.version {
                return Err(invalid(format!(
                    "{scope} is at version {}; publish a higher version than {} (a rollback is a new version with old content)",
                    current.version, manifest.version
                )));
            }
            if current.version == manifest.version && current.manifest != hash {
                return Err(invalid(format!(
                    "{scope} already has another manifest at version {}; edges would not take it (publish version {})",
                    current.version,
                    current.version + 1
                )));
            }
        }
        let head = Head {
            environment: manifest.environment.clone(),
            region: region.clone(),
            version: manifest.version,
            manifest: hash.clone(),
            manifest_size: envelope.len() as u64,
            issued: now,
            expires: now.after(args.head_expires),
        };
        let mut head_env = Envelope::new(
            DocKind::Head,
            serde_json::to_vec(&head).expect("heads always serialize"),
        );
        for k in &keys {
            head_env.sign(k);
        }
        let head_bytes = head_env.to_bytes();
        trust
            .verify_head(&head_bytes, &scope, now)
            .map_err(|e| invalid(format!("--key: the head for {scope} would be refused: {e}")))?;
        heads.push((scope, head_bytes, head.expires));
    }

    // Blobs, then the manifest, then the heads.
    let mut unique: BTreeMap<&str, u64> = BTreeMap::new();
    for f in &manifest.files {
        unique.insert(&f.blake3, f.size);
    }
    let (present, missing): (Vec<_>, Vec<_>) = unique
        .iter()
        .partition(|(h, size)| origin.has_blob(h, **size));
    let to_copy: u64 = missing.iter().map(|(_, s)| **s).sum();
    let bar = (to_copy > PROGRESS_ABOVE && std::io::stderr().is_terminal()).then(|| {
        let bar = indicatif::ProgressBar::new(to_copy);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{msg} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar.set_message("copying blobs");
        bar
    });
    for (hash, size) in &missing {
        let src = args.dir.join("blobs").join(hash);
        let result = origin.put_blob_file(hash, **size, &src, &mut |n| {
            if let Some(b) = &bar {
                b.inc(n);
            }
        });
        if let Err(e) = result {
            if let Some(b) = &bar {
                b.abandon();
            }
            return Err(from_bundle(e));
        }
    }
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    let put = origin.put_manifest(&envelope).map_err(from_bundle)?;
    debug_assert_eq!(put, hash);
    for (scope, bytes, _) in &heads {
        origin.put_head(scope, bytes).map_err(from_bundle)?;
    }
    println!(
        "published bundle v{} to {}: copied {} blob(s), {}; {} already there",
        manifest.version,
        args.origin.display(),
        missing.len(),
        bytes(to_copy),
        present.len()
    );
    println!(
        "  manifest manifests/{hash}.json ({})",
        bytes(envelope.len() as u64)
    );
    for (scope, _, expires) in &heads {
        println!(
            "  head heads/{scope}.json, version {}, expires {expires}",
            manifest.version
        );
    }
    Ok(())
}
