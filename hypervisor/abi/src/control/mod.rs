//! The control channel's protocol: the requests a client sends, one line
//! each ([`Request`], read by [`parse`]), and the one-line JSON answers the
//! hypervisor sends back ([`Response`]). `docs/control.md` describes it for
//! people; this module is the contract the hypervisor writes and xtask, the
//! tests and any other client read.
//!
//! Errors: a request refused is answered
//! `{"error":"SENTENCE","kind":"KIND"}`: the `Display` of a
//! [`ControlError`] for people, and its [`ErrorKind`] for programs, which
//! decide on the kind and never on the sentence's words.

mod request;

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

pub use request::{Request, RequestError, StartOptions, Tenant, from_hex, good_name, good_tenant_name, parse, parse_tenant, write_hex};

use crate::report::{GuestRow, GuestState, GuestStats, MachineStats};
use crate::stop::StopReason;

#[cfg(feature = "serde")]
use serde::{Deserialize, Serialize};

/// Version of this protocol, answered by `version` beside
/// [`crate::ABI_VERSION`]. 1 was the protocol before it had a number;
/// 2 added `version` and the `exit_code` and `stop_reason` of
/// `guest_stats`; 3 added the `kind` of error answers; 4 added image
/// digests and `image-remove`, `start` options and named tenants,
/// `tenants`, `tenant-remove`, `wait`, `events` and `console`; 5: `remove`
/// (an ended guest's record is kept until removed, or until its room is
/// needed: guest names and room are reused); 6: `pause`, `resume`,
/// `clone` and the `paused` state; 7: `snapshot`, `restore-begin`,
/// `restore-end` (`crate::snapshot`).
pub const PROTOCOL_VERSION: u32 = 7;

/// Clients a hypervisor serves at once on a virtio console (a port each:
/// `run --detach` makes the sockets `control.sock`, `control-1.sock`, ...);
/// a UART channel serves one. Eight: a node's shim, a metrics scraper,
/// `ctl events`, `ctl logs -f` and the operator's own `ctl` leave room.
/// Each port costs the hypervisor 192 KiB of queue buffers.
pub const CLIENTS_MAX: usize = 8;

/// The file name of control socket `i` (below [`CLIENTS_MAX`]) in a
/// detached hypervisor's directory, as `run --detach` makes them:
/// `control.sock`, then `control-1.sock`, ... (a hypervisor on COM2 has
/// the first only).
pub fn socket_name(i: usize) -> String {
    match i {
        0 => String::from("control.sock"),
        i => alloc::format!("control-{i}.sock"),
    }
}

/// Most console lines waiting for the channel; past it lines are dropped
/// and counted (a `lines_dropped` record says how many). `event` records
/// are never dropped.
pub const PUSHED_LINES_MAX: usize = 1024;

/// Longest request line (an `image-data` line of [`CHUNK_MAX`] bytes in hex
/// fits); longer ones are refused whole.
pub const LINE_MAX: usize = 8448;
/// Most bytes one `image-data` line carries.
pub const CHUNK_MAX: usize = 4096;
/// Most arguments `start` passes.
pub const ARGS_MAX: usize = 16;
/// Most environment variables a `start` may give a guest (`env=` options;
/// all of them share the start page with the name and arguments).
pub const ENV_MAX: usize = 64;
/// Largest image an upload may announce (64 MiB).
pub const IMAGE_BYTES_MAX: usize = 64 << 20;
/// Largest snapshot a `restore-begin` may announce (1 GiB; the
/// hypervisor's heap must also have room for it).
pub const SNAPSHOT_BYTES_MAX: usize = 1 << 30;
/// A request line, or an upload, quiet for this long is dropped.
pub const STALL_NS: u64 = 5_000_000_000;

/// Why the hypervisor refused a request; the `Display` is the sentence of
/// the `error` answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ControlError {
    /// The line is not a valid request.
    Request(RequestError),
    /// Half a line, then nothing for [`STALL_NS`].
    RequestTimedOut,
    /// An upload with no `image-data` for [`STALL_NS`].
    UploadTimedOut,
    /// As many images are loaded as the hypervisor holds.
    NoImageSlot,
    /// The hypervisor's heap has no room for the announced length.
    NoHeapRoom,
    /// `image-end` after more or fewer bytes than `image-begin` announced.
    UploadLength,
    /// `image-end` with no upload.
    NoUpload,
    /// The uploaded image is not one the hypervisor can run.
    ImageRejected { name: String, why: String },
    /// The uploaded snapshot (protocol 7) was refused: malformed, altered,
    /// of another ABI, for an image not loaded, or no room for the guest.
    SnapshotRejected { name: String, why: String },
    /// Too many requests sent behind a `clone` of many that is still
    /// being made (protocol 7): this one was not handled.
    Busy,
    /// A snapshot going out was dropped: the client read none of it for
    /// [`STALL_NS`] (protocol 7).
    DownloadTimedOut,
    /// The hypervisor refused `start`, `stop` or `capture`, for the reason
    /// given (no such guest, no memory, ...).
    Refused(Refusal),
}

/// A refused request: the sentence, and (protocol 5) what it was about,
/// for programs, where one of the [`Reason`]s says it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub why: String,
    pub reason: Option<Reason>,
}

impl Refusal {
    pub fn new(reason: Reason, why: String) -> Self {
        Self { why, reason: Some(reason) }
    }
}

impl From<String> for Refusal {
    fn from(why: String) -> Self {
        Self { why, reason: None }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.why)
    }
}

/// What a refusal was about (an error answer's `reason`, in snake case;
/// absent where none of these says it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(Serialize, Deserialize), serde(rename_all = "snake_case"))]
pub enum Reason {
    /// No guest, image or tenant of that name.
    NotFound,
    /// A guest of that name exists (live, or ended and not removed).
    Exists,
    /// The guest has ended (`stop`, `console`).
    Ended,
    /// The guest has not ended yet (`remove`).
    NotEnded,
    /// The guest is not paused (`clone`'s template, `resume`), or not
    /// yet: a pause takes effect at its next exit.
    NotPaused,
    /// Guests use it (`image-remove`, `tenant-remove`), or another image
    /// has that name (`image-end`).
    InUse,
    /// No room: for another guest, in the hypervisor's heap, or for an
    /// address or a tenant number.
    NoRoom,
}

/// What kind of refusal an error answer is (its `kind` on the wire, in
/// snake case): the part of a [`ControlError`] a program decides on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(Serialize, Deserialize), serde(rename_all = "snake_case"))]
pub enum ErrorKind {
    /// No kind given: the answer of a protocol 2 hypervisor, which sends
    /// only the sentence (ours always sends a kind).
    #[default]
    Unspecified,
    /// [`ControlError::Request`]: the line is not a valid request.
    BadRequest,
    RequestTimedOut,
    UploadTimedOut,
    NoImageSlot,
    NoHeapRoom,
    UploadLength,
    NoUpload,
    ImageRejected,
    SnapshotRejected,
    Busy,
    DownloadTimedOut,
    /// [`ControlError::Refused`]: `start`, `stop` or `capture` refused.
    Refused,
    /// The hypervisor could not write its answer (a bug; never expected).
    Internal,
}

impl ControlError {
    /// Its kind, for programs.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Request(_) => ErrorKind::BadRequest,
            Self::RequestTimedOut => ErrorKind::RequestTimedOut,
            Self::UploadTimedOut => ErrorKind::UploadTimedOut,
            Self::NoImageSlot => ErrorKind::NoImageSlot,
            Self::NoHeapRoom => ErrorKind::NoHeapRoom,
            Self::UploadLength => ErrorKind::UploadLength,
            Self::NoUpload => ErrorKind::NoUpload,
            Self::ImageRejected { .. } => ErrorKind::ImageRejected,
            Self::SnapshotRejected { .. } => ErrorKind::SnapshotRejected,
            Self::Busy => ErrorKind::Busy,
            Self::DownloadTimedOut => ErrorKind::DownloadTimedOut,
            Self::Refused(_) => ErrorKind::Refused,
        }
    }
}

impl From<RequestError> for ControlError {
    fn from(e: RequestError) -> Self {
        Self::Request(e)
    }
}

impl fmt::Display for ControlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Request(e) => write!(f, "{e}"),
            Self::RequestTimedOut => f.write_str("request timed out: no end of line within 5 s"),
            Self::UploadTimedOut => f.write_str("upload timed out: no image-data within 5 s; begin again"),
            Self::NoImageSlot => f.write_str("no room for another image (the most are loaded already)"),
            Self::NoHeapRoom => f.write_str("the hypervisor's heap has no room for that image now"),
            Self::UploadLength => f.write_str("the upload did not match its length"),
            Self::NoUpload => f.write_str("no upload in progress (image-begin or restore-begin first)"),
            Self::ImageRejected { name, why } => write!(f, "image {name} rejected: {why}"),
            Self::SnapshotRejected { name, why } => write!(f, "snapshot for {name} rejected: {why}"),
            Self::Busy => f.write_str("busy: 64 requests wait behind a clone being made; this one was not handled"),
            Self::DownloadTimedOut => f.write_str("snapshot dropped: the client took none of it for 5 s"),
            Self::Refused(r) => f.write_str(&r.why),
        }
    }
}

/// One answer line. Each kind has its own keys (the JSON carries no tag),
/// so a reader knows an answer by them.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(Serialize, Deserialize), serde(untagged))]
pub enum Response {
    /// `version`: `{"protocol":7,"abi":10}`.
    Version { protocol: u32, abi: u32 },
    /// `stats`: every guest not on a CPU at that instant, and the machine.
    Stats { guests: Vec<GuestStats>, machine: MachineStats },
    /// `list`: every guest created so far.
    Guests { guests: Vec<GuestRow> },
    /// `images`: the names of the images loaded (the bundle's, then
    /// uploads), and (protocol 4) each with its digest and users.
    Images {
        images: Vec<String>,
        #[cfg_attr(feature = "serde", serde(default))]
        loaded: Vec<ImageInfo>,
    },
    /// `image-begin`: the upload may go on.
    Receiving { receiving: String },
    /// `image-end`: the image is validated and loaded, or was already
    /// (under this name and digest: an upload of bytes already loaded
    /// loads nothing).
    Image {
        image: String,
        #[cfg_attr(feature = "serde", serde(default))]
        digest: Option<String>,
    },
    /// `image-remove`: the image is unloaded.
    ImageRemoved { image_removed: String },
    /// `start`: the guest is created and runnable; its IPv4 address
    /// (`"10.T.0.N"`) if it has a vNIC, and (protocol 4) its tenant.
    Started {
        started: String,
        ip: Option<String>,
        #[cfg_attr(feature = "serde", serde(default))]
        tenant: Option<u32>,
    },
    /// `tenants`: every tenant that has a name or has had a guest.
    Tenants { tenants: Vec<TenantRow> },
    /// `tenant-remove`: the name is forgotten (its number is not reused).
    TenantRemoved { tenant_removed: String },
    /// `events` or `console NAME`: records follow as things happen.
    Watching { watching: String },
    /// A guest started or ended (for `events`, `wait`, `console` and
    /// `start ... watch`).
    Event(GuestEvent),
    /// A line guest `console` wrote (for `console` and `start ... watch`),
    /// without the console's `NAME| ` prefix.
    Console { console: String, line: String },
    /// Console lines dropped because the channel fell behind.
    LinesDropped { lines_dropped: u64 },
    /// `stop`: the guest is marked; it ends at its next exit.
    Stopped { stopped: String },
    /// `remove`: the ended guest's record is forgotten (its name is free).
    Removed { removed: String },
    /// `pause`: the guest is marked; it leaves the CPUs at its next exit
    /// (`list` says `paused` once it has).
    Pausing { pausing: String },
    /// `resume`: the paused guest is runnable again.
    Resumed { resumed: String },
    /// `clone`: `cloned` guests were made, named `first` (and, for a
    /// count, on: `NAME-0` .. `NAME-(cloned-1)`), their addresses
    /// following `ip` in the tenant's order; `error` says why fewer than
    /// asked were made, if so.
    Cloned {
        cloned: u32,
        first: String,
        ip: Option<String>,
        tenant: Option<u32>,
        #[cfg_attr(feature = "serde", serde(default, skip_serializing_if = "Option::is_none"))]
        error: Option<String>,
    },
    /// `snapshot` (protocol 7): the paused guest's state, `bytes` long
    /// with this SHA-256 (`sha256:HEX`), follows in `snapshot_data`
    /// records, in order.
    Snapshot { snapshot: String, bytes: u64, digest: String },
    /// The next part of a snapshot, in hex (at most [`CHUNK_MAX`] bytes).
    SnapshotData { snapshot_data: String },
    /// `restore-end` (protocol 7): the guest is created from the snapshot
    /// and runnable; its address if it has a vNIC, and its tenant.
    Restored { restored: String, ip: Option<String>, tenant: Option<u32> },
    /// `capture`: frames follow.
    Capturing { capturing: String },
    /// A captured frame (hex), with the wall-clock time it passed.
    Frame { wall_ns: u64, frame: String },
    /// The capture ended: frames sent, and dropped past the backlog.
    Captured { captured: u64, dropped: u64 },
    /// Any refused request: a [`ControlError`]'s sentence and kind.
    Error {
        error: String,
        #[cfg_attr(feature = "serde", serde(default))]
        kind: ErrorKind,
        /// What a `refused` answer was about (protocol 5), if a [`Reason`]
        /// says it.
        #[cfg_attr(feature = "serde", serde(default, skip_serializing_if = "Option::is_none"))]
        reason: Option<Reason>,
    },
}

impl From<ControlError> for Response {
    fn from(e: ControlError) -> Self {
        use alloc::string::ToString;
        let reason = match &e {
            ControlError::Refused(r) => r.reason,
            _ => None,
        };
        Response::Error { error: e.to_string(), kind: e.kind(), reason }
    }
}

/// An IPv4 address as the answers write it: `10.0.0.2`.
fn dotted(a: [u8; 4]) -> String {
    alloc::format!("{}.{}.{}.{}", a[0], a[1], a[2], a[3])
}

impl Response {
    /// The answer to `version`.
    pub const fn version() -> Self {
        Response::Version { protocol: PROTOCOL_VERSION, abi: crate::ABI_VERSION }
    }

    /// A frame answer for `bytes` seen at `wall_ns`.
    pub fn frame(wall_ns: u64, bytes: &[u8]) -> Self {
        let mut frame = String::with_capacity(2 * bytes.len());
        let _ = write_hex(&mut frame, bytes);
        Response::Frame { wall_ns, frame }
    }

    /// A `started` answer; `ip` is the guest's address if it has a vNIC.
    pub fn started(name: &str, ip: Option<[u8; 4]>, tenant: Option<u32>) -> Self {
        Response::Started { started: name.into(), ip: ip.map(dotted), tenant }
    }

    /// A `restored` answer; `ip` is the guest's address if it has a vNIC.
    pub fn restored(name: &str, ip: Option<[u8; 4]>, tenant: Option<u32>) -> Self {
        Response::Restored { restored: name.into(), ip: ip.map(dotted), tenant }
    }

    /// A `cloned` answer: `count` made, the first named `first` at `ip`
    /// (if they have a vNIC) in `tenant`, and why fewer than asked, if so.
    pub fn cloned(count: u32, first: String, ip: Option<[u8; 4]>, tenant: Option<u32>, error: Option<String>) -> Self {
        Response::Cloned { cloned: count, first, ip: ip.map(dotted), tenant, error }
    }

    /// Whether this is a record the hypervisor pushes on its own (an
    /// `event`, `console`, `lines_dropped` or captured `frame` record),
    /// rather than the answer to a request: a client waiting for an
    /// answer skips these (or handles them) and reads on.
    pub fn is_pushed(&self) -> bool {
        matches!(
            self,
            Response::Event(_)
                | Response::Console { .. }
                | Response::LinesDropped { .. }
                | Response::Frame { .. }
                | Response::SnapshotData { .. }
        )
    }
}

/// A loaded image (`images`).
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(Serialize, Deserialize))]
pub struct ImageInfo {
    pub name: String,
    /// `sha256:` and the SHA-256 of the image file, in lowercase hex.
    pub digest: String,
    /// The image file's size.
    pub bytes: u64,
    /// Guests not yet ended that run it.
    pub guests: u32,
}

/// A tenant (`tenants`).
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(Serialize, Deserialize))]
pub struct TenantRow {
    /// Its name, if it has one (the manifest's tenants and those `start`
    /// named have one).
    pub name: Option<String>,
    /// Its number: the `T` of its guests' addresses `10.T.0.N`.
    pub id: u32,
    /// Guests not yet ended in it.
    pub guests: u32,
}

/// What happened to a guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(Serialize, Deserialize), serde(rename_all = "snake_case"))]
pub enum EventKind {
    Started,
    Ended,
}

/// An `event` record: `{"event":"ended","guest":"web","state":"exited",
/// "exit_code":0,"stop_reason":null}`.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(Serialize, Deserialize))]
pub struct GuestEvent {
    pub event: EventKind,
    pub guest: String,
    /// `waiting` when it started; `exited` or `stopped` when it ended.
    pub state: GuestState,
    /// Its exit code, if it exited.
    pub exit_code: Option<i32>,
    /// Why the hypervisor stopped it, if it did.
    pub stop_reason: Option<StopReason>,
}

#[cfg(all(test, feature = "serde"))]
mod tests;
