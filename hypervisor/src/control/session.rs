//! A control-channel session: the state kept between bytes (the line being
//! read, an image being uploaded) and the answer to every request, over a
//! [`ControlHost`], which the hypervisor implements over its guest tables
//! and the `control` fuzz target over simulated memory.
//!
//! Everything a client sends is bounded here before the host sees it: a
//! line is at most [`LINE_MAX`](super::LINE_MAX) bytes, numbers are
//! range-checked by [`parse`], an upload reserves its announced length once
//! (fallibly, within what the host says it has room for) and never grows,
//! and a half line or an upload quiet for [`STALL_NS`] is dropped with an
//! error. Nothing here waits for a byte.

use super::{LineReader, STALL_NS, json_line};
use abi::control::{ControlError, GuestEvent, ImageInfo, Refusal, Request, Response, StartOptions, Tenant, TenantRow, parse};
use abi::report::{GuestRow, GuestStats, MachineStats};
use alloc::string::String;
use alloc::vec::Vec;

/// What the control channel needs from the hypervisor.
/// What a `clone` made.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cloned {
    pub count: u32,
    pub first: String,
    pub ip: Option<[u8; 4]>,
    pub tenant: Option<u32>,
    /// Why fewer than asked were made.
    pub error: Option<String>,
}

pub trait ControlHost {
    /// Bytes an upload may reserve now (the heap's room, less headroom).
    fn upload_room(&self) -> usize;
    /// Whether one more image may be loaded.
    fn image_slot_free(&self) -> bool;
    /// The images loaded (the bundle's, then uploads).
    fn images(&self) -> Vec<ImageInfo>;
    /// Validates and loads an uploaded image, unless the same bytes are
    /// loaded already; the name and digest it is loaded under, or the
    /// reason it is refused.
    fn add_image(&self, name: &str, data: &[u8]) -> Result<(String, String), String>;
    /// Unloads the image `which` names (a name or a digest) if no guest
    /// runs it; the name it had.
    fn remove_image(&self, which: &str) -> Result<String, Refusal>;
    /// Creates and starts a guest; its IPv4 address if it has a vNIC, and
    /// its tenant's number. (The words of a `start` request, one argument
    /// each.)
    #[allow(clippy::too_many_arguments)]
    fn start(
        &self,
        client: usize,
        name: &str,
        image: &str,
        memory: u64,
        tenant: Tenant<'_>,
        options: &StartOptions,
        args: &[&str],
        env: &[&str],
    ) -> Result<(Option<[u8; 4]>, Option<u32>), Refusal>;
    /// Marks a guest to be stopped.
    fn stop(&self, name: &str) -> Result<(), Refusal>;
    /// Marks a guest to be paused at its next exit.
    fn pause(&self, name: &str) -> Result<(), Refusal>;
    /// Makes a paused (or pausing) guest runnable again.
    fn resume(&self, name: &str) -> Result<(), Refusal>;
    /// Makes `count` clones of paused guest `template` (`name`, or
    /// `name-0`.. with a count): how many, the first's name, address and
    /// tenant, and why it stopped short, if it did.
    /// `numbered` = (first, count): `count` of them named `name-first` ..;
    /// with `args`, the clones get them instead of the template's.
    fn clone_guest(&self, template: &str, name: &str, numbered: Option<(u32, u32)>, args: Option<&[&str]>) -> Result<Cloned, Refusal>;
    /// A row for every guest not forgotten (live, and ended ones whose
    /// records are kept), in the order they were created.
    /// Refused when the heap has no room for the answer.
    fn list(&self) -> Result<Vec<GuestRow>, Refusal>;
    /// The accounting records of the waiting guests and the machine's
    /// (refused when the heap has no room for the answer).
    fn stats(&self) -> Result<(Vec<GuestStats>, MachineStats), Refusal>;
    /// Starts capturing the frames of guest `what` or `tenant:N` for
    /// `client`.
    fn capture(&self, client: usize, what: &str, count: u32, secs: u32) -> Result<(), Refusal>;
    /// Every tenant with a name or a guest.
    fn tenants(&self) -> Vec<TenantRow>;
    /// Forgets tenant `name` if none of its guests is left.
    fn remove_tenant(&self, name: &str) -> Result<(), Refusal>;
    /// Forgets ended guest `name`'s record (its name and room are free).
    fn remove_guest(&self, name: &str) -> Result<(), Refusal>;
    /// How guest `name` ended, if it has; otherwise its end will be pushed
    /// to `client` when it comes.
    fn wait(&self, client: usize, name: &str) -> Result<Option<GuestEvent>, Refusal>;
    /// Pushes every guest's start and end to `client` from now on.
    fn watch_events(&self, client: usize);
    /// Pushes guest `name`'s console lines, then its end, to `client`.
    fn watch_console(&self, client: usize, name: &str) -> Result<(), Refusal>;
    /// The snapshot file of paused guest `name` (`abi::snapshot`) and its
    /// digest (`sha256:HEX`).
    fn snapshot(&self, name: &str) -> Result<(Vec<u8>, String), Refusal>;
    /// Creates and starts guest `name` from snapshot file `data`, in
    /// `tenant` (`None`: the snapshot's), with `args` (`None`: the saved
    /// ones); its address and tenant, or why the snapshot is refused.
    fn restore(
        &self,
        client: usize,
        name: &str,
        tenant: Option<Tenant<'_>>,
        args: Option<&[&str]>,
        data: &[u8],
    ) -> Result<(Option<[u8; 4]>, Option<u32>), String>;
}

/// What an upload is for.
enum Purpose {
    /// An image (`image-begin`).
    Image,
    /// A guest made from a snapshot (`restore-begin`): its tenant word and
    /// arguments.
    Restore { tenant: Option<String>, args: Option<Vec<String>> },
}

/// Clones a `clone ... COUNT` request has still to make: a part per look
/// ([`CLONE_PART`]), so that CPU 0 goes on between them.
struct Cloning {
    template: String,
    name: String,
    next: u32,
    end: u32,
    args: Option<Vec<String>>,
    made: Cloned,
}

/// Clones made per look at the channel (a few milliseconds of CPU 0).
pub const CLONE_PART: u32 = 256;

/// A snapshot going out in `snapshot_data` records as the client reads.
struct Download {
    data: Vec<u8>,
    sent: usize,
    /// When a record last went out (or the request came).
    last_ns: u64,
}

/// An image or a snapshot arriving in `image-data` chunks.
struct Upload {
    name: String,
    purpose: Purpose,
    /// Its announced length; `data` has exactly that capacity.
    len: usize,
    data: Vec<u8>,
    /// When the last chunk came.
    last_ns: u64,
    /// More bytes came than announced.
    overflowed: bool,
}

/// One client's session.
#[derive(Default)]
pub struct Session {
    /// The client's number (what it watches is pushed to it).
    client: usize,
    reader: LineReader,
    upload: Option<Upload>,
    download: Option<Download>,
    cloning: Option<Cloning>,
    /// Request lines not yet handled: those behind a clone under way.
    queued: alloc::collections::VecDeque<Result<String, abi::control::RequestError>>,
}

/// Request lines that may wait behind a clone under way, and their bytes.
pub const QUEUED_MAX: usize = 64;
pub const QUEUED_BYTES_MAX: usize = 64 << 10;

impl Session {
    /// A fresh session for client `client`.
    pub fn new(client: usize) -> Self {
        Self { client, ..Self::default() }
    }

    /// Whether a request, an upload or a download is under way (the
    /// caller then looks at the channel again soon).
    pub fn busy(&self) -> bool {
        self.reader.in_progress() || self.upload.is_some() || self.download.is_some() || self.cloning.is_some()
    }

    /// Bytes held for the client (its unfinished line, upload and
    /// download).
    pub fn held_bytes(&self) -> usize {
        self.upload.as_ref().map_or(0, |u| u.data.capacity()) + self.download.as_ref().map_or(0, |d| d.data.capacity())
    }

    /// Whether a snapshot is going out.
    pub fn downloading(&self) -> bool {
        self.download.is_some()
    }

    /// Writes the next `snapshot_data` records of a snapshot going out,
    /// while they fit in `room` bytes (what the client's channel takes
    /// now without holding more); frees it once all is out, or once the
    /// client has taken nothing for [`STALL_NS`] at `now_ns` (with an
    /// error: a client that does not read holds no snapshot).
    pub fn pump(&mut self, mut room: usize, now_ns: u64, answer: &mut dyn FnMut(&str)) {
        let Some(d) = &mut self.download else { return };
        while d.sent < d.data.len() {
            let n = (d.data.len() - d.sent).min(abi::control::CHUNK_MAX);
            let line_bytes = 2 * n + 24;
            if line_bytes > room {
                if now_ns.saturating_sub(d.last_ns) > STALL_NS {
                    self.download = None;
                    answer(&json_line(&Response::from(ControlError::DownloadTimedOut)));
                }
                return;
            }
            room -= line_bytes;
            d.last_ns = now_ns;
            let mut hex = String::with_capacity(2 * n);
            let _ = abi::control::write_hex(&mut hex, &d.data[d.sent..d.sent + n]);
            answer(&json_line(&Response::SnapshotData { snapshot_data: hex }));
            d.sent += n;
        }
        self.download = None;
    }

    /// Handles `input` (what the channel holds now) and then any request
    /// gone quiet at `now_ns`; every answer goes to `answer`, one JSON line
    /// each. Returns the number of bytes read.
    ///
    /// A `clone` of many is made a part per call ([`CLONE_PART`]); the
    /// requests behind it wait (at most [`QUEUED_MAX`] lines and
    /// [`QUEUED_BYTES_MAX`] bytes, then they are refused at once with
    /// `busy`) and are answered after it, in order.
    pub fn poll(&mut self, host: &dyn ControlHost, now_ns: u64, input: &[u8], answer: &mut dyn FnMut(&str)) -> usize {
        let mut lines = Vec::new();
        self.reader.push_slice(input, now_ns, &mut |l| lines.push(l));
        for line in lines {
            if self.cloning.is_none() && self.queued.is_empty() {
                if let Some(a) = self.handle(host, now_ns, line.as_deref().map_err(|e| *e)) {
                    answer(&json_line(&a));
                }
            } else if self.queued.len() < QUEUED_MAX
                && self.queued.iter().map(|l| l.as_ref().map_or(0, String::len)).sum::<usize>() < QUEUED_BYTES_MAX
            {
                self.queued.push_back(line);
            } else {
                answer(&json_line(&Response::from(ControlError::Busy)));
            }
        }
        loop {
            if let Some(a) = self.clone_part(host) {
                answer(&json_line(&a));
            }
            if self.cloning.is_some() {
                break;
            }
            let Some(line) = self.queued.pop_front() else { break };
            if let Some(a) = self.handle(host, now_ns, line.as_deref().map_err(|e| *e)) {
                answer(&json_line(&a));
            }
            // A clone of many begun: its first part at once (the loop's top).
        }
        if self.reader.stalled(now_ns) {
            self.reader.clear();
            answer(&json_line(&Response::from(ControlError::RequestTimedOut)));
        }
        if self.upload.as_ref().is_some_and(|u| now_ns.saturating_sub(u.last_ns) > STALL_NS) {
            self.upload = None;
            answer(&json_line(&Response::from(ControlError::UploadTimedOut)));
        }
        input.len()
    }

    /// Makes the next part of the clones asked for; the answer once they
    /// are all made, or once one could not be.
    fn clone_part(&mut self, host: &dyn ControlHost) -> Option<Response> {
        let c = self.cloning.as_mut()?;
        let n = (c.end - c.next).min(CLONE_PART);
        let args: Option<Vec<&str>> = c.args.as_ref().map(|v| v.iter().map(String::as_str).collect());
        let part = host.clone_guest(&c.template, &c.name, Some((c.next, n)), args.as_deref());
        let done = match part {
            Ok(p) => {
                if c.made.count == 0 {
                    (c.made.first, c.made.ip, c.made.tenant) = (p.first, p.ip, p.tenant);
                }
                c.made.count += p.count;
                c.made.error = p.error;
                c.next += n;
                c.made.error.is_some() || c.next == c.end
            }
            Err(why) if c.made.count == 0 => {
                self.cloning = None;
                return Some(ControlError::Refused(why).into());
            }
            Err(why) => {
                c.made.error = Some(why.why);
                true
            }
        };
        if !done {
            return None;
        }
        let c = self.cloning.take()?.made;
        Some(Response::cloned(c.count, c.first, c.ip, c.tenant, c.error))
    }

    /// The answer to one request line; `None` for upload chunks, which are
    /// not answered (`image-end` says how the upload went).
    fn handle(&mut self, host: &dyn ControlHost, now_ns: u64, line: Result<&str, abi::control::RequestError>) -> Option<Response> {
        let req = match line.and_then(parse) {
            Ok(r) => r,
            Err(e) => return Some(ControlError::Request(e).into()),
        };
        Some(match self.answer(host, now_ns, req)? {
            Ok(answer) => answer,
            Err(e) => e.into(),
        })
    }

    /// Reserves room for an upload of `len` bytes (within what the host
    /// has room for), or says why not.
    fn begin_upload(
        &mut self,
        host: &dyn ControlHost,
        now_ns: u64,
        name: &str,
        len: usize,
        purpose: Purpose,
    ) -> Result<Response, ControlError> {
        if len > host.upload_room() {
            return Err(ControlError::NoHeapRoom);
        }
        let mut data = Vec::new();
        data.try_reserve_exact(len).map_err(|_| ControlError::NoHeapRoom)?;
        self.upload = Some(Upload { name: name.into(), purpose, len, data, last_ns: now_ns, overflowed: false });
        Ok(Response::Receiving { receiving: name.into() })
    }

    fn answer(&mut self, host: &dyn ControlHost, now_ns: u64, req: Request<'_>) -> Option<Result<Response, ControlError>> {
        Some(match req {
            Request::ImageData(bytes) => {
                match &mut self.upload {
                    Some(u) if u.data.len() + bytes.len() <= u.len => {
                        // Within the capacity reserved at image-begin: no allocation.
                        u.data.extend_from_slice(&bytes);
                        u.last_ns = now_ns;
                    }
                    Some(u) => u.overflowed = true,
                    None => {}
                }
                return None;
            }
            Request::ImageBegin { name, len } => {
                self.upload = None;
                if !host.image_slot_free() {
                    Err(ControlError::NoImageSlot)
                } else {
                    self.begin_upload(host, now_ns, name, len, Purpose::Image)
                }
            }
            Request::RestoreBegin { name, len, tenant, args } => {
                self.upload = None;
                let tenant = tenant.map(|t| alloc::format!("{t}"));
                let args = args.map(|v| v.into_iter().map(|a| a.into_owned()).collect());
                self.begin_upload(host, now_ns, name, len, Purpose::Restore { tenant, args })
            }
            Request::ImageEnd => match self.upload.take() {
                Some(Upload { purpose: Purpose::Image, name, len, data, overflowed: false, .. }) if data.len() == len => {
                    match host.add_image(&name, &data) {
                        Ok((image, digest)) => Ok(Response::Image { image, digest: Some(digest) }),
                        Err(why) => Err(ControlError::ImageRejected { name, why }),
                    }
                }
                Some(Upload { purpose: Purpose::Image, .. }) => Err(ControlError::UploadLength),
                Some(u) => {
                    self.upload = Some(u);
                    Err(ControlError::NoUpload)
                }
                None => Err(ControlError::NoUpload),
            },
            Request::RestoreEnd => match self.upload.take() {
                Some(Upload { purpose: Purpose::Restore { tenant, args }, name, len, data, overflowed: false, .. })
                    if data.len() == len =>
                {
                    let tenant = tenant.as_deref().and_then(abi::control::parse_tenant);
                    let args: Option<Vec<&str>> = args.as_ref().map(|v| v.iter().map(String::as_str).collect());
                    match host.restore(self.client, &name, tenant, args.as_deref(), &data) {
                        Ok((ip, tenant)) => Ok(Response::restored(&name, ip, tenant)),
                        Err(why) => Err(ControlError::SnapshotRejected { name, why }),
                    }
                }
                Some(Upload { purpose: Purpose::Restore { .. }, .. }) => Err(ControlError::UploadLength),
                Some(u) => {
                    self.upload = Some(u);
                    Err(ControlError::NoUpload)
                }
                None => Err(ControlError::NoUpload),
            },
            Request::Snapshot(name) => match host.snapshot(name) {
                Ok((data, digest)) => {
                    let bytes = data.len() as u64;
                    self.download = Some(Download { data, sent: 0, last_ns: now_ns });
                    Ok(Response::Snapshot { snapshot: name.into(), bytes, digest })
                }
                Err(why) => Err(ControlError::Refused(why)),
            },
            Request::Images => {
                let loaded = host.images();
                Ok(Response::Images { images: loaded.iter().map(|i| i.name.clone()).collect(), loaded })
            }
            Request::ImageRemove(which) => {
                host.remove_image(which).map(|image_removed| Response::ImageRemoved { image_removed }).map_err(ControlError::Refused)
            }
            Request::Start { name, image, memory, tenant, options, args, env } => host
                .start(self.client, name, image, memory, tenant, &options, &strs(&args), &strs(&env))
                .map(|(ip, tenant)| Response::started(name, ip, tenant))
                .map_err(ControlError::Refused),
            Request::Tenants => Ok(Response::Tenants { tenants: host.tenants() }),
            Request::TenantRemove(name) => {
                host.remove_tenant(name).map(|()| Response::TenantRemoved { tenant_removed: name.into() }).map_err(ControlError::Refused)
            }
            Request::Wait(name) => match host.wait(self.client, name) {
                Ok(Some(end)) => Ok(Response::Event(end)),
                // Answered when it ends (`ControlHost::wait`).
                Ok(None) => return None,
                Err(why) => Err(ControlError::Refused(why)),
            },
            Request::Events => {
                host.watch_events(self.client);
                Ok(Response::Watching { watching: "events".into() })
            }
            Request::Console(name) => {
                host.watch_console(self.client, name).map(|()| Response::Watching { watching: name.into() }).map_err(ControlError::Refused)
            }
            Request::Stop(name) => host.stop(name).map(|()| Response::Stopped { stopped: name.into() }).map_err(ControlError::Refused),
            Request::Pause(name) => host.pause(name).map(|()| Response::Pausing { pausing: name.into() }).map_err(ControlError::Refused),
            Request::Resume(name) => host.resume(name).map(|()| Response::Resumed { resumed: name.into() }).map_err(ControlError::Refused),
            // One, named NAME: made at once.
            Request::Clone { template, name, count: None, args } => host
                .clone_guest(template, name, None, args.as_deref().map(strs).as_deref())
                .map(|c| Response::cloned(c.count, c.first, c.ip, c.tenant, c.error))
                .map_err(ControlError::Refused),
            // Many: made a part per look (`clone_part`), answered at the end.
            Request::Clone { template, name, count: Some(end), args } => {
                self.cloning = Some(Cloning {
                    template: template.into(),
                    name: name.into(),
                    next: 0,
                    end,
                    args: args.map(|v| v.into_iter().map(|a| a.into_owned()).collect()),
                    made: Cloned { first: name.into(), ..Cloned::default() },
                });
                return None;
            }
            Request::Remove(name) => {
                host.remove_guest(name).map(|()| Response::Removed { removed: name.into() }).map_err(ControlError::Refused)
            }
            Request::List => host.list().map(|guests| Response::Guests { guests }).map_err(ControlError::Refused),
            Request::Stats => host.stats().map(|(guests, machine)| Response::Stats { guests, machine }).map_err(ControlError::Refused),
            Request::Capture { what, count, secs } => host
                .capture(self.client, what, count, secs)
                .map(|()| Response::Capturing { capturing: what.into() })
                .map_err(ControlError::Refused),
            Request::Version => Ok(Response::version()),
        })
    }
}

/// The strings of `v`, borrowed.
fn strs<'a>(v: &'a [alloc::borrow::Cow<'_, str>]) -> Vec<&'a str> {
    v.iter().map(|s| s.as_ref()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use abi::report::GuestState;
    use core::cell::RefCell;

    /// A host that keeps images and guests by name and records the calls.
    #[derive(Default)]
    struct Books {
        images: RefCell<Vec<(String, usize)>>,
        guests: RefCell<Vec<String>>,
        room: usize,
        /// Calls to `clone_guest`.
        clone_calls: core::cell::Cell<u32>,
        /// The last guest waited for or watched.
        waited: RefCell<Option<String>>,
    }

    impl Books {
        fn find(&self, name: &str) -> Result<(), Refusal> {
            if self.guests.borrow().iter().any(|n| n == name) { Ok(()) } else { Err(format!("no guest {name}").into()) }
        }
    }

    impl ControlHost for Books {
        fn upload_room(&self) -> usize {
            self.room
        }
        fn image_slot_free(&self) -> bool {
            self.images.borrow().len() < 2
        }
        fn images(&self) -> Vec<ImageInfo> {
            let info =
                |(n, len): &(String, usize)| ImageInfo { name: n.clone(), digest: format!("sha256:{len}"), bytes: *len as u64, guests: 0 };
            self.images.borrow().iter().map(info).collect()
        }
        fn add_image(&self, name: &str, data: &[u8]) -> Result<(String, String), String> {
            if data.first() == Some(&0) {
                return Err("not an image".into());
            }
            self.images.borrow_mut().push((name.into(), data.len()));
            Ok((name.into(), format!("sha256:{}", data.len())))
        }
        fn remove_image(&self, which: &str) -> Result<String, Refusal> {
            let mut images = self.images.borrow_mut();
            let i = images.iter().position(|(n, _)| n == which).ok_or(format!("no image {which}"))?;
            Ok(images.remove(i).0)
        }
        fn start(
            &self,
            _: usize,
            name: &str,
            image: &str,
            _: u64,
            tenant: Tenant<'_>,
            options: &StartOptions,
            _: &[&str],
            _: &[&str],
        ) -> Result<(Option<[u8; 4]>, Option<u32>), Refusal> {
            if !self.images.borrow().iter().any(|(n, _)| n == image) {
                return Err(format!("no image {image}").into());
            }
            self.guests.borrow_mut().push(name.into());
            if options.watch {
                *self.waited.borrow_mut() = Some(name.into());
            }
            let t = match tenant {
                Tenant::Number(t) => Some(t),
                Tenant::Named(_) => Some(9),
                Tenant::None => None,
            };
            Ok((t.map(|t| [10, t as u8, 0, 2]), t))
        }
        fn tenants(&self) -> Vec<TenantRow> {
            vec![TenantRow { name: Some("acme".into()), id: 9, guests: self.guests.borrow().len() as u32 }]
        }
        fn remove_tenant(&self, name: &str) -> Result<(), Refusal> {
            if name == "acme" { Ok(()) } else { Err(format!("no tenant {name}").into()) }
        }
        fn remove_guest(&self, name: &str) -> Result<(), Refusal> {
            let mut g = self.guests.borrow_mut();
            let i = g.iter().position(|n| n == name).ok_or_else(|| format!("no guest {name}"))?;
            g.remove(i);
            Ok(())
        }
        fn wait(&self, _: usize, name: &str) -> Result<Option<GuestEvent>, Refusal> {
            if self.guests.borrow().iter().any(|n| n == name) {
                *self.waited.borrow_mut() = Some(name.into());
                return Ok(None);
            }
            Err(format!("no guest {name}").into())
        }
        fn watch_events(&self, _: usize) {}
        fn watch_console(&self, client: usize, name: &str) -> Result<(), Refusal> {
            self.wait(client, name).map(|_| ())
        }
        fn pause(&self, name: &str) -> Result<(), Refusal> {
            self.find(name)
        }
        fn resume(&self, name: &str) -> Result<(), Refusal> {
            self.find(name)
        }
        fn clone_guest(&self, template: &str, name: &str, numbered: Option<(u32, u32)>, _: Option<&[&str]>) -> Result<Cloned, Refusal> {
            self.find(template)?;
            let (at, n) = numbered.unwrap_or((0, 1));
            let nm = |i: u32| if numbered.is_some() { format!("{name}-{i}") } else { name.into() };
            // "full" holds 300 at most.
            let n = if name == "full" { n.min(300u32.saturating_sub(at)) } else { n };
            (at..at + n).for_each(|i| self.guests.borrow_mut().push(nm(i)));
            self.clone_calls.set(self.clone_calls.get() + 1);
            let error = (name == "full" && at + n >= 300).then(|| String::from("out of memory"));
            if n == 0 {
                return Err(Refusal::from(String::from("out of memory")));
            }
            Ok(Cloned { count: n, first: nm(at), ip: Some([10, 0, 0, 9]), tenant: Some(0), error })
        }
        fn stop(&self, name: &str) -> Result<(), Refusal> {
            let mut g = self.guests.borrow_mut();
            let i = g.iter().position(|n| n == name).ok_or(format!("no guest {name}"))?;
            g.remove(i);
            Ok(())
        }
        fn list(&self) -> Result<Vec<GuestRow>, Refusal> {
            let row = |n: &String| GuestRow {
                name: n.clone(),
                tenant: None,
                state: GuestState::Waiting,
                cpu_ns: 1,
                memory_bytes: 2,
                sent_frames: 3,
                received_frames: 4,
            };
            Ok(self.guests.borrow().iter().map(row).collect())
        }
        fn stats(&self) -> Result<(Vec<GuestStats>, MachineStats), Refusal> {
            Ok((vec![GuestStats { guest: "w".into(), ..Default::default() }], MachineStats { live: 1, ..Default::default() }))
        }
        fn capture(&self, _: usize, _: &str, _: u32, _: u32) -> Result<(), Refusal> {
            Ok(())
        }
        fn snapshot(&self, name: &str) -> Result<(Vec<u8>, String), Refusal> {
            self.find(name)?;
            Ok(((0..10_000u32).map(|i| i as u8).collect(), "sha256:x".into()))
        }
        fn restore(
            &self,
            _: usize,
            name: &str,
            tenant: Option<Tenant<'_>>,
            _: Option<&[&str]>,
            data: &[u8],
        ) -> Result<(Option<[u8; 4]>, Option<u32>), String> {
            if data.first() != Some(&b'S') {
                return Err("not a snapshot".into());
            }
            self.guests.borrow_mut().push(name.into());
            let t = match tenant {
                Some(Tenant::Number(t)) => t,
                _ => 1,
            };
            Ok((Some([10, t as u8, 0, 2]), Some(t)))
        }
    }

    /// Sends `bytes` at `now`; returns the answers.
    fn send(s: &mut Session, host: &Books, now: u64, bytes: &[u8]) -> Vec<String> {
        let mut out = Vec::new();
        s.poll(host, now, bytes, &mut |a| out.push(a.to_string()));
        out
    }

    #[test]
    fn an_upload_is_loaded_then_started_listed_and_stopped() {
        let host = Books { room: 1 << 20, ..Default::default() };
        let mut s = Session::default();
        assert_eq!(send(&mut s, &host, 0, b"image-begin a.hermit 3\n"), [r#"{"receiving":"a.hermit"}"#]);
        assert!(s.busy() && s.held_bytes() >= 3);
        assert_eq!(send(&mut s, &host, 1, b"image-data 0102\nimage-data 03\n"), Vec::<String>::new());
        assert_eq!(send(&mut s, &host, 2, b"image-end\n"), [r#"{"image":"a.hermit","digest":"sha256:3"}"#]);
        assert!(!s.busy());
        assert_eq!(send(&mut s, &host, 3, b"start w a.hermit 4096 7\n"), [r#"{"started":"w","ip":"10.7.0.2","tenant":7}"#]);
        assert_eq!(
            send(&mut s, &host, 4, b"list\nimages\n"),
            [
                r#"{"guests":[{"name":"w","tenant":null,"state":"waiting","cpu_ns":1,"memory_bytes":2,"sent_frames":3,"received_frames":4}]}"#,
                r#"{"images":["a.hermit"],"loaded":[{"name":"a.hermit","digest":"sha256:3","bytes":3,"guests":0}]}"#
            ]
        );
        assert_eq!(send(&mut s, &host, 5, b"stop w\nstop w\n"), [r#"{"stopped":"w"}"#, r#"{"error":"no guest w","kind":"refused"}"#]);
        let stats = send(&mut s, &host, 6, b"stats\n");
        let Ok(Response::Stats { guests, machine }) = serde_json::from_str(&stats[0]) else { panic!("{stats:?}") };
        assert_eq!((guests[0].guest.as_str(), machine.live), ("w", 1));
        assert_eq!(send(&mut s, &host, 7, b"version\n"), [r#"{"protocol":7,"abi":10}"#]);
    }

    #[test]
    fn protocol_4_requests_reach_the_host() {
        let host = Books { room: 1 << 20, ..Default::default() };
        let mut s = Session::default();
        send(&mut s, &host, 0, b"image-begin a.hermit 1\nimage-data 01\nimage-end\n");
        assert_eq!(
            send(&mut s, &host, 1, b"start w sha256:1 4096 acme weight=5 watch -- x\n"),
            [r#"{"error":"no image sha256:1","kind":"refused"}"#],
            "the host decides what names an image"
        );
        assert_eq!(
            send(&mut s, &host, 1, b"start w a.hermit 4096 acme weight=5 watch -- x\n"),
            [r#"{"started":"w","ip":"10.9.0.2","tenant":9}"#]
        );
        assert_eq!(host.waited.borrow_mut().take().as_deref(), Some("w"), "watch reached the host");
        // A wait is not answered now; the host pushes the end later.
        assert_eq!(send(&mut s, &host, 2, b"wait w\n"), Vec::<String>::new());
        assert_eq!(send(&mut s, &host, 2, b"wait nobody\n"), [r#"{"error":"no guest nobody","kind":"refused"}"#]);
        assert_eq!(send(&mut s, &host, 3, b"console w\nevents\n"), [r#"{"watching":"w"}"#, r#"{"watching":"events"}"#]);
        assert_eq!(send(&mut s, &host, 4, b"tenants\n"), [r#"{"tenants":[{"name":"acme","id":9,"guests":1}]}"#]);
        assert_eq!(send(&mut s, &host, 5, b"tenant-remove acme\n"), [r#"{"tenant_removed":"acme"}"#]);
        assert_eq!(
            send(&mut s, &host, 6, b"image-remove a.hermit\nimages\n"),
            [r#"{"image_removed":"a.hermit"}"#, r#"{"images":[],"loaded":[]}"#]
        );
        assert_eq!(
            send(&mut s, &host, 7, b"start w a.hermit 4096 0 weight=0 --\n"),
            [
                r#"{"error":"start: options before -- are weight=1..10000, cap=1..100, ring_slots=2..2048 (a power of two), nic_packets=, nic_bytes=, nic_broadcasts=, console_bytes=, notifications= (per second, 0: none), watch","kind":"bad_request"}"#
            ]
        );
    }

    #[test]
    fn a_snapshot_goes_out_as_the_client_reads_and_a_restore_comes_in() {
        let host = Books { room: 1 << 20, ..Default::default() };
        let mut s = Session::default();
        host.guests.borrow_mut().push("e".into());
        assert_eq!(send(&mut s, &host, 0, b"snapshot e\n"), [r#"{"snapshot":"e","bytes":10000,"digest":"sha256:x"}"#]);
        assert!(s.downloading() && s.busy());
        // Room for one record at a time: three looks for 10,000 bytes.
        let mut data = Vec::new();
        for look in 0..3 {
            let mut out = Vec::new();
            s.pump(2 * abi::control::CHUNK_MAX + 64, 0, &mut |a| out.push(a.to_string()));
            assert_eq!(out.len(), 1, "look {look}");
            let Ok(Response::SnapshotData { snapshot_data }) = serde_json::from_str(&out[0]) else { panic!("{out:?}") };
            data.extend(abi::control::from_hex(&snapshot_data, abi::control::CHUNK_MAX).unwrap());
        }
        assert!(!s.downloading() && !s.busy());
        assert_eq!(data, (0..10_000u32).map(|i| i as u8).collect::<Vec<_>>());
        // No room: nothing goes out, and it waits.
        send(&mut s, &host, 1, b"snapshot e\n");
        s.pump(100, 1, &mut |a| panic!("{a}"));
        assert!(s.downloading());
        // Nothing taken for longer than the stall rule: dropped, with an error.
        let mut out = Vec::new();
        s.pump(100, 2 + STALL_NS, &mut |a| out.push(a.to_string()));
        assert!(!s.downloading() && s.held_bytes() == 0);
        assert_eq!(out, [r#"{"error":"snapshot dropped: the client took none of it for 5 s","kind":"download_timed_out"}"#]);
        assert!(send(&mut s, &host, 1, b"snapshot nobody\n")[0].contains("no guest nobody"));

        assert_eq!(send(&mut s, &host, 2, b"restore-begin f 2 7\n"), [r#"{"receiving":"f"}"#]);
        assert_eq!(send(&mut s, &host, 2, b"image-data 5300\n"), Vec::<String>::new());
        assert_eq!(
            send(&mut s, &host, 2, b"image-end\n")[0],
            r#"{"error":"no upload in progress (image-begin or restore-begin first)","kind":"no_upload"}"#,
            "an image-end does not end a restore"
        );
        assert_eq!(send(&mut s, &host, 2, b"restore-end\n"), [r#"{"restored":"f","ip":"10.7.0.2","tenant":7}"#]);
        send(&mut s, &host, 3, b"restore-begin g 1\nimage-data 00\n");
        assert_eq!(
            send(&mut s, &host, 3, b"restore-end\n"),
            [r#"{"error":"snapshot for g rejected: not a snapshot","kind":"snapshot_rejected"}"#]
        );
        send(&mut s, &host, 3, b"restore-begin g 2\nimage-data 53\n");
        assert!(send(&mut s, &host, 3, b"restore-end\n")[0].contains("upload_length"));
        assert!(send(&mut s, &host, 3, b"restore-begin g 2000000\n")[0].contains("no_heap_room"));
    }

    #[test]
    fn a_clone_of_many_is_made_in_parts_and_what_follows_it_waits_its_turn() {
        let host = Books { room: 1 << 20, ..Default::default() };
        let mut s = Session::default();
        host.guests.borrow_mut().push("t".into());
        // 1000 clones: a part per look, the list behind them waiting.
        assert_eq!(send(&mut s, &host, 0, b"clone t c 1000\nlist\n"), Vec::<String>::new());
        assert_eq!(host.clone_calls.get(), 1, "one part at once");
        assert!(s.busy());
        let mut answers = Vec::new();
        for _ in 0..10 {
            answers.extend(send(&mut s, &host, 1, b""));
        }
        assert_eq!(host.clone_calls.get(), 1000u32.div_ceil(CLONE_PART));
        assert_eq!(answers[0], r#"{"cloned":1000,"first":"c-0","ip":"10.0.0.9","tenant":0}"#);
        assert!(answers[1].starts_with(r#"{"guests":[{"name":"t""#) && answers[1].contains(r#""name":"c-999""#), "then the list");
        assert_eq!(answers.len(), 2);
        assert!(!s.busy());
        // One that runs out part-way says how many and why.
        assert_eq!(send(&mut s, &host, 2, b"clone t full 1000\n"), Vec::<String>::new());
        let out: Vec<String> = (0..5).flat_map(|_| send(&mut s, &host, 3, b"")).collect();
        assert_eq!(out, [r#"{"cloned":300,"first":"full-0","ip":"10.0.0.9","tenant":0,"error":"out of memory"}"#]);
        // A client that sends more than may wait behind one is refused at once.
        let mut many = b"clone t d 1000\n".to_vec();
        (0..QUEUED_MAX + 2).for_each(|_| many.extend_from_slice(b"version\n"));
        let out = send(&mut s, &host, 4, &many);
        assert_eq!(out.len(), 2, "{out:?}");
        assert!(out.iter().all(|a| a.contains(r#""kind":"busy""#)), "{out:?}");
        let out: Vec<String> = (0..10).flat_map(|_| send(&mut s, &host, 5, b"")).collect();
        assert_eq!(out.len(), 1 + QUEUED_MAX, "the clone's answer, then the versions that waited");
        assert!(out[0].starts_with(r#"{"cloned":1000,"first":"d-0""#));
        // One named clone is made and answered at once.
        assert_eq!(send(&mut s, &host, 6, b"clone t e\n"), [r#"{"cloned":1,"first":"e","ip":"10.0.0.9","tenant":0}"#]);
        assert!(send(&mut s, &host, 6, b"clone nobody e 5\n")[0].contains("no guest nobody"));
    }

    #[test]
    fn uploads_that_lie_or_stall_are_refused_and_hold_nothing() {
        let host = Books { room: 100, ..Default::default() };
        let mut s = Session::default();
        // More than the host has room for: refused before any allocation.
        assert!(send(&mut s, &host, 0, b"image-begin a 101\n")[0].contains("no room"));
        assert_eq!(s.held_bytes(), 0);
        // More data than announced.
        send(&mut s, &host, 0, b"image-begin a 2\nimage-data 010203\n");
        assert_eq!(send(&mut s, &host, 0, b"image-end\n"), [r#"{"error":"the upload did not match its length","kind":"upload_length"}"#]);
        // Less.
        send(&mut s, &host, 0, b"image-begin a 2\nimage-data 01\n");
        assert_eq!(send(&mut s, &host, 0, b"image-end\n"), [r#"{"error":"the upload did not match its length","kind":"upload_length"}"#]);
        // Rejected by the host, with its reason.
        send(&mut s, &host, 0, b"image-begin a 1\nimage-data 00\n");
        assert_eq!(send(&mut s, &host, 0, b"image-end\n"), [r#"{"error":"image a rejected: not an image","kind":"image_rejected"}"#]);
        // Quiet for too long: dropped with an error, and its buffer freed.
        send(&mut s, &host, 10, b"image-begin a 50\nimage-data 01\n");
        assert_eq!(send(&mut s, &host, 10 + STALL_NS, b""), Vec::<String>::new());
        assert!(send(&mut s, &host, 11 + STALL_NS, b"")[0].contains("upload timed out"));
        assert_eq!((s.held_bytes(), s.busy()), (0, false));
        // A half line, the same.
        send(&mut s, &host, 20, b"lis");
        assert!(send(&mut s, &host, 21 + STALL_NS, b"")[0].contains("request timed out"));
        assert_eq!(
            send(&mut s, &host, 22 + STALL_NS, b"t\n"),
            [
                r#"{"error":"unknown request (list, stats, stop, remove, pause, resume, clone, snapshot, restore-begin, restore-end, capture, images, image-begin, image-data, image-end, image-remove, start, tenants, tenant-remove, wait, events, console, version)","kind":"bad_request"}"#
            ]
        );
        assert!(send(&mut s, &host, 0, b"image-end\n")[0].contains("no upload in progress"));
    }
}
