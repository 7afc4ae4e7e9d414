//! `cathedral audit verify`: recomputes an edge's hash-chained audit log.

use std::path::PathBuf;

use clap::Subcommand;

use crate::cmd::{Failure, Outcome, invalid};

#[derive(Debug, Subcommand)]
pub(crate) enum AuditCommand {
    /// Verify an audit log (STATE_DIR/audit.log): recomputes every entry's
    /// hash and the chain, and names the first line that was edited,
    /// removed, inserted or moved (exit 2).
    ///
    /// Prints the hash of the last entry: keep it elsewhere and compare
    /// later, since entries cut from the end, or a log rewritten with every
    /// hash recomputed, leave a chain that is intact but ends elsewhere.
    Verify {
        /// The audit log.
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
}

/// `prev` of the first entry, and the head of an empty log.
const ZERO_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

pub(crate) fn run(command: AuditCommand) -> Outcome {
    let AuditCommand::Verify { file } = command;
    match cathedral_bundle::verify_audit_log(&file) {
        Ok(entries) => {
            let head = entries.last().map_or(ZERO_HASH, |e| e.hash.as_str());
            println!("✓ {} entries, chain intact, head {head}", entries.len());
            Ok(())
        }
        Err(problem) if problem.line == 0 => {
            Err(invalid(format!("{}: {}", file.display(), problem.reason)))
        }
        Err(problem) => {
            eprintln!("✗ {problem}");
            Err(Failure::Reported)
        }
    }
}
