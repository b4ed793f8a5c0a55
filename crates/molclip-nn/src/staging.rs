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

#[cfg(feature = "cuda")]
mod pinned {
    //! Page-locked buffers and their pool.

    use std::sync::{Arc, Condvar, Mutex};

    use candle_core::cuda::cudarc::driver::{CudaContext, PinnedHostSlice};
    use candle_core::op::BackpropOp;
    use candle_core::{CudaDevice, CudaStorage, Shape, Storage, Tensor};

    use crate::Result;

    fn driver(e: impl std::error::Error + Send + Sync + 'static) -> crate::NnError {
        crate::NnError::Candle(candle_core::Error::wrap(e))
    }

    /// At most `cap` pinned buffers alive; the free ones wait in `free`.
    pub(super) struct Pool {
        ctx: Arc<CudaContext>,
        cap: usize,
        state: Mutex<PoolState>,
        returned: Condvar,
    }

    struct PoolState {
        free: Vec<PinnedHostSlice<f32>>,
        /// Buffers alive: free, being written or waiting for their copy.
        alive: usize,
    }

    /// A pinned buffer holding one batch; back to its pool when dropped.
    pub(super) struct Buffer {
        slice: Option<PinnedHostSlice<f32>>,
        pool: Arc<Pool>,
    }

    impl Pool {
        pub(super) fn new(dev: &CudaDevice, cap: usize) -> Self {
            let ctx = dev.cuda_stream().context().clone();
            Self { ctx, cap, state: Mutex::new(PoolState { free: Vec::new(), alive: 0 }), returned: Condvar::new() }
        }

        /// A buffer of exactly `values.len()` values, holding them: a free one of that
        /// length, or a new one while fewer than `cap` are alive (a free one of another
        /// length is let go to make room), or else the next one returned.
        pub(super) fn write(self: &Arc<Self>, values: &[f32]) -> Result<Buffer> {
            let mut slice = self.take(values.len())?;
            // Waits on the buffer's event: the copy that last read it has ended.
            slice.as_mut_slice().map_err(driver)?.copy_from_slice(values);
            Ok(Buffer { slice: Some(slice), pool: self.clone() })
        }

        fn take(&self, len: usize) -> Result<PinnedHostSlice<f32>> {
            let mut state = self.state.lock().expect("the pinned pool's lock");
            loop {
                if let Some(k) = state.free.iter().position(|s| s.len() == len) {
                    return Ok(state.free.swap_remove(k));
                }
                if state.alive == self.cap {
                    if let Some(other) = state.free.pop() {
                        // A free buffer of another length: freeing it makes room.
                        state.alive -= 1;
                        drop(other);
                    }
                }
                if state.alive < self.cap {
                    state.alive += 1;
                    drop(state);
                    // SAFETY: the buffer's values are unset; `write` overwrites all of them
                    // before anything reads it.
                    let allocated = unsafe { self.ctx.alloc_pinned::<f32>(len) };
                    if allocated.is_err() {
                        self.state.lock().expect("the pinned pool's lock").alive -= 1;
                    }
                    return allocated.map_err(driver);
                }
                state = self.returned.wait(state).expect("the pinned pool's lock");
            }
        }
    }

    impl Buffer {
        /// The batch on the GPU: a new device buffer, and the copy into it queued on the
        /// device's stream, after everything queued there before (the host does not wait).
        pub(super) fn upload(self, dev: &CudaDevice, shape: Shape) -> Result<Tensor> {
            let stream = dev.cuda_stream();
            let slice = self.slice.as_ref().expect("a buffer holds its slice until dropped");
            // Queues the copy, then records the buffer's event behind it on the stream.
            let on_device = stream.clone_htod(slice).map_err(driver)?;
            let storage = CudaStorage::wrap_cuda_slice(on_device, dev.clone());
            Ok(Tensor::from_storage(Storage::Cuda(storage), shape, BackpropOp::none(), false))
        }

        /// The values, read back on the host (a device other than the pool's).
        pub(super) fn read(&self) -> Result<Vec<f32>> {
            let slice = self.slice.as_ref().expect("a buffer holds its slice until dropped");
            Ok(slice.as_slice().map_err(driver)?.to_vec())
        }
    }

    impl Drop for Buffer {
        fn drop(&mut self) {
            if let Some(slice) = self.slice.take() {
                let mut state = self.pool.state.lock().expect("the pinned pool's lock");
                state.free.push(slice);
                drop(state);
                self.pool.returned.notify_one();
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

    #[test]
    fn a_shape_that_does_not_hold_the_values_is_refused() {
        let staging = Staging::new(&Device::Cpu, 1);
        let err = staging.stage(vec![0.0; 5], &[2, 3]).err().expect("5 values are not 2 x 3");
        assert!(err.to_string().contains("6 values) with 5 values"), "{err}");
    }
}
