//! Domain operations on a running deployment: seeding reports, and the thin callers of the
//! projection's rebuild and sync check.

pub mod read_model;
pub mod seed;

// Old path of the service operations, until their users are updated.
pub use crate::cluster::ops::{ServiceAction, ServiceOp};
