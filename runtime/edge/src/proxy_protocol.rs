//! Reading a PROXY protocol (v1 or v2) header at the start of a connection
//! from a trusted load balancer.

use std::net::{IpAddr, SocketAddr};

use ppp::PartialResult;
use tokio::io::{AsyncRead, AsyncReadExt};

/// v1 is at most 107 bytes; v2 carries TLVs, which we bound.
const MAX_HEADER: usize = 4096;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProxyHeaderError {
    #[error("connection closed before the PROXY header was complete")]
    Eof,
    #[error("invalid PROXY header: {0}")]
    Invalid(String),
    #[error("PROXY header longer than {MAX_HEADER} bytes")]
    TooLong,
    #[error("read error: {0}")]
    Io(#[from] std::io::Error),
}

/// What the header said, plus whatever bytes followed it in the same reads.
#[derive(Debug)]
pub struct ProxyHeader {
    /// The original client, or `None` for `LOCAL` / `UNKNOWN` (health checks
    /// from the balancer itself: the TCP peer stays the client).
    pub source: Option<SocketAddr>,
    pub rest: Vec<u8>,
}

pub async fn read_header<R: AsyncRead + Unpin>(
    io: &mut R,
) -> Result<ProxyHeader, ProxyHeaderError> {
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 512];
    loop {
        let n = io.read(&mut chunk).await?;
        if n == 0 {
            return Err(ProxyHeaderError::Eof);
        }
        buf.extend_from_slice(&chunk[..n]);
        let parsed = ppp::HeaderResult::parse(&buf);
        if parsed.is_incomplete() {
            if buf.len() >= MAX_HEADER {
                return Err(ProxyHeaderError::TooLong);
            }
            continue;
        }
        let (consumed, source) = match parsed {
            ppp::HeaderResult::V1(Ok(h)) => {
                let source = match h.addresses {
                    ppp::v1::Addresses::Tcp4(a) => {
                        Some(SocketAddr::new(IpAddr::V4(a.source_address), a.source_port))
                    }
                    ppp::v1::Addresses::Tcp6(a) => {
                        Some(SocketAddr::new(IpAddr::V6(a.source_address), a.source_port))
                    }
                    ppp::v1::Addresses::Unknown => None,
                };
                (h.header.len(), source)
            }
            ppp::HeaderResult::V2(Ok(h)) => {
                let source = match (h.command, h.addresses) {
                    (ppp::v2::Command::Local, _) => None,
                    (_, ppp::v2::Addresses::IPv4(a)) => {
                        Some(SocketAddr::new(IpAddr::V4(a.source_address), a.source_port))
                    }
                    (_, ppp::v2::Addresses::IPv6(a)) => {
                        Some(SocketAddr::new(IpAddr::V6(a.source_address), a.source_port))
                    }
                    _ => None,
                };
                (h.len(), source)
            }
            ppp::HeaderResult::V1(Err(e)) => return Err(ProxyHeaderError::Invalid(e.to_string())),
            ppp::HeaderResult::V2(Err(e)) => return Err(ProxyHeaderError::Invalid(e.to_string())),
        };
        let rest = buf.get(consumed..).map(<[u8]>::to_vec).unwrap_or_default();
        return Ok(ProxyHeader { source, rest });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn parse(input: &[u8]) -> Result<ProxyHeader, ProxyHeaderError> {
        let mut io = input;
        read_header(&mut io).await
    }

    #[tokio::test]
    async fn v1_tcp4_with_trailing_request() {
        let h = parse(b"PROXY TCP4 198.51.100.7 10.0.0.1 4711 80\r\nGET / HTTP/1.1\r\n")
            .await
            .unwrap();
        assert_eq!(h.source, Some("198.51.100.7:4711".parse().unwrap()));
        assert_eq!(h.rest, b"GET / HTTP/1.1\r\n");
    }

    #[tokio::test]
    async fn v1_unknown_keeps_peer() {
        let h = parse(b"PROXY UNKNOWN\r\n").await.unwrap();
        assert_eq!(h.source, None);
    }

    #[tokio::test]
    async fn v2_tcp6() {
        let mut input = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
        input.push(0x21); // v2, PROXY
        input.push(0x21); // AF_INET6, STREAM
        input.extend_from_slice(&36u16.to_be_bytes());
        input.extend_from_slice(
            &"2001:db8::7"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets(),
        );
        input.extend_from_slice(
            &"2001:db8::1"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets(),
        );
        input.extend_from_slice(&4711u16.to_be_bytes());
        input.extend_from_slice(&443u16.to_be_bytes());
        input.extend_from_slice(b"rest");
        let h = parse(&input).await.unwrap();
        assert_eq!(h.source, Some("[2001:db8::7]:4711".parse().unwrap()));
        assert_eq!(h.rest, b"rest");
    }

    #[tokio::test]
    async fn garbage_and_eof_are_errors() {
        assert!(matches!(
            parse(b"GET / HTTP/1.1\r\n\r\n").await,
            Err(ProxyHeaderError::Invalid(_))
        ));
        assert!(matches!(
            parse(b"PROXY TCP4 1.2.3.4").await,
            Err(ProxyHeaderError::Eof)
        ));
    }
}
