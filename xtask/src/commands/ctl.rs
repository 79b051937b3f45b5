//! `cargo xtask ctl`: talk to the hypervisor that `run --detach` started
//! (the instance and the protocol are in `xtask::ctl`).

use std::time::Duration;

use anyhow::{Context as _, Result};

use crate::{Ctl, Format};

/// Sends what `what` asks to the detached hypervisor and prints the answer.
pub fn run(what: Ctl) -> Result<()> {
    let inst = xtask::ctl::Instance::open(&xtask::ctl::default_dir())?;
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
        Ctl::Start { name, app, image, tenant, memory, args } => {
            let memory = xtask::manifest::parse_size(&memory).map_err(|e| anyhow::anyhow!("--memory {memory:?}: {e}"))?;
            let (image, elf) = match (app, image) {
                (Some(app), _) => (xtask::build_apps(&[app.as_str()])?.remove(0), Some(xtask::app_elf(&app))),
                (None, Some(image)) => (image, None),
                (None, None) => anyhow::bail!("--app or --image"),
            };
            let tenant = tenant.map(|t| inst.tenant(&t)).transpose()?;
            println!("{}", inst.start(&name, &image, elf.as_deref(), memory, tenant, &args)?);
        }
        Ctl::Stop { name } => println!("{}", inst.request(&format!("stop {name}"))?),
        Ctl::Logs { name } => print!("{}", xtask::ctl::logs(&inst, &name)?),
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
