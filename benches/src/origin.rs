//! `origin`: a bare hyper HTTP/1.1 keep-alive server answering every GET with one fixed body.
//!
//! It is the upstream of the proxy and cache scenarios and, measured directly, the "ceiling"
//! row: no routing, no headers beyond what hyper writes (plus `Cache-Control` and `ETag` when
//! asked for), the body a shared `Bytes` cloned per response. It counts the requests it answers
//! and reports the count at [`STATS_PATH`] (not counted), so a scenario can show that cache
//! hits never reached it.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context as _, bail};
use bytes::Bytes;
use http::header::{ALLOW, CACHE_CONTROL, CONTENT_TYPE, ETAG, HeaderValue, IF_NONE_MATCH};
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

/// A GET of this path answers the number of requests served so far (every request except
/// these), as a decimal number in plain text.
pub const STATS_PATH: &str = "/__cathedral-bench/requests";

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
    /// `Cache-Control` sent with every 200, e.g. "public, max-age=3600" [default: none].
    #[arg(long, value_name = "VALUE")]
    pub cache_control: Option<String>,
    /// `ETag` sent with every 200, e.g. '"v1"'; a GET whose `If-None-Match` matches it gets
    /// 304 [default: none].
    #[arg(long, value_name = "VALUE")]
    pub etag: Option<String>,
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
    headers: ReplyHeaders,
}

/// Optional headers of every 200.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplyHeaders {
    pub cache_control: Option<HeaderValue>,
    pub etag: Option<HeaderValue>,
}

impl ReplyHeaders {
    /// Validates `--cache-control` and `--etag`: visible ASCII, and an ETag in the RFC 9110
    /// form `"opaque"` or `W/"opaque"`.
    pub fn parse(cache_control: Option<&str>, etag: Option<&str>) -> anyhow::Result<Self> {
        let value = |flag: &str, v: &str| -> anyhow::Result<HeaderValue> {
            if v.is_empty() || !v.bytes().all(|b| b == b' ' || b.is_ascii_graphic()) {
                bail!("{flag} {v:?} must be non-empty visible ASCII");
            }
            Ok(HeaderValue::from_str(v)?)
        };
        let cache_control = cache_control
            .map(|v| value("--cache-control", v))
            .transpose()?;
        let etag = etag
            .map(|v| {
                let opaque = v.strip_prefix("W/").unwrap_or(v);
                let quoted = opaque.len() >= 2
                    && opaque.starts_with('"')
                    && opaque.ends_with('"')
                    && !opaque[1..opaque.len() - 1].contains('"');
                if !quoted {
                    bail!("--etag {v:?} must be a quoted entity tag like '\"v1\"' or 'W/\"v1\"'");
                }
                value("--etag", v)
            })
            .transpose()?;
        Ok(Self {
            cache_control,
            etag,
        })
    }
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
        let headers = ReplyHeaders::parse(args.cache_control.as_deref(), args.etag.as_deref())?;
        Ok(Self {
            listen: args.listen,
            body_size: args.body_size,
            runtime: args.runtime,
            threads: args.threads,
            exit_after,
            headers,
        })
    }
}

/// Entry point of `cathedral-bench origin`.
pub fn main(args: OriginArgs) -> anyhow::Result<()> {
    let config = OriginConfig::try_from(args)?;
    let runtime = build_runtime(config.runtime, config.threads)?;
    runtime.block_on(async {
        let origin = Origin::bind(config.listen, config.body_size, config.headers.clone()).await?;
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
    reply: Arc<Reply>,
}

/// What every request gets, shared by all connections.
#[derive(Debug)]
struct Reply {
    body: Bytes,
    headers: ReplyHeaders,
    /// Requests answered, [`STATS_PATH`] excluded.
    served: AtomicU64,
}

impl Origin {
    /// Binds `addr` (port 0 for any free port) with a body of `body_size` bytes, sending
    /// `headers` with every 200.
    pub async fn bind(
        addr: SocketAddr,
        body_size: usize,
        headers: ReplyHeaders,
    ) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding {addr}"))?;
        // A repeating printable pattern, so a captured body is recognisable.
        let body: Vec<u8> = (0..body_size).map(|i| b'a' + (i % 26) as u8).collect();
        Ok(Self {
            listener,
            reply: Arc::new(Reply {
                body: Bytes::from(body),
                headers,
                served: AtomicU64::new(0),
            }),
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
            let reply = Arc::clone(&self.reply);
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<Incoming>| {
                    let response = reply.respond(&req);
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

impl Reply {
    /// Counts the request, then answers it (see [`respond`]); [`STATS_PATH`] gets the count.
    fn respond<B>(&self, req: &Request<B>) -> Response<Full<Bytes>> {
        if req.uri().path() == STATS_PATH {
            let count = self.served.load(Ordering::Relaxed);
            return Response::new(Full::new(Bytes::from(count.to_string())));
        }
        self.served.fetch_add(1, Ordering::Relaxed);
        respond(
            req.method(),
            req.headers().get(IF_NONE_MATCH),
            &self.headers,
            self.body.clone(),
        )
    }
}

/// 200 with the fixed body (and the configured headers) for GET and HEAD, 304 when
/// `If-None-Match` matches the configured ETag, 405 for other methods.
fn respond(
    method: &Method,
    if_none_match: Option<&HeaderValue>,
    headers: &ReplyHeaders,
    body: Bytes,
) -> Response<Full<Bytes>> {
    if method == Method::GET || method == Method::HEAD {
        let not_modified = match (&headers.etag, if_none_match) {
            (Some(etag), Some(condition)) => none_match_fails(condition, etag),
            _ => false,
        };
        let mut response = if not_modified {
            let mut r = Response::new(Full::new(Bytes::new()));
            *r.status_mut() = StatusCode::NOT_MODIFIED;
            r
        } else {
            let mut r = Response::new(Full::new(body));
            r.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            r
        };
        if let Some(v) = &headers.cache_control {
            response.headers_mut().insert(CACHE_CONTROL, v.clone());
        }
        if let Some(v) = &headers.etag {
            response.headers_mut().insert(ETAG, v.clone());
        }
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

/// Whether `If-None-Match: condition` is *false* for a representation with `etag`, i.e. the
/// answer is 304: `*`, or any listed tag weakly equal to `etag` (RFC 9110 §13.1.2).
fn none_match_fails(condition: &HeaderValue, etag: &HeaderValue) -> bool {
    let (Ok(condition), Ok(etag)) = (condition.to_str(), etag.to_str()) else {
        return false;
    };
    let opaque = |tag: &str| {
        tag.trim()
            .strip_prefix("W/")
            .unwrap_or(tag.trim())
            .to_owned()
    };
    let ours = opaque(etag);
    condition.trim() == "*" || condition.split(',').any(|tag| opaque(tag) == ours)
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
            cache_control: None,
            etag: None,
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
        let none = ReplyHeaders::default();
        let plain = respond(&Method::GET, None, &none, body.clone());
        assert_eq!(plain.status(), StatusCode::OK);
        assert!(plain.headers().get(CACHE_CONTROL).is_none());
        assert!(plain.headers().get(ETAG).is_none());
        assert_eq!(
            respond(&Method::HEAD, None, &none, body.clone()).status(),
            StatusCode::OK
        );
        let post = respond(&Method::POST, None, &none, body);
        assert_eq!(post.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(
            post.headers().get(ALLOW).map(|v| v.as_bytes()),
            Some(&b"GET, HEAD"[..])
        );
    }

    #[test]
    fn reply_headers_are_validated_and_sent() -> anyhow::Result<()> {
        let h = ReplyHeaders::parse(Some("public, max-age=3600"), Some("\"v1\""))?;
        let r = respond(&Method::GET, None, &h, Bytes::from_static(b"abc"));
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(
            r.headers().get(CACHE_CONTROL).map(|v| v.as_bytes()),
            Some(&b"public, max-age=3600"[..])
        );
        assert_eq!(
            r.headers().get(ETAG).map(|v| v.as_bytes()),
            Some(&b"\"v1\""[..])
        );
        assert!(ReplyHeaders::parse(None, Some("W/\"x\"")).is_ok());
        for bad in ["v1", "\"v1", "\"a\"b\"", ""] {
            assert!(ReplyHeaders::parse(None, Some(bad)).is_err(), "{bad:?}");
        }
        assert!(ReplyHeaders::parse(Some(""), None).is_err());
        assert!(ReplyHeaders::parse(Some("max-age=1\n"), None).is_err());
        let mut args = args("127.0.0.1:0")?;
        args.etag = Some("nope".into());
        assert!(OriginConfig::try_from(args).is_err());
        Ok(())
    }

    #[test]
    fn if_none_match_gets_304_with_the_validators() -> anyhow::Result<()> {
        let h = ReplyHeaders::parse(Some("max-age=60"), Some("\"v1\""))?;
        let status = |inm: &'static str| {
            respond(
                &Method::GET,
                Some(&HeaderValue::from_static(inm)),
                &h,
                Bytes::from_static(b"abc"),
            )
        };
        for matching in ["\"v1\"", "W/\"v1\"", "\"x\", \"v1\"", "*"] {
            let r = status(matching);
            assert_eq!(r.status(), StatusCode::NOT_MODIFIED, "{matching}");
            assert!(r.headers().get(ETAG).is_some() && r.headers().get(CACHE_CONTROL).is_some());
        }
        assert_eq!(status("\"v2\"").status(), StatusCode::OK);
        // Without a configured ETag there is nothing to match.
        let r = respond(
            &Method::GET,
            Some(&HeaderValue::from_static("*")),
            &ReplyHeaders::default(),
            Bytes::new(),
        );
        assert_eq!(r.status(), StatusCode::OK);
        Ok(())
    }

    #[tokio::test]
    async fn requests_are_counted_except_the_stats_path() -> anyhow::Result<()> {
        let reply = Reply {
            body: Bytes::from_static(b"abc"),
            headers: ReplyHeaders::default(),
            served: AtomicU64::new(0),
        };
        let get = |path: &str| -> anyhow::Result<Response<Full<Bytes>>> {
            Ok(reply.respond(&Request::get(path).body(())?))
        };
        get("/")?;
        get("/anything?q=1")?;
        let stats = |r: Response<Full<Bytes>>| format!("{:?}", r.into_body());
        assert!(stats(get(STATS_PATH)?).contains("b\"2\""));
        assert!(
            stats(get(STATS_PATH)?).contains("b\"2\""),
            "stats reads are not counted"
        );
        assert_eq!(reply.served.load(Ordering::Relaxed), 2);
        Ok(())
    }
}
