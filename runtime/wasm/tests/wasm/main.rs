//! `cathedral-wasm` against real components: the guests of `guest-modules/`
//! built by `cathedral-wasm-test-artifacts`, run by a real wasmtime engine.
//! No mocks.

mod artifacts;
mod common;
mod compliance;
mod handler;
mod hostile;
mod instances;
mod per_guest;
mod personalize;

use cathedral_wasm_test_artifacts::for_each_guest;

/// Every guest has a test named after it in `per_guest`: this fails to
/// compile when a guest is added without one.
macro_rules! every_guest_is_tested {
    ($($name:ident,)*) => {
        #[allow(dead_code)]
        fn every_guest_is_tested() {
            $(let _: fn() = per_guest::$name;)*
        }
    };
}
for_each_guest!(every_guest_is_tested);
