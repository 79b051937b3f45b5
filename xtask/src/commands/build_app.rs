//! `cargo xtask build-app APP...` / `build-app --path DIR`: Hermit images of
//! apps under `apps/`, or of a guest crate outside the workspace.

use std::path::Path;

use anyhow::Result;

/// Builds `apps`, or the crate in `path`, and prints each image's path.
pub fn run(apps: &[String], path: Option<&Path>) -> Result<()> {
    if let Some(dir) = path {
        println!("{}", xtask::build_external(dir)?.1.display());
        return Ok(());
    }
    let names: Vec<&str> = apps.iter().map(String::as_str).collect();
    for path in xtask::build_apps(&names)? {
        println!("{}", path.display());
    }
    Ok(())
}
