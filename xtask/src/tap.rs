//! A host tap device for the uplink (`run --tap NAME`), and a private one
//! in a network namespace for the benchmarks and tests ([`HostTap`]).
//!
//! QEMU's user network (the default uplink) is a TCP/IP stack inside QEMU
//! that forwards host ports; it listens on each forwarded port with a
//! backlog of 1, so a client that opens many connections at once has some
//! handshakes dropped and retried by the host kernel (see
//! `bench/wrk.rs`). A tap device is how a machine's NIC meets a real
//! network: the host's side is an Ethernet interface, and the guests are
//! reached at their own addresses (10.0.0.2, ...) with the gateway's,
//! 10.0.0.1, on the host's side.
//!
//! [`HostTap`] keeps the host's side out of the host's routing: the device
//! is made in the host's namespace (QEMU, which runs there, attaches to it
//! by name), and once QEMU holds it, [`HostTap::attach`] moves it into a
//! network namespace of its own where it gets 10.0.0.1/16; clients run in
//! that namespace (`ip netns exec`, [`HostTap::command`]). Dropping it
//! deletes the namespace and the device.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

/// Whether `name` can name a network interface for QEMU's `-netdev
/// tap,ifname=`: 1 to 15 bytes of letters, digits, `-`, `_` and `.` (no
/// `,`, which would end QEMU's option, no `/`, and not `.` or `..`).
pub fn valid_ifname(name: &str) -> bool {
    (1..=15).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)) && name != "." && name != ".."
}

/// QEMU's `-netdev` for an uplink on the host's tap device `name` (made
/// beforehand, e.g. `ip tuntap add dev NAME mode tap`; QEMU runs no
/// scripts).
pub fn netdev(id: &str, name: &str) -> String {
    format!("tap,id={id},ifname={name},script=no,downscript=no")
}

/// Why this process cannot make tap devices and namespaces, if it cannot.
pub fn unavailable() -> Option<String> {
    let uid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("Uid:").and_then(|v| v.split_whitespace().nth(1).map(String::from))));
    if uid.as_deref() != Some("0") {
        return Some("needs root (to make a tap device and a network namespace)".into());
    }
    if !Path::new("/dev/net/tun").exists() {
        return Some("no /dev/net/tun".into());
    }
    match Command::new("ip").arg("-V").stdout(Stdio::null()).stderr(Stdio::null()).status() {
        Ok(s) if s.success() => None,
        _ => Some("no `ip` command (iproute2)".into()),
    }
}

/// A tap device on the host (see the module doc), deleted on drop.
#[derive(Debug)]
pub struct HostTap {
    name: String,
    netns: String,
    attached: bool,
}

/// Runs `ip ARGS`, quietly; the error says what failed and what `ip` said.
fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip").args(args).output().map_err(|e| format!("running ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("`ip {}` failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

impl HostTap {
    /// The host's side of the uplink, in the namespace: the gateway's address.
    pub const HOST_ADDR: &'static str = "10.0.0.1/16";

    /// Makes a tap device (down, no address) in the host's namespace and
    /// an empty network namespace for it, both named after this process.
    pub fn create() -> Result<HostTap, String> {
        if let Some(why) = unavailable() {
            return Err(why);
        }
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let (pid, n) = (std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        let tap = HostTap { name: format!("hvt{}.{n}", pid % 1_000_000), netns: format!("hvbench-{pid}-{n}"), attached: false };
        ip(&["netns", "add", &tap.netns])?;
        ip(&["tuntap", "add", "dev", &tap.name, "mode", "tap"])?;
        Ok(tap)
    }

    /// The device's name (QEMU's `ifname=`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespace clients run in.
    pub fn netns(&self) -> &str {
        &self.netns
    }

    /// Once QEMU holds the device: moves it into the namespace, gives it
    /// [`Self::HOST_ADDR`] and brings it (and the namespace's loopback) up.
    pub fn attach(&mut self) -> Result<(), String> {
        if self.attached {
            return Ok(());
        }
        ip(&["link", "set", &self.name, "netns", &self.netns])?;
        self.attached = true;
        ip(&["-n", &self.netns, "addr", "add", Self::HOST_ADDR, "dev", &self.name])?;
        ip(&["-n", &self.netns, "link", "set", &self.name, "up"])?;
        ip(&["-n", &self.netns, "link", "set", "lo", "up"])
    }

    /// `program` run inside the namespace (`ip netns exec NS program`).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.netns]).arg(program);
        cmd
    }
}

impl Drop for HostTap {
    fn drop(&mut self) {
        // A tap device is deleted with the namespace it is in.
        if !self.attached {
            let _ = ip(&["link", "del", &self.name]);
        }
        let _ = ip(&["netns", "del", &self.netns]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names_qemu_can_take() {
        for ok in ["tap0", "hvt123456.12", "a", "up-link_1", "x".repeat(15).as_str()] {
            assert!(valid_ifname(ok), "{ok}");
        }
        for bad in ["", "x".repeat(16).as_str(), "tap0,script=/tmp/x", "a/b", "a b", ".", "..", "täp"] {
            assert!(!valid_ifname(bad), "{bad}");
        }
        assert_eq!(netdev("uplink", "tap0"), "tap,id=uplink,ifname=tap0,script=no,downscript=no");
    }
}
