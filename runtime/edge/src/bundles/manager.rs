//! Bundle mode: the sync loop (roots → keyset → head → manifest → blobs →
//! preflight → activate → watch), reverts, and what the node starts from.
//!
//! One [`BundleManager`] per node. Syncs are serialized by its state lock;
//! notifications that arrive during a sync coalesce into one more sync.
//! Every refusal leaves the active bundle untouched and is logged, counted
//! and (once per distinct refusal) audited.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use cathedral_bundle::{
    AuditLog, Current, DocKind, Installed, MAX_SMALL_DOC, Manifest, ManifestLimits, PathLimits,
    PublicKey, Root, Scope, Store, Timestamp, Trust,
};
use cathedral_config::{Bootstrap, BundleSettings, MemoryCap, Source};
use serde_json::{Value, json};
use tokio::sync::Notify;
use tracing::{error, info, warn};

use super::fetch::{FetchError, Fetched, Fetcher};
use super::tree::BundleTree;
use crate::files::Loaded;
use crate::node::{ConfigSource, FAILING_AFTER, Shared};

/// The runtime version bundles' `min_runtime` is compared with.
pub const RUNTIME_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Root versions walked in one sync at most.
const MAX_ROOT_STEPS: usize = 64;

/// Why a sync did not activate anything.
#[derive(Debug)]
enum SyncError {
    /// A document or file was refused: the origin served something this
    /// node must not use.
    Refused {
        reason: &'static str,
        message: String,
        version: Option<u64>,
    },
    /// The origin could not be reached or answered nonsense at the
    /// transport level; nothing was judged.
    Unavailable(String),
    /// The node's own disk failed.
    Local(String),
}

impl SyncError {
    fn refused(e: cathedral_bundle::Error, version: Option<u64>) -> Self {
        SyncError::Refused {
            reason: e.reason(),
            message: e.to_string(),
            version,
        }
    }
}

impl From<FetchError> for SyncError {
    fn from(e: FetchError) -> Self {
        match e {
            FetchError::Store(e @ cathedral_bundle::Error::Io { .. }) => {
                SyncError::Local(e.to_string())
            }
            FetchError::Store(e) => SyncError::refused(e, None),
            FetchError::TooLarge { .. } => SyncError::Refused {
                reason: "oversize",
                message: e.to_string(),
                version: None,
            },
            other => SyncError::Unavailable(other.to_string()),
        }
    }
}

/// What one sync did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncOutcome {
    Activated {
        version: u64,
    },
    /// Activated, then reverted because the node failed its health check
    /// within `health_grace`; `version` is quarantined on this node.
    RolledBack {
        version: u64,
        to: u64,
    },
    /// Nothing newer than the high-water mark.
    Unchanged,
    Refused {
        reason: &'static str,
    },
    /// The origin was out of reach, or the local disk failed.
    Failed,
}

impl SyncOutcome {
    fn label(&self) -> &'static str {
        match self {
            SyncOutcome::Activated { .. } => "activated",
            SyncOutcome::RolledBack { .. } => "rolled-back",
            SyncOutcome::Unchanged => "unchanged",
            SyncOutcome::Refused { .. } => "refused",
            SyncOutcome::Failed => "failed",
        }
    }
}

/// The bundle serving now (what reloads re-activate).
#[derive(Debug, Clone)]
struct ActiveBundle {
    manifest: Arc<Manifest>,
    installed: Installed,
}

/// Mutable state, behind the sync lock.
#[derive(Debug)]
struct State {
    trust: Trust,
    current: Current,
    /// A head (version, manifest) whose bundle failed preflight, and the
    /// refusal's reason (`config` or `preflight`): not retried until the
    /// head changes.
    failed_preflight: Option<(u64, String, &'static str)>,
}

/// What `/readyz` and `GET /bundles` report.
#[derive(Debug, Clone, Default)]
struct Report {
    last_sync: Option<(SystemTime, &'static str, Option<String>)>,
    last_refusal: Option<(SystemTime, &'static str, String)>,
    high_water: u64,
    quarantined: Option<u64>,
    root_version: u64,
    keyset_version: Option<u64>,
    previous: Vec<u64>,
}

#[derive(Debug)]
pub struct BundleManager {
    settings: BundleSettings,
    scope: Scope,
    memory_cap: MemoryCap,
    limits: ManifestLimits,
    store: Arc<Store>,
    fetcher: Fetcher,
    state: tokio::sync::Mutex<State>,
    active: Mutex<Option<ActiveBundle>>,
    audit: Arc<Mutex<Option<AuditLog>>>,
    /// The last refusal audited, so a refusal repeated every poll is
    /// audited once.
    last_audited_refusal: Mutex<Option<String>>,
    report: Mutex<Report>,
    wake: Notify,
}

impl BundleManager {
    /// Opens the state directory, the audit log and the trust state of a
    /// bootstrap with `[bundles]`.
    pub fn open(bootstrap: &Bootstrap) -> Result<Arc<Self>, String> {
        let settings = bootstrap
            .bundles
            .clone()
            .ok_or("the bootstrap has no [bundles] table")?;
        let keys = settings
            .root_keys
            .iter()
            .map(|k| k.parse::<PublicKey>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("bundles.root_keys: {e}"))?;
        let anchor = Root {
            version: 1,
            threshold: settings.root_threshold,
            keys,
            created: Timestamp::from_unix(0),
        };
        let store = Store::open(&settings.state_dir).map_err(|e| e.to_string())?;
        let audit = open_audit(&store.audit_path());
        let scope = Scope::new(&settings.environment, &bootstrap.region);
        let (mut trust, repinned) = match store.load_trust().map_err(|e| e.to_string())? {
            Some(state) => Trust::resume(state, anchor),
            None => Trust::pinned(anchor).map(|t| (t, false)),
        }
        .map_err(|e| format!("bundles.root_keys: {e}"))?;
        let current = store.current().map_err(|e| e.to_string())?;
        // current.json is written before the high-water mark is raised; a
        // crash between the two is repaired here.
        if let Some(active) = &current.active {
            trust.raise(&scope, active.version);
        }
        store.save_trust(trust.state()).map_err(|e| e.to_string())?;
        let fetcher = Fetcher::new(settings.origins.clone(), settings.fetch_timeout)?;
        let limits = ManifestLimits {
            max_manifest: settings.max_manifest_bytes,
            max_bundle: settings.max_bundle_bytes,
            paths: PathLimits::default(),
        };
        let manager = Arc::new(Self {
            memory_cap: MemoryCap {
                bytes: bootstrap.wasm.max_memory_bytes,
                label: String::from("the bootstrap's wasm.max_memory"),
            },
            scope,
            limits,
            store: Arc::new(store),
            fetcher,
            state: tokio::sync::Mutex::new(State {
                trust,
                current,
                failed_preflight: None,
            }),
            active: Mutex::new(None),
            audit: Arc::new(Mutex::new(audit)),
            last_audited_refusal: Mutex::new(None),
            report: Mutex::new(Report::default()),
            wake: Notify::new(),
            settings,
        });
        if repinned {
            warn!(
                "the pinned root keys changed; the root chain and keyset start again from them (version high-water marks kept)"
            );
            manager.audit_now("root-repinned", json!({}));
        }
        Ok(manager)
    }

    pub fn scope(&self) -> &Scope {
        &self.scope
    }

    pub fn settings(&self) -> &BundleSettings {
        &self.settings
    }

    /// The bundle to start serving: the active one from the state
    /// directory, re-verified (signatures against the trust held, every
    /// blob's hash). If it fails, the previous ones are tried in order.
    /// `None` when there is nothing good on disk: the node starts with no
    /// routes and waits for its first bundle. Blocking.
    pub fn load_initial(&self) -> Option<Loaded> {
        let mut state = self.state.blocking_lock();
        let kept: Vec<Installed> = state.current.kept().cloned().collect();
        for (i, installed) in kept.iter().enumerate() {
            match self.prepare_stored(&state.trust, installed, true) {
                Ok((manifest, loaded)) => {
                    if i > 0 {
                        // Not quarantined: the newer bundle failed on this
                        // disk, not in service; the next sync fetches it
                        // again.
                        let next = Current {
                            active: Some(installed.clone()),
                            previous: kept.get(i + 1..).unwrap_or_default().to_vec(),
                            quarantined: state.current.quarantined,
                        };
                        if let Err(e) = self.store.set_current(&next) {
                            error!(error = %e, "cannot record the fallback bundle");
                        }
                        state.current = next;
                        self.audit_now(
                            "rolled-back",
                            json!({"to": installed.version, "trigger": "start",
                                   "reason": "the active bundle failed verification at start"}),
                        );
                    }
                    info!(version = installed.version, scope = %self.scope, "serving the stored bundle");
                    self.set_active(manifest, installed.clone());
                    self.audit_now("started", json!({"version": installed.version}));
                    self.update_report(&state);
                    return Some(loaded);
                }
                Err(e) => {
                    error!(version = installed.version, error = %e, "a stored bundle failed verification");
                    self.audit_now(
                        "refused",
                        json!({"stage": "start", "version": installed.version, "error": e}),
                    );
                }
            }
        }
        warn!(scope = %self.scope, "no verified bundle on disk; serving nothing until the first sync");
        self.audit_now("started", json!({"version": null}));
        self.update_report(&state);
        None
    }

    /// Reads a kept manifest back from disk and prepares its activation.
    /// With `verify_blobs`, every file's hash is checked too.
    fn prepare_stored(
        &self,
        trust: &Trust,
        installed: &Installed,
        verify_blobs: bool,
    ) -> Result<(Arc<Manifest>, Loaded), String> {
        let bytes = self
            .store
            .read_manifest(&installed.manifest)
            .map_err(|e| e.to_string())?;
        let manifest = trust
            .reverify_stored(&bytes, &self.limits)
            .map_err(|e| e.to_string())?;
        if manifest.version != installed.version {
            return Err(format!(
                "manifest {} is version {}, current.json says {}",
                installed.manifest, manifest.version, installed.version
            ));
        }
        for f in &manifest.files {
            let ok = if verify_blobs {
                self.store.verify_blob(&f.blake3, f.size).map_err(|e| {
                    // A blob that fails its hash is wrong for every bundle
                    // naming it: remove it, so that a later sync fetches it
                    // again instead of trusting it by its size.
                    if matches!(
                        e,
                        cathedral_bundle::Error::HashMismatch { .. }
                            | cathedral_bundle::Error::SizeMismatch { .. }
                    ) && let Ok(path) = self.store.blob_path(&f.blake3)
                    {
                        let _ = std::fs::remove_file(path);
                    }
                    e.to_string()
                })
            } else if self.store.has_blob(&f.blake3, f.size) {
                Ok(())
            } else {
                Err(format!("blob {} of {} is missing", f.blake3, f.path))
            };
            ok.map_err(|e| format!("{}: {e}", f.path))?;
        }
        let manifest = Arc::new(manifest);
        let loaded = self.load_bundle(&manifest)?;
        Ok((manifest, loaded))
    }

    /// Validates the bundle's edge config (with this node's region
    /// overlay, when the bundle has one) against the bundle's own file
    /// list. Blocking.
    fn load_bundle(&self, manifest: &Arc<Manifest>) -> Result<Loaded, String> {
        let tree = BundleTree::new(manifest.clone(), self.store.clone());
        let read_text = |path: &str| -> Result<String, String> {
            let entry = manifest
                .file(path)
                .ok_or_else(|| format!("{path} is not in the bundle"))?;
            let bytes = self
                .store
                .read_blob(&entry.blake3, entry.size)
                .map_err(|e| e.to_string())?;
            String::from_utf8(bytes).map_err(|_| format!("{path} is not UTF-8"))
        };
        let edge_path = manifest.config.edge.as_str();
        let edge_text = read_text(edge_path)?;
        let edge_name = PathBuf::from(format!("bundle:{edge_path}"));
        let base = virtual_dir(edge_path);
        let overlay = manifest
            .region_overlay(&self.scope.region)
            .map(|e| e.path.clone());
        let overlay_text = overlay.as_deref().map(read_text).transpose()?;
        let overlay_name = overlay
            .as_deref()
            .map(|p| PathBuf::from(format!("bundle:{p}")));
        let overlay_base = overlay.as_deref().map(virtual_dir);
        let overlay_source = match (&overlay_name, &overlay_text, &overlay_base) {
            (Some(name), Some(text), Some(base)) => Some(Source {
                name,
                text,
                base_dir: base,
            }),
            _ => None,
        };
        let config = cathedral_config::parse_edge_in(
            Source {
                name: &edge_name,
                text: &edge_text,
                base_dir: &base,
            },
            overlay_source,
            &self.scope.region,
            Some(&self.memory_cap),
            &tree,
        )
        .map_err(|e| e.to_string())?;
        Ok(Loaded {
            config,
            files: Arc::new(tree),
            label: Some(format!("bundle {} v{}", self.scope, manifest.version)),
        })
    }

    fn set_active(&self, manifest: Arc<Manifest>, installed: Installed) {
        if let Ok(mut a) = self.active.lock() {
            *a = Some(ActiveBundle {
                manifest,
                installed,
            });
        }
    }

    /// The active bundle's version, if any.
    pub fn active_version(&self) -> Option<u64> {
        self.active
            .lock()
            .ok()
            .and_then(|a| a.as_ref().map(|a| a.installed.version))
    }

    /// Asks the sync loop to sync now; calls during a sync coalesce into
    /// one more sync.
    pub fn notify(&self) {
        self.wake.notify_one();
    }

    /// The sync loop: at start, then every `poll_interval` (±10%) or when
    /// notified.
    pub async fn run(self: Arc<Self>, shared: Arc<Shared>) {
        loop {
            self.sync(&shared).await;
            let wait = jittered(self.settings.poll_interval);
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = self.wake.notified() => {}
            }
        }
    }

    /// One sync, start to end: fetch, verify, stage and activate under the
    /// sync lock, then (lock released, so operators and notifications are
    /// not held up) watch the node's health for `health_grace`.
    pub async fn sync(self: &Arc<Self>, shared: &Arc<Shared>) -> SyncOutcome {
        let mut outcome = self.sync_once(shared).await;
        if let SyncOutcome::Activated { version } = outcome
            && !self.settings.health_grace.is_zero()
        {
            tokio::time::sleep(self.settings.health_grace).await;
            if let Some(why) = unhealthy(shared) {
                let mut state = self.state.lock().await;
                // Only the bundle this sync activated is judged: a newer
                // one may have come in meanwhile.
                if state.current.active.as_ref().map(|i| i.version) == Some(version) {
                    error!(version, reason = %why, "the new bundle failed its health check; reverting");
                    match self.revert(&mut state, shared, "health", &why).await {
                        Ok((_, to)) => outcome = SyncOutcome::RolledBack { version, to },
                        Err(e) => error!(error = %e, "revert failed; still serving the new bundle"),
                    }
                    self.note_sync(outcome.label(), Some(why));
                    self.update_report(&state);
                }
            }
        }
        outcome
    }

    async fn sync_once(self: &Arc<Self>, shared: &Arc<Shared>) -> SyncOutcome {
        let mut state = self.state.lock().await;
        let result = self.sync_locked(&mut state, shared).await;
        let outcome = match result {
            Ok(outcome) => outcome,
            Err(SyncError::Refused {
                reason,
                message,
                version,
            }) => {
                self.refuse(shared, reason, &message, version).await;
                SyncOutcome::Refused { reason }
            }
            Err(SyncError::Unavailable(message)) => {
                warn!(error = %message, "bundle sync: origin unavailable; still serving the active bundle");
                self.note_sync("failed", Some(message));
                SyncOutcome::Failed
            }
            Err(SyncError::Local(message)) => {
                error!(error = %message, "bundle sync: local storage failed; still serving the active bundle");
                self.note_sync("failed", Some(message));
                SyncOutcome::Failed
            }
        };
        if !matches!(outcome, SyncOutcome::Failed | SyncOutcome::Refused { .. }) {
            self.note_sync(outcome.label(), None);
        }
        shared
            .metrics
            .bundles
            .syncs
            .get_or_create(&crate::metrics::ResultLabel {
                result: outcome.label(),
            })
            .inc();
        self.update_report(&state);
        outcome
    }

    async fn sync_locked(
        self: &Arc<Self>,
        st: &mut State,
        shared: &Arc<Shared>,
    ) -> Result<SyncOutcome, SyncError> {
        let local = |e: cathedral_bundle::Error| SyncError::Local(e.to_string());
        // 1. Roots: follow the chain as far as the origin has it.
        for _ in 0..MAX_ROOT_STEPS {
            let next = st.trust.root().version + 1;
            let Fetched::Body(bytes) = self
                .fetcher
                .document(&format!("root/{next}.json"), MAX_SMALL_DOC)
                .await?
            else {
                break;
            };
            let root = st
                .trust
                .accept_root(&bytes)
                .map_err(|e| SyncError::refused(e, Some(next)))?;
            self.store.put_root(root.version, &bytes).map_err(local)?;
            self.store.save_trust(st.trust.state()).map_err(local)?;
            info!(
                version = root.version,
                keys = root.keys.len(),
                threshold = root.threshold,
                "new root of trust"
            );
            self.audit(
                "root-updated",
                json!({"version": root.version, "keys": root.keys.len(), "threshold": root.threshold}),
            )
            .await;
        }

        // 2. Keyset.
        let now = Timestamp::now();
        match self.fetcher.document("keyset.json", MAX_SMALL_DOC).await? {
            Fetched::NotFound => {
                return Err(SyncError::Unavailable(
                    "the origin has no keyset.json".into(),
                ));
            }
            Fetched::Body(bytes) => {
                if let Some(ks) = st
                    .trust
                    .accept_keyset(&bytes, now)
                    .map_err(|e| SyncError::refused(e, None))?
                {
                    self.store.put_keyset(&bytes).map_err(local)?;
                    self.store.save_trust(st.trust.state()).map_err(local)?;
                    let names: Vec<&str> = ks.keys.iter().map(|k| k.name.as_str()).collect();
                    info!(version = ks.version, keys = ?names, "new signing keyset");
                    self.audit(
                        "keyset-updated",
                        json!({"version": ks.version, "keys": names, "threshold": ks.threshold,
                               "expires": ks.expires.to_string()}),
                    )
                    .await;
                }
            }
        }

        // 3. Head.
        let head_path = format!(
            "heads/{}/{}.json",
            self.scope.environment, self.scope.region
        );
        let Fetched::Body(bytes) = self.fetcher.document(&head_path, MAX_SMALL_DOC).await? else {
            return Err(SyncError::Unavailable(format!(
                "the origin has no {head_path}"
            )));
        };
        let head = st
            .trust
            .verify_head(&bytes, &self.scope, now)
            .map_err(|e| SyncError::refused(e, None))?;
        let version = head.version;
        let fresh = st
            .trust
            .freshness(DocKind::Head, &self.scope, version)
            .map_err(|e| SyncError::refused(e, Some(version)))?;
        // Equal to the high-water mark: nothing to do when it is the active
        // version or one this node reverted from (quarantined). Otherwise
        // the stored copy failed verification at start (a disk fault, not a
        // bad bundle): fetch it again rather than serve an older one, or
        // nothing.
        let active = st.current.active.as_ref().map(|i| i.version);
        if !fresh && (active == Some(version) || st.current.quarantined == Some(version)) {
            return Ok(SyncOutcome::Unchanged);
        }
        if let Some((v, manifest, reason)) = &st.failed_preflight
            && (*v, manifest) == (version, &head.manifest)
        {
            self.note_sync(
                "refused",
                Some(format!(
                    "version {version} was refused ({reason}) before; not retried until the head changes"
                )),
            );
            return Ok(SyncOutcome::Refused { reason });
        }

        // 4. Manifest.
        if head.manifest_size > self.limits.max_manifest {
            return Err(SyncError::Refused {
                reason: "oversize",
                message: format!(
                    "manifest of {} bytes, more than bundles.max_manifest ({})",
                    head.manifest_size, self.limits.max_manifest
                ),
                version: Some(version),
            });
        }
        let manifest_path = format!("manifests/{}.json", head.manifest);
        let Fetched::Body(bytes) = self
            .fetcher
            .document(&manifest_path, head.manifest_size)
            .await?
        else {
            return Err(SyncError::Unavailable(format!(
                "the origin has no {manifest_path}"
            )));
        };
        let actual = blake3::hash(&bytes).to_hex().to_string();
        if actual != head.manifest {
            return Err(SyncError::refused(
                cathedral_bundle::Error::HashMismatch {
                    what: manifest_path,
                    expected: head.manifest.clone(),
                    actual,
                },
                Some(version),
            ));
        }
        let verified = st
            .trust
            .verify_manifest(&bytes, &self.scope, now, RUNTIME_VERSION, &self.limits)
            .map_err(|e| SyncError::refused(e, Some(version)))?;
        if verified.manifest.version != version {
            return Err(SyncError::Refused {
                reason: "malformed",
                message: format!(
                    "manifest is version {}, the head says {version}",
                    verified.manifest.version
                ),
                version: Some(version),
            });
        }

        // 5. Blobs the node lacks.
        let mut fetched: u64 = 0;
        let mut seen = HashSet::new();
        for f in &verified.manifest.files {
            if !seen.insert(f.blake3.as_str()) || self.store.has_blob(&f.blake3, f.size) {
                continue;
            }
            let writer = self.store.stage_blob(&f.blake3, f.size).map_err(local)?;
            let n = self
                .fetcher
                .blob(&f.blake3, f.size, writer)
                .await
                .map_err(|e| match SyncError::from(e) {
                    SyncError::Refused {
                        reason, message, ..
                    } => SyncError::Refused {
                        reason,
                        message: format!("{}: {message}", f.path),
                        version: Some(version),
                    },
                    other => other,
                })?;
            fetched += n;
            shared.metrics.bundles.fetched_bytes.inc_by(n);
        }

        // 6. Preflight: the whole activation is built before anything
        //    switches.
        let manifest = Arc::new(verified.manifest);
        let this = self.clone();
        let m = manifest.clone();
        let loaded = tokio::task::spawn_blocking(move || this.load_bundle(&m))
            .await
            .map_err(|e| SyncError::Local(e.to_string()))?;
        let loaded = match loaded {
            Ok(l) => l,
            Err(message) => {
                st.failed_preflight = Some((version, head.manifest.clone(), "config"));
                return Err(SyncError::Refused {
                    reason: "config",
                    message,
                    version: Some(version),
                });
            }
        };

        // 7. Activate: the commit writes the manifest, then current.json —
        //    the switch. The raised high-water mark follows; if writing it
        //    fails, the next start raises it from current.json.
        let installed = Installed {
            manifest: verified.hash.clone(),
            version,
            activated: now,
        };
        let next_current = st.current.activate(installed.clone(), self.settings.keep);
        let mut next_trust = st.trust.clone();
        next_trust.raise(&self.scope, version);
        // A failed commit is the node's own disk, not the bundle: it is not
        // remembered as a refusal, and the next sync tries again.
        let commit_failed = Arc::new(AtomicBool::new(false));
        let commit = {
            let (store, hash, envelope) = (self.store.clone(), verified.hash, verified.envelope);
            let current = next_current.clone();
            let failed = commit_failed.clone();
            move || -> Result<(), String> {
                store
                    .put_manifest(&hash, &envelope)
                    .and_then(|()| store.set_current(&current))
                    .map_err(|e| {
                        failed.store(true, Ordering::Relaxed);
                        format!("staging the bundle failed: {e}")
                    })
            }
        };
        let previous = st.current.active.as_ref().map(|i| i.version);
        let outcome = shared.activate(loaded, commit).await;
        if !outcome.activated && commit_failed.load(Ordering::Relaxed) {
            return Err(SyncError::Local(outcome.errors.join("; ")));
        }
        if !outcome.activated {
            st.failed_preflight = Some((version, head.manifest.clone(), "preflight"));
            return Err(SyncError::Refused {
                reason: "preflight",
                message: outcome.errors.join("; "),
                version: Some(version),
            });
        }
        st.current = next_current;
        st.trust = next_trust;
        st.failed_preflight = None;
        if let Err(e) = self.store.save_trust(st.trust.state()) {
            error!(error = %e, "cannot persist the raised high-water mark; the next start restores it from current.json");
        }
        self.set_active(manifest.clone(), installed);
        let b = &shared.metrics.bundles;
        b.activations.inc();
        b.active_version
            .set(i64::try_from(version).unwrap_or(i64::MAX));
        info!(version, previous, files = manifest.files.len(), fetched_bytes = fetched, scope = %self.scope, "bundle activated");
        self.audit(
            "activated",
            json!({"version": version, "manifest": head.manifest, "previous": previous,
                   "files": manifest.files.len(), "fetched_bytes": fetched}),
        )
        .await;
        self.collect_garbage(st).await;
        Ok(SyncOutcome::Activated { version })
    }

    /// Switches back to the previous bundle. The version reverted from
    /// stays at the high-water mark, so no poll activates it again: it is
    /// quarantined until a higher version is published.
    async fn revert(
        self: &Arc<Self>,
        st: &mut State,
        shared: &Arc<Shared>,
        trigger: &str,
        why: &str,
    ) -> Result<(u64, u64), String> {
        let from = st.current.active.clone().ok_or("no bundle is active")?;
        let to = st
            .current
            .previous
            .first()
            .cloned()
            .ok_or("no previous bundle is kept on this node")?;
        let this = self.clone();
        let (trust, target) = (st.trust.clone(), to.clone());
        let (manifest, loaded) =
            tokio::task::spawn_blocking(move || this.prepare_stored(&trust, &target, false))
                .await
                .map_err(|e| e.to_string())??;
        let next = Current {
            active: Some(Installed {
                activated: Timestamp::now(),
                ..to.clone()
            }),
            previous: st.current.previous.get(1..).unwrap_or_default().to_vec(),
            quarantined: Some(from.version),
        };
        let commit = {
            let (store, next) = (self.store.clone(), next.clone());
            move || store.set_current(&next).map_err(|e| e.to_string())
        };
        let outcome = shared.activate(loaded, commit).await;
        if !outcome.activated {
            return Err(outcome.errors.join("; "));
        }
        st.current = next;
        self.set_active(manifest, to.clone());
        let b = &shared.metrics.bundles;
        b.rollbacks.inc();
        b.active_version
            .set(i64::try_from(to.version).unwrap_or(i64::MAX));
        warn!(
            from = from.version,
            to = to.version,
            trigger,
            reason = why,
            "reverted to the previous bundle; the newer version is quarantined on this node"
        );
        self.audit(
            "rolled-back",
            json!({"from": from.version, "to": to.version, "trigger": trigger, "reason": why}),
        )
        .await;
        Ok((from.version, to.version))
    }

    /// `cathedral bundle activate --previous`: an operator's revert.
    pub async fn activate_previous(
        self: &Arc<Self>,
        shared: &Arc<Shared>,
    ) -> Result<(u64, u64), String> {
        let mut state = self.state.lock().await;
        let result = self
            .revert(&mut state, shared, "operator", "activate --previous")
            .await;
        self.update_report(&state);
        result
    }

    async fn refuse(
        self: &Arc<Self>,
        shared: &Arc<Shared>,
        reason: &'static str,
        message: &str,
        version: Option<u64>,
    ) {
        shared
            .metrics
            .bundles
            .refusals
            .get_or_create(&crate::metrics::ReasonLabel { reason })
            .inc();
        if let Ok(mut r) = self.report.lock() {
            r.last_refusal = Some((SystemTime::now(), reason, message.to_string()));
            r.last_sync = Some((SystemTime::now(), "refused", Some(message.to_string())));
        }
        // Keyed by reason and version, not the message: an expired head's
        // message changes every poll (it names the time).
        let key = format!("{reason} {version:?}");
        let repeated = self
            .last_audited_refusal
            .lock()
            .map(|mut last| {
                let same = last.as_deref() == Some(key.as_str());
                *last = Some(key);
                same
            })
            .unwrap_or(false);
        warn!(reason, error = %message, version, "bundle refused; still serving the active bundle");
        if !repeated {
            self.audit(
                "refused",
                json!({"reason": reason, "error": message, "version": version}),
            )
            .await;
        }
    }

    /// Removes stored files no kept bundle needs.
    async fn collect_garbage(self: &Arc<Self>, st: &State) {
        let this = self.clone();
        let (current, trust) = (st.current.clone(), st.trust.clone());
        let result = tokio::task::spawn_blocking(move || {
            let mut kept = Vec::new();
            for installed in current.kept() {
                let bytes = this.store.read_manifest(&installed.manifest)?;
                if let Ok(m) = trust.reverify_stored(&bytes, &this.limits) {
                    kept.push(m);
                }
            }
            let refs: Vec<&Manifest> = kept.iter().collect();
            this.store.collect_garbage(&current, &refs)
        })
        .await;
        match result {
            Ok(Ok(n)) if n > 0 => info!(removed = n, "removed files no kept bundle uses"),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => warn!(error = %e, "bundle garbage collection failed"),
            Err(e) => warn!(error = %e, "bundle garbage collection failed"),
        }
    }

    /// Appends to the audit log off the async threads.
    pub async fn audit(self: &Arc<Self>, event: &'static str, details: Value) {
        let audit = self.audit.clone();
        let _ = tokio::task::spawn_blocking(move || append(&audit, event, details)).await;
    }

    fn audit_now(&self, event: &'static str, details: Value) {
        append(&self.audit, event, details);
    }

    fn note_sync(&self, result: &'static str, detail: Option<String>) {
        if let Ok(mut r) = self.report.lock() {
            r.last_sync = Some((SystemTime::now(), result, detail));
        }
    }

    fn update_report(&self, st: &State) {
        if let Ok(mut r) = self.report.lock() {
            r.high_water = st.trust.high_water(&self.scope);
            r.quarantined = st.current.quarantined;
            r.root_version = st.trust.root().version;
            r.keyset_version = st.trust.keyset().map(|k| k.version);
            r.previous = st.current.previous.iter().map(|i| i.version).collect();
        }
    }

    /// The bundle section of `/readyz` and `GET /bundles`.
    pub fn status_json(&self) -> Value {
        let active = self.active.lock().ok().and_then(|a| a.clone());
        let r = self.report.lock().map(|r| r.clone()).unwrap_or_default();
        let unix = |t: SystemTime| {
            t.duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0)
        };
        json!({
            "scope": self.scope.to_string(),
            "active": active.as_ref().map(|a| json!({
                "version": a.installed.version,
                "manifest": a.installed.manifest,
                "activated": a.installed.activated.to_string(),
                "expires": a.manifest.expires.to_string(),
            })),
            "previous": r.previous,
            "high_water": r.high_water,
            "quarantined": r.quarantined,
            "root_version": r.root_version,
            "keyset_version": r.keyset_version,
            "last_sync": r.last_sync.map(|(at, result, detail)| json!({
                "at_unix": unix(at), "result": result, "detail": detail,
            })),
            "last_refusal": r.last_refusal.map(|(at, reason, error)| json!({
                "at_unix": unix(at), "reason": reason, "error": error,
            })),
        })
    }
}

impl ConfigSource for BundleManager {
    /// A reload (SIGHUP, `POST /reload`) re-activates the active bundle:
    /// its config is parsed again and its files re-read from the store.
    fn load(&self) -> Result<Loaded, String> {
        let active = self
            .active
            .lock()
            .ok()
            .and_then(|a| a.clone())
            .ok_or("no bundle is active yet")?;
        self.load_bundle(&active.manifest)
    }
}

/// A config file's directory as an absolute path inside the bundle:
/// `config/edge.toml` → `/config`.
fn virtual_dir(path: &str) -> PathBuf {
    let parent = Path::new(path).parent().unwrap_or(Path::new(""));
    Path::new("/").join(parent)
}

fn append(audit: &Mutex<Option<AuditLog>>, event: &'static str, details: Value) {
    if let Ok(mut guard) = audit.lock()
        && let Some(log) = guard.as_mut()
        && let Err(e) = log.append(event, details)
    {
        error!(error = %e, event, "cannot write the audit log");
    }
}

/// Opens the audit log. A log whose chain is broken is moved aside (kept
/// for investigation) and a new one is started whose first entry says so.
fn open_audit(path: &Path) -> Option<AuditLog> {
    match AuditLog::open(path) {
        Ok(log) => Some(log),
        Err(e) => {
            let aside = path.with_extension(format!("log.broken-{}", Timestamp::now().unix()));
            error!(error = %e, moved_to = %aside.display(), "the audit log's chain is broken; starting a new log");
            if std::fs::rename(path, &aside).is_err() {
                return None;
            }
            let mut log = AuditLog::open(path).ok()?;
            let _ = log.append(
                "audit-restarted",
                json!({"reason": e.to_string(), "broken_log": aside.display().to_string()}),
            );
            Some(log)
        }
    }
}

/// Why the node is unhealthy after an activation, if it is: not ready,
/// or a module of the active configuration failing call after call.
fn unhealthy(shared: &Shared) -> Option<String> {
    if shared.is_shutting_down() {
        return None;
    }
    if shared.status().listeners.is_empty() {
        return Some("no public listener bound".into());
    }
    let active = shared.active.load();
    let engine = shared.wasm.started()?;
    engine
        .module_stats()
        .into_iter()
        .find(|(name, s)| {
            active.config.modules.contains_key(name) && s.consecutive_failures >= FAILING_AFTER
        })
        .map(|(name, s)| {
            format!(
                "module {name} failed {} calls in a row",
                s.consecutive_failures
            )
        })
}

/// `d` ± 10%, so a fleet does not poll in lockstep.
fn jittered(d: Duration) -> Duration {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|t| t.subsec_nanos())
        .unwrap_or(0);
    let spread = d / 10;
    let offset = spread.mul_f64(f64::from(nanos % 2001) / 1000.0);
    (d - spread) + offset
}
