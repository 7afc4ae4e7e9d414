//! Who the client is: the TCP peer, unless that peer is a trusted proxy, in
//! which case `X-Forwarded-For` (or `Forwarded: for=`) names the client.
//!
//! Rate limits, geo lookups and access logs all use this one answer.

use std::net::IpAddr;

use http::HeaderMap;
use ipnet::IpNet;

pub fn is_trusted(ip: IpAddr, trusted: &[IpNet]) -> bool {
    trusted.iter().any(|net| net.contains(&ip))
}

/// Walks the forwarding chain right to left, skipping trusted proxies; the
/// first untrusted hop is the client. A malformed entry stops the walk: we
/// cannot believe anything to its left, so the last hop we did believe is
/// the answer.
pub fn client_ip(peer: IpAddr, trusted: &[IpNet], headers: &HeaderMap) -> IpAddr {
    let peer = peer.to_canonical();
    if !is_trusted(peer, trusted) {
        return peer;
    }
    let chain = forwarded_chain(headers);
    let mut current = peer;
    for hop in chain.iter().rev() {
        match hop {
            Some(ip) => {
                current = ip.to_canonical();
                if !is_trusted(current, trusted) {
                    return current;
                }
            }
            None => return current,
        }
    }
    current
}

/// The hops named by `X-Forwarded-For`, or by `Forwarded` when there is no
/// `X-Forwarded-For`; `None` marks an entry we could not parse.
fn forwarded_chain(headers: &HeaderMap) -> Vec<Option<IpAddr>> {
    let xff: Vec<Option<IpAddr>> = headers
        .get_all("x-forwarded-for")
        .iter()
        .flat_map(|v| match v.to_str() {
            Ok(s) => s
                .split(',')
                .map(|p| parse_hop(p.trim()))
                .collect::<Vec<_>>(),
            Err(_) => vec![None],
        })
        .collect();
    if !xff.is_empty() {
        return xff;
    }
    headers
        .get_all(http::header::FORWARDED)
        .iter()
        .flat_map(|v| match v.to_str() {
            Ok(s) => s
                .split(',')
                .map(|element| {
                    element
                        .split(';')
                        .filter_map(|pair| pair.split_once('='))
                        .find(|(k, _)| k.trim().eq_ignore_ascii_case("for"))
                        .and_then(|(_, v)| parse_hop(v.trim().trim_matches('"')))
                })
                .collect::<Vec<_>>(),
            Err(_) => vec![None],
        })
        .collect()
}

/// Accepts `1.2.3.4`, `1.2.3.4:5678`, `::1`, `[::1]` and `[::1]:5678`.
fn parse_hop(s: &str) -> Option<IpAddr> {
    if let Ok(ip) = s.parse() {
        return Some(ip);
    }
    if let Some(rest) = s.strip_prefix('[') {
        let end = rest.find(']')?;
        return rest[..end].parse().ok();
    }
    let (host, port) = s.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    host.parse().ok()
}

/// `for=` value per RFC 7239: IPv6 addresses quoted and bracketed.
pub fn forwarded_node(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("\"[{v6}]\""),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn check(peer: &str, xff: &[&str], forwarded: &[&str], expected: &str) {
        let trusted: Vec<IpNet> = ["10.0.0.0/8", "127.0.0.1/32", "2001:db8::/32"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let mut headers = HeaderMap::new();
        for v in xff {
            headers.append("x-forwarded-for", HeaderValue::from_str(v).unwrap());
        }
        for v in forwarded {
            headers.append("forwarded", HeaderValue::from_str(v).unwrap());
        }
        let got = client_ip(peer.parse().unwrap(), &trusted, &headers);
        assert_eq!(
            got,
            expected.parse::<IpAddr>().unwrap(),
            "{peer} {xff:?} {forwarded:?}"
        );
    }

    #[test]
    fn untrusted_peer_is_the_client_whatever_it_claims() {
        check("203.0.113.9", &["1.1.1.1"], &[], "203.0.113.9");
        check("203.0.113.9", &[], &["for=1.1.1.1"], "203.0.113.9");
    }

    #[test]
    fn trusted_peer_walks_the_chain_from_the_right() {
        check("10.1.1.1", &["198.51.100.7"], &[], "198.51.100.7");
        check(
            "10.1.1.1",
            &["6.6.6.6, 198.51.100.7, 10.2.2.2"],
            &[],
            "198.51.100.7",
        );
        check(
            "10.1.1.1",
            &["6.6.6.6", "198.51.100.7"],
            &[],
            "198.51.100.7",
        );
        check("10.1.1.1", &["10.3.3.3, 10.2.2.2"], &[], "10.3.3.3");
        check("10.1.1.1", &[], &[], "10.1.1.1");
        check("127.0.0.1", &["198.51.100.7:4711"], &[], "198.51.100.7");
        check("127.0.0.1", &["[2001:db9::1]:80"], &[], "2001:db9::1");
        check("::ffff:10.1.1.1", &["198.51.100.7"], &[], "198.51.100.7");
    }

    #[test]
    fn garbage_stops_the_walk_at_the_last_believed_hop() {
        check(
            "10.1.1.1",
            &["6.6.6.6, nonsense, 10.2.2.2"],
            &[],
            "10.2.2.2",
        );
        check("10.1.1.1", &["nonsense"], &[], "10.1.1.1");
    }

    #[test]
    fn forwarded_header_when_no_xff() {
        check(
            "10.1.1.1",
            &[],
            &["for=198.51.100.7;proto=https"],
            "198.51.100.7",
        );
        check(
            "10.1.1.1",
            &[],
            &["for=\"[2001:db9::1]:4711\""],
            "2001:db9::1",
        );
        check("10.1.1.1", &[], &["for=6.6.6.6, for=10.9.9.9"], "6.6.6.6");
        check("10.1.1.1", &[], &["for=6.6.6.6, for=7.7.7.7"], "7.7.7.7");
    }

    #[test]
    fn forwarded_node_quotes_ipv6() {
        assert_eq!(forwarded_node("1.2.3.4".parse().unwrap()), "1.2.3.4");
        assert_eq!(forwarded_node("::1".parse().unwrap()), "\"[::1]\"");
    }
}
