//! Integration tests of `cargo xtask` that run the real binary (`CARGO_BIN_EXE_xtask`); one
//! test binary for the crate, a module per area.

mod cli;
mod cluster;
mod docker;
mod kube;
mod support;
