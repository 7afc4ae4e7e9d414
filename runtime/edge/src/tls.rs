//! TLS for the public listeners: certificates chosen by SNI, reloaded in
//! place, TLS 1.3 by default with 1.2 opt-in per listener, ALPN for h2.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;
use cathedral_config::{Certificate, TlsVersion};
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ServerConfig, SupportedProtocolVersion};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::error::{Error, Result};

pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The certificates a node presents, swapped whole on reload.
#[derive(Debug)]
pub struct CertResolver {
    set: ArcSwap<CertSet>,
}

struct CertSet {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// Keyed by the suffix after `*`, e.g. `.example.com`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Arc<CertifiedKey>,
}

impl fmt::Debug for CertSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertSet")
            .field("exact", &self.exact.keys().collect::<Vec<_>>())
            .field("wildcard", &self.wildcard.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl CertResolver {
    pub fn load(certs: &[Certificate]) -> Result<Self> {
        Ok(Self {
            set: ArcSwap::from_pointee(load_set(certs)?),
        })
    }

    /// Re-reads every certificate; on any error the old set stays in use.
    pub fn reload(&self, certs: &[Certificate]) -> Result<()> {
        self.set.store(Arc::new(load_set(certs)?));
        Ok(())
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let set = self.set.load();
        let Some(name) = hello.server_name() else {
            return Some(set.default.clone());
        };
        let name = name.to_ascii_lowercase();
        if let Some(key) = set.exact.get(&name) {
            return Some(key.clone());
        }
        if let Some(dot) = name.find('.')
            && let Some(key) = set.wildcard.get(&name[dot..])
        {
            return Some(key.clone());
        }
        Some(set.default.clone())
    }
}

fn load_set(certs: &[Certificate]) -> Result<CertSet> {
    let provider = provider();
    let mut exact = HashMap::new();
    let mut wildcard = HashMap::new();
    let mut default = None;
    for cert in certs {
        let key = Arc::new(load_certified_key(&cert.cert, &cert.key, &provider)?);
        default.get_or_insert_with(|| key.clone());
        for name in &cert.server_names {
            let name = name.to_ascii_lowercase();
            match name.strip_prefix('*') {
                Some(suffix) => wildcard.insert(suffix.to_owned(), key.clone()),
                None => exact.insert(name, key.clone()),
            };
        }
    }
    let default = default.ok_or_else(|| Error::Tls("no certificates configured".into()))?;
    Ok(CertSet {
        exact,
        wildcard,
        default,
    })
}

fn load_certified_key(cert: &Path, key: &Path, provider: &CryptoProvider) -> Result<CertifiedKey> {
    let cert_err = |reason: String| Error::Certificate {
        path: cert.to_owned(),
        reason,
    };
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| cert_err(format!("cannot read certificate chain: {e}")))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| cert_err(format!("invalid PEM certificate: {e}")))?;
    if chain.is_empty() {
        return Err(cert_err("no CERTIFICATE block found".into()));
    }
    let private = PrivateKeyDer::from_pem_file(key).map_err(|e| Error::Certificate {
        path: key.to_owned(),
        reason: format!("cannot read private key: {e}"),
    })?;
    CertifiedKey::from_der(chain, private, provider).map_err(|e| Error::Certificate {
        path: key.to_owned(),
        reason: format!(
            "private key does not fit the certificate {}: {e}",
            cert.display()
        ),
    })
}

pub fn server_config(min_version: TlsVersion, resolver: Arc<CertResolver>) -> Result<ServerConfig> {
    let versions: &[&'static SupportedProtocolVersion] = match min_version {
        TlsVersion::Tls13 => &[&rustls::version::TLS13],
        TlsVersion::Tls12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
    };
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .map_err(|e| Error::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}
