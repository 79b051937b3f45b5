//! The peer's kernel: Debian's `/boot/vmlinuz-*` with its `/lib/modules/`
//! tree, and the modules `bench net` loads from it.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};

/// A Debian kernel: `/boot/vmlinuz-VERSION` and `/lib/modules/VERSION`.
#[derive(Clone, Debug)]
pub struct Kernel {
    pub version: String,
    pub image: PathBuf,
    /// The matching module tree (the benchmarks need no modules; network
    /// benchmarks will insmod virtio from here).
    pub modules: PathBuf,
}

impl Kernel {
    /// The newest `/boot/vmlinuz-*` that has a matching `/lib/modules/`.
    pub fn find() -> Result<Kernel> {
        let mut versions: Vec<String> = fs::read_dir("/boot")
            .context("reading /boot")?
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter_map(|n| n.strip_prefix("vmlinuz-").map(String::from))
            .filter(|v| Path::new("/lib/modules").join(v).is_dir())
            .collect();
        versions.sort_by_key(|v| version_key(v));
        let Some(version) = versions.pop() else {
            bail!("no /boot/vmlinuz-* with a matching /lib/modules/ (install linux-image-amd64)");
        };
        Ok(Kernel {
            image: Path::new("/boot").join(format!("vmlinuz-{version}")),
            modules: Path::new("/lib/modules").join(&version),
            version,
        })
    }
}

/// Orders `6.1.0-9-amd64` before `6.1.0-10-amd64`: numbers compare as numbers.
fn version_key(v: &str) -> Vec<(u64, String)> {
    v.split(|c: char| !c.is_ascii_alphanumeric()).map(|part| (part.parse().unwrap_or(0), part.to_string())).collect()
}

/// The virtio modules a Debian kernel needs for a virtio-net NIC, in
/// insmod order.
pub const VIRTIO_NET_MODULES: &[&str] =
    &["virtio_ring", "virtio", "virtio_pci_modern_dev", "virtio_pci_legacy_dev", "virtio_pci", "failover", "net_failover", "virtio_net"];

impl Kernel {
    /// The file of module `name` (`name.ko`, uncompressed) in this kernel's tree.
    pub fn module(&self, name: &str) -> Result<PathBuf> {
        fn find(dir: &Path, file: &str) -> Option<PathBuf> {
            for e in fs::read_dir(dir).ok()?.flatten() {
                let p = e.path();
                if e.file_type().ok()?.is_dir() {
                    if let Some(found) = find(&p, file) {
                        return Some(found);
                    }
                } else if e.file_name() == file {
                    return Some(p);
                }
            }
            None
        }
        find(&self.modules.join("kernel"), &format!("{name}.ko"))
            .with_context(|| format!("no {name}.ko under {} (compressed modules are not supported)", self.modules.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_versions_sort_numerically() {
        let mut v = vec!["6.1.0-10-amd64", "6.1.0-9-amd64", "5.10.0-30-amd64"];
        v.sort_by_key(|v| version_key(v));
        assert_eq!(v, ["5.10.0-30-amd64", "6.1.0-9-amd64", "6.1.0-10-amd64"]);
    }
}
