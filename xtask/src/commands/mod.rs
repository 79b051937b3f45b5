//! One file per subcommand of `cargo xtask` (the clap definitions are in
//! `main.rs`; `bench` and `lint` live in the library).

pub mod build_app;
pub mod ctl;
pub mod fuzz;
pub mod pkg;
pub mod run;
pub mod test;
