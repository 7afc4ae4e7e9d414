//! Helpers shared by the integration tests.

use std::fs;
use std::path::Path;

use cathedral_config::{Bootstrap, EdgeConfig, Overrides, Source, load_bootstrap, parse_edge};

/// The rendered text parses back to the same configuration: its bootstrap
/// tables as a bootstrap file, its edge tables as an edge config.
pub fn round_trip(bootstrap: &Bootstrap, edge: &EdgeConfig, rendered: &str) {
    // The edge part starts at its first table, whichever kind that is.
    let split = [
        "\n[upstreams.",
        "\n[rate_limits.",
        "\n[modules.",
        "\n[routes.",
    ]
    .iter()
    .filter_map(|header| rendered.find(header))
    .min()
    .unwrap_or(rendered.len());
    let (bootstrap_text, edge_text) = rendered.split_at(split);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node.toml");
    fs::write(&path, bootstrap_text).unwrap();
    let mut expected = bootstrap.clone();
    if expected.admin.token.is_some() {
        expected.admin.token = Some("<redacted>".to_owned());
    }
    let reparsed = load_bootstrap(&path, &Overrides::default())
        .unwrap_or_else(|e| panic!("{e}\n{bootstrap_text}"));
    assert_eq!(
        reparsed, expected,
        "bootstrap round trip of:\n{bootstrap_text}"
    );
    let source = Source {
        name: Path::new("rendered.toml"),
        text: edge_text,
        base_dir: dir.path(),
    };
    let reparsed =
        parse_edge(source, None, &edge.region).unwrap_or_else(|e| panic!("{e}\n{edge_text}"));
    assert_eq!(&reparsed, edge, "edge round trip of:\n{edge_text}");
}
