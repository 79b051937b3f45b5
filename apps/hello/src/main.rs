//! The smallest useful guest: prints a greeting with its instance name and
//! its arguments, then exits 0.
#![no_std]
#![no_main]
#![forbid(unsafe_code)]

extern crate alloc;

use alloc::vec::Vec;
use libos::println;

libos::main!(main);

fn main() {
    let args: Vec<&str> = libos::args().collect();
    println!("Hello from {}! args: {:?}", libos::name(), args);
}
