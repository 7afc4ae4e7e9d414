//! What the release commands (`keys`, `bundle`, `origin`, `audit`) share:
//! how they fail and exit, reading key arguments, writing output files,
//! and showing byte counts.
//!
//! Exit codes: 0 success; 1 a runtime failure (I/O on outputs, network,
//! an edge that refused); 2 bad usage, invalid input or a failed check.
//! Errors go to stderr as `error: <file>: <reason>`.

use std::fmt;
use std::fs;
use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use cathedral_bundle::{PublicKey, SecretKey};

/// Why a command failed.
#[derive(Debug)]
pub(crate) enum Failure {
    /// Bad usage, invalid input, a failed check: exit 2.
    Invalid(String),
    /// Something that should have worked did not: exit 1.
    Runtime(String),
    /// The failure was already reported (a ✗ line): exit 2.
    Reported,
}

pub(crate) type Outcome = Result<(), Failure>;

pub(crate) fn invalid(message: impl fmt::Display) -> Failure {
    Failure::Invalid(message.to_string())
}

pub(crate) fn runtime(message: impl fmt::Display) -> Failure {
    Failure::Runtime(message.to_string())
}

/// A bundle error: I/O is a runtime failure, anything else (a refused
/// signature, a malformed document, a mismatched hash) is invalid input.
pub(crate) fn from_bundle(e: cathedral_bundle::Error) -> Failure {
    match e {
        cathedral_bundle::Error::Io { .. } => runtime(e),
        other => invalid(other),
    }
}

/// Reports the failure on stderr and picks the exit code.
pub(crate) fn finish(outcome: Outcome) -> ExitCode {
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Invalid(message)) => {
            eprintln!("error: {message}");
            ExitCode::from(2)
        }
        Err(Failure::Runtime(message)) => {
            eprintln!("error: {message}");
            ExitCode::from(1)
        }
        Err(Failure::Reported) => ExitCode::from(2),
    }
}

/// A public key given as 64 lowercase hex digits, or as the path of a
/// `.pub` file holding them.
pub(crate) fn parse_public(arg: &str) -> Result<PublicKey, Failure> {
    let looks_hex = arg.len() == 64 && arg.bytes().all(|b| b.is_ascii_hexdigit());
    if looks_hex {
        return arg.parse().map_err(invalid);
    }
    let text = fs::read_to_string(arg).map_err(|e| {
        invalid(format!(
            "{arg}: not a public key (64 hex digits) nor a readable .pub file: {e}"
        ))
    })?;
    text.trim()
        .parse()
        .map_err(|e| invalid(format!("{arg}: {e}")))
}

/// Loads every secret key file; a key given twice is an error.
pub(crate) fn load_keys(paths: &[std::path::PathBuf]) -> Result<Vec<SecretKey>, Failure> {
    let mut keys: Vec<SecretKey> = Vec::with_capacity(paths.len());
    for path in paths {
        let key = SecretKey::load(path).map_err(invalid)?;
        if keys.iter().any(|k| k.public() == key.public()) {
            return Err(invalid(format!(
                "{}: key {} is given twice",
                path.display(),
                key.public().short()
            )));
        }
        keys.push(key);
    }
    Ok(keys)
}

pub(crate) fn read(path: &Path) -> Result<Vec<u8>, Failure> {
    fs::read(path).map_err(|e| invalid(format!("{}: {e}", path.display())))
}

/// Writes a new file; an existing one is never overwritten.
pub(crate) fn write_new(path: &Path, bytes: &[u8]) -> Outcome {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).map_err(|e| runtime(format!("{}: {e}", dir.display())))?;
    }
    let mut file = match fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(invalid(format!(
                "{}: already exists; it is never overwritten",
                path.display()
            )));
        }
        Err(e) => return Err(runtime(format!("{}: {e}", path.display()))),
    };
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| runtime(format!("{}: {e}", path.display())))
}

/// Replaces `path` through a temp file beside it and one rename.
pub(crate) fn replace(path: &Path, bytes: &[u8]) -> Outcome {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    let written = fs::File::create(&tmp).and_then(|mut f| {
        f.write_all(bytes)?;
        f.sync_all()
    });
    let result = written.and_then(|()| fs::rename(&tmp, path));
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(runtime(format!("{}: {e}", path.display())));
    }
    Ok(())
}

/// `1.2 MiB`, `512 B`.
pub(crate) fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = UNITS[0];
    for next in &UNITS[1..] {
        if value < 1024.0 {
            break;
        }
        value /= 1024.0;
        unit = next;
    }
    format!("{value:.1} {unit}")
}

/// A duration argument such as `90d` or `12h`.
pub(crate) fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("{text:?} is not a duration like 90d: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_counts_read_well() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1024), "1.0 KiB");
        assert_eq!(bytes(1_258_291), "1.2 MiB");
        assert_eq!(bytes(3 << 30), "3.0 GiB");
    }
}
