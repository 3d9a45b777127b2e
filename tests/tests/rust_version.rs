//! The workspace's declared `rust-version` is the real minimum of the locked dependencies:
//! the highest `rust-version` any locked package (for this platform) declares. Runs
//! `cargo metadata --offline --locked`, so it needs no network once the workspace has built.

use std::process::Command;

type Version = (u64, u64, u64);

fn parse(text: &str) -> Option<Version> {
    let mut parts = text.trim().split('.').map(|p| p.parse::<u64>().ok());
    let major = parts.next()??;
    let minor = parts.next().unwrap_or(Some(0))?;
    let patch = parts.next().unwrap_or(Some(0))?;
    Some((major, minor, patch))
}

fn host_triple(rustc: &str) -> String {
    let out = Command::new(rustc)
        .arg("-vV")
        .output()
        .expect("run rustc -vV");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .expect("rustc names its host")
        .trim()
        .to_string()
}

#[test]
fn declared_rust_version_is_what_the_locked_dependencies_need() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.toml");
    // Only this platform's packages: others (Windows-only crates) are never downloaded.
    let out = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--offline", "--locked"])
        .args(["--filter-platform", &host_triple(&rustc)])
        .args(["--manifest-path", manifest])
        .output()
        .expect("run cargo metadata");
    assert!(
        out.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let metadata: serde_json::Value = serde_json::from_slice(&out.stdout).expect("metadata json");
    let members: Vec<&str> = metadata["workspace_members"]
        .as_array()
        .expect("members")
        .iter()
        .filter_map(|m| m.as_str())
        .collect();
    let packages = metadata["packages"].as_array().expect("packages");
    let declared: Vec<(Version, &str)> = packages
        .iter()
        .filter(|p| members.contains(&p["id"].as_str().unwrap_or_default()))
        .map(|p| {
            let name = p["name"].as_str().unwrap_or_default();
            let version = p["rust_version"]
                .as_str()
                .and_then(parse)
                .unwrap_or_else(|| panic!("{name} declares no rust-version"));
            (version, name)
        })
        .collect();
    let needed = packages
        .iter()
        .filter(|p| !members.contains(&p["id"].as_str().unwrap_or_default()))
        .filter_map(|p| {
            let version = parse(p["rust_version"].as_str()?)?;
            Some((version, p["name"].as_str()?, p["version"].as_str()?))
        })
        .max()
        .expect("some dependency declares a rust-version");
    for (version, name) in &declared {
        assert_eq!(
            *version, needed.0,
            "{name} declares rust-version {version:?}, but the locked {} {} needs {:?}: set \
             [workspace.package] rust-version in Cargo.toml to that",
            needed.1, needed.2, needed.0
        );
    }
}
