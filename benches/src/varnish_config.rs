//! The Varnish Cache instance `compare` runs beside nginx: its VCL, and the `varnishd` and
//! `varnishncsa` command lines. Varnish never reads `/etc/varnish` or `/var/lib/varnish`: the
//! VCL and the access log live in the scenario's scratch directory, the working directory
//! (`-n`, shared-memory log and compiled VCL) in a RAM-backed temp directory ([`WorkDir`]).
//!
//! What it is: Varnish as its users run it in front of one origin, nothing tuned for the
//! benchmark beyond what the scenarios need to run at all:
//! - the origin is the only backend (`.host`/`.port` of the harness's origin, default
//!   timeouts, Varnish's own backend keep-alive);
//! - [`VarnishMode::Cache`]: Varnish's built-in VCL decides, i.e. objects are cached for as
//!   long as the origin's `Cache-Control: max-age` says, exactly as nginx's `proxy_cache` is
//!   configured (no `proxy_cache_valid`, so no `beresp.ttl` either); [`VarnishMode::Pass`]:
//!   `return (pass)` in `vcl_recv`, every request forwarded, like nginx's `proxy_pass`;
//! - `Host` forwarded untouched and `X-Forwarded-For` appended (both Varnish's defaults), and
//!   `X-Forwarded-Proto` set on backend requests, as nginx and cathedral do; nothing stripped
//!   from responses, nothing added beyond Varnish's own `Age`, `Via` and `X-Varnish`;
//! - storage `-s malloc,256m`: the objects fit in memory, as in cathedral's moka cache (256 MiB
//!   by default) — nginx's cache is on disk but is served from the page cache, so all three
//!   answer hits from RAM; 256 MiB is also nginx's `max_size` and the Debian unit's setting;
//! - worker threads at Varnish's defaults (`thread_pools` 2, `thread_pool_min` 100,
//!   `thread_pool_max` 5000 per pool): 64 busy connections on one pinned CPU are well inside
//!   them, and so are the c10k scenario's 10,000 mostly idle ones (idle sessions wait in the
//!   waiter, not on a thread);
//! - one parameter changed: `timeout_idle` 75 s (Varnish's default is 5 s), nginx's default
//!   `keepalive_timeout`; cathedral's idle timeout is 60 s. The c10k scenario sends one request
//!   per connection every 5 s, so with the default Varnish would close every held connection
//!   between two requests and the scenario would measure reconnects. The 64-connection
//!   scenarios never leave a connection idle, so it changes nothing there;
//! - listening on the given loopback address only (`-a`), no management port (`-T none`):
//!   [`varnishd_args`] refuses anything but a loopback address;
//! - access log on or off to match nginx and cathedral ([`VarnishSpec::access_log`]): Varnish
//!   writes every request to its shared-memory log regardless; its access log is
//!   `varnishncsa`, a separate process reading that log and writing one JSON line per request
//!   (`-j`, [`LOG_FORMAT`]: the fields of nginx's line) to a file. The harness runs it pinned
//!   with Varnish and counts its CPU and RSS as Varnish's.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};

/// Varnish's storage: in memory, 256 MiB.
pub const STORAGE: &str = "malloc,256m";

/// Varnish's `timeout_idle` in seconds (nginx's default `keepalive_timeout`).
pub const TIMEOUT_IDLE_SECS: u32 = 75;

/// What the Varnish instance does with requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VarnishMode {
    /// Cache per the origin's headers (the built-in VCL).
    Cache,
    /// `return (pass)`: every request forwarded to the origin, nothing cached.
    Pass,
}

/// One Varnish instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VarnishSpec {
    pub mode: VarnishMode,
    pub listen: SocketAddr,
    pub origin: SocketAddr,
    /// VCL and access log (the scenario's scratch directory for this system).
    pub dir: PathBuf,
    /// `-n`: shared-memory log, compiled VCL.
    pub workdir: PathBuf,
    /// Whether `varnishncsa` writes an access log.
    pub access_log: bool,
}

impl VarnishSpec {
    pub fn vcl_path(&self) -> PathBuf {
        self.dir.join("bench.vcl")
    }

    pub fn access_log_path(&self) -> PathBuf {
        self.dir.join("access.log")
    }
}

/// `varnishncsa -F` format: the fields of nginx's (and cathedral's) JSON access-log line.
/// `bytes` is the body bytes sent (`ReqAcct` field 5; `%b` would print `-` for none);
/// `duration_us` is `%D`, microseconds (nginx's `duration_ms` has millisecond resolution);
/// `cache` is Varnish's handling (`hit`, `miss`, `pass`, ...). There is no upstream address on
/// the client side of Varnish's log, so that field is left out.
pub const LOG_FORMAT: &str = r#"{"time":"%{%Y-%m-%dT%H:%M:%S%z}t","level":"INFO","target":"varnish::access","client":"%h","method":"%m","host":"%{Host}i","path":"%U","proto":"%H","status":%s,"bytes":%{VSL:ReqAcct[5]}x,"duration_us":%D,"route":"bench","cache":"%{Varnish:handling}x"}"#;

/// A string as a VCL string literal: VCL's `"..."` strings have no escapes, so a `"` or a
/// newline cannot be represented and is refused.
fn vcl_string(s: &str) -> anyhow::Result<String> {
    if s.contains('"') || s.contains('\n') || s.contains('\r') {
        bail!("{s:?} cannot be written as a VCL string");
    }
    Ok(format!("\"{s}\""))
}

/// The VCL for `spec`.
pub fn vcl(spec: &VarnishSpec) -> anyhow::Result<String> {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# cathedral-bench compare: Varnish {mode}, generated.\n\
         vcl 4.1;\n\
         \n\
         # The harness's origin, the only backend (default timeouts, keep-alive).\n\
         backend origin {{\n    \
         .host = {host};\n    \
         .port = \"{port}\";\n\
         }}\n",
        mode = match spec.mode {
            VarnishMode::Cache => "cache",
            VarnishMode::Pass => "pass",
        },
        host = vcl_string(&spec.origin.ip().to_string())?,
        port = spec.origin.port(),
    );
    match spec.mode {
        VarnishMode::Cache => out.push_str(
            "# No vcl_recv and no vcl_backend_response: the built-in VCL caches what the\n\
             # origin's Cache-Control allows, for as long as it says (nginx gets no\n\
             # proxy_cache_valid either).\n\n",
        ),
        VarnishMode::Pass => out.push_str(
            "# Caching off: every request goes to the origin, as with nginx's proxy_pass.\n\
             sub vcl_recv {\n    \
             return (pass);\n\
             }\n\n",
        ),
    }
    out.push_str(
        "# Host is forwarded as received and X-Forwarded-For appended by Varnish itself;\n\
         # X-Forwarded-Proto as nginx and cathedral send it.\n\
         sub vcl_backend_fetch {\n    \
         set bereq.http.X-Forwarded-Proto = \"http\";\n\
         }\n",
    );
    Ok(out)
}

/// Writes the VCL into `spec.dir` (created) and returns its path.
pub fn write(spec: &VarnishSpec) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(&spec.dir)
        .with_context(|| format!("creating {}", spec.dir.display()))?;
    let path = spec.vcl_path();
    std::fs::write(&path, vcl(spec)?).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// The arguments that run `varnishd` on `spec` in the foreground: `-F`, `-a` on the loopback
/// listen address (anything else is refused), no management interface (`-T none`), `-n`, `-f`,
/// `-s` and the one changed parameter.
pub fn varnishd_args(spec: &VarnishSpec) -> anyhow::Result<Vec<std::ffi::OsString>> {
    if !spec.listen.ip().is_loopback() {
        bail!(
            "Varnish must listen on a loopback address only, not {}",
            spec.listen
        );
    }
    Ok(vec![
        "-F".into(),
        "-a".into(),
        spec.listen.to_string().into(),
        "-T".into(),
        "none".into(),
        "-n".into(),
        spec.workdir.clone().into(),
        "-f".into(),
        spec.vcl_path().into(),
        "-s".into(),
        STORAGE.into(),
        "-p".into(),
        format!("timeout_idle={TIMEOUT_IDLE_SECS}").into(),
    ])
}

/// The arguments of `varnishncsa` writing `spec`'s access log: client requests (`-c`), JSON-safe
/// fields (`-j`), [`LOG_FORMAT`], to [`VarnishSpec::access_log_path`].
pub fn varnishncsa_args(spec: &VarnishSpec) -> Vec<std::ffi::OsString> {
    vec![
        "-n".into(),
        spec.workdir.clone().into(),
        "-c".into(),
        "-j".into(),
        "-w".into(),
        spec.access_log_path().into(),
        "-F".into(),
        LOG_FORMAT.into(),
    ]
}

/// Varnish's working directory for one instance, removed when dropped (also on error paths).
/// Varnish wants it RAM-backed ("in performance critical applications", `varnishd(1)`; the
/// packaged default is under `/run`): `/dev/shm` when present, else `fallback`.
#[derive(Debug)]
pub struct WorkDir {
    pub path: PathBuf,
}

impl WorkDir {
    /// A fresh `cathedral-bench-varnish-<pid>-<name>` under `/dev/shm`, or `fallback` (created).
    pub fn create(name: &str, fallback: &Path) -> anyhow::Result<Self> {
        Self::create_in(Path::new("/dev/shm"), name, fallback)
    }

    fn create_in(ram: &Path, name: &str, fallback: &Path) -> anyhow::Result<Self> {
        let path = if ram.is_dir() {
            ram.join(format!(
                "cathedral-bench-varnish-{}-{name}",
                std::process::id()
            ))
        } else {
            fallback.to_owned()
        };
        // A leftover of an earlier run with the same pid would hold a stale shared-memory log.
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self { path })
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(mode: VarnishMode, access_log: bool) -> VarnishSpec {
        VarnishSpec {
            mode,
            listen: SocketAddr::from(([127, 0, 0, 1], 18_080)),
            origin: SocketAddr::from(([127, 0, 0, 1], 18_001)),
            dir: PathBuf::from("/tmp/bench x"),
            workdir: PathBuf::from("/dev/shm/work"),
            access_log,
        }
    }

    fn show(args: &[std::ffi::OsString]) -> Vec<String> {
        args.iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    /// The VCL's braces balance and every statement ends in `;`, `{` or `}`.
    fn check_shape(vcl: &str) {
        let mut depth = 0i32;
        for line in vcl.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            depth += line.matches('{').count() as i32 - line.matches('}').count() as i32;
            assert!(depth >= 0, "unbalanced braces:\n{vcl}");
            assert!(
                line.ends_with(';') || line.ends_with('{') || line.ends_with('}'),
                "{line:?} is not terminated:\n{vcl}"
            );
        }
        assert_eq!(depth, 0, "unbalanced braces:\n{vcl}");
    }

    #[test]
    fn the_backend_is_the_origin() -> anyhow::Result<()> {
        let vcl = vcl_check(&spec(VarnishMode::Cache, true))?;
        assert!(vcl.starts_with("vcl 4.1;\n"), "{vcl}");
        assert!(
            vcl.contains(
                "backend origin {\n    .host = \"127.0.0.1\";\n    .port = \"18001\";\n}\n"
            ),
            "{vcl}"
        );
        assert_eq!(vcl.matches("backend ").count(), 1, "one backend:\n{vcl}");
        assert!(!vcl.contains("import "), "no vmods:\n{vcl}");
        assert!(vcl.contains("set bereq.http.X-Forwarded-Proto = \"http\";"));
        let mut v6 = spec(VarnishMode::Cache, true);
        v6.origin = "[::1]:9".parse()?;
        assert!(vcl_check(&v6)?.contains(".host = \"::1\";\n    .port = \"9\";"));
        Ok(())
    }

    /// The VCL of `s` without its comment lines, after checking its shape.
    fn vcl_check(s: &VarnishSpec) -> anyhow::Result<String> {
        let text = vcl(s)?;
        check_shape(&text);
        Ok(text
            .lines()
            .filter(|l| !l.trim_start().starts_with('#'))
            .map(|l| format!("{l}\n"))
            .collect())
    }

    #[test]
    fn cache_mode_follows_the_origin_and_pass_mode_caches_nothing() -> anyhow::Result<()> {
        let cache = vcl_check(&spec(VarnishMode::Cache, true))?;
        let pass = vcl_check(&spec(VarnishMode::Pass, true))?;
        // Cache: the built-in VCL decides; no TTL of our own (nginx has no proxy_cache_valid),
        // no pass, nothing stripped.
        for absent in [
            "return (pass)",
            "vcl_recv",
            "beresp.ttl",
            "unset ",
            "vcl_deliver",
        ] {
            assert!(!cache.contains(absent), "{absent:?} in:\n{cache}");
        }
        assert!(
            pass.contains("sub vcl_recv {\n    return (pass);\n}\n"),
            "{pass}"
        );
        for absent in ["beresp.ttl", "unset ", "vcl_deliver"] {
            assert!(!pass.contains(absent), "{absent:?} in:\n{pass}");
        }
        Ok(())
    }

    #[test]
    fn varnish_binds_the_loopback_address_only() -> anyhow::Result<()> {
        let s = spec(VarnishMode::Cache, true);
        let args = show(&varnishd_args(&s)?);
        assert_eq!(
            args,
            [
                "-F",
                "-a",
                "127.0.0.1:18080",
                "-T",
                "none",
                "-n",
                "/dev/shm/work",
                "-f",
                "/tmp/bench x/bench.vcl",
                "-s",
                "malloc,256m",
                "-p",
                "timeout_idle=75"
            ]
        );
        // No other listening option: no -M (reverse CLI), no second -a.
        assert_eq!(args.iter().filter(|a| *a == "-a").count(), 1);
        assert!(!args.iter().any(|a| a == "-M"));
        let mut open = spec(VarnishMode::Cache, true);
        open.listen = SocketAddr::from(([0, 0, 0, 0], 18_080));
        let refused = varnishd_args(&open).err().map(|e| e.to_string());
        assert!(
            refused.as_deref().is_some_and(|e| e.contains("loopback")),
            "{refused:?}"
        );
        let mut v6 = spec(VarnishMode::Pass, false);
        v6.listen = "[::1]:18080".parse()?;
        assert!(show(&varnishd_args(&v6)?).contains(&"[::1]:18080".to_owned()));
        Ok(())
    }

    #[test]
    fn the_access_log_is_json_with_nginxs_fields() -> anyhow::Result<()> {
        let s = spec(VarnishMode::Cache, true);
        assert_eq!(
            show(&varnishncsa_args(&s)),
            [
                "-n",
                "/dev/shm/work",
                "-c",
                "-j",
                "-w",
                "/tmp/bench x/access.log",
                "-F",
                LOG_FORMAT
            ]
        );
        // With every formatter replaced by a sample value, the line is a JSON object with the
        // fields of nginx's line (except the upstream, which the client side does not know).
        let sample = LOG_FORMAT
            .replace("%{%Y-%m-%dT%H:%M:%S%z}t", "2026-11-27T00:00:00+0000")
            .replace("%{VSL:ReqAcct[5]}x", "1024")
            .replace("%{Varnish:handling}x", "hit")
            .replace("%{Host}i", "127.0.0.1:1")
            .replace("%h", "127.0.0.1")
            .replace("%m", "GET")
            .replace("%U", "/object")
            .replace("%H", "HTTP/1.1")
            .replace("%s", "200")
            .replace("%D", "150");
        assert!(!sample.contains('%'), "{sample}");
        let line: serde_json::Value = serde_json::from_str(&sample)?;
        for field in [
            "time", "level", "target", "client", "method", "host", "path", "proto", "status",
            "bytes", "route", "cache",
        ] {
            assert!(line.get(field).is_some(), "{field} missing in {sample}");
        }
        assert_eq!(line["status"], 200);
        assert_eq!(line["bytes"], 1024);
        Ok(())
    }

    #[test]
    fn vcl_strings_refuse_what_vcl_cannot_hold() {
        assert_eq!(
            vcl_string("127.0.0.1").ok().as_deref(),
            Some("\"127.0.0.1\"")
        );
        assert!(vcl_string("a\"b").is_err());
        assert!(vcl_string("a\nb").is_err());
    }

    #[test]
    fn the_workdir_is_fresh_and_removed() -> anyhow::Result<()> {
        let base =
            std::env::temp_dir().join(format!("cathedral-bench-varnish-wd-{}", std::process::id()));
        let ram = base.join("ram");
        std::fs::create_dir_all(&ram)?;
        let path = {
            let dir = WorkDir::create_in(&ram, "t", &base.join("fallback"))?;
            assert!(dir.path.starts_with(&ram), "{:?}", dir.path);
            std::fs::write(dir.path.join("_.vsm"), "x")?;
            dir.path.clone()
        };
        assert!(!path.exists(), "dropping removes the workdir");
        let fallback = base.join("fallback");
        {
            let dir = WorkDir::create_in(&base.join("no-such-ram"), "t", &fallback)?;
            assert_eq!(dir.path, fallback);
            assert!(fallback.is_dir());
        }
        assert!(!fallback.exists());
        std::fs::remove_dir_all(&base)?;
        Ok(())
    }

    /// With Varnish installed, `varnishd -C` compiles both generated VCLs as they are written;
    /// without it the test says SKIPPED.
    #[test]
    fn varnish_compiles_the_generated_vcl() -> anyhow::Result<()> {
        let Some(varnishd) = crate::peers::find_varnishd() else {
            eprintln!("SKIPPED: varnishd is not installed (`cathedral-bench prepare` installs it)");
            return Ok(());
        };
        let root =
            std::env::temp_dir().join(format!("cathedral-bench-varnish-c-{}", std::process::id()));
        for mode in [VarnishMode::Cache, VarnishMode::Pass] {
            let mut s = spec(mode, true);
            s.dir = root.join(format!("{mode:?}"));
            s.workdir = root.join(format!("{mode:?}-work"));
            let vcl_path = write(&s)?;
            let output = std::process::Command::new(&varnishd)
                .arg("-C")
                .arg("-n")
                .arg(&s.workdir)
                .arg("-f")
                .arg(&vcl_path)
                .output()?;
            assert!(
                output.status.success(),
                "varnishd -C refused the {mode:?} VCL:\n{}\n{}",
                String::from_utf8_lossy(&output.stderr),
                vcl(&s)?
            );
        }
        std::fs::remove_dir_all(&root)?;
        Ok(())
    }
}
