//! Upstream origins: pooled keep-alive clients (HTTP/1.1 or h2, optionally
//! TLS), round-robin over targets with failover on connect errors, connect
//! and first-byte timeouts.
//!
//! The request URI carries the authority the upstream should see (for h2 it
//! becomes `:authority`); [`TargetConnector`] decides where the connection
//! actually goes, so pooled connections are keyed by that authority and new
//! ones are spread over the targets.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use cathedral_config::{Scheme, Upstream, UpstreamProtocol};
use hyper::body::Incoming;
use hyper_rustls::{
    FixedServerNameResolver, HttpsConnector, HttpsConnectorBuilder, MaybeHttpsStream,
};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;

use crate::body::{Body, BoxError};
use crate::error::{Error, Result};
use crate::files::Files;

/// Why an upstream exchange failed, as the proxy needs to know it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UpstreamError {
    #[error("connect to upstream {upstream} failed: {reason}")]
    Connect { upstream: String, reason: String },
    #[error("no response headers from upstream {upstream} within {timeout:?}")]
    FirstByteTimeout {
        upstream: String,
        timeout: std::time::Duration,
    },
    #[error("exchange with upstream {upstream} failed: {reason}")]
    Protocol { upstream: String, reason: String },
}

#[derive(Debug)]
pub struct UpstreamClient {
    pub config: Upstream,
    client: Client<TargetConnector, Body>,
}

impl UpstreamClient {
    /// `files` resolves the upstream's `ca_file`.
    pub fn new(config: &Upstream, files: &dyn Files) -> Result<Arc<Self>> {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(config.connect_timeout));
        http.set_keepalive(Some(std::time::Duration::from_secs(60)));

        let tls = client_tls(config, files)?;
        let builder = HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http();
        let builder = match &config.tls.as_ref().and_then(|t| t.server_name.clone()) {
            Some(name) => {
                let name = ServerName::try_from(name.clone()).map_err(|e| Error::Upstream {
                    upstream: config.name.clone(),
                    reason: format!("invalid TLS server name {name:?}: {e}"),
                })?;
                builder.with_server_name_resolver(FixedServerNameResolver::new(name))
            }
            None => builder,
        };
        let inner = match config.protocol {
            UpstreamProtocol::Http1 => builder.enable_http1().wrap_connector(http),
            UpstreamProtocol::Http2 => builder.enable_http2().wrap_connector(http),
        };
        let connector = TargetConnector {
            inner,
            scheme: config.scheme,
            targets: config.targets.clone().into(),
            next: Arc::new(AtomicUsize::new(0)),
        };

        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(config.pool_idle_timeout)
            .pool_max_idle_per_host(config.pool_max_idle)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .http2_only(config.protocol == UpstreamProtocol::Http2)
            .build(connector);
        Ok(Arc::new(Self {
            config: config.clone(),
            client,
        }))
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    pub fn scheme(&self) -> &'static str {
        match self.config.scheme {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }

    /// The first target: the authority sent when the route asks for the
    /// upstream's own name.
    pub fn primary_target(&self) -> &str {
        self.config
            .targets
            .first()
            .map(String::as_str)
            .unwrap_or("")
    }

    /// Sends `req` and waits for the response head within the first-byte
    /// timeout.
    pub async fn send(
        &self,
        req: http::Request<Body>,
    ) -> Result<http::Response<Incoming>, UpstreamError> {
        // The total timeout bounds the wait for the head too.
        let timeout = self
            .config
            .first_byte_timeout
            .min(self.config.total_timeout);
        let target = self.config.name.as_str();
        match tokio::time::timeout(timeout, self.client.request(req)).await {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(e)) if e.is_connect() => Err(UpstreamError::Connect {
                upstream: target.to_owned(),
                reason: error_chain(&e),
            }),
            Ok(Err(e)) => Err(UpstreamError::Protocol {
                upstream: target.to_owned(),
                reason: error_chain(&e),
            }),
            Err(_) => Err(UpstreamError::FirstByteTimeout {
                upstream: target.to_owned(),
                timeout,
            }),
        }
    }
}

fn client_tls(config: &Upstream, files: &dyn Files) -> Result<rustls::ClientConfig> {
    let err = |reason: String| Error::Upstream {
        upstream: config.name.clone(),
        reason,
    };
    let mut roots = RootCertStore::empty();
    match config.tls.as_ref().and_then(|t| t.ca_file.as_ref()) {
        Some(path) => {
            let pem = files
                .read(path)
                .map_err(|e| err(format!("cannot read CA file {}: {e}", path.display())))?;
            let certs = CertificateDer::pem_slice_iter(&pem);
            for cert in certs {
                let cert = cert.map_err(|e| err(format!("CA file {}: {e}", path.display())))?;
                roots
                    .add(cert)
                    .map_err(|e| err(format!("CA file {}: {e}", path.display())))?;
            }
        }
        None if config.scheme == Scheme::Https => {
            let native = rustls_native_certs::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(native.certs);
            if added == 0 {
                return Err(err(
                    "no usable system root certificates found; set ca_file".into()
                ));
            }
        }
        None => {}
    }
    let tls = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| err(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tls)
}

/// `a: b: c` from an error and its sources, for logs and 502 details.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// Connects to the upstream's targets, whatever host the request URI names:
/// round-robin for each new connection, moving on to the next target when
/// one refuses or times out.
#[derive(Clone, Debug)]
pub struct TargetConnector {
    inner: HttpsConnector<HttpConnector>,
    scheme: Scheme,
    targets: Arc<[String]>,
    next: Arc<AtomicUsize>,
}

impl tower_service::Service<http::Uri> for TargetConnector {
    type Response = MaybeHttpsStream<TokioIo<TcpStream>>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, _requested: http::Uri) -> Self::Future {
        let mut inner = self.inner.clone();
        let targets = self.targets.clone();
        let first = self.next.fetch_add(1, Ordering::Relaxed);
        let scheme = match self.scheme {
            Scheme::Http => "http",
            Scheme::Https => "https",
        };
        Box::pin(async move {
            let mut last: BoxError = "upstream has no targets".into();
            for i in 0..targets.len() {
                let target = &targets[(first + i) % targets.len()];
                let uri = http::Uri::builder()
                    .scheme(scheme)
                    .authority(target.as_str())
                    .path_and_query("/")
                    .build()?;
                match tower_service::Service::call(&mut inner, uri).await {
                    Ok(stream) => return Ok(stream),
                    Err(e) => {
                        tracing::debug!(target = %target, error = %e, "upstream target refused; trying the next");
                        last = format!("{target}: {}", error_chain(e.as_ref())).into();
                    }
                }
            }
            Err(last)
        })
    }
}
