//! One-shot HTTP/1.1 GETs to loopback for the scenario runner's checks: a probe whose headers
//! are inspected (`Cache-Status`), and reading the origin's request counter.

use std::time::Duration;

use anyhow::{Context as _, bail};
use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt as _, Empty, Limited};
use hyper_util::rt::TokioIo;

use crate::load::Target;

/// Largest body a one-shot GET reads (the cache scenario's objects are far smaller).
const MAX_BODY: usize = 64 << 20;

/// A whole response.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// GETs `url` (loopback `http://` only, as for `load`) on a fresh connection, reading the
/// whole body; everything within `within`.
pub async fn get(url: &str, within: Duration) -> anyhow::Result<Fetched> {
    get_with(url, &[], within).await
}

/// [`get`] with extra request headers.
pub async fn get_with(
    url: &str,
    headers: &[(http::HeaderName, http::HeaderValue)],
    within: Duration,
) -> anyhow::Result<Fetched> {
    let target = Target::parse(url)?;
    tokio::time::timeout(within, async {
        let stream = tokio::net::TcpStream::connect(target.addr)
            .await
            .with_context(|| format!("connecting to {}", target.addr))?;
        let (mut sender, connection) = hyper::client::conn::http1::Builder::new()
            .handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
            .await?;
        let driver = tokio::spawn(connection);
        let request: Request<Empty<Bytes>> = target.request_with(headers);
        let response = sender.send_request(request).await?;
        let (parts, body) = response.into_parts();
        let body = Limited::new(body, MAX_BODY)
            .collect()
            .await
            .map_err(|e| anyhow::anyhow!("reading the body of {url}: {e}"))?
            .to_bytes();
        drop(sender);
        driver.abort();
        Ok(Fetched {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    })
    .await
    .with_context(|| format!("GET {url} did not finish within {within:?}"))?
}

/// Reads a counter served as a decimal number in plain text (the origin's
/// [`crate::origin::STATS_PATH`]).
pub async fn read_counter(url: &str) -> anyhow::Result<u64> {
    let fetched = get(url, Duration::from_secs(5)).await?;
    if fetched.status != StatusCode::OK {
        bail!("GET {url} answered {}", fetched.status);
    }
    parse_counter(&fetched.body).with_context(|| format!("GET {url} did not answer a number"))
}

/// A decimal count, surrounding whitespace allowed.
pub fn parse_counter(body: &[u8]) -> Option<u64> {
    std::str::from_utf8(body).ok()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::origin::{Origin, ReplyHeaders, STATS_PATH};
    use std::net::{Ipv4Addr, SocketAddr};

    #[test]
    fn counters_parse() {
        assert_eq!(parse_counter(b"42"), Some(42));
        assert_eq!(parse_counter(b" 7\n"), Some(7));
        assert_eq!(parse_counter(b"-1"), None);
        assert_eq!(parse_counter(b"x"), None);
        assert_eq!(parse_counter(b""), None);
    }

    #[tokio::test]
    async fn a_get_sees_headers_and_the_origin_counts_it() -> anyhow::Result<()> {
        let headers = ReplyHeaders::parse(Some("public, max-age=3600"), Some("\"v1\""))?;
        let origin = Origin::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), 100, headers).await?;
        let addr = origin.local_addr()?;
        let server = tokio::spawn(origin.serve_until(tokio::time::sleep(Duration::from_secs(20))));
        let base = format!("http://{addr}");
        let fetched = get(&format!("{base}/x"), Duration::from_secs(5)).await?;
        assert_eq!(fetched.status, StatusCode::OK);
        assert_eq!(fetched.body.len(), 100);
        assert_eq!(
            fetched
                .headers
                .get(http::header::CACHE_CONTROL)
                .map(|v| v.as_bytes()),
            Some(&b"public, max-age=3600"[..])
        );
        get(&format!("{base}/y"), Duration::from_secs(5)).await?;
        assert_eq!(read_counter(&format!("{base}{STATS_PATH}")).await?, 2);
        assert!(
            get("http://10.0.0.1/", Duration::from_secs(1))
                .await
                .is_err()
        );
        server.abort();
        Ok(())
    }
}
