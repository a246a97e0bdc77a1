//! The OCI distribution vocabulary: names, references, digests, media types
//! and the error JSON every failure is answered with.

pub mod error;
pub mod media;
pub mod reference;
