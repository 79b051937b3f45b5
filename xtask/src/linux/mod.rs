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
//!
//! The parts: [`packages`] (what must be installed), [`kernel`],
//! [`initramfs`] (cpio, busybox, host programs with their libraries) and
//! [`peer`] (the peer program, `/init` scripts, nginx). The machine boots
//! through the one QEMU runner ([`crate::runner`]).

use std::path::Path;
use std::time::Duration;

use anyhow::Result;

use crate::qemu::Accel;
use crate::runner::{Input, Options, Qemu, Reply, RunOutput};

pub mod initramfs;
pub mod kernel;
pub mod packages;
pub mod peer;

pub use initramfs::{BUSYBOX, Cpio, Tree, initramfs, initramfs_with, ldd_paths};
pub use kernel::{Kernel, VIRTIO_NET_MODULES};
pub use packages::{NGINX, ensure_net_tools, ensure_packages, is_static_elf};
pub use peer::{
    BULK_PORT, ECHO_PORT, HTTP_PORT, NetPlan, add_nginx, add_virtio_net, build_peer_program, init_script, net_init_script, nginx_conf,
    nic_args,
};

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
    /// -smp ... -m ... -mem-prealloc` (see [`RunConfig::prealloc`]).
    ///
    /// [`RunConfig::prealloc`]: crate::qemu::RunConfig::prealloc
    pub fn qemu_args(&self) -> Vec<String> {
        format!("-machine pc -cpu max -accel {} -smp {} -m {}M -mem-prealloc", self.accel.as_str(), self.smp, self.memory_mib)
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

/// Runs QEMU with `args`, stdin closed, collecting console lines as they
/// arrive (`on_line` sees each one, e.g. for progress messages) until QEMU
/// exits or `timeout` passes (then it is killed).
pub fn boot(args: &[String], timeout: Duration, mut on_line: impl FnMut(Duration, &str)) -> Result<RunOutput> {
    Qemu::spawn(args, Options { timeout: Some(timeout), ..Options::default() })?.drive(|t, line| {
        on_line(t, line);
        Reply::Continue
    })
}

/// Runs QEMU with `args`, collecting console lines as they arrive; for each
/// line `on_line` may type on the console or stop QEMU ([`Qemu::drive`]).
pub fn boot_interactive(args: &[String], timeout: Duration, on_line: impl FnMut(Duration, &str) -> Reply) -> Result<RunOutput> {
    Qemu::spawn(args, Options { input: Input::Piped, timeout: Some(timeout), ..Options::default() })?.drive(on_line)
}
