//! Bundle-mode fixtures: keys, an origin directory served by the real
//! `OriginServer`, documents signed the way the CLI signs them, and a node
//! started in bundle mode the way `cathedral serve` starts one.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use cathedral_bundle::{
    AuditEntry, ConfigRef, DocKind, Envelope, FileEntry, Head, Keyset, KeysetKey, Manifest, Root,
    SecretKey, Timestamp, Totals, verify_audit_log,
};
use cathedral_config::{Bootstrap, BundleSettings, EdgeConfig};
use cathedral_edge::bundles::BundleManager;
use cathedral_edge::origin::OriginServer;
use cathedral_edge::{ConfigSource, Loaded, Node, NodeHandle};
use serde::Serialize;

pub const ENVIRONMENT: &str = "production";
pub const REGION: &str = "eu-central-1";

/// Signs `doc` as a `kind` envelope with every key in `keys`.
pub fn sign<T: Serialize>(kind: DocKind, doc: &T, keys: &[&SecretKey]) -> Vec<u8> {
    let mut env = Envelope::new(kind, serde_json::to_vec_pretty(doc).unwrap());
    for k in keys {
        env.sign(k);
    }
    env.to_bytes()
}

pub fn key(seed: u8) -> SecretKey {
    SecretKey::from_seed([seed; 32])
}

/// One bundle's content before signing: bundle path → (bytes, content type).
#[derive(Debug, Clone, Default)]
pub struct Files(pub BTreeMap<String, (Vec<u8>, String)>);

impl Files {
    /// A bundle whose `config/edge.toml` is `edge_toml` plus `files`.
    pub fn new(edge_toml: &str) -> Self {
        let mut f = Files::default();
        f.add("config/edge.toml", edge_toml.as_bytes(), "application/toml");
        f
    }

    pub fn add(&mut self, path: &str, bytes: &[u8], content_type: &str) -> &mut Self {
        self.0
            .insert(path.to_string(), (bytes.to_vec(), content_type.to_string()));
        self
    }
}

/// A static site at `static/site/` served on `/`: the smallest bundle.
pub fn site_bundle(index_html: &str) -> Files {
    let mut f = Files::new(
        r#"
[routes.site]
path = "/"
static = "../static/site"
"#,
    );
    f.add(
        "static/site/index.html",
        index_html.as_bytes(),
        "text/html; charset=utf-8",
    );
    f
}

/// Root keys 1 and 2 (threshold 2), signing key 10 ("signer-a") in keyset
/// v1, and an origin directory served on loopback.
#[derive(Debug)]
pub struct BundleOrigin {
    pub dir: tempfile::TempDir,
    pub server: Option<OriginServer>,
    pub root_keys: Vec<SecretKey>,
    pub signers: Vec<SecretKey>,
    pub url: String,
}

impl BundleOrigin {
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let server = OriginServer::start(dir.path(), "127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let url = format!("http://{}", server.addr());
        let origin = BundleOrigin {
            dir,
            server: Some(server),
            root_keys: vec![key(1), key(2)],
            signers: vec![key(10)],
            url,
        };
        let ks = origin.keyset(1, &[("signer-a", &key(10))]);
        origin.put_keyset(&ks, &[&key(1), &key(2)]);
        origin
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Hex public keys of the pinned root.
    pub fn root_hex(&self) -> Vec<String> {
        self.root_keys.iter().map(|k| k.public().to_hex()).collect()
    }

    pub fn keyset(&self, version: u64, keys: &[(&str, &SecretKey)]) -> Keyset {
        let now = Timestamp::now();
        Keyset {
            version,
            created: now,
            expires: now.after(Duration::from_secs(30 * 86_400)),
            threshold: 1,
            keys: keys
                .iter()
                .map(|(name, k)| KeysetKey {
                    key: k.public(),
                    name: (*name).to_string(),
                    expires: now.after(Duration::from_secs(30 * 86_400)),
                })
                .collect(),
        }
    }

    pub fn put_keyset(&self, ks: &Keyset, root_keys: &[&SecretKey]) {
        self.write("keyset.json", &sign(DocKind::Keyset, ks, root_keys));
    }

    pub fn put_root(&self, root: &Root, keys: &[&SecretKey]) {
        self.write(
            &format!("root/{}.json", root.version),
            &sign(DocKind::Root, root, keys),
        );
    }

    /// The manifest for `files` at `version`, for the fixture's scope.
    pub fn manifest(&self, version: u64, files: &Files) -> Manifest {
        let now = Timestamp::now();
        let entries: Vec<FileEntry> = files
            .0
            .iter()
            .map(|(path, (bytes, ct))| FileEntry {
                path: path.clone(),
                blake3: blake3::hash(bytes).to_hex().to_string(),
                size: bytes.len() as u64,
                content_type: ct.clone(),
            })
            .collect();
        Manifest {
            format: 1,
            environment: ENVIRONMENT.into(),
            regions: vec![REGION.into()],
            version,
            created: now,
            expires: now.after(Duration::from_secs(86_400)),
            min_runtime: "0.1.0".into(),
            config: ConfigRef {
                edge: "config/edge.toml".into(),
                regions: Some("config/regions".into()),
            },
            totals: Totals {
                files: entries.len() as u64,
                bytes: entries.iter().map(|e| e.size).sum(),
            },
            files: entries,
        }
    }

    /// Publishes `files` as `version`: blobs, manifest, then the head, all
    /// signed by the first signing key.
    pub fn publish(&self, version: u64, files: &Files) -> String {
        let manifest = self.manifest(version, files);
        self.publish_manifest(&manifest, files, &[&self.signers[0]])
    }

    /// Publishes a manifest (possibly doctored) with the given blobs and
    /// signers; returns the manifest's hash.
    pub fn publish_manifest(
        &self,
        manifest: &Manifest,
        files: &Files,
        signers: &[&SecretKey],
    ) -> String {
        self.publish_signed(manifest, files, signers, signers)
    }

    /// Like [`BundleOrigin::publish_manifest`], with the manifest and the
    /// head signed by different keys.
    pub fn publish_signed(
        &self,
        manifest: &Manifest,
        files: &Files,
        manifest_signers: &[&SecretKey],
        head_signers: &[&SecretKey],
    ) -> String {
        for (bytes, _) in files.0.values() {
            self.put_blob(bytes);
        }
        let envelope = sign(DocKind::Manifest, manifest, manifest_signers);
        let hash = blake3::hash(&envelope).to_hex().to_string();
        self.write(&format!("manifests/{hash}.json"), &envelope);
        let head = self.head(manifest.version, &hash, envelope.len() as u64);
        self.put_head(&head, head_signers);
        hash
    }

    /// The size of the manifest envelope published under `hash`.
    pub fn manifest_size(&self, hash: &str) -> u64 {
        self.read(&format!("manifests/{hash}.json")).len() as u64
    }

    pub fn head(&self, version: u64, manifest: &str, size: u64) -> Head {
        let now = Timestamp::now();
        Head {
            environment: ENVIRONMENT.into(),
            region: REGION.into(),
            version,
            manifest: manifest.to_string(),
            manifest_size: size,
            issued: now,
            expires: now.after(Duration::from_secs(3600)),
        }
    }

    pub fn put_head(&self, head: &Head, signers: &[&SecretKey]) {
        self.write(
            &format!("heads/{}/{}.json", head.environment, head.region),
            &sign(DocKind::Head, head, signers),
        );
    }

    pub fn put_blob(&self, bytes: &[u8]) -> PathBuf {
        let hash = blake3::hash(bytes).to_hex().to_string();
        let path = format!("blobs/{hash}");
        self.write(&path, bytes);
        self.dir.path().join(path)
    }

    /// The origin path of the fixture scope's head.
    pub fn head_path(&self) -> String {
        format!("heads/{ENVIRONMENT}/{REGION}.json")
    }

    /// A file of the origin directory, as published.
    pub fn read(&self, rel: &str) -> Vec<u8> {
        std::fs::read(self.dir.path().join(rel)).unwrap()
    }

    pub fn write(&self, rel: &str, bytes: &[u8]) {
        let path = self.dir.path().join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }

    pub async fn stop(&mut self) {
        if let Some(s) = self.server.take() {
            s.stop().await;
        }
    }
}

/// `[bundles]` settings for a node of the fixture's scope: state in
/// `state_dir`, no automatic polling during a test (the test syncs), no
/// health watch unless the test sets one.
pub fn bundle_settings(
    origin_url: &str,
    root_keys: Vec<String>,
    state_dir: &Path,
) -> BundleSettings {
    BundleSettings {
        origins: vec![origin_url.to_string()],
        environment: ENVIRONMENT.into(),
        root_keys,
        root_threshold: 2,
        state_dir: state_dir.to_path_buf(),
        poll_interval: Duration::from_secs(3600),
        fetch_timeout: Duration::from_secs(10),
        max_manifest_bytes: 1 << 20,
        max_bundle_bytes: 64 << 20,
        keep: 3,
        health_grace: Duration::ZERO,
    }
}

/// A node in bundle mode, started as `cathedral serve` starts one.
#[derive(Debug)]
pub struct BundleNode {
    pub handle: NodeHandle,
    pub manager: Arc<BundleManager>,
}

impl BundleNode {
    pub async fn start(settings: BundleSettings) -> Self {
        Self::start_with(settings, |_| {}).await
    }

    pub async fn start_with(settings: BundleSettings, tweak: impl FnOnce(&mut Bootstrap)) -> Self {
        let mut bootstrap = crate::loopback_bootstrap();
        bootstrap.region = REGION.into();
        bootstrap.bundles = Some(settings);
        tweak(&mut bootstrap);
        let manager = BundleManager::open(&bootstrap).unwrap();
        let m = manager.clone();
        let initial = tokio::task::spawn_blocking(move || m.load_initial())
            .await
            .unwrap()
            .unwrap_or_else(|| {
                Loaded::local(EdgeConfig {
                    region: REGION.into(),
                    upstreams: Default::default(),
                    routes: Vec::new(),
                    rate_limits: Default::default(),
                    modules: Default::default(),
                })
            });
        let source: Arc<dyn ConfigSource> = manager.clone();
        let mut handle = Node::start(bootstrap, initial, source).await.unwrap();
        handle.attach_bundles(manager.clone());
        // The sync loop syncs once at start; wait for it, so that what the
        // test does next is not raced by it. Its preflight compiles the
        // bundle's modules, which takes a while in a debug build with every
        // other test compiling too: wait longer than for a request.
        let deadline = tokio::time::Instant::now() + 6 * crate::PATIENCE;
        while manager.status_json()["last_sync"].is_null() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the first sync did not finish"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        BundleNode { handle, manager }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.handle.http_addrs()[0])
    }

    pub fn admin(&self, path: &str) -> String {
        format!("http://{}{path}", self.handle.admin_addr())
    }

    /// The `/bundles` status document.
    pub async fn status(&self) -> serde_json::Value {
        let (_, _, body) = crate::get(&self.admin("/bundles")).await;
        serde_json::from_str(&body).unwrap()
    }

    pub fn active_version(&self) -> Option<u64> {
        self.manager.active_version()
    }

    pub fn state_dir(&self) -> PathBuf {
        self.manager.settings().state_dir.clone()
    }

    /// One `/metrics` sample (exact name with labels), if present.
    pub async fn metric(&self, sample: &str) -> Option<f64> {
        let (_, _, text) = crate::get(&self.admin("/metrics")).await;
        text.lines().find_map(|l| {
            l.strip_prefix(sample)
                .filter(|rest| rest.starts_with(' '))
                .and_then(|rest| rest.trim().parse().ok())
        })
    }

    /// The audit log's entries; panics unless its chain verifies.
    pub fn audit(&self) -> Vec<AuditEntry> {
        audit_entries(&self.state_dir())
    }

    /// Shuts the node down and waits (bounded) until nothing holds its
    /// bundle manager any more, so another node may open the same state
    /// directory as a restarted process would.
    pub async fn stop(self) {
        let BundleNode { handle, manager } = self;
        handle.shutdown().await;
        let deadline = tokio::time::Instant::now() + crate::PATIENCE;
        while Arc::strong_count(&manager) > 1 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the stopped node still holds its bundle manager"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// The entries of `<state_dir>/audit.log`; panics unless its chain
/// verifies.
pub fn audit_entries(state_dir: &Path) -> Vec<AuditEntry> {
    let path = state_dir.join("audit.log");
    verify_audit_log(&path).unwrap_or_else(|problem| panic!("{}: {problem}", path.display()))
}

/// Where a node's store keeps the blob with these contents.
pub fn stored_blob(state_dir: &Path, bytes: &[u8]) -> PathBuf {
    let hash = blake3::hash(bytes).to_hex().to_string();
    state_dir.join("blobs").join(&hash[..2]).join(hash)
}

/// A loopback port bound but not listening: connections to it are
/// refused, and no other test can take the port while this lives.
#[derive(Debug)]
pub struct Unreachable {
    _socket: tokio::net::TcpSocket,
    pub url: String,
}

impl Unreachable {
    pub fn new() -> Self {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let url = format!("http://{}", socket.local_addr().unwrap());
        Unreachable {
            _socket: socket,
            url,
        }
    }
}

impl Default for Unreachable {
    fn default() -> Self {
        Self::new()
    }
}

/// An admin API request with an optional bearer token: status and body.
pub async fn admin_request(
    method: http::Method,
    url: &str,
    token: Option<&str>,
) -> (http::StatusCode, String) {
    let mut req = http::Request::builder().method(method).uri(url);
    if let Some(token) = token {
        req = req.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let (status, _, body) = crate::send(req.body(crate::full("")).unwrap()).await;
    (status, body)
}
