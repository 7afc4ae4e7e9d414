//! Test support for the end-to-end suite: a scripted origin that counts
//! requests, a node started on loopback from TOML text, and clients for
//! HTTP/1.1, h2c, h2 over TLS and raw bytes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod bundles;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use cathedral_config::{Bootstrap, EdgeConfig, Overrides, Source};
use cathedral_edge::{ConfigSource, Loaded, Node, NodeHandle};
use futures_util::{SinkExt, StreamExt};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, mpsc};

pub type TestBody = BoxBody<Bytes, Infallible>;

/// An upper bound for any single wait in a test, so a bug fails the test
/// instead of hanging it.
pub const PATIENCE: Duration = Duration::from_secs(10);

pub fn full(data: impl Into<Bytes>) -> TestBody {
    Full::new(data.into()).boxed()
}

/// What the origin saw of one request.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub uri: String,
    pub version: http::Version,
    pub headers: http::HeaderMap,
}

/// A response the origin gives for one path, set by the test.
#[derive(Debug, Clone, Default)]
pub struct Scripted {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
    /// Answer 304 (with these headers) when `If-None-Match` carries the
    /// scripted `etag` header's value.
    pub honour_etag: bool,
}

impl Scripted {
    pub fn ok(body: &str, headers: &[(&str, &str)]) -> Self {
        Scripted {
            status: 200,
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            body: body.to_owned(),
            honour_etag: true,
        }
    }

    pub fn status(mut self, status: u16) -> Self {
        self.status = status;
        self
    }
}

/// A scripted origin on 127.0.0.1:0.
///
/// - a path given a [`Scripted`] response answers with it (and 304 to a
///   matching `If-None-Match` when asked to).
/// - `/echo...` answers 200 with a `key: value` summary of the request.
/// - `/stream-echo` streams the request body back as it arrives.
/// - `/hold` answers only after [`Origin::release`] is called.
/// - `/silent` never answers.
/// - `/ws` accepts a WebSocket upgrade and echoes messages.
/// - `/status/N` answers with status N.
/// - anything else: 200 "origin:<path>".
#[derive(Debug, Clone)]
pub struct Origin {
    pub addr: SocketAddr,
    pub count: Arc<AtomicUsize>,
    scripts: Arc<Mutex<HashMap<String, Scripted>>>,
    per_path: Arc<Mutex<HashMap<String, usize>>>,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    release: Arc<Notify>,
    held: Arc<AtomicUsize>,
    held_notify: Arc<Notify>,
}

impl Origin {
    pub async fn start() -> Self {
        Self::start_with(false).await
    }

    /// An origin that speaks h2 with prior knowledge only.
    pub async fn start_h2() -> Self {
        Self::start_with(true).await
    }

    /// An HTTP/1.1 origin behind TLS with the given PEM certificate and key.
    pub async fn start_tls(cert: &Path, key: &Path) -> Self {
        use rustls_pki_types::pem::PemObject;
        let chain = rustls_pki_types::CertificateDer::pem_file_iter(cert)
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = rustls_pki_types::PrivateKeyDer::from_pem_file(key).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
        Self::start_inner(
            false,
            Some(tokio_rustls::TlsAcceptor::from(Arc::new(config))),
        )
        .await
    }

    async fn start_with(h2: bool) -> Self {
        Self::start_inner(h2, None).await
    }

    async fn start_inner(h2: bool, tls: Option<tokio_rustls::TlsAcceptor>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let origin = Origin {
            addr: listener.local_addr().unwrap(),
            count: Arc::new(AtomicUsize::new(0)),
            scripts: Arc::new(Mutex::new(HashMap::new())),
            per_path: Arc::new(Mutex::new(HashMap::new())),
            seen: Arc::new(Mutex::new(Vec::new())),
            release: Arc::new(Notify::new()),
            held: Arc::new(AtomicUsize::new(0)),
            held_notify: Arc::new(Notify::new()),
        };
        let o = origin.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let o = o.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let o = o.clone();
                        async move { Ok::<_, Infallible>(o.answer(req).await) }
                    });
                    if let Some(tls) = tls {
                        let Ok(stream) = tls.accept(stream).await else {
                            return;
                        };
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), svc)
                            .await;
                    } else if h2 {
                        let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                            .serve_connection(TokioIo::new(stream), svc)
                            .await;
                    } else {
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), svc)
                            .with_upgrades()
                            .await;
                    }
                });
            }
        });
        origin
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn requests(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }

    /// Sets what `path` answers from now on.
    pub fn script(&self, path: &str, response: Scripted) {
        self.scripts
            .lock()
            .unwrap()
            .insert(path.to_owned(), response);
    }

    /// Requests the origin received for `path` (query ignored).
    pub fn count_for(&self, path: &str) -> usize {
        self.per_path
            .lock()
            .unwrap()
            .get(path)
            .copied()
            .unwrap_or(0)
    }

    /// Waits until `path` has been requested `n` times.
    pub async fn wait_count(&self, path: &str, n: usize) {
        tokio::time::timeout(PATIENCE, async {
            while self.count_for(path) < n {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the origin saw the requests");
    }

    pub fn last_seen(&self) -> Seen {
        self.seen
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("the origin saw a request")
    }

    /// Lets every `/hold` request answer.
    pub fn release(&self) {
        self.release.notify_waiters();
    }

    /// Waits until `n` `/hold` requests are waiting at the origin.
    pub async fn wait_held(&self, n: usize) {
        tokio::time::timeout(PATIENCE, async {
            loop {
                let notified = self.held_notify.notified();
                if self.held.load(Ordering::SeqCst) >= n {
                    return;
                }
                notified.await;
            }
        })
        .await
        .expect("requests reached the origin");
    }

    async fn answer(&self, mut req: Request<Incoming>) -> Response<TestBody> {
        self.count.fetch_add(1, Ordering::SeqCst);
        self.seen.lock().unwrap().push(Seen {
            method: req.method().to_string(),
            uri: req.uri().to_string(),
            version: req.version(),
            headers: req.headers().clone(),
        });
        let path = req.uri().path().to_owned();
        *self
            .per_path
            .lock()
            .unwrap()
            .entry(path.clone())
            .or_default() += 1;
        let scripted = self.scripts.lock().unwrap().get(&path).cloned();
        if let Some(script) = scripted {
            return self.scripted(&req, script).await;
        }
        if path.starts_with("/echo") {
            let mut headers = header_lines(req.headers());
            headers.sort();
            let method = req.method().clone();
            let body = req
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let text = format!(
                "method={method}\nbody-bytes={}\n{}",
                body.len(),
                headers.join("\n")
            );
            return Response::new(full(text));
        }
        if path == "/stream-echo" {
            let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, Infallible>>(4);
            let mut body = req.into_body();
            tokio::spawn(async move {
                while let Some(Ok(frame)) = body.frame().await {
                    if let Ok(data) = frame.into_data()
                        && tx.send(Ok(Frame::data(data))).await.is_err()
                    {
                        return;
                    }
                }
            });
            let stream = tokio_stream_from(rx);
            return Response::new(BodyExt::boxed(StreamBody::new(stream)));
        }
        if path == "/hold" {
            let released = self.release.notified();
            self.held.fetch_add(1, Ordering::SeqCst);
            self.held_notify.notify_waiters();
            released.await;
            return Response::new(full("released"));
        }
        if path == "/silent" {
            std::future::pending::<()>().await;
        }
        if path == "/ws" {
            let key = req
                .headers()
                .get("sec-websocket-key")
                .map(|k| tokio_tungstenite::tungstenite::handshake::derive_accept_key(k.as_bytes()))
                .unwrap_or_default();
            let upgrade = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                let Ok(upgraded) = upgrade.await else {
                    return;
                };
                let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
                    TokioIo::new(upgraded),
                    tokio_tungstenite::tungstenite::protocol::Role::Server,
                    None,
                )
                .await;
                while let Some(Ok(msg)) = ws.next().await {
                    if msg.is_text() || msg.is_binary() {
                        if ws.send(msg).await.is_err() {
                            return;
                        }
                    } else if msg.is_close() {
                        return;
                    }
                }
            });
            return Response::builder()
                .status(StatusCode::SWITCHING_PROTOCOLS)
                .header("connection", "upgrade")
                .header("upgrade", "websocket")
                .header("sec-websocket-accept", key)
                .body(full(""))
                .unwrap();
        }
        if let Some(code) = path.strip_prefix("/status/") {
            let status = code
                .parse()
                .ok()
                .and_then(|c| StatusCode::from_u16(c).ok())
                .unwrap_or(StatusCode::OK);
            return Response::builder()
                .status(status)
                .body(full(format!("status {code}")))
                .unwrap();
        }
        Response::builder()
            .header("connection", "x-origin-hop")
            .header("x-origin-hop", "should be removed")
            .header("keep-alive", "timeout=5")
            .body(full(format!("origin:{path}")))
            .unwrap()
    }
}

impl Origin {
    async fn scripted(&self, req: &Request<Incoming>, script: Scripted) -> Response<TestBody> {
        let etag = script
            .headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("etag"))
            .map(|(_, v)| v.clone());
        let inm = req
            .headers()
            .get("if-none-match")
            .and_then(|v| v.to_str().ok());
        let not_modified = script.honour_etag && etag.is_some() && inm == etag.as_deref();
        let mut builder =
            Response::builder().status(if not_modified { 304 } else { script.status });
        for (k, v) in &script.headers {
            builder = builder.header(k.as_str(), v.as_str());
        }
        let body = if not_modified || req.method() == http::Method::HEAD {
            String::new()
        } else {
            script.body
        };
        builder.body(full(body)).unwrap()
    }
}

fn header_lines(headers: &http::HeaderMap) -> Vec<String> {
    headers
        .iter()
        .map(|(k, v)| format!("{}: {}", k, v.to_str().unwrap_or("<binary>")))
        .collect()
}

fn tokio_stream_from<T: Send + 'static>(
    mut rx: mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> + Send + 'static {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// A config source that always gives the same config.
#[derive(Debug)]
pub struct FixedSource(pub EdgeConfig);

impl ConfigSource for FixedSource {
    fn load(&self) -> Result<Loaded, String> {
        Ok(Loaded::local(self.0.clone()))
    }
}

/// A config source that tests can change between reloads.
#[derive(Debug, Clone)]
pub struct SwitchableSource {
    pub text: Arc<Mutex<String>>,
    pub dir: PathBuf,
}

impl ConfigSource for SwitchableSource {
    fn load(&self) -> Result<Loaded, String> {
        let text = self.text.lock().unwrap().clone();
        parse_edge(&text, &self.dir)
            .map(Loaded::local)
            .map_err(|e| e.to_string())
    }
}

pub fn parse_edge(text: &str, dir: &Path) -> Result<EdgeConfig, cathedral_config::ConfigErrors> {
    let name = dir.join("edge.toml");
    cathedral_config::parse_edge(
        Source {
            name: &name,
            text,
            base_dir: dir,
        },
        None,
        "us-east-1",
    )
}

/// A bootstrap listening on loopback ephemeral ports.
pub fn loopback_bootstrap() -> Bootstrap {
    cathedral_config::default_bootstrap(&Overrides {
        listen: Some("127.0.0.1:0".parse().unwrap()),
        admin_listen: Some("127.0.0.1:0".parse().unwrap()),
        ..Overrides::default()
    })
    .unwrap()
}

/// A running node plus what the test needs to talk to it.
#[derive(Debug)]
pub struct TestNode {
    pub handle: NodeHandle,
    pub source: SwitchableSource,
    pub dir: tempfile::TempDir,
}

impl TestNode {
    /// Starts a node whose edge config is `edge_toml`; `{dir}` in the text
    /// is replaced by a temporary directory the test may fill first via
    /// `prepare`.
    pub async fn start(edge_toml: &str) -> Self {
        Self::start_with(edge_toml, |_| {}, |_, _| {}).await
    }

    pub async fn start_with(
        edge_toml: &str,
        prepare: impl FnOnce(&Path),
        tweak: impl FnOnce(&mut Bootstrap, &Path),
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        prepare(dir.path());
        let text = edge_toml.replace("{dir}", &dir.path().display().to_string());
        let edge =
            parse_edge(&text, dir.path()).unwrap_or_else(|e| panic!("test config invalid:\n{e}"));
        let mut bootstrap = loopback_bootstrap();
        tweak(&mut bootstrap, dir.path());
        let source = SwitchableSource {
            text: Arc::new(Mutex::new(text)),
            dir: dir.path().to_owned(),
        };
        let handle = Node::start(bootstrap, edge, Arc::new(source.clone()))
            .await
            .unwrap();
        TestNode {
            handle,
            source,
            dir,
        }
    }

    /// A node in quick mode in front of `origin`.
    pub async fn proxy_to(origin: &Origin) -> Self {
        Self::start(&proxy_config(&origin.url())).await
    }

    pub fn addr(&self) -> SocketAddr {
        self.handle.http_addrs()[0]
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr(), path)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.handle.admin_addr(), path)
    }

    pub fn set_config(&self, text: &str) {
        *self.source.text.lock().unwrap() =
            text.replace("{dir}", &self.dir.path().display().to_string());
    }
}

pub fn proxy_config(origin_url: &str) -> String {
    proxy_config_with(origin_url, "")
}

/// [`proxy_config`] with `upstream_keys` (TOML lines) added to the upstream.
pub fn proxy_config_with(origin_url: &str, upstream_keys: &str) -> String {
    format!(
        r#"
[upstreams.origin]
targets = ["{origin_url}"]
{upstream_keys}

[routes.all]
path = "/"
upstream = "origin"
"#
    )
}

/// A plain HTTP/1.1 client (pooled keep-alive).
pub fn h1_client()
-> hyper_util::client::legacy::Client<hyper_util::client::legacy::connect::HttpConnector, TestBody>
{
    hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http()
}

/// An h2c (prior knowledge) client.
pub fn h2c_client()
-> hyper_util::client::legacy::Client<hyper_util::client::legacy::connect::HttpConnector, TestBody>
{
    hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

/// GET `url`, returning status, headers and body text, bounded by [`PATIENCE`].
pub async fn get(url: &str) -> (StatusCode, http::HeaderMap, String) {
    send(Request::get(url).body(full("")).unwrap()).await
}

pub async fn send(req: Request<TestBody>) -> (StatusCode, http::HeaderMap, String) {
    tokio::time::timeout(PATIENCE, async {
        let resp = h1_client().request(req).await.expect("request failed");
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp
            .into_body()
            .collect()
            .await
            .expect("body failed")
            .to_bytes();
        (status, headers, String::from_utf8_lossy(&body).into_owned())
    })
    .await
    .expect("response within the test's patience")
}

/// Writes raw bytes and reads until the server closes or `PATIENCE` runs out.
pub async fn raw_exchange(addr: SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(PATIENCE, stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// Reads the first response head from a raw exchange.
pub fn status_of(raw: &str) -> Option<u16> {
    raw.split(' ').nth(1).and_then(|s| s.parse().ok())
}

/// Scrapes one metric sample (exact name with labels) from the admin API.
pub async fn metric(node: &TestNode, sample: &str) -> Option<f64> {
    let (_, _, text) = get(&node.admin_url("/metrics")).await;
    text.lines().find_map(|l| {
        l.strip_prefix(sample)
            .and_then(|rest| rest.trim().parse().ok())
    })
}

/// A self-signed certificate for `names`, written as PEM files in `dir`.
pub fn write_cert(
    dir: &Path,
    stem: &str,
    names: &[&str],
) -> (PathBuf, PathBuf, rustls_pki_types::CertificateDer<'static>) {
    let cert =
        rcgen::generate_simple_self_signed(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .unwrap();
    let cert_path = dir.join(format!("{stem}.pem"));
    let key_path = dir.join(format!("{stem}.key"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.key_pair.serialize_pem()).unwrap();
    (cert_path, key_path, cert.cert.der().clone())
}

/// Parses `key: value` lines of an `/echo` answer.
pub fn echo_headers(body: &str) -> HashMap<String, Vec<String>> {
    let mut out: HashMap<String, Vec<String>> = HashMap::new();
    for line in body.lines() {
        if let Some((k, v)) = line.split_once(": ") {
            out.entry(k.to_owned()).or_default().push(v.to_owned());
        }
    }
    out
}

/// Connects over TLS to `addr` with SNI `name`, trusting only `root`, and
/// offering `alpn`. Returns the negotiated protocol and the stream.
pub async fn tls_connect(
    addr: SocketAddr,
    name: &str,
    root: &rustls_pki_types::CertificateDer<'static>,
    alpn: &[&[u8]],
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root.clone()).unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(versions)
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(addr).await?;
    let server_name = rustls_pki_types::ServerName::try_from(name.to_owned()).unwrap();
    connector.connect(server_name, tcp).await
}

/// One GET over an established connection, HTTP/1.1 or h2.
pub async fn get_over<IO>(io: IO, h2: bool, uri: &str) -> (StatusCode, http::Version, String)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    tokio::time::timeout(PATIENCE, async {
        let io = TokioIo::new(io);
        let resp = if h2 {
            let (mut sender, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                    .await
                    .unwrap();
            tokio::spawn(conn);
            sender
                .send_request(Request::get(uri).body(full("")).unwrap())
                .await
                .unwrap()
        } else {
            let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
            tokio::spawn(conn);
            let authority = uri
                .parse::<http::Uri>()
                .unwrap()
                .authority()
                .unwrap()
                .to_string();
            sender
                .send_request(
                    Request::get(uri)
                        .header("host", authority)
                        .body(full(""))
                        .unwrap(),
                )
                .await
                .unwrap()
        };
        let status = resp.status();
        let version = resp.version();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, version, String::from_utf8_lossy(&body).into_owned())
    })
    .await
    .expect("response within the test's patience")
}
