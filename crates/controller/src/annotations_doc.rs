//! docs/annotations.md must list exactly the annotations the discovery index and the
//! injector read: the two crates' own lists are the truth, the doc's table is checked here.

use std::collections::BTreeSet;

const DOC: &str = include_str!("../../../docs/annotations.md");

/// The first cell of each table row naming a `plexus.io/` annotation.
fn documented() -> BTreeSet<&'static str> {
    DOC.lines()
        .filter_map(|line| line.strip_prefix("| `"))
        .filter_map(|rest| rest.split_once('`').map(|(name, _)| name))
        .filter(|name| name.starts_with("plexus.io/"))
        .collect()
}

#[test]
fn the_doc_lists_every_annotation_read_and_no_other() {
    let read: BTreeSet<&str> = plexus_discovery::index::ANNOTATIONS_READ
        .iter()
        .chain(plexus_inject::ANNOTATIONS_READ)
        .copied()
        .collect();
    let documented = documented();
    let undocumented: Vec<_> = read.difference(&documented).collect();
    let stale: Vec<_> = documented.difference(&read).collect();
    assert!(
        undocumented.is_empty() && stale.is_empty(),
        "docs/annotations.md is out of date: read but not documented {undocumented:?}, \
         documented but not read {stale:?}"
    );
    assert!(
        documented.len() >= 20,
        "the table was not parsed: {documented:?}"
    );
}
