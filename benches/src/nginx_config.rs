//! The nginx configuration of the comparison, generated into the scenario's scratch directory:
//! nginx never reads the system's `/etc/nginx`, its logs, pid file, temp and cache directories
//! all live in that directory, and the file is stored with the results.
//!
//! What it is: the configuration an operator would run nginx with as a caching reverse proxy
//! in front of one origin — no tuning for the benchmark beyond what the scenarios need to run
//! at all (enough worker connections and file descriptors for 10,000 clients):
//! - one worker per CPU the systems under test may use (`worker_processes` = that count);
//! - upstream keep-alive (`keepalive 64`, HTTP/1.1, `Connection ""`), as every production
//!   proxy_pass set-up does, since cathedral pools upstream connections too;
//! - `Host` preserved and `X-Forwarded-For` / `X-Forwarded-Proto` added, as cathedral does;
//! - [`NginxMode::Cache`]: `proxy_cache` on a disk cache (`keys_zone` 10 MB, `max_size`
//!   256 MiB, the size of cathedral's default memory cache), freshness from the origin's
//!   `Cache-Control`; [`NginxMode::Proxy`]: no cache;
//! - access log on or off to match cathedral ([`NginxSpec::access_log`]): on, one JSON line
//!   per request with the fields of cathedral's access log, `buffer=64k flush=1s` (nginx's
//!   production way of keeping the write out of the request path, as cathedral's log writer
//!   thread does);
//! - `sendfile on` (Debian's stock config, and how nginx serves cached files), but not Debian's
//!   `tcp_nopush on`: with it, nginx 1.22 on loopback stalled every 100 KiB cache hit by about
//!   45 ms (a corked partial segment waiting for a delayed ACK: 20 req/s on one connection
//!   instead of 14,500), which would be measuring a pathology, not nginx;
//! - everything else at nginx's defaults (`keepalive_timeout` 75 s, `keepalive_requests`
//!   1000, `tcp_nodelay` on). No `Cache-Status` header is added: nginx does not send one by
//!   default, cathedral always does.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context as _;

/// Worker connections per worker (client and upstream connections together) and the file
/// descriptor limit of the workers: room for the 10,000-connection scenario. cathedral's
/// `[limits] max_connections` is set to the same number.
pub const WORKER_CONNECTIONS: usize = 16_384;

/// What the nginx instance does with requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NginxMode {
    /// `proxy_cache` in front of the origin.
    Cache,
    /// `proxy_pass` to the origin, no cache.
    Proxy,
}

/// One nginx instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NginxSpec {
    pub mode: NginxMode,
    pub listen: SocketAddr,
    pub origin: SocketAddr,
    /// The prefix directory: config, logs, pid, temp and cache directories.
    pub dir: PathBuf,
    /// `worker_processes`.
    pub workers: usize,
    pub access_log: bool,
    /// Modules compiled out of this nginx (`--without-http_<name>_module` in `nginx -V`),
    /// whose temp path directives must not appear.
    pub without: Vec<String>,
    /// `worker_rlimit_nofile`: the file-descriptor limit the harness runs with (workers that
    /// drop privileges cannot raise it further).
    pub nofile: u64,
}

/// Modules whose `*_temp_path` the config moves into the prefix directory when compiled in.
const TEMP_PATH_MODULES: [&str; 3] = ["fastcgi", "uwsgi", "scgi"];

/// The `--without-http_<module>_module` flags of `nginx -V` output among [`TEMP_PATH_MODULES`].
pub fn modules_without(configure_args: &str) -> Vec<String> {
    TEMP_PATH_MODULES
        .iter()
        .filter(|m| configure_args.contains(&format!("--without-http_{m}_module")))
        .map(|m| m.to_string())
        .collect()
}

/// A path as an nginx string: double-quoted, `"` and `\` escaped.
fn quoted(path: &Path) -> String {
    let s = path.display().to_string();
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// The access log format: cathedral's access-log fields, JSON-escaped.
const LOG_FORMAT: &str = r#"'{"time":"$time_iso8601","level":"INFO","target":"nginx::access",'
        '"client":"$remote_addr","method":"$request_method","host":"$host","path":"$uri",'
        '"proto":"$server_protocol","status":$status,"bytes":$body_bytes_sent,'
        '"duration_ms":$request_time,"route":"bench","cache":"$upstream_cache_status",'
        '"upstream":"$upstream_addr"}'"#;

/// `nginx.conf` for `spec`.
pub fn nginx_conf(spec: &NginxSpec) -> String {
    let d = |name: &str| quoted(&spec.dir.join(name));
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# cathedral-bench compare: nginx {mode}, generated; run as\n\
         # nginx -p <dir> -c <dir>/nginx.conf -e <dir>/error.log\n\
         daemon off;\n\
         master_process on;\n\
         worker_processes {workers};\n\
         worker_rlimit_nofile {nofile};\n\
         pid {pid};\n\
         error_log {error} warn;\n\
         \n\
         events {{\n    worker_connections {WORKER_CONNECTIONS};\n}}\n\
         \n\
         http {{\n    \
         default_type application/octet-stream;\n    \
         sendfile on;\n    \
         server_tokens off;\n    \
         client_body_temp_path {client_body};\n    \
         proxy_temp_path {proxy_temp};",
        mode = match spec.mode {
            NginxMode::Cache => "proxy_cache",
            NginxMode::Proxy => "proxy_pass",
        },
        workers = spec.workers.max(1),
        nofile = spec.nofile,
        pid = d("nginx.pid"),
        error = d("error.log"),
        client_body = d("client_body_temp"),
        proxy_temp = d("proxy_temp"),
    );
    for module in TEMP_PATH_MODULES {
        if !spec.without.iter().any(|w| w == module) {
            let _ = writeln!(
                out,
                "    {module}_temp_path {};",
                d(&format!("{module}_temp"))
            );
        }
    }
    if spec.access_log {
        let _ = writeln!(
            out,
            "\n    log_format bench escape=json\n        {LOG_FORMAT};\n    \
             access_log {} bench buffer=64k flush=1s;",
            d("access.log")
        );
    } else {
        out.push_str("\n    access_log off;\n");
    }
    if spec.mode == NginxMode::Cache {
        let _ = writeln!(
            out,
            "\n    proxy_cache_path {} levels=1:2 keys_zone=bench:10m max_size=256m \
             inactive=60m use_temp_path=off;",
            d("cache")
        );
    }
    let _ = write!(
        out,
        "\n    upstream origin {{\n        server {origin};\n        keepalive 64;\n    }}\n\
         \n    server {{\n        listen {listen};\n\
         \n        location / {{\n            \
         proxy_pass http://origin;\n            \
         proxy_http_version 1.1;\n            \
         proxy_set_header Connection \"\";\n            \
         proxy_set_header Host $http_host;\n            \
         proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n            \
         proxy_set_header X-Forwarded-Proto $scheme;\n",
        origin = spec.origin,
        listen = spec.listen,
    );
    if spec.mode == NginxMode::Cache {
        out.push_str("            proxy_cache bench;\n");
    }
    out.push_str("        }\n    }\n}\n");
    out
}

/// Writes `nginx.conf` into `spec.dir` (created) and returns its path.
pub fn write(spec: &NginxSpec) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(&spec.dir)
        .with_context(|| format!("creating {}", spec.dir.display()))?;
    let path = spec.dir.join("nginx.conf");
    std::fs::write(&path, nginx_conf(spec))
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// The arguments that run nginx on `spec`'s config in the foreground: `-p <dir> -c <conf>
/// -e <error log>` (`-e` so that nothing, not even a startup message, goes to the system's log).
pub fn args(spec: &NginxSpec) -> Vec<std::ffi::OsString> {
    vec![
        "-p".into(),
        spec.dir.clone().into(),
        "-c".into(),
        spec.dir.join("nginx.conf").into(),
        "-e".into(),
        spec.dir.join("error.log").into(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(mode: NginxMode, access_log: bool) -> NginxSpec {
        NginxSpec {
            mode,
            listen: SocketAddr::from(([127, 0, 0, 1], 18_080)),
            origin: SocketAddr::from(([127, 0, 0, 1], 18_001)),
            dir: PathBuf::from("/tmp/bench \"x\""),
            workers: 1,
            access_log,
            without: Vec::new(),
            nofile: 20_000,
        }
    }

    /// The braces of a generated config balance and every directive line ends in `;`, `{` or
    /// `}` (or continues a multi-line directive) — what `nginx -t` would first trip over.
    fn check_shape(conf: &str) {
        let mut depth = 0i32;
        for c in conf.chars() {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                _ => {}
            }
            assert!(depth >= 0, "unbalanced braces:\n{conf}");
        }
        assert_eq!(depth, 0, "unbalanced braces:\n{conf}");
        let mut continued = false;
        for line in conf.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            continued = !(line.ends_with(';') || line.ends_with('{') || line.ends_with('}'));
        }
        assert!(!continued, "a directive is not terminated:\n{conf}");
    }

    #[test]
    fn cache_and_proxy_configs_differ_only_in_the_cache() {
        let cache = nginx_conf(&spec(NginxMode::Cache, true));
        let proxy = nginx_conf(&spec(NginxMode::Proxy, true));
        check_shape(&cache);
        check_shape(&proxy);
        assert!(cache.contains("    proxy_cache_path \"/tmp/bench \\\"x\\\"/cache\" levels=1:2 keys_zone=bench:10m max_size=256m inactive=60m use_temp_path=off;\n"));
        assert!(cache.contains("            proxy_cache bench;\n"));
        assert!(!proxy.contains("proxy_cache"));
        let without_cache: String = cache
            .lines()
            .filter(|l| !l.trim_start().starts_with("proxy_cache"))
            .map(|l| format!("{l}\n"))
            .collect::<String>()
            .replace("nginx proxy_cache", "nginx proxy_pass");
        assert_eq!(without_cache.replace("\n\n\n", "\n\n"), proxy);
    }

    #[test]
    fn the_config_is_self_contained() {
        let conf = nginx_conf(&spec(NginxMode::Cache, true));
        for expected in [
            "daemon off;\n",
            "worker_processes 1;\n",
            "worker_rlimit_nofile 20000;\n",
            "    sendfile on;\n    server_tokens off;\n",
            "    worker_connections 16384;\n",
            "pid \"/tmp/bench \\\"x\\\"/nginx.pid\";\n",
            "error_log \"/tmp/bench \\\"x\\\"/error.log\" warn;\n",
            "    client_body_temp_path \"/tmp/bench \\\"x\\\"/client_body_temp\";\n",
            "    fastcgi_temp_path \"/tmp/bench \\\"x\\\"/fastcgi_temp\";\n",
            "        server 127.0.0.1:18001;\n        keepalive 64;\n",
            "        listen 127.0.0.1:18080;\n",
            "            proxy_http_version 1.1;\n            proxy_set_header Connection \"\";\n",
        ] {
            assert!(conf.contains(expected), "{expected:?} missing in:\n{conf}");
        }
        // Nothing outside the prefix directory: no system paths, no includes.
        assert!(!conf.contains("/etc/"), "{conf}");
        assert!(!conf.contains("/var/"), "{conf}");
        assert!(!conf.contains("include"), "{conf}");
    }

    #[test]
    fn access_logging_is_on_or_off() {
        let on = nginx_conf(&spec(NginxMode::Proxy, true));
        assert!(on.contains("log_format bench escape=json"));
        assert!(on.contains(
            "    access_log \"/tmp/bench \\\"x\\\"/access.log\" bench buffer=64k flush=1s;\n"
        ));
        assert!(on.contains(r#""cache":"$upstream_cache_status""#));
        let off = nginx_conf(&spec(NginxMode::Proxy, false));
        assert!(off.contains("    access_log off;\n"));
        assert!(!off.contains("log_format"));
        check_shape(&off);
    }

    #[test]
    fn temp_paths_of_missing_modules_are_left_out() {
        let args = "configure arguments: --with-cc-opt=-g --without-http_uwsgi_module \
                    --without-http_scgi_module --with-http_ssl_module";
        assert_eq!(modules_without(args), ["uwsgi", "scgi"]);
        let mut s = spec(NginxMode::Cache, false);
        s.without = modules_without(args);
        s.workers = 3;
        let conf = nginx_conf(&s);
        assert!(conf.contains("fastcgi_temp_path"));
        assert!(!conf.contains("uwsgi_temp_path") && !conf.contains("scgi_temp_path"));
        assert!(conf.contains("worker_processes 3;\n"));
    }

    #[test]
    fn nginx_runs_on_the_generated_prefix() {
        let s = spec(NginxMode::Proxy, false);
        let a: Vec<String> = args(&s)
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            a,
            [
                "-p",
                "/tmp/bench \"x\"",
                "-c",
                "/tmp/bench \"x\"/nginx.conf",
                "-e",
                "/tmp/bench \"x\"/error.log"
            ]
        );
    }

    /// With nginx installed, `nginx -t` accepts both generated configs as they are written
    /// (modules compiled out of this nginx left out); without it the test says SKIPPED.
    #[test]
    fn nginx_accepts_the_generated_configs() -> anyhow::Result<()> {
        let Some(nginx) = crate::peers::find_nginx() else {
            eprintln!("SKIPPED: nginx is not installed (`cathedral-bench prepare` installs it)");
            return Ok(());
        };
        let without = modules_without(&crate::peers::nginx_configure_args(&nginx));
        let root =
            std::env::temp_dir().join(format!("cathedral-bench-nginx-t-{}", std::process::id()));
        for (mode, log) in [(NginxMode::Cache, true), (NginxMode::Proxy, false)] {
            let mut s = spec(mode, log);
            s.dir = root.join(format!("{mode:?}"));
            s.without = without.clone();
            write(&s)?;
            let output = std::process::Command::new(&nginx)
                .arg("-t")
                .args(args(&s))
                .output()?;
            assert!(
                output.status.success(),
                "nginx -t refused the {mode:?} config:\n{}\n{}",
                String::from_utf8_lossy(&output.stderr),
                nginx_conf(&s)
            );
        }
        std::fs::remove_dir_all(&root)?;
        Ok(())
    }

    #[test]
    fn write_creates_the_prefix() -> anyhow::Result<()> {
        let dir =
            std::env::temp_dir().join(format!("cathedral-bench-nginx-{}", std::process::id()));
        let mut s = spec(NginxMode::Cache, true);
        s.dir = dir.join("prefix");
        let path = write(&s)?;
        assert_eq!(std::fs::read_to_string(&path)?, nginx_conf(&s));
        std::fs::remove_dir_all(&dir)?;
        Ok(())
    }
}
