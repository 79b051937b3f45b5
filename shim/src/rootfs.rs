//! Finding the Hermit image in a container's rootfs without mounting it:
//! containerd hands the shim the rootfs as mounts (a bind mount of one
//! directory for the native snapshotter, an overlay of an upper directory
//! over lower ones for overlayfs), and the image is a file in one of those
//! directories at [`abi::oci::IMAGE_LAYER_PATH`]. Where containerd gives no
//! mounts, the rootfs is mounted at `BUNDLE/rootfs` already.
//!
//! The layers are the image author's: the path is read without following
//! symbolic links (a link to a host file, or a FIFO, must not make the
//! shim read the host's files or hang), it must be a regular file, and at
//! most [`abi::control::IMAGE_BYTES_MAX`] bytes.

use std::fs;
use std::io::Read as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

/// One rootfs mount, as containerd's `CreateTaskRequest` carries it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Mount {
    pub kind: String,
    pub source: String,
    pub options: Vec<String>,
}

/// The directories to look in, topmost first: an overlay's `upperdir`,
/// then its `lowerdir`s in order; a bind mount's source; `BUNDLE/rootfs`
/// when there are no mounts.
pub fn layer_dirs(mounts: &[Mount], bundle: &Path) -> Result<Vec<PathBuf>, String> {
    if mounts.is_empty() {
        return Ok(vec![bundle.join("rootfs")]);
    }
    let mut dirs = Vec::new();
    for m in mounts {
        match m.kind.as_str() {
            "bind" | "rbind" => dirs.push(PathBuf::from(&m.source)),
            "overlay" => {
                let opt = |key: &str| m.options.iter().find_map(|o| o.strip_prefix(key).map(str::to_string));
                if let Some(upper) = opt("upperdir=") {
                    dirs.push(PathBuf::from(upper));
                }
                if let Some(lower) = opt("lowerdir=") {
                    dirs.extend(lower.split(':').filter(|d| !d.is_empty()).map(PathBuf::from));
                }
            }
            other => return Err(format!("rootfs mount of type {other:?}: the hive runtime reads bind and overlay mounts only")),
        }
    }
    Ok(dirs)
}

/// The Hermit image's bytes from the topmost layer that has it.
pub fn read_image(mounts: &[Mount], bundle: &Path) -> Result<Vec<u8>, String> {
    let dirs = layer_dirs(mounts, bundle)?;
    for dir in &dirs {
        let dir_of_image = dir.join(Path::new(abi::oci::IMAGE_LAYER_PATH).parent().unwrap_or(Path::new("")));
        // `hive/` itself must be a directory, not a link out of the layer.
        match fs::symlink_metadata(&dir_of_image) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(format!("{} in the rootfs is not a directory", dir_of_image.display())),
            Err(_) => continue,
        }
        let path = dir.join(abi::oci::IMAGE_LAYER_PATH);
        let meta = match fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(_) => continue,
        };
        if !meta.is_file() {
            return Err(format!("{} in the rootfs is not a regular file", abi::oci::IMAGE_PATH));
        }
        if meta.len() > abi::control::IMAGE_BYTES_MAX as u64 || meta.len() == 0 {
            return Err(format!(
                "{} is {} bytes: a Hermit image is 1 to {} bytes",
                abi::oci::IMAGE_PATH,
                meta.len(),
                abi::control::IMAGE_BYTES_MAX
            ));
        }
        let mut file = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(&path)
            .map_err(|e| format!("opening {}: {e}", path.display()))?;
        let mut data = Vec::with_capacity(meta.len() as usize);
        file.by_ref()
            .take(abi::control::IMAGE_BYTES_MAX as u64 + 1)
            .read_to_end(&mut data)
            .map_err(|e| format!("reading {}: {e}", path.display()))?;
        if data.len() > abi::control::IMAGE_BYTES_MAX {
            return Err(format!("{} grew past {} bytes while it was read", abi::oci::IMAGE_PATH, abi::control::IMAGE_BYTES_MAX));
        }
        return Ok(data);
    }
    Err(format!(
        "no Hermit image at {} in the rootfs (looked in {}): is this an image made by `cargo xtask pkg --oci`?",
        abi::oci::IMAGE_PATH,
        dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("hive-shim-rootfs-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    fn put(dir: &Path, bytes: &[u8]) {
        fs::create_dir_all(dir.join("hive")).unwrap();
        fs::write(dir.join(abi::oci::IMAGE_LAYER_PATH), bytes).unwrap();
    }

    #[test]
    fn overlay_upper_then_lowers_in_order_and_bind_mounts() {
        let overlay = Mount {
            kind: "overlay".into(),
            source: "overlay".into(),
            options: vec!["index=off".into(), "workdir=/w".into(), "upperdir=/u".into(), "lowerdir=/l1:/l2".into()],
        };
        assert_eq!(layer_dirs(&[overlay], Path::new("/b")).unwrap(), ["/u", "/l1", "/l2"].map(PathBuf::from));
        let bind = Mount { kind: "bind".into(), source: "/snap/7/fs".into(), options: vec!["rbind".into(), "rw".into()] };
        assert_eq!(layer_dirs(&[bind], Path::new("/b")).unwrap(), [PathBuf::from("/snap/7/fs")]);
        assert_eq!(layer_dirs(&[], Path::new("/b")).unwrap(), [PathBuf::from("/b/rootfs")]);
        assert!(layer_dirs(&[Mount { kind: "nfs".into(), ..Mount::default() }], Path::new("/b")).is_err());
    }

    #[test]
    fn the_topmost_layer_with_the_image_wins() {
        let d = tmp("layers");
        let (upper, l1, l2) = (d.join("u"), d.join("l1"), d.join("l2"));
        for x in [&upper, &l1, &l2] {
            fs::create_dir_all(x).unwrap();
        }
        put(&l1, b"one");
        put(&l2, b"two");
        let overlay = Mount {
            kind: "overlay".into(),
            source: "overlay".into(),
            options: vec![format!("upperdir={}", upper.display()), format!("lowerdir={}:{}", l1.display(), l2.display())],
        };
        assert_eq!(read_image(std::slice::from_ref(&overlay), &d).unwrap(), b"one");
        put(&upper, b"up");
        assert_eq!(read_image(&[overlay], &d).unwrap(), b"up");
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn missing_empty_linked_and_special_images_are_refused() {
        let d = tmp("bad");
        let bind = |dir: &Path| [Mount { kind: "bind".into(), source: dir.display().to_string(), options: vec![] }];
        let e = read_image(&bind(&d), &d).unwrap_err();
        assert!(e.contains("no Hermit image"), "{e}");

        put(&d, b"");
        assert!(read_image(&bind(&d), &d).unwrap_err().contains("bytes"));

        // A link to a host file is not followed.
        let secret = d.join("secret");
        fs::write(&secret, b"host data").unwrap();
        fs::remove_file(d.join(abi::oci::IMAGE_LAYER_PATH)).unwrap();
        std::os::unix::fs::symlink(&secret, d.join(abi::oci::IMAGE_LAYER_PATH)).unwrap();
        assert!(read_image(&bind(&d), &d).unwrap_err().contains("not a regular file"));

        // Nor is a linked directory.
        let other = d.join("other");
        put(&other, b"elsewhere");
        let linked = d.join("linked");
        fs::create_dir_all(&linked).unwrap();
        std::os::unix::fs::symlink(other.join("hive"), linked.join("hive")).unwrap();
        assert!(read_image(&bind(&linked), &d).unwrap_err().contains("not a directory"));

        // A FIFO would block a reader forever.
        let fifo_dir = d.join("fifo");
        fs::create_dir_all(fifo_dir.join("hive")).unwrap();
        let status = std::process::Command::new("mkfifo").arg(fifo_dir.join(abi::oci::IMAGE_LAYER_PATH)).status().unwrap();
        assert!(status.success());
        assert!(read_image(&bind(&fifo_dir), &d).unwrap_err().contains("not a regular file"));
        fs::remove_dir_all(&d).unwrap();
    }
}
