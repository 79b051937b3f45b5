//! The two ways in, both in 32-bit protected mode with paging off:
//! - PVH: QEMU (`-kernel`) finds the Xen `PHYS32_ENTRY` note, loads the
//!   ELF at its physical addresses and jumps to `pvh_start32` with `%ebx`
//!   = the `hvm_start_info`;
//! - Multiboot2: GRUB (from BIOS or UEFI; on UEFI it exits boot services
//!   first) finds the header below, loads the ELF the same way and jumps
//!   to `mb2_start32` with `%eax` = the Multiboot2 magic and `%ebx` = the
//!   boot information. The header asks for no framebuffer (the console is
//!   the serial port) and page-aligned modules.
//!
//! The common stub clears .bss, turns on PAE, long mode, NX, SYSCALL and
//! SSE (the precompiled `core` uses SSE), and enters
//! `kernel_main(info, protocol)` in the upper half on boot page tables that
//! map the first 4 GiB identity (the stub keeps running, and a loader may
//! put its structures and modules anywhere below 4 GiB) and the first GiB
//! at `KERNEL_VMA`. `kernel_main` then builds the real tables
//! (`paging::init`).

use core::arch::global_asm;

/// The stack `kernel_main` starts on; it stays the hypervisor's stack.
pub const BOOT_STACK_SIZE: usize = 256 * 1024;

#[repr(C, align(4096))]
pub struct Stack<const N: usize>(pub [u8; N]);

#[unsafe(no_mangle)]
static mut BOOT_STACK: Stack<BOOT_STACK_SIZE> = Stack([0; BOOT_STACK_SIZE]);

/// What `kernel_main`'s second argument says about how it was entered.
pub const ENTERED_PVH: u32 = 0;
pub const ENTERED_MULTIBOOT2: u32 = 1;
/// Through the Multiboot2 entry, but `%eax` did not hold the magic.
pub const ENTERED_BAD_MAGIC: u32 = 2;

global_asm!(
    r#"
    .section .boot.header, "a"
    .p2align 3
mb2_header:
    .long 0xe85250d6        /* Multiboot2 header magic */
    .long 0                 /* i386 (32-bit protected mode) */
    .long mb2_header_end - mb2_header
    .long 0x100000000 - (0xe85250d6 + (mb2_header_end - mb2_header))
    .p2align 3
    .word 3, 0              /* entry address */
    .long 12
    .long mb2_start32
    .p2align 3
    .word 6, 0              /* module alignment: page-aligned */
    .long 8
    .word 0, 0              /* end */
    .long 8
mb2_header_end:

    .section .note.Xen, "a"
    .p2align 2
    .long 4                 /* name size ("Xen\0") */
    .long 4                 /* descriptor size */
    .long 18                /* XEN_ELFNOTE_PHYS32_ENTRY */
    .asciz "Xen"
    .long pvh_start32

    .section .boot.text, "ax"
    .code32
    .global pvh_start32
pvh_start32:
    movl ${pvh}, %ebp
    jmp boot32

    .global mb2_start32
mb2_start32:
    movl ${mb2}, %ebp
    cmpl ${mb2_magic}, %eax
    je boot32
    movl ${bad_magic}, %ebp

boot32:
    movl %ebx, %esi
    movl $__bss_start_phys, %edi
    movl $__bss_end_phys, %ecx
    subl %edi, %ecx
    xorl %eax, %eax
    cld
    rep stosb

    movl $boot_pml4, %eax
    movl %eax, %cr3
    movl %cr4, %eax
    orl $0x620, %eax        /* PAE | OSFXSR | OSXMMEXCPT */
    movl %eax, %cr4

    movl $0x80000001, %eax
    cpuid
    movl %edx, %edi
    movl $0xC0000080, %ecx  /* EFER */
    rdmsr
    orl $0x101, %eax        /* LME | SCE */
    testl $0x100000, %edi
    jz 1f
    orl $0x800, %eax        /* NXE, where the CPU has NX */
1:  wrmsr

    movl %cr0, %eax
    andl $0xfffffffb, %eax  /* clear EM */
    orl $0x80010023, %eax   /* PG | WP | NE | MP | PE */
    movl %eax, %cr0
    lgdt boot_gdt_ptr
    ljmp $0x08, $boot64

    .code64
boot64:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    xorw %ax, %ax
    movw %ax, %fs
    movw %ax, %gs
    movabs ${stack} + {stack_size}, %rsp
    movl %esi, %edi
    movl %ebp, %esi
    movabs ${main}, %rax
    call *%rax
2:  hlt
    jmp 2b

    .section .boot.data, "aw"
    .p2align 12
boot_pml4:
    .quad boot_pdpt_low + 0x3
    .fill 510, 8, 0
    .quad boot_pdpt_high + 0x3
boot_pdpt_low:
    .quad boot_pd + 0x3
    .quad boot_pd + 0x1000 + 0x3
    .quad boot_pd + 0x2000 + 0x3
    .quad boot_pd + 0x3000 + 0x3
    .fill 508, 8, 0
boot_pdpt_high:
    .fill 510, 8, 0
    .quad boot_pd + 0x3
    .quad 0
boot_pd:                    /* 4 tables: 2048 pages of 2 MiB */
    .set i, 0
    .rept 2048
    .quad (i << 21) | 0x83
    .set i, i + 1
    .endr
boot_gdt:
    .quad 0
    .quad 0x00af9a000000ffff
    .quad 0x00cf92000000ffff
boot_gdt_ptr:
    .word boot_gdt_ptr - boot_gdt - 1
    .long boot_gdt
    .text
    "#,
    stack = sym BOOT_STACK,
    stack_size = const BOOT_STACK_SIZE,
    main = sym crate::kernel_main,
    pvh = const ENTERED_PVH,
    mb2 = const ENTERED_MULTIBOOT2,
    bad_magic = const ENTERED_BAD_MAGIC,
    mb2_magic = const hypervisor::bootinfo::MULTIBOOT2_MAGIC,
    options(att_syntax)
);
