//! Fetching from the origin: small documents (conditional GETs, capped) and
//! blobs (streamed into the store, capped at their declared size, under a
//! deadline that grows with size, so a slow-loris origin cannot hold a sync
//! forever). Origins are mirrors tried in order.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use cathedral_bundle::BlobWriter;
use http::{Request, StatusCode, header};
use http_body_util::{BodyExt, Empty};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// Slowest transfer rate tolerated on top of the base timeout.
const MIN_RATE_BYTES_PER_SEC: u64 = 1 << 20;
/// Blob bytes buffered before one blocking write to the store.
const WRITE_BATCH: usize = 256 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{url}: {reason}")]
    Transport { url: String, reason: String },
    #[error("{url}: status {status}")]
    Status { url: String, status: StatusCode },
    #[error("{url}: more than {limit} bytes")]
    TooLarge { url: String, limit: u64 },
    #[error("{url}: no answer within {timeout:?}")]
    Timeout { url: String, timeout: Duration },
    #[error("{0}")]
    Store(#[from] cathedral_bundle::Error),
}

/// What a document fetch found.
#[derive(Debug)]
pub enum Fetched {
    /// The bytes (fresh, or the remembered copy on a 304).
    Body(Bytes),
    NotFound,
}

#[derive(Debug)]
pub struct Fetcher {
    client: Client<HttpsConnector<HttpConnector>, Empty<Bytes>>,
    origins: Vec<String>,
    timeout: Duration,
    /// ETag and body of the last 200 per document path, for conditional
    /// GETs.
    validators: std::sync::Mutex<HashMap<String, (String, Bytes)>>,
}

impl Fetcher {
    pub fn new(origins: Vec<String>, timeout: Duration) -> Result<Self, String> {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(timeout.min(Duration::from_secs(10))));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(origin_tls()?)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new()).build(https);
        Ok(Self {
            client,
            origins,
            timeout,
            validators: std::sync::Mutex::new(HashMap::new()),
        })
    }

    /// GETs a document of at most `max` bytes, conditionally when a copy is
    /// remembered. A 404 is `NotFound` (mirrors agree on what exists);
    /// other failures try the next origin.
    pub async fn document(&self, rel: &str, max: u64) -> Result<Fetched, FetchError> {
        let mut last = None;
        for origin in &self.origins {
            match self.document_from(origin, rel, max).await {
                Ok(f) => return Ok(f),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| FetchError::Transport {
            url: rel.to_string(),
            reason: "no origin configured".into(),
        }))
    }

    async fn document_from(
        &self,
        origin: &str,
        rel: &str,
        max: u64,
    ) -> Result<Fetched, FetchError> {
        let url = format!("{origin}/{rel}");
        let remembered = self
            .validators
            .lock()
            .ok()
            .and_then(|v| v.get(&url).cloned());
        let mut req = Request::get(&url);
        if let Some((etag, _)) = &remembered {
            req = req.header(header::IF_NONE_MATCH, etag);
        }
        let req = req.body(Empty::new()).map_err(|e| FetchError::Transport {
            url: url.clone(),
            reason: e.to_string(),
        })?;
        let timeout = self.timeout;
        let fut = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| FetchError::Transport {
                    url: url.clone(),
                    reason: error_chain(&e),
                })?;
            match resp.status() {
                StatusCode::NOT_FOUND => return Ok(Fetched::NotFound),
                StatusCode::NOT_MODIFIED => {
                    if let Some((_, body)) = remembered {
                        return Ok(Fetched::Body(body));
                    }
                }
                StatusCode::OK => {}
                status => {
                    return Err(FetchError::Status {
                        url: url.clone(),
                        status,
                    });
                }
            }
            let etag = resp
                .headers()
                .get(header::ETAG)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            if declared_len(&resp).is_some_and(|n| n > max) {
                return Err(FetchError::TooLarge {
                    url: url.clone(),
                    limit: max,
                });
            }
            let mut body = resp.into_body();
            let mut buf = Vec::new();
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|e| FetchError::Transport {
                    url: url.clone(),
                    reason: error_chain(&e),
                })?;
                if let Ok(data) = frame.into_data() {
                    if (buf.len() + data.len()) as u64 > max {
                        return Err(FetchError::TooLarge {
                            url: url.clone(),
                            limit: max,
                        });
                    }
                    buf.extend_from_slice(&data);
                }
            }
            let body = Bytes::from(buf);
            if let (Some(etag), Ok(mut v)) = (etag, self.validators.lock()) {
                v.insert(url.clone(), (etag, body.clone()));
            }
            Ok(Fetched::Body(body))
        };
        tokio::time::timeout(timeout, fut)
            .await
            .unwrap_or_else(|_| {
                Err(FetchError::Timeout {
                    url: url.clone(),
                    timeout,
                })
            })
    }

    /// Streams `blobs/<hash>` into `writer`, which enforces the declared
    /// size and checks the hash. Returns the bytes received.
    pub async fn blob(&self, hash: &str, size: u64, writer: BlobWriter) -> Result<u64, FetchError> {
        let mut writer = Some(writer);
        let mut last = None;
        for origin in &self.origins {
            let Some(w) = writer.take() else { break };
            match self.blob_from(origin, hash, size, w).await {
                Ok(n) => return Ok(n),
                Err((e, w)) => {
                    last = Some(e);
                    writer = w;
                }
            }
        }
        Err(last.unwrap_or_else(|| FetchError::Transport {
            url: format!("blobs/{hash}"),
            reason: "no origin configured".into(),
        }))
    }

    /// On failure the writer comes back (when it is still clean) so the
    /// next origin can be tried.
    async fn blob_from(
        &self,
        origin: &str,
        hash: &str,
        size: u64,
        writer: BlobWriter,
    ) -> Result<u64, (FetchError, Option<BlobWriter>)> {
        let url = format!("{origin}/blobs/{hash}");
        let timeout = self.timeout + Duration::from_secs(size / MIN_RATE_BYTES_PER_SEC);
        let req = match Request::get(&url).body(Empty::new()) {
            Ok(r) => r,
            Err(e) => {
                return Err((
                    FetchError::Transport {
                        url,
                        reason: e.to_string(),
                    },
                    Some(writer),
                ));
            }
        };
        let resp = match tokio::time::timeout(timeout, self.client.request(req)).await {
            Ok(Ok(resp)) => resp,
            Ok(Err(e)) => {
                let reason = error_chain(&e);
                return Err((FetchError::Transport { url, reason }, Some(writer)));
            }
            Err(_) => return Err((FetchError::Timeout { url, timeout }, Some(writer))),
        };
        if resp.status() != StatusCode::OK {
            let status = resp.status();
            return Err((FetchError::Status { url, status }, Some(writer)));
        }
        if let Some(declared) = declared_len(&resp).filter(|&n| n != size) {
            return Err((size_mismatch(hash, size, declared), Some(writer)));
        }
        // From here the writer has bytes in it: a failure ends this blob.
        let url2 = url.clone();
        let stream = async move {
            let mut writer = writer;
            let mut body = resp.into_body();
            let mut batch: Vec<u8> = Vec::with_capacity(WRITE_BATCH);
            let mut received: u64 = 0;
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|e| FetchError::Transport {
                    url: url2.clone(),
                    reason: error_chain(&e),
                })?;
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                received += data.len() as u64;
                if received > size {
                    return Err(size_mismatch(hash, size, received));
                }
                batch.extend_from_slice(&data);
                if batch.len() >= WRITE_BATCH {
                    let chunk = std::mem::take(&mut batch);
                    writer = write_blocking(writer, chunk).await?;
                }
            }
            if !batch.is_empty() {
                writer = write_blocking(writer, batch).await?;
            }
            tokio::task::spawn_blocking(move || writer.finish())
                .await
                .map_err(|e| FetchError::Transport {
                    url: url2.clone(),
                    reason: e.to_string(),
                })??;
            Ok(received)
        };
        match tokio::time::timeout(timeout, stream).await {
            Ok(result) => result.map_err(|e| (e, None)),
            Err(_) => Err((FetchError::Timeout { url, timeout }, None)),
        }
    }
}

/// A blob whose length is not the one its manifest declares: the same
/// refusal the store gives when it counts the bytes itself.
fn size_mismatch(hash: &str, expected: u64, actual: u64) -> FetchError {
    FetchError::Store(cathedral_bundle::Error::SizeMismatch {
        what: format!("blob {hash}"),
        expected,
        actual,
    })
}

async fn write_blocking(mut writer: BlobWriter, chunk: Vec<u8>) -> Result<BlobWriter, FetchError> {
    tokio::task::spawn_blocking(move || writer.write(&chunk).map(|()| writer))
        .await
        .map_err(|e| FetchError::Transport {
            url: String::from("store"),
            reason: e.to_string(),
        })?
        .map_err(FetchError::Store)
}

fn declared_len<B>(resp: &http::Response<B>) -> Option<u64> {
    resp.headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// TLS to the origin: the system's roots.
fn origin_tls() -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(native.certs);
    rustls::ClientConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()
        .map(|b| b.with_root_certificates(roots).with_no_client_auth())
        .map_err(|e| e.to_string())
}
