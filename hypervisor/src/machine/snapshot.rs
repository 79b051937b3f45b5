//! Snapshots (issue 18): a paused guest's state written out as a file
//! (`abi::snapshot`), and a guest made from such a file, on this
//! hypervisor or another.
//!
//! Rules:
//! - Only a paused guest is saved, taken out of the table meanwhile (as
//!   a clone's template is), so no CPU runs, pauses or ends it while its
//!   pages are read.
//! - A file is checked whole (`Snapshot::parse`) before anything is built;
//!   it names its image by digest, and that image must be loaded here (it
//!   holds none of the image's read-only pages); the new guest gets a new
//!   id, MAC and address in its tenant, and everything it holds is
//!   charged as for any guest. A file refused, or a guest that cannot be
//!   built, costs nothing: what was taken is freed.

use super::create::{Created, attach_nic};
use super::report::sizes;
use super::{Machine, Network, PAUSED, Platform};
use crate::guest::Guest;
use abi::bundle::TENANT_NONE;
use abi::control::Reason::{NotFound, NotPaused};
use abi::control::{Refusal, Tenant};
use abi::snapshot::Snapshot;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::sync::atomic::Ordering;

impl<P: Platform, N: Network<Ring = P::Ring, Events = P::Events>> Machine<P, N> {
    /// The snapshot file of paused guest `name`, and its digest.
    pub(super) fn snapshot_guest(&self, name: &str) -> Result<(Vec<u8>, [u8; 32]), Refusal> {
        let tid = self.find(name).ok_or_else(|| Refusal::new(NotFound, format!("no guest {name}")))?;
        let status = self.status(tid);
        if status.state.load(Ordering::Acquire) != PAUSED {
            return Err(Refusal::new(
                NotPaused,
                format!("guest {name} is not paused (pause it first: it pauses at its next exit, and `list` says so)"),
            ));
        }
        let started = self.now();
        let (digest, image) = {
            let images = self.images.lock();
            let e = images.get(status.image).filter(|e| !e.is_free()).ok_or_else(|| Refusal::from(String::from("its image is gone")))?;
            (e.digest, status.image)
        };
        let Some(mut g) = self.guests.lock()[tid].take() else {
            return Err(Refusal::new(NotPaused, format!("guest {name} is busy on a CPU; try again")));
        };
        let out = {
            let images = self.images.lock();
            match images.get(image).and_then(|e| e.image.as_ref().ok()) {
                Some(img) => {
                    // Held in the heap while it goes out: within what an
                    // upload may take, so guests keep their headroom.
                    let room = super::create::image_budget(self.platform.heap_room());
                    g.snapshot(&mut self.platform.mem(), img, digest, &status.settings, self.now(), room)
                }
                None => Err(String::from("its image is gone")),
            }
        };
        self.guests.lock()[tid] = Some(g);
        let data = out.map_err(|why| Refusal::from(format!("guest {name} not saved: {why}")))?;
        self.platform.console_line(&format!(
            "[hv] guest {name} saved: {} in {} us of hypervisor time",
            sizes(data.len() as u64),
            (self.now() - started) / 1000
        ));
        let sum = super::create::digest(&data);
        Ok((data, sum))
    }

    /// Creates guest `name` from snapshot file `data` in `tenant` (`None`:
    /// the snapshot's), with `args` (`None`: the saved ones); its address
    /// and tenant.
    pub(super) fn restore_guest(
        &self,
        name: &str,
        tenant: Option<Tenant<'_>>,
        args: Option<&[&str]>,
        data: &[u8],
    ) -> Result<(Option<[u8; 4]>, Option<u32>), String> {
        let snap = Snapshot::parse(data).map_err(|e| format!("{e}"))?;
        if self.find(name).is_some() {
            return Err(format!("a guest named {name} exists already"));
        }
        let mut st = snap.state.settings;
        let machine = self.platform.frames().1 as u64 * 4096;
        if st.memory > machine {
            return Err(format!("its memory limit {} is more than the machine's {}", sizes(st.memory), sizes(machine)));
        }
        // Another tenant, if asked; with a vNIC or without, as it had.
        if let Some(t) = tenant {
            let t = self.tenant_number(t)?;
            if (t == TENANT_NONE) != (st.tenant == TENANT_NONE) {
                return Err(String::from(match t {
                    TENANT_NONE => "it has a vNIC: restore it into a tenant, not none",
                    _ => "it has no vNIC: it cannot join a tenant",
                }));
            }
            st.tenant = t;
        }
        let started = self.now();
        let mut creating = self.creating.lock();
        let images = self.images.lock();
        let Some((index, entry)) = images.iter().enumerate().find(|(_, e)| !e.is_free() && e.digest == snap.state.image_digest) else {
            let digest = super::create::digest_string(&snap.state.image_digest);
            return Err(format!("its image {} ({digest}) is not loaded here: upload it first", snap.image_name));
        };
        let img = entry.image.as_ref().map_err(|_| String::from("its image was rejected here"))?;
        self.heap_headroom()?;
        let id = self.take_id(&mut creating).ok_or_else(|| format!("no room for more guests ({} at most at once)", self.status.len()))?;
        let nic = match st.tenant {
            TENANT_NONE => None,
            _ => match creating.address(id, &st) {
                Ok(n) => Some(n),
                Err(e) => {
                    creating.free.push(id);
                    return Err(e);
                }
            },
        };
        let slots = nic.as_ref().map_or(0, |n| n.ring_slots);
        let heap_start = abi::layout::heap_start(slots);
        let rings = abi::layout::NIC_TX_RING..heap_start;
        let boot = super::create::boot_info(img, heap_start, st.memory, &self.time);
        let mut mem = self.platform.mem();
        let made = (|| {
            let mut g = Guest::restore(
                &mut mem,
                self.guest_upper,
                self.time_page,
                img,
                &snap,
                name,
                args,
                heap_start,
                rings,
                started,
                |_, page| self.platform.write_boot_info(page, boot),
            )?;
            let Some(events) = self.platform.events_of(&g) else {
                g.destroy(&mut mem);
                return Err(String::from("its event page is not mapped"));
            };
            if let Some(info) = &nic {
                // Its rings as they were, its port going on from the
                // indices its shared page holds.
                let at = g.published_ring_indices(&mem);
                let fill = super::create::RingFill::Snapshot(&snap);
                if let Err(e) = attach_nic(&self.platform, &mut g, &mut mem, &self.net, &st, info, id, &events, fill, at) {
                    g.destroy(&mut mem);
                    return Err(e);
                }
            }
            Ok((g, events))
        })();
        drop(mem);
        let (mut g, events) = match made {
            Ok(m) => m,
            Err(e) => {
                creating.free.push(id);
                return Err(e);
            }
        };
        drop(images);
        self.settle(&mut g, &st, started);
        let created = Created { id, create_ns: g.stats.create_ns, ip: nic.as_ref().map(|n| n.ipv4), describe: String::new() };
        let pages = g.memory.private_bytes();
        self.publish(id, g, events, name, nic.is_some(), &st, index, 0, &mut creating);
        let at = match created.ip {
            Some(a) => format!(", ip {}.{}.{}.{}, tenant {}", a[0], a[1], a[2], a[3], st.tenant),
            None => String::new(),
        };
        self.platform.console_line(&format!(
            "[hv] guest {name} restored from a snapshot of {} ({} of pages{at}) in {} us of hypervisor time",
            snap.name,
            sizes(pages),
            created.create_ns / 1000
        ));
        Ok((created.ip, created.ip.map(|_| st.tenant)))
    }
}
