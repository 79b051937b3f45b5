//! The one thing we read from the DSDT's AML without an interpreter: the
//! `\_S5_` object, whose first two elements are the SLP_TYPa and SLP_TYPb
//! values that turn the machine off (written with SLP_EN to the PM1a and
//! PM1b control blocks).
//!
//! The usual pattern search (as in many small kernels): NameOp (0x08),
//! optionally a root prefix `\`, the name `_S5_`, then PackageOp (0x12),
//! PkgLength, NumElements and the elements, each ZeroOp (0x00), OneOp
//! (0x01) or an integer prefix and its bytes; every byte is bounds-checked
//! against the package's length and the table's.

use super::{ErrorKind, HEADER_LEN};

const NAME_OP: u8 = 0x08;
const ROOT_CHAR: u8 = b'\\';
const PACKAGE_OP: u8 = 0x12;
const ZERO_OP: u8 = 0x00;
const ONE_OP: u8 = 0x01;
const BYTE_PREFIX: u8 = 0x0a;
const WORD_PREFIX: u8 = 0x0b;
const DWORD_PREFIX: u8 = 0x0c;

/// The values of `\_S5_`: SLP_TYPa for PM1a, SLP_TYPb for PM1b.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SleepType {
    pub a: u8,
    pub b: u8,
}

/// Finds `Name (_S5_, Package () {a, b, ...})` in a DSDT (or SSDT) given
/// whole, header included; error offsets are into the table.
pub fn find_s5(table: &[u8]) -> Result<SleepType, ErrorKind> {
    let aml = table.get(HEADER_LEN..).unwrap_or_default();
    let named = |i: usize| {
        let before = aml.get(..i).unwrap_or_default();
        before.ends_with(&[NAME_OP]) || before.ends_with(&[NAME_OP, ROOT_CHAR])
    };
    let (i, _) = aml.windows(4).enumerate().find(|&(i, w)| w == b"_S5_" && named(i)).ok_or(ErrorKind::NoS5)?;
    package(aml, i + 4).ok_or(ErrorKind::BadS5 { offset: HEADER_LEN + i })
}

/// The first two integers of the package at `at`, if it is one.
fn package(aml: &[u8], at: usize) -> Option<SleepType> {
    if *aml.get(at)? != PACKAGE_OP {
        return None;
    }
    let (length, len_bytes) = pkg_length(aml.get(at + 1..)?)?;
    // PkgLength counts itself and what follows it, to the package's end.
    let body = aml.get(at + 1..at + 1 + length)?.get(len_bytes..)?;
    let (&count, mut elements) = body.split_first()?;
    if count < 2 {
        return None;
    }
    let a = integer(&mut elements)?;
    let b = integer(&mut elements)?;
    Some(SleepType { a, b })
}

/// Decodes a PkgLength: (its value, the bytes it takes).
fn pkg_length(b: &[u8]) -> Option<(usize, usize)> {
    let lead = *b.first()?;
    let follow = usize::from(lead >> 6);
    if follow == 0 {
        return Some((usize::from(lead & 0x3f), 1));
    }
    let more = b.get(1..=follow)?.iter().enumerate().fold(0, |v, (k, &x)| v | usize::from(x) << (4 + 8 * k));
    Some((usize::from(lead & 0x0f) | more, 1 + follow))
}

/// Takes one integer element that fits a byte off the front of `b`.
fn integer(b: &mut &[u8]) -> Option<u8> {
    let (&op, rest) = b.split_first()?;
    let width = match op {
        ZERO_OP | ONE_OP => 0,
        BYTE_PREFIX => 1,
        WORD_PREFIX => 2,
        DWORD_PREFIX => 4,
        _ => return None,
    };
    let (value, rest) = rest.split_at_checked(width)?;
    *b = rest;
    match (op, value) {
        (ZERO_OP, _) => Some(0),
        (ONE_OP, _) => Some(1),
        // A wider prefix for a small value is legal AML.
        (_, [v, high @ ..]) if high.iter().all(|&x| x == 0) => Some(*v),
        _ => None,
    }
}
