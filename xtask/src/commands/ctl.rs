//! `cargo xtask ctl`: talk to the hypervisor that `run --detach` started
//! (the instance and the protocol are in `xtask::ctl`).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};

use abi::control::{GuestEvent, Request, Response, StartOptions};
use xtask::ctl::{Instance, StartSpec};

use crate::{Ctl, Format};

/// Sends what `what` asks to the hypervisor detached in `dir` (default
/// `xtask::ctl::default_dir()`) and prints the answer.
pub fn run(dir: Option<PathBuf>, what: Ctl) -> Result<()> {
    let dir = match dir {
        Some(d) => std::path::absolute(&d).with_context(|| format!("--dir {}", d.display()))?,
        None => xtask::ctl::default_dir(),
    };
    let inst = xtask::ctl::Instance::open(&dir)?;
    // Forwards of guests that ended since the last ctl go first (a stream
    // runs for long; shutdown takes QEMU and its forwards).
    if !matches!(what, Ctl::Events | Ctl::Logs { follow: true, .. } | Ctl::Metrics { .. } | Ctl::Shutdown) {
        inst.unforward_ended()?;
    }
    match what {
        Ctl::List { output: Format::Json } => println!("{}", inst.request("list")?),
        Ctl::List { output: Format::Table } => print!("{}", xtask::ctl::table(&inst.request("list")?)),
        Ctl::Stats => println!("{}", inst.request("stats")?),
        Ctl::Top { count } => {
            for i in 0.. {
                if count.is_some_and(|c| i >= c) {
                    break;
                }
                let t = xtask::ctl::table(&inst.request("list")?);
                // Clear the screen and home the cursor, then the table.
                print!("\x1b[2J\x1b[H{t}");
                std::io::Write::flush(&mut std::io::stdout())?;
                std::thread::sleep(Duration::from_secs(1));
            }
        }
        Ctl::Start { name, app, image, tenant, memory, weight, cap, ring_slots, port, env, attach, args } => {
            let ports = port.iter().map(|p| xtask::ctl::parse_port(p)).collect::<Result<Vec<_>>>()?;
            if let (false, Some(tap)) = (ports.is_empty(), inst.uplink_tap()) {
                anyhow::bail!(
                    "--port: the uplink is the host's tap device {tap} (run --tap), which forwards no host ports; \
                     the guest is reached at its own address (start prints it)"
                );
            }
            // The host's frames reach tenant 0, the uplink's, only.
            let tenant = match (ports.is_empty(), tenant) {
                (true, t) => t,
                (false, None) => Some("0".to_string()),
                (false, Some(t)) if t == "0" => Some(t),
                (false, Some(t)) => anyhow::bail!("--port: host ports reach guests of tenant 0 (the uplink's), not --tenant {t}"),
            };
            let memory = xtask::manifest::parse_size(&memory).map_err(|e| anyhow::anyhow!("--memory {memory:?}: {e}"))?;
            let (image, elf) = match (app, image) {
                (Some(app), _) => (xtask::build_apps(&[app.as_str()])?.remove(0), Some(xtask::app_elf(&app))),
                (None, Some(image)) => (image, None),
                (None, None) => anyhow::bail!("--app or --image"),
            };
            let options = StartOptions { weight, cap, ring_slots, watch: attach, ..Default::default() };
            let tenant = tenant.as_deref();
            let spec = StartSpec { name: &name, image: &image, elf: elf.as_deref(), memory, tenant, options, args: &args, env: &env };
            // A guest whose ports cannot be forwarded is stopped: half a
            // service is not started.
            let forward = |r: &Response| -> Result<()> {
                match r {
                    Response::Started { ip: Some(ip), .. } if !ports.is_empty() => inst.forward(&name, ip, &ports).inspect_err(|_| {
                        let _ = inst.request(&Request::Stop(&name).to_string());
                    }),
                    _ => Ok(()),
                }
            };
            if !attach {
                let started = inst.start(&spec)?;
                forward(&started)?;
                println!("{started}");
                for (host, port) in &ports {
                    println!("forwarding 127.0.0.1:{host} to {name}:{port}");
                }
                return Ok(());
            }
            // One connection: the start, then its console and its end.
            let digest = inst.ensure_image(&image)?;
            let mut end = None;
            inst.stream(&[Instance::start_line(&spec, &digest)?], |r| {
                forward(r)?;
                follow(r, &name, &mut end)
            })?;
            inst.unforward_ended()?;
            exit_as(end)?;
        }
        Ctl::Stop { name } => println!("{}", inst.request(&format!("stop {name}"))?),
        Ctl::Rm { name } => println!("{}", inst.request(&Request::Remove(&name).to_string())?),
        Ctl::Pause { name } => println!("{}", xtask::ctl::pause(&inst, &name)?),
        Ctl::Resume { name } => println!("{}", inst.request(&Request::Resume(&name).to_string())?),
        Ctl::Clone { template, name, count, args } => {
            xtask::ctl::pause(&inst, &template)?;
            let args = (!args.is_empty()).then(|| args.iter().map(|a| a.as_str().into()).collect());
            println!("{}", inst.request(&Request::Clone { template: &template, name: &name, count, args }.to_string())?);
        }
        Ctl::Snapshot { name, file } => {
            let t = Instant::now();
            let data = xtask::ctl::snapshot(&inst, &name)?;
            xtask::pack::write_atomically(&file, &data)?;
            let ctl = xtask::ctl::ctl_command(&dir);
            println!(
                "{name}: {} saved to {} in {}; it stays paused (`{ctl} resume {name}` or `{ctl} stop {name}`)",
                size(data.len()),
                file.display(),
                took(t.elapsed())
            );
        }
        Ctl::Restore { file, name, tenant, image, args } => {
            let t = Instant::now();
            let data = std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let images: Vec<&std::path::Path> = image.as_deref().into_iter().collect();
            let args = (!args.is_empty()).then_some(&args[..]);
            let r = xtask::ctl::restore_with(&inst, &data, &name, tenant.as_deref(), args, &images)?;
            println!(
                "restored {} from {}: ip {}, tenant {}, in {}",
                r.name,
                file.display(),
                r.ip.as_deref().unwrap_or("none"),
                r.tenant.map_or("none".to_string(), |t| t.to_string()),
                took(t.elapsed())
            );
        }
        Ctl::Wait { name } => {
            let end = inst.wait(&name)?;
            inst.unforward_ended()?;
            println!("{}", serde_json::to_string(&end)?);
            exit_as(Some(end))?;
        }
        Ctl::Logs { name, follow: false } => print!("{}", xtask::ctl::logs(&inst, &name)?),
        Ctl::Logs { name, follow: true } => {
            print!("{}", xtask::ctl::logs(&inst, &name)?);
            let mut end = None;
            inst.stream(&[Request::Console(&name).to_string()], |r| follow(r, &name, &mut end))?;
        }
        Ctl::Events => inst.stream(&[Request::Events.to_string()], |r| {
            if let Response::Event(e) = r {
                println!("{}", serde_json::to_string(e)?);
            }
            Ok(false)
        })?,
        Ctl::Images => match inst.request("images")?.0 {
            Response::Images { loaded, .. } => {
                println!("{:<32} {:<71} {:>10} {:>6}", "NAME", "DIGEST", "BYTES", "GUESTS");
                for i in loaded {
                    println!("{:<32} {:<71} {:>10} {:>6}", i.name, i.digest, i.bytes, i.guests);
                }
            }
            other => anyhow::bail!("images was answered {other:?}"),
        },
        Ctl::ImageRm { image } => println!("{}", inst.request(&Request::ImageRemove(&image).to_string())?),
        Ctl::Metrics { once: true, .. } => print!("{}", xtask::metrics::Exporter::default().scrape(&inst)?),
        Ctl::Metrics { listen, once: false } => xtask::metrics::serve(&inst, &listen)?,
        Ctl::Tenants => match inst.request("tenants")?.0 {
            Response::Tenants { tenants } => {
                println!("{:<24} {:>6} {:>7}", "NAME", "NUMBER", "GUESTS");
                for t in tenants {
                    println!("{:<24} {:>6} {:>7}", t.name.as_deref().unwrap_or("-"), t.id, t.guests);
                }
            }
            other => anyhow::bail!("tenants was answered {other:?}"),
        },
        Ctl::Capture { what, write, count, seconds } => {
            let (frames, dropped) = inst.capture(&what, count, seconds)?;
            std::fs::write(&write, xtask::ctl::pcap(&frames)).with_context(|| format!("writing {}", write.display()))?;
            eprintln!("{} frames of {what} written to {} ({dropped} dropped)", frames.len(), write.display());
        }
        Ctl::Shutdown => inst.shutdown()?,
        Ctl::Version => println!("{}", inst.request("version")?),
    }
    Ok(())
}

/// Prints guest `name`'s console records; true (and its end in `end`) once
/// it has ended.
fn follow(r: &Response, name: &str, end: &mut Option<GuestEvent>) -> Result<bool> {
    match r {
        Response::Started { .. } | Response::Watching { .. } => {}
        Response::Console { console, line } if console == name => println!("{line}"),
        Response::LinesDropped { lines_dropped } => eprintln!("({lines_dropped} console lines dropped: the channel fell behind)"),
        Response::Event(e) if e.guest == name && e.event == abi::control::EventKind::Ended => {
            *end = Some(e.clone());
            return Ok(true);
        }
        _ => {}
    }
    Ok(false)
}

/// Exits with the guest's exit code (125 if the hypervisor stopped it),
/// as `docker run` does.
fn exit_as(end: Option<GuestEvent>) -> Result<()> {
    let end = end.context("the guest's end was not reported")?;
    if let Some(why) = &end.stop_reason {
        eprintln!("guest {} stopped: {why}", end.guest);
    }
    std::process::exit(end.exit_code.unwrap_or(125) & 0xff)
}

/// A time taken, for people: ms below a second.
fn took(d: Duration) -> String {
    match d.as_millis() {
        ms @ 0..1000 => format!("{ms} ms"),
        _ => format!("{:.1} s", d.as_secs_f64()),
    }
}

/// A byte count for people: bytes, KiB or MiB.
fn size(bytes: usize) -> String {
    match bytes {
        b if b < 1 << 10 => format!("{b} bytes"),
        b if b < 1 << 20 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{:.1} MiB", b as f64 / (1 << 20) as f64),
    }
}
