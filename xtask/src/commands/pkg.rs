//! `cargo xtask pkg APP|--path DIR [--oci FILE [--ref NAME:TAG]] [-- ARG...]`:
//! a guest's Hermit image, and with `--oci` its OCI image layout tarball
//! (the work is in [`xtask::oci::pkg`]).

use std::path::PathBuf;

use anyhow::Result;
use xtask::App;

/// Builds the guest; prints the Hermit image's path, or with `oci` the
/// tarball's, its reference and its manifest digest.
pub fn run(app: App, oci: Option<PathBuf>, reference: Option<String>, args: Option<Vec<String>>) -> Result<()> {
    let packaged = xtask::oci::pkg(&app, args.as_deref(), oci.as_deref(), reference.as_deref())?;
    match (&packaged.oci, oci) {
        (Some(image), Some(file)) => {
            println!("{}", file.display());
            eprintln!(
                "pkg: {} as {} ({}); import with: ctr image import {}",
                packaged.name,
                image.reference,
                image.manifest_digest,
                file.display()
            );
        }
        _ => println!("{}", packaged.hermit.display()),
    }
    Ok(())
}
