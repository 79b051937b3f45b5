//! The frames of the switch benchmark (`echo-bench raw-send` →
//! `echo raw-sink`): Ethernet frames of the local experimental EtherType
//! [`ETHERTYPE`], which the switch forwards within a tenant uninspected,
//! with a [`HEADER`]-byte header: destination and source MAC, EtherType,
//! then [`Kind`], phase and a 64-bit value (little-endian). The rest of a
//! frame is payload nobody reads.
//!
//! - `Hello`: broadcast by the sink until data arrives, so the sender
//!   learns its MAC (the switch makes a guest's frames carry its own).
//! - `Data`: phase P's frame number `value`.
//! - `End`: phase P is over; `value` = the data frames the sender sent in it.
//! - `Done`: no more phases.

/// IEEE 802 local experimental EtherType 1.
pub const ETHERTYPE: u16 = 0x88b5;
/// Bytes of the header (Ethernet's 14, kind, phase, value).
pub const HEADER: usize = 24;
/// The phase number of an unmeasured warm-up.
pub const WARMUP_PHASE: u8 = 0xff;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Hello = 1,
    Data = 2,
    End = 3,
    Done = 4,
}

/// One frame's header, past the MACs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub kind: Kind,
    pub phase: u8,
    pub value: u64,
}

/// Writes the header into the first [`HEADER`] bytes of `frame` (false,
/// writing nothing, if it is shorter).
pub fn write(frame: &mut [u8], dst: [u8; 6], src: [u8; 6], h: Header) -> bool {
    let Some(head) = frame.get_mut(..HEADER) else { return false };
    head[..6].copy_from_slice(&dst);
    head[6..12].copy_from_slice(&src);
    head[12..14].copy_from_slice(&ETHERTYPE.to_be_bytes());
    head[14] = h.kind as u8;
    head[15] = h.phase;
    head[16..24].copy_from_slice(&h.value.to_le_bytes());
    true
}

/// The source MAC and header of `frame`, if it is one of ours.
pub fn parse(frame: &[u8]) -> Option<([u8; 6], Header)> {
    let head = frame.get(..HEADER)?;
    if head[12..14] != ETHERTYPE.to_be_bytes() {
        return None;
    }
    let kind = match head[14] {
        1 => Kind::Hello,
        2 => Kind::Data,
        3 => Kind::End,
        4 => Kind::Done,
        _ => return None,
    };
    let mut src = [0u8; 6];
    src.copy_from_slice(&head[6..12]);
    let mut value = [0u8; 8];
    value.copy_from_slice(&head[16..24]);
    Some((src, Header { kind, phase: head[15], value: u64::from_le_bytes(value) }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip_and_strangers_are_ignored() {
        let (dst, src) = ([0x02, 0, 0, 0, 1, 0], [0x02, 0, 0, 0, 2, 0]);
        let mut frame = [0xaau8; 60];
        let h = Header { kind: Kind::End, phase: 3, value: 1 << 40 | 7 };
        assert!(write(&mut frame, dst, src, h));
        assert_eq!(frame[..6], dst);
        assert_eq!(frame[12..14], [0x88, 0xb5]);
        assert_eq!(frame[HEADER], 0xaa, "the payload is left alone");
        assert_eq!(parse(&frame), Some((src, h)));
        assert!(parse(&frame[..HEADER - 1]).is_none());
        assert!(!write(&mut [0u8; HEADER - 1], dst, src, h));
        let mut other = frame;
        other[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        assert!(parse(&other).is_none(), "IPv4 is not ours");
        other = frame;
        other[14] = 9;
        assert!(parse(&other).is_none(), "an unknown kind");
    }
}
