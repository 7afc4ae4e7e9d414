//! Test support: engines, loading guests, requests, environments.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use cathedral_wasm::{
    ClientInfo, EngineConfig, Module, ModuleConfig, ModuleSettings, PoolingConfig, RequestAction,
    RequestEnv, RequestHead, ResponseAction, ResponseParts, WasmEngine,
};
use http::{HeaderMap, Method, StatusCode};

/// A compiled-artifact cache shared by the whole test binary, so each guest
/// is compiled once per run rather than once per test.
fn shared_cache() -> PathBuf {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().expect("tempdir"))
        .path()
        .to_path_buf()
}

/// An engine with a small pool (tests never need many instances).
pub fn engine() -> WasmEngine {
    engine_with(|_| {})
}

/// An engine with the test defaults, adjusted by `f`.
pub fn engine_with(f: impl FnOnce(&mut EngineConfig)) -> WasmEngine {
    let mut config = EngineConfig {
        pooling: Some(PoolingConfig {
            max_instances: 16,
            ..PoolingConfig::default()
        }),
        artifact_cache: Some(shared_cache()),
        ..EngineConfig::default()
    };
    f(&mut config);
    WasmEngine::new(config).expect("engine")
}

/// Settings with `config`.
pub fn settings(config: &[(&str, &str)]) -> ModuleSettings {
    ModuleSettings {
        config: config.iter().copied().collect::<ModuleConfig>(),
        ..ModuleSettings::default()
    }
}

/// Loads the guest at `path` as `name`.
pub async fn load(engine: &WasmEngine, name: &str, path: &str, settings: ModuleSettings) -> Module {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("read {path}: {e}"));
    engine
        .load(name, bytes, settings)
        .await
        .unwrap_or_else(|e| panic!("load {name}: {e}"))
}

/// A client.
pub fn client(user: Option<&str>, country: Option<&str>, region: &str) -> RequestEnv {
    RequestEnv::new(ClientInfo {
        ip: IpAddr::from([203, 0, 113, 7]),
        country: country.map(str::to_owned),
        region: Arc::from(region),
        user_id: user.map(str::to_owned),
    })
}

/// A request head to hand filters.
pub struct Req {
    pub parts: http::request::Parts,
}

impl Req {
    pub fn get(path: &str) -> Self {
        Self::with(path, &[])
    }

    pub fn with(path: &str, headers: &[(&str, &str)]) -> Self {
        let mut builder = http::Request::builder().method(Method::GET).uri(path);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        Self {
            parts: builder.body(()).expect("request").into_parts().0,
        }
    }

    pub fn head(&self) -> RequestHead<'_> {
        RequestHead::new(&self.parts, "https", "www.example.com")
    }
}

/// A response to hand `on-response`.
pub struct Resp {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Option<Bytes>,
}

impl Resp {
    pub fn new(status: u16, headers: &[(&str, &str)], body: Option<&str>) -> Self {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.append(
                http::HeaderName::from_bytes(name.as_bytes()).expect("name"),
                http::HeaderValue::from_str(value).expect("value"),
            );
        }
        Self {
            status: StatusCode::from_u16(status).expect("status"),
            headers: map,
            body: body.map(|b| Bytes::copy_from_slice(b.as_bytes())),
        }
    }

    pub fn parts(&self) -> ResponseParts<'_> {
        ResponseParts {
            status: self.status,
            headers: &self.headers,
            body: self.body.as_deref(),
        }
    }
}

/// Runs `on-request`, expecting success.
pub async fn on_request(module: &Module, req: &Req, env: &RequestEnv) -> RequestAction {
    module
        .on_request(req.head(), env)
        .await
        .unwrap_or_else(|e| panic!("on-request of {}: {e}", module.name()))
}

/// Runs `on-response`, expecting success.
pub async fn on_response(
    module: &Module,
    req: &Req,
    resp: &Resp,
    env: &RequestEnv,
) -> ResponseAction {
    module
        .on_response(req.head(), resp.parts(), env)
        .await
        .unwrap_or_else(|e| panic!("on-response of {}: {e}", module.name()))
}

/// The values a response edit sets for `name`, as text.
pub fn set_values(action: &ResponseAction, name: &str) -> Vec<String> {
    match action {
        ResponseAction::Pass => Vec::new(),
        ResponseAction::Edit(edit) => edit
            .set_headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.to_str().expect("text").to_owned())
            .collect(),
    }
}
