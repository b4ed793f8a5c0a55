//! The vocabulary every floor of molclip shares: the splits of a dataset, the identities a
//! model learns and is scored on, file writes that a reader never sees half done, one writer
//! per output, result folders that appear whole or not at all, digests, what an interrupted process removes, and how an error reads.

mod digest;
mod fs;
mod interrupt;
mod lock;
pub mod ome;
mod publish;
mod report;
mod vocabulary;

pub use digest::{sha256_file, sha256_hex, Digest};
pub use fs::{write_atomic, write_atomic_with, IoError};
pub use interrupt::{interrupted, remove_on_interrupt, remove_registered, RemoveOnInterrupt};
pub use lock::{LockError, OutputLock};
pub use publish::{publish_dir, published_path, Ownership};
pub use report::error_text;
pub use vocabulary::{is_replicate_folder, Identity, Split, UnknownName};
