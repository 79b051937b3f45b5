//! `print!`/`println!` for the hypervisor, on the serial console.

use crate::arch::x86_64::serial::Serial;
use core::fmt::Write;
use spin::Mutex;

static CONSOLE: Mutex<Serial> = Mutex::new(Serial);

pub fn _print(args: core::fmt::Arguments<'_>) {
    let _ = CONSOLE.lock().write_fmt(args);
}

#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => { $crate::console::_print(format_args!($($arg)*)) };
}

#[macro_export]
macro_rules! println {
    () => { $crate::print!("\n") };
    ($($arg:tt)*) => { $crate::console::_print(format_args!("{}\n", format_args!($($arg)*))) };
}
