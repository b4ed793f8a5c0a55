//! The allocator's setting, in a test binary of its own: no other test's thread takes memory
//! from the allocator while this one watches its page faults.
#![cfg(target_os = "linux")]

use molclip_cpu::allocator::{keep_freed_memory, Allocator, KeepFreed};

#[global_allocator]
static ALLOCATOR: Allocator = Allocator;

/// This thread's minor page faults so far.
fn faults() -> i64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::uninit();
    // SAFETY: getrusage writes the whole struct when it returns 0, checked.
    let usage = unsafe {
        assert_eq!(libc::getrusage(libc::RUSAGE_THREAD, usage.as_mut_ptr()), 0);
        usage.assume_init()
    };
    usage.ru_minflt
}

/// The page faults that allocating `bytes`, writing a byte of every page and freeing it took.
fn touch_and_free(bytes: usize) -> i64 {
    let before = faults();
    let mut v = vec![0u8; bytes];
    for page in v.chunks_mut(4096) {
        page[0] = 1;
    }
    std::hint::black_box(&v);
    drop(v);
    faults() - before
}

/// Under `keep`, the memory of a freed 256 MiB buffer serves the next one without faulting
/// its pages in again, past mimalloc's default delay and a collection.
fn is_reused(keep: KeepFreed) {
    let bytes = 256 << 20;
    keep_freed_memory(keep);
    // 65,536 pages, or 128 where the system gives mimalloc transparent huge pages.
    let first = touch_and_free(bytes);
    // Past mimalloc's default delay (one second), then a collection that purges what has
    // waited longer than the delay: under the default, the second buffer faults every page
    // in again (checked).
    std::thread::sleep(std::time::Duration::from_millis(2500));
    // SAFETY: asks mimalloc to purge what has waited past the delay; touches no memory of ours.
    unsafe { libmimalloc_sys::mi_collect(false) };
    let second = touch_and_free(bytes);
    assert!(first >= 64, "{keep:?}: the first buffer faulted {first} pages in");
    assert!(second * 4 < first, "{keep:?}: the second buffer faulted {second} pages in, the first {first}: not reused");
}

/// The option `keep_freed_memory` sets is mimalloc's purge delay, and either policy keeps
/// the memory past the default delay (one test: both set the same option). Checked by
/// mutation: without the call, or with a delay of 500 ms for either policy, it fails.
#[test]
fn a_freed_large_buffer_is_reused_without_page_faults() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
        return;
    }
    // Never purging first: mimalloc purges what an arena holds free at a deadline set when
    // the first range was freed, so a delay's check after another's would see the first's.
    is_reused(KeepFreed::UntilExit);
    // The memory that check kept, taken, so that the next one starts on fresh pages.
    let mut held = vec![0u8; 256 << 20];
    held.iter_mut().step_by(4096).for_each(|b| *b = 1);
    is_reused(KeepFreed::For(10_000));
    std::hint::black_box(held);
}
