//! HTTP/1.1, h2c with prior knowledge, and TLS: ALPN h2, SNI certificate
//! choice, TLS 1.3 by default with 1.2 opt-in, certificate reload.

use std::path::Path;

use cathedral_config::{Bootstrap, Certificate, TlsListener, TlsVersion};
use cathedral_e2e::*;
use http::{Request, StatusCode, Version};
use http_body_util::BodyExt;

#[tokio::test]
async fn h2c_prior_knowledge() {
    let origin = Origin::start().await;
    let node = TestNode::proxy_to(&origin).await;
    let resp = tokio::time::timeout(
        PATIENCE,
        h2c_client().request(Request::get(node.url("/echo")).body(full("")).unwrap()),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.version(), Version::HTTP_2);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let seen = echo_headers(&String::from_utf8_lossy(&body));
    // An h2 client sends :authority, never Host; the origin still gets Host.
    assert_eq!(seen["host"], vec![node.addr().to_string()]);
    assert_eq!(seen["via"], vec!["2 cathedral"]);
}

fn tls_listener(b: &mut Bootstrap, dir: &Path, min_version: TlsVersion) {
    let (cert_a, key_a, _) = write_cert(dir, "a", &["a.test"]);
    let (cert_b, key_b, _) = write_cert(dir, "b", &["b.test", "*.b.test"]);
    b.tls_listeners.push(TlsListener {
        addr: "127.0.0.1:0".parse().unwrap(),
        proxy_protocol: false,
        min_version,
        certificates: vec![
            Certificate {
                server_names: vec!["a.test".into()],
                cert: cert_a,
                key: key_a,
            },
            Certificate {
                server_names: vec!["b.test".into(), "*.b.test".into()],
                cert: cert_b,
                key: key_b,
            },
        ],
    });
}

fn cert_der(dir: &Path, stem: &str) -> rustls_pki_types::CertificateDer<'static> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::CertificateDer::from_pem_file(dir.join(format!("{stem}.pem"))).unwrap()
}

#[tokio::test]
async fn tls_alpn_h2_and_http11_with_sni() {
    let origin = Origin::start().await;
    let node = TestNode::start_with(
        &proxy_config(&origin.url()),
        |_| {},
        |b, dir| tls_listener(b, dir, TlsVersion::Tls13),
    )
    .await;
    let addr = node.handle.tls_addrs()[0];
    let a = cert_der(node.dir.path(), "a");
    let b = cert_der(node.dir.path(), "b");

    let tls = tls_connect(addr, "a.test", &a, &[b"h2"], &[&rustls::version::TLS13])
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (status, version, body) = get_over(tls, true, "https://a.test/hello").await;
    assert_eq!(
        (status, version, body.as_str()),
        (StatusCode::OK, Version::HTTP_2, "origin:/hello")
    );

    let tls = tls_connect(
        addr,
        "www.b.test",
        &b,
        &[b"http/1.1"],
        &[&rustls::version::TLS13],
    )
    .await
    .unwrap();
    let (status, version, _) = get_over(tls, false, "https://www.b.test/").await;
    assert_eq!((status, version), (StatusCode::OK, Version::HTTP_11));

    // The b certificate does not verify for a.test: SNI picked a's.
    assert!(
        tls_connect(addr, "a.test", &b, &[b"h2"], &[&rustls::version::TLS13])
            .await
            .is_err()
    );
}

#[tokio::test]
async fn tls12_is_refused_unless_enabled() {
    let origin = Origin::start().await;
    let strict = TestNode::start_with(
        &proxy_config(&origin.url()),
        |_| {},
        |b, dir| tls_listener(b, dir, TlsVersion::Tls13),
    )
    .await;
    let a = cert_der(strict.dir.path(), "a");
    let only12 = [&rustls::version::TLS12];
    assert!(
        tls_connect(
            strict.handle.tls_addrs()[0],
            "a.test",
            &a,
            &[b"http/1.1"],
            &only12
        )
        .await
        .is_err()
    );

    let lenient = TestNode::start_with(
        &proxy_config(&origin.url()),
        |_| {},
        |b, dir| tls_listener(b, dir, TlsVersion::Tls12),
    )
    .await;
    let a = cert_der(lenient.dir.path(), "a");
    let tls = tls_connect(
        lenient.handle.tls_addrs()[0],
        "a.test",
        &a,
        &[b"http/1.1"],
        &only12,
    )
    .await
    .unwrap();
    let (status, _, _) = get_over(tls, false, "https://a.test/").await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn certificates_reload_without_restart() {
    let origin = Origin::start().await;
    let node = TestNode::start_with(
        &proxy_config(&origin.url()),
        |_| {},
        |b, dir| tls_listener(b, dir, TlsVersion::Tls13),
    )
    .await;
    let addr = node.handle.tls_addrs()[0];
    let old = cert_der(node.dir.path(), "a");
    // Replace a's certificate on disk, then reload.
    let (_, _, new) = write_cert(node.dir.path(), "a", &["a.test"]);
    assert!(
        tls_connect(addr, "a.test", &new, &[b"h2"], &[&rustls::version::TLS13])
            .await
            .is_err()
    );
    let outcome = node.handle.reload().await;
    assert!(
        outcome.activated && outcome.errors.is_empty(),
        "{outcome:?}"
    );
    assert!(
        tls_connect(addr, "a.test", &new, &[b"h2"], &[&rustls::version::TLS13])
            .await
            .is_ok()
    );
    assert!(
        tls_connect(addr, "a.test", &old, &[b"h2"], &[&rustls::version::TLS13])
            .await
            .is_err()
    );

    // A broken certificate file is reported and the current one stays.
    std::fs::write(node.dir.path().join("a.pem"), "not a certificate").unwrap();
    let outcome = node.handle.reload().await;
    assert!(!outcome.errors.is_empty(), "{outcome:?}");
    assert!(
        tls_connect(addr, "a.test", &new, &[b"h2"], &[&rustls::version::TLS13])
            .await
            .is_ok()
    );
}
