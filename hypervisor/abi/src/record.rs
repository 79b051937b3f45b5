//! How the records shared with guests become bytes: every field
//! little-endian at its `#[repr(C)]` offset (`offset_of!`), the padding (there
//! is none; the offset tests pin every field) zero. [`crate::StartInfo`],
//! [`crate::NicInfo`] and [`crate::time::TimeInfo`] are written this way
//! by the hypervisor into guest pages, and read by guests through the same
//! `#[repr(C)]` struct, so the two sides cannot disagree on a layout.

/// A field of a shared record: its little-endian bytes.
pub trait Field: Sized {
    fn put(&self, out: &mut [u8]);
    /// The field read back from the start of `bytes`.
    fn get(bytes: &[u8]) -> Self;
}

impl Field for u32 {
    fn put(&self, out: &mut [u8]) {
        out[..4].copy_from_slice(&self.to_le_bytes());
    }
    fn get(bytes: &[u8]) -> Self {
        Self::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])
    }
}

impl Field for u64 {
    fn put(&self, out: &mut [u8]) {
        out[..8].copy_from_slice(&self.to_le_bytes());
    }
    fn get(bytes: &[u8]) -> Self {
        let mut b = [0u8; 8];
        b.copy_from_slice(&bytes[..8]);
        Self::from_le_bytes(b)
    }
}

impl<const N: usize> Field for [u8; N] {
    fn put(&self, out: &mut [u8]) {
        out[..N].copy_from_slice(self);
    }
    fn get(bytes: &[u8]) -> Self {
        let mut b = [0u8; N];
        b.copy_from_slice(&bytes[..N]);
        b
    }
}

/// Gives a `#[repr(C)]` record `SIZE` and `to_bytes`, writing the listed
/// fields (all of them) at their offsets.
macro_rules! shared_record {
    ($ty:ty { $($field:ident),* $(,)? }) => {
        impl $ty {
            /// Size of the record in bytes.
            pub const SIZE: usize = core::mem::size_of::<$ty>();

            /// The record's bytes exactly as `#[repr(C)]` lays it out
            /// (little endian), for the hypervisor to copy into a guest page.
            pub fn to_bytes(&self) -> [u8; Self::SIZE] {
                let mut out = [0u8; Self::SIZE];
                $( $crate::record::Field::put(&self.$field, &mut out[core::mem::offset_of!($ty, $field)..]); )*
                out
            }

            /// The record `to_bytes` wrote as `bytes`.
            pub fn from_bytes(bytes: &[u8; Self::SIZE]) -> Self {
                Self { $( $field: $crate::record::Field::get(&bytes[core::mem::offset_of!($ty, $field)..]), )* }
            }
        }
    };
}

pub(crate) use shared_record;
