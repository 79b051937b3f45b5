//! Telling return addresses from other words on a stack, for the crash
//! reports of both the hypervisor (a stopped guest) and the libos (a
//! panic): without frame pointers or unwind tables a backtrace is a scan of
//! the stack for words that point into the text *just after a call*.

/// Whether the 7 bytes before an address end with a `call`: `call rel32`
/// (`e8` + 4 bytes) or an indirect `call r/m64` (`ff /2`, 2 to 7 bytes with
/// its ModRM, SIB and displacement). Function pointers and data that
/// happen to point into the text rarely pass.
pub fn follows_call(before: &[u8; 7]) -> bool {
    if before[2] == 0xe8 {
        return true;
    }
    [2usize, 3, 4, 6, 7].iter().any(|&k| before[7 - k] == 0xff && before[8 - k] & 0x38 == 0x10)
}

#[cfg(test)]
mod tests {
    use super::follows_call;

    #[test]
    fn calls_are_recognized() {
        // call rel32
        assert!(follows_call(&[0x90, 0x90, 0xe8, 1, 2, 3, 4]));
        // call rax (ff d0), call [rax+8] (ff 50 08), call [rip+disp32] (ff 15 ....)
        assert!(follows_call(&[0, 0, 0, 0, 0, 0xff, 0xd0]));
        assert!(follows_call(&[0, 0, 0, 0, 0xff, 0x50, 0x08]));
        assert!(follows_call(&[0, 0xff, 0x15, 1, 2, 3, 4]));
        // jmp rax (ff e0) and plain data are not.
        assert!(!follows_call(&[0, 0, 0, 0, 0, 0xff, 0xe0]));
        assert!(!follows_call(&[0x55, 0x48, 0x89, 0xe5, 0x41, 0x57, 0x41]));
    }
}
