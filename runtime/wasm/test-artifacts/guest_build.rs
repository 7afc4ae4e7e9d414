//! Builds the guest workspace `guest-modules/` for `wasm32-wasip2`: the one
//! implementation shared by two build scripts, this crate's (every guest, as
//! test fixtures) and `runtime/cathedral`'s (the demo's modules, so that
//! `cargo run -p cathedral -- serve` works on a fresh clone). Included with
//! `#[path]`, since build scripts cannot share code through a library
//! without another crate.
//!
//! The guests are built in release mode into `guest-modules/target`, so the
//! `.wasm` files sit at [`release_dir`] whoever built them; a second build
//! with nothing changed is a no-op, and cargo's lock on that target
//! directory serializes two build scripts that run at once.

// Each build script uses part of this module.
#![allow(dead_code)]

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The target the guests are built for.
pub const TARGET: &str = "wasm32-wasip2";

/// The repository root, `levels` directories above the calling crate's
/// manifest directory.
pub fn repo_root(levels: usize) -> PathBuf {
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    manifest
        .ancestors()
        .nth(levels)
        .unwrap_or_else(|| panic!("{} has no ancestor {levels} levels up", manifest.display()))
        .to_path_buf()
}

/// The guest workspace under `root`.
pub fn guests_dir(root: &Path) -> PathBuf {
    root.join("guest-modules")
}

/// Where the built components are: `guest-modules/target/wasm32-wasip2/release`.
pub fn release_dir(root: &Path) -> PathBuf {
    guests_dir(root).join("target").join(TARGET).join("release")
}

/// The `.wasm` of guest crate `krate` (dashes become underscores).
pub fn wasm_path(root: &Path, krate: &str) -> PathBuf {
    release_dir(root).join(format!("{}.wasm", krate.replace('-', "_")))
}

/// Tells cargo to run the build script again when anything the guests are
/// built from changes: every entry of `guest-modules/` except its target
/// directory (so new guest crates are covered without a list to update),
/// and the WIT package.
pub fn rerun_if_guests_change(root: &Path) {
    let guests = guests_dir(root);
    let entries =
        fs::read_dir(&guests).unwrap_or_else(|e| panic!("cannot read {}: {e}", guests.display()));
    for entry in entries {
        let entry = entry.unwrap_or_else(|e| panic!("cannot read {}: {e}", guests.display()));
        if entry.file_name() != "target" {
            println!("cargo:rerun-if-changed={}", entry.path().display());
        }
    }
    println!("cargo:rerun-if-changed={}", root.join("wit").display());
}

/// Whether rustc finds the target's standard library.
fn target_installed() -> bool {
    let rustc = env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let output = Command::new(&rustc)
        .args(["--print", "target-libdir", "--target", TARGET])
        .output();
    match &output {
        Ok(o) if o.status.success() => {
            let dir = String::from_utf8_lossy(&o.stdout).trim().to_owned();
            Path::new(&dir).is_dir()
        }
        _ => false,
    }
}

/// Builds every guest (`cargo build --release --workspace` in the guest
/// workspace) after checking that the target is installed; panics with
/// what to do when it is not or the build fails. `purpose` says what the
/// caller needs the guests for, and ends the error message.
pub fn build_guests(root: &Path, purpose: &str) {
    require_target(purpose);
    let guests = guests_dir(root);
    let target_dir = guests.join("target");
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&guests)
        .args(["build", "--release", "--workspace", "--target", TARGET])
        .env("CARGO_TARGET_DIR", &target_dir);
    // An environment cleaned of everything that describes *this* build.
    for (key, _) in env::vars_os() {
        let Some(key) = key.to_str() else { continue };
        let ours = key.starts_with("CARGO_PKG_")
            || key.starts_with("CARGO_CFG_")
            || key.starts_with("CARGO_FEATURE_")
            || key.starts_with("DEP_")
            || matches!(
                key,
                "RUSTFLAGS"
                    | "CARGO_ENCODED_RUSTFLAGS"
                    | "CARGO_BUILD_RUSTFLAGS"
                    | "CARGO_BUILD_TARGET"
                    | "CARGO_MANIFEST_DIR"
                    | "CARGO_MANIFEST_PATH"
                    | "CARGO_MANIFEST_LINKS"
                    | "CARGO_PRIMARY_PACKAGE"
                    | "CARGO_CRATE_NAME"
                    | "RUSTC_WORKSPACE_WRAPPER"
                    | "RUSTDOC"
                    | "TARGET"
                    | "HOST"
                    | "OUT_DIR"
                    | "PROFILE"
                    | "OPT_LEVEL"
                    | "DEBUG"
                    | "NUM_JOBS"
                    | "RUSTC_LINKER"
            );
        if ours {
            cmd.env_remove(key);
        }
    }
    let output = cmd.output().expect("run cargo for the guest modules");
    if !output.status.success() {
        panic!(
            "building guest-modules/ for {TARGET} failed ({}):\n{}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

/// Makes sure the `wasm32-wasip2` standard library is installed: with
/// rustup (the supported set-up) it is added on first use, so that the
/// README's two commands need nothing else; otherwise fails with what to do.
fn require_target(purpose: &str) {
    if target_installed() {
        return;
    }
    println!(
        "cargo:warning=installing the {TARGET} target with rustup (the guest modules are built for it)"
    );
    // Captured: a build script's stdout is read by cargo.
    let added = Command::new("rustup")
        .args(["target", "add", TARGET])
        .output()
        .is_ok_and(|o| o.status.success());
    if !added || !target_installed() {
        panic!(
            "\n\nthe `{TARGET}` target is not installed, and the guest modules in \
             guest-modules/ are built for it ({purpose}).\n\
             run `rustup target add {TARGET}` and build again.\n\n"
        );
    }
}
