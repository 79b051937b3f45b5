//! Clones (issue 18): guests made from a paused template, sharing every
//! page it owns copy-on-write (`mm::user::Frozen`), each with its own
//! identity: name, MAC, address, start page, shared page and rings.
//!
//! Rules:
//! - Only a paused template is cloned (`pause` first: it then sits in the
//!   guest table, on no CPU). While one clone is made the template is
//!   taken out of the table, so no CPU runs, pauses or ends it meanwhile;
//!   a CPU that picks it then finds it missing and parks it (`cpu_loop`).
//! - A clone goes on where the template is. It learns that it is a clone
//!   from `events::CLONED` and its generation word before it runs (the
//!   libos then takes its new identity before it sends anything).
//! - A clone is charged for what it owns: its page tables, its own pages
//!   (start page, shared page, rings) and the copies its writes make.
//!   Shared pages are reported as shared; the frozen ones are freed with
//!   the last guest that holds them, template or clone.

use super::create::{Created, attach_nic};
use super::report::sizes;
use super::{Machine, Network, PAUSED, Platform};
use crate::control::Cloned;
use crate::guest::Guest;
use crate::mm::PhysMem;
use abi::bundle::{Settings, TENANT_NONE};
use abi::control::Reason::{Exists, NoRoom, NotFound, NotPaused};
use abi::control::Refusal;
use alloc::format;
use alloc::string::String;
use core::sync::atomic::Ordering;

/// Clones made with a line each on the console; past them, a summary.
const QUIET_AFTER: u32 = 3;

impl<P: Platform, N: Network<Ring = P::Ring, Events = P::Events>> Machine<P, N> {
    /// Makes `count` clones of paused guest `template` (`name`, or
    /// `name-0` .. `name-(count-1)` when a count is given), as many as fit:
    /// stops at the first that cannot be made and says why.
    pub(super) fn clone_guests(&self, template: &str, name: &str, count: Option<u32>) -> Result<Cloned, Refusal> {
        let tid = self.find(template).ok_or_else(|| Refusal::new(NotFound, format!("no guest {template}")))?;
        let status = self.status(tid);
        if status.state.load(Ordering::Acquire) != PAUSED {
            return Err(Refusal::new(
                NotPaused,
                format!("guest {template} is not paused (pause it first: it pauses at its next exit, and `list` says so)"),
            ));
        }
        let (st, image) = (status.settings, status.image);
        let n = count.unwrap_or(1);
        let name_of = |i: u32| if count.is_some() { format!("{name}-{i}") } else { String::from(name) };
        // One look at every name (not one per clone).
        let clash = |nm: &str| match count {
            None => nm == name,
            Some(_) => nm
                .strip_prefix(name)
                .and_then(|r| r.strip_prefix('-'))
                .and_then(|i| i.parse::<u32>().ok().filter(|&i| i < n && nm == name_of(i)))
                .is_some(),
        };
        if let Some((_, taken)) = self.statuses().find(|(_, s)| clash(&s.name)) {
            return Err(Refusal::new(Exists, format!("a guest named {} exists already", taken.name)));
        }
        let out = |l: &str| self.platform.console_line(l);
        let mut made = Cloned { first: name_of(0), tenant: (st.tenant != TENANT_NONE).then_some(st.tenant), ..Cloned::default() };
        let mut create_ns = 0;
        for i in 0..n {
            let nm = name_of(i);
            match self.clone_one(tid, &nm, &st, image) {
                Ok(c) => {
                    made.count += 1;
                    create_ns += c.create_ns;
                    if i == 0 {
                        made.ip = c.ip;
                    }
                    if i < QUIET_AFTER {
                        out(&format!("[hv] guest {nm} cloned from {template} ({})", c.describe));
                    }
                }
                Err(why) => {
                    out(&format!("[hv] guest {nm} not cloned from {template}: {why}"));
                    made.error = Some(why);
                    break;
                }
            }
        }
        if made.count == 0 {
            return Err(Refusal::new(NoRoom, made.error.unwrap_or_default()));
        }
        out(&format!(
            "[hv] {} clones of {template} made in {} us of hypervisor time ({} ns each)",
            made.count,
            create_ns / 1000,
            create_ns / u64::from(made.count)
        ));
        Ok(made)
    }

    /// Makes one clone of guest `tid` named `name`.
    fn clone_one(&self, tid: usize, name: &str, st: &Settings, image: usize) -> Result<Created, String> {
        let mut creating = self.creating.lock();
        let (heap, heap_used) = self.platform.heap_usage();
        if heap - heap_used < super::create::HEAP_HEADROOM {
            return Err(format!("the hypervisor's heap is full ({} used)", sizes(heap_used as u64)));
        }
        let id = self.take_id(&mut creating).ok_or_else(|| format!("no room for more guests ({} at most at once)", self.status.len()))?;
        let made = self.clone_as(id, &mut creating, tid, name, st, image);
        match made {
            Ok((g, events, created)) => {
                self.publish(id, g, events, name, created.ip.is_some(), st, image, 0, &mut creating);
                Ok(created)
            }
            Err(e) => {
                creating.free.push(id);
                Err(e)
            }
        }
    }

    /// Builds the clone of `tid` named `name` as guest `id` (not yet
    /// published).
    fn clone_as(
        &self,
        id: usize,
        creating: &mut super::create::Creating,
        tid: usize,
        name: &str,
        st: &Settings,
        image: usize,
    ) -> Result<(Guest, P::Events, Created), String> {
        let created_ns = self.now();
        let nic = if st.tenant == TENANT_NONE { None } else { Some(creating.address(id, st)?) };
        let heap_start = abi::layout::heap_start(nic.as_ref().map_or(0, |i| i.ring_slots));
        let (image_name, boot) = {
            let images = self.images.lock();
            let img = images.get(image).and_then(|e| e.image.as_ref().ok()).ok_or("its template's image is gone")?;
            (img.name.clone(), super::create::boot_info(img, heap_start, st.memory, &self.time))
        };
        let mut mem = self.platform.mem();
        // The template out of the table while its pages are shared and its
        // rings copied: no CPU runs or ends it meanwhile.
        let Some(mut template) = self.guests.lock()[tid].take() else {
            return Err(String::from("its template is busy on a CPU; try again"));
        };
        let made = (|| {
            let mut g = Guest::clone_from(&mut template, &mut mem, self.guest_upper, name, heap_start, |m, page| {
                self.platform.write_boot_info(page, boot);
                if let Some(info) = &nic {
                    m.write(page, abi::layout::NIC_INFO_OFFSET as usize, &info.to_bytes());
                }
            })
            .map_err(|e| format!("{e}"))?;
            let Some(events) = self.platform.events_of(&g) else {
                g.destroy(&mut mem);
                return Err(String::from("its event page is not mapped"));
            };
            if let Some(info) = &nic {
                let at = g.published_ring_indices(&mem);
                if let Err(e) = attach_nic(&self.platform, &mut g, &mut mem, &self.net, st, info, id, &events, Some(&mut template), at) {
                    g.destroy(&mut mem);
                    return Err(e);
                }
            }
            Ok((g, events))
        })();
        self.guests.lock()[tid] = Some(template);
        drop(mem);
        let (mut g, events) = made?;
        g.stats.created_ns = created_ns;
        g.console_limit = crate::limit::TokenBucket::new(st.limits.console_bytes);
        g.kick_limit = crate::limit::TokenBucket::new(st.limits.notifications);
        g.stats.create_ns = self.now() - created_ns;
        let describe = match &nic {
            Some(n) => format!("image {image_name}, ip {}.{}.{}.{}, tenant {}", n.ipv4[0], n.ipv4[1], n.ipv4[2], n.ipv4[3], st.tenant),
            None => format!("image {image_name}"),
        };
        let created = Created { create_ns: g.stats.create_ns, ip: nic.as_ref().map(|n| n.ipv4), describe };
        Ok((g, events, created))
    }
}
