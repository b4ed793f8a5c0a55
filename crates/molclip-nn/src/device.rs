//! The devices molclip's models run on.

use candle_core::Device;

use crate::Result;

/// CUDA device `ordinal`, as candle makes it, with cudarc's event tracking off.
///
/// With tracking on, cudarc creates two events with every allocation (and destroys them with
/// it), but records and waits on them only in its multi-stream mode, which a context enters
/// when `CudaContext::new_stream` makes a stream. candle's device queues its work on CUDA's
/// per-thread default stream, which cudarc does not make that way, so the events were never
/// used: four driver calls per tensor, thousands per training step, for nothing. Off,
/// allocations make none. (Where molclip waits on the GPU itself, as before a pinned buffer
/// is written again, it records an event of its own.)
pub fn cuda(ordinal: usize) -> Result<Device> {
    let device = Device::new_cuda(ordinal)?;
    #[cfg(feature = "cuda")]
    if let Device::Cuda(dev) = &device {
        // SAFETY: cudarc asks the caller to synchronise work across streams once tracking is
        // off. It did no such synchronisation on this context before either (not in
        // multi-stream mode, above), and molclip makes no stream of its own: the order of
        // work is the stream's, as it was.
        unsafe { dev.disable_event_tracking() };
    }
    Ok(device)
}
