//! A batch's values on their way to the device that runs the model.
//!
//! On a CUDA device a batch is written into page-locked (pinned) host memory ahead of its
//! step, on the loader's side ([`Staging::stage`]), and the step queues its copy to the GPU
//! on the device's stream without waiting for it ([`Staged::into_tensor`], one
//! `cuMemcpyHtoDAsync`): the GPU reads pinned memory directly, at the bus's full rate, and the
//! host goes on queueing the step's kernels behind the copy. From pageable memory, the
//! driver would first copy the batch through its own small pinned buffers while the host
//! waits. A few pinned buffers serve in turn: a buffer is written again only once the GPU
//! has finished reading it (its event), and a stager waits for one to come back when all
//! are in use, so that pinned memory stays bounded.
//!
//! On the CPU the batch's values become the tensor as they are, without a copy.
//!
//! `MOLCLIP_PINNED=0` in the environment turns pinned staging off (for comparisons): a
//! CUDA batch is then copied from pageable memory, as `Tensor::from_slice` does.

use candle_core::{Device, Shape, Tensor};

use crate::Result;

/// Whether CUDA batches go through pinned memory (`MOLCLIP_PINNED`, default on).
pub fn pinned_enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("MOLCLIP_PINNED").map_or(true, |v| v.trim() != "0"))
}

/// Stages batches for one device. Cheap to clone; clones share the pinned buffers.
#[derive(Clone)]
pub struct Staging {
    #[cfg(feature = "cuda")]
    pinned: Option<std::sync::Arc<pinned::Pool>>,
}

impl std::fmt::Debug for Staging {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Staging").field("pinned", &self.is_pinned()).finish()
    }
}

/// A batch's values, ready for the device: pinned host memory on a CUDA device, the values
/// as they are otherwise.
pub struct Staged {
    values: Values,
    shape: Shape,
}

enum Values {
    Host(Vec<f32>),
    #[cfg(feature = "cuda")]
    Pinned(pinned::Buffer),
}

impl Staging {
    /// Staging for `device`, with at most `buffers` (≥ 1) pinned buffers alive at a time on a
    /// CUDA device (one being read by the GPU, one being written ahead is the usual pair).
    pub fn new(device: &Device, buffers: usize) -> Self {
        match device {
            #[cfg(feature = "cuda")]
            Device::Cuda(dev) if pinned_enabled() => {
                Self { pinned: Some(std::sync::Arc::new(pinned::Pool::new(dev, buffers.max(1)))) }
            }
            _ => {
                let _ = buffers;
                Self {
                    #[cfg(feature = "cuda")]
                    pinned: None,
                }
            }
        }
    }

    /// Whether batches go through pinned memory.
    pub fn is_pinned(&self) -> bool {
        #[cfg(feature = "cuda")]
        return self.pinned.is_some();
        #[cfg(not(feature = "cuda"))]
        false
    }

    /// `values` (row-major, `shape`) staged for the device; on a CUDA device, copied into a
    /// pinned buffer (waiting for one to be free when all are in use).
    pub fn stage(&self, values: Vec<f32>, shape: &[usize]) -> Result<Staged> {
        let shape = Shape::from_dims(shape);
        if shape.elem_count() != values.len() {
            return Err(crate::NnError::Shape(format!(
                "staging a batch of shape {shape:?} ({} values) with {} values",
                shape.elem_count(),
                values.len()
            )));
        }
        #[cfg(feature = "cuda")]
        if let Some(pool) = &self.pinned {
            return Ok(Staged { values: Values::Pinned(pool.write(&values)?), shape });
        }
        Ok(Staged { values: Values::Host(values), shape })
    }
}

impl Staged {
    /// The shape of the batch.
    pub fn shape(&self) -> &Shape {
        &self.shape
    }

    /// The batch as a tensor on `device`. From pinned memory the copy is queued on the
    /// device's stream and this returns without waiting for it; the buffer goes back to its
    /// pool, to be written again once the copy has ended.
    pub fn into_tensor(self, device: &Device) -> Result<Tensor> {
        match self.values {
            Values::Host(values) => match device {
                Device::Cpu => Ok(Tensor::from_vec(values, self.shape, device)?),
                _ => Ok(Tensor::from_slice(&values, self.shape, device)?),
            },
            #[cfg(feature = "cuda")]
            Values::Pinned(buffer) => match device {
                Device::Cuda(dev) => buffer.upload(dev, self.shape),
                _ => Ok(Tensor::from_slice(&buffer.read()?, self.shape, device)?),
            },
        }
    }
}

/// A buffer's length, in values.
trait Length {
    fn length(&self) -> usize;
}

/// At most `cap` buffers alive at a time, the free ones kept for reuse: what bounds the
/// pinned memory of a staging (generic over the buffer, so that its logic is tested on the
/// CPU).
struct BufferPool<B> {
    cap: usize,
    state: std::sync::Mutex<PoolState<B>>,
    returned: std::sync::Condvar,
}

struct PoolState<B> {
    free: Vec<B>,
    /// Buffers alive: free, or taken and not yet given back.
    alive: usize,
}

#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
impl<B: Length> BufferPool<B> {
    fn new(cap: usize) -> Self {
        let state = PoolState { free: Vec::new(), alive: 0 };
        Self { cap: cap.max(1), state: std::sync::Mutex::new(state), returned: std::sync::Condvar::new() }
    }

    /// A buffer of exactly `len` values: a free one of that length; else a new one from
    /// `alloc` while fewer than `cap` are alive (a free one of another length is let go to
    /// make room); else the next one given back, waiting for it.
    fn take(&self, len: usize, alloc: impl FnOnce(usize) -> Result<B>) -> Result<B> {
        let mut state = self.state.lock().expect("the buffer pool's lock");
        loop {
            if let Some(k) = state.free.iter().position(|b| b.length() == len) {
                return Ok(state.free.swap_remove(k));
            }
            if state.alive == self.cap && state.free.pop().is_some() {
                state.alive -= 1;
            }
            if state.alive < self.cap {
                state.alive += 1;
                drop(state);
                let made = alloc(len);
                if made.is_err() {
                    self.state.lock().expect("the buffer pool's lock").alive -= 1;
                    self.returned.notify_one();
                }
                return made;
            }
            state = self.returned.wait(state).expect("the buffer pool's lock");
        }
    }

    /// `buffer`, taken from this pool, free again.
    fn give_back(&self, buffer: B) {
        self.state.lock().expect("the buffer pool's lock").free.push(buffer);
        self.returned.notify_one();
    }
}

#[cfg(feature = "cuda")]
mod pinned {
    //! Page-locked buffers and their pool.

    use std::sync::Arc;

    use candle_core::cuda::cudarc::driver::sys::CUevent_flags;
    use candle_core::cuda::cudarc::driver::{CudaContext, CudaEvent, PinnedHostSlice};
    use candle_core::op::BackpropOp;
    use candle_core::{CudaDevice, CudaStorage, Shape, Storage, Tensor};

    use super::{BufferPool, Length};
    use crate::Result;

    fn driver(e: impl std::error::Error + Send + Sync + 'static) -> crate::NnError {
        crate::NnError::Candle(candle_core::Error::wrap(e))
    }

    /// At most `cap` pinned buffers alive (a [`BufferPool`]), made in `ctx`.
    pub(super) struct Pool {
        ctx: Arc<CudaContext>,
        buffers: BufferPool<Pinned>,
    }

    /// A page-locked buffer and the event recorded behind the last copy that read it.
    ///
    /// The event is molclip's own, recorded explicitly: the one cudarc keeps in a
    /// `PinnedHostSlice` is recorded behind a copy only while cudarc tracks events, which
    /// molclip's devices turn off ([`crate::device::cuda`]), so that event never is, and
    /// waiting on it would not wait for the copy.
    pub(super) struct Pinned {
        slice: PinnedHostSlice<f32>,
        read: CudaEvent,
    }

    impl Length for Pinned {
        fn length(&self) -> usize {
            self.slice.len()
        }
    }

    impl Drop for Pinned {
        /// Freed only once the last copy from it has ended.
        fn drop(&mut self) {
            let _ = self.read.synchronize();
        }
    }

    /// A pinned buffer holding one batch; back to its pool when dropped.
    pub(super) struct Buffer {
        pinned: Option<Pinned>,
        pool: Arc<Pool>,
    }

    impl Pool {
        pub(super) fn new(dev: &CudaDevice, cap: usize) -> Self {
            Self { ctx: dev.cuda_stream().context().clone(), buffers: BufferPool::new(cap) }
        }

        /// A buffer of exactly `values.len()` values, holding them (`BufferPool::take`), once
        /// the copy that last read it has ended.
        pub(super) fn write(self: &Arc<Self>, values: &[f32]) -> Result<Buffer> {
            let alloc = |len| -> Result<Pinned> {
                // SAFETY: the buffer's values are unset; they are all overwritten below,
                // before anything reads them.
                let slice = unsafe { self.ctx.alloc_pinned::<f32>(len) }.map_err(driver)?;
                // Blocking: the stager's thread sleeps while it waits, leaving its core to the
                // loader.
                let read = self.ctx.new_event(Some(CUevent_flags::CU_EVENT_BLOCKING_SYNC)).map_err(driver)?;
                Ok(Pinned { slice, read })
            };
            let mut pinned = self.buffers.take(values.len(), alloc)?;
            pinned.read.synchronize().map_err(driver)?;
            pinned.slice.as_mut_slice().map_err(driver)?.copy_from_slice(values);
            Ok(Buffer { pinned: Some(pinned), pool: self.clone() })
        }
    }

    impl Buffer {
        /// The batch on the GPU: a new device buffer, and the copy into it queued on the
        /// device's stream, after everything queued there before (the host does not wait);
        /// the buffer's event is recorded behind the copy.
        pub(super) fn upload(self, dev: &CudaDevice, shape: Shape) -> Result<Tensor> {
            let stream = dev.cuda_stream();
            let pinned = self.pinned.as_ref().expect("a buffer holds its pinned memory until dropped");
            let on_device = stream.clone_htod(&pinned.slice).map_err(driver)?;
            pinned.read.record(&stream).map_err(driver)?;
            let storage = CudaStorage::wrap_cuda_slice(on_device, dev.clone());
            Ok(Tensor::from_storage(Storage::Cuda(storage), shape, BackpropOp::none(), false))
        }

        /// The values, read back on the host (a device other than the pool's).
        pub(super) fn read(&self) -> Result<Vec<f32>> {
            let pinned = self.pinned.as_ref().expect("a buffer holds its pinned memory until dropped");
            Ok(pinned.slice.as_slice().map_err(driver)?.to_vec())
        }
    }

    impl Drop for Buffer {
        fn drop(&mut self) {
            if let Some(pinned) = self.pinned.take() {
                self.pool.buffers.give_back(pinned);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cpu_batch_becomes_its_tensor_as_it_is() {
        let staging = Staging::new(&Device::Cpu, 2);
        assert!(!staging.is_pinned());
        let values: Vec<f32> = (0..24).map(|v| v as f32 * 0.5 - 3.0).collect();
        let staged = staging.stage(values.clone(), &[2, 3, 4]).unwrap();
        assert_eq!(staged.shape().dims(), &[2, 3, 4]);
        let t = staged.into_tensor(&Device::Cpu).unwrap();
        assert_eq!(t.dims(), &[2, 3, 4]);
        assert_eq!(t.flatten_all().unwrap().to_vec1::<f32>().unwrap(), values);
    }

    /// A buffer that counts the buffers alive.
    struct Counted {
        len: usize,
        live: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    }

    impl Length for Counted {
        fn length(&self) -> usize {
            self.len
        }
    }

    impl Drop for Counted {
        fn drop(&mut self) {
            self.live.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    type Count = std::sync::Arc<std::sync::atomic::AtomicUsize>;

    /// Makes counted buffers, counting what it made.
    fn maker(live: &Count, made: &Count) -> impl Fn(usize) -> Result<Counted> {
        let (live, made) = (live.clone(), made.clone());
        move |len| {
            made.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            live.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok(Counted { len, live: live.clone() })
        }
    }

    #[test]
    fn the_pool_reuses_a_free_buffer_of_the_length_and_keeps_at_most_cap_alive() {
        use std::sync::atomic::Ordering::SeqCst;
        let (live, made): (Count, Count) = Default::default();
        let pool = BufferPool::new(2);
        let (a, b) = (pool.take(4, maker(&live, &made)).unwrap(), pool.take(4, maker(&live, &made)).unwrap());
        assert_eq!((a.len, b.len, made.load(SeqCst), live.load(SeqCst)), (4, 4, 2, 2));
        pool.give_back(a);
        pool.give_back(b);
        let a = pool.take(4, maker(&live, &made)).unwrap();
        assert_eq!(made.load(SeqCst), 2, "a free buffer of the length serves");
        // Another length, two alive: the free one of length 4 goes, a new one comes.
        let c = pool.take(6, maker(&live, &made)).unwrap();
        assert_eq!((c.len, made.load(SeqCst), live.load(SeqCst)), (6, 3, 2));
        pool.give_back(a);
        pool.give_back(c);
        let c = pool.take(6, maker(&live, &made)).unwrap();
        assert_eq!((c.len, made.load(SeqCst), live.load(SeqCst)), (6, 3, 2));
    }

    #[test]
    fn a_taker_waits_while_cap_buffers_are_out_and_a_failed_allocation_frees_its_place() {
        use std::sync::atomic::Ordering::SeqCst;
        use std::time::Duration;
        let (live, made): (Count, Count) = Default::default();
        let pool = std::sync::Arc::new(BufferPool::new(1));
        let held = pool.take(3, maker(&live, &made)).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let waiter = {
            let pool = pool.clone();
            std::thread::spawn(move || {
                let fail = |_| -> Result<Counted> { panic!("the one buffer comes back; none is made") };
                let got = pool.take(3, fail).unwrap();
                tx.send(got.len).unwrap();
                pool.give_back(got);
            })
        };
        assert!(rx.recv_timeout(Duration::from_millis(200)).is_err(), "the taker waits: the only buffer is out");
        pool.give_back(held);
        assert_eq!(rx.recv_timeout(Duration::from_secs(10)).unwrap(), 3);
        waiter.join().unwrap();
        assert_eq!((made.load(SeqCst), live.load(SeqCst)), (1, 1));
        // A buffer of another length: the free one goes, and the allocation fails; its
        // place is free again, so the next allocation is allowed.
        let failed = pool.take(5, |_| Err(crate::NnError::Shape("out of pinned memory".into())));
        assert!(failed.is_err());
        assert_eq!(live.load(SeqCst), 0);
        let ok = pool.take(5, maker(&live, &made)).unwrap();
        assert_eq!((ok.len, made.load(SeqCst), live.load(SeqCst)), (5, 2, 1));
    }

    #[test]
    fn a_shape_that_does_not_hold_the_values_is_refused() {
        let staging = Staging::new(&Device::Cpu, 1);
        let err = staging.stage(vec![0.0; 5], &[2, 3]).err().expect("5 values are not 2 x 3");
        assert!(err.to_string().contains("6 values) with 5 values"), "{err}");
    }
}
