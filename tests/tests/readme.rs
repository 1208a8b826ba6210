//! The README documents what the code accepts: its tables come from the
//! same data the code validates with, and must not drift.

#[test]
fn the_readme_lists_every_injection_annotation() {
    let readme =
        std::fs::read_to_string(meshd_tests::envoy::workspace_root().join("README.md")).unwrap();
    let table = meshd_injector::annotations::markdown_table();
    assert!(
        readme.contains(table.trim()),
        "README.md's annotation table is out of date; replace it with:\n{table}"
    );
}

#[test]
fn the_readme_lists_every_routing_annotation() {
    let readme =
        std::fs::read_to_string(meshd_tests::envoy::workspace_root().join("README.md")).unwrap();
    let table = meshd_controlplane::routing::markdown_table();
    assert!(
        readme.contains(table.trim()),
        "README.md's routing table is out of date; replace it with:\n{table}"
    );
}
