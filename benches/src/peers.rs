//! The systems a comparison needs besides this binary, provisioned on demand: the release
//! `cathedral` binary and the demo's filter modules (one `cargo build`), the `wasi:http` hello
//! component (`benches/guests/wasi-hello`), nginx and Varnish Cache (`varnishd` and its
//! access logger `varnishncsa`; Debian packages), and the `wasmtime` CLI at the exact wasmtime
//! version the workspace locks (`cargo install` into `target/`). Also the versions recorded
//! with every comparison.
//!
//! Installation shells out to the ordinary clients (`apt-get`, `cargo`); nothing here runs
//! during `cargo test`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context as _, bail};
use serde::Serialize;

use crate::harness::workspace_root;

/// The crate of the hello component, relative to the workspace root.
pub const HELLO_GUEST_DIR: &str = "benches/guests/wasi-hello";

/// The body the hello component answers with (`benches/guests/wasi-hello/src/lib.rs`).
pub const HELLO_BODY: &[u8] = b"hello from a wasi:http handler\n";

/// The demo's filter modules, built by `runtime/cathedral`'s build script.
pub const FILTER_MODULES: [&str; 3] = ["ratelimit", "compliance", "personalize"];

/// Where provisioned tools and guests go (under the workspace's `target/`).
pub fn tools_dir() -> PathBuf {
    workspace_root().join("target/bench-tools")
}

/// `cargo`: the one that runs us (`$CARGO` under `cargo run`), else from `PATH`.
fn cargo() -> std::ffi::OsString {
    std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into())
}

/// Runs `command`, streaming its output to our stderr, failing with `what` on a non-zero exit.
fn run(mut command: Command, what: &str) -> anyhow::Result<()> {
    eprintln!("[prepare] {what}: {command:?}");
    let status = command
        .stdin(Stdio::null())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .status()
        .with_context(|| format!("{what}: could not start {command:?}"))?;
    if !status.success() {
        bail!("{what} failed ({status}): {command:?}");
    }
    Ok(())
}

/// First line of a command's stdout or stderr (`nginx -v` writes to stderr); `None` when it
/// cannot be run.
pub fn version_line(program: &Path, args: &[&str]) -> Option<String> {
    let output = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .ok()?;
    let text = if output.stdout.is_empty() {
        output.stderr
    } else {
        output.stdout
    };
    String::from_utf8_lossy(&text)
        .lines()
        .next()
        .map(|l| l.trim().to_owned())
        .filter(|l| !l.is_empty())
}

/// Builds the release `cathedral` (its build script also builds the demo's filter modules into
/// `guest-modules/target`) and checks the modules are there.
pub fn build_cathedral() -> anyhow::Result<PathBuf> {
    let root = workspace_root();
    let mut command = Command::new(cargo());
    command
        .current_dir(&root)
        .args(["build", "--release", "-p", "cathedral"]);
    run(command, "building the release cathedral binary")?;
    let binary = root.join("target/release/cathedral");
    if !binary.is_file() {
        bail!(
            "`cargo build --release -p cathedral` left no {}",
            binary.display()
        );
    }
    for module in FILTER_MODULES {
        let path = filter_module(module);
        if !path.is_file() {
            bail!(
                "{} is missing after building cathedral (its build script builds the demo's modules)",
                path.display()
            );
        }
    }
    Ok(binary)
}

/// The built filter module `name` (`guest-modules/target/wasm32-wasip2/release/<name>.wasm`).
pub fn filter_module(name: &str) -> PathBuf {
    workspace_root()
        .join("guest-modules/target/wasm32-wasip2/release")
        .join(format!("{name}.wasm"))
}

/// Builds the hello component for `wasm32-wasip2` (locked dependencies, its own target
/// directory) and returns the `.wasm`.
pub fn build_hello_guest() -> anyhow::Result<PathBuf> {
    let root = workspace_root();
    let target_dir = root.join("target/bench-guests");
    let mut command = Command::new(cargo());
    command
        .current_dir(root.join(HELLO_GUEST_DIR))
        .args([
            "build",
            "--release",
            "--locked",
            "--target",
            "wasm32-wasip2",
        ])
        .arg("--target-dir")
        .arg(&target_dir)
        // Settings of an enclosing `cargo run` describe another build.
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS");
    run(command, "building the wasi:http hello component")?;
    let wasm = target_dir.join("wasm32-wasip2/release/bench_wasi_hello.wasm");
    if !wasm.is_file() {
        bail!("the hello component build left no {}", wasm.display());
    }
    Ok(wasm)
}

/// The `wasmtime` crate version in a `Cargo.lock`: the version of the `[[package]]` named
/// exactly `wasmtime`.
pub fn locked_version(lock: &str, package: &str) -> Option<String> {
    let mut in_package = false;
    for line in lock.lines().map(str::trim) {
        if line == "[[package]]" {
            in_package = false;
        } else if let Some(name) = line.strip_prefix("name = ") {
            in_package = name.trim_matches('"') == package;
        } else if in_package && let Some(version) = line.strip_prefix("version = ") {
            return Some(version.trim_matches('"').to_owned());
        }
    }
    None
}

/// The wasmtime version the workspace uses, from its `Cargo.lock`.
pub fn workspace_wasmtime_version() -> anyhow::Result<String> {
    let path = workspace_root().join("Cargo.lock");
    let lock =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    locked_version(&lock, "wasmtime")
        .with_context(|| format!("no `wasmtime` package in {}", path.display()))
}

/// Where `cargo install` puts `wasmtime-cli` of `version`.
pub fn wasmtime_root(version: &str) -> PathBuf {
    tools_dir().join(format!("wasmtime-{version}"))
}

/// The `wasmtime` CLI at the workspace's wasmtime version: `$WASMTIME` if set (its version must
/// match), else `target/bench-tools/wasmtime-<version>/bin/wasmtime`, installed there with
/// `nice -n 19 cargo install wasmtime-cli --version <version> --locked` when missing (several
/// minutes on 2 cores) unless `install` is false.
pub fn ensure_wasmtime(install: bool) -> anyhow::Result<PathBuf> {
    let version = workspace_wasmtime_version()?;
    let check = |binary: &Path| -> anyhow::Result<()> {
        let line = version_line(binary, &["--version"])
            .with_context(|| format!("`{} --version` failed", binary.display()))?;
        // "wasmtime 48.0.8 (1c5d4a3 2025-...)"
        if line.split_whitespace().nth(1) != Some(version.as_str()) {
            bail!(
                "{} is `{line}`, not wasmtime {version} (the version the workspace locks)",
                binary.display()
            );
        }
        Ok(())
    };
    if let Some(path) = std::env::var_os("WASMTIME") {
        let path = PathBuf::from(path);
        check(&path)?;
        return Ok(path);
    }
    let root = wasmtime_root(&version);
    let binary = root.join("bin/wasmtime");
    if !binary.is_file() {
        if !install {
            bail!(
                "no wasmtime CLI at {} (run without --no-install, or install it: \
                 cargo install wasmtime-cli --version {version} --locked --root {})",
                binary.display(),
                root.display()
            );
        }
        // The build needs about 2 GB of scratch space; on a shared disk that is better taken
        // from RAM (/dev/shm) when there is room, and it is removed afterwards either way.
        let build_dir = scratch_build_dir("wasmtime-cli-build");
        let mut command = Command::new("nice");
        command
            .args(["-n", "19"])
            .arg(cargo())
            .args([
                "install",
                "wasmtime-cli",
                "--version",
                &version,
                "--locked",
                "--root",
            ])
            .arg(&root)
            .env_remove("CARGO_TARGET_DIR")
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_ENCODED_RUSTFLAGS");
        if let Some(dir) = &build_dir {
            command.arg("--target-dir").arg(dir);
        }
        let installed = run(
            command,
            &format!("installing wasmtime-cli {version} (once; several minutes)"),
        );
        if let Some(dir) = &build_dir {
            let _ = std::fs::remove_dir_all(dir);
        }
        installed?;
    }
    check(&binary)?;
    Ok(binary)
}

/// Free bytes of the filesystem holding `path`, from `df` (no `statvfs` without `unsafe`).
fn free_bytes(path: &Path) -> Option<u64> {
    let output = Command::new("df")
        .args(["--output=avail", "-B1"])
        .arg(path)
        .stdin(Stdio::null())
        .output()
        .ok()?;
    parse_df_avail(&String::from_utf8_lossy(&output.stdout))
}

/// The number on the second line of `df --output=avail -B1 PATH`.
pub fn parse_df_avail(text: &str) -> Option<u64> {
    text.lines().nth(1)?.trim().parse().ok()
}

/// A build directory in `/dev/shm` when it has at least 6 GiB free, else `None` (cargo's
/// default: a temporary directory on disk).
fn scratch_build_dir(name: &str) -> Option<PathBuf> {
    let shm = Path::new("/dev/shm");
    let free = free_bytes(shm)?;
    (free >= 6 << 30).then(|| shm.join(format!("cathedral-bench-{name}-{}", std::process::id())))
}

/// `nginx` on `PATH` or in `/usr/sbin`.
pub fn find_nginx() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("NGINX") {
        return Some(PathBuf::from(path));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin")])
        .map(|dir| dir.join("nginx"))
        .find(|candidate| candidate.is_file())
}

/// Whether this process runs as root (`Uid:` of `/proc/self/status`).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|l| l.split_whitespace().next().map(|u| u == "0"))
        })
        .unwrap_or(false)
}

/// The `apt-get` invocations that install one of `packages` (tried in order, the first again
/// after an `apt-get update`), through `sudo -n` unless root. Services are not started
/// (`RUNLEVEL=1` makes `invoke-rc.d` skip them): the harness runs nginx only from its own
/// generated config.
pub fn apt_install_commands(root: bool, packages: &[&str]) -> Vec<Vec<String>> {
    let prefix: Vec<String> = if root {
        Vec::new()
    } else {
        vec!["sudo".into(), "-n".into()]
    };
    let apt = |args: &[&str]| -> Vec<String> {
        let mut command = prefix.clone();
        command.extend(
            [
                "env",
                "DEBIAN_FRONTEND=noninteractive",
                "RUNLEVEL=1",
                "apt-get",
            ]
            .iter()
            .map(|s| s.to_string()),
        );
        command.extend(args.iter().map(|s| s.to_string()));
        command
    };
    let install = |package: &str| apt(&["install", "-y", "--no-install-recommends", package]);
    let mut commands = Vec::new();
    if let Some(first) = packages.first() {
        commands.push(install(first));
        commands.push(apt(&["update"]));
    }
    commands.extend(packages.iter().map(|p| install(p)));
    commands
}

/// Runs [`apt_install_commands`] until `found` finds the program.
fn apt_install(packages: &[&str], found: impl Fn() -> Option<PathBuf>) -> Option<PathBuf> {
    for argv in apt_install_commands(is_root(), packages) {
        let mut command = Command::new(&argv[0]);
        command.args(&argv[1..]);
        if run(command, &format!("installing {}", packages.join(" or "))).is_ok()
            && let Some(path) = found()
        {
            return Some(path);
        }
    }
    None
}

/// nginx, installed from Debian packages when missing (unless `install` is false):
/// `nginx-light` (Debian 12's smallest build with the proxy and cache modules), else `nginx`.
pub fn ensure_nginx(install: bool) -> anyhow::Result<PathBuf> {
    if let Some(path) = find_nginx() {
        return Ok(path);
    }
    if !install {
        bail!(
            "nginx is not installed (run without --no-install, or `apt-get install nginx-light`)"
        );
    }
    apt_install(&["nginx-light", "nginx"], find_nginx).context(
        "could not install nginx with apt-get (tried nginx-light, apt-get update, nginx); \
         install it by hand or set NGINX=/path/to/nginx",
    )
}

/// The first `name` among `$env` (when set, taken as given), the directories of `PATH`, and
/// `extra` directories.
fn find_program(env: &str, name: &str, extra: &[&Path]) -> Option<PathBuf> {
    if let Some(path) = std::env::var_os(env) {
        return Some(PathBuf::from(path));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(extra.iter().map(|d| d.to_path_buf()))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// `varnishd`: `$VARNISHD`, else on `PATH` or in `/usr/sbin` (Debian's place for it).
pub fn find_varnishd() -> Option<PathBuf> {
    find_program("VARNISHD", "varnishd", &[Path::new("/usr/sbin")])
}

/// `varnishncsa` (Varnish's access logger): `$VARNISHNCSA`, else on `PATH`, in `/usr/bin`, or
/// beside `varnishd`.
pub fn find_varnishncsa(varnishd: &Path) -> Option<PathBuf> {
    let beside = varnishd.parent().unwrap_or(Path::new("/usr/bin"));
    find_program(
        "VARNISHNCSA",
        "varnishncsa",
        &[Path::new("/usr/bin"), beside],
    )
}

/// The version in the first line of `varnishd -V`, e.g. `varnishd (varnish-7.1.1 revision
/// 7cee1c5...)` → `(7, 1, 1)`; also the `varnish-plus-6.0.13r2` and `varnish-trunk` forms
/// (a trunk build has no number: `None`).
pub fn parse_varnish_version(line: &str) -> Option<(u32, u32, u32)> {
    let start = line.find("(varnish-")? + "(varnish-".len();
    let rest = &line[start..];
    let rest = rest.strip_prefix("plus-").unwrap_or(rest);
    let version = rest.split([' ', ')']).next()?;
    let mut parts = version.split('.').map(|p| {
        let digits: String = p.chars().take_while(char::is_ascii_digit).collect();
        digits.parse::<u32>().ok()
    });
    let major = parts.next()??;
    let minor = parts.next()??;
    let patch = parts.next().flatten().unwrap_or(0);
    Some((major, minor, patch))
}

/// Varnish Cache's programs as the comparison runs them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Varnish {
    pub varnishd: PathBuf,
    /// The access logger; `None` when it cannot be found, and Varnish then runs without an
    /// access log (the report says so).
    pub varnishncsa: Option<PathBuf>,
}

/// Varnish Cache, installed from Debian's `varnish` package when missing (unless `install` is
/// false); at least 6.0, for the generated VCL's `vcl 4.1`. The caller decides what a failure
/// means (`compare` skips the Varnish rows and says why).
pub fn ensure_varnish(install: bool) -> anyhow::Result<Varnish> {
    let varnishd = match find_varnishd() {
        Some(path) => path,
        None if !install => bail!(
            "Varnish is not installed (run without --no-install, or `apt-get install varnish`, \
             or set VARNISHD=/path/to/varnishd)"
        ),
        None => apt_install(&["varnish"], find_varnishd).context(
            "could not install Varnish with apt-get (tried varnish, apt-get update, varnish); \
             install it by hand (`apt-get install varnish`) or set VARNISHD=/path/to/varnishd",
        )?,
    };
    let line = version_line(&varnishd, &["-V"])
        .with_context(|| format!("`{} -V` failed", varnishd.display()))?;
    match parse_varnish_version(&line) {
        Some((major, _, _)) if major >= 6 => {}
        Some(_) => bail!(
            "{} is `{line}`: the generated VCL (vcl 4.1) needs Varnish 6.0 or newer",
            varnishd.display()
        ),
        None => bail!(
            "{} -V printed `{line}`, not a Varnish version",
            varnishd.display()
        ),
    }
    let varnishncsa = find_varnishncsa(&varnishd);
    Ok(Varnish {
        varnishd,
        varnishncsa,
    })
}

/// `wrk` for the cross-check, installed from Debian's package when missing (unless `install`
/// is false); `None` when it cannot be had (the cross-check is then skipped, not the run).
pub fn ensure_wrk(install: bool) -> Option<PathBuf> {
    crate::wrk::find().or_else(|| install.then(|| apt_install(&["wrk"], crate::wrk::find))?)
}

/// `nginx -V`'s configure arguments, to tell which modules it has.
pub fn nginx_configure_args(nginx: &Path) -> String {
    Command::new(nginx)
        .arg("-V")
        .stdin(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
        .unwrap_or_default()
}

/// Versions and provenance recorded with a comparison.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Versions {
    /// `git rev-parse HEAD` of the workspace.
    pub commit: Option<String>,
    /// Paths under runtime/, guest-modules/, wit/, Cargo.toml, Cargo.lock with uncommitted
    /// changes when cathedral was built (`git status --porcelain`): the binary is the commit
    /// plus these.
    pub uncommitted: Vec<String>,
    pub cathedral: Option<String>,
    /// When the cathedral binary was last written (UTC): with `--no-build` it may predate the
    /// commit above.
    pub cathedral_built_utc: Option<String>,
    pub nginx: Option<String>,
    /// First line of `varnishd -V`.
    pub varnish: Option<String>,
    pub wasmtime: Option<String>,
    pub rustc: Option<String>,
    /// `/proc/sys/net/core/somaxconn`.
    pub somaxconn: Option<String>,
}

/// Reads the versions of the given binaries and the git state of the workspace.
pub fn versions(
    cathedral: &Path,
    nginx: Option<&Path>,
    varnishd: Option<&Path>,
    wasmtime: Option<&Path>,
) -> Versions {
    let root = workspace_root();
    let git = |args: &[&str]| -> Option<String> {
        let output = Command::new("git")
            .current_dir(&root)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .ok()?;
        output
            .status
            .success()
            .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
    };
    Versions {
        commit: git(&["rev-parse", "HEAD"]).map(|s| s.trim().to_owned()),
        uncommitted: git(&[
            "status",
            "--porcelain",
            "--",
            "runtime",
            "guest-modules",
            "wit",
            "Cargo.toml",
            "Cargo.lock",
        ])
        .map(|s| s.lines().map(|l| l.trim().to_owned()).collect())
        .unwrap_or_default(),
        cathedral: version_line(cathedral, &["--version"]),
        cathedral_built_utc: std::fs::metadata(cathedral)
            .and_then(|m| m.modified())
            .ok()
            .map(|t| crate::report::utc_timestamp(t).1),
        nginx: nginx.and_then(|n| version_line(n, &["-v"])),
        varnish: varnishd.and_then(|v| version_line(v, &["-V"])),
        wasmtime: wasmtime.and_then(|w| version_line(w, &["--version"])),
        rustc: version_line(Path::new("rustc"), &["-V"]),
        somaxconn: std::fs::read_to_string("/proc/sys/net/core/somaxconn")
            .ok()
            .map(|s| s.trim().to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_locked_wasmtime_version_is_found() {
        let lock = r#"
[[package]]
name = "wasmtime-wasi"
version = "1.0.0"

[[package]]
name = "wasmtime"
version = "48.0.8"
source = "registry+https://github.com/rust-lang/crates.io-index"

[[package]]
name = "zzz"
version = "2.0.0"
"#;
        assert_eq!(locked_version(lock, "wasmtime").as_deref(), Some("48.0.8"));
        assert_eq!(locked_version(lock, "zzz").as_deref(), Some("2.0.0"));
        assert_eq!(locked_version(lock, "wasm"), None);
        assert_eq!(locked_version("", "wasmtime"), None);
    }

    #[test]
    fn the_workspace_locks_one_wasmtime() -> anyhow::Result<()> {
        let version = workspace_wasmtime_version()?;
        // The root Cargo.toml pins wasmtime with `=`; the lock must agree.
        let manifest = std::fs::read_to_string(workspace_root().join("Cargo.toml"))?;
        assert!(
            manifest.contains(&format!("wasmtime = {{ version = \"={version}\"")),
            "Cargo.lock has wasmtime {version}, the manifest pins another"
        );
        assert!(
            wasmtime_root(&version).ends_with(format!("target/bench-tools/wasmtime-{version}"))
        );
        Ok(())
    }

    #[test]
    fn df_output_parses() {
        assert_eq!(
            parse_df_avail("   Avail\n25769803776\n"),
            Some(25_769_803_776)
        );
        assert_eq!(parse_df_avail("Avail\n"), None);
        assert_eq!(parse_df_avail("Avail\nx\n"), None);
    }

    #[test]
    fn packages_are_installed_without_starting_services() {
        let as_root = apt_install_commands(true, &["nginx-light", "nginx"]);
        assert_eq!(
            as_root[0].join(" "),
            "env DEBIAN_FRONTEND=noninteractive RUNLEVEL=1 apt-get install -y \
             --no-install-recommends nginx-light"
        );
        assert_eq!(as_root.len(), 4);
        assert_eq!(as_root[1].last().map(String::as_str), Some("update"));
        assert_eq!(as_root[2].last().map(String::as_str), Some("nginx-light"));
        assert_eq!(as_root[3].last().map(String::as_str), Some("nginx"));
        let user = apt_install_commands(false, &["wrk"]);
        assert_eq!(user.len(), 3);
        assert!(user.iter().all(|c| c[0] == "sudo" && c[1] == "-n"));
        assert!(apt_install_commands(true, &[]).is_empty());
    }

    #[test]
    fn varnish_versions_parse() {
        let check = |line: &str, expected: Option<(u32, u32, u32)>| {
            assert_eq!(parse_varnish_version(line), expected, "{line}");
        };
        check(
            "varnishd (varnish-7.1.1 revision 7cee1c581bead20e88d101ab3d72afb29f14d87a)",
            Some((7, 1, 1)),
        );
        check(
            "varnishd (varnish-6.0.13 revision 9b5f68e19ca0ab60010641e305fd12822f18d42c)",
            Some((6, 0, 13)),
        );
        check(
            "varnishd (varnish-plus-6.0.13r2 revision 1234)",
            Some((6, 0, 13)),
        );
        check("varnishd (varnish-7.5.0)", Some((7, 5, 0)));
        check("varnishd (varnish-4.1)", Some((4, 1, 0)));
        check("varnishd (varnish-trunk revision abc)", None);
        check("nginx version: nginx/1.22.1", None);
        check("varnishd (varnish-", None);
        check("", None);
    }

    #[test]
    fn the_hello_body_matches_the_guest_source() -> anyhow::Result<()> {
        let source =
            std::fs::read_to_string(workspace_root().join(HELLO_GUEST_DIR).join("src/lib.rs"))?;
        let literal = format!(
            "b\"{}\"",
            String::from_utf8_lossy(HELLO_BODY).replace('\n', "\\n")
        );
        assert!(source.contains(&literal), "{literal} not in the guest");
        Ok(())
    }
}
