//! The client's country from a MaxMind-format database (GeoLite2-Country,
//! GeoIP2-Country or a City database), for nodes whose load balancer does
//! not pass the country in a header. Loaded at start and on every reload.

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use maxminddb::{Reader, geoip2};

pub struct GeoIp {
    path: PathBuf,
    reader: Reader<Vec<u8>>,
}

impl fmt::Debug for GeoIp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GeoIp")
            .field("path", &self.path)
            .field("database_type", &self.reader.metadata.database_type)
            .field("build_epoch", &self.reader.metadata.build_epoch)
            .finish()
    }
}

impl GeoIp {
    /// Reads the whole database into memory and checks that it is one.
    /// Blocking.
    pub fn open(path: &Path) -> Result<Self, String> {
        let reader = Reader::open_readfile(path)
            .map_err(|e| format!("GeoIP database {}: {e}", path.display()))?;
        Ok(Self {
            path: path.to_path_buf(),
            reader,
        })
    }

    /// ISO 3166-1 alpha-2 code of the country `ip` is registered in, when
    /// the database knows one.
    pub fn country(&self, ip: IpAddr) -> Option<String> {
        let found: geoip2::Country<'_> = self.reader.lookup(ip.to_canonical()).ok()??;
        let code = found.country?.iso_code?;
        (code.len() == 2 && code.bytes().all(|b| b.is_ascii_alphabetic()))
            .then(|| code.to_ascii_uppercase())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db() -> GeoIp {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/geoip/test-country.mmdb");
        GeoIp::open(&path).expect("the test database opens")
    }

    #[test]
    fn looks_up_countries_by_address() {
        let db = db();
        let check = |ip: &str, expected: Option<&str>| {
            let ip: IpAddr = ip.parse().expect("an address");
            assert_eq!(db.country(ip).as_deref(), expected, "{ip}");
        };
        check("127.0.0.1", Some("DE"));
        check("192.0.2.77", Some("FR"));
        check("198.51.100.1", Some("US"));
        check("2001:db8::1", Some("JP"));
        check("::ffff:192.0.2.1", Some("FR"));
        check("203.0.113.5", None);
        check("10.0.0.1", None);
    }

    #[test]
    fn a_file_that_is_not_a_database_is_a_clear_error() {
        let dir = std::env::temp_dir().join(format!("cathedral-geoip-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("not.mmdb");
        std::fs::write(&path, b"not a maxmind database").expect("write");
        let err = GeoIp::open(&path).expect_err("refused");
        assert!(err.contains("not.mmdb"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
