//! The boot bundle: the manifest and the guest images, packed by `xtask`
//! into one file that QEMU hands the hypervisor as its PVH module.
//!
//! Little-endian, length-prefixed, no padding:
//!
//! ```text
//! magic    8 bytes  "HVBNDL05" (MAGIC)
//! flags    u32      FLAG_*
//! images   u32 count, then per image: name (str), data (bytes)
//! guests   u32 count, then per guest: name (str), image index (u32),
//!          count (u32), then the Settings: memory in bytes (u64),
//!          weight (u32), cap in percent of one CPU (u32, 0 = none),
//!          tenant (u32, TENANT_NONE for no vNIC), ring slots (u32),
//!          limits per second (u64 each: NIC packets, NIC bytes, NIC
//!          broadcasts, console bytes, notifications; 0 = none);
//!          then argc (u32), args (str each), then how the instances
//!          start (u32: 0 each boots, 1 warm: the first boots and pauses
//!          when it first blocks, the others are its clones, then it
//!          goes on; 2 each is a clone of the first instance of the
//!          earlier entry whose index follows (u32), which pauses when it
//!          first blocks and stays paused), and that index (u32, 0 unless 2)
//! tenants  u32 count (at most MAX_TENANTS), then each tenant's name (str),
//!          tenant T's at index T
//! str      = u32 length + UTF-8 bytes;  bytes = u64 length + bytes
//! ```
//!
//! The decoder checks every length against what is left and never panics:
//! a bundle that does not parse stops the hypervisor with a clear error.
//! Image bytes are not validated here; the hypervisor's image loader does
//! that per image, so one bad image costs only its own guests.

use crate::wire::{Reader, Short};
use core::fmt;

/// First bytes of every bundle.
pub const MAGIC: &[u8; 8] = b"HVBNDL07";
/// Power QEMU off (via `isa-debug-exit`) once no guest is left.
pub const FLAG_EXIT_WHEN_IDLE: u32 = 1 << 0;
/// Run guests on isolated page tables and clear the CPU's buffers (VERW)
/// on every return to a guest even where the CPU does not need either (so
/// that tests under TCG run those paths).
pub const FLAG_FORCE_MITIGATIONS: u32 = 1 << 1;

/// `Guest::tenant` of a guest without a vNIC.
pub const TENANT_NONE: u32 = u32::MAX;

/// Limits that keep a decoded bundle sane.
pub const MAX_IMAGES: u32 = 4096;
pub const MAX_GUESTS: u32 = 65_536;
pub const MAX_ARGS: u32 = 256;

/// An image in the bundle: its display name (file name) and raw bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Image<'a> {
    pub name: &'a str,
    pub data: &'a [u8],
}

/// What the manifest sets for each instance of a guest entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settings {
    /// Memory limit in bytes.
    pub memory: u64,
    pub weight: u32,
    /// Percent of one CPU; 0 means no cap.
    pub cap: u32,
    /// The tenant (broadcast domain) of its vNIC, or [`TENANT_NONE`].
    pub tenant: u32,
    /// Slots in each of its vNIC's rings (`ring::valid_slots`).
    pub ring_slots: u32,
    pub limits: Limits,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            memory: 2 << 20,
            weight: 100,
            cap: 0,
            tenant: TENANT_NONE,
            ring_slots: crate::ring::SLOTS_DEFAULT,
            limits: Limits::default(),
        }
    }
}

/// Per-guest rate limits, per second (0: no limit). Past its limit a
/// guest's frames and console bytes are dropped and counted, and its
/// notifications ignored (the work they ask for happens anyway when it
/// next blocks or is preempted); a second's worth may come in a burst.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Frames it sends, each copy of a flooded frame counted (a broadcast
    /// to a tenant of N ports costs N - 1).
    pub nic_packets: u64,
    /// Bytes of frames it sends, counted per copy likewise.
    pub nic_bytes: u64,
    /// Broadcast and multicast frames it sends but ARP (each may reach
    /// every guest of its tenant). The switch floods no ARP: it answers a
    /// request itself or sends it to the uplink only, so ARP counts under
    /// `nic_packets` alone.
    pub nic_broadcasts: u64,
    /// Bytes it writes to its console.
    pub console_bytes: u64,
    /// `net_kick` hypercalls.
    pub notifications: u64,
}

impl Default for Limits {
    /// Well above what the benchmarks need from one guest, well below what
    /// starves its neighbours.
    fn default() -> Self {
        Self { nic_packets: 200_000, nic_bytes: 256 << 20, nic_broadcasts: 1000, console_bytes: 64 << 10, notifications: 200_000 }
    }
}

/// How an entry's instances start.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Start {
    /// Each boots.
    #[default]
    Boot,
    /// The first boots and pauses when it first blocks; the others are
    /// made as its clones, then it goes on (`warm = true`).
    Warm,
    /// Each is a clone of the first instance of the earlier entry with
    /// this index, which pauses when it first blocks and stays paused
    /// (`from = "NAME"`).
    From(u32),
}

/// A guest entry of the manifest: `count` instances of `image`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Guest<'a> {
    pub name: &'a str,
    pub image: u32,
    pub count: u32,
    pub settings: Settings,
    pub start: Start,
    args: &'a [u8],
    argc: u32,
}

impl<'a> Guest<'a> {
    /// The application arguments, in order.
    pub fn args(&self) -> impl Iterator<Item = &'a str> + 'a {
        let mut r = Reader { buf: self.args };
        (0..self.argc).map_while(move |_| r.str().ok())
    }

    /// Number of application arguments.
    pub fn argc(&self) -> u32 {
        self.argc
    }
}

/// A decoded bundle. Images and guests are decoded lazily from the
/// validated byte ranges.
#[derive(Clone, Copy, Debug)]
pub struct Bundle<'a> {
    pub flags: u32,
    image_count: u32,
    images: &'a [u8],
    guest_count: u32,
    guests: &'a [u8],
    tenant_count: u32,
    tenants: &'a [u8],
}

/// Why a bundle did not decode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    BadMagic,
    Truncated,
    NotUtf8,
    TooMany(&'static str),
    BadImageIndex {
        guest: u32,
        image: u32,
    },
    TrailingBytes,
    /// An entry's start is none of the known ones.
    BadStart,
    /// An entry clones from an entry that is not before it.
    BadTemplate {
        guest: u32,
        template: u32,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::BadMagic => f.write_str("not a bundle (bad magic)"),
            Error::Truncated => f.write_str("bundle is truncated"),
            Error::NotUtf8 => f.write_str("bundle holds a string that is not UTF-8"),
            Error::TooMany(what) => write!(f, "bundle holds too many {what}"),
            Error::BadImageIndex { guest, image } => {
                write!(f, "guest entry {guest} names image {image}, which is not in the bundle")
            }
            Error::TrailingBytes => f.write_str("bundle has trailing bytes"),
            Error::BadStart => f.write_str("bundle holds a guest entry whose start is unknown"),
            Error::BadTemplate { guest, template } => {
                write!(f, "guest entry {guest} clones entry {template}, which does not come before it")
            }
        }
    }
}

impl From<Short> for Error {
    fn from(_: Short) -> Self {
        Error::Truncated
    }
}

/// The bundle's own fields.
impl<'a> Reader<'a> {
    fn str(&mut self) -> Result<&'a str, Error> {
        let n = self.u32()? as usize;
        core::str::from_utf8(self.take(n)?).map_err(|_| Error::NotUtf8)
    }
    fn bytes(&mut self) -> Result<&'a [u8], Error> {
        let n = usize::try_from(self.u64()?).map_err(|_| Error::Truncated)?;
        Ok(self.take(n)?)
    }
    fn image(&mut self) -> Result<Image<'a>, Error> {
        Ok(Image { name: self.str()?, data: self.bytes()? })
    }
    fn guest(&mut self) -> Result<Guest<'a>, Error> {
        let name = self.str()?;
        let image = self.u32()?;
        let count = self.u32()?;
        let settings = Settings {
            memory: self.u64()?,
            weight: self.u32()?,
            cap: self.u32()?,
            tenant: self.u32()?,
            ring_slots: self.u32()?,
            limits: Limits {
                nic_packets: self.u64()?,
                nic_bytes: self.u64()?,
                nic_broadcasts: self.u64()?,
                console_bytes: self.u64()?,
                notifications: self.u64()?,
            },
        };
        let argc = self.u32()?;
        if argc > MAX_ARGS {
            return Err(Error::TooMany("arguments"));
        }
        let start = self.buf;
        for _ in 0..argc {
            self.str()?;
        }
        let args = &start[..start.len() - self.buf.len()];
        let start = match (self.u32()?, self.u32()?) {
            (0, 0) => Start::Boot,
            (1, 0) => Start::Warm,
            (2, entry) => Start::From(entry),
            _ => return Err(Error::BadStart),
        };
        Ok(Guest { name, image, count, settings, start, args, argc })
    }
}

impl<'a> Bundle<'a> {
    /// Decodes and fully validates a bundle.
    pub fn parse(buf: &'a [u8]) -> Result<Self, Error> {
        let mut r = Reader { buf };
        if r.take(MAGIC.len()).map_err(|_| Error::BadMagic)? != MAGIC {
            return Err(Error::BadMagic);
        }
        let flags = r.u32()?;
        let image_count = r.u32()?;
        if image_count > MAX_IMAGES {
            return Err(Error::TooMany("images"));
        }
        let images = r.buf;
        for _ in 0..image_count {
            r.image()?;
        }
        let images = &images[..images.len() - r.buf.len()];
        let guest_count = r.u32()?;
        if guest_count > MAX_GUESTS {
            return Err(Error::TooMany("guest entries"));
        }
        let guests = r.buf;
        for i in 0..guest_count {
            let g = r.guest()?;
            if g.image >= image_count {
                return Err(Error::BadImageIndex { guest: i, image: g.image });
            }
            // A template is an earlier entry (the hypervisor refuses one
            // that does not boot an instance, with the entry's name).
            if let Start::From(t) = g.start
                && t >= i
            {
                return Err(Error::BadTemplate { guest: i, template: t });
            }
        }
        let guests = &guests[..guests.len() - r.buf.len()];
        let tenant_count = r.u32()?;
        if tenant_count > crate::MAX_TENANTS {
            return Err(Error::TooMany("tenants"));
        }
        let tenants = r.buf;
        for _ in 0..tenant_count {
            r.str()?;
        }
        let tenants = &tenants[..tenants.len() - r.buf.len()];
        if !r.buf.is_empty() {
            return Err(Error::TrailingBytes);
        }
        Ok(Bundle { flags, image_count, images, guest_count, guests, tenant_count, tenants })
    }

    /// The images, in bundle order (a guest's `image` indexes this).
    pub fn images(&self) -> impl Iterator<Item = Image<'a>> + 'a {
        let mut r = Reader { buf: self.images };
        (0..self.image_count).map_while(move |_| r.image().ok())
    }

    /// The guest entries, in manifest order.
    pub fn guests(&self) -> impl Iterator<Item = Guest<'a>> + 'a {
        let mut r = Reader { buf: self.guests };
        (0..self.guest_count).map_while(move |_| r.guest().ok())
    }

    pub fn image_count(&self) -> u32 {
        self.image_count
    }

    /// The manifest's tenant names, tenant 0's first.
    pub fn tenants(&self) -> impl Iterator<Item = &'a str> + 'a {
        let mut r = Reader { buf: self.tenants };
        (0..self.tenant_count).map_while(move |_| r.str().ok())
    }
}

/// Builds a bundle (used by `xtask`).
#[cfg(feature = "alloc")]
#[derive(Default)]
pub struct Writer {
    flags: u32,
    images: alloc::vec::Vec<u8>,
    image_count: u32,
    guests: alloc::vec::Vec<u8>,
    guest_count: u32,
    tenants: alloc::vec::Vec<u8>,
    tenant_count: u32,
}

#[cfg(feature = "alloc")]
impl Writer {
    /// Names the next tenant (the first call names tenant 0).
    pub fn tenant(&mut self, name: &str) {
        put_str(&mut self.tenants, name);
        self.tenant_count += 1;
    }

    pub fn new(flags: u32) -> Self {
        Self { flags, ..Self::default() }
    }

    /// Adds an image and returns its index.
    pub fn image(&mut self, name: &str, data: &[u8]) -> u32 {
        put_str(&mut self.images, name);
        self.images.extend_from_slice(&(data.len() as u64).to_le_bytes());
        self.images.extend_from_slice(data);
        self.image_count += 1;
        self.image_count - 1
    }

    /// Adds a guest entry.
    pub fn guest<S: AsRef<str>>(&mut self, name: &str, image: u32, count: u32, settings: &Settings, args: &[S], start: Start) {
        put_str(&mut self.guests, name);
        self.guests.extend_from_slice(&image.to_le_bytes());
        self.guests.extend_from_slice(&count.to_le_bytes());
        let Settings { memory, weight, cap, tenant, ring_slots, limits } = *settings;
        self.guests.extend_from_slice(&memory.to_le_bytes());
        for v in [weight, cap, tenant, ring_slots] {
            self.guests.extend_from_slice(&v.to_le_bytes());
        }
        let Limits { nic_packets, nic_bytes, nic_broadcasts, console_bytes, notifications } = limits;
        for v in [nic_packets, nic_bytes, nic_broadcasts, console_bytes, notifications] {
            self.guests.extend_from_slice(&v.to_le_bytes());
        }
        self.guests.extend_from_slice(&(args.len() as u32).to_le_bytes());
        for a in args {
            put_str(&mut self.guests, a.as_ref());
        }
        let (tag, entry) = match start {
            Start::Boot => (0u32, 0u32),
            Start::Warm => (1, 0),
            Start::From(e) => (2, e),
        };
        self.guests.extend_from_slice(&tag.to_le_bytes());
        self.guests.extend_from_slice(&entry.to_le_bytes());
        self.guest_count += 1;
    }

    pub fn finish(self) -> alloc::vec::Vec<u8> {
        let mut out = alloc::vec::Vec::with_capacity(24 + self.images.len() + self.guests.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&self.flags.to_le_bytes());
        out.extend_from_slice(&self.image_count.to_le_bytes());
        out.extend_from_slice(&self.images);
        out.extend_from_slice(&self.guest_count.to_le_bytes());
        out.extend_from_slice(&self.guests);
        out.extend_from_slice(&self.tenant_count.to_le_bytes());
        out.extend_from_slice(&self.tenants);
        out
    }
}

#[cfg(feature = "alloc")]
fn put_str(out: &mut alloc::vec::Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

#[cfg(all(test, feature = "alloc"))]
mod tests {
    use super::*;
    use alloc::vec::Vec;

    const LIMITS: Limits = Limits { nic_packets: 1, nic_bytes: 2, nic_broadcasts: 3, console_bytes: 4, notifications: u64::MAX };

    fn sample() -> Vec<u8> {
        let mut w = Writer::new(FLAG_EXIT_WHEN_IDLE);
        let hello = w.image("hello.hermit", b"tar bytes");
        let evil = w.image("evil.hermit", b"");
        w.guest(
            "hello",
            hello,
            3,
            &Settings { memory: 2 << 20, weight: 200, cap: 25, tenant: 7, ring_slots: 8, limits: LIMITS },
            &["a", "b c"],
            Start::Warm,
        );
        w.guest("evil", evil, 1, &Settings { memory: 1 << 20, ..Settings::default() }, &[] as &[&str], Start::From(0));
        w.tenant("default");
        w.tenant("Acme-2");
        w.finish()
    }

    #[test]
    fn round_trip() {
        let buf = sample();
        let b = Bundle::parse(&buf).unwrap();
        assert_eq!(b.flags, FLAG_EXIT_WHEN_IDLE);
        let images: Vec<_> = b.images().collect();
        assert_eq!(images.len(), 2);
        assert_eq!(images[0], Image { name: "hello.hermit", data: b"tar bytes" });
        assert_eq!(images[1].data, b"");
        let guests: Vec<_> = b.guests().collect();
        assert_eq!(guests.len(), 2);
        assert_eq!((guests[0].name, guests[0].image, guests[0].count), ("hello", 0, 3));
        assert_eq!(guests[0].settings, Settings { memory: 2 << 20, weight: 200, cap: 25, tenant: 7, ring_slots: 8, limits: LIMITS });
        assert_eq!(guests[1].settings.limits, Limits::default());
        assert_eq!(guests[1].settings.tenant, TENANT_NONE);
        assert_eq!(guests[0].args().collect::<Vec<_>>(), ["a", "b c"]);
        assert_eq!(guests[1].args().count(), 0);
        assert_eq!((guests[0].start, guests[1].start), (Start::Warm, Start::From(0)));
        assert_eq!(b.tenants().collect::<Vec<_>>(), ["default", "Acme-2"]);
    }

    #[test]
    fn every_truncation_is_an_error() {
        let buf = sample();
        for n in 0..buf.len() {
            assert!(Bundle::parse(&buf[..n]).is_err(), "prefix of {n} bytes parsed");
        }
    }

    #[test]
    fn rejects_bad_magic_trailing_bytes_and_bad_index() {
        let mut buf = sample();
        buf[0] = b'X';
        assert_eq!(Bundle::parse(&buf).unwrap_err(), Error::BadMagic);

        let mut buf = sample();
        buf.push(0);
        assert_eq!(Bundle::parse(&buf).unwrap_err(), Error::TrailingBytes);

        let mut w = Writer::new(0);
        w.guest("x", 5, 1, &Settings { memory: 4096, ..Settings::default() }, &[] as &[&str], Start::Boot);
        assert_eq!(Bundle::parse(&w.finish()).unwrap_err(), Error::BadImageIndex { guest: 0, image: 5 });

        // A clone of itself or of a later entry; a start no one knows.
        let mut w = Writer::new(0);
        let i = w.image("i", b"");
        w.guest("x", i, 1, &Settings::default(), &[] as &[&str], Start::From(0));
        assert_eq!(Bundle::parse(&w.finish()).unwrap_err(), Error::BadTemplate { guest: 0, template: 0 });
        let mut buf = sample();
        // The last entry's start tag (before its index and the tenants).
        let tenants = 4 + (4 + 7) + (4 + 6);
        let at = buf.len() - tenants - 8;
        buf[at] = 3;
        assert_eq!(Bundle::parse(&buf).unwrap_err(), Error::BadStart);
    }

    #[test]
    fn huge_lengths_do_not_panic() {
        let mut buf = Vec::from(&MAGIC[..]);
        buf.extend_from_slice(&0u32.to_le_bytes());
        buf.extend_from_slice(&1u32.to_le_bytes());
        buf.extend_from_slice(&u32::MAX.to_le_bytes()); // name length
        assert_eq!(Bundle::parse(&buf).unwrap_err(), Error::Truncated);
    }
}
