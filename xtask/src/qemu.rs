//! Booting the hypervisor and a manifest of guests under QEMU, interactively
//! (`cargo xtask run`) or with the console captured (integration tests):
//! [`prepare`] builds and packs what a [`RunConfig`] names and assembles
//! QEMU's command line; [`run_interactive`] and [`run_captured`] boot it
//! through the one QEMU runner ([`crate::runner`]), whose kill and timeout
//! rules they share.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use abi::debug_exit::{FAILURE, SUCCESS, qemu_status};
use anyhow::{Context as _, Result, bail};

use crate::build::{apps, build_apps, build_hypervisor};
use crate::manifest::{self, DEFAULT_MANIFEST, MIB, Source, format_size, parse_size};
use crate::runner::{Errors, Input, Options, Qemu, Reply, RunOutput};
use crate::{pack, workspace_root};

/// The QEMU binary.
pub const QEMU: &str = "qemu-system-x86_64";

/// How QEMU executes the machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Accel {
    /// KVM if the CPU has vmx/svm and /dev/kvm exists, else TCG.
    Auto,
    /// QEMU's emulator; works everywhere.
    Tcg,
    /// Hardware virtualization.
    Kvm,
}

impl Accel {
    /// `Auto` decided for this machine; others unchanged.
    pub fn resolve(self) -> Accel {
        match self {
            Accel::Auto if host_has_hardware_virtualization() => Accel::Kvm,
            Accel::Auto => Accel::Tcg,
            other => other,
        }
    }

    /// The name QEMU's `-accel` takes.
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Auto => "auto",
            Accel::Tcg => "tcg",
            Accel::Kvm => "kvm",
        }
    }
}

/// The NIC QEMU gives the machine for the uplink; the hypervisor drives
/// whichever it finds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Nic {
    /// virtio-net (modern PCI interface only).
    #[default]
    Virtio,
    /// An Intel 82574L (`-device e1000e`).
    E1000e,
}

impl Nic {
    /// QEMU's `-device` for it, on the `uplink` netdev.
    fn device(self) -> &'static str {
        match self {
            Nic::Virtio => "virtio-net-pci,netdev=uplink,disable-legacy=on",
            Nic::E1000e => "e1000e,netdev=uplink",
        }
    }
}

/// True if /proc/cpuinfo shows `vmx` or `svm` and /dev/kvm exists. (A
/// /dev/kvm alone is not enough: without those flags KVM cannot run our
/// ring-0 code natively.)
pub fn host_has_hardware_virtualization() -> bool {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let flag = cpuinfo.lines().filter(|l| l.starts_with("flags")).any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"));
    flag && Path::new("/dev/kvm").exists()
}

/// Makes sure QEMU is installed: as root, installs it with apt-get;
/// otherwise fails with the command to run.
pub fn ensure_qemu() -> Result<()> {
    crate::install::ensure(&[QEMU], "qemu-system-x86")
}

/// How the machine starts the hypervisor.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Boot {
    /// QEMU loads it directly (`-kernel`, the PVH entry): the fastest.
    #[default]
    Pvh,
    /// From an ISO, through SeaBIOS and GRUB (Multiboot2).
    Bios,
    /// From an ISO, through OVMF (UEFI) and GRUB (Multiboot2).
    Uefi,
}

/// QEMU's chipset.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Chipset {
    /// i440FX and PIIX: PCI through I/O ports, no PCI Express.
    #[default]
    Pc,
    /// Q35 and ICH9: PCI Express (ECAM, from the ACPI MCFG table).
    Q35,
}

impl Chipset {
    pub fn as_str(self) -> &'static str {
        match self {
            Chipset::Pc => "pc",
            Chipset::Q35 => "q35",
        }
    }
}

/// Where the manifest comes from.
#[derive(Clone, Debug)]
pub enum ManifestSource {
    /// [`DEFAULT_MANIFEST`].
    Default,
    /// A file; `image` paths are relative to its directory.
    File(PathBuf),
    /// Text (e.g. from a test); `image` paths are relative to `base_dir`.
    Text { text: String, base_dir: PathBuf },
    /// Built in code ([`manifest::Guest::app`]); validated as its text
    /// ([`manifest::Manifest::to_toml`]) would be.
    Built(manifest::Manifest),
}

/// Most CPUs `run` gives QEMU: xAPIC ids stop at 254 (more needs x2APIC,
/// which QEMU 7.2's TCG does not emulate). The hypervisor drives up to 256,
/// each found in the ACPI MADT.
pub const MAX_SMP: u32 = 255;

/// What to boot and on what machine.
#[derive(Clone, Debug)]
pub struct RunConfig {
    pub manifest: ManifestSource,
    /// Power QEMU off once the last guest is gone.
    pub exit_when_idle: bool,
    pub accel: Accel,
    /// Number of CPUs (`-smp`).
    pub smp: u32,
    /// Machine memory (`-m`), a size such as "512M"; whole MiB.
    pub memory: String,
    /// Where to write the bundle; `None` picks a fresh file under
    /// `target/run/` that is removed when the [`Prepared`] is dropped.
    pub bundle: Option<PathBuf>,
    /// Start paused with QEMU's gdbstub on this port of 127.0.0.1.
    pub gdb: Option<u16>,
    /// Run detached: the console goes to `DIR/console.log`, the control
    /// channel is a virtio console whose ports are the Unix sockets
    /// `DIR/control.sock`, `DIR/control-1.sock`, ... (see `ctl`), and
    /// QEMU's monitor (QMP) is `DIR/qmp.sock`.
    pub detach: Option<PathBuf>,
    /// Isolate guests' page tables and clear CPU buffers on every return
    /// to a guest even where the CPU does not need it (the speculation
    /// mitigations' paths, tested here).
    pub force_mitigations: bool,
    /// How the machine starts the hypervisor.
    pub boot: Boot,
    /// QEMU's chipset.
    pub machine: Chipset,
    /// The uplink's NIC (when the manifest needs one).
    pub nic: Nic,
    /// The uplink on this host tap device instead of QEMU's user network
    /// (see [`crate::tap`]): no port forwards; the host's side reaches the
    /// guests at their addresses.
    pub tap: Option<String>,
    /// QEMU touches all guest RAM at start (`-mem-prealloc`). The
    /// benchmarks ask for it: QEMU gets its RAM from the host lazily, and
    /// under TCG the host's fault on a frame's first touch cost from 5 to
    /// 80 µs per clone, varying from one run to the next (a machine owns
    /// its RAM; nothing to measure there).
    pub prealloc: bool,
}

impl Default for RunConfig {
    fn default() -> Self {
        RunConfig {
            manifest: ManifestSource::Default,
            exit_when_idle: false,
            accel: Accel::Auto,
            smp: 1,
            gdb: None,
            detach: None,
            memory: "512M".into(),
            bundle: None,
            force_mitigations: false,
            boot: Boot::Pvh,
            machine: Chipset::Pc,
            nic: Nic::Virtio,
            tap: None,
            prealloc: false,
        }
    }
}

/// A machine ready to boot: everything built and packed.
#[derive(Debug)]
pub struct Prepared {
    /// The hypervisor ELF (`-kernel`).
    pub kernel: PathBuf,
    /// The bundle (`-initrd`, or the ISO's module).
    pub bundle: PathBuf,
    /// The bootable ISO (`--boot bios|uefi`), beside the bundle.
    pub iso: Option<PathBuf>,
    /// QEMU's arguments (without the program name).
    pub qemu_args: Vec<String>,
    /// A few lines for humans: guests, machine, what happens next.
    pub summary: String,
    /// The accelerator chosen (never `Auto`).
    pub accel: Accel,
    /// Each manifest entry's guest ELF, where it is an app (for backtraces).
    pub elfs: Vec<(String, PathBuf)>,
    /// Tenant names in the order that numbers them (the bundle's order).
    pub tenants: Vec<String>,
    /// The host tap device the uplink is on (`RunConfig::tap`), if any.
    pub tap: Option<String>,
    remove_bundle: bool,
}

impl Prepared {
    /// A symbolizer for this run's guests' backtraces.
    pub fn symbolizer(&self) -> crate::symbolize::Symbolizer {
        crate::symbolize::Symbolizer::new(self.elfs.iter().cloned())
    }
}

impl Drop for Prepared {
    fn drop(&mut self) {
        if self.remove_bundle {
            let _ = fs::remove_file(&self.bundle);
            if let Some(iso) = &self.iso {
                let _ = fs::remove_file(iso);
            }
        }
    }
}

/// Validates the manifest, builds the hypervisor and the apps it names
/// (once per process), packs the bundle and assembles QEMU's command line.
/// Nothing is built if the manifest or the machine settings are wrong.
pub fn prepare(cfg: &RunConfig) -> Result<Prepared> {
    let machine_memory = parse_size(&cfg.memory).map_err(|e| anyhow::anyhow!("--memory {:?}: {e}", cfg.memory))?;
    if !machine_memory.is_multiple_of(MIB) || machine_memory < 16 * MIB {
        bail!("--memory {:?}: must be whole MiB and at least 16 MiB", cfg.memory);
    }
    if !(1..=MAX_SMP).contains(&cfg.smp) {
        bail!("--smp must be between 1 and {MAX_SMP}");
    }
    if let Some(tap) = &cfg.tap
        && !crate::tap::valid_ifname(tap)
    {
        bail!("--tap {tap:?}: not an interface name (1 to 15 letters, digits, '-', '_' or '.')");
    }

    let root = workspace_root();
    let (text, file, base_dir) = match &cfg.manifest {
        ManifestSource::Default => (DEFAULT_MANIFEST.to_string(), "<built-in manifest>".to_string(), root.to_path_buf()),
        ManifestSource::File(path) => {
            let text = fs::read_to_string(path).with_context(|| format!("reading manifest {}", path.display()))?;
            let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
            (text, path.display().to_string(), dir.to_path_buf())
        }
        ManifestSource::Text { text, base_dir } => (text.clone(), "<manifest>".to_string(), base_dir.clone()),
        ManifestSource::Built(m) => (m.to_toml(), "<built manifest>".to_string(), root.to_path_buf()),
    };
    let known_apps = apps()?;
    let cx = manifest::Context { file: &file, base_dir: &base_dir, apps: &known_apps, machine_memory };
    let manifest = manifest::parse(&text, &cx)?;

    let kernel = build_hypervisor()?;
    let mut wanted: Vec<&str> = Vec::new();
    for g in &manifest.guests {
        if let Source::App(app) = &g.source
            && !wanted.contains(&app.as_str())
        {
            wanted.push(app);
        }
    }
    let images = build_apps(&wanted)?;
    let app_images: HashMap<String, PathBuf> = wanted.iter().map(|a| a.to_string()).zip(images).collect();

    let flags = if cfg.exit_when_idle { abi::bundle::FLAG_EXIT_WHEN_IDLE } else { 0 }
        | if cfg.force_mitigations { abi::bundle::FLAG_FORCE_MITIGATIONS } else { 0 };
    let data = pack::bundle(&manifest, &app_images, flags)?;
    let (bundle, remove_bundle) = match &cfg.bundle {
        Some(path) => (path.clone(), false),
        None => {
            static N: AtomicU32 = AtomicU32::new(0);
            let n = N.fetch_add(1, Ordering::Relaxed);
            (root.join(format!("target/run/bundle-{}-{n}.bin", std::process::id())), true)
        }
    };
    pack::write_atomically(&bundle, &data)?;

    let accel = cfg.accel.resolve();
    // Paths go in as separate arguments: they may contain spaces.
    let mut qemu_args: Vec<String> = format!(
        "-machine {} -cpu max -accel {} -smp {} -m {}M -nodefaults -display none -no-reboot \
         -serial stdio -monitor none -device isa-debug-exit,iobase=0xf4,iosize=0x04",
        cfg.machine.as_str(),
        accel.as_str(),
        cfg.smp,
        machine_memory / MIB
    )
    .split_whitespace()
    .map(String::from)
    .collect();
    if cfg.prealloc {
        qemu_args.push("-mem-prealloc".into());
    }
    if let Some(dir) = &cfg.detach {
        // COM1 (the console) to a file instead of stdio; the control
        // channel a virtio console with a port (a socket) per client.
        let at = qemu_args.iter().position(|a| a == "stdio").expect("-serial stdio");
        qemu_args[at] = format!("file:{}", dir.join("console.log").display());
        qemu_args.extend(["-device".to_string(), format!("virtio-serial-pci,id=ctl,max_ports={}", abi::control::CLIENTS_MAX + 1)]);
        for (i, path) in crate::ctl::control_sockets(dir).iter().enumerate() {
            qemu_args.extend([
                "-chardev".to_string(),
                format!("socket,id=ctl{i},path={},server=on,wait=off", path.display()),
                "-device".to_string(),
                format!("virtserialport,bus=ctl.0,nr={},chardev=ctl{i},name=org.hive.control.{i}", i + 1),
            ]);
        }
        // QEMU's monitor, for host port forwards added while it runs
        // (the hive shim's `hive.ports`).
        qemu_args.extend(["-qmp".to_string(), format!("unix:{},server=on,wait=off", dir.join("qmp.sock").display())]);
    }
    let iso = match cfg.boot {
        Boot::Pvh => {
            for (flag, path) in [("-kernel", &kernel), ("-initrd", &bundle)] {
                qemu_args.extend([flag.to_string(), path.display().to_string()]);
            }
            None
        }
        Boot::Bios | Boot::Uefi => {
            let iso = bundle.with_extension("iso");
            crate::iso::build(&kernel, &bundle, &iso)?;
            if cfg.boot == Boot::Uefi {
                crate::iso::ensure_ovmf()?;
                qemu_args.extend(["-bios".to_string(), crate::iso::OVMF.to_string()]);
            }
            qemu_args.extend(["-cdrom".to_string(), iso.display().to_string()]);
            Some(iso)
        }
    };
    let (netdev, reach) = uplink_args(&manifest, cfg.detach.is_some(), cfg.nic, cfg.tap.as_deref());
    qemu_args.extend(netdev);
    let mut gdb_help = String::new();
    if let Some(port) = cfg.gdb {
        qemu_args.extend(["-gdb".to_string(), format!("tcp:127.0.0.1:{port}"), "-S".to_string()]);
        let apps: Vec<String> = manifest
            .guests
            .iter()
            .filter_map(|g| match &g.source {
                Source::App(app) => Some(crate::build::app_elf(app).display().to_string()),
                _ => None,
            })
            .collect();
        gdb_help = format!(
            "\ngdb: the machine waits, paused, for a debugger on 127.0.0.1:{port}. The hypervisor:\n  \
             gdb {} -ex 'target remote 127.0.0.1:{port}'\n\
             a guest: in that gdb, add its symbols (guests run at their ELF addresses, each in its own page tables;\n\
             a breakpoint in a guest's code stops whichever instance of it runs there), then continue:\n{}",
            kernel.display(),
            apps.iter().map(|a| format!("  (gdb) add-symbol-file {a}\n")).collect::<String>()
        );
    }

    let guests: Vec<String> =
        manifest.guests.iter().map(|g| format!("{} × {} ({} each)", g.name, g.count, format_size(g.memory))).collect();
    let cpus = if cfg.smp == 1 { "1 CPU".to_string() } else { format!("{} CPUs", cfg.smp) };
    let next = if cfg.detach.is_some() {
        "detaching: the console goes to console.log in the instance directory"
    } else if cfg.exit_when_idle {
        "QEMU exits when the last guest is gone"
    } else {
        "console follows; Ctrl-C stops QEMU"
    };
    let summary = format!(
        "guests: {}\nmachine: {} {}, {}, {cpus}, {}{reach}{gdb_help}\n{next}",
        guests.join(", "),
        cfg.machine.as_str(),
        match cfg.boot {
            Boot::Pvh => "(PVH)",
            Boot::Bios => "(BIOS, GRUB)",
            Boot::Uefi => "(UEFI, GRUB)",
        },
        accel.as_str(),
        format_size(machine_memory)
    );

    let elfs = manifest
        .guests
        .iter()
        .filter_map(|g| match &g.source {
            Source::App(app) => Some((g.name.clone(), crate::build::app_elf(app))),
            _ => None,
        })
        .collect();
    let mut tenants: Vec<String> = Vec::new();
    for t in manifest.guests.iter().filter_map(|g| g.tenant.clone()) {
        if !tenants.contains(&t) {
            tenants.push(t);
        }
    }
    Ok(Prepared { kernel, bundle, iso, qemu_args, summary, accel, elfs, tenants, tap: cfg.tap.clone(), remove_bundle })
}

/// QEMU's NIC and user-mode network for a manifest whose guests have vNICs:
/// a virtio-net (modern only) on a slirp network that is the first
/// tenant's (`10.0.0.0/16`, QEMU as its gateway `10.0.0.1`), with the
/// manifest's port forwards on 127.0.0.1. The network is restricted unless
/// the manifest says `[host] restrict = false`: the guests reach nothing of
/// the host or beyond, only answer on the TCP forwards (slirp drops all of
/// their UDP, so UDP forwards need it off). Open, they reach every service
/// on the host's loopback through the gateway and the outside network.
/// No `guestfwd`: QEMU's shares one host connection among all the guests.
/// With a `tap` device instead, the host's side of it is the network: no
/// forwards, no restriction by QEMU; the guests are reached at their
/// addresses. Returns the arguments and the lines telling where each
/// service is. A `detached` hypervisor always has one: guests started at
/// run time may join tenant 0 and have host ports forwarded to them.
fn uplink_args(m: &manifest::Manifest, detached: bool, nic: Nic, tap: Option<&str>) -> (Vec<String>, String) {
    if m.guests.iter().all(|g| g.tenant.is_none()) && !detached {
        return (Vec::new(), String::new());
    }
    let first = m.guests.iter().find_map(|g| g.tenant.clone());
    let [a, b, c, d] = abi::gateway_ipv4(0);
    let mut netdev = format!(
        "user,id=uplink,net=10.0.0.0/{},host={a}.{b}.{c}.{d},dhcpstart=10.0.255.100,restrict={}",
        abi::GUEST_PREFIX,
        if m.restrict { "on" } else { "off" }
    );
    let mut reach = String::new();
    if let Some(tap) = tap {
        netdev = crate::tap::netdev("uplink", tap);
        reach.push_str(&format!(
            "
uplink: the host's tap device {tap} (give the host's side {a}.{b}.{c}.{d}/{}); tenant {}'s guests are reached at their addresses, no host ports",
            abi::GUEST_PREFIX,
            first.as_deref().unwrap_or_default()
        ));
    } else if !m.restrict {
        reach.push_str(&format!(
            "\nunrestricted uplink ([host] restrict = false): tenant {}'s guests reach the host's loopback and the outside network through {a}.{b}.{c}.{d}",
            first.as_deref().unwrap_or_default()
        ));
    }
    // Count guests with a vNIC in the first tenant, as the hypervisor does.
    let mut n = 0;
    for g in &m.guests {
        if g.tenant.is_none() || g.tenant != first {
            continue;
        }
        let [a, b, c, d] = abi::guest_ipv4(0, n);
        for f in &g.ports {
            let proto = if f.udp { "udp" } else { "tcp" };
            if tap.is_some() {
                reach.push_str(&format!("\nreach {}-0 {proto}/{} at {a}.{b}.{c}.{d}:{}", g.name, f.guest, f.guest));
                continue;
            }
            netdev.push_str(&format!(",hostfwd={proto}:127.0.0.1:{}-{a}.{b}.{c}.{d}:{}", f.host, f.guest));
            reach.push_str(&format!("\nreach {}-0 {proto}/{} at 127.0.0.1:{}", g.name, f.guest, f.host));
        }
        n += g.count;
    }
    let args = ["-netdev".into(), netdev, "-device".into(), nic.device().into()];
    (args.into(), reach)
}

/// Maps QEMU's exit status to a result: the hypervisor's
/// [`SUCCESS`] is `Ok`; its [`FAILURE`], any other status, or death by a
/// signal (`None`) is an error saying which.
pub fn check_exit(status: Option<i32>) -> Result<()> {
    match status {
        Some(s) if s == qemu_status(SUCCESS) => Ok(()),
        Some(s) if s == qemu_status(FAILURE) => bail!("hypervisor failed"),
        // With -no-reboot, a reset (a triple fault) ends QEMU with status 0.
        Some(0) => bail!("QEMU exited with status 0 (a reset such as a triple fault, or Ctrl-C)"),
        Some(s) => bail!("QEMU exited with status {s}"),
        None => bail!("QEMU was killed by a signal"),
    }
}

/// Boots `p` with the console on this process's stdout and the user's
/// keyboard on its input (the `run` command), and maps QEMU's exit with
/// [`check_exit`]. With a `timeout`, QEMU is stopped after that long,
/// which is an error.
pub fn run_interactive(p: &Prepared, timeout: Option<Duration>) -> Result<()> {
    let options = Options { input: Input::Inherit, errors: Errors::Inherit, timeout, stream: true, ..Options::default() };
    let qemu = Qemu::spawn(&p.qemu_args, options)?;
    // The console goes through us so that backtraces get their symbols.
    let mut sym = p.symbolizer();
    let mut out = std::io::stdout();
    let end = qemu.drive(|_, line| {
        use std::io::Write;
        let _ = writeln!(out, "{line}");
        for extra in sym.annotate(line) {
            let _ = writeln!(out, "{extra}");
        }
        Reply::Continue
    })?;
    if end.timed_out {
        bail!("stopped QEMU after the {} s timeout", timeout.unwrap_or_default().as_secs());
    }
    check_exit(end.status)
}

/// Boots `p` with stdin closed and the console and QEMU's messages
/// captured; QEMU is killed after `timeout` (and if this function unwinds).
/// Guests' backtraces on the console are symbolized.
pub fn run_captured(p: &Prepared, timeout: Duration) -> Result<RunOutput> {
    run_captured_with_input(p, timeout, b"", Duration::ZERO)
}

/// Like [`run_captured`], typing `input` on the console `after` the start
/// (bytes typed before the hypervisor set up its UART would be lost).
pub fn run_captured_with_input(p: &Prepared, timeout: Duration, input: &[u8], after: Duration) -> Result<RunOutput> {
    let input_mode = if input.is_empty() { Input::None } else { Input::Piped };
    let mut qemu = Qemu::spawn(&p.qemu_args, Options { input: input_mode, timeout: Some(timeout), ..Options::default() })?;
    if !input.is_empty() {
        // Lines are taken meanwhile; QEMU may also have ended by then.
        let _ = qemu.wait_for(|_| false, after);
        let _ = qemu.send(input);
    }
    let mut out = qemu.finish()?;
    out.console = p.symbolizer().annotate_all(&out.console);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_status_mapping() {
        assert!(check_exit(Some(33)).is_ok());
        assert_eq!(check_exit(Some(35)).unwrap_err().to_string(), "hypervisor failed");
        assert_eq!(check_exit(Some(1)).unwrap_err().to_string(), "QEMU exited with status 1");
        assert!(check_exit(Some(0)).unwrap_err().to_string().starts_with("QEMU exited with status 0"));
        assert!(check_exit(None).is_err());
    }

    #[test]
    fn bad_machine_settings_are_refused_before_building() {
        let cfg = RunConfig { memory: "lots".into(), ..RunConfig::default() };
        assert!(prepare(&cfg).unwrap_err().to_string().contains("--memory"));
        let cfg = RunConfig { memory: "1500K".into(), ..RunConfig::default() };
        assert!(prepare(&cfg).is_err());
        let cfg = RunConfig { smp: 0, ..RunConfig::default() };
        assert!(prepare(&cfg).is_err());
    }

    fn manifest(text: &str) -> manifest::Manifest {
        let apps = ["echo".to_string()];
        let cx = manifest::Context { file: "m.toml", base_dir: Path::new("."), apps: &apps, machine_memory: 512 * MIB };
        manifest::parse(text, &cx).unwrap()
    }

    #[test]
    fn the_uplink_is_restricted_unless_the_manifest_opts_out() {
        let (args, _) =
            uplink_args(&manifest("[[guest]]\nname = \"e\"\napp = \"echo\"\nports = [\"8007:7\", \"8008:8\"]\n"), false, Nic::Virtio, None);
        assert_eq!(
            args[1],
            "user,id=uplink,net=10.0.0.0/16,host=10.0.0.1,dhcpstart=10.0.255.100,restrict=on,\
             hostfwd=tcp:127.0.0.1:8007-10.0.0.2:7,hostfwd=tcp:127.0.0.1:8008-10.0.0.2:8"
        );
        let (args, reach) = uplink_args(
            &manifest("[host]\nrestrict = true\n[[guest]]\nname = \"e\"\napp = \"echo\"\ntenant = \"t\"\n"),
            false,
            Nic::Virtio,
            None,
        );
        assert!(args[1].ends_with(",restrict=on"), "{}", args[1]);
        assert!(!reach.contains("unrestricted"), "{reach}");
        // Open only when the manifest says so (UDP forwards need it).
        let (args, reach) = uplink_args(
            &manifest("[host]\nrestrict = false\n[[guest]]\nname = \"e\"\napp = \"echo\"\nports = [\"8007:7/udp\"]\n"),
            false,
            Nic::Virtio,
            None,
        );
        assert!(args[1].contains(",restrict=off,hostfwd=udp:127.0.0.1:8007-10.0.0.2:7"), "{}", args[1]);
        assert!(
            reach.contains("unrestricted uplink ([host] restrict = false): tenant default's guests reach the host's loopback and the outside network through 10.0.0.1"),
            "{reach}"
        );
        // Never a guestfwd: QEMU's shares one host connection among the guests.
        assert!(!args[1].contains("guestfwd"), "{}", args[1]);
        // No vNIC, no network at all.
        assert!(uplink_args(&manifest("[[guest]]\nname = \"e\"\napp = \"echo\"\n"), false, Nic::Virtio, None).0.is_empty());
        assert!(
            !uplink_args(&manifest("[[guest]]\nname = \"e\"\napp = \"echo\"\n"), true, Nic::Virtio, None).0.is_empty(),
            "detached: always"
        );
    }

    #[test]
    fn the_uplink_nic_is_the_one_asked_for() {
        let m = manifest("[[guest]]\nname = \"e\"\napp = \"echo\"\nports = [\"8007:7\"]\n");
        assert_eq!(uplink_args(&m, false, Nic::Virtio, None).0[2..], ["-device", "virtio-net-pci,netdev=uplink,disable-legacy=on"]);
        assert_eq!(uplink_args(&m, false, Nic::E1000e, None).0[2..], ["-device", "e1000e,netdev=uplink"]);
    }

    #[test]
    fn a_tap_uplink_has_no_forwards_and_names_the_guests_addresses() {
        let m = manifest(
            "[[guest]]\nname = \"e\"\napp = \"echo\"\nports = [\"8007:7\"]\n[[guest]]\nname = \"f\"\napp = \"echo\"\nports = [\"8008:8\"]\n",
        );
        let (args, reach) = uplink_args(&m, false, Nic::Virtio, Some("tap7"));
        assert_eq!(
            args,
            ["-netdev", "tap,id=uplink,ifname=tap7,script=no,downscript=no", "-device", "virtio-net-pci,netdev=uplink,disable-legacy=on"]
        );
        assert!(reach.contains("the host's tap device tap7 (give the host's side 10.0.0.1/16)"), "{reach}");
        assert!(reach.contains("reach e-0 tcp/7 at 10.0.0.2:7") && reach.contains("reach f-0 tcp/8 at 10.0.0.3:8"), "{reach}");
        assert!(!reach.contains("127.0.0.1"), "{reach}");
        // A name QEMU would read as more options is refused before anything is built.
        let cfg = RunConfig { tap: Some("t,script=/tmp/x".into()), ..RunConfig::default() };
        assert!(format!("{:#}", prepare(&cfg).unwrap_err()).contains("not an interface name"));
    }

    #[test]
    fn accel_resolution() {
        assert_eq!(Accel::Tcg.resolve(), Accel::Tcg);
        assert_eq!(Accel::Kvm.resolve(), Accel::Kvm);
        assert_ne!(Accel::Auto.resolve(), Accel::Auto);
    }
}
