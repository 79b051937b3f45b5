//! The hypervisor's checksum code (`net::csum`): `fill` on a guest's frame
//! for the host, `verify` on the host's frame for a guest, over any bytes:
//! mostly a valid IPv4 TCP, UDP or ICMP frame (options, fragment bits,
//! lengths and protocol drawn from the input) with fuzz-written bytes laid
//! over it, cut anywhere.
//!
//! Invariants: no panic; `fill` keeps the length and changes nothing but
//! the IPv4 header and transport checksum fields; what it calls `Filled`
//! verifies `Good`, a `Fragment` verifies `Fragment`, a `Malformed` or
//! `NotIpv4` frame is left unchanged (and verifies `Bad`, resp. `Good`);
//! filling twice is filling once.

use hypervisor::net::csum::{Check, Filled, fill, verify};

use crate::input::Input;

pub fn csum(data: &[u8]) {
    let mut inp = Input::new(data);
    let mut f = if inp.bool() {
        let n = inp.u16() as usize;
        inp.bytes(n).to_vec()
    } else {
        let options = inp.below(11);
        let payload = inp.u16() as usize % 3000;
        let proto = [1u8, 6, 17, 17, 6, inp.u8()][inp.below(6)];
        let hl = 20 + 4 * options;
        let total = (hl + payload) as u16;
        let mut f = vec![0u8; 14 + hl + payload + inp.below(8)];
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        f[14] = 0x40 | (hl / 4) as u8;
        f[16..18].copy_from_slice(&total.to_be_bytes());
        f[20..22].copy_from_slice(&[[0, 0], [0x20, 0], [0, 1], [0x40, 0]][inp.below(4)]);
        f[23] = proto;
        if proto == 17 && payload >= 8 {
            f[14 + hl + 4..14 + hl + 6].copy_from_slice(&(payload as u16).to_be_bytes());
        }
        // Bytes laid over it.
        for _ in 0..inp.below(6) {
            let at = inp.below(f.len().max(1));
            let n = inp.below(8);
            let src = inp.bytes(n).to_vec();
            let end = (at + src.len()).min(f.len());
            f[at..end].copy_from_slice(&src[..end - at]);
        }
        let cut = f.len() - inp.below(f.len().min(64) + 1);
        f.truncate(cut);
        f
    };
    let before = f.clone();
    let filled = fill(&mut f);
    assert_eq!(f.len(), before.len());
    let changed: Vec<usize> = (0..f.len()).filter(|&i| f[i] != before[i]).collect();
    match filled {
        Filled::Filled => assert_eq!(verify(&f), Check::Good, "filled but does not verify: {f:02x?}"),
        Filled::Fragment => assert_eq!(verify(&f), Check::Fragment),
        Filled::Malformed => assert!(changed.is_empty() && verify(&f) == Check::Bad),
        Filled::NotIpv4 => assert!(changed.is_empty() && verify(&f) == Check::Good),
    }
    if let Some(&i) = changed.first() {
        // Only the IPv4 checksum (24..26) and one transport checksum field.
        let hl = usize::from(f[14] & 0xf) * 4;
        let l4 = [14 + hl + 16, 14 + hl + 6, 14 + hl + 2];
        for &c in &changed {
            assert!((24..26).contains(&c) || l4.iter().any(|&a| (a..a + 2).contains(&c)), "byte {c} changed (first {i})");
        }
    }
    let once = f.clone();
    assert_eq!(fill(&mut f), filled);
    assert_eq!(f, once, "filling twice differs");
}

pub fn seeds() -> Vec<Vec<u8>> {
    vec![
        // Generated frames: TCP, UDP, ICMP; no overlays, uncut.
        vec![0, 0, 0x40, 0x01, 1, 0, 0, 0, 0],
        vec![0, 3, 0x20, 0x03, 2, 1, 0, 0, 0],
        vec![0, 0, 0x00, 0x01, 0, 0, 0, 0, 0],
        // A fragment, and raw bytes.
        vec![0, 0, 0x10, 0x00, 1, 1, 0, 0, 0],
        vec![1, 40, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 8, 0, 0x45, 0, 0, 20],
    ]
}
