//! `origin`: a bare hyper HTTP/1.1 keep-alive server answering every GET with one fixed body.
//!
//! It is the upstream of the proxy scenario and, measured directly, the "ceiling" row: no
//! routing, no headers beyond what hyper writes, the body a shared `Bytes` cloned per response.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context as _, bail};
use bytes::Bytes;
use http::header::{ALLOW, CONTENT_TYPE, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// Largest body the origin will serve (64 MiB).
pub const MAX_BODY_SIZE: usize = 64 << 20;

/// Line 1 of stdout is `listening on <addr>` so a parent can bind port 0 and read the port.
pub const LISTENING_PREFIX: &str = "listening on ";

/// Arguments of `cathedral-bench origin`.
#[derive(clap::Args, Debug, Clone)]
pub struct OriginArgs {
    /// Address to listen on (loopback only); port 0 picks a free port, printed on stdout line 1.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// Size in bytes of the body every GET receives.
    #[arg(long, default_value_t = 64)]
    pub body_size: usize,
    /// Tokio runtime flavour: one thread, or a work-stealing pool.
    #[arg(long, value_enum, default_value_t = RuntimeFlavor::CurrentThread)]
    pub runtime: RuntimeFlavor,
    /// Worker threads of the multi-thread runtime [default: the CPUs this process may use].
    #[arg(long)]
    pub threads: Option<usize>,
    /// Exit after this many seconds even without a signal (a safety net for child processes).
    #[arg(long, default_value_t = 86_400.0)]
    pub exit_after: f64,
}

/// Which tokio runtime to run a server or generator on.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuntimeFlavor {
    CurrentThread,
    MultiThread,
}

/// Builds a tokio runtime of the given flavour; `threads` only applies to the multi-thread one.
pub fn build_runtime(
    flavor: RuntimeFlavor,
    threads: Option<usize>,
) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut builder = match flavor {
        RuntimeFlavor::CurrentThread => tokio::runtime::Builder::new_current_thread(),
        RuntimeFlavor::MultiThread => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            if let Some(n) = threads {
                b.worker_threads(n);
            }
            b
        }
    };
    builder
        .enable_all()
        .build()
        .context("building the tokio runtime")
}

/// Validated `origin` settings.
#[derive(Debug, Clone)]
struct OriginConfig {
    listen: SocketAddr,
    body_size: usize,
    runtime: RuntimeFlavor,
    threads: Option<usize>,
    exit_after: Duration,
}

impl TryFrom<OriginArgs> for OriginConfig {
    type Error = anyhow::Error;

    fn try_from(args: OriginArgs) -> anyhow::Result<Self> {
        if !args.listen.ip().is_loopback() {
            bail!("--listen {} is not a loopback address", args.listen);
        }
        if args.body_size > MAX_BODY_SIZE {
            bail!("--body-size {} exceeds {MAX_BODY_SIZE}", args.body_size);
        }
        if let Some(n) = args.threads {
            if !(1..=256).contains(&n) {
                bail!("--threads must be between 1 and 256, not {n}");
            }
            if args.runtime == RuntimeFlavor::CurrentThread && n != 1 {
                bail!("--threads {n} needs --runtime multi-thread");
            }
        }
        let exit_after =
            crate::load::seconds("--exit-after", args.exit_after, false, 7.0 * 86_400.0)?;
        Ok(Self {
            listen: args.listen,
            body_size: args.body_size,
            runtime: args.runtime,
            threads: args.threads,
            exit_after,
        })
    }
}

/// Entry point of `cathedral-bench origin`.
pub fn main(args: OriginArgs) -> anyhow::Result<()> {
    let config = OriginConfig::try_from(args)?;
    let runtime = build_runtime(config.runtime, config.threads)?;
    runtime.block_on(async {
        let origin = Origin::bind(config.listen, config.body_size).await?;
        let addr = origin.local_addr()?;
        {
            use std::io::Write as _;
            let mut stdout = std::io::stdout().lock();
            writeln!(stdout, "{LISTENING_PREFIX}{addr}")?;
            stdout.flush()?;
        }
        origin.serve_until(shutdown_signal(config.exit_after)).await
    })
}

/// Parses `listening on 127.0.0.1:PORT`, the first stdout line of `origin`.
pub fn parse_listening_line(line: &str) -> Option<SocketAddr> {
    line.trim().strip_prefix(LISTENING_PREFIX)?.parse().ok()
}

/// Resolves on Ctrl-C, SIGTERM, or after `exit_after`.
async fn shutdown_signal(exit_after: Duration) {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
        () = tokio::time::sleep(exit_after) => {}
    }
}

/// A bound fixed-body origin, not yet serving.
#[derive(Debug)]
pub struct Origin {
    listener: TcpListener,
    body: Bytes,
}

impl Origin {
    /// Binds `addr` (port 0 for any free port) with a body of `body_size` bytes.
    pub async fn bind(addr: SocketAddr, body_size: usize) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding {addr}"))?;
        // A repeating printable pattern, so a captured body is recognisable.
        let body: Vec<u8> = (0..body_size).map(|i| b'a' + (i % 26) as u8).collect();
        Ok(Self {
            listener,
            body: Bytes::from(body),
        })
    }

    pub fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        Ok(self.listener.local_addr()?)
    }

    /// Accepts connections until `shutdown` resolves; each connection is served on its own task.
    pub async fn serve_until(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let mut shutdown = std::pin::pin!(shutdown);
        // Bounded by `shutdown`, which always includes a timer when run from the CLI.
        loop {
            let accepted = tokio::select! {
                () = &mut shutdown => return Ok(()),
                accepted = self.listener.accept() => accepted,
            };
            let stream = match accepted {
                Ok((stream, _peer)) => stream,
                Err(e) => {
                    // Typically EMFILE; back off briefly instead of spinning.
                    eprintln!("origin: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
            if let Err(e) = stream.set_nodelay(true) {
                eprintln!("origin: TCP_NODELAY failed: {e}");
            }
            let body = self.body.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<Incoming>| {
                    let response = respond(req.method(), body.clone());
                    async move { Ok::<_, Infallible>(response) }
                });
                // Errors here are client disconnects; nothing to do about them.
                let _ = http1::Builder::new()
                    .keep_alive(true)
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    }
}

/// 200 with the fixed body for GET and HEAD, 405 otherwise.
fn respond(method: &Method, body: Bytes) -> Response<Full<Bytes>> {
    if method == Method::GET || method == Method::HEAD {
        let mut response = Response::new(Full::new(body));
        response.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        response
    } else {
        let mut response = Response::new(Full::new(Bytes::new()));
        *response.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(listen: &str) -> anyhow::Result<OriginArgs> {
        Ok(OriginArgs {
            listen: listen.parse()?,
            body_size: 64,
            runtime: RuntimeFlavor::CurrentThread,
            threads: None,
            exit_after: 10.0,
        })
    }

    #[test]
    fn arguments_are_validated() -> anyhow::Result<()> {
        assert!(OriginConfig::try_from(args("127.0.0.1:0")?).is_ok());
        assert!(OriginConfig::try_from(args("[::1]:0")?).is_ok());
        let err = |a: OriginArgs| OriginConfig::try_from(a).err().map(|e| e.to_string());
        assert_eq!(
            err(args("0.0.0.0:0")?).as_deref(),
            Some("--listen 0.0.0.0:0 is not a loopback address")
        );
        let mut big = args("127.0.0.1:0")?;
        big.body_size = MAX_BODY_SIZE + 1;
        assert!(err(big).is_some());
        let mut threads = args("127.0.0.1:0")?;
        threads.threads = Some(2);
        assert_eq!(
            err(threads.clone()).as_deref(),
            Some("--threads 2 needs --runtime multi-thread")
        );
        threads.runtime = RuntimeFlavor::MultiThread;
        assert!(err(threads).is_none());
        let mut never = args("127.0.0.1:0")?;
        never.exit_after = 0.0;
        assert!(err(never).is_some());
        Ok(())
    }

    #[test]
    fn listening_line_round_trips() {
        assert_eq!(
            parse_listening_line("listening on 127.0.0.1:8080\n"),
            Some(SocketAddr::from(([127, 0, 0, 1], 8080)))
        );
        assert_eq!(parse_listening_line("listening on nowhere"), None);
        assert_eq!(parse_listening_line("127.0.0.1:8080"), None);
    }

    #[test]
    fn only_get_and_head_get_the_body() {
        let body = Bytes::from_static(b"abc");
        assert_eq!(respond(&Method::GET, body.clone()).status(), StatusCode::OK);
        assert_eq!(
            respond(&Method::HEAD, body.clone()).status(),
            StatusCode::OK
        );
        let post = respond(&Method::POST, body);
        assert_eq!(post.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(
            post.headers().get(ALLOW).map(|v| v.as_bytes()),
            Some(&b"GET, HEAD"[..])
        );
    }
}
