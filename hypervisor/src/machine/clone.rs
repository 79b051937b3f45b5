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

use super::create::{Created, RingFill, attach_nic};
use super::{Machine, Network, PAUSED, Platform};
use crate::control::Cloned;
use crate::guest::{CloneBase, Guest};
use abi::bundle::{Settings, TENANT_NONE};
use abi::control::Reason::{Exists, NoRoom, NotPaused};
use abi::control::Refusal;
use alloc::format;
use alloc::string::String;
use core::sync::atomic::Ordering;
use hermit_entry::boot_info::RawBootInfo;

/// Clones made with a line each on the console; past them, a summary.
const QUIET_AFTER: u32 = 3;

/// What every clone of one `clone_guests` call shares: the template's
/// settings and image, the boot record made from them, and what their
/// start pages hold but their names.
struct Batch {
    st: Settings,
    image: usize,
    image_name: String,
    boot: RawBootInfo,
    heap_start: u64,
    base: CloneBase,
}

/// Clones the manifest asks for (`warm`, `from`), made once their
/// template first blocks and is parked.
pub(super) struct CloneJob {
    pub template: usize,
    /// The entry's name: clones `name-first` ..
    pub name: String,
    pub first: u32,
    pub count: u32,
    /// The template goes on afterwards (`warm`).
    pub resume: bool,
}

impl<P: Platform, N: Network<Ring = P::Ring, Events = P::Events>> Machine<P, N> {
    /// Makes clones of paused guest `tid`: one named `name`, or with
    /// `numbered` = (first, count) `count` of them named `name-first` ..
    /// `name-(first+count-1)`; as many as fit: stops at the first that
    /// cannot be made and says why.
    /// With `args`, the clones get them instead of the template's.
    pub(super) fn clone_guests(
        &self,
        tid: usize,
        name: &str,
        numbered: Option<(u32, u32)>,
        args: Option<&[&str]>,
    ) -> Result<Cloned, Refusal> {
        let status = self.status(tid);
        let template = status.name.as_str();
        if status.state.load(Ordering::Acquire) != PAUSED {
            return Err(Refusal::new(
                NotPaused,
                format!("guest {template} is not paused (pause it first: it pauses at its next exit, and `list` says so)"),
            ));
        }
        let (st, image) = (status.settings, status.image);
        let (first, n) = numbered.unwrap_or((0, 1));
        let name_of = |i: u32| if numbered.is_some() { format!("{name}-{}", first + i) } else { String::from(name) };
        // One look at every name (not one per clone).
        let clash = |nm: &str| match numbered {
            None => nm == name,
            Some(_) => nm
                .strip_prefix(name)
                .and_then(|r| r.strip_prefix('-'))
                .and_then(|i| i.parse::<u32>().ok())
                .is_some_and(|i| (first..first.saturating_add(n)).contains(&i) && nm == format!("{name}-{i}")),
        };
        if let Some((_, taken)) = self.statuses().find(|(_, s)| clash(&s.name)) {
            return Err(Refusal::new(Exists, format!("a guest named {} exists already", taken.name)));
        }
        // What every clone of the batch starts with: its heap after the
        // rings its settings give, its boot record.
        let heap_start = abi::layout::heap_start(if st.tenant == TENANT_NONE { 0 } else { st.ring_slots });
        let base = {
            let mut mem = self.platform.mem();
            let mut guests = self.guests.lock();
            let t = guests[tid].as_mut().ok_or_else(|| Refusal::new(NoRoom, String::from("its template is busy on a CPU; try again")))?;
            t.clone_base(&mut mem, args).map_err(|e| Refusal::new(NoRoom, format!("{e}")))?
        };
        let batch = {
            let images = self.images.lock();
            let img = images
                .get(image)
                .and_then(|e| e.image.as_ref().ok())
                .ok_or_else(|| Refusal::new(NoRoom, String::from("its template's image is gone")))?;
            Batch {
                st,
                image,
                image_name: img.name.clone(),
                boot: super::create::boot_info(img, heap_start, st.memory, &self.time),
                heap_start,
                base,
            }
        };
        let out = |l: &str| self.platform.console_line(l);
        let mut made = Cloned { first: name_of(0), tenant: (st.tenant != TENANT_NONE).then_some(st.tenant), ..Cloned::default() };
        let mut create_ns = 0;
        for i in 0..n {
            let nm = name_of(i);
            match self.clone_one(tid, &nm, &batch, i < QUIET_AFTER) {
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

    /// Makes one clone of guest `tid` named `name` (described for the
    /// console if `describe`).
    fn clone_one(&self, tid: usize, name: &str, batch: &Batch, describe: bool) -> Result<Created, String> {
        let mut creating = self.creating.lock();
        self.heap_headroom()?;
        let id = self.take_id(&mut creating).ok_or_else(|| format!("no room for more guests ({} at most at once)", self.status.len()))?;
        let made = self.clone_as(id, &mut creating, tid, name, batch, describe);
        match made {
            Ok((g, events, created)) => {
                self.publish(id, g, events, name, created.ip.is_some(), &batch.st, batch.image, 0, &mut creating);
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
        batch: &Batch,
        describe: bool,
    ) -> Result<(Guest, P::Events, Created), String> {
        let (st, heap_start) = (&batch.st, batch.heap_start);
        let created_ns = self.now();
        let nic = if st.tenant == TENANT_NONE { None } else { Some(creating.address(id, st)?) };
        let mut mem = self.platform.mem();
        // The template out of the table while its pages are shared and its
        // rings copied: no CPU runs or ends it meanwhile.
        let Some(mut template) = self.guests.lock()[tid].take() else {
            return Err(String::from("its template is busy on a CPU; try again"));
        };
        let made = (|| {
            let mut g = Guest::clone_from(&mut template, &batch.base, &mut mem, self.guest_upper, name, heap_start, |_, page| {
                self.platform.write_boot_info(page, batch.boot);
            })
            .map_err(|e| format!("{e}"))?;
            let Some(events) = self.platform.events_of(&g) else {
                g.destroy(&mut mem);
                return Err(String::from("its event page is not mapped"));
            };
            if let Some(info) = &nic {
                let at = g.published_ring_indices(&mem);
                if let Err(e) =
                    attach_nic(&self.platform, &mut g, &mut mem, &self.net, st, info, id, &events, RingFill::Guest(&template), at)
                {
                    g.destroy(&mut mem);
                    return Err(e);
                }
            }
            Ok((g, events))
        })();
        self.guests.lock()[tid] = Some(template);
        drop(mem);
        let (mut g, events) = made?;
        self.settle(&mut g, st, created_ns);
        let image_name = &batch.image_name;
        let describe = match &nic {
            _ if !describe => String::new(),
            Some(n) => format!("image {image_name}, ip {}.{}.{}.{}, tenant {}", n.ipv4[0], n.ipv4[1], n.ipv4[2], n.ipv4[3], st.tenant),
            None => format!("image {image_name}"),
        };
        let created = Created { id, create_ns: g.stats.create_ns, ip: nic.as_ref().map(|n| n.ipv4), describe };
        Ok((g, events, created))
    }
}

impl<P: Platform, N: Network<Ring = P::Ring, Events = P::Events>> Machine<P, N> {
    /// Makes the manifest's clones of `template` (just parked; named
    /// `name`), if it is their template, then lets it go on if one of the
    /// entries was warm.
    pub(super) fn run_clone_jobs(&self, template: usize, name: &str) {
        let jobs: alloc::vec::Vec<CloneJob> = {
            let mut all = self.clone_jobs.lock();
            if all.is_empty() {
                return;
            }
            let (mine, rest) = core::mem::take(&mut *all).into_iter().partition(|j| j.template == template);
            *all = rest;
            mine
        };
        let mut resume = false;
        for job in jobs {
            resume |= job.resume;
            if let Err(why) = self.clone_guests(template, &job.name, Some((job.first, job.count)), None) {
                self.platform.console_line(&format!("[hv] guests {}-*: not cloned from {name}: {}", job.name, why.why));
            }
        }
        if resume {
            let _ = crate::control::ControlHost::resume(self, name);
        }
    }

    /// Forgets the clones still to be made of `template` (named `name`),
    /// which ended before it first blocked, saying so.
    pub(super) fn drop_clone_jobs(&self, template: usize, name: &str) {
        let mut all = self.clone_jobs.lock();
        if all.is_empty() {
            return;
        }
        all.retain(|j| {
            let mine = j.template == template;
            if mine {
                self.platform
                    .console_line(&format!("[hv] guests {}-*: not cloned: their template {name} ended before it first blocked", j.name));
            }
            !mine
        });
    }
}
