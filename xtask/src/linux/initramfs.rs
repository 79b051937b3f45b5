//! The peer's initramfs: a cpio "newc" archive written by hand ([`Cpio`]),
//! a [`Tree`] that adds parent directories and dynamically linked host
//! programs with their libraries, and [`initramfs`], which fills it with
//! busybox, `/init` and the peer program, gzip'd.

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result, bail};
use flate2::Compression;
use flate2::write::GzEncoder;

/// The static busybox from Debian's `busybox-static`.
pub const BUSYBOX: &str = "/bin/busybox";

/// A cpio archive in the "newc" format the kernel unpacks as initramfs
/// (`Documentation/driver-api/early-userspace/buffer-format.rst`): per
/// entry a 110-byte ASCII header of 13 eight-digit hex fields, the name
/// and its NUL padded to 4 bytes, the data padded to 4 bytes; ends with
/// `TRAILER!!!`.
#[derive(Default)]
pub struct Cpio {
    out: Vec<u8>,
    inode: u32,
}

impl Cpio {
    pub fn new() -> Self {
        Self::default()
    }

    fn entry(&mut self, name: &str, mode: u32, rdev: (u32, u32), data: &[u8]) {
        // Nothing we put in is anywhere near 4 GiB.
        let size = u32::try_from(data.len()).expect("cpio entry under 4 GiB");
        self.inode += 1;
        let nlink = if mode & 0o170000 == 0o040000 { 2 } else { 1 };
        let fields = [
            self.inode,
            mode,
            0, // uid
            0, // gid
            nlink,
            0, // mtime
            size,
            0, // devmajor
            0, // devminor
            rdev.0,
            rdev.1,
            name.len() as u32 + 1,
            0, // check
        ];
        self.out.extend_from_slice(b"070701");
        for f in fields {
            self.out.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad();
        self.out.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.out.len().is_multiple_of(4) {
            self.out.push(0);
        }
    }

    /// A directory (its parents must come first).
    pub fn dir(&mut self, name: &str) {
        self.entry(name, 0o040755, (0, 0), &[]);
    }

    /// A regular file with permission bits `perm` (e.g. 0o755).
    pub fn file(&mut self, name: &str, perm: u32, data: &[u8]) {
        self.entry(name, 0o100000 | (perm & 0o7777), (0, 0), data);
    }

    /// A symbolic link `name` -> `target`.
    pub fn symlink(&mut self, name: &str, target: &str) {
        self.entry(name, 0o120777, (0, 0), target.as_bytes());
    }

    /// A character device node.
    pub fn char_dev(&mut self, name: &str, major: u32, minor: u32) {
        self.entry(name, 0o020600, (major, minor), &[]);
    }

    /// The archive with its trailer.
    pub fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, (0, 0), &[]);
        self.out
    }
}

/// The busybox applets `/init` uses, linked in `/bin`.
pub(super) const APPLETS: &[&str] = &[
    "sh", "mount", "mkdir", "cat", "echo", "printf", "cut", "dmesg", "sed", "head", "uname", "poweroff", "sleep", "true", "false", "ip",
    "insmod", "kill", "tr",
];

/// The peer's initramfs, gzip'd: busybox and its applet links in /bin,
/// `peer` as /bin/peer, `/init`, /dev/console, and empty /proc, /sys, /tmp.
pub fn initramfs(init: &str, peer: &Path) -> Result<Vec<u8>> {
    initramfs_with(init, peer, |_| Ok(()))
}

/// Like [`initramfs`], with more files that `extra` adds.
pub fn initramfs_with(init: &str, peer: &Path, extra: impl FnOnce(&mut Tree) -> Result<()>) -> Result<Vec<u8>> {
    let busybox = fs::read(BUSYBOX).with_context(|| format!("reading {BUSYBOX}"))?;
    let peer = fs::read(peer).with_context(|| format!("reading {}", peer.display()))?;
    let mut tree = Tree::default();
    for dir in ["bin", "dev", "proc", "sys", "tmp"] {
        tree.dir(dir);
    }
    // The kernel opens /dev/console for /init before anything is mounted.
    tree.cpio.char_dev("dev/console", 5, 1);
    tree.file("bin/busybox", 0o755, &busybox);
    for applet in APPLETS {
        tree.symlink(&format!("bin/{applet}"), "busybox");
    }
    tree.file("bin/peer", 0o755, &peer);
    tree.file("init", 0o755, init.as_bytes());
    extra(&mut tree)?;
    let mut gz = GzEncoder::new(Vec::new(), Compression::fast());
    gz.write_all(&tree.cpio.finish())?;
    Ok(gz.finish()?)
}

/// A [`Cpio`] that creates each file's parent directories first, once.
#[derive(Default)]
pub struct Tree {
    cpio: Cpio,
    dirs: std::collections::BTreeSet<String>,
}

impl Tree {
    /// `path` and its parents (relative, `a/b/c`), unless already there.
    pub fn dir(&mut self, path: &str) {
        let path = path.trim_matches('/');
        if path.is_empty() || self.dirs.contains(path) {
            return;
        }
        if let Some((parent, _)) = path.rsplit_once('/') {
            self.dir(parent);
        }
        self.cpio.dir(path);
        self.dirs.insert(path.to_string());
    }

    fn parent(&mut self, path: &str) -> String {
        let path = path.trim_start_matches('/');
        if let Some((parent, _)) = path.rsplit_once('/') {
            self.dir(parent);
        }
        path.to_string()
    }

    /// A regular file (parents created as needed).
    pub fn file(&mut self, path: &str, perm: u32, data: &[u8]) {
        let path = self.parent(path);
        self.cpio.file(&path, perm, data);
    }

    /// A symbolic link (parents created as needed).
    pub fn symlink(&mut self, path: &str, target: &str) {
        let path = self.parent(path);
        self.cpio.symlink(&path, target);
    }

    /// The host file `host` at `path` (symbolic links followed), with its
    /// permission bits.
    pub fn copy(&mut self, host: &Path, path: &str) -> Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let data = fs::read(host).with_context(|| format!("reading {}", host.display()))?;
        let perm = fs::metadata(host)?.permissions().mode() & 0o777;
        self.file(path, perm, &data);
        Ok(())
    }

    /// A dynamically linked host program at the same path, with the shared
    /// libraries `ldd` names and the program interpreter, each at the path
    /// `ldd` gives.
    pub fn dynamic_program(&mut self, program: &Path) -> Result<()> {
        let out = Command::new("ldd").arg(program).output().context("running ldd")?;
        if !out.status.success() {
            bail!("ldd {} failed: {}", program.display(), String::from_utf8_lossy(&out.stderr).trim());
        }
        self.copy(program, &program.display().to_string())?;
        for lib in ldd_paths(&String::from_utf8_lossy(&out.stdout)) {
            self.copy(&lib, &lib.display().to_string())?;
        }
        Ok(())
    }
}

/// The files `ldd` output names: `libx.so => /path (0x...)` and the
/// interpreter `/lib64/ld-linux-x86-64.so.2 (0x...)`; not the vDSO.
pub fn ldd_paths(ldd: &str) -> Vec<PathBuf> {
    ldd.lines()
        .filter_map(|l| {
            let l = l.trim();
            let path = match l.split_once("=>") {
                Some((_, rest)) => rest.split_whitespace().next()?,
                None => l.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpio_newc_layout() {
        let mut c = Cpio::new();
        c.dir("bin");
        c.file("bin/x", 0o755, b"hello");
        c.symlink("bin/sh", "busybox");
        let out = c.finish();
        assert_eq!(out.len() % 4, 0);
        // First header: magic, inode 1, a directory, name "bin" (4 with NUL).
        assert!(out.starts_with(b"07070100000001000041ed"));
        assert_eq!(&out[94..102], b"00000004");
        assert_eq!(&out[110..114], b"bin\0");
        // The file's data follows its name, padded so 110 + 6 bytes of
        // header and name end on a 4-byte boundary.
        let at = out.windows(6).position(|w| w == b"bin/x\0").unwrap();
        assert_eq!((at + 6) % 4, 0);
        assert_eq!(&out[at + 6..at + 11], b"hello");
        let link = out.windows(7).position(|w| w == b"bin/sh\0").unwrap();
        assert_eq!(&out[link - 110 + 14..link - 110 + 22], b"0000a1ff");
        // The trailer ends it.
        let tail = &out[out.len() - 124..];
        assert!(tail.windows(11).any(|w| w == b"TRAILER!!!\0"));
    }

    #[test]
    fn ldd_output_names_libraries_and_the_interpreter() {
        let out = "\tlinux-vdso.so.1 (0x00007ff3d2930000)
\tlibcrypt.so.1 => /lib/x86_64-linux-gnu/libcrypt.so.1 (0x00007ff3d278c000)
\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007ff3d1e1e000)
\tlibmissing.so => not found
\t/lib64/ld-linux-x86-64.so.2 (0x00007ff3d2932000)
";
        let paths: Vec<String> = ldd_paths(out).iter().map(|p| p.display().to_string()).collect();
        assert_eq!(paths, ["/lib/x86_64-linux-gnu/libcrypt.so.1", "/lib/x86_64-linux-gnu/libc.so.6", "/lib64/ld-linux-x86-64.so.2"]);
    }

    #[test]
    fn tree_creates_parents_once() {
        let mut t = Tree::default();
        t.dir("bin");
        t.file("var/lib/nginx/x", 0o644, b"1");
        t.file("var/lib/y", 0o644, b"2");
        t.symlink("/lib64/ld.so", "/lib/ld.so");
        let out = t.cpio.finish();
        let count = |name: &[u8]| out.windows(name.len()).filter(|w| w == &name).count();
        assert_eq!(count(b"var\0"), 1);
        assert_eq!(count(b"var/lib\0"), 1);
        assert_eq!(count(b"var/lib/nginx\0"), 1);
        assert_eq!(count(b"lib64\0"), 1);
        assert_eq!(count(b"lib64/ld.so\0"), 1);
        let at = |name: &[u8]| out.windows(name.len()).position(|w| w == name).unwrap();
        assert!(at(b"var/lib\0") < at(b"var/lib/nginx\0"));
        assert!(at(b"var/lib/nginx\0") < at(b"var/lib/nginx/x\0"));
    }
}
