//! The targets' bodies and their seeds.

pub mod acpi;
pub mod control;
pub mod csum;
pub mod gzip;
pub mod hypercall;
pub mod image;
pub mod manifest;
pub mod ring;
pub mod snapshot;
pub mod switch;
