//! `cathedral bundle build`: an edge config, its region overlays and every
//! file they name, as one unsigned bundle directory.
//!
//! Each file the config references — `modules.<name>.path`,
//! `routes.<name>.static` (a directory, walked) and
//! `upstreams.<name>.ca_file` — is resolved against the config file that
//! names it, added under `modules/<name>.wasm`, `static/<route>/…` or
//! `certs/<upstream>.pem`, and the key is rewritten to point there (relative
//! to the config's place in the bundle, `config/`). The rewritten config is
//! then validated for each targeted region exactly as an edge will validate
//! it, against the bundle's own file list, before anything is written.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cathedral_bundle::{ConfigRef, Draft, Manifest, check_scope_name};
use cathedral_config::{FileTree, Source};
use clap::Args;
use toml_edit::DocumentMut;

use crate::cmd::{Failure, Outcome, bytes, from_bundle, invalid, parse_duration};

/// Where the edge config goes in a bundle.
const EDGE_CONFIG: &str = "config/edge.toml";
/// Where region overlays go.
const REGIONS_DIR: &str = "config/regions";

#[derive(Debug, Args)]
pub(crate) struct BuildArgs {
    /// The edge config to bundle (edge.toml).
    #[arg(long, value_name = "EDGE.toml")]
    config: PathBuf,
    /// Directory of region overlays: each targeted region's <region>.toml
    /// is bundled when it exists.
    #[arg(long, value_name = "DIR")]
    regions: Option<PathBuf>,
    /// The environment the bundle is for (a-z, 0-9, '-').
    #[arg(long, value_name = "ENV")]
    environment: String,
    /// A region the bundle is for. Repeatable; the config is validated for
    /// each.
    #[arg(long = "region", value_name = "REGION", required = true)]
    region: Vec<String>,
    /// The bundle's version: above every version published for these
    /// regions (a rollback is a new version with old content).
    #[arg(long, value_name = "N")]
    version: u64,
    /// How long the manifest is valid (humantime: 90d, 12h, …).
    #[arg(long, value_name = "DURATION", default_value = "90d", value_parser = parse_duration)]
    expires: Duration,
    /// Directory to write the unsigned bundle into (missing or empty).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
}

/// One config file of the bundle, parsed with its formatting kept.
#[derive(Debug)]
struct ConfigFile {
    /// The file as given, for messages.
    source: PathBuf,
    /// What relative references in it resolve against.
    dir: PathBuf,
    /// Its path in the bundle.
    bundle_path: String,
    /// For overlays, the region.
    region: Option<String>,
    doc: DocumentMut,
}

/// The config keys that name files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Module,
    Static,
    Cert,
}

impl Kind {
    const ALL: [Kind; 3] = [Kind::Module, Kind::Static, Kind::Cert];

    fn section(self) -> &'static str {
        match self {
            Kind::Module => "modules",
            Kind::Static => "routes",
            Kind::Cert => "upstreams",
        }
    }

    fn field(self) -> &'static str {
        match self {
            Kind::Module => "path",
            Kind::Static => "static",
            Kind::Cert => "ca_file",
        }
    }

    /// `modules/<name>.wasm`, `static/<name>`, `certs/<name>.pem`, with
    /// `.<suffix>` before the extension when given.
    fn bundle_path(self, name: &str, suffix: Option<&str>) -> String {
        let name = match suffix {
            Some(s) => format!("{name}.{s}"),
            None => name.to_owned(),
        };
        match self {
            Kind::Module => format!("modules/{name}.wasm"),
            Kind::Static => format!("static/{name}"),
            Kind::Cert => format!("certs/{name}.pem"),
        }
    }
}

/// A reference to a file or directory in one config file.
#[derive(Debug)]
struct Reference {
    file: usize,
    kind: Kind,
    name: String,
    /// Resolved and canonical.
    target: PathBuf,
}

pub(crate) fn run(args: BuildArgs) -> Outcome {
    check_scope_name("environment", &args.environment)
        .map_err(|e| invalid(format!("--environment: {e}")))?;
    let mut seen = BTreeSet::new();
    for r in &args.region {
        check_scope_name("region", r).map_err(|e| invalid(format!("--region: {e}")))?;
        if !seen.insert(r) {
            return Err(invalid(format!("--region {r} is given twice")));
        }
    }

    let mut files = vec![read_config(&args.config, EDGE_CONFIG.to_owned(), None)?];
    let mut missing_overlays = Vec::new();
    if let Some(dir) = &args.regions {
        if !dir.is_dir() {
            return Err(invalid(format!("{}: not a directory", dir.display())));
        }
        for region in &args.region {
            let path = dir.join(format!("{region}.toml"));
            if path.exists() {
                let bundle_path = format!("{REGIONS_DIR}/{region}.toml");
                files.push(read_config(&path, bundle_path, Some(region.clone()))?);
            } else {
                missing_overlays.push(region.clone());
            }
        }
    } else {
        missing_overlays.clone_from(&args.region);
    }

    let mut problems = Vec::new();
    let references = collect_references(&files, &mut problems);
    let config = ConfigRef {
        edge: EDGE_CONFIG.to_owned(),
        regions: (files.len() > 1).then(|| REGIONS_DIR.to_owned()),
    };
    let mut draft = Draft::new(&args.environment, args.region.clone(), args.version, config);
    draft.expires_after(args.expires);

    // Each distinct target gets one bundle path; a name claimed by another
    // target (an overlay pointing a module elsewhere) gets the region as a
    // suffix.
    let mut placed: BTreeMap<PathBuf, String> = BTreeMap::new();
    let mut claimed: BTreeSet<String> = BTreeSet::new();
    let mut static_files = 0usize;
    let mut rewrites = Vec::new();
    for r in &references {
        let file = &files[r.file];
        let bundle_path = match placed.get(&r.target) {
            Some(p) => p.clone(),
            None => {
                let mut path = r.kind.bundle_path(&r.name, None);
                if claimed.contains(&path) {
                    path = r.kind.bundle_path(&r.name, file.region.as_deref());
                }
                let added = match r.kind {
                    Kind::Module => add(&mut draft, &path, &r.target, "application/wasm"),
                    Kind::Cert => add(&mut draft, &path, &r.target, "application/x-pem-file"),
                    Kind::Static => add_dir(&mut draft, &path, &r.target).map(|n| {
                        static_files += n;
                    }),
                };
                if let Err(mut more) = added {
                    problems.append(&mut more);
                }
                claimed.insert(path.clone());
                placed.insert(r.target.clone(), path.clone());
                path
            }
        };
        rewrites.push((r.file, r.kind, r.name.clone(), bundle_path));
    }
    for (file, kind, name, target) in rewrites {
        let f = &mut files[file];
        let value = format!("{}{target}", up_from(&f.bundle_path));
        set_reference(&mut f.doc, kind, &name, &value);
    }
    if !problems.is_empty() {
        return Err(report(&problems));
    }
    for f in &files {
        draft
            .add_bytes(
                &f.bundle_path,
                f.doc.to_string().into_bytes(),
                "application/toml",
            )
            .map_err(from_bundle)?;
    }
    let manifest = draft.manifest().map_err(from_bundle)?;

    let texts: BTreeMap<&str, String> = files
        .iter()
        .map(|f| (f.bundle_path.as_str(), f.doc.to_string()))
        .collect();
    let errors = validate(&manifest, &args.region, |path| {
        let file = files.iter().find(|f| f.bundle_path == path)?;
        Some((file.source.clone(), texts.get(path)?.clone()))
    });
    if !errors.is_empty() {
        eprintln!(
            "configuration is invalid ({} problem{}):",
            errors.len(),
            if errors.len() == 1 { "" } else { "s" }
        );
        for e in &errors {
            eprintln!("  {e}");
        }
        return Err(Failure::Reported);
    }

    let manifest = draft.write_dir(&args.out).map_err(from_bundle)?;
    println!(
        "bundle v{} for {} ({}): {} files, {} -> {}",
        manifest.version,
        manifest.environment,
        manifest.regions.join(", "),
        manifest.totals.files,
        bytes(manifest.totals.bytes),
        args.out.display()
    );
    let count = |kind: Kind| references.iter().filter(|r| r.kind == kind).count();
    println!(
        "  {} module(s), {} static root(s) with {static_files} file(s), {} CA file(s), {} config file(s)",
        count(Kind::Module),
        count(Kind::Static),
        count(Kind::Cert),
        files.len()
    );
    if !missing_overlays.is_empty() {
        println!(
            "  no region overlay for {} (the edge config applies as is)",
            missing_overlays.join(", ")
        );
    }
    println!(
        "  valid for every region; expires {}; unsigned: next, cathedral bundle sign {} --key SIGNING.key",
        manifest.expires,
        args.out.display()
    );
    Ok(())
}

fn report(problems: &[String]) -> Failure {
    if let [one] = problems {
        return invalid(one);
    }
    for p in problems {
        eprintln!("error: {p}");
    }
    Failure::Reported
}

fn read_config(
    path: &Path,
    bundle_path: String,
    region: Option<String>,
) -> Result<ConfigFile, Failure> {
    let text = fs::read_to_string(path).map_err(|e| invalid(format!("{}: {e}", path.display())))?;
    let doc = text
        .parse::<DocumentMut>()
        .map_err(|e| invalid(format!("{}: {}", path.display(), toml_error(&text, &e))))?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    Ok(ConfigFile {
        source: path.to_path_buf(),
        dir,
        bundle_path,
        region,
        doc,
    })
}

/// `line L, column C: message`.
fn toml_error(text: &str, e: &toml_edit::TomlError) -> String {
    let message = e.message().trim().replace('\n', "; ");
    match e.span() {
        Some(span) => {
            let before = text.get(..span.start).unwrap_or(text);
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            format!("line {line}, column {column}: {message}")
        }
        None => message,
    }
}

/// Every string-valued file reference in `files`, resolved and checked:
/// modules and CA files must be regular files, static roots directories.
fn collect_references(files: &[ConfigFile], problems: &mut Vec<String>) -> Vec<Reference> {
    let mut out = Vec::new();
    for (i, file) in files.iter().enumerate() {
        for kind in Kind::ALL {
            let Some(section) = file
                .doc
                .as_table()
                .get(kind.section())
                .and_then(|s| s.as_table_like())
            else {
                continue;
            };
            for (name, item) in section.iter() {
                let Some(value) = item
                    .as_table_like()
                    .and_then(|t| t.get(kind.field()))
                    .and_then(|v| v.as_str())
                else {
                    continue; // absent, or not a string: validation reports it
                };
                let key = format!("{}.{name}.{}", kind.section(), kind.field());
                let resolved = file.dir.join(value);
                let at = format!("{}: {key}", file.source.display());
                let target = match fs::canonicalize(&resolved) {
                    Ok(t) => t,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        let what = if kind == Kind::Static {
                            "directory"
                        } else {
                            "file"
                        };
                        problems.push(format!(
                            "{at}: {what} not found: {} ({value:?} resolves against {})",
                            resolved.display(),
                            file.dir.display()
                        ));
                        continue;
                    }
                    Err(e) => {
                        problems.push(format!("{at}: {}: {e}", resolved.display()));
                        continue;
                    }
                };
                let meta = fs::metadata(&target);
                let ok = match kind {
                    Kind::Static => meta.as_ref().is_ok_and(fs::Metadata::is_dir),
                    Kind::Module | Kind::Cert => meta.as_ref().is_ok_and(fs::Metadata::is_file),
                };
                if !ok {
                    let want = if kind == Kind::Static {
                        "a directory"
                    } else {
                        "a regular file"
                    };
                    problems.push(format!("{at}: {} is not {want}", resolved.display()));
                    continue;
                }
                out.push(Reference {
                    file: i,
                    kind,
                    name: name.to_owned(),
                    target,
                });
            }
        }
    }
    out
}

fn add(draft: &mut Draft, path: &str, file: &Path, content_type: &str) -> Result<(), Vec<String>> {
    draft.add_file(path, file, content_type).map_err(|e| {
        vec![format!(
            "{}: cannot be bundled as {path}: {e}",
            file.display()
        )]
    })
}

/// Adds every file under `dir` at `prefix/<relative path>`; returns how
/// many. Symbolic links are followed only when they stay inside `dir`.
fn add_dir(draft: &mut Draft, prefix: &str, dir: &Path) -> Result<usize, Vec<String>> {
    let (found, mut problems) = walk(dir);
    if found.is_empty() && problems.is_empty() {
        problems.push(format!(
            "{}: an empty directory; a bundle holds files, so a static root needs at least one",
            dir.display()
        ));
    }
    let mut added = 0;
    for (rel, path) in found {
        let bundle_path = format!("{prefix}/{rel}");
        match draft.add_file(&bundle_path, &path, &content_type(&rel)) {
            Ok(()) => added += 1,
            Err(e) => problems.push(format!(
                "{}: cannot be bundled as {bundle_path}: {e}",
                path.display()
            )),
        }
    }
    if problems.is_empty() {
        Ok(added)
    } else {
        Err(problems)
    }
}

/// The regular files under `root` (canonical), as (relative path, path),
/// and every entry that cannot be bundled: links leaving the root, loops,
/// special files, names that are not UTF-8.
fn walk(root: &Path) -> (Vec<(String, PathBuf)>, Vec<String>) {
    let mut files = Vec::new();
    let mut problems = Vec::new();
    let mut visited = BTreeSet::from([root.to_path_buf()]);
    let mut stack = vec![(root.to_path_buf(), String::new())];
    while let Some((dir, prefix)) = stack.pop() {
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) => {
                problems.push(format!("{}: {e}", dir.display()));
                continue;
            }
        };
        let mut entries: Vec<_> = entries.filter_map(|e| e.ok()).map(|e| e.path()).collect();
        entries.sort();
        for path in entries {
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                problems.push(format!("{}: the file name is not UTF-8", path.display()));
                continue;
            };
            let rel = if prefix.is_empty() {
                name.to_owned()
            } else {
                format!("{prefix}/{name}")
            };
            let meta = match fs::symlink_metadata(&path) {
                Ok(m) => m,
                Err(e) => {
                    problems.push(format!("{}: {e}", path.display()));
                    continue;
                }
            };
            let (real, meta) = if meta.file_type().is_symlink() {
                let target = match fs::canonicalize(&path) {
                    Ok(t) => t,
                    Err(_) => {
                        problems.push(format!(
                            "{}: a symbolic link to nothing (dangling)",
                            path.display()
                        ));
                        continue;
                    }
                };
                if !target.starts_with(root) {
                    problems.push(format!(
                        "{}: a symbolic link to {}, outside {}; copy the file in instead",
                        path.display(),
                        target.display(),
                        root.display()
                    ));
                    continue;
                }
                match fs::metadata(&target) {
                    Ok(m) => (target, m),
                    Err(e) => {
                        problems.push(format!("{}: {e}", path.display()));
                        continue;
                    }
                }
            } else {
                (path.clone(), meta)
            };
            if meta.is_dir() {
                if visited.insert(real.clone()) {
                    stack.push((real, rel));
                } else {
                    problems.push(format!(
                        "{}: a symbolic link to {}, a directory already included (a loop or a repeat)",
                        path.display(),
                        real.display()
                    ));
                }
            } else if meta.is_file() {
                files.push((rel, path));
            } else {
                problems.push(format!(
                    "{}: not a regular file or directory (a socket, FIFO or device cannot be bundled)",
                    path.display()
                ));
            }
        }
    }
    files.sort();
    (files, problems)
}

/// As the static route serves it: text types get `; charset=utf-8`.
fn content_type(rel: &str) -> String {
    let mime = mime_guess::from_path(rel).first_or_octet_stream();
    let essence = mime.essence_str();
    let text = mime.type_() == mime_guess::mime::TEXT
        || matches!(
            essence,
            "application/javascript" | "application/json" | "image/svg+xml"
        );
    if text && mime.get_param("charset").is_none() {
        format!("{essence}; charset=utf-8")
    } else {
        mime.to_string()
    }
}

/// `../` for each directory of `bundle_path`: from `config/edge.toml` to
/// the bundle's top.
fn up_from(bundle_path: &str) -> String {
    "../".repeat(bundle_path.matches('/').count())
}

fn set_reference(doc: &mut DocumentMut, kind: Kind, name: &str, value: &str) {
    let item = doc
        .as_table_mut()
        .get_mut(kind.section())
        .and_then(|s| s.as_table_like_mut())
        .and_then(|s| s.get_mut(name))
        .and_then(|e| e.as_table_like_mut())
        .and_then(|e| e.get_mut(kind.field()))
        .and_then(|v| v.as_value_mut());
    if let Some(v) = item {
        let decor = v.decor().clone();
        *v = toml_edit::Value::from(value);
        *v.decor_mut() = decor;
    }
}

/// A manifest's file list as the config crate sees files: absolute path
/// `/x/y` is bundle path `x/y`.
#[derive(Debug)]
pub(crate) struct ManifestTree<'a>(pub &'a Manifest);

impl ManifestTree<'_> {
    fn bundle_path(path: &Path) -> Option<&str> {
        path.to_str()?.strip_prefix('/')
    }
}

impl FileTree for ManifestTree<'_> {
    fn check_file(&self, path: &Path) -> Result<(), String> {
        match Self::bundle_path(path).and_then(|p| self.0.file(p)) {
            Some(_) => Ok(()),
            None => Err(format!("{} is not a file of the bundle", path.display())),
        }
    }

    fn check_dir(&self, path: &Path) -> Result<(), String> {
        match Self::bundle_path(path) {
            Some(p) if self.0.is_dir(p) => Ok(()),
            _ => Err(format!(
                "{} is not a directory of the bundle",
                path.display()
            )),
        }
    }
}

/// Validates the bundle's config for each of `regions` as an edge would;
/// `text(bundle_path)` gives a config file's name for messages and its
/// text. Returns every distinct problem.
pub(crate) fn validate(
    manifest: &Manifest,
    regions: &[String],
    text: impl Fn(&str) -> Option<(PathBuf, String)>,
) -> Vec<String> {
    let tree = ManifestTree(manifest);
    let mut errors: Vec<String> = Vec::new();
    let mut push = |e: String| {
        if !errors.contains(&e) {
            errors.push(e);
        }
    };
    let Some((edge_name, edge_text)) = text(&manifest.config.edge) else {
        push(format!("{}: missing from the bundle", manifest.config.edge));
        return errors;
    };
    let edge_dir = virtual_dir(&manifest.config.edge);
    for region in regions {
        let overlay = manifest
            .region_overlay(region)
            .map(|entry| match text(&entry.path) {
                Some((name, body)) => Ok((name, body, virtual_dir(&entry.path))),
                None => Err(format!("{}: missing from the bundle", entry.path)),
            })
            .transpose();
        let overlay = match overlay {
            Ok(o) => o,
            Err(e) => {
                push(e);
                continue;
            }
        };
        let result = cathedral_config::parse_edge_in(
            Source {
                name: &edge_name,
                text: &edge_text,
                base_dir: &edge_dir,
            },
            overlay.as_ref().map(|(name, body, dir)| Source {
                name,
                text: body,
                base_dir: dir,
            }),
            region,
            None,
            &tree,
        );
        if let Err(errs) = result {
            for e in errs.0 {
                push(e.to_string());
            }
        }
    }
    errors
}

/// `/config` for `config/edge.toml`.
fn virtual_dir(bundle_path: &str) -> PathBuf {
    let parent = Path::new(bundle_path).parent().unwrap_or(Path::new(""));
    Path::new("/").join(parent)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_types_match_the_static_route() {
        assert_eq!(content_type("index.html"), "text/html; charset=utf-8");
        assert_eq!(content_type("a/app.js"), "text/javascript; charset=utf-8");
        assert_eq!(content_type("logo.svg"), "image/svg+xml; charset=utf-8");
        assert_eq!(content_type("photo.png"), "image/png");
        assert_eq!(content_type("blob"), "application/octet-stream");
    }

    #[test]
    fn references_are_rewritten_keeping_comments() {
        let text = "# top\n[modules.m]\npath = \"../x.wasm\" # the module\n\n[routes.site]\nstatic = \"site\"\n";
        let mut doc: DocumentMut = text.parse().expect("toml");
        set_reference(&mut doc, Kind::Module, "m", "../modules/m.wasm");
        set_reference(&mut doc, Kind::Static, "site", "../static/site");
        let out = doc.to_string();
        assert!(
            out.contains("path = \"../modules/m.wasm\" # the module"),
            "{out}"
        );
        assert!(out.contains("static = \"../static/site\""), "{out}");
        assert!(out.starts_with("# top\n"), "{out}");
        assert_eq!(up_from("config/edge.toml"), "../");
        assert_eq!(up_from("config/regions/eu.toml"), "../../");
    }
}
