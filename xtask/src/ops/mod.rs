//! Domain operations on a running deployment: seeding reports, and the thin callers of the
//! projection's rebuild and sync check.

pub mod read_model;
pub mod seed;
