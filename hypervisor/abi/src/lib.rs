//! The contract between the hypervisor and its guests, and between `xtask`
//! and the hypervisor.
//!
//! Everything both sides must agree on lives here and nowhere else:
//! hypercall numbers and results ([`Hypercall`], [`HcError`]), the guest's
//! virtual memory layout ([`layout`]), the start-info page ([`StartInfo`]),
//! the ELF note that stamps an image with the ABI it was built for
//! ([`note`]), and the bundle that carries the manifest and the images into
//! the hypervisor at boot ([`bundle`]), and the names a guest packaged as
//! an OCI image carries for the containerd runtime ([`oci`]). Why a guest was stopped is a
//! [`stop::StopReason`]. With the `alloc` feature: the control protocol
//! (`control`: requests, answers, errors) and the records the hypervisor
//! prints for programs (`report`), serializable with the `serde` feature.
//! `docs/abi.md` and `docs/control.md` describe them for people.
//!
//! The crate is `no_std` and tested on the host; its only `unsafe` is the
//! `RingMemory` trait, whose implementors promise to stay in bounds.
#![no_std]
#![forbid(unsafe_code)]

#[cfg(feature = "alloc")]
extern crate alloc;

pub mod backtrace;
pub mod bundle;
#[cfg(feature = "alloc")]
pub mod control;
pub mod layout;
pub mod note;
pub mod oci;
mod record;
#[cfg(feature = "alloc")]
pub mod report;
pub mod ring;
pub mod snapshot;
pub mod stop;
pub mod time;
mod wire;

/// Version of this contract. Images carry the version they were built
/// against in an ELF note ([`note`]); the hypervisor refuses any other.
pub const ABI_VERSION: u32 = 10;

/// Hypercall numbers, passed in `rax` to `syscall`.
///
/// Arguments go in `rdi`, `rsi`, `rdx`, `r10`, `r8`, `r9` (the Linux
/// convention: `rcx` and `r11` are clobbered by `syscall`). The result comes
/// back in `rax`: a value `>= 0` on success, or `-(HcError as i64)`.
///
/// A hypercall with an unknown number, or with a pointer or length that does
/// not lie inside the caller's own mappings, stops the caller: a guest that
/// sends garbage is broken or hostile, and an error code would only let it
/// probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u64)]
pub enum Hypercall {
    /// `console_write(ptr, len)`: write `len` bytes at `ptr` to the guest's
    /// console. Returns the number of bytes taken (always `len`).
    ConsoleWrite = 1,
    /// `exit(code)`: stop the calling guest with exit code `code` (an `i32`
    /// in `edi`). Does not return.
    Exit = 2,
    /// `yield()`: give the CPU to the next runnable guest. Returns 0.
    Yield = 3,
    /// `block(deadline_ns)`: sleep until an event bit is set in the event
    /// page or the monotonic clock reaches `deadline_ns` (`u64::MAX`: no
    /// deadline). Returns at once if an event is already pending or the
    /// deadline has passed (then `time::events::TIMER` is set). Returns the
    /// pending event bits.
    Block = 4,
    /// `nop()`: does nothing and returns 0; the cost of a hypercall round
    /// trip (`cargo xtask bench hypercall`).
    Nop = 5,
    /// `net_kick()`: forward the frames waiting in the guest's TX ring now
    /// (they are also forwarded whenever the guest blocks, yields or is
    /// preempted, so a guest about to block need not kick). Returns 0.
    NetKick = 6,
    /// `discard(addr, len)`: the caller no longer needs the contents of
    /// the whole pages in `[addr, addr + len)`, which must be page-aligned
    /// and inside its heap: the hypervisor takes their frames back (no
    /// longer charged to the guest) and the pages read as zero on the next
    /// touch, like `madvise(MADV_DONTNEED)`. The libos's allocator uses it
    /// so that big zeroed buffers (socket buffers) cost nothing until used
    /// and freed ones return their memory. Returns the bytes given back.
    Discard = 7,
}

impl TryFrom<u64> for Hypercall {
    type Error = u64;

    fn try_from(nr: u64) -> Result<Self, u64> {
        Ok(match nr {
            1 => Self::ConsoleWrite,
            2 => Self::Exit,
            3 => Self::Yield,
            4 => Self::Block,
            5 => Self::Nop,
            6 => Self::NetKick,
            7 => Self::Discard,
            other => return Err(other),
        })
    }
}

impl Hypercall {
    /// The name used in lifecycle lines and docs.
    pub const fn name(self) -> &'static str {
        match self {
            Self::ConsoleWrite => "console_write",
            Self::Exit => "exit",
            Self::Yield => "yield",
            Self::Block => "block",
            Self::Nop => "nop",
            Self::NetKick => "net_kick",
            Self::Discard => "discard",
        }
    }
}

/// Error results of a hypercall, returned negated in `rax`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(i64)]
pub enum HcError {
    /// An argument is out of range (not a pointer problem: those stop the guest).
    Invalid = 22,
}

/// Largest single `console_write`; longer writes are split by the libos.
pub const CONSOLE_WRITE_MAX: usize = 4096;

/// The start-info record the hypervisor writes into every guest's read-only
/// start page at [`layout::START_INFO`], after hermit-entry's `RawBootInfo`.
///
/// Strings are given as guest virtual address + length and point into the
/// same read-only page.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct StartInfo {
    /// [`START_MAGIC`].
    pub magic: u64,
    /// [`ABI_VERSION`] of the hypervisor that started the guest.
    pub abi_version: u32,
    /// Number of application arguments in the `args` blob.
    pub argc: u32,
    /// Zero since ABI 9: the instance name (e.g. `hello-0`) is in the
    /// shared page ([`layout::EVENT_NAME_OFFSET`]), where a clone's own
    /// is, the start page being its template's.
    pub name_addr: u64,
    pub name_len: u64,
    /// Application arguments, each terminated by a NUL byte.
    pub args_addr: u64,
    pub args_len: u64,
    /// The heap: zero-filled, read-write memory, given on first touch.
    pub heap_start: u64,
    pub heap_len: u64,
    /// The stack the guest was entered on (`rsp` starts at `stack_top`).
    pub stack_bottom: u64,
    pub stack_top: u64,
    /// The guest's memory limit in bytes (image, heap, stack and page tables).
    pub memory_limit: u64,
    /// Environment variables, `KEY=VALUE` each, NUL-terminated, after the
    /// arguments in the same page. Added within ABI 4: a hypervisor from
    /// before leaves these zero (no environment), which the page's zero
    /// fill means.
    pub env_addr: u64,
    pub env_len: u64,
    pub envc: u32,
    pub reserved: u32,
}

record::shared_record!(StartInfo {
    magic,
    abi_version,
    argc,
    name_addr,
    name_len,
    args_addr,
    args_len,
    heap_start,
    heap_len,
    stack_bottom,
    stack_top,
    memory_limit,
    env_addr,
    env_len,
    envc,
    reserved,
});

/// The guest's network configuration, in the shared page at
/// [`layout::EVENT_NIC_OFFSET`] (all zero when the guest has no vNIC). The
/// rings are at [`layout::NIC_TX_RING`] and [`layout::NIC_RX_RING`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct NicInfo {
    /// [`NIC_MAGIC`] when the guest has a vNIC.
    pub magic: u32,
    /// IPv4 prefix length.
    pub prefix: u32,
    /// MAC address (6 bytes, then 2 zero bytes).
    pub mac: [u8; 8],
    pub ipv4: [u8; 4],
    pub gateway: [u8; 4],
    /// Slots in each ring (`ring::valid_slots`).
    pub ring_slots: u32,
    /// The largest frame (Ethernet header included, no FCS) the guest may
    /// send and will receive: `ring::max_frame(ring_slots)`.
    pub mtu: u32,
}

pub const NIC_MAGIC: u32 = u32::from_le_bytes(*b"NIC1");

/// Tenants are numbered 0..MAX_TENANTS: the number is the second octet of
/// the tenant's network.
pub const MAX_TENANTS: u32 = 256;
/// Guests with a vNIC per tenant: `10.T.0.2` to `10.T.255.254`.
pub const MAX_TENANT_HOSTS: u32 = 65_533;

/// Prefix length of every tenant's network, `10.T.0.0/16`.
pub const GUEST_PREFIX: u32 = 16;

/// The address of the `n`-th guest (from 0, in manifest order) with a vNIC
/// in tenant `t`: `10.T.0.2` onwards. Shared by the hypervisor, which
/// assigns it, and xtask, which forwards host ports to it.
pub const fn guest_ipv4(tenant: u32, n: u32) -> [u8; 4] {
    let h = n + 2;
    [10, tenant as u8, (h >> 8) as u8, h as u8]
}

/// Tenant `t`'s gateway, `10.T.0.1` (QEMU's side of the uplink for tenant 0).
pub const fn gateway_ipv4(tenant: u32) -> [u8; 4] {
    [10, tenant as u8, 0, 1]
}

record::shared_record!(NicInfo { magic, prefix, mac, ipv4, gateway, ring_slots, mtu });

/// Value of [`StartInfo::magic`].
pub const START_MAGIC: u64 = u64::from_le_bytes(*b"HVSTART1");

/// Status values the hypervisor writes to QEMU's `isa-debug-exit` port.
///
/// QEMU exits with `(value << 1) | 1`, so neither can be mistaken for QEMU's
/// own failure status 1.
pub mod debug_exit {
    /// I/O port of the `isa-debug-exit` device (`iobase=0xf4,iosize=0x04`).
    pub const PORT: u16 = 0xf4;
    /// Every guest is gone and the hypervisor is healthy.
    pub const SUCCESS: u8 = 0x10;
    /// The hypervisor itself failed (panic, bad bundle, CPU exception in ring 0).
    pub const FAILURE: u8 = 0x11;
    /// QEMU's process exit status for [`SUCCESS`].
    pub const fn qemu_status(value: u8) -> i32 {
        ((value as i32) << 1) | 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hypercall_numbers_round_trip() {
        for hc in [
            Hypercall::ConsoleWrite,
            Hypercall::Exit,
            Hypercall::Yield,
            Hypercall::Block,
            Hypercall::Nop,
            Hypercall::NetKick,
            Hypercall::Discard,
        ] {
            assert_eq!(Hypercall::try_from(hc as u64), Ok(hc));
        }
        assert_eq!(Hypercall::try_from(0), Err(0));
        assert_eq!(Hypercall::try_from(u64::MAX), Err(u64::MAX));
    }

    /// Reads the `u64` at `at` of `b`.
    fn u64_at(b: &[u8], at: usize) -> u64 {
        u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
    }

    fn u32_at(b: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
    }

    /// The offsets are the ABI: guests built against it read these bytes.
    #[test]
    fn start_info_offsets_are_pinned_and_its_bytes_follow_them() {
        use core::mem::offset_of;
        // 88 bytes until the environment was added (within ABI 4: an older
        // hypervisor leaves those bytes zero, which reads as no environment).
        assert_eq!(StartInfo::SIZE, 112);
        let offsets = [
            offset_of!(StartInfo, magic),
            offset_of!(StartInfo, abi_version),
            offset_of!(StartInfo, argc),
            offset_of!(StartInfo, name_addr),
            offset_of!(StartInfo, name_len),
            offset_of!(StartInfo, args_addr),
            offset_of!(StartInfo, args_len),
            offset_of!(StartInfo, heap_start),
            offset_of!(StartInfo, heap_len),
            offset_of!(StartInfo, stack_bottom),
            offset_of!(StartInfo, stack_top),
            offset_of!(StartInfo, memory_limit),
            offset_of!(StartInfo, env_addr),
            offset_of!(StartInfo, env_len),
        ];
        assert_eq!(offsets, [0, 8, 12, 16, 24, 32, 40, 48, 56, 64, 72, 80, 88, 96]);
        assert_eq!((offset_of!(StartInfo, envc), offset_of!(StartInfo, reserved), StartInfo::SIZE), (104, 108, 112));
        let si = StartInfo {
            magic: 1,
            abi_version: 2,
            argc: 3,
            name_addr: 4,
            name_len: 5,
            args_addr: 6,
            args_len: 7,
            heap_start: 8,
            heap_len: 9,
            stack_bottom: 10,
            stack_top: 11,
            memory_limit: 12,
            env_addr: 13,
            env_len: 14,
            envc: 15,
            reserved: 16,
        };
        let b = si.to_bytes();
        assert_eq!((u64_at(&b, 0), u32_at(&b, 8), u32_at(&b, 12)), (1, 2, 3));
        assert_eq!((u32_at(&b, 104), u32_at(&b, 108)), (15, 16));
        for (i, at) in offsets[3..].iter().enumerate() {
            assert_eq!(u64_at(&b, *at), 4 + i as u64, "field at {at}");
        }
    }

    #[test]
    fn nic_info_offsets_are_pinned_and_its_bytes_follow_them() {
        use core::mem::offset_of;
        assert_eq!(NicInfo::SIZE, 32);
        assert_eq!(
            [
                offset_of!(NicInfo, magic),
                offset_of!(NicInfo, prefix),
                offset_of!(NicInfo, mac),
                offset_of!(NicInfo, ipv4),
                offset_of!(NicInfo, gateway),
                offset_of!(NicInfo, ring_slots),
                offset_of!(NicInfo, mtu),
            ],
            [0, 4, 8, 16, 20, 24, 28]
        );
        let n = NicInfo {
            magic: NIC_MAGIC,
            prefix: 16,
            mac: [2, 0, 0, 0, 0, 9, 0, 0],
            ipv4: [10, 1, 0, 2],
            gateway: [10, 1, 0, 1],
            ring_slots: 32,
            mtu: 7,
        };
        let b = n.to_bytes();
        assert_eq!(&b[0..4], b"NIC1");
        assert_eq!(u32_at(&b, 4), 16);
        assert_eq!(&b[8..16], &[2, 0, 0, 0, 0, 9, 0, 0]);
        assert_eq!((&b[16..20], &b[20..24]), (&[10, 1, 0, 2][..], &[10, 1, 0, 1][..]));
        assert_eq!((u32_at(&b, 24), u32_at(&b, 28)), (32, 7));
    }

    #[test]
    fn debug_exit_statuses_are_distinct_from_qemu_failure() {
        assert_eq!(debug_exit::qemu_status(debug_exit::SUCCESS), 33);
        assert_eq!(debug_exit::qemu_status(debug_exit::FAILURE), 35);
    }
}
