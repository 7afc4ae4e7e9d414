//! `cathedral bundle push` and `bundle activate`: POSTs to edges' admin
//! APIs over plain HTTP/1.1, with the admin bearer token.

use std::time::Duration;

use bytes::Bytes;
use clap::Args;
use http::{Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;

use crate::cmd::{Failure, Outcome, invalid, runtime};

/// A notification, connection to answer: the edge only schedules a sync.
const NOTIFY_TIMEOUT: Duration = Duration::from_secs(10);
/// An activation, connection to answer: the edge builds the activation
/// (compiling Wasm modules) and may first finish a sync or health watch.
const ACTIVATE_TIMEOUT: Duration = Duration::from_secs(120);
/// Admin answers are small JSON documents.
const MAX_ANSWER: usize = 64 * 1024;

#[derive(Debug, Args)]
pub(crate) struct PushArgs {
    /// An edge's admin API (http://HOST:PORT). Repeatable.
    #[arg(long = "edge", value_name = "ADMIN_URL", required = true)]
    edges: Vec<String>,
    /// The admin bearer token.
    #[arg(
        long,
        env = "CATHEDRAL_ADMIN_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    token: Option<String>,
}

#[derive(Debug, Args)]
pub(crate) struct ActivateArgs {
    /// Activate the bundle the edge ran before its current one (the only
    /// kind of activation there is: to move forward, publish).
    #[arg(long, required = true)]
    previous: bool,
    /// The edge's admin API (http://HOST:PORT).
    #[arg(long, value_name = "ADMIN_URL")]
    admin: String,
    /// The admin bearer token.
    #[arg(
        long,
        env = "CATHEDRAL_ADMIN_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    token: Option<String>,
}

/// An edge's answer.
struct Answer {
    status: StatusCode,
    body: String,
}

fn endpoint(base: &str, path: &str) -> Result<Uri, Failure> {
    let url = format!("{}{path}", base.trim_end_matches('/'));
    let uri: Uri = url
        .parse()
        .map_err(|e| invalid(format!("{base}: not a URL: {e}")))?;
    match uri.scheme_str() {
        Some("http") => {}
        _ => {
            return Err(invalid(format!(
                "{base}: the admin API is reached as http://HOST:PORT"
            )));
        }
    }
    if uri.authority().is_none() {
        return Err(invalid(format!("{base}: no host")));
    }
    Ok(uri)
}

async fn post(uri: Uri, token: Option<&str>, timeout: Duration) -> Result<Answer, String> {
    let authority = uri.authority().cloned().ok_or("no host")?;
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let port = authority.port_u16().unwrap_or(80);
    let exchange = async {
        let stream = tokio::net::TcpStream::connect((host, port))
            .await
            .map_err(|e| format!("cannot connect: {e}"))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let mut req = Request::post(uri.path())
            .header(header::HOST, authority.as_str())
            .header(header::CONTENT_LENGTH, "0");
        if let Some(t) = token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let req = req.body(Empty::<Bytes>::new()).map_err(|e| e.to_string())?;
        let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status();
        let body = Limited::new(resp.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(|e| format!("reading the answer: {e}"))?
            .to_bytes();
        Ok(Answer {
            status,
            body: String::from_utf8_lossy(&body).trim().to_owned(),
        })
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| format!("no answer within {}s", timeout.as_secs()))?
}

fn runtime_rt() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| runtime(format!("cannot start the async runtime: {e}")))
}

pub(crate) fn push(args: PushArgs) -> Outcome {
    let uris = args
        .edges
        .iter()
        .map(|e| endpoint(e, "/bundles/notify"))
        .collect::<Result<Vec<_>, _>>()?;
    let rt = runtime_rt()?;
    let token = args.token.clone();
    let answers = rt.block_on(async move {
        let tasks: Vec<_> = uris
            .into_iter()
            .map(|uri| {
                let token = token.clone();
                tokio::spawn(async move { post(uri, token.as_deref(), NOTIFY_TIMEOUT).await })
            })
            .collect();
        let mut answers = Vec::with_capacity(tasks.len());
        for t in tasks {
            answers.push(t.await.unwrap_or_else(|e| Err(e.to_string())));
        }
        answers
    });
    let mut failed = 0;
    for (edge, answer) in args.edges.iter().zip(answers) {
        match answer {
            Ok(a) if a.status.is_success() => println!("{edge}: {} {}", a.status.as_u16(), a.body),
            Ok(a) => {
                failed += 1;
                eprintln!("error: {edge}: {} {}", a.status, a.body);
            }
            Err(e) => {
                failed += 1;
                eprintln!("error: {edge}: {e}");
            }
        }
    }
    if failed > 0 {
        return Err(runtime(format!(
            "{failed} of {} edge(s) did not take the notification",
            args.edges.len()
        )));
    }
    Ok(())
}

pub(crate) fn activate(args: ActivateArgs) -> Outcome {
    if !args.previous {
        return Err(invalid("--previous is the only activation"));
    }
    let uri = endpoint(&args.admin, "/bundles/previous")?;
    let rt = runtime_rt()?;
    let answer = rt
        .block_on(post(uri, args.token.as_deref(), ACTIVATE_TIMEOUT))
        .map_err(|e| runtime(format!("{}: {e}", args.admin)))?;
    if answer.status.is_success() {
        println!("{}", answer.body);
        Ok(())
    } else {
        Err(runtime(format!(
            "{}: {} {}",
            args.admin, answer.status, answer.body
        )))
    }
}
