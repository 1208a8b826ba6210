//! The README documents what the code accepts: its tables come from the
//! same data the code validates with, and must not drift.

#[test]
fn the_readme_lists_every_injection_annotation() {
    let readme =
        std::fs::read_to_string(meshd_tests::envoy::workspace_root().join("README.md")).unwrap();
    let table = meshd_api::annotations::pod::markdown_table();
    assert!(
        readme.contains(table.trim()),
        "README.md's annotation table is out of date; replace it with:\n{table}"
    );
}

#[test]
fn the_readme_lists_every_routing_annotation() {
    let readme =
        std::fs::read_to_string(meshd_tests::envoy::workspace_root().join("README.md")).unwrap();
    let table = meshd_api::annotations::routing::markdown_table();
    assert!(
        readme.contains(table.trim()),
        "README.md's routing table is out of date; replace it with:\n{table}"
    );
}

#[test]
fn the_readme_lists_every_authorization_annotation() {
    let readme =
        std::fs::read_to_string(meshd_tests::envoy::workspace_root().join("README.md")).unwrap();
    let table = meshd_api::annotations::authorization::markdown_table();
    assert!(
        readme.contains(table.trim()),
        "README.md's authorization table is out of date; replace it with:\n{table}"
    );
}

fn readme() -> String {
    std::fs::read_to_string(meshd_tests::envoy::workspace_root().join("README.md")).unwrap()
}

/// The bodies of the README's code blocks in `language`.
fn code_blocks(readme: &str, language: &str) -> Vec<String> {
    let fence = format!("```{language}\n");
    readme
        .split(fence.as_str())
        .skip(1)
        .map(|rest| rest.split("```").next().unwrap_or_default().to_string())
        .collect()
}

/// Every IPv4 address written in `text`.
fn ipv4_addresses(text: &str) -> Vec<std::net::Ipv4Addr> {
    text.split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .filter(|t| t.matches('.').count() == 3)
        .filter_map(|t| t.parse().ok())
        .collect()
}

/// Issue #11 E.5: the registry example sent a newcomer's traffic to
/// 198.18.0.7, off the machine.
#[test]
fn the_readmes_registry_examples_are_valid_and_stay_on_loopback() {
    let readme = readme();
    let blocks = code_blocks(&readme, "yaml");
    assert!(!blocks.is_empty());
    for block in &blocks {
        let objects = meshd_controlplane::discovery::file::parse(block)
            .unwrap_or_else(|e| panic!("the registry refuses a README example: {e:?}\n{block}"));
        assert!(!objects.is_empty(), "{block}");
        let addresses = ipv4_addresses(block);
        assert!(!addresses.is_empty(), "{block}");
        for address in addresses {
            assert!(
                address.is_loopback(),
                "{address} in a README example:\n{block}"
            );
        }
    }
    // The commands to run by hand too.
    for block in code_blocks(&readme, "text") {
        if block.contains("meshd bootstrap") || block.contains("meshd run") {
            for address in ipv4_addresses(&block) {
                assert!(
                    address.is_loopback() || address.is_unspecified(),
                    "{address} in:\n{block}"
                );
            }
        }
    }
}

/// Issue #11 E.4: the README's `MESHD_LOG=meshd_controlplane=debug`
/// hid every other crate's INFO lines.
#[test]
fn the_readmes_log_filters_keep_a_default_level() {
    let readme = readme();
    let examples: Vec<&str> = readme
        .match_indices("MESHD_LOG=")
        .map(|(i, m)| {
            readme[i + m.len()..]
                .split(|c: char| c.is_whitespace() || c == '`')
                .next()
                .unwrap_or_default()
        })
        .collect();
    assert!(!examples.is_empty());
    for example in examples {
        assert!(
            example.split(',').any(|directive| !directive.contains('=')),
            "MESHD_LOG={example} sets no default level: every other crate's INFO lines are hidden"
        );
    }
}

/// The Gateway API section's example route is one meshd accepts, and does
/// what the text says: a 90/10 split of `reviews`. (It is not a `yaml`
/// block: the registry examples above are parsed as registry files, and
/// this one is a route to apply next to Services that exist.)
#[test]
fn the_readmes_http_route_example_is_a_valid_mesh_route() {
    use meshd_api::gateway::{HttpRouteObject, ParentRef, http_route};
    let readme = readme();
    let section = readme
        .split("\n## Gateway API routes\n")
        .nth(1)
        .expect("a Gateway API routes section")
        .split("\n## ")
        .next()
        .unwrap_or_default();
    let examples: Vec<String> = code_blocks(section, "text")
        .into_iter()
        .filter(|b| b.contains("kind: HTTPRoute"))
        .collect();
    assert_eq!(examples.len(), 1, "{examples:?}");
    let object: HttpRouteObject = serde_yaml::from_str(&examples[0])
        .unwrap_or_else(|e| panic!("not an HTTPRoute: {e}\n{}", examples[0]));
    let route = http_route(&object).unwrap_or_else(|e| panic!("meshd refuses it: {e}"));
    assert_eq!(
        route.parents,
        [ParentRef {
            namespace: "shop".into(),
            name: "reviews".into(),
            port: Some(9080)
        }]
    );
    let split: Vec<(&str, u32)> = route.rules[0]
        .backends
        .iter()
        .map(|b| (b.target.name.as_str(), b.weight))
        .collect();
    assert_eq!(split, [("reviews-v1", 90), ("reviews-v2", 10)]);
}
