//! `cathedral origin serve`: a small static file server for an origin
//! directory (`root/`, `keyset.json`, `heads/`, `manifests/`, `blobs/`).
//! GET and HEAD with strong ETags, conditional requests and single ranges
//! (the static route's code), plus the cache headers a CDN in front of the
//! origin needs: immutable for content-addressed files, revalidate for the
//! mutable documents. Any other static server or bucket can replace it.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderValue, Request, Response, header};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::body::Body;
use crate::content::DirectorySource;
use crate::error::{Error, Result};
use crate::static_files::{self, StaticContent};

/// A running origin server.
#[derive(Debug)]
pub struct OriginServer {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl OriginServer {
    /// Serves `dir` on `listen`.
    pub async fn start(dir: &Path, listen: SocketAddr) -> Result<Self> {
        let source = DirectorySource::new(dir).map_err(|source| Error::StaticRoot {
            route: String::from("origin"),
            path: dir.to_path_buf(),
            source,
        })?;
        let site = Arc::new(StaticContent {
            source: Arc::new(source),
            index: String::from("index.html"),
        });
        let socket = TcpListener::bind(listen)
            .await
            .map_err(|source| Error::Bind {
                addr: listen,
                source,
            })?;
        let addr = socket.local_addr().map_err(|source| Error::Bind {
            addr: listen,
            source,
        })?;
        let (stop, mut stopped) = watch::channel(false);
        info!(%addr, dir = %dir.display(), "origin serving");
        let task = tokio::spawn(async move {
            loop {
                let (stream, peer) = tokio::select! {
                    r = socket.accept() => match r {
                        Ok(x) => x,
                        Err(e) => {
                            warn!(error = %e, "origin accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    },
                    _ = stopped.changed() => return,
                };
                let site = site.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let site = site.clone();
                        async move { Ok::<_, std::convert::Infallible>(handle(&site, req).await) }
                    });
                    let mut builder = http1::Builder::new();
                    builder
                        .timer(hyper_util::rt::TokioTimer::new())
                        .header_read_timeout(Duration::from_secs(10));
                    if let Err(e) = builder.serve_connection(TokioIo::new(stream), svc).await {
                        debug!(%peer, error = %e, "origin connection error");
                    }
                });
            }
        });
        Ok(Self { addr, stop, task })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting; open connections finish on their own.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

async fn handle(site: &StaticContent, req: Request<Incoming>) -> Response<Body> {
    let (parts, _body) = req.into_parts();
    let path = parts.uri.path().to_owned();
    let mut resp = static_files::serve(site, &parts, "/").await;
    let cache = if path.starts_with("/blobs/") || path.starts_with("/manifests/") {
        "public, max-age=31536000, immutable"
    } else {
        "no-cache"
    };
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    debug!(path, status = resp.status().as_u16(), "origin request");
    resp
}
