//! The host side of `wit/`: generated bindings, one file per host
//! interface (thin adapters from WIT types to the per-call [`StoreState`]),
//! WASI and `wasi:http`, and the two linkers.

pub(crate) mod client_info;
pub(crate) mod config;
pub(crate) mod http;
pub(crate) mod log;
pub(crate) mod rate_limit;
pub(crate) mod wasi;

use wasmtime::Engine;
use wasmtime::component::{HasSelf, Linker};

use crate::state::StoreState;

/// Bindings generated from `wit/` (world `cathedral:edge/filter`), with the
/// WASI interfaces taken from `wasmtime-wasi`.
#[allow(missing_docs, missing_debug_implementations, clippy::all)]
pub(crate) mod bindings {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "cathedral:edge/filter",
        exports: { default: async },
        require_store_data_send: true,
        with: {
            "wasi": wasmtime_wasi::p2::bindings,
        },
    });
}

/// Adds Cathedral's own interfaces (`client-info`, `config`, `log`,
/// `rate-limit`).
fn add_cathedral(linker: &mut Linker<StoreState>) -> wasmtime::Result<()> {
    use bindings::cathedral::edge;
    fn this(s: &mut StoreState) -> &mut StoreState {
        s
    }
    edge::client_info::add_to_linker::<_, HasSelf<StoreState>>(linker, this)?;
    edge::config::add_to_linker::<_, HasSelf<StoreState>>(linker, this)?;
    edge::log::add_to_linker::<_, HasSelf<StoreState>>(linker, this)?;
    edge::rate_limit::add_to_linker::<_, HasSelf<StoreState>>(linker, this)?;
    Ok(())
}

/// Everything a `filter` may import, and nothing else.
pub(crate) fn filter_linker(engine: &Engine) -> wasmtime::Result<Linker<StoreState>> {
    let mut linker = Linker::new(engine);
    wasi::add_to_linker(&mut linker)?;
    add_cathedral(&mut linker)?;
    Ok(linker)
}

/// Everything a `handler` may import: the filter's imports plus
/// `wasi:http`.
pub(crate) fn handler_linker(engine: &Engine) -> wasmtime::Result<Linker<StoreState>> {
    let mut linker = filter_linker(engine)?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
    Ok(linker)
}
