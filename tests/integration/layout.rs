//! The dependency rule: `sql` and `gpu` depend on no workspace crate, `flight`
//! only on `sql`, `coordinator` and `executor` never on each other, and only
//! the executor uses `gpu`.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use anyhow::{Context, Result};

#[test]
fn workspace_dependencies_point_one_way() -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(tests::repo_root())
        .output()
        .context("cargo metadata")?;
    assert!(output.status.success(), "{output:?}");
    let metadata: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    let members: BTreeSet<String> = metadata["packages"]
        .as_array()
        .context("packages")?
        .iter()
        .filter_map(|p| p["name"].as_str().map(str::to_string))
        .collect();
    let mut deps: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for package in metadata["packages"].as_array().context("packages")? {
        let name = package["name"].as_str().context("name")?.to_string();
        let internal = package["dependencies"]
            .as_array()
            .context("dependencies")?
            .iter()
            .filter_map(|d| d["name"].as_str())
            .filter(|d| members.contains(*d))
            .map(str::to_string)
            .collect();
        deps.insert(name, internal);
    }
    let none = BTreeSet::new();
    assert_eq!(
        deps.get("sql").unwrap_or(&none),
        &none,
        "sql must stand alone"
    );
    assert!(
        deps.get("flight")
            .unwrap_or(&none)
            .iter()
            .all(|d| d == "sql"),
        "flight may use sql only: {:?}",
        deps.get("flight")
    );
    assert!(!deps
        .get("coordinator")
        .unwrap_or(&none)
        .contains("executor"));
    assert!(!deps
        .get("executor")
        .unwrap_or(&none)
        .contains("coordinator"));
    assert_eq!(
        deps.get("gpu").context("the gpu crate")?,
        &none,
        "gpu must stand alone"
    );
    // The executor is the GPU's only user among the service's crates (the
    // tests and benchmarks drive it directly too).
    let gpu_users: BTreeSet<&str> = deps
        .iter()
        .filter(|(name, d)| d.contains("gpu") && !matches!(name.as_str(), "tests" | "benches"))
        .map(|(name, _)| name.as_str())
        .collect();
    assert_eq!(gpu_users, BTreeSet::from(["executor"]), "users of gpu");
    Ok(())
}
