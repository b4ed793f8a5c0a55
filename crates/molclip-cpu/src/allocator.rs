//! The memory allocator of molclip's programs (the `molclip` binary and the Python module):
//! mimalloc, which keeps the memory a program frees for reuse ([`KeepFreed`]: until the
//! `molclip` process exits, ten seconds in Python's).
//!
//! A training step allocates and frees the same tensors at every step, up to 100 MB each.
//! Under glibc's malloc the programs turned off `mmap` for large blocks and ran every thread
//! on one arena, so that a step reused the heap the previous one freed. mimalloc keeps a heap
//! per thread, and on Linux asks for transparent huge pages (`madvise`) for large blocks,
//! which glibc's heap did not get: fewer TLB misses on the tensors the kernels stream through.
//! Its own delay before it purges freed memory (one second) is shorter than a step, and it
//! purges what an arena holds free at a deadline set by the first block freed, not by each
//! block's age: under it, an i3d-resnet18 benchmark faulted pages in 47,000 times.
//!
//! Measured on a 2-core Xeon with AVX-512 (transparent huge pages in `madvise` mode),
//! alternated against glibc (`molclip bench model-once ... --steps 5`): frame-vit at AVX2,
//! five rounds, 458-478 ms a step (median 466) to 439-459 (450); with mimalloc's huge pages
//! turned off (`MIMALLOC_ALLOW_THP=0`), 450-471: the gain is the huge pages'. i3d-resnet18 at
//! AVX-512, four rounds: 1,087-1,114 to 1,070-1,142, no difference. Peak resident memory:
//! frame-vit 419 to 488 MiB, i3d-resnet18 1,040 to 1,180 (PyTorch's: about 1,400 and 1,900);
//! `molclip evaluate` at 35,600 x 35,600, 563 to 809 MiB (the memory of the files read, freed,
//! kept), 17.3-18.3 s to 17.0-19.7 (the slow runs spend up to 1.5 s in the kernel, compacting
//! memory for huge pages).
//!
//! `MIMALLOC_PURGE_DELAY` (milliseconds; -1 never) overrides [`KeepFreed`], and mimalloc's
//! other `MIMALLOC_*` variables apply (`MIMALLOC_ALLOW_THP=0`: no huge pages).

/// The allocator type: `#[global_allocator] static A: Allocator = Allocator;` in a program's
/// crate, then [`keep_freed_memory`] first thing.
pub use mimalloc::MiMalloc as Allocator;

/// How long memory that the program frees, and does not reuse, stays with the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeepFreed {
    /// Until the process exits: a program that runs one job (the `molclip` binary), whose
    /// peak is its job's.
    UntilExit,
    /// For this many milliseconds (more than a training step, so that most steps reuse the
    /// memory of the one before; mimalloc purges what an arena holds free at a deadline this
    /// long after the first of it was freed): a long-lived process (Python's).
    For(u32),
}

/// mimalloc's `mi_option_purge_delay` (its index in `mi_option_t`, the same in mimalloc 2 and
/// 3; `libmimalloc-sys` does not name it for mimalloc 3).
const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Sets how long mimalloc keeps freed memory before it gives it back to the system, unless
/// `MIMALLOC_PURGE_DELAY` set it. Does nothing under another allocator.
pub fn keep_freed_memory(keep: KeepFreed) {
    let delay = match keep {
        KeepFreed::UntilExit => -1,
        KeepFreed::For(ms) => i32::try_from(ms).unwrap_or(i32::MAX).into(),
    };
    // SAFETY: sets one option's value in mimalloc's static table; any value is valid for
    // this option, and the allocator reads it when it next decides whether to purge.
    unsafe { libmimalloc_sys::mi_option_set_default(PURGE_DELAY, delay) }
}
