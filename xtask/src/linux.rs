//! The Linux peer of the benchmarks: Debian's kernel booted under the same
//! QEMU settings as the hypervisor, with an initramfs we assemble here
//! (busybox, a `/init` script, and the static benchmark program
//! `peer/peer.c`). Its results come back as JSON lines on the serial console.
//!
//! The pieces, each usable on its own:
//! - [`ensure_packages`] installs `linux-image-amd64` and `busybox-static`
//!   (and gcc/libc6-dev if missing) with apt-get when root, else prints the
//!   command and fails;
//! - [`Kernel::find`] picks `/boot/vmlinuz-*` and its `/lib/modules/`;
//! - [`build_peer_program`] compiles `peer/peer.c` with `gcc -static -O2`;
//! - [`Cpio`] writes a cpio "newc" archive by hand, [`initramfs`] fills it;
//! - [`boot`] runs QEMU with a time limit and returns the console lines,
//!   each with the time it arrived.

use std::fs;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use flate2::Compression;
use flate2::write::GzEncoder;

use crate::cmd::{echo, run};
use crate::qemu::{Accel, QEMU};
use crate::workspace_root;

/// The static busybox from Debian's `busybox-static`.
pub const BUSYBOX: &str = "/bin/busybox";

/// The peer's benchmark program, compiled into `target/bench/peer`.
const PEER_SOURCE: &str = "xtask/src/peer/peer.c";

/// The kernel command line the peer boots with.
pub const CMDLINE: &str = "console=ttyS0 quiet panic=-1";

/// The machine both sides of a benchmark run on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Machine {
    /// Never [`Accel::Auto`].
    pub accel: Accel,
    pub smp: u32,
    pub memory_mib: u64,
}

impl Machine {
    /// The QEMU arguments both sides share: `-machine pc -cpu max -accel ...
    /// -smp ... -m ...`.
    pub fn qemu_args(&self) -> Vec<String> {
        format!(
            "-machine pc -cpu max -accel {} -smp {} -m {}M",
            self.accel.as_str(),
            self.smp,
            self.memory_mib
        )
        .split_whitespace()
        .map(String::from)
        .collect()
    }

    /// E.g. `tcg, 1 CPU, 512 MiB`.
    pub fn describe(&self) -> String {
        let cpus = if self.smp == 1 { "CPU" } else { "CPUs" };
        format!(
            "{}, {} {cpus}, {} MiB",
            self.accel.as_str(),
            self.smp,
            self.memory_mib
        )
    }
}

fn is_root() -> Result<bool> {
    let out = Command::new("id")
        .arg("-u")
        .output()
        .context("running `id -u`")?;
    Ok(String::from_utf8_lossy(&out.stdout).trim() == "0")
}

/// True if `path` is an ELF file without a program interpreter (a static
/// executable), read from its program headers.
pub fn is_static_elf(path: &Path) -> bool {
    fs::read(path).is_ok_and(|elf| static_elf(&elf))
}

fn static_elf(elf: &[u8]) -> bool {
    let u16_at = |o: usize| {
        elf.get(o..o + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]) as usize)
    };
    let u32_at = |o: usize| {
        elf.get(o..o + 4)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
    };
    let u64_at = |o: usize| {
        elf.get(o..o + 8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap()) as usize)
    };
    // 64-bit little-endian ELF.
    if !elf.starts_with(b"\x7fELF\x02\x01") {
        return false;
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        return false;
    };
    const PT_INTERP: u32 = 3;
    (0..phnum).all(|i| {
        phoff
            .checked_add(i * phentsize)
            .and_then(u32_at)
            .is_some_and(|t| t != PT_INTERP)
    })
}

/// Makes sure the kernel, a static busybox and a static C toolchain are
/// installed: as root, installs what is missing with apt-get (echoing the
/// command); otherwise fails with the exact command to run.
pub fn ensure_packages() -> Result<()> {
    let mut missing = Vec::new();
    if Kernel::find().is_err() {
        missing.push("linux-image-amd64");
    }
    if !is_static_elf(Path::new(BUSYBOX)) {
        missing.push("busybox-static");
    }
    if !on_path("gcc") {
        missing.push("gcc");
    }
    if !Path::new("/usr/lib/x86_64-linux-gnu/libc.a").exists() {
        missing.push("libc6-dev");
    }
    if missing.is_empty() {
        return Ok(());
    }
    let command = format!("apt-get install -y {}", missing.join(" "));
    if !is_root()? {
        bail!(
            "the Linux peer needs {}; install with:\n    sudo {command}",
            missing.join(", ")
        );
    }
    eprintln!(
        "bench: installing {} for the Linux peer",
        missing.join(", ")
    );
    let apt = || {
        let mut cmd = Command::new("apt-get");
        cmd.env("DEBIAN_FRONTEND", "noninteractive");
        cmd
    };
    let install = || run(apt().args(["install", "-y"]).args(&missing));
    if install().is_err() {
        run(apt().arg("update"))?;
        install()?;
    }
    Kernel::find().context("after installing linux-image-amd64")?;
    if !is_static_elf(Path::new(BUSYBOX)) {
        bail!("{BUSYBOX} is not a static executable even after installing busybox-static");
    }
    Ok(())
}

fn on_path(program: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).any(|dir| dir.join(program).is_file())
}

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
    v.split(|c: char| !c.is_ascii_alphanumeric())
        .map(|part| (part.parse().unwrap_or(0), part.to_string()))
        .collect()
}

/// Compiles `peer/peer.c` into `target/bench/peer` (`gcc -static -O2`)
/// and checks that the result is static.
pub fn build_peer_program() -> Result<PathBuf> {
    let root = workspace_root();
    let out = root.join("target/bench/peer");
    fs::create_dir_all(out.parent().unwrap()).context("creating target/bench")?;
    run(Command::new("gcc")
        .current_dir(root)
        .args(["-static", "-O2", "-Wall", "-Werror", "-o"])
        .arg(&out)
        .arg(PEER_SOURCE))?;
    if !is_static_elf(&out) {
        bail!("{} is not a static executable", out.display());
    }
    Ok(out)
}

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
const APPLETS: &[&str] = &[
    "sh", "mount", "mkdir", "cat", "echo", "printf", "cut", "dmesg", "sed", "head", "uname",
    "poweroff", "sleep", "true", "false",
];

/// `/init` for the peer: mounts /proc, /sys and /dev, prints
/// `{"peer":"up",...}` (kernel version, uptime, TSC rate, Meltdown
/// mitigation), runs each of `commands` (arguments to /bin/peer), prints
/// `{"peer":"done","status":N}`, and ends QEMU through isa-debug-exit with
/// 0x10 if every command succeeded, 0x11 if not (`poweroff -f` if that
/// device is missing).
pub fn init_script(commands: &[String]) -> String {
    let mut s = String::from(
        r#"#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mhz=$(dmesg | sed -n 's/.*tsc: Detected \([0-9.]*\) MHz.*/\1/p' | head -n 1)
printf '{"peer":"up","kernel":"%s","uptime_s":%s,"tsc_mhz":%s,"meltdown":"%s"}\n' \
  "$(uname -r)" "$(cut -d' ' -f1 /proc/uptime)" "${mhz:-null}" \
  "$(cat /sys/devices/system/cpu/vulnerabilities/meltdown 2>/dev/null)"
status=16
"#,
    );
    for c in commands {
        s += &format!(
            "/bin/peer {c} || {{ status=17; echo '{{\"peer\":\"failed\",\"command\":\"{c}\"}}'; }}\n"
        );
    }
    s += r#"printf '{"peer":"done","status":%s}\n' $status
/bin/peer debug-exit $status
poweroff -f
"#;
    s
}

/// The peer's initramfs, gzip'd: busybox and its applet links in /bin,
/// `peer` as /bin/peer, `/init`, /dev/console, and empty /proc, /sys, /tmp.
pub fn initramfs(init: &str, peer: &Path) -> Result<Vec<u8>> {
    let busybox = fs::read(BUSYBOX).with_context(|| format!("reading {BUSYBOX}"))?;
    let peer = fs::read(peer).with_context(|| format!("reading {}", peer.display()))?;
    let mut cpio = Cpio::new();
    for dir in ["bin", "dev", "proc", "sys", "tmp"] {
        cpio.dir(dir);
    }
    // The kernel opens /dev/console for /init before anything is mounted.
    cpio.char_dev("dev/console", 5, 1);
    cpio.file("bin/busybox", 0o755, &busybox);
    for applet in APPLETS {
        cpio.symlink(&format!("bin/{applet}"), "busybox");
    }
    cpio.file("bin/peer", 0o755, &peer);
    cpio.file("init", 0o755, init.as_bytes());
    let mut gz = GzEncoder::new(Vec::new(), Compression::fast());
    gz.write_all(&cpio.finish())?;
    Ok(gz.finish()?)
}

/// What a peer boot produced.
#[derive(Clone, Debug)]
pub struct Console {
    /// Console lines (without `\r`), each with when it arrived after QEMU started.
    pub lines: Vec<(Duration, String)>,
    /// QEMU's exit code; `None` if it was killed.
    pub status: Option<i32>,
    pub timed_out: bool,
    /// QEMU's own messages.
    pub stderr: String,
    /// From QEMU's start to its end.
    pub elapsed: Duration,
}

impl Console {
    /// The whole console text.
    pub fn text(&self) -> String {
        self.lines.iter().map(|(_, l)| format!("{l}\n")).collect()
    }

    /// The last `n` lines, for error messages.
    pub fn tail(&self, n: usize) -> String {
        let start = self.lines.len().saturating_sub(n);
        self.lines[start..]
            .iter()
            .map(|(_, l)| format!("{l}\n"))
            .collect()
    }
}

/// QEMU's arguments for booting `kernel` with `initrd` on `machine`.
pub fn qemu_args(machine: &Machine, kernel: &Path, initrd: &Path, append: &str) -> Vec<String> {
    let mut args = machine.qemu_args();
    args.extend(
        "-nodefaults -display none -no-reboot -serial stdio -monitor none \
         -device isa-debug-exit,iobase=0xf4,iosize=0x04"
            .split_whitespace()
            .map(String::from),
    );
    args.extend(["-kernel".into(), kernel.display().to_string()]);
    args.extend(["-initrd".into(), initrd.display().to_string()]);
    args.extend(["-append".into(), append.to_string()]);
    args
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs QEMU with `args`, stdin closed, collecting console lines as they
/// arrive (`on_line` sees each one, e.g. for progress messages) until QEMU
/// exits or `timeout` passes (then it is killed).
pub fn boot(
    args: &[String],
    timeout: Duration,
    mut on_line: impl FnMut(Duration, &str),
) -> Result<Console> {
    let mut cmd = Command::new(QEMU);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    echo(&cmd);
    let start = Instant::now();
    let mut child = KillOnDrop(cmd.spawn().context("starting QEMU")?);
    let stdout = child.0.stdout.take().expect("piped stdout");
    let mut stderr = child.0.stderr.take().expect("piped stderr");
    let (tx, rx) = mpsc::channel();
    let reader = thread::spawn(move || {
        let mut r = BufReader::new(stdout);
        let mut buf = Vec::new();
        while r.read_until(b'\n', &mut buf).is_ok_and(|n| n > 0) {
            let line = String::from_utf8_lossy(&buf)
                .trim_end_matches(['\r', '\n'])
                .to_string();
            if tx.send((start.elapsed(), line)).is_err() {
                break;
            }
            buf.clear();
        }
    });
    let err_reader = thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let deadline = start + timeout;
    let mut lines = Vec::new();
    let mut take = |rx: &mpsc::Receiver<(Duration, String)>, wait: Duration, lines: &mut Vec<_>| {
        while let Ok((t, line)) = rx.recv_timeout(wait) {
            on_line(t, &line);
            lines.push((t, line));
        }
    };
    let status = loop {
        take(&rx, Duration::from_millis(20), &mut lines);
        if let Some(status) = child.0.try_wait().context("waiting for QEMU")? {
            break Some(status);
        }
        if Instant::now() >= deadline {
            break None;
        }
    };
    let elapsed = start.elapsed();
    drop(child); // kills QEMU if it still runs, which ends the readers
    let _ = reader.join();
    take(&rx, Duration::ZERO, &mut lines);
    Ok(Console {
        lines,
        status: status.and_then(|s| s.code()),
        timed_out: status.is_none(),
        stderr: err_reader.join().unwrap_or_default(),
        elapsed,
    })
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
    fn static_elf_detection() {
        let mut elf = vec![0u8; 0x40 + 2 * 0x38];
        elf[..6].copy_from_slice(b"\x7fELF\x02\x01");
        elf[0x20] = 0x40; // phoff
        elf[0x36] = 0x38; // phentsize
        elf[0x38] = 2; // phnum
        elf[0x40] = 1; // PT_LOAD
        elf[0x40 + 0x38] = 6; // PT_PHDR
        assert!(static_elf(&elf));
        elf[0x40 + 0x38] = 3; // PT_INTERP
        assert!(!static_elf(&elf));
        assert!(!static_elf(b"#!/bin/sh"));
        elf[0x38] = 200; // headers beyond the file
        assert!(!static_elf(&elf));
    }

    #[test]
    fn kernel_versions_sort_numerically() {
        let mut v = vec!["6.1.0-10-amd64", "6.1.0-9-amd64", "5.10.0-30-amd64"];
        v.sort_by_key(|v| version_key(v));
        assert_eq!(v, ["5.10.0-30-amd64", "6.1.0-9-amd64", "6.1.0-10-amd64"]);
    }

    #[test]
    fn init_runs_every_command_and_reports() {
        let s = init_script(&["getppid 1000 3".into()]);
        assert!(s.starts_with("#!/bin/sh\n"));
        assert!(s.contains("/bin/peer getppid 1000 3 || { status=17;"));
        assert!(s.contains("/bin/peer debug-exit $status"));
        for applet in ["mount", "printf", "cut", "sed", "dmesg", "poweroff"] {
            assert!(APPLETS.contains(&applet), "{applet}");
        }
    }
}
