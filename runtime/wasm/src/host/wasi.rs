//! The WASI a guest gets: `wasi:cli` (empty environment and arguments, empty
//! stdin, stdout/stderr into the logs), `wasi:io`, `wasi:clocks` and
//! `wasi:random`; no filesystem (no preopens) and no sockets. Handlers get
//! `wasi:http` on top (see `http.rs`).

use wasmtime::component::Linker;
use wasmtime_wasi::cli::{WasiCli, WasiCliView};
use wasmtime_wasi::p2::bindings::{cli, random};
use wasmtime_wasi::random::{WasiRandom, WasiRandomView};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtxView, WasiHttpView};

use crate::output::{CallOutput, Source};
use crate::state::StoreState;

impl WasiView for StoreState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for StoreState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.hooks,
        }
    }
}

/// The WASI context of one call: nothing but output capture.
pub(crate) fn context(output: &std::sync::Arc<CallOutput>) -> WasiCtx {
    WasiCtx::builder()
        .stdout(output.stream(Source::Stdout))
        .stderr(output.stream(Source::Stderr))
        .build()
}

/// Adds the WASI interfaces every guest gets.
pub(crate) fn add_to_linker(linker: &mut Linker<StoreState>) -> wasmtime::Result<()> {
    // wasi:io, wasi:clocks, wasi:random/random, wasi:cli/std{in,out,err}.
    wasmtime_wasi::p2::add_to_linker_proxy_interfaces_async(linker)?;
    let l = linker;
    random::insecure::add_to_linker::<_, WasiRandom>(l, <StoreState as WasiRandomView>::random)?;
    random::insecure_seed::add_to_linker::<_, WasiRandom>(
        l,
        <StoreState as WasiRandomView>::random,
    )?;
    let view = <StoreState as WasiCliView>::cli;
    cli::environment::add_to_linker::<_, WasiCli>(l, view)?;
    cli::exit::add_to_linker::<_, WasiCli>(l, view)?;
    cli::terminal_input::add_to_linker::<_, WasiCli>(l, view)?;
    cli::terminal_output::add_to_linker::<_, WasiCli>(l, view)?;
    cli::terminal_stdin::add_to_linker::<_, WasiCli>(l, view)?;
    cli::terminal_stdout::add_to_linker::<_, WasiCli>(l, view)?;
    cli::terminal_stderr::add_to_linker::<_, WasiCli>(l, view)?;
    Ok(())
}
