//! Builds the guest modules the demo configuration uses (`personalize`,
//! `compliance` and `ratelimit`, which `edge-config/edge.toml` loads from
//! `guest-modules/target/wasm32-wasip2/release/`), so that the README's
//! `cargo run --release -p cathedral -- serve` works on a fresh clone. The
//! build logic is the test-artifacts crate's `guest_build.rs`, shared.
//!
//! `CATHEDRAL_SKIP_GUEST_BUILD=1` skips it (packaging the binary on a
//! machine without the `wasm32-wasip2` target); the demo then cannot start.

#[path = "../wasm/test-artifacts/guest_build.rs"]
mod guest_build;

/// The guests `edge-config/edge.toml` names.
const DEMO_MODULES: &[&str] = &["personalize", "compliance", "ratelimit"];

const SKIP: &str = "CATHEDRAL_SKIP_GUEST_BUILD";

fn main() {
    println!("cargo:rerun-if-env-changed={SKIP}");
    if std::env::var_os(SKIP).is_some_and(|v| !v.is_empty() && v != "0") {
        println!("cargo:warning={SKIP} is set: the demo's guest modules were not built");
        return;
    }
    let root = guest_build::repo_root(2);
    guest_build::rerun_if_guests_change(&root);
    guest_build::build_guests(
        &root,
        "the demo in edge-config/ runs the personalize, compliance and ratelimit modules; \
         set CATHEDRAL_SKIP_GUEST_BUILD=1 to build the binary without them",
    );
    for module in DEMO_MODULES {
        let wasm = guest_build::wasm_path(&root, module);
        assert!(
            wasm.is_file(),
            "the guest build did not produce {}",
            wasm.display()
        );
    }
}
