//! The Cathedral guest SDK: bindings to the `cathedral:edge` WIT package and
//! helpers for module authors. Guests build with `cargo build --release` in
//! this workspace, which targets `wasm32-wasip2`.
#![no_std]
