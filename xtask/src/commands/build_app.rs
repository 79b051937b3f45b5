//! `cargo xtask build-app APP...`: Hermit images of apps under `apps/`.

use anyhow::Result;

/// Builds `apps` and prints each image's path.
pub fn run(apps: &[String]) -> Result<()> {
    let names: Vec<&str> = apps.iter().map(String::as_str).collect();
    for path in xtask::build_apps(&names)? {
        println!("{}", path.display());
    }
    Ok(())
}
