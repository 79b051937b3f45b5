//! The peer's programs and scripts: `peer/peer.c`, `peer/net.c` and `peer/latency.c`
//! compiled static ([`build_peer_program`]), the `/init` scripts of the
//! benchmarks ([`init_script`], [`net_init_script`]), and nginx with its
//! configuration and the virtio-net modules for `bench net`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result, bail};

#[cfg(test)]
use super::initramfs::APPLETS;
use super::initramfs::Tree;
use super::kernel::{Kernel, VIRTIO_NET_MODULES};
use super::packages::is_static_elf;
use crate::cmd::run;
use crate::workspace_root;

/// The peer's benchmark program, compiled into `target/bench/peer`.
const PEER_SOURCES: &[&str] = &["xtask/src/peer/peer.c", "xtask/src/peer/net.c", "xtask/src/peer/latency.c"];

/// Compiles `peer/peer.c`, `peer/net.c` and `peer/latency.c` into `target/bench/peer` (`gcc -static -O2`)
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

/// What the Linux peer of `bench net` runs, in order: the echo server and
/// client over loopback, the bulk sink and sender over loopback, then nginx and the HTTP load over loopback, then
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
    /// `peer bulk-send` settings: connections (e.g. "1,4") and the bytes
    /// each run streams, split over its connections.
    pub bulk_connections: String,
    pub bulk_bytes: u64,
    /// Insmod virtio-net, bring eth0 up as 10.0.2.15/24, serve the host.
    pub nic: bool,
    /// With `nic`: a second NIC, eth1, on the host's tap device, up as
    /// 10.0.0.2/16 (the address of our first guest behind our uplink).
    pub tap: bool,
}

/// The port the peer's echo server and nginx listen on (as our guests).
pub const ECHO_PORT: u16 = 7;
pub const HTTP_PORT: u16 = 80;
/// The port the bulk sinks listen on (ours: `echo sink`; the peer's: `peer bulk-sink`).
pub const BULK_PORT: u16 = 9;

/// `/init` for `bench net`. Every result is a JSON line: `{"peer":"up",...}`,
/// the clients' `{"bench":"echo"|"bulk"|"http",...}`, `{"peer":"failed","command":C}`
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
    s += &format!(
        "/bin/peer bulk-sink {BULK_PORT} &\nbulk_sink=$!\n\
         /bin/peer bulk-send 127.0.0.1 {BULK_PORT} {} {} || failed bulk-send\n\
         kill $bulk_sink\n",
        plan.bulk_connections, plan.bulk_bytes
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
        let tap = if plan.tap { "{ ip addr add 10.0.0.2/16 dev eth1 && ip link set eth1 up; } || failed eth1\n  " } else { "" };
        s += &format!(
            "if {} && ip addr add 10.0.2.15/24 dev eth0 && ip link set eth0 up; then\n  \
             {tap}printf '{{\"peer\":\"serving\",\"ip\":\"10.0.2.15\",\"port\":{HTTP_PORT}}}\\n'\n  \
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
/// directories it needs (docs/ARCHITECTURE.md, the Linux peer) to `tree`.
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

/// QEMU's NICs for the peer: virtio-net (modern, as our uplink) on a user
/// network with host 127.0.0.1:`host_port` forwarded to its port 80 (eth0),
/// and with `tap` a second on that host tap device (eth1).
pub fn nic_args(host_port: u16, tap: Option<&str>) -> Vec<String> {
    let mut args = vec![
        "-netdev".into(),
        format!("user,id=n0,hostfwd=tcp:127.0.0.1:{host_port}-:{HTTP_PORT}"),
        "-device".into(),
        "virtio-net-pci,netdev=n0,disable-legacy=on".into(),
    ];
    if let Some(tap) = tap {
        args.extend([
            "-netdev".into(),
            crate::tap::netdev("n1", tap),
            "-device".into(),
            "virtio-net-pci,netdev=n1,disable-legacy=on".into(),
        ]);
    }
    args
}

#[cfg(test)]
mod tests {
    use super::*;

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
            bulk_connections: "1,4".into(),
            bulk_bytes: 256 << 20,
            nic: true,
            tap: false,
        };
        let s = net_init_script(&plan);
        assert!(s.contains("mount -t tmpfs tmpfs /tmp"));
        assert!(s.contains("ip link set lo up"));
        assert!(s.contains("/bin/peer echo-server 7 &"));
        assert!(s.contains("/bin/peer echo-client 127.0.0.1 7 1,16 64 10000 1000 || failed echo-client"));
        assert!(s.contains("/bin/peer bulk-sink 9 &"));
        assert!(s.contains("/bin/peer bulk-send 127.0.0.1 9 1,4 268435456 || failed bulk-send"));
        assert!(s.contains("if nginx -c /etc/nginx/nginx.conf; then"));
        assert!(s.contains("/bin/peer http-load 127.0.0.1 80 / 16 10000 1000 || failed http-load"));
        assert!(s.contains("insmod /lib/modules/virtio_ring.ko && insmod /lib/modules/virtio.ko"));
        assert!(s.contains("ip addr add 10.0.2.15/24 dev eth0"));
        assert!(s.contains("read -r reply"));
        assert!(!s.contains("eth1"));
        assert!(s.ends_with("/bin/peer debug-exit 16\npoweroff -f\n"));
        plan.tap = true;
        let s = net_init_script(&plan);
        assert!(
            s.contains(
                "ip link set eth0 up; then\n  { ip addr add 10.0.0.2/16 dev eth1 && ip link set eth1 up; } || failed eth1\n  printf"
            ),
            "{s}"
        );
        assert_eq!(
            nic_args(8080, Some("tap9"))[4..],
            ["-netdev", "tap,id=n1,ifname=tap9,script=no,downscript=no", "-device", "virtio-net-pci,netdev=n1,disable-legacy=on"]
        );
        assert_eq!(nic_args(8080, None).len(), 4);
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
