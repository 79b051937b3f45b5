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
//!   each with the time it arrived; [`boot_interactive`] also lets the
//!   caller type on the console or stop QEMU as lines arrive.
//!
//! For `bench net`: [`ensure_net_tools`] (nginx-light, wrk), [`Tree`]
//! (files with their parent directories, dynamically linked programs with
//! the libraries `ldd` names), [`add_nginx`], [`add_virtio_net`],
//! [`net_init_script`] and [`nic_args`].

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
const PEER_SOURCES: &[&str] = &["xtask/src/peer/peer.c", "xtask/src/peer/net.c"];

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
        format!("-machine pc -cpu max -accel {} -smp {} -m {}M", self.accel.as_str(), self.smp, self.memory_mib)
            .split_whitespace()
            .map(String::from)
            .collect()
    }

    /// E.g. `tcg, 1 CPU, 512 MiB`.
    pub fn describe(&self) -> String {
        let cpus = if self.smp == 1 { "CPU" } else { "CPUs" };
        format!("{}, {} {cpus}, {} MiB", self.accel.as_str(), self.smp, self.memory_mib)
    }
}

fn is_root() -> Result<bool> {
    let out = Command::new("id").arg("-u").output().context("running `id -u`")?;
    Ok(String::from_utf8_lossy(&out.stdout).trim() == "0")
}

/// True if `path` is an ELF file without a program interpreter (a static
/// executable), read from its program headers.
pub fn is_static_elf(path: &Path) -> bool {
    fs::read(path).is_ok_and(|elf| static_elf(&elf))
}

fn static_elf(elf: &[u8]) -> bool {
    let u16_at = |o: usize| elf.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]) as usize);
    let u32_at = |o: usize| elf.get(o..o + 4).map(|b| u32::from_le_bytes(b.try_into().unwrap()));
    let u64_at = |o: usize| elf.get(o..o + 8).map(|b| u64::from_le_bytes(b.try_into().unwrap()) as usize);
    // 64-bit little-endian ELF.
    if !elf.starts_with(b"\x7fELF\x02\x01") {
        return false;
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38)) else {
        return false;
    };
    const PT_INTERP: u32 = 3;
    (0..phnum).all(|i| phoff.checked_add(i * phentsize).and_then(u32_at).is_some_and(|t| t != PT_INTERP))
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
        bail!("the Linux peer needs {}; install with:\n    sudo {command}", missing.join(", "));
    }
    eprintln!("bench: installing {} for the Linux peer", missing.join(", "));
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
    v.split(|c: char| !c.is_ascii_alphanumeric()).map(|part| (part.parse().unwrap_or(0), part.to_string())).collect()
}

/// Compiles `peer/peer.c` and `peer/net.c` into `target/bench/peer` (`gcc -static -O2`)
/// and checks that the result is static.
pub fn build_peer_program() -> Result<PathBuf> {
    let root = workspace_root();
    let out = root.join("target/bench/peer");
    fs::create_dir_all(out.parent().unwrap()).context("creating target/bench")?;
    run(Command::new("gcc").current_dir(root).args(["-static", "-O2", "-Wall", "-Werror", "-o"]).arg(&out).args(PEER_SOURCES))?;
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
    "sh", "mount", "mkdir", "cat", "echo", "printf", "cut", "dmesg", "sed", "head", "uname", "poweroff", "sleep", "true", "false", "ip",
    "insmod", "kill", "tr",
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
        s += &format!("/bin/peer {c} || {{ status=17; echo '{{\"peer\":\"failed\",\"command\":\"{c}\"}}'; }}\n");
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

/// nginx (Debian's `nginx-light`) and `wrk` for the network benchmark.
pub const NGINX: &str = "/usr/sbin/nginx";

/// Makes sure nginx and wrk are installed (as root: apt-get install
/// nginx-light wrk when missing). Returns, for each, its path or why it is
/// not there.
pub fn ensure_net_tools() -> (Result<PathBuf, String>, Result<PathBuf, String>) {
    let wrk = || std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()).map(|d| d.join("wrk")).find(|p| p.is_file());
    let mut missing = Vec::new();
    if !Path::new(NGINX).is_file() {
        missing.push("nginx-light");
    }
    if wrk().is_none() {
        missing.push("wrk");
    }
    let mut why = String::new();
    if !missing.is_empty() {
        let command = format!("apt-get install -y {}", missing.join(" "));
        if is_root().unwrap_or(false) {
            eprintln!("bench: installing {} for the network benchmark", missing.join(", "));
            let apt = || {
                let mut cmd = Command::new("apt-get");
                cmd.env("DEBIAN_FRONTEND", "noninteractive");
                cmd
            };
            if run(apt().args(["install", "-y"]).args(&missing)).is_err() {
                let _ = run(apt().arg("update"));
                if let Err(e) = run(apt().args(["install", "-y"]).args(&missing)) {
                    why = format!("`{command}` failed: {e:#}");
                }
            }
        } else {
            why = format!("not installed (run: sudo {command})");
        }
    }
    let nginx = if Path::new(NGINX).is_file() { Ok(PathBuf::from(NGINX)) } else { Err(format!("{NGINX} {why}")) };
    let wrk = wrk().ok_or_else(|| format!("wrk {why}"));
    (nginx, wrk)
}

/// What the Linux peer of `bench net` runs, in order: the echo server and
/// client over loopback, then nginx and the HTTP load over loopback, then
/// (with `nic`) eth0 up with nginx serving the host until a line is typed
/// on the console.
#[derive(Clone, Debug)]
pub struct NetPlan {
    /// `peer echo-client` settings: connections (e.g. "1,16"), message bytes, duration.
    pub echo_connections: String,
    pub message_bytes: usize,
    /// `DURATION_MS` or `COUNTx`, as the guests take it.
    pub echo_length: String,
    /// nginx is in the initramfs.
    pub nginx: bool,
    pub http_connections: String,
    pub http_length: String,
    pub body_bytes: usize,
    /// Unmeasured round trips or requests before each run, in ms.
    pub warmup_ms: u64,
    /// Insmod virtio-net, bring eth0 up as 10.0.2.15/24, serve the host.
    pub nic: bool,
}

/// The port the peer's echo server and nginx listen on (as our guests).
pub const ECHO_PORT: u16 = 7;
pub const HTTP_PORT: u16 = 80;

/// `/init` for `bench net`. Every result is a JSON line: `{"peer":"up",...}`,
/// the clients' `{"bench":"echo"|"http",...}`, `{"peer":"failed","command":C}`
/// for a part that did not work (the rest still runs),
/// `{"peer":"serving","ip":"10.0.2.15","port":80}` when the host may start
/// its load (the host then types a line), `{"peer":"done","status":16}`.
pub fn net_init_script(plan: &NetPlan) -> String {
    let mut s = String::from(
        r#"#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
export LD_LIBRARY_PATH=/lib/x86_64-linux-gnu:/usr/lib/x86_64-linux-gnu
mhz=$(dmesg | sed -n 's/.*tsc: Detected \([0-9.]*\) MHz.*/\1/p' | head -n 1)
printf '{"peer":"up","kernel":"%s","uptime_s":%s,"tsc_mhz":%s,"meltdown":"%s","spectre_v2":"%s","clocksource":"%s"}\n' \
  "$(uname -r)" "$(cut -d' ' -f1 /proc/uptime)" "${mhz:-null}" \
  "$(cat /sys/devices/system/cpu/vulnerabilities/meltdown 2>/dev/null)" \
  "$(cat /sys/devices/system/cpu/vulnerabilities/spectre_v2 2>/dev/null)" \
  "$(cat /sys/devices/system/clocksource/clocksource0/current_clocksource 2>/dev/null)"
failed() { printf '{"peer":"failed","command":"%s"}\n' "$1"; }
ip link set lo up || failed "ip link set lo up"
"#,
    );
    s += &format!(
        "/bin/peer echo-server {ECHO_PORT} &\necho_server=$!\n\
         /bin/peer echo-client 127.0.0.1 {ECHO_PORT} {} {} {} {} || failed echo-client\n\
         kill $echo_server\n",
        plan.echo_connections, plan.message_bytes, plan.echo_length, plan.warmup_ms
    );
    if plan.nginx {
        s += &format!(
            "if nginx -c /etc/nginx/nginx.conf; then\n  \
             /bin/peer http-load 127.0.0.1 {HTTP_PORT} / {} {} {} || failed http-load\n\
             else\n  failed nginx\nfi\n",
            plan.http_connections, plan.http_length, plan.warmup_ms
        );
    }
    if plan.nic {
        let insmods: Vec<String> = VIRTIO_NET_MODULES.iter().map(|m| format!("insmod /lib/modules/{m}.ko")).collect();
        s += &format!(
            "if {} && ip addr add 10.0.2.15/24 dev eth0 && ip link set eth0 up; then\n  \
             printf '{{\"peer\":\"serving\",\"ip\":\"10.0.2.15\",\"port\":{HTTP_PORT}}}\\n'\n  \
             read -r reply\nelse\n  failed eth0\nfi\n",
            insmods.join(" && ")
        );
    }
    s += r#"printf '{"peer":"done","status":16}\n'
/bin/peer debug-exit 16
poweroff -f
"#;
    s
}

/// nginx's configuration for the peer: one process (`daemon on;
/// master_process off; user root;`), no logs, keep-alive without a request
/// limit, `/` answering `body_bytes` bytes from memory (`return 200`, the
/// cheapest way nginx answers) or, above 2 KiB (longer than a
/// configuration token may be), from `/www/index.html` with the file cache
/// on; everything else 404.
pub fn nginx_conf(body_bytes: usize) -> (String, Option<Vec<u8>>) {
    let body = "x".repeat(body_bytes);
    let (root, file) = if body_bytes <= 2048 {
        (format!("location = / {{ return 200 \"{body}\"; }}"), None)
    } else {
        ("location = / { root /www; index index.html; }\n    location = /index.html { root /www; }".to_string(), Some(body.into_bytes()))
    };
    let conf = format!(
        "daemon on;\nmaster_process off;\nuser root;\nworker_processes 1;\n\
         error_log /tmp/nginx-error.log error;\npid /tmp/nginx.pid;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n  access_log off;\n  keepalive_requests 100000000;\n  keepalive_timeout 600s;\n  \
         default_type text/plain;\n  open_file_cache max=16;\n  \
         server {{\n    listen {HTTP_PORT} backlog=1024;\n    {root}\n    location / {{ return 404; }}\n  }}\n}}\n"
    );
    (conf, file)
}

/// Adds nginx (with its libraries), its configuration and the files and
/// directories it needs (DESIGN.md, "The Linux peer") to `tree`.
pub fn add_nginx(tree: &mut Tree, nginx: &Path, body_bytes: usize) -> Result<()> {
    tree.dynamic_program(nginx)?;
    tree.symlink("bin/nginx", &nginx.display().to_string());
    let (conf, file) = nginx_conf(body_bytes);
    tree.file("etc/nginx/nginx.conf", 0o644, conf.as_bytes());
    if let Some(body) = file {
        tree.file("www/index.html", 0o644, &body);
    }
    tree.file("etc/passwd", 0o644, b"root:x:0:0:root:/root:/bin/sh\n");
    tree.file("etc/group", 0o644, b"root:x:0:\n");
    for dir in ["var/lib/nginx", "var/log/nginx", "run", "var/lock", "root"] {
        tree.dir(dir);
    }
    Ok(())
}

/// Adds the virtio-net modules of `kernel` as `/lib/modules/NAME.ko`.
pub fn add_virtio_net(tree: &mut Tree, kernel: &Kernel) -> Result<()> {
    for m in VIRTIO_NET_MODULES {
        let path = kernel.module(m)?;
        tree.copy(&path, &format!("lib/modules/{m}.ko"))?;
    }
    Ok(())
}

/// QEMU's NIC for the peer: virtio-net (modern, as our uplink) on a user
/// network with host 127.0.0.1:`host_port` forwarded to its port 80.
pub fn nic_args(host_port: u16) -> Vec<String> {
    vec![
        "-netdev".into(),
        format!("user,id=n0,hostfwd=tcp:127.0.0.1:{host_port}-:{HTTP_PORT}"),
        "-device".into(),
        "virtio-net-pci,netdev=n0,disable-legacy=on".into(),
    ]
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
        self.lines[start..].iter().map(|(_, l)| format!("{l}\n")).collect()
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

/// What [`boot_interactive`]'s line callback wants done next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// Keep going.
    Continue,
    /// Type these bytes on the serial console (QEMU's stdin).
    Type(Vec<u8>),
    /// Stop QEMU now (a normal end for a machine that runs until stopped).
    Stop,
}

/// Runs QEMU with `args`, stdin closed, collecting console lines as they
/// arrive (`on_line` sees each one, e.g. for progress messages) until QEMU
/// exits or `timeout` passes (then it is killed).
pub fn boot(args: &[String], timeout: Duration, mut on_line: impl FnMut(Duration, &str)) -> Result<Console> {
    boot_interactive(args, timeout, |t, line| {
        on_line(t, line);
        Reply::Continue
    })
}

/// Runs QEMU with `args`, collecting console lines as they arrive; for each
/// line `on_line` may type on the console or stop QEMU (it may also take its
/// time, e.g. to run a load generator against the machine: lines keep
/// being collected meanwhile). Ends when QEMU exits, when `on_line` says
/// [`Reply::Stop`] (`status` is then `None`, `timed_out` false), or after
/// `timeout` (QEMU is killed).
pub fn boot_interactive(args: &[String], timeout: Duration, mut on_line: impl FnMut(Duration, &str) -> Reply) -> Result<Console> {
    let mut cmd = Command::new(QEMU);
    cmd.args(args).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    echo(&cmd);
    let start = Instant::now();
    let mut child = KillOnDrop(cmd.spawn().context("starting QEMU")?);
    let mut stdin = child.0.stdin.take();
    let stdout = child.0.stdout.take().expect("piped stdout");
    let mut stderr = child.0.stderr.take().expect("piped stderr");
    let (tx, rx) = mpsc::channel();
    let reader = thread::spawn(move || {
        let mut r = BufReader::new(stdout);
        let mut buf = Vec::new();
        while r.read_until(b'\n', &mut buf).is_ok_and(|n| n > 0) {
            let line = String::from_utf8_lossy(&buf).trim_end_matches(['\r', '\n']).to_string();
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
    let mut stopped = false;
    let mut take = |rx: &mpsc::Receiver<(Duration, String)>,
                    wait: Duration,
                    lines: &mut Vec<_>,
                    stdin: &mut Option<std::process::ChildStdin>|
     -> bool {
        while let Ok((t, line)) = rx.recv_timeout(wait) {
            let reply = on_line(t, &line);
            lines.push((t, line));
            match reply {
                Reply::Continue => {}
                Reply::Type(bytes) => {
                    if let Some(w) = stdin.as_mut() {
                        let _ = w.write_all(&bytes).and_then(|()| w.flush());
                    }
                }
                Reply::Stop => return true,
            }
        }
        false
    };
    let status = loop {
        if take(&rx, Duration::from_millis(20), &mut lines, &mut stdin) {
            stopped = true;
            break None;
        }
        if let Some(status) = child.0.try_wait().context("waiting for QEMU")? {
            break Some(status);
        }
        if Instant::now() >= deadline {
            break None;
        }
    };
    let elapsed = start.elapsed();
    drop(stdin);
    drop(child); // kills QEMU if it still runs, which ends the readers
    let _ = reader.join();
    if !stopped {
        // The last lines, after QEMU ended (nothing can be typed now).
        take(&rx, Duration::ZERO, &mut lines, &mut None);
    }
    Ok(Console {
        lines,
        status: status.and_then(|s| s.code()),
        timed_out: status.is_none() && !stopped,
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

    #[test]
    fn net_init_runs_the_plan() {
        let mut plan = NetPlan {
            echo_connections: "1,16".into(),
            message_bytes: 64,
            echo_length: "10000".into(),
            nginx: true,
            http_connections: "16".into(),
            http_length: "10000".into(),
            body_bytes: 1024,
            warmup_ms: 1000,
            nic: true,
        };
        let s = net_init_script(&plan);
        assert!(s.contains("mount -t tmpfs tmpfs /tmp"));
        assert!(s.contains("ip link set lo up"));
        assert!(s.contains("/bin/peer echo-server 7 &"));
        assert!(s.contains("/bin/peer echo-client 127.0.0.1 7 1,16 64 10000 1000 || failed echo-client"));
        assert!(s.contains("if nginx -c /etc/nginx/nginx.conf; then"));
        assert!(s.contains("/bin/peer http-load 127.0.0.1 80 / 16 10000 1000 || failed http-load"));
        assert!(s.contains("insmod /lib/modules/virtio_ring.ko && insmod /lib/modules/virtio.ko"));
        assert!(s.contains("ip addr add 10.0.2.15/24 dev eth0"));
        assert!(s.contains("read -r reply"));
        assert!(s.ends_with("/bin/peer debug-exit 16\npoweroff -f\n"));
        plan.nginx = false;
        plan.nic = false;
        let s = net_init_script(&plan);
        assert!(!s.contains("nginx") && !s.contains("insmod") && !s.contains("read -r"));
        for applet in ["ip", "insmod", "kill"] {
            assert!(APPLETS.contains(&applet), "{applet}");
        }
    }

    #[test]
    fn nginx_answers_from_memory_or_a_file() {
        let (conf, file) = nginx_conf(1024);
        assert!(file.is_none());
        assert!(conf.contains(&format!("location = / {{ return 200 \"{}\"; }}", "x".repeat(1024))));
        for line in ["daemon on;", "master_process off;", "user root;", "access_log off;", "listen 80 backlog=1024;"] {
            assert!(conf.contains(line), "{line}");
        }
        let (conf, file) = nginx_conf(100_000);
        assert_eq!(file.map(|f| f.len()), Some(100_000));
        assert!(conf.contains("root /www;"));
        assert_eq!(conf.matches('{').count(), conf.matches('}').count());
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
