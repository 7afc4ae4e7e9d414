//! One-line logging into the node's logs (the `log` host interface), tagged
//! with the module's name by the host.

use crate::host::log::{Level, log};

/// Logs at `debug`.
pub fn debug(message: &str) {
    log(Level::Debug, message);
}

/// Logs at `info`.
pub fn info(message: &str) {
    log(Level::Info, message);
}

/// Logs at `warn`.
pub fn warn(message: &str) {
    log(Level::Warn, message);
}

/// Logs at `error`.
pub fn error(message: &str) {
    log(Level::Error, message);
}
