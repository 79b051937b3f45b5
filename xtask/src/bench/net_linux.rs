//! The Linux side of `bench net`: one boot whose `/init` runs `peer
//! echo-client` → `peer echo-server`, `peer bulk-send` → `peer bulk-sink`
//! and `peer http-load` → nginx over
//! `lo`, then serves the host's `wrk` on `eth0`
//! ([`linux::net_init_script`]).

use super::host_load::host_load;
use super::net::{free_port, tap_wrk};
use super::wrk::{Target, host_wrk};
use super::*;
use crate::tap::HostTap;

impl Bench {
    /// The Linux peer of `bench net`: one boot runs the echo and HTTP loads
    /// over loopback, then serves the host's wrk through a forwarded port.
    /// Whatever does not work is reported as not measured.
    pub(super) fn linux_net(
        &self,
        st: &NetSettings,
        nginx: std::result::Result<&std::path::Path, &str>,
        wrk: std::result::Result<&std::path::Path, &str>,
    ) -> (NetSide, Value) {
        let fail_all = |why: String| {
            (
                NetSide {
                    echo: st.echo_connections.iter().map(|_| Err(why.clone())).collect(),
                    bulk: st.bulk_connections.iter().map(|_| Err(why.clone())).collect(),
                    http: Err(why.clone()),
                    host: Err(why.clone()),
                    host_load: Err(why.clone()),
                    host_tap: Err(why.clone()),
                },
                json!({ "not_measured": why }),
            )
        };
        let kernel = match Kernel::find() {
            Ok(k) => k,
            Err(e) => return fail_all(format!("no Linux kernel: {e:#}")),
        };
        let program = match linux::build_peer_program() {
            Ok(p) => p,
            Err(e) => return fail_all(format!("building the peer program failed: {e:#}")),
        };
        let mut http_why = nginx.err().map(|e| format!("nginx: {e}"));
        let mut host_why = match (&http_why, wrk) {
            (Some(w), _) => Some(w.clone()),
            (None, Err(e)) => Some(e.to_string()),
            (None, Ok(_)) => None,
        };
        let modules: Result<Vec<PathBuf>> = linux::VIRTIO_NET_MODULES.iter().map(|m| kernel.module(m)).collect();
        if let (None, Err(e)) = (&host_why, &modules) {
            host_why = Some(format!("no virtio-net modules: {e:#}"));
        }
        let port = match free_port() {
            Ok(p) => p,
            Err(e) => return fail_all(format!("no free port: {e:#}")),
        };
        // A second NIC on a host tap device, for wrk from the tap's namespace.
        let (mut tap, mut tap_why) = match &host_why {
            Some(why) => (None, Some(why.clone())),
            None => match HostTap::create() {
                Ok(t) => (Some(t), None),
                Err(why) => (None, Some(format!("no tap uplink: {why}"))),
            },
        };
        let mut plan = linux::NetPlan {
            echo_connections: st.echo_list(),
            message_bytes: st.message_bytes,
            echo_length: st.echo_ms.to_string(),
            nginx: http_why.is_none(),
            http_connections: st.http_connections.to_string(),
            http_length: st.http_ms.to_string(),
            body_bytes: st.body_bytes,
            warmup_ms: st.warmup_ms,
            bulk_connections: st.bulk_list(),
            bulk_bytes: st.bulk_bytes,
            nic: host_why.is_none(),
            tap: tap.is_some(),
        };
        let build = |plan: &linux::NetPlan| {
            linux::initramfs_with(&linux::net_init_script(plan), &program, |t| {
                if let (true, Ok(nginx)) = (plan.nginx, nginx) {
                    linux::add_nginx(t, nginx, plan.body_bytes)?;
                }
                if plan.nic {
                    linux::add_virtio_net(t, &kernel)?;
                }
                Ok(())
            })
        };
        let image = match build(&plan) {
            Ok(i) => i,
            Err(e) => {
                // Leave out what could not be added, keep the echo.
                let why = format!("assembling the initramfs with nginx failed: {e:#}");
                http_why.get_or_insert(why.clone());
                host_why.get_or_insert(why.clone());
                plan.nginx = false;
                plan.nic = false;
                plan.tap = false;
                tap = None;
                tap_why.get_or_insert(why);
                match build(&plan) {
                    Ok(i) => i,
                    Err(e) => return fail_all(format!("assembling the initramfs failed: {e:#}")),
                }
            }
        };
        let initrd = workspace_root().join("target/bench/peer-net.cpio.gz");
        if let Err(e) = fs::write(&initrd, &image) {
            return fail_all(format!("writing {}: {e}", initrd.display()));
        }
        let mut qemu_args = linux::qemu_args(&self.machine, &kernel.image, &initrd, &self.append);
        if plan.nic {
            qemu_args.extend(linux::nic_args(port, tap.as_ref().map(HostTap::name)));
        }
        progress(&format!(
            "booting Linux peer {} ({} KiB initramfs{}{})…",
            kernel.version,
            image.len() / 1024,
            if plan.nginx { ", nginx" } else { "" },
            if plan.tap {
                ", virtio-net on QEMU's user network and on a tap"
            } else if plan.nic {
                ", virtio-net"
            } else {
                ""
            }
        ));
        let runs = st.echo_connections.len() as u64;
        let bulk_runs = st.bulk_connections.len() as u64;
        let timeout = Duration::from_secs(180 + runs * (st.echo_ms / 1000 + 25) + bulk_runs * 60 + st.http_ms / 1000 + st.host_secs + 60);
        let mut echo: Vec<Value> = Vec::new();
        let mut bulk: Vec<Value> = Vec::new();
        let mut http: Option<Value> = None;
        let mut host: Measured = Err(host_why.clone().unwrap_or_else(|| "the peer never said it was serving".into()));
        let mut host_steady: Option<Measured> = None;
        let mut host_tap: Measured = Err(tap_why.unwrap_or_else(|| "the peer never said it was serving".into()));
        let mut failed: Vec<String> = Vec::new();
        let mut up = Value::Null;
        let console = linux::boot_interactive(&qemu_args, timeout, |t, line| {
            let Some(v) = parse_json(line) else {
                return Reply::Continue;
            };
            if v["peer"] == "up" {
                progress(&format!("  Linux reached /init after {:.1} s (clock source {})", t.as_secs_f64(), v["clocksource"]));
                up = v;
            } else if v["bench"] == "echo" {
                progress(&format!("  linux echo, {} conns: {}", v["connections"], describe_result(&v)));
                echo.push(v);
            } else if v["bench"] == "bulk" {
                progress(&format!("  linux bulk, {} conns: {}", v["connections"], super::net_stream::describe_bulk(&v)));
                bulk.push(v);
            } else if v["bench"] == "http" {
                progress(&format!("  linux http: {}", describe_result(&v)));
                http = Some(v);
            } else if v["peer"] == "failed" {
                progress(&format!("  linux: {line}"));
                failed.push(v["command"].as_str().unwrap_or("?").to_string());
            } else if v["peer"] == "serving" {
                if let Ok(wrk) = wrk {
                    progress(&format!("  host wrk → Linux nginx (127.0.0.1:{port}), {} s…", st.host_secs));
                    host = host_wrk(wrk, &Target::Forwarded(port), st.host_connections, st.host_secs);
                    if let Ok(v) = &host {
                        progress(&format!("  host → linux: {}", describe_result(v)));
                    }
                    let steady = host_steady.insert(host_load(port, st.host_connections, st.host_secs));
                    if let Ok(v) = steady {
                        progress(&format!("  host, connections made one by one → linux: {}", describe_result(v)));
                    }
                    if failed.iter().any(|f| f == "eth1") {
                        host_tap = Err("eth1 (the NIC on the tap) did not come up in the Linux peer".into());
                    } else if let Some(tap) = tap.as_mut() {
                        host_tap = tap_wrk(wrk, tap, st, "Linux nginx", "linux");
                    }
                }
                return Reply::Type(b"done\n".to_vec());
            }
            Reply::Continue
        });
        let console = match console {
            Ok(c) => c,
            Err(e) => return fail_all(format!("booting the Linux peer failed: {e:#}")),
        };
        progress(&format!("  Linux finished in {:.1} s", console.elapsed.as_secs_f64()));
        let ended = if console.timed_out {
            format!("the Linux peer did not finish within {} s", timeout.as_secs())
        } else {
            "the Linux peer printed no result".into()
        };
        let why = |command: &str, fallback: &str| {
            if failed.iter().any(|f| f == command) {
                format!("`{command}` failed in the Linux peer (console: target/bench/peer-net.log)")
            } else {
                fallback.to_string()
            }
        };
        let echo_results = st
            .echo_connections
            .iter()
            .map(|&c| echo.iter().find(|v| v["connections"].as_u64() == Some(c as u64)).cloned().ok_or_else(|| why("echo-client", &ended)))
            .collect();
        let bulk = super::net_stream::by_connections(&st.bulk_connections, &bulk, &why("bulk-send", &ended));
        let http = match (http, http_why) {
            (Some(v), _) => Ok(v),
            (None, Some(w)) => Err(w),
            (None, None) if failed.iter().any(|f| f == "nginx") => Err(why("nginx", &ended)),
            (None, None) => Err(why("http-load", &ended)),
        };
        if host.is_err() && failed.iter().any(|f| f == "eth0") {
            host = Err(why("eth0", &ended));
        }
        let _ = fs::write(workspace_root().join("target/bench/peer-net.log"), console.console.clone());
        let info = json!({
            "version": kernel.version,
            "cmdline": self.append,
            "meltdown": up["meltdown"],
            "spectre_v2": up["spectre_v2"],
            "clocksource": up["clocksource"],
            "tsc_mhz": up["tsc_mhz"],
            "init_after_s": up["uptime_s"],
            "wall_s": console.elapsed.as_secs_f64(),
            "qemu_args": qemu_args,
            "nginx": plan.nginx.then_some(linux::NGINX),
        });
        // Not run: for the reason the wrk run was not.
        let host_load = host_steady.unwrap_or_else(|| host.clone());
        (NetSide { echo: echo_results, bulk, http, host, host_load, host_tap }, info)
    }
}
