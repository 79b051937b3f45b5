//! The smallest useful guest: prints a greeting with its instance name and
//! its arguments (and its environment, if it has one), then exits 0, or N
//! if an argument is `exit=N` (so that tests can see an exit code travel).
#![no_std]
#![no_main]
#![forbid(unsafe_code)]

extern crate alloc;

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use libos::println;

libos::main!(main);

fn main() {
    let args: Vec<&str> = libos::args().collect();
    println!("Hello from {}! args: {:?}", libos::name(), args);
    let env: Vec<String> = libos::vars().map(|(k, v)| format!("{k}={v}")).collect();
    if !env.is_empty() {
        println!("env: {env:?}");
    }
    if let Some(code) = args.iter().find_map(|a| a.strip_prefix("exit=")?.parse().ok()) {
        libos::exit(code);
    }
}
