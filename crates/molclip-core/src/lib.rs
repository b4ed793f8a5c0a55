//! The vocabulary every floor of molclip shares: the splits of a dataset, the identities a
//! model learns and is scored on, and file writes that a reader never sees half done.

mod digest;
mod fs;
mod vocabulary;

pub use digest::{sha256_file, sha256_hex, Digest};
pub use fs::{write_atomic, write_atomic_with, IoError};
pub use vocabulary::{Identity, Split, UnknownName};
