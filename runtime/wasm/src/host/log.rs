//! `cathedral:edge/log`: guest log lines into the node's `tracing` output,
//! tagged with the module's name and rate-bounded (see `output.rs`).

use crate::host::bindings::cathedral::edge::log;
use crate::output::{Level, Source};
use crate::state::StoreState;

impl log::Host for StoreState {
    fn log(&mut self, level: log::Level, message: String) {
        let level = match level {
            log::Level::Trace => Level::Trace,
            log::Level::Debug => Level::Debug,
            log::Level::Info => Level::Info,
            log::Level::Warn => Level::Warn,
            log::Level::Error => Level::Error,
        };
        self.call.sink.emit(level, Source::Log, &message);
    }
}
