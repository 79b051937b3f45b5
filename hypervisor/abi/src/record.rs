//! How the records shared with guests become bytes: every field
//! little-endian at its `#[repr(C)]` offset (`offset_of!`), the padding (there
//! is none; the offset tests pin every field) zero. [`crate::StartInfo`],
//! [`crate::NicInfo`] and [`crate::time::TimeInfo`] are written this way
//! by the hypervisor into guest pages, and read by guests through the same
//! `#[repr(C)]` struct, so the two sides cannot disagree on a layout.

/// A field of a shared record: its little-endian bytes.
pub trait Field {
    fn put(&self, out: &mut [u8]);
}

impl Field for u32 {
    fn put(&self, out: &mut [u8]) {
        out[..4].copy_from_slice(&self.to_le_bytes());
    }
}

impl Field for u64 {
    fn put(&self, out: &mut [u8]) {
        out[..8].copy_from_slice(&self.to_le_bytes());
    }
}

impl<const N: usize> Field for [u8; N] {
    fn put(&self, out: &mut [u8]) {
        out[..N].copy_from_slice(self);
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
        }
    };
}

pub(crate) use shared_record;
