//! The `cathedral` binary: command line, logging, signals. Everything else
//! lives in the library crates.
//!
//! Exit codes: 0 success, 1 runtime failure, 2 bad usage or configuration
//! (and, for `module check`, a component that fits no world).

mod admin_client;
mod audit_cmd;
mod bundle_build;
mod bundle_cmd;
mod cmd;
mod keys_cmd;
mod log_format;
mod log_writer;
mod origin_cmd;
mod quick;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use cathedral_config::{Bootstrap, ConfigErrors, EdgeConfig, Overrides};
use cathedral_edge::bundles::BundleManager;
use cathedral_edge::{ConfigSource, Loaded, Node};
use clap::{ArgGroup, Args, Parser, Subcommand, ValueEnum};
use tracing::{error, info, warn};

const DEFAULT_CONFIG: &str = "edge-config/node.toml";

#[derive(Debug, Parser)]
#[command(
    name = "cathedral",
    version,
    about = "Cathedral: an edge compute runtime on WebAssembly"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run an edge node.
    ///
    /// With no arguments, run from the repository root, it serves the demo
    /// site from edge-config/ with the default region's overlay on
    /// http://127.0.0.1:8080, admin API on http://127.0.0.1:9090.
    ///
    /// Quick modes (--upstream, --handler, with --filter) read no edge
    /// config: the bootstrap is --config if given, else the built-in
    /// defaults, with no Wasm artifact cache (components are compiled at
    /// every start).
    Serve(ServeArgs),
    /// Inspect configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// WebAssembly modules (components) for filters and handlers.
    #[command(subcommand)]
    Module(ModuleCommand),
    /// TLS helpers.
    #[command(subcommand)]
    Tls(TlsCommand),
    /// Keys for signed bundles: key pairs, root documents, keysets.
    #[command(subcommand)]
    Keys(keys_cmd::KeysCommand),
    /// Signed bundles: build, sign, verify, publish, push, activate.
    #[command(subcommand)]
    Bundle(bundle_cmd::BundleCommand),
    /// Origins that edges in bundle mode fetch from.
    #[command(subcommand)]
    Origin(origin_cmd::OriginCommand),
    /// The hash-chained audit log an edge keeps in its state directory.
    #[command(subcommand)]
    Audit(audit_cmd::AuditCommand),
}

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("quick").args(["upstream", "handler"])))]
struct ServeArgs {
    /// Bootstrap config file (it names the edge config and the regions directory).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Region whose overlay (regions/<ID>.toml) applies; overrides node.region.
    #[arg(long, value_name = "ID")]
    region: Option<String>,
    /// Plain HTTP listener (HTTP/1.1 and h2c); replaces the configured ones.
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// TLS listener (HTTP/1.1 and h2 by ALPN); needs [tls] certificates in the config.
    #[arg(long, value_name = "ADDR")]
    tls_listen: Option<SocketAddr>,
    /// Admin API listener (metrics, health, reload).
    #[arg(long, value_name = "ADDR")]
    admin_listen: Option<SocketAddr>,
    /// Admin bearer token; required when the admin listener is not loopback.
    #[arg(
        long,
        env = "CATHEDRAL_ADMIN_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    admin_token: Option<String>,
    /// Quick mode: one catch-all route proxying to this origin, everything
    /// else at defaults (like varnishd -b).
    #[arg(long, value_name = "URL", conflicts_with = "handler")]
    upstream: Option<String>,
    /// Quick mode: one catch-all route answered by this `handler` component
    /// (a wasi:http/proxy component, as `wasmtime serve FILE.wasm` runs it).
    /// Its outgoing requests are refused. SIGHUP reloads the file.
    #[arg(long, value_name = "FILE.wasm")]
    handler: Option<PathBuf>,
    /// A `filter` component on the quick route of --upstream or --handler.
    /// Repeatable: on-request runs in the order given, on-response in
    /// reverse. Each fails closed (a failing filter answers 503) and sees
    /// response heads, not bodies. SIGHUP reloads the files.
    #[arg(long = "filter", value_name = "FILE.wasm", requires = "quick")]
    filters: Vec<PathBuf>,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Validate the configuration and print the effective merged result.
    ///
    /// Exits 2 and lists every problem (file, key, reason) when invalid.
    Check {
        /// Bootstrap config file.
        #[arg(long, value_name = "FILE", default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// Region whose overlay applies; overrides node.region.
        #[arg(long, value_name = "ID")]
        region: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum ModuleCommand {
    /// Check whether a component fits the `filter` or the `handler` world.
    ///
    /// Prints the world it fits, or for each world the import or export that
    /// is wrong, then its blake3, size, imports and exports. Exits 0 when it
    /// fits a world, 2 when it fits neither, cannot be read or is not a
    /// WebAssembly component.
    Check {
        /// The component (.wasm).
        #[arg(value_name = "FILE.wasm")]
        file: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum TlsCommand {
    /// Write a self-signed development certificate and key (cert.pem, key.pem).
    SelfSigned {
        /// Directory to write into (created if missing).
        #[arg(long, value_name = "DIR", default_value = "edge-config/certs")]
        out: PathBuf,
        /// Names the certificate is valid for.
        #[arg(long = "name", value_name = "NAME", default_values_t = ["localhost".to_string(), "127.0.0.1".to_string()])]
        names: Vec<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve(args),
        Command::Config(ConfigCommand::Check { config, region }) => config_check(&config, region),
        Command::Module(ModuleCommand::Check { file }) => module_check(&file),
        Command::Tls(TlsCommand::SelfSigned { out, names }) => match self_signed(&out, names) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::from(1)
            }
        },
        Command::Keys(command) => cmd::finish(keys_cmd::run(command)),
        Command::Bundle(command) => cmd::finish(bundle_cmd::run(command)),
        Command::Origin(command) => cmd::finish(origin_cmd::run(command)),
        Command::Audit(command) => cmd::finish(audit_cmd::run(command)),
    }
}

fn config_check(config: &Path, region: Option<String>) -> ExitCode {
    let overrides = Overrides {
        region,
        ..Overrides::default()
    };
    // Bundle mode: the edge config arrives in signed bundles (checked
    // against each bundle's files by `bundle build` and `bundle verify`).
    if let Ok(bootstrap) = cathedral_config::load_bootstrap(config, &overrides)
        && bootstrap.bundles.is_some()
    {
        let mut out = String::from(
            "# Bundle mode: routes, upstreams and modules come from signed bundles.\n\n",
        );
        out.push_str(&cathedral_config::render_effective(
            &bootstrap,
            &empty_edge(&bootstrap.region),
        ));
        print_stdout(&out);
        return ExitCode::SUCCESS;
    }
    match cathedral_config::load(config, &overrides) {
        Ok((bootstrap, edge)) => {
            print_stdout(&cathedral_config::render_effective(&bootstrap, &edge));
            ExitCode::SUCCESS
        }
        Err(errors) => config_failure(&errors),
    }
}

fn module_check(file: &Path) -> ExitCode {
    let bytes = match std::fs::read(file) {
        Ok(bytes) => bytes,
        Err(e) => {
            eprintln!("error: cannot read {}: {e}", file.display());
            return ExitCode::from(2);
        }
    };
    if let Some(problem) = not_a_component(&bytes) {
        eprintln!("error: {}: {problem}", file.display());
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(cathedral_wasm::check_component(bytes)) {
        Ok(report) => {
            print_stdout(&report.to_string());
            if report.kind().is_some() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(2)
            }
        }
        Err(e @ cathedral_wasm::Error::Engine { .. }) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
        Err(cathedral_wasm::Error::Load { reason, .. }) => {
            eprintln!("error: {}: not a valid component: {reason}", file.display());
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("error: {}: {e}", file.display());
            ExitCode::from(2)
        }
    }
}

/// Why `bytes` cannot be a WebAssembly component, when the header already
/// says so: not WebAssembly at all, or a core module (which needs wrapping).
fn not_a_component(bytes: &[u8]) -> Option<&'static str> {
    const MAGIC: &[u8] = b"\0asm";
    const CORE_MODULE: &[u8] = &[1, 0, 0, 0];
    if !bytes.starts_with(MAGIC) {
        return Some("not a WebAssembly file (no \\0asm header)");
    }
    if bytes.get(4..8) == Some(CORE_MODULE) {
        return Some(
            "a core WebAssembly module, not a component: build it for wasm32-wasip2, \
             or make it a component with `wasm-tools component new`",
        );
    }
    None
}

/// Writes to stdout; a closed pipe (`| head`) is not an error worth a panic.
fn print_stdout(text: &str) {
    use std::io::Write;
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
}

fn config_failure(errors: &ConfigErrors) -> ExitCode {
    eprintln!("configuration is invalid ({} problems):", errors.0.len());
    for e in &errors.0 {
        eprintln!("  {e}");
    }
    ExitCode::from(2)
}

/// Local mode: re-reads the edge config and region overlay named by the
/// bootstrap.
struct FileSource {
    bootstrap: Bootstrap,
}

impl ConfigSource for FileSource {
    fn load(&self) -> Result<Loaded, String> {
        cathedral_config::load_edge(&self.bootstrap)
            .map(Loaded::local)
            .map_err(|e| e.to_string())
    }
}

/// Quick mode: the configuration is fixed by the command line.
struct FixedSource(EdgeConfig);

impl ConfigSource for FixedSource {
    fn load(&self) -> Result<Loaded, String> {
        Ok(Loaded::local(self.0.clone()))
    }
}

fn serve(args: ServeArgs) -> ExitCode {
    // Dropped at the end of `serve`, flushing buffered log lines.
    let _log_guard = init_tracing(args.log_format);
    let overrides = Overrides {
        region: args.region.clone(),
        listen: args.listen,
        tls_listen: args.tls_listen,
        admin_listen: args.admin_listen,
        admin_token: args.admin_token.clone(),
    };
    let quick = match (&args.upstream, &args.handler) {
        (Some(url), _) => Some(quick::QuickTarget::Upstream(url.clone())),
        (None, Some(file)) => Some(quick::QuickTarget::Handler(file.clone())),
        (None, None) => None,
    };
    let loaded = match &quick {
        Some(target) => quick_mode(target, &args.filters, args.config.as_deref(), &overrides),
        None => {
            let path = args
                .config
                .clone()
                .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG));
            match cathedral_config::load_bootstrap(&path, &overrides) {
                // Bundle mode: the edge config comes from signed bundles.
                Ok(bootstrap) if bootstrap.bundles.is_some() => Ok((bootstrap, None)),
                _ => cathedral_config::load(&path, &overrides).map(|(bootstrap, edge)| {
                    let source: Arc<dyn ConfigSource> = Arc::new(FileSource {
                        bootstrap: bootstrap.clone(),
                    });
                    (bootstrap, Some((edge, source)))
                }),
            }
        }
    };
    let (bootstrap, local) = match loaded {
        Ok(x) => x,
        Err(errors) => return config_failure(&errors),
    };

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(bootstrap, local)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!(error = %format!("{e:#}"), "node failed");
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// A bootstrap and, outside bundle mode, the edge config and where reloads
/// read it from.
type Startup = (Bootstrap, Option<(EdgeConfig, Arc<dyn ConfigSource>)>);

/// Quick mode: the edge config comes from the command line. The bootstrap is
/// `--config` if given (with its Wasm artifact cache), else the built-in
/// defaults (no artifact cache: modules are compiled at every start).
fn quick_mode(
    target: &quick::QuickTarget,
    filters: &[PathBuf],
    config: Option<&Path>,
    overrides: &Overrides,
) -> Result<Startup, ConfigErrors> {
    let bootstrap = match config {
        Some(path) => cathedral_config::load_bootstrap(path, overrides)?,
        None => cathedral_config::default_bootstrap(overrides)?,
    };
    let edge = quick::edge_config(
        target,
        filters,
        &bootstrap.region,
        bootstrap.wasm.max_memory_bytes,
    )?;
    let source: Arc<dyn ConfigSource> = Arc::new(FixedSource(edge.clone()));
    Ok((bootstrap, Some((edge, source))))
}

/// Runs a node until SIGTERM or SIGINT: from `local` (edge config and
/// reload source), or in bundle mode when `local` is `None`.
async fn run(
    bootstrap: Bootstrap,
    local: Option<(EdgeConfig, Arc<dyn ConfigSource>)>,
) -> anyhow::Result<()> {
    let region = bootstrap.region.clone();
    let node = match local {
        Some((edge, source)) => Node::start(bootstrap, edge, source)
            .await
            .context("cannot start the node")?,
        None => {
            let manager =
                BundleManager::open(&bootstrap).map_err(|e| anyhow::anyhow!("bundles: {e}"))?;
            info!(scope = %manager.scope(), origins = ?manager.settings().origins, "bundle mode");
            let m = manager.clone();
            let initial = tokio::task::spawn_blocking(move || m.load_initial())
                .await
                .context("loading the stored bundle")?;
            let initial = initial.unwrap_or_else(|| Loaded::local(empty_edge(&region)));
            let source: Arc<dyn ConfigSource> = manager.clone();
            let mut node = Node::start(bootstrap, initial, source)
                .await
                .context("cannot start the node")?;
            node.attach_bundles(manager);
            node
        }
    };
    for addr in node.http_addrs() {
        info!(url = %format!("http://{addr}"), region = %region, "serving");
    }
    for addr in node.tls_addrs() {
        info!(url = %format!("https://{addr}"), region = %region, "serving");
    }
    info!(url = %format!("http://{}", node.admin_addr()), "admin API");

    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = signal(SignalKind::hangup()).context("cannot install the SIGHUP handler")?;
    let mut term = signal(SignalKind::terminate()).context("cannot install the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot install the SIGINT handler")?;
    loop {
        tokio::select! {
            _ = hup.recv() => {
                info!("SIGHUP: reloading configuration");
                let outcome = node.reload().await;
                if !outcome.activated {
                    warn!(generation = outcome.generation, "reload rejected; see the errors above");
                }
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    info!("shutting down: no new connections, finishing in-flight requests");
    let drained = node.shutdown().await;
    info!(drained, "stopped");
    Ok(())
}

/// What a node in bundle mode serves before its first bundle: nothing.
fn empty_edge(region: &str) -> EdgeConfig {
    EdgeConfig {
        region: region.to_string(),
        upstreams: Default::default(),
        routes: Vec::new(),
        rate_limits: Default::default(),
        modules: Default::default(),
    }
}

/// Logs are formatted on the request path but written by a background
/// thread, so a slow stderr (a pipe to a log shipper, a full disk) never
/// stalls serving. If the writer falls more than 128k lines behind, lines
/// are dropped rather than requests delayed.
/// Logs go to stderr through [`log_writer`] (batched by one thread); if
/// that thread cannot start, straight to stderr.
fn init_tracing(format: LogFormat) -> Option<log_writer::Guard> {
    use tracing_subscriber::EnvFilter;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    match log_writer::batched(std::io::stderr()) {
        Ok((writer, guard)) => {
            subscriber(format, filter, writer, ansi).init();
            Some(guard)
        }
        Err(e) => {
            subscriber(format, filter, std::io::stderr, ansi).init();
            warn!(error = %e, "cannot start the log writer thread; logging unbuffered");
            None
        }
    }
}

/// The fmt subscriber in `format` over `writer`. In JSON each event is one
/// flat object (`timestamp`, `level`, `message`, the fields, `target`).
fn subscriber<W>(
    format: LogFormat,
    filter: tracing_subscriber::EnvFilter,
    writer: W,
    ansi: bool,
) -> Box<dyn tracing::Subscriber + Send + Sync>
where
    W: for<'a> tracing_subscriber::fmt::MakeWriter<'a> + Send + Sync + 'static,
{
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(ansi);
    match format {
        LogFormat::Text => Box::new(builder.finish()),
        LogFormat::Json => {
            let json = tracing_subscriber::fmt::format()
                .json()
                .flatten_event(true)
                .with_current_span(false);
            Box::new(
                builder
                    .json()
                    .event_format(log_format::Json { inner: json })
                    .finish(),
            )
        }
    }
}

fn self_signed(out: &Path, names: Vec<String>) -> anyhow::Result<()> {
    let cert = rcgen::generate_simple_self_signed(names.clone())
        .context("cannot generate a certificate")?;
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let cert_path = out.join("cert.pem");
    let key_path = out.join("key.pem");
    std::fs::write(&cert_path, cert.cert.pem())
        .with_context(|| format!("cannot write {}", cert_path.display()))?;
    write_private(&key_path, cert.key_pair.serialize_pem().as_bytes())?;
    eprintln!(
        "wrote {} and {} for {}",
        cert_path.display(),
        key_path.display(),
        names.join(", ")
    );
    Ok(())
}

fn write_private(path: &Path, data: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    f.write_all(data)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log_format::Capture;

    /// The access-log event as `cathedral_edge::service` emits it.
    fn access_line(format: LogFormat) -> String {
        let out = Capture::default();
        let writer = out.clone();
        let sub = subscriber(
            format,
            tracing_subscriber::EnvFilter::new("info"),
            move || writer.clone(),
            false,
        );
        tracing::subscriber::with_default(sub, || {
            let client: std::net::IpAddr = [127, 0, 0, 1].into();
            info!(
                target: "cathedral::access",
                client = %client,
                method = %"GET",
                host = %"example.test",
                path = %"/a \"quoted\" path",
                proto = ?http::Version::HTTP_11,
                status = 200u16,
                bytes = 1024u64,
                complete = true,
                duration_ms = 1.5f64,
                route = "bench",
                cache = "hit",
                upstream = "origin",
                region = %"us-east-1",
                "request"
            );
        });
        String::from_utf8(out.0.lock().expect("capture").clone()).expect("utf-8")
    }

    #[test]
    fn the_json_access_line_is_one_flat_object_in_field_order() {
        let line = access_line(LogFormat::Json);
        assert!(
            line.ends_with('\n') && line.matches('\n').count() == 1,
            "{line}"
        );
        let value: serde_json::Value = serde_json::from_str(&line).expect("JSON");
        let object = value.as_object().expect("an object");
        assert!(line.starts_with(r#"{"timestamp":""#), "{line}");
        let rest = line
            .split_once(r#""level""#)
            .map(|(_, rest)| rest)
            .expect("level");
        assert_eq!(
            rest,
            concat!(
                r#":"INFO","message":"request","client":"127.0.0.1","method":"GET","#,
                r#""host":"example.test","path":"/a \"quoted\" path","proto":"HTTP/1.1","#,
                r#""status":200,"bytes":1024,"complete":true,"duration_ms":1.5,"route":"bench","#,
                r#""cache":"hit","upstream":"origin","region":"us-east-1","target":"cathedral::access"}"#,
                "\n"
            )
        );
        let timestamp = object["timestamp"].as_str().expect("timestamp");
        assert!(
            timestamp.ends_with('Z') && timestamp.contains('T'),
            "{timestamp}"
        );
    }

    #[test]
    fn the_text_access_line_names_the_target_and_the_fields() {
        let line = access_line(LogFormat::Text);
        assert!(
            line.contains(
                "INFO cathedral::access: request client=127.0.0.1 method=GET host=example.test \
                 path=/a \"quoted\" path proto=HTTP/1.1 status=200 bytes=1024 complete=true \
                 duration_ms=1.5 route=\"bench\" cache=\"hit\" upstream=\"origin\" region=us-east-1"
            ),
            "{line}"
        );
    }
}
