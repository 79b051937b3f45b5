//! The machines the hypervisor boots on: QEMU's two chipsets, each started
//! three ways (QEMU's PVH loader; an ISO through SeaBIOS and GRUB; the same
//! ISO through OVMF's UEFI and GRUB), and CPU counts from one to many. In
//! every cell the echo guest answers a host client through a forwarded
//! port, and every CPU runs guests.

use integration_tests::{Live, echo, free_port, records};
use std::time::Duration;
use xtask::{Accel, Boot, Chipset};

/// Boots an echo guest and `cpus` busy workers on `machine`, started by
/// `boot`; checks the echo from the host and that every CPU ran workers.
fn cell(boot: Boot, machine: Chipset, cpus: u32) {
    cell_on(boot, machine, cpus, Accel::Tcg);
}

/// Like [`cell`], with QEMU's accelerator `accel`; returns the console.
fn cell_on(boot: Boot, machine: Chipset, cpus: u32, accel: Accel) -> String {
    let what = format!("{machine:?} {boot:?} -smp {cpus} ({accel:?})");
    let port = free_port();
    // Each CPU is given two workers. With many CPUs, CPU 0 is still
    // creating guests (under TCG, 32 vCPUs share the host's 2 cores) when
    // the others finish theirs, and they may take CPU 0's before it runs
    // them: workers long enough to outlast the start keep CPU 0's its own.
    let busy_ms = if cpus > 8 { 3000 } else { 300 };
    let manifest = format!(
        "[[guest]]\nname = \"echo\"\napp = \"echo\"\ntenant = \"a\"\nmemory = \"4 MiB\"\nargs = [\"serve\", \"7\"]\nports = [\"{port}:7\"]\n\n\
         [[guest]]\nname = \"worker\"\napp = \"worker\"\ncount = {}\nmemory = \"1 MiB\"\nargs = [\"busy\", \"{busy_ms}\"]\n",
        2 * cpus
    );
    let mut live = Live::start_with(&manifest, cpus, |cfg| {
        cfg.boot = boot;
        cfg.machine = machine;
        cfg.accel = accel;
    });
    // Firmware and GRUB under emulation take a while before the hypervisor.
    let boot_time = Duration::from_secs(240);
    // Every CPU QEMU gives is found in the ACPI MADT and started.
    let cpus_line = format!("[hv] {cpus} CPU{} of {cpus} in the MADT,", if cpus == 1 { "" } else { "s" });
    assert!(live.wait_for(&cpus_line, boot_time), "{what}: no {cpus_line:?} in:\n{}", live.console);
    assert!(live.wait_for("echo-0| echo: listening on 10.0.0.2:7", boot_time), "{what}: echo did not start:\n{}", live.console);

    let msg = format!("hello from the host to {what}\n");
    let back = echo(port, msg.as_bytes()).unwrap_or_else(|e| panic!("{what}: echo through 127.0.0.1:{port}: {e}\n{}", live.console));
    assert_eq!(back, msg.as_bytes(), "{what}");

    for i in 0..2 * cpus {
        let exited = format!("[hv] guest worker-{i} exited with code 0");
        assert!(live.console.contains(&exited) || live.wait_for(&exited, boot_time), "{what}: no {exited:?} in:\n{}", live.console);
        // Its record follows the line.
        let record = format!("{{\"event\":\"guest_stats\",\"guest\":\"worker-{i}\"");
        assert!(live.console.contains(&record) || live.wait_for(&record, boot_time), "{what}: no stats for worker-{i}:\n{}", live.console);
    }
    let mut per_cpu = vec![0u64; cpus as usize];
    for s in records::guest_stats(&live.console).iter().filter(|s| s.guest.starts_with("worker-")) {
        for (cpu, ns) in s.cpu_ns_per_cpu.iter().enumerate() {
            per_cpu[cpu] += ns;
        }
    }
    assert!(per_cpu.iter().all(|&ns| ns > 0), "{what}: a CPU ran no worker: {per_cpu:?} ns by CPU\n{}", live.console);
    live.console
}

#[test]
fn pc_pvh() {
    cell(Boot::Pvh, Chipset::Pc, 2);
}

#[test]
fn q35_pvh() {
    cell(Boot::Pvh, Chipset::Q35, 2);
}

#[test]
fn pc_bios() {
    cell(Boot::Bios, Chipset::Pc, 2);
}

#[test]
fn q35_bios() {
    cell(Boot::Bios, Chipset::Q35, 2);
}

#[test]
fn pc_uefi() {
    cell(Boot::Uefi, Chipset::Pc, 2);
}

#[test]
fn q35_uefi() {
    cell(Boot::Uefi, Chipset::Q35, 2);
}

#[test]
fn one_cpu() {
    cell(Boot::Pvh, Chipset::Q35, 1);
}

/// Under KVM the CPU has the TSC-deadline timer that QEMU's TCG lacks,
/// and the hypervisor uses it. Needs VT-x or AMD-V on this host.
#[test]
fn kvm_uefi_with_the_tsc_deadline_timer() {
    if !xtask::host_has_hardware_virtualization() {
        println!(
            "SKIPPED kvm_uefi_with_the_tsc_deadline_timer: this host has no VT-x/AMD-V (no vmx or svm in /proc/cpuinfo, or no /dev/kvm)"
        );
        return;
    }
    let console = cell_on(Boot::Uefi, Chipset::Q35, 4, Accel::Kvm);
    assert!(console.contains("APIC timer in TSC-deadline mode"), "KVM without the TSC-deadline timer:\n{console}");
}

/// Thirty-two CPUs, each found in the ACPI MADT and started by its APIC
/// id (the broadcast start-up prepares 16), all running guests.
#[test]
fn q35_32_cpus_from_the_madt() {
    cell(Boot::Pvh, Chipset::Q35, 32);
}

/// Without QEMU's debug-exit device (a QEMU started by hand, or a real
/// machine) the hypervisor powers off through ACPI when its guests are
/// done, and QEMU ends by itself.
#[test]
fn acpi_power_off_without_the_debug_exit_device() {
    for machine in [Chipset::Pc, Chipset::Q35] {
        let cfg = xtask::RunConfig {
            manifest: xtask::ManifestSource::Text {
                text: "[[guest]]\nname = \"hello\"\napp = \"hello\"\n".into(),
                base_dir: integration_tests::workspace_root().to_path_buf(),
            },
            exit_when_idle: true,
            machine,
            ..xtask::RunConfig::default()
        };
        let mut prepared = xtask::prepare(&cfg).unwrap();
        let at = prepared.qemu_args.iter().position(|a| a.starts_with("isa-debug-exit")).expect("the debug-exit device") - 1;
        prepared.qemu_args.drain(at..at + 2);
        let out = xtask::run_captured(&prepared, Duration::from_secs(120)).unwrap();
        assert!(!out.timed_out, "{machine:?}: QEMU did not power off:\n{}", out.console);
        assert_eq!(out.status, Some(0), "{machine:?}:\n{}", out.console);
        assert!(out.console.contains("powers off by ACPI soft-off (S5)"), "{machine:?}:\n{}", out.console);
        assert!(out.console.contains("[hv] guest hello-0 exited with code 0"), "{machine:?}:\n{}", out.console);
    }
}

/// On q35 the NIC sits behind a PCI Express root port (a bridge, bus 1
/// as the firmware numbered it), reached through the ECAM window the ACPI
/// MCFG gives: both NICs are found there and serve the host.
#[test]
fn q35_nics_behind_a_pcie_root_port() {
    for nic in ["virtio-net-pci,netdev=uplink,disable-legacy=on", "e1000e,netdev=uplink"] {
        let port = free_port();
        let manifest = format!(
            "[[guest]]\nname = \"echo\"\napp = \"echo\"\ntenant = \"a\"\nmemory = \"4 MiB\"\nargs = [\"serve\", \"7\"]\nports = [\"{port}:7\"]\n"
        );
        let mut live = Live::start_edited(
            &manifest,
            1,
            |cfg| cfg.machine = Chipset::Q35,
            |args| {
                let at = args.iter().position(|a| a.starts_with("virtio-net-pci,netdev=uplink")).expect("the uplink NIC");
                // The root port must come before the device that names it.
                args[at] = format!("{nic},bus=rp1");
                args.splice(at - 1..at - 1, ["-device".to_string(), "pcie-root-port,id=rp1,bus=pcie.0,chassis=1".to_string()]);
            },
        );
        for needle in ["1 ECAM region", "[hv] uplink: ", "echo-0| echo: listening on 10.0.0.2:7"] {
            assert!(
                live.console.contains(needle) || live.wait_for(needle, Duration::from_secs(120)),
                "{nic}: no {needle:?} in:\n{}",
                live.console
            );
        }
        let msg = format!("through a root port to {nic}\n");
        assert_eq!(echo(port, msg.as_bytes()).unwrap(), msg.as_bytes(), "{nic}");
    }
}
