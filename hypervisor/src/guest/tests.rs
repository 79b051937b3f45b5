use super::*;
use crate::mm::testmem::TestMem;
use abi::stop::Access;
use alloc::string::ToString;

use crate::testutil::two_page_image as image;

/// Where the heap of these guests (no vNIC) starts.
const HEAP_START: u64 = layout::heap_start(0);

/// Simulated memory, a kernel root and a time page, and the loaded image.
fn setup() -> (TestMem, (PhysAddr, PhysAddr), LoadedImage) {
    let mut mem = TestMem::new(10_000);
    let k = mem.alloc().unwrap();
    let t = mem.alloc().unwrap();
    let li = LoadedImage::load(&mut mem, "t.hermit", &image()).unwrap();
    (mem, (k, t), li)
}

fn create(
    mem: &mut TestMem,
    (k, t): (PhysAddr, PhysAddr),
    li: &LoadedImage,
    name: &str,
    args: &[&str],
    limit: u64,
) -> Result<Guest, CreateError> {
    Guest::create(mem, k, t, li, name, args, &[], limit, HEAP_START, |_, _| {})
}

/// The name in `g`'s shared page (ABI 9).
pub(crate) fn name_of(g: &mut Guest, mem: &mut impl PhysMem) -> String {
    let mut b = [0u8; 8 + layout::NAME_MAX];
    g.memory.read(mem, layout::EVENT_PAGE + layout::EVENT_NAME_OFFSET, &mut b).unwrap();
    let len = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
    String::from_utf8(b[8..8 + len].to_vec()).unwrap()
}

fn syscall(g: &mut Guest, nr: u64, a0: u64, a1: u64) {
    g.regs.vector = VECTOR_SYSCALL;
    g.regs.rax = nr;
    g.regs.rdi = a0;
    g.regs.rsi = a1;
}

#[test]
fn instances_share_text_and_copy_data() {
    let (mut mem, k, li) = setup();
    assert_eq!((li.shared_bytes(), li.private_bytes()), (4096, 4096));
    let mut a = create(&mut mem, k, &li, "t-0", &["x"], 1 << 20).unwrap();
    let mut b = create(&mut mem, k, &li, "t-1", &[], 1 << 20).unwrap();
    let text = |g: &Guest, mem: &TestMem| g.memory.space.translate(mem, 0x401000).unwrap().0;
    let data = |g: &Guest, mem: &TestMem| g.memory.space.translate(mem, 0x402000).unwrap().0;
    assert_eq!(text(&a, &mem), text(&b, &mem), "text is shared");
    assert_ne!(data(&a, &mem), data(&b, &mem), "data is private");
    a.memory.write(&mut mem, 0x402000, b"MINE").unwrap();
    let mut buf = [0u8; 4];
    b.memory.read(&mut mem, 0x402000, &mut buf).unwrap();
    assert_eq!(&buf, b"DATA", "a write in one instance is not seen by another");
    assert_eq!(a.memory.write(&mut mem, 0x401000, b"x"), Err(Fault::Protection(0x401000)));

    // The start page carries the arguments, the shared page the name.
    let mut si = [0u8; StartInfo::SIZE];
    a.memory.read(&mut mem, abi::layout::START_INFO, &mut si).unwrap();
    assert_eq!(si[..8], abi::START_MAGIC.to_le_bytes());
    let mut s = [0u8; 2];
    a.memory.read(&mut mem, START_PAGE + layout::START_STRINGS_OFFSET, &mut s).unwrap();
    assert_eq!(&s, b"x\0");
    assert_eq!(name_of(&mut a, &mut mem), "t-0");
    assert_eq!(a.regs.rip, 0x401000);
    assert_eq!(a.regs.rsp % 16, 8);

    let live = mem.live;
    let freed = a.destroy(&mut mem) + b.destroy(&mut mem);
    assert_eq!(mem.live, live - freed);
    assert_eq!(mem.live, 2 + li.pages.len(), "only the kernel root, the time page and the image remain");
}

#[test]
fn hypercalls_write_lines_yield_and_exit() {
    let (mut mem, k, li) = setup();
    let mut g = create(&mut mem, k, &li, "g-0", &[], 1 << 20).unwrap();
    g.memory.write(&mut mem, HEAP_START, b"hi\nthere").unwrap();
    let mut out = Vec::new();
    syscall(&mut g, Hypercall::ConsoleWrite as u64, HEAP_START, 8);
    assert_eq!(g.handle_exit(&mut mem, &|| 0, &mut |l| out.push(l.to_string())), Step::Resume);
    assert_eq!(g.regs.rax, 8);
    assert!(g.via_sysret);
    g.flush_console(&mut |l| out.push(l.to_string()));
    assert_eq!(out, ["g-0| hi", "g-0| there"]);
    syscall(&mut g, Hypercall::Yield as u64, 0, 0);
    assert_eq!(g.handle_exit(&mut mem, &|| 0, &mut |_| {}), Step::Yield);
    syscall(&mut g, Hypercall::Exit as u64, (-3i32) as u32 as u64, 0);
    assert_eq!(g.handle_exit(&mut mem, &|| 0, &mut |_| {}), Step::Exited(-3));
}

#[test]
fn console_and_kicks_past_their_rates_are_dropped_and_counted() {
    let (mut mem, k, li) = setup();
    let mut g = create(&mut mem, k, &li, "g-0", &[], 1 << 20).unwrap();
    g.console_limit = crate::limit::TokenBucket::new(10);
    g.kick_limit = crate::limit::TokenBucket::new(2);
    g.memory.write(&mut mem, HEAP_START, b"0123456789abcdef").unwrap();
    let mut out = Vec::new();
    for _ in 0..3 {
        syscall(&mut g, Hypercall::ConsoleWrite as u64, HEAP_START, 4);
        assert_eq!(g.handle_exit(&mut mem, &|| 0, &mut |l| out.push(l.to_string())), Step::Resume);
        assert_eq!(g.regs.rax, 4, "the guest is told all was taken");
    }
    g.flush_console(&mut |l| out.push(l.to_string()));
    assert_eq!(out, ["[hv] guest g-0 console over its limit of 10 bytes/s: dropping", "g-0| 01230123"]);
    assert_eq!(g.console_limit.refused, 4);
    let steps: Vec<Step> = (0..3)
        .map(|_| {
            syscall(&mut g, Hypercall::NetKick as u64, 0, 0);
            g.handle_exit(&mut mem, &|| 0, &mut |_| {})
        })
        .collect();
    assert_eq!(steps, [Step::NetKick, Step::NetKick, Step::Resume]);
    // A second later the rates are back.
    syscall(&mut g, Hypercall::NetKick as u64, 0, 0);
    assert_eq!(g.handle_exit(&mut mem, &|| 1_000_000_000, &mut |_| {}), Step::NetKick);
}

#[test]
fn block_returns_at_once_with_pending_events_and_otherwise_sleeps() {
    let (mut mem, k, li) = setup();
    let mut g = create(&mut mem, k, &li, "g-0", &[], 1 << 20).unwrap();
    syscall(&mut g, Hypercall::Block as u64, 5_000, 0);
    assert_eq!(g.handle_exit(&mut mem, &|| 0, &mut |_| {}), Step::Block { deadline: 5_000 });
    g.raise_events(&mut mem, abi::time::events::TIMER);
    g.wake_from_block(&mut mem);
    assert_eq!(g.regs.rax, abi::time::events::TIMER);
    // The event is still pending (the guest clears it), so the next block returns at once.
    syscall(&mut g, Hypercall::Block as u64, u64::MAX, 0);
    assert_eq!(g.handle_exit(&mut mem, &|| 0, &mut |_| {}), Step::Resume);
    assert_eq!(g.regs.rax, abi::time::events::TIMER);
    // The time page is shared and read-only.
    let mut b = [0u8; 1];
    g.memory.read(&mut mem, abi::layout::TIME_PAGE, &mut b).unwrap();
    assert_eq!(g.memory.write(&mut mem, abi::layout::TIME_PAGE, &b), Err(Fault::Protection(abi::layout::TIME_PAGE)));
}

#[test]
fn bad_hypercalls_stop_the_guest() {
    let (mut mem, k, li) = setup();
    let mut g = create(&mut mem, k, &li, "g-0", &[], 1 << 20).unwrap();
    let mut stop = |g: &mut Guest, nr, a0, a1| {
        syscall(g, nr, a0, a1);
        match g.handle_exit(&mut mem, &|| 0, &mut |_| {}) {
            Step::Stopped(why) => why,
            other => panic!("not stopped: {other:?}"),
        }
    };
    let cw = Hypercall::ConsoleWrite as u64;
    let buffer = |address, length, error| StopReason::BadHypercall(HypercallError::ConsoleWriteBuffer { address, length, error });
    let k = 0xffff_ffff_8000_0000;
    assert_eq!(stop(&mut g, cw, k, 16), buffer(k, 16, MemoryError::OutOfRange { address: k, length: 16 }));
    assert_eq!(stop(&mut g, cw, u64::MAX - 8, 64), buffer(u64::MAX - 8, 64, MemoryError::OutOfRange { address: u64::MAX - 8, length: 64 }));
    assert_eq!(stop(&mut g, cw, 0x1000, 16), buffer(0x1000, 16, MemoryError::Unmapped { address: 0x1000 }));
    assert_eq!(
        stop(&mut g, cw, 0x401000, 1 << 40),
        StopReason::BadHypercall(HypercallError::ConsoleWriteLength { length: 1 << 40, max: 4096 })
    );
    let unknown = stop(&mut g, 0xdead, 0, 0);
    assert_eq!(unknown, StopReason::BadHypercall(HypercallError::UnknownNumber { number: 0xdead }));
}

#[test]
fn faults_stop_with_reasons_and_demand_zero_resumes() {
    let (mut mem, k, li) = setup();
    let mut g = create(&mut mem, k, &li, "g-0", &[], 64 * 1024).unwrap();
    // First touch of the stack: not present, in a zero-fill region.
    g.regs = Regs { vector: 14, error: 0b110, cr2: STACK_TOP - 16, rip: 0x401000, ..Regs::default() };
    assert_eq!(g.handle_exit(&mut mem, &|| 0, &mut |_| {}), Step::Resume);
    assert!(!g.via_sysret, "after a fault every register is restored with iret");
    g.regs = Regs { vector: 14, error: 0b110, cr2: 0x7000_dead_0000, rip: 0x401000, ..Regs::default() };
    assert_eq!(
        g.handle_exit(&mut mem, &|| 0, &mut |_| {}),
        Step::Stopped(StopReason::PageFault { access: Access::Write, address: 0x7000_dead_0000, protected: false, ip: 0x401000 })
    );
    g.regs = Regs { vector: 14, error: 0b110, cr2: STACK_TOP - STACK_MAX - 8, rip: 0x401000, ..Regs::default() };
    assert!(matches!(g.handle_exit(&mut mem, &|| 0, &mut |_| {}), Step::Stopped(StopReason::StackOverflow { access: Access::Write, .. })));
    // Touching the heap beyond the limit.
    let mut i = 0;
    let step = loop {
        g.regs = Regs { vector: 14, error: 0b110, cr2: HEAP_START + i * 4096, rip: 0x401000, ..Regs::default() };
        match g.handle_exit(&mut mem, &|| 0, &mut |_| {}) {
            Step::Resume => i += 1,
            other => break other,
        }
    };
    assert!(matches!(step, Step::Stopped(StopReason::OutOfMemory { limit_bytes: 65536, .. })), "{step:?}");
    assert!(g.memory.charged_bytes() <= 64 * 1024);
}

#[test]
fn a_syscall_at_the_end_of_the_guest_half_is_never_returned_to() {
    let (mut mem, k, li) = setup();
    let mut g = create(&mut mem, k, &li, "g-0", &[], 1 << 20).unwrap();
    syscall(&mut g, Hypercall::Yield as u64, 0, 0);
    g.regs.rip = layout::USER_END;
    assert_eq!(g.handle_exit(&mut mem, &|| 0, &mut |_| {}), Step::Stopped(StopReason::NonCanonicalReturn { ip: layout::USER_END }));
}

#[test]
fn creation_refuses_too_little_memory_and_long_args() {
    let (mut mem, k, li) = setup();
    let live = mem.live;
    assert!(matches!(create(&mut mem, k, &li, "g", &[], 8192), Err(CreateError::TooSmall { .. })));
    let long = "x".repeat(5000);
    assert!(matches!(create(&mut mem, k, &li, "g", &[&long], 1 << 20), Err(CreateError::ArgsTooLong)));
    let (k2, t2) = k;
    let with_env =
        |mem: &mut TestMem, env: &[&str]| Guest::create(mem, k2, t2, &li, "g", &["a"], env, 1 << 20, HEAP_START, |_, _| {}).err();
    for bad in [&["NOKEY"][..], &["=v"], &["K=a\0b"], &[long.as_str()]] {
        assert_eq!(with_env(&mut mem, bad), Some(CreateError::ArgsTooLong), "{:?}", &bad[0][..bad[0].len().min(8)]);
    }
    assert_eq!(mem.live, live, "a failed creation leaks nothing");
}

/// The start page: the arguments and the environment, each list
/// NUL-separated where the start record says (what the libos reads); the
/// name is in the shared page, where a clone's own is (ABI 9).
#[test]
fn the_start_page_holds_the_arguments_and_environment_the_shared_page_the_name() {
    let (mut mem, (k, t), li) = setup();
    let mut g =
        Guest::create(&mut mem, k, t, &li, "g-0", &["two words", "b"], &["PATH=/bin", "EMPTY="], 1 << 20, HEAP_START, |_, _| {}).unwrap();
    let page = g.memory.space.translate(&mem, layout::START_PAGE).unwrap().0;
    let mut buf = [0u8; 4096];
    mem.read(page, 0, &mut buf);
    let si = &buf[layout::START_INFO_OFFSET as usize..];
    let field = |name_off: usize| u64::from_le_bytes(si[name_off..name_off + 8].try_into().unwrap());
    let at = |addr: u64, len: u64| &buf[(addr - layout::START_PAGE) as usize..][..len as usize];
    use core::mem::offset_of;
    assert_eq!((field(offset_of!(StartInfo, name_addr)), field(offset_of!(StartInfo, name_len))), (0, 0), "the name is not here");
    assert_eq!(name_of(&mut g, &mut mem), "g-0", "but in the shared page (ABI 9)");
    assert_eq!(at(field(offset_of!(StartInfo, args_addr)), field(offset_of!(StartInfo, args_len))), b"two words\0b\0");
    assert_eq!(at(field(offset_of!(StartInfo, env_addr)), field(offset_of!(StartInfo, env_len))), b"PATH=/bin\0EMPTY=\0");
    let envc = u32::from_le_bytes(si[offset_of!(StartInfo, envc)..][..4].try_into().unwrap());
    assert_eq!(envc, 2);
}

#[test]
fn only_rate_limited_hypercalls_read_the_clock() {
    let (mut mem, k, li) = setup();
    let mut g = create(&mut mem, k, &li, "g-0", &[], 1 << 20).unwrap();
    let never = || -> u64 { panic!("the clock was read on an exit that consults no limit") };
    let mut exit = |g: &mut Guest, regs: Regs| {
        g.regs = Regs { rip: 0x401000, ..regs };
        g.handle_exit(&mut mem, &never, &mut |_| {})
    };
    let call = |nr: Hypercall, a0: u64| Regs { vector: VECTOR_SYSCALL, rax: nr as u64, rdi: a0, ..Regs::default() };
    assert_eq!(exit(&mut g, call(Hypercall::Nop, 0)), Step::Resume);
    assert_eq!(exit(&mut g, call(Hypercall::Yield, 0)), Step::Yield);
    assert_eq!(exit(&mut g, call(Hypercall::Block, 7)), Step::Block { deadline: 7 });
    assert_eq!(exit(&mut g, Regs { vector: 32, ..Regs::default() }), Step::Preempted);
    assert_eq!(exit(&mut g, Regs { vector: 14, error: 0b110, cr2: STACK_TOP - 16, ..Regs::default() }), Step::Resume);
    // A kick consults its limit, so it reads the clock once.
    let reads = core::cell::Cell::new(0);
    g.kick_limit = crate::limit::TokenBucket::new(2);
    g.regs = Regs { rip: 0x401000, ..call(Hypercall::NetKick, 0) };
    assert_eq!(g.handle_exit(&mut mem, &|| reads.replace(reads.get() + 1), &mut |_| {}), Step::NetKick);
    assert_eq!(reads.get(), 1);
}

#[test]
fn unlimited_guests_never_read_the_clock() {
    let (mut mem, k, li) = setup();
    let mut g = create(&mut mem, k, &li, "g-0", &[], 1 << 20).unwrap();
    g.memory.write(&mut mem, HEAP_START, b"hi\n").unwrap();
    let never = || -> u64 { panic!("the clock was read without a limit to consult") };
    syscall(&mut g, Hypercall::ConsoleWrite as u64, HEAP_START, 3);
    assert_eq!(g.handle_exit(&mut mem, &never, &mut |_| {}), Step::Resume);
    syscall(&mut g, Hypercall::NetKick as u64, 0, 0);
    assert_eq!(g.handle_exit(&mut mem, &never, &mut |_| {}), Step::NetKick);
}
