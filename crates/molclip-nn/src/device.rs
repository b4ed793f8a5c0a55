//! The devices molclip's models run on.

use candle_core::Device;

use crate::Result;

/// CUDA device `ordinal`, on a stream of its own, with cudarc's event tracking off.
///
/// **One stream for every thread.** candle's `Device::new_cuda` queues work on CUDA's
/// per-thread default stream, which is a different stream on each host thread: a tensor made
/// on one thread and read, written or freed on another (a Python thread pool sharing a run, or
/// the garbage collector dropping a model on a thread of its own) would not wait for the work
/// queued on the first. On a stream of its own (`Device::new_cuda_with_stream`), the device's
/// work is in one order whichever thread queues it, as on PyTorch's default stream. cuBLAS,
/// cuRAND, molclip's cuDNN handles and its kernels all queue on that stream.
///
/// **Tracking off.** With tracking on (cudarc's default), cudarc creates two events with every
/// allocation, destroys them with it, records one behind every kernel that reads or writes the
/// allocation and makes the stream wait on them: work that orders allocations across streams,
/// and a device with one stream needs none of it (four to six driver calls per tensor,
/// thousands per training step). Off, allocations make no events. (Where molclip waits on the
/// GPU itself, as before a pinned buffer is written again, it records an event of its own.)
pub fn cuda(ordinal: usize) -> Result<Device> {
    let device = Device::new_cuda_with_stream(ordinal)?;
    #[cfg(feature = "cuda")]
    if let Device::Cuda(dev) = &device {
        // SAFETY: with tracking off, cudarc asks the caller to order work across streams. All
        // of this device's work, whichever thread queues it, goes to its one stream, which
        // orders it; molclip makes no other stream on the device's context.
        unsafe { dev.disable_event_tracking() };
    }
    Ok(device)
}
