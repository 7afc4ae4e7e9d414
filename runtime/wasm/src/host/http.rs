//! `wasi:http` for handlers: outgoing requests go only to the route's
//! [`Backends`]; everything else (loopback and the admin API included) is
//! refused with `HTTP-request-denied` before any connection is made.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::uri::{Authority, Scheme};
use http::{HeaderValue, Uri};
use http_body_util::BodyExt;
use wasmtime_wasi_http::{Error as HttpError, RequestOptions, WasiBody, WasiHttpHooks};

/// One backend a handler may call: a name (as in the route's config) and an
/// origin (`scheme://host[:port]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    name: String,
    scheme: Scheme,
    host: String,
    port: u16,
    authority: Authority,
}

/// A backend origin that is not `http(s)://host[:port]`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("backend {name}: invalid origin {origin:?}: {reason}")]
pub struct InvalidBackend {
    /// The backend's name.
    pub name: String,
    /// The origin given.
    pub origin: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl Backend {
    /// A backend called `name` at `origin` (`https://api.example.com`,
    /// `http://127.0.0.1:9000`; a trailing `/` is allowed, no other path).
    pub fn new(name: impl Into<String>, origin: &str) -> Result<Self, InvalidBackend> {
        let name = name.into();
        let invalid = |reason| InvalidBackend {
            name: name.clone(),
            origin: origin.to_owned(),
            reason,
        };
        let uri: Uri = origin.parse().map_err(|_| invalid("not a URI"))?;
        let scheme = uri.scheme().cloned().ok_or_else(|| invalid("no scheme"))?;
        if scheme != Scheme::HTTP && scheme != Scheme::HTTPS {
            return Err(invalid("scheme is not http or https"));
        }
        let authority = uri.authority().cloned().ok_or_else(|| invalid("no host"))?;
        if authority.as_str().contains('@') {
            return Err(invalid("user info is not allowed"));
        }
        if uri.path_and_query().is_some_and(|p| p.as_str() != "/") {
            return Err(invalid("a path is not allowed"));
        }
        let port = authority.port_u16().unwrap_or(default_port(&scheme));
        Ok(Self {
            host: authority.host().to_ascii_lowercase(),
            name,
            scheme,
            port,
            authority,
        })
    }

    /// The backend's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether `uri` addresses this backend, by name (`http://NAME/...`, no
    /// port) or by origin (same scheme, host and port).
    fn addressed_by(&self, uri: &Uri) -> bool {
        let Some(authority) = uri.authority() else {
            return false;
        };
        if authority.as_str().contains('@') {
            return false;
        }
        let host = authority.host();
        if authority.port().is_none() && host.eq_ignore_ascii_case(&self.name) {
            return true;
        }
        let scheme = uri.scheme().cloned().unwrap_or(Scheme::HTTPS);
        let port = authority.port_u16().unwrap_or(default_port(&scheme));
        scheme == self.scheme && port == self.port && host.eq_ignore_ascii_case(&self.host)
    }

    /// `uri` re-addressed to this backend's origin.
    fn target(&self, uri: &Uri) -> Option<Uri> {
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(self.scheme.clone());
        parts.authority = Some(self.authority.clone());
        parts.path_and_query = Some(
            uri.path_and_query()
                .cloned()
                .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/")),
        );
        Uri::from_parts(parts).ok()
    }
}

fn default_port(scheme: &Scheme) -> u16 {
    if *scheme == Scheme::HTTPS { 443 } else { 80 }
}

/// The backends a route's handler may call. Empty by default: no outgoing
/// requests at all. Cheap to clone.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Backends(Arc<[Backend]>);

impl Backends {
    /// The allow-list.
    pub fn new(backends: impl IntoIterator<Item = Backend>) -> Self {
        Self(backends.into_iter().collect())
    }

    /// Where a request to `uri` goes, or `None` when it is not allowed.
    pub fn resolve(&self, uri: &Uri) -> Option<(&Backend, Uri)> {
        let backend = self.0.iter().find(|b| b.addressed_by(uri))?;
        Some((backend, backend.target(uri)?))
    }

    /// Whether the list is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Backends {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(
                self.0
                    .iter()
                    .map(|b| format!("{}={}://{}", b.name, b.scheme, b.authority)),
            )
            .finish()
    }
}

/// The `wasi:http` hooks of one handler call: the allow-list check before
/// every outgoing request.
pub(crate) struct BackendHooks {
    pub(crate) module: Arc<str>,
    pub(crate) backends: Backends,
}

type SendFuture = Box<
    dyn Future<
            Output = Result<
                (
                    http::Response<WasiBody>,
                    Box<dyn Future<Output = Result<(), HttpError>> + Send>,
                ),
                HttpError,
            >,
        > + Send,
>;

impl WasiHttpHooks for BackendHooks {
    fn send_request(
        &mut self,
        mut request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), HttpError>> + Send>,
    ) -> SendFuture {
        let Some((backend, uri)) = self.backends.resolve(request.uri()) else {
            tracing::warn!(
                target: "cathedral::guest",
                module = %self.module,
                authority = request.uri().authority().map_or("", |a| a.as_str()),
                "outgoing request refused: not a backend of this route"
            );
            return Box::new(async { Err(HttpError::HttpRequestDenied) });
        };
        tracing::debug!(
            target: "cathedral::guest",
            module = %self.module,
            backend = backend.name(),
            "outgoing request"
        );
        if let Ok(host) = HeaderValue::from_str(backend.authority.as_str()) {
            request.headers_mut().insert(http::header::HOST, host);
        }
        *request.uri_mut() = uri;
        let options = Some(with_default_timeouts(options));
        Box::new(async move {
            let (response, io) = wasmtime_wasi_http::default_send_request(request, options).await?;
            Ok((
                response.map(BodyExt::boxed_unsync),
                Box::new(io) as Box<dyn Future<Output = Result<(), HttpError>> + Send>,
            ))
        })
    }
}

/// A guest's request options, with bounded defaults where it set none
/// (wasmtime's own are ten minutes).
fn with_default_timeouts(options: Option<RequestOptions>) -> RequestOptions {
    let options = options.unwrap_or_default();
    RequestOptions {
        connect_timeout: options.connect_timeout.or(Some(Duration::from_secs(5))),
        first_byte_timeout: options.first_byte_timeout.or(Some(Duration::from_secs(30))),
        between_bytes_timeout: options
            .between_bytes_timeout
            .or(Some(Duration::from_secs(30))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backends() -> Backends {
        Backends::new([
            Backend::new("api", "https://api.example.com").expect("valid"),
            Backend::new("local", "http://127.0.0.1:9000/").expect("valid"),
        ])
    }

    #[track_caller]
    fn check(uri: &str, expected: Option<&str>) {
        let uri: Uri = uri.parse().expect("test URI");
        let got = backends().resolve(&uri).map(|(_, u)| u.to_string());
        assert_eq!(got.as_deref(), expected, "{uri}");
    }

    #[test]
    fn only_named_backends_are_reachable() {
        check(
            "http://api/v1/x?y=1",
            Some("https://api.example.com/v1/x?y=1"),
        );
        check("https://API/", Some("https://api.example.com/"));
        check(
            "https://api.example.com/a",
            Some("https://api.example.com/a"),
        );
        check(
            "https://api.example.com:443/a",
            Some("https://api.example.com/a"),
        );
        check("http://local/p", Some("http://127.0.0.1:9000/p"));
        check("http://127.0.0.1:9000/p", Some("http://127.0.0.1:9000/p"));
        // Wrong scheme, port or host; loopback and admin; user info tricks.
        check("http://api.example.com/a", None);
        check("https://api.example.com:8443/a", None);
        check("http://api:80/a", None);
        check("http://127.0.0.1:9090/metrics", None);
        check("http://localhost:9000/", None);
        check("http://[::1]:9000/", None);
        check("http://api@127.0.0.1:9090/", None);
        check("http://evil.example/", None);
        assert!(
            Backends::default()
                .resolve(&"http://api/".parse().expect("uri"))
                .is_none()
        );
    }

    #[test]
    fn invalid_origins_are_rejected() {
        for origin in [
            "api.example.com",
            "ftp://x",
            "http://u@x",
            "http://x/path",
            "::",
        ] {
            assert!(Backend::new("b", origin).is_err(), "{origin}");
        }
    }
}
