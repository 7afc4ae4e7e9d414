//! `cathedral origin serve`: serves an origin directory over HTTP until
//! SIGINT or SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Subcommand;
use tracing::info;

use crate::cmd::{Outcome, invalid, runtime};

#[derive(Debug, Subcommand)]
pub(crate) enum OriginCommand {
    /// Serve an origin directory (root/, keyset.json, heads/, manifests/,
    /// blobs/) over HTTP/1.1: GET and HEAD with ETags, conditional requests
    /// and ranges; content-addressed files are marked immutable. Any static
    /// file server or bucket can do the same job. Runs until SIGINT or
    /// SIGTERM.
    Serve {
        /// The origin directory (as written by `bundle publish`).
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// Address to listen on (port 0 picks a free port; the log line
        /// says which).
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7000")]
        listen: SocketAddr,
    },
}

pub(crate) fn run(command: OriginCommand) -> Outcome {
    let OriginCommand::Serve { dir, listen } = command;
    if !dir.is_dir() {
        return Err(invalid(format!("{}: not a directory", dir.display())));
    }
    let _log_guard = crate::init_tracing(crate::LogFormat::Text);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| runtime(format!("cannot start the async runtime: {e}")))?;
    rt.block_on(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())
            .map_err(|e| runtime(format!("cannot install the SIGTERM handler: {e}")))?;
        let mut int = signal(SignalKind::interrupt())
            .map_err(|e| runtime(format!("cannot install the SIGINT handler: {e}")))?;
        let server = cathedral_edge::origin::OriginServer::start(&dir, listen)
            .await
            .map_err(|e| runtime(format!("{}: {e}", dir.display())))?;
        info!(url = %format!("http://{}", server.addr()), "origin ready");
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        info!("stopping the origin");
        server.stop().await;
        Ok(())
    })
}
