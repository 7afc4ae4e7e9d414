//! The guest modules of `guest-modules/`, built for `wasm32-wasip2` by this
//! crate's build script: one constant per component with the path of its
//! `.wasm`, and [`for_each_guest!`] listing them all. A dev-dependency of
//! `cathedral-wasm` (and the benches); building it builds the guests.

include!(concat!(env!("OUT_DIR"), "/guests.rs"));
