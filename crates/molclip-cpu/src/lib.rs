//! The instruction sets molclip's CPU kernels use, and GEMM dispatched by them.
//!
//! molclip picks the widest instruction set the CPU has at run time ([`Isa::detected`]).
//! `MOLCLIP_CPU=avx512|avx2|scalar` caps it ([`isa`]), so that a machine with AVX-512 can
//! measure the AVX2 path (PyTorch's `ATEN_CPU_CAPABILITY=avx2` does the same for it). Every
//! GEMM of molclip's own kernels and of the evaluation goes through [`gemm_f32`] and
//! [`gemm_f64`] with [`isa`], which run the kernels for that instruction set: the `gemm`
//! crate's (the very code `gemm::gemm` runs when it picks the same one), except for float32
//! at AVX2 with both sides of the destination 64 or more, which runs molclip's own
//! (`sgemm_avx2`: the crate reaches 55 to 65 % of the cores' FMA peak there). Either way,
//! capping changes no number that the uncapped run on a CPU of that instruction set gives.
//!
//! [`shifted`] holds the products of a convolution computed on the grid of its zero-padded
//! input, whose window-matrix rows are shifted views of that input ([`shifted_gemm`] for the
//! forward pass, [`shifted_dot`] for the weight gradient), with kernels for each level.

use std::sync::OnceLock;

pub mod allocator;
mod peak;
#[cfg(target_arch = "x86_64")]
mod sgemm_avx2;
pub mod shifted;
#[cfg(target_arch = "x86_64")]
mod small;

use gemm_common::gemm::gemm_basic_generic;
pub use gemm_common::Parallelism;
pub use peak::fma_peak;
pub use shifted::{shifted_dot, shifted_gemm, transpose_rows_into, DotPanels, Run, ShiftedWeights};

/// An instruction-set level of the CPU kernels, narrowest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Isa {
    /// No SIMD beyond the target's baseline: portable code on any CPU.
    Scalar,
    /// aarch64 with NEON (what molclip uses on ARM CPUs).
    Neon,
    /// x86-64 with AVX2 and FMA (x86-64-v3).
    Avx2,
    /// x86-64 with AVX-512F (x86-64-v4).
    Avx512,
}

/// The environment variable that caps the instruction set.
pub const CAP_VAR: &str = "MOLCLIP_CPU";

/// A value of `MOLCLIP_CPU` that names no instruction set.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{CAP_VAR}={value}: expected avx512, avx2, neon or scalar")]
pub struct UnknownIsa {
    /// The value found.
    pub value: String,
}

impl Isa {
    /// Every level, narrowest first.
    pub const ALL: [Isa; 4] = [Isa::Scalar, Isa::Neon, Isa::Avx2, Isa::Avx512];

    /// Its name, as `MOLCLIP_CPU` and the benchmark tables write it.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Neon => "neon",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
        }
    }

    /// The level named `value` (`avx512`, `avx2`, `neon` or `scalar`, any case).
    pub fn parse(value: &str) -> Result<Self, UnknownIsa> {
        let v = value.trim().to_ascii_lowercase();
        Isa::ALL.into_iter().find(|i| i.name() == v).ok_or(UnknownIsa { value: value.to_string() })
    }

    /// Whether this CPU runs the level's kernels (NEON is an ARM level, AVX ones x86 levels).
    pub fn runs(self) -> bool {
        let arm = cfg!(target_arch = "aarch64");
        self <= Isa::detected() && (self != Isa::Neon || arm) && (!matches!(self, Isa::Avx2 | Isa::Avx512) || !arm)
    }

    /// The widest level this CPU runs.
    pub fn detected() -> Self {
        #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                return Isa::Avx512;
            }
            if std::arch::is_x86_feature_detected!("fma") && std::arch::is_x86_feature_detected!("avx2") {
                return Isa::Avx2;
            }
        }
        #[cfg(target_arch = "aarch64")]
        if std::arch::is_aarch64_feature_detected!("neon") {
            return Isa::Neon;
        }
        Isa::Scalar
    }
}

impl std::fmt::Display for Isa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The cap `MOLCLIP_CPU` sets, if any.
pub fn cap() -> Result<Option<Isa>, UnknownIsa> {
    match std::env::var(CAP_VAR) {
        Ok(v) if !v.trim().is_empty() => Isa::parse(&v).map(Some),
        _ => Ok(None),
    }
}

/// The level the kernels use: the detected one, capped by `MOLCLIP_CPU` (a cap above what
/// the CPU has changes nothing; another architecture's level means scalar). Read once per process; an unknown `MOLCLIP_CPU` is reported
/// by [`check_cap`], and ignored here.
pub fn isa() -> Isa {
    static ISA: OnceLock<Isa> = OnceLock::new();
    *ISA.get_or_init(|| {
        let detected = Isa::detected();
        // The widest level at most the cap that this CPU runs (a NEON cap on x86 is scalar).
        let cap = cap().ok().flatten().unwrap_or(detected);
        Isa::ALL.into_iter().rev().find(|l| *l <= cap && l.runs()).unwrap_or(Isa::Scalar)
    })
}

/// Refuses an unknown `MOLCLIP_CPU`: front ends call this at start-up, so that a typo is an
/// error rather than a silent full-speed run.
pub fn check_cap() -> Result<(), UnknownIsa> {
    cap().map(|_| ())
}

/// The CPU's model name (Linux: `/proc/cpuinfo`), or the architecture when unknown.
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string())
}

/// One line for benchmark tables: the CPU, and the level molclip's kernels use (with the
/// cap when one is set).
pub fn describe() -> String {
    let (detected, used) = (Isa::detected(), isa());
    let capped =
        if used == detected { String::new() } else { format!(" (capped by {CAP_VAR}; the CPU has {detected})") };
    format!("{}; molclip kernels: {used}{capped}", cpu_model())
}

/// A piece of work that [`vectorize`] compiles for each instruction set. `run` must be
/// `#[inline(always)]`, and so must what it calls for the wider code to reach it: an
/// inlined body takes the instruction set of the function it lands in.
pub trait Vectorized {
    /// What the work returns.
    type Output;
    /// Does the work.
    fn run(self) -> Self::Output;
}

/// Runs `work` compiled for the widest instruction set `level` allows: the loops it inlines
/// are vectorised for AVX2 and FMA (or AVX-512) instead of the target's baseline. It changes
/// no number: Rust neither contracts a multiply and an add into an FMA nor reorders a float
/// reduction, whatever the instruction set, so only element-wise loops get wider.
#[inline(always)]
pub fn vectorize<W: Vectorized>(level: Isa, work: W) -> W::Output {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f,avx2,fma")]
        unsafe fn avx512<W: Vectorized>(work: W) -> W::Output {
            work.run()
        }
        #[target_feature(enable = "avx2,fma")]
        unsafe fn avx2<W: Vectorized>(work: W) -> W::Output {
            work.run()
        }
        // `level` names more than the CPU has only when a caller made it up: isa() never does.
        let level = level.min(Isa::detected());
        if level == Isa::Avx512 {
            // SAFETY: Isa::detected() found AVX-512F (and AVX2 and FMA come with it on every
            // CPU that has it).
            return unsafe { avx512(work) };
        }
        if level == Isa::Avx2 {
            // SAFETY: Isa::detected() found AVX2 and FMA.
            return unsafe { avx2(work) };
        }
    }
    let _ = level;
    work.run()
}

/// Asks the CPU to bring `data` into its level-2 cache ahead of its use, one request per
/// 64-byte line; a hint, with no effect on any result (and none on CPUs other than x86-64).
#[inline(always)]
pub fn prefetch<T>(data: &[T]) {
    #[cfg(target_arch = "x86_64")]
    {
        let bytes = std::mem::size_of_val(data);
        let start = data.as_ptr().cast::<i8>();
        for offset in (0..bytes).step_by(64) {
            // SAFETY: a prefetch only hints; the address lies inside `data`, and even one
            // outside it could not fault.
            unsafe { std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T1 }>(start.add(offset)) };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = data;
}

/// Sizes `buf` for `len` values from a 64-byte boundary on, and returns where they start: a
/// packed panel's 16 values of one reduction index then fill one cache line, and no 32-byte
/// load of a kernel straddles two (a large allocation starts 16 bytes past a page, so that
/// without this every other load of a 64-byte row would).
pub(crate) fn cache_aligned(buf: &mut Vec<f32>, len: usize) -> usize {
    buf.resize(len + 15, 0.0);
    let first = buf.as_ptr().align_offset(64);
    assert!(first < 16, "a float buffer starts on a 4-byte boundary");
    first
}

/// Packed panels that start on a cache line ([`cache_aligned`]), zeros when made.
#[derive(Clone, Debug)]
pub(crate) struct CacheAligned {
    buf: Vec<f32>,
    first: usize,
    len: usize,
}

impl CacheAligned {
    pub(crate) fn zeros(len: usize) -> Self {
        let mut buf = Vec::new();
        let first = cache_aligned(&mut buf, len);
        Self { buf, first, len }
    }
}

impl std::ops::Deref for CacheAligned {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        &self.buf[self.first..][..self.len]
    }
}

impl std::ops::DerefMut for CacheAligned {
    fn deref_mut(&mut self) -> &mut [f32] {
        &mut self.buf[self.first..][..self.len]
    }
}

/// Raw pointers handed to parallel tasks: the operands of one GEMM (to the threads that
/// compute the parts of a split product, or `sgemm_avx2`'s packing and tiles), or the
/// destination of a parallel loop in molclip's other kernels.
#[derive(Clone, Copy)]
pub struct Shared<P>(pub P);

// SAFETY: a `Shared` is made only from pointers to buffers that outlive the scope or parallel
// loop its tasks run in; the tasks read the operands and write disjoint parts of the
// destination, which nothing else reads or writes while they run, so sending the pointers to
// another thread cannot create a data race (and dereferencing them takes `unsafe` anyway).
unsafe impl<P> Send for Shared<P> {}
// SAFETY: as for Send; the tasks only copy the pointers out.
unsafe impl<P> Sync for Shared<P> {}

impl<P: Copy> Shared<P> {
    /// The pointers: a method, so that a closure captures the whole (Send) wrapper, not the
    /// pointers inside it.
    pub fn get(&self) -> P {
        self.0
    }
}

/// The larger dimension from which [`split_output`] splits a GEMM whose reduction is no
/// longer.
const SPLIT_WITH_SHORT_REDUCTION: usize = 2048;

/// Where a threaded GEMM runs faster as one single-threaded GEMM per thread, each on a block
/// of the destination's larger dimension, than threaded inside the `gemm` crate: the `(first,
/// length)` of each block. So runs a GEMM with a long reduction (`k > max(m, n)`: a weight
/// gradient, summed over every position of a batch; 1.05 to 1.2x measured on 192 x 768 x 6400
/// and the like, AVX2 and AVX-512), and a tall or wide one with a short reduction (a linear
/// layer over thousands of tokens; 1.03 to 1.24x on 6400 x 768 x 192 and the like at
/// AVX-512, 1.03 to 1.06x at AVX2). The blocks are multiples of 16 long and the last keeps more than
/// 64, so that every block takes the kernel path, and with it the reduction blocks of the
/// whole (they depend on `k` alone there): every element gets the same sums, bit for bit.
fn split_output(m: usize, n: usize, k: usize, parallelism: Parallelism) -> Option<Vec<(usize, usize)>> {
    let Parallelism::Rayon(threads) = parallelism else { return None };
    let threads = if threads == 0 { rayon::current_num_threads() } else { threads };
    let big = m.max(n);
    // Blocks of at least 65 x 4 take the kernel path, as the whole does when it is this large.
    if threads < 2 || (k <= big && big < SPLIT_WITH_SHORT_REDUCTION) || m.min(n) < 4 {
        return None;
    }
    // As many blocks as threads, or fewer where the last would be too short.
    let block = (2..=threads).rev().map(|parts| big.div_ceil(parts).div_ceil(16) * 16).find(|&block| {
        let last = big - (big.div_ceil(block) - 1) * block;
        block > 64 && last > 64
    })?;
    Some((0..big).step_by(block).map(|first| (first, block.min(big - first))).collect())
}

/// Runs `part(first, length)` for each part of a split product ([`split_output`]), each a
/// task of its own, and returns once all are done.
fn in_parts(parts: Vec<(usize, usize)>, part: impl Fn(usize, usize) + Sync) {
    let part = &part;
    rayon::scope(|scope| {
        for (first, len) in parts {
            scope.spawn(move |_| part(first, len));
        }
    });
}

macro_rules! gemm_for {
    ($name:ident, $t:ident, $krate:ident, $doc:literal) => {
        #[doc = $doc]
        ///
        /// `dst[m × n] = alpha · dst + beta · lhs[m × k] · rhs[k × n]` (`alpha` is read only with
        /// `read_dst`), every operand with its column stride `_cs` and row stride `_rs`, as
        /// `gemm::gemm` takes them (without conjugation, which real numbers do not need).
        ///
        /// # Safety
        ///
        /// The pointers must be valid for the strided views the sizes and strides describe:
        /// `dst` for writes (and reads with `read_dst`), `lhs` and `rhs` for reads; `dst` must
        /// not overlap `lhs` or `rhs`. `level` must be at most [`Isa::detected`].
        #[allow(clippy::too_many_arguments)]
        pub unsafe fn $name(
            level: Isa,
            m: usize,
            n: usize,
            k: usize,
            dst: *mut $t,
            dst_cs: isize,
            dst_rs: isize,
            read_dst: bool,
            lhs: *const $t,
            lhs_cs: isize,
            lhs_rs: isize,
            rhs: *const $t,
            rhs_cs: isize,
            rhs_rs: isize,
            alpha: $t,
            beta: $t,
            parallelism: Parallelism,
        ) {
            // As gemm::gemm: the microkernels prefer a column-major destination, and every
            // stride positive.
            let (
                m,
                n,
                mut dst,
                mut dst_cs,
                mut dst_rs,
                mut lhs,
                mut lhs_cs,
                mut lhs_rs,
                mut rhs,
                mut rhs_cs,
                mut rhs_rs,
            ) = if dst_cs.abs() < dst_rs.abs() {
                (n, m, dst, dst_rs, dst_cs, rhs, rhs_rs, rhs_cs, lhs, lhs_rs, lhs_cs)
            } else {
                (m, n, dst, dst_cs, dst_rs, lhs, lhs_cs, lhs_rs, rhs, rhs_cs, rhs_rs)
            };
            if dst_rs < 0 && m > 0 {
                dst = dst.wrapping_offset((m - 1) as isize * dst_rs);
                dst_rs = -dst_rs;
                lhs = lhs.wrapping_offset((m - 1) as isize * lhs_rs);
                lhs_rs = -lhs_rs;
            }
            if dst_cs < 0 && n > 0 {
                dst = dst.wrapping_offset((n - 1) as isize * dst_cs);
                dst_cs = -dst_cs;
                rhs = rhs.wrapping_offset((n - 1) as isize * rhs_cs);
                rhs_cs = -rhs_cs;
            }
            if lhs_cs < 0 && k > 0 {
                lhs = lhs.wrapping_offset((k - 1) as isize * lhs_cs);
                lhs_cs = -lhs_cs;
                rhs = rhs.wrapping_offset((k - 1) as isize * rhs_rs);
                rhs_rs = -rhs_rs;
            }
            let whole = Product {
                m,
                n,
                k,
                dst,
                dst_cs,
                dst_rs,
                read_dst,
                lhs,
                lhs_cs,
                lhs_rs,
                rhs,
                rhs_cs,
                rhs_rs,
                alpha,
                beta,
                parallelism,
            };
            // The product of an m x n block of dst from its lhs rows and rhs columns, in one call
            // to the kernels of `level`: the whole, or each part of a split.
            let product = |p: Product<$t>| {
                let Product { m, n, dst, lhs, rhs, parallelism, .. } = p;
                macro_rules! run {
                    ($simd:expr, $ukr:path, $lanes:expr) => {{
                        use $ukr as u;
                        // SAFETY: `product` is called below only with the caller's views or with
                        // parts of them that write disjoint rows or columns of dst, which the
                        // caller's guarantee covers; the caller guarantees that the level (whose
                        // SIMD type `$simd` is) exists on this CPU.
                        unsafe {
                            gemm_basic_generic::<
                                _,
                                $t,
                                { $lanes },
                                { u::MR_DIV_N * $lanes },
                                { u::NR },
                                { u::MR_DIV_N },
                                { u::H_M },
                                { u::H_N },
                            >(
                                $simd,
                                m,
                                n,
                                k,
                                dst,
                                dst_cs,
                                dst_rs,
                                read_dst,
                                lhs,
                                lhs_cs,
                                lhs_rs,
                                rhs,
                                rhs_cs,
                                rhs_rs,
                                alpha,
                                beta,
                                false,
                                false,
                                false,
                                |a, b, c| a * b + c,
                                &u::UKR,
                                &u::H_UKR,
                                false,
                                parallelism,
                            )
                        }
                    }};
                }
                match level {
                    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
                    Isa::Avx512 => {
                        let simd = gemm_common::simd::V4::try_new().expect("AVX-512F detected");
                        run!(simd, $krate::microkernel::avx512f::$t, 64 / std::mem::size_of::<$t>())
                    }
                    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
                    Isa::Avx2 => {
                        // SAFETY: as for `run!`: the caller's views, or disjoint parts of them, and
                        // a level this CPU has.
                        let own = unsafe { <$t as OwnKernels>::avx2(p) };
                        if !own {
                            let simd = gemm_common::simd::V3::try_new().expect("AVX2 and FMA detected");
                            run!(simd, $krate::microkernel::fma::$t, 32 / std::mem::size_of::<$t>())
                        }
                    }
                    #[cfg(target_arch = "aarch64")]
                    Isa::Neon => {
                        run!(gemm_common::simd::Scalar, $krate::microkernel::neon::$t, 16 / std::mem::size_of::<$t>())
                    }
                    _ => run!(gemm_common::simd::Scalar, $krate::microkernel::scalar::$t, 1),
                }
            };
            if let Some(parts) = split_output(m, n, k, parallelism) {
                let whole = Shared(whole);
                in_parts(parts, |first, len| product(whole.get().part(first, len)));
            } else {
                product(whole)
            }
        }
    };
}

/// One product's operands, as [`gemm_f32`] takes them (after its normalisation of the
/// strides), for the kernels of molclip's own.
#[derive(Clone, Copy)]
pub(crate) struct Product<T> {
    pub(crate) m: usize,
    pub(crate) n: usize,
    pub(crate) k: usize,
    pub(crate) dst: *mut T,
    pub(crate) dst_cs: isize,
    pub(crate) dst_rs: isize,
    pub(crate) read_dst: bool,
    pub(crate) lhs: *const T,
    pub(crate) lhs_cs: isize,
    pub(crate) lhs_rs: isize,
    pub(crate) rhs: *const T,
    pub(crate) rhs_cs: isize,
    pub(crate) rhs_rs: isize,
    pub(crate) alpha: T,
    pub(crate) beta: T,
    pub(crate) parallelism: Parallelism,
}

impl<T> Product<T> {
    /// The part `first..first + len` of a split product ([`split_output`]), on one thread:
    /// those rows of dst (where `m >= n`) or columns, with the lhs rows or rhs columns they are
    /// made of; the other operand whole.
    fn part(self, first: usize, len: usize) -> Self {
        let first = first as isize;
        if self.m >= self.n {
            Self {
                m: len,
                dst: self.dst.wrapping_offset(first * self.dst_rs),
                lhs: self.lhs.wrapping_offset(first * self.lhs_rs),
                parallelism: Parallelism::None,
                ..self
            }
        } else {
            Self {
                n: len,
                dst: self.dst.wrapping_offset(first * self.dst_cs),
                rhs: self.rhs.wrapping_offset(first * self.rhs_cs),
                parallelism: Parallelism::None,
                ..self
            }
        }
    }
}

/// GEMM kernels of molclip's own, where they beat the `gemm` crate's.
trait OwnKernels: Sized {
    /// Runs the product with molclip's own AVX2 kernel and returns true, or returns false
    /// where there is none for this type and shape.
    ///
    /// # Safety
    ///
    /// As [`gemm_f32`], at the AVX2 level.
    unsafe fn avx2(product: Product<Self>) -> bool;
}

/// The `gemm` crate's float64 kernels run the evaluation's products at the cores' peak.
impl OwnKernels for f64 {
    unsafe fn avx2(_: Product<f64>) -> bool {
        false
    }
}

impl OwnKernels for f32 {
    unsafe fn avx2(product: Product<f32>) -> bool {
        #[cfg(target_arch = "x86_64")]
        if sgemm_avx2::takes(product.m, product.n) {
            // SAFETY: forwarded from the caller, who guarantees the views and AVX2 + FMA.
            unsafe { sgemm_avx2::sgemm(product) };
            return true;
        }
        let _ = product;
        false
    }
}

gemm_for!(gemm_f32, f32, gemm_f32, "Single-precision GEMM with the kernels of `level` (callers pass [`isa`]).");
gemm_for!(gemm_f64, f64, gemm_f64, "Double-precision GEMM with the kernels of `level` (callers pass [`isa`]).");

/// A product small enough to run on one thread (the attention's, one head at a time),
/// `dst[m × n] = alpha · lhs[m × k] · rhs[k × n]` (`dst` not read), strides as [`gemm_f32`]
/// takes them: at AVX2 and AVX-512, molclip's kernels for products too small to pack
/// (`small`, on vectors of the level: the same bits at both; on an AVX-512 machine even its
/// AVX2 tile ran a frame-vit step's attention faster than the `gemm` crate's AVX-512 kernel,
/// 306-318 against 323-340 ms a step); at other levels, [`gemm_f32`] on one thread.
///
/// # Safety
///
/// As [`gemm_f32`].
#[allow(clippy::too_many_arguments)]
pub unsafe fn gemm_f32_small(
    level: Isa,
    m: usize,
    n: usize,
    k: usize,
    (dst, dst_cs, dst_rs): (*mut f32, isize, isize),
    (lhs, lhs_cs, lhs_rs): (*const f32, isize, isize),
    (rhs, rhs_cs, rhs_rs): (*const f32, isize, isize),
    alpha: f32,
) {
    #[cfg(target_arch = "x86_64")]
    if level >= Isa::Avx2 {
        // SAFETY: the caller's views, and AVX2 and FMA (`level` is at most what the CPU has,
        // and every CPU with AVX-512F has both).
        unsafe {
            small::sgemm_small(
                level >= Isa::Avx512,
                m,
                n,
                k,
                (dst, dst_cs, dst_rs),
                (lhs, lhs_cs, lhs_rs),
                (rhs, rhs_cs, rhs_rs),
                alpha,
            )
        };
        return;
    }
    // SAFETY: the caller's views.
    unsafe {
        gemm_f32(
            level,
            m,
            n,
            k,
            dst,
            dst_cs,
            dst_rs,
            false,
            lhs,
            lhs_cs,
            lhs_rs,
            rhs,
            rhs_cs,
            rhs_rs,
            0.0,
            alpha,
            Parallelism::None,
        )
    }
}

/// A linear layer's forward pass, `y[rows × o] = x[rows × k] · wᵀ + b` (`w`: `[o × k]`; all
/// row-major, `y` not read), the bits of [`gemm_f32`] accumulating onto rows of the bias with
/// `alpha` and `beta` 1.
///
/// With molclip's own AVX2 kernel, the bias meets each sum as it leaves the registers: no
/// pass writes the bias rows first, and none reads them back (a frame-vit training step on
/// AVX2 spent about 5 % of its time on the two). Elsewhere, the bias rows, then the product
/// accumulating onto them.
///
/// # Safety
///
/// `y` valid for `rows · o` writes, `x` for `rows · k` reads, `w` for `o · k`, `b` for `o`;
/// `y` overlapping none of them. `level` must be at most [`Isa::detected`].
#[allow(clippy::too_many_arguments)]
pub unsafe fn linear_f32(
    level: Isa,
    rows: usize,
    o: usize,
    k: usize,
    y: *mut f32,
    x: *const f32,
    w: *const f32,
    b: *const f32,
    parallelism: Parallelism,
) {
    #[cfg(target_arch = "x86_64")]
    if level == Isa::Avx2 && k > 0 && sgemm_avx2::takes(o, rows) {
        // As gemm_f32 runs it: the transpose, yᵀ[o × rows] = w · xᵀ, whose rows (the outputs)
        // are contiguous in y; split as gemm_f32 would split it (parts of more than 64, so
        // each takes the kernel too).
        let whole = Product {
            m: o,
            n: rows,
            k,
            dst: y,
            dst_cs: o as isize,
            dst_rs: 1,
            read_dst: false,
            lhs: w,
            lhs_cs: 1,
            lhs_rs: k as isize,
            rhs: x,
            rhs_cs: k as isize,
            rhs_rs: 1,
            alpha: 0.0,
            beta: 1.0,
            parallelism,
        };
        // SAFETY: the caller's views, or parts of them (a block of outputs with their weights
        // and biases, or a block of rows of x and y); AVX2 and FMA, as `level` is at most what
        // the CPU has.
        let run = |p: Product<f32>, b: *const f32| unsafe { sgemm_avx2::sgemm_as_given(p, Some(b)) };
        match split_output(o, rows, k, parallelism) {
            Some(parts) => {
                let shared = Shared((whole, b));
                in_parts(parts, |first, len| {
                    let (whole, b) = shared.get();
                    // A part of the outputs takes their biases.
                    let b = if whole.m >= whole.n { b.wrapping_add(first) } else { b };
                    run(whole.part(first, len), b)
                });
            }
            None => run(whole, b),
        }
        return;
    }
    let whole = Shared((y, b));
    let fill = |row: usize| {
        let (y, b) = whole.get();
        // SAFETY: row < rows: its o values lie inside y, written by this task alone; b holds o.
        unsafe { std::ptr::copy_nonoverlapping(b, y.add(row * o), o) }
    };
    if matches!(parallelism, Parallelism::Rayon(t) if t != 1) {
        use rayon::prelude::*;
        (0..rows).into_par_iter().with_min_len((16_384 / o.max(1)).max(1)).for_each(fill);
    } else {
        (0..rows).for_each(fill);
    }
    // SAFETY: the caller's views (wᵀ: element (p, j) at j · k + p), y now initialised.
    unsafe {
        gemm_f32(level, rows, o, k, y, 1, o as isize, true, x, 1, k as isize, w, k as isize, 1, 1.0, 1.0, parallelism)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_parse_and_order() {
        assert_eq!(Isa::parse("AVX2"), Ok(Isa::Avx2));
        assert_eq!(Isa::parse(" avx512 "), Ok(Isa::Avx512));
        assert_eq!(Isa::parse("scalar"), Ok(Isa::Scalar));
        let e = Isa::parse("sse9").unwrap_err().to_string();
        assert!(e.contains("MOLCLIP_CPU=sse9") && e.contains("avx2"), "{e}");
        assert!(Isa::Scalar < Isa::Avx2 && Isa::Avx2 < Isa::Avx512);
        assert!(isa() <= Isa::detected() && isa().runs() && Isa::Scalar.runs() && Isa::detected().runs());
        assert!(describe().contains(isa().name()));
    }

    /// An element-wise pass (a multiply-add and a division, which an FMA or a reciprocal
    /// would change), a sum and a float-to-int conversion.
    struct Work<'a>(&'a [f64]);

    impl Vectorized for Work<'_> {
        type Output = (Vec<f64>, f64, Vec<i32>);
        #[inline(always)]
        fn run(self) -> Self::Output {
            let y: Vec<f64> = self.0.iter().map(|&x| (x * 1.7 + 0.3) / (x.abs() + 0.9)).collect();
            let sum = y.iter().sum();
            let ints = y.iter().map(|&v| (v * 1e6) as i32).collect();
            (y, sum, ints)
        }
    }

    #[test]
    fn vectorize_gives_the_same_bits_at_every_level() {
        let x = values(1003, 5);
        let scalar = vectorize(Isa::Scalar, Work(&x));
        for level in Isa::ALL.into_iter().filter(|l| l.runs()) {
            let got = vectorize(level, Work(&x));
            let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got.0), bits(&scalar.0), "{level}");
            assert_eq!(got.1.to_bits(), scalar.1.to_bits(), "{level}");
            assert_eq!(got.2, scalar.2, "{level}");
        }
        // A level above the CPU's runs what the CPU has.
        assert_eq!(vectorize(Isa::Avx512, Work(&x)).1.to_bits(), scalar.1.to_bits());
    }

    /// A deterministic matrix of `n` values in [-1, 1).
    fn values(n: usize, seed: u64) -> Vec<f64> {
        let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 11) as f64 / (1u64 << 52) as f64 * 2.0 - 1.0
            })
            .collect()
    }

    /// `lhs[m × k] · rhs[k × n]`, both row-major, in f64, the plain way.
    fn naive(m: usize, n: usize, k: usize, lhs: &[f64], rhs: &[f64]) -> Vec<f64> {
        let mut out = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                out[i * n + j] = (0..k).map(|p| lhs[i * k + p] * rhs[p * n + j]).sum();
            }
        }
        out
    }

    /// `dst = 0.5 · dst + 2 · lhs · rhs` for row-major operands and a destination of strides
    /// `(cs, rs)`: with our kernels of `Some(level)`, or with `gemm::gemm` for `None`.
    macro_rules! product {
        ($ours:ident, $t:ty) => {
            |level: Option<Isa>,
             dst: &mut [$t],
             a: &[$t],
             b: &[$t],
             (m, n, k): (usize, usize, usize),
             (cs, rs): (isize, isize)| {
                let (d, l, r, k_, n_) = (dst.as_mut_ptr(), a.as_ptr(), b.as_ptr(), k as isize, n as isize);
                // SAFETY: the buffers hold exactly the views the sizes and strides describe.
                unsafe {
                    match level {
                        Some(level) => {
                            $ours(level, m, n, k, d, cs, rs, true, l, 1, k_, r, 1, n_, 0.5, 2.0, Parallelism::None)
                        }
                        None => gemm::gemm(
                            m,
                            n,
                            k,
                            d,
                            cs,
                            rs,
                            true,
                            l,
                            1,
                            k_,
                            r,
                            1,
                            n_,
                            0.5,
                            2.0,
                            false,
                            false,
                            false,
                            gemm::Parallelism::None,
                        ),
                    }
                }
            }
        };
    }

    /// Every level this CPU runs, for shapes around the kernels' block sizes, with a row-major
    /// and a column-major destination, accumulating: the products agree with the plain ones,
    /// and at the detected level they are gemm::gemm's, bit for bit.
    #[test]
    fn every_level_multiplies_and_the_detected_one_is_gemms() {
        let (p64, p32) = (product!(gemm_f64, f64), product!(gemm_f32, f32));
        let levels: Vec<Isa> = Isa::ALL.into_iter().filter(|l| l.runs()).collect();
        for (m, n, k) in [(1, 1, 1), (3, 5, 7), (17, 33, 9), (64, 48, 130), (129, 7, 257)] {
            let (a, b, c0) = (values(m * k, 1), values(k * n, 2), values(m * n, 3));
            let (a32, b32): (Vec<f32>, Vec<f32>) =
                (a.iter().map(|&v| v as f32).collect(), b.iter().map(|&v| v as f32).collect());
            let want: Vec<f64> = naive(m, n, k, &a, &b).iter().zip(&c0).map(|(p, c)| 0.5 * c + 2.0 * p).collect();
            for column_major in [false, true] {
                let strides = if column_major { (m as isize, 1) } else { (1, n as isize) };
                let at = |i: usize, j: usize| if column_major { j * m + i } else { i * n + j };
                let mut start = vec![0.0; m * n];
                for (x, c) in c0.iter().enumerate() {
                    start[at(x / n, x % n)] = *c;
                }
                let start32: Vec<f32> = start.iter().map(|&v| v as f32).collect();
                for &level in &levels {
                    let (mut d64, mut d32) = (start.clone(), start32.clone());
                    p64(Some(level), &mut d64, &a, &b, (m, n, k), strides);
                    p32(Some(level), &mut d32, &a32, &b32, (m, n, k), strides);
                    for (x, w) in want.iter().enumerate() {
                        let (i, j) = (x / n, x % n);
                        assert!((d64[at(i, j)] - w).abs() <= 1e-12 * (1.0 + k as f64), "{level} f64 {m}x{n}x{k}");
                        assert!((d32[at(i, j)] as f64 - w).abs() <= 1e-5 * (1.0 + k as f64), "{level} f32 {m}x{n}x{k}");
                    }
                    if level == Isa::detected() {
                        let (mut g64, mut g32) = (start.clone(), start32.clone());
                        p64(None, &mut g64, &a, &b, (m, n, k), strides);
                        p32(None, &mut g32, &a32, &b32, (m, n, k), strides);
                        assert_eq!(g64, d64, "{level} f64 {m}x{n}x{k} differs from gemm::gemm");
                        assert_eq!(g32, d32, "{level} f32 {m}x{n}x{k} differs from gemm::gemm");
                    }
                }
            }
        }
    }

    /// A product that does not accumulate sets every value of its destination and reads none,
    /// at every level and shape (the `gemm` crate's kernels and molclip's own, a reduction of
    /// length 0, threaded or not): callers hand it memory that was never initialised. A
    /// destination of NaN would show any value read.
    #[test]
    fn a_destination_not_read_stays_unseen() {
        for (m, n, k) in [(1, 1, 1), (3, 5, 7), (17, 33, 9), (5, 4, 0), (64, 48, 130), (129, 7, 257), (200, 96, 300)] {
            let (a, b) = (values(m * k, 11), values(k * n, 12));
            let plain = naive(m, n, k, &a, &b);
            let (a32, b32): (Vec<f32>, Vec<f32>) =
                (a.iter().map(|&v| v as f32).collect(), b.iter().map(|&v| v as f32).collect());
            for level in Isa::ALL.into_iter().filter(|l| l.runs()) {
                for parallelism in [Parallelism::None, Parallelism::Rayon(2)] {
                    let mut dst = vec![f32::NAN; m * n];
                    let (d, l, r) = (dst.as_mut_ptr(), a32.as_ptr(), b32.as_ptr());
                    let (k_, n_) = (k as isize, n as isize);
                    // SAFETY: the buffers hold exactly the row-major views the sizes describe.
                    unsafe { gemm_f32(level, m, n, k, d, 1, n_, false, l, 1, k_, r, 1, n_, 0.0, 1.0, parallelism) };
                    for (got, want) in dst.iter().zip(&plain) {
                        assert!((*got as f64 - want).abs() <= 1e-5 * (1.0 + k as f64), "{level} {m}x{n}x{k}: {got}");
                    }
                }
            }
        }
    }

    /// Products too small to pack, at every level: within rounding of the plain sums for
    /// the attention's shapes and around the tiles (2 rows x 32 columns at AVX2, 5 x 64 at
    /// AVX-512, the last vector masked; right operands across memory copied through 8 x 8
    /// transposes and the columns past them), right operands along memory or across it,
    /// destinations with a unit column stride or not (neither read: NaN there stays unseen);
    /// an element's bits do not depend on the rows and columns computed with it, and are the
    /// same at AVX2 and AVX-512.
    #[test]
    fn small_products_match_the_plain_sums_in_every_layout() {
        for (m, n, k) in [
            (50, 50, 64),
            (50, 64, 50),
            (1, 1, 1),
            (3, 7, 5),
            (17, 33, 9),
            (2, 40, 0),
            (5, 65, 17),
            (11, 129, 3),
            (6, 24, 70),
        ] {
            // Each layout's destination at AVX2, to compare the wider vectors' bits with.
            let mut at_avx2: Vec<Vec<f32>> = Vec::new();
            let (a, b) = (values(m * k, 31), values(k * n, 32));
            let plain = naive(m, n, k, &a, &b);
            for level in Isa::ALL.into_iter().filter(|l| l.runs()) {
                for (layout, (rhs_across, dst_across)) in
                    [(false, false), (true, false), (false, true), (true, true)].into_iter().enumerate()
                {
                    // lhs row-major; rhs row-major or column-major; dst row-major or column-major.
                    let lhs: Vec<f32> = a.iter().map(|&v| v as f32).collect();
                    let rhs: Vec<f32> = if rhs_across {
                        (0..k * n).map(|x| b[(x % k) * n + x / k] as f32).collect()
                    } else {
                        b.iter().map(|&v| v as f32).collect()
                    };
                    let rhs_strides = if rhs_across { (k as isize, 1) } else { (1, n as isize) };
                    let dst_strides = if dst_across { (m as isize, 1) } else { (1, n as isize) };
                    let mut dst = vec![f32::NAN; m * n];
                    // SAFETY: buffers of exactly the views the sizes and strides describe.
                    unsafe {
                        gemm_f32_small(
                            level,
                            m,
                            n,
                            k,
                            (dst.as_mut_ptr(), dst_strides.0, dst_strides.1),
                            (lhs.as_ptr(), 1, k as isize),
                            (rhs.as_ptr(), rhs_strides.0, rhs_strides.1),
                            0.5,
                        )
                    };
                    if level == Isa::Avx2 {
                        at_avx2.push(dst.clone());
                    } else if level == Isa::Avx512 {
                        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                        assert_eq!(
                            bits(&dst),
                            bits(&at_avx2[layout]),
                            "{m}x{n}x{k}, layout {layout}: AVX-512 against AVX2"
                        );
                    }
                    for i in 0..m {
                        for j in 0..n {
                            let got = dst[(i as isize * dst_strides.1 + j as isize * dst_strides.0) as usize] as f64;
                            let want = 0.5 * plain[i * n + j];
                            assert!(
                                (got - want).abs() <= 1e-5 * (1.0 + k as f64),
                                "{level} {m}x{n}x{k} ({i}, {j}): {got} against {want}"
                            );
                        }
                    }
                    if level >= Isa::Avx2 && m > 1 && n > 1 {
                        // The last row and column alone: the same bits.
                        let mut corner = [f32::NAN];
                        let (i, j) = (m - 1, n - 1);
                        // SAFETY: one element of each operand's view, as above.
                        unsafe {
                            gemm_f32_small(
                                level,
                                1,
                                1,
                                k,
                                (corner.as_mut_ptr(), 1, 1),
                                (lhs.as_ptr().add(i * k), 1, k as isize),
                                (rhs.as_ptr().offset(j as isize * rhs_strides.0), rhs_strides.0, rhs_strides.1),
                                0.5,
                            )
                        };
                        let whole = dst[(i as isize * dst_strides.1 + j as isize * dst_strides.0) as usize];
                        assert_eq!(corner[0].to_bits(), whole.to_bits(), "{m}x{n}x{k}");
                    }
                }
            }
        }
    }

    /// A linear layer's forward pass gives, bit for bit, the product accumulated onto rows of
    /// the bias, at every level, split or not, on 1 to 3 threads, its destination not read
    /// (NaN there stays unseen): shapes split by rows, split by outputs, of several reduction
    /// blocks, and too small for molclip's own kernel; and within rounding of the plain sums.
    #[test]
    fn a_linear_layer_gives_the_bits_of_its_product_onto_the_bias() {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(3).build().expect("pool");
        for (rows, o, k) in [(3000, 100, 300), (100, 2100, 50), (130, 70, 513), (50, 200, 64), (200, 20, 30), (7, 5, 0)]
        {
            let (x, w, b) = (values(rows * k, 21), values(o * k, 22), values(o, 23));
            let wt: Vec<f64> = (0..k * o).map(|i| w[(i % o) * k + i / o]).collect();
            let plain = naive(rows, o, k, &x, &wt);
            let f32s = |v: &[f64]| v.iter().map(|&v| v as f32).collect::<Vec<f32>>();
            let (x, w, b) = (f32s(&x), f32s(&w), f32s(&b));
            for level in Isa::ALL.into_iter().filter(|l| l.runs()) {
                let mut want: Vec<f32> = (0..rows * o).map(|i| b[i % o]).collect();
                let (kk, oo) = (k as isize, o as isize);
                // SAFETY: row-major buffers of exactly the views described (wᵀ read from w).
                unsafe {
                    gemm_f32(
                        level,
                        rows,
                        o,
                        k,
                        want.as_mut_ptr(),
                        1,
                        oo,
                        true,
                        x.as_ptr(),
                        1,
                        kk,
                        w.as_ptr(),
                        kk,
                        1,
                        1.0,
                        1.0,
                        Parallelism::None,
                    )
                };
                for (i, (got, sum)) in want.iter().zip(&plain).enumerate() {
                    let exact = sum + b[i % o] as f64;
                    assert!(
                        (*got as f64 - exact).abs() <= 1e-5 * (1.0 + k as f64),
                        "{level} {rows}x{o}x{k}: {got} against {exact}"
                    );
                }
                for (threads, parallelism) in
                    [(1, Parallelism::None), (2, Parallelism::Rayon(2)), (3, Parallelism::Rayon(0))]
                {
                    let mut y = vec![f32::NAN; rows * o];
                    let y_ptr = Shared(y.as_mut_ptr());
                    let run = || {
                        // SAFETY: as above; y holds rows x o values.
                        unsafe {
                            linear_f32(level, rows, o, k, y_ptr.get(), x.as_ptr(), w.as_ptr(), b.as_ptr(), parallelism)
                        }
                    };
                    if threads == 3 {
                        pool.install(run)
                    } else {
                        run()
                    }
                    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                    assert!(bits(&y) == bits(&want), "{level} {rows}x{o}x{k} on {threads} threads");
                }
            }
        }
    }

    /// molclip's own AVX2 kernel (both sides of the destination 64 or more): the products
    /// agree with the plain ones for shapes around its blocks (16 x 6 tiles, 128 x 192
    /// blocks, reductions in blocks of at most 256), both orders of both operands, three
    /// destination layouts (one with no unit stride), the destination read or not (not read:
    /// the NaN there stays unseen); and an element's bits depend neither on the thread count
    /// nor on the rows it is computed with.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn our_avx2_kernel_multiplies_every_layout_with_bits_independent_of_blocking() {
        if !Isa::Avx2.runs() {
            return;
        }
        let pool = rayon::ThreadPoolBuilder::new().num_threads(3).build().expect("pool");
        for (m, n, k) in [(64, 64, 0), (64, 64, 1), (70, 100, 513), (200, 65, 1100), (129, 390, 64), (300, 200, 700)] {
            assert!(sgemm_avx2::takes(m, n));
            let (a, b, c0) = (values(m * k, 7), values(k * n, 8), values(m * n, 9));
            let plain = naive(m, n, k, &a, &b);
            // (column stride, row stride, buffer length) of a destination layout.
            let layouts = [(1, n, m * n), (m, 1, m * n), (2, 2 * n + 1, 2 * n * m + m)];
            for (lhs_t, rhs_t, (cs, rs, len), read) in
                (0..24).map(|x| (x & 1 == 1, x & 2 == 2, layouts[x / 8], x & 4 == 4))
            {
                let a32: Vec<f32> = if lhs_t {
                    (0..m * k).map(|x| a[(x % m) * k + x / m] as f32).collect()
                } else {
                    a.iter().map(|&v| v as f32).collect()
                };
                let b32: Vec<f32> = if rhs_t {
                    (0..k * n).map(|x| b[(x % k) * n + x / k] as f32).collect()
                } else {
                    b.iter().map(|&v| v as f32).collect()
                };
                // (column stride, row stride) of each operand.
                let (lhs_s, rhs_s) = (
                    if lhs_t { (m as isize, 1) } else { (1, k as isize) },
                    if rhs_t { (k as isize, 1) } else { (1, n as isize) },
                );
                let at = |i: usize, j: usize| i * rs + j * cs;
                let mut start = vec![f32::NAN; len];
                if read {
                    for (x, c) in c0.iter().enumerate() {
                        start[at(x / n, x % n)] = *c as f32;
                    }
                }
                // Rows `first..first + rows` of the product, with `par`.
                let run = |first: usize, rows: usize, par: Parallelism| {
                    let mut d = start.clone();
                    // SAFETY: the buffers hold the views the sizes and strides describe, the
                    // rows first..first + rows of lhs and dst among them.
                    pool.install(|| unsafe {
                        gemm_f32(
                            Isa::Avx2,
                            rows,
                            n,
                            k,
                            d.as_mut_ptr().add(first * rs),
                            cs as isize,
                            rs as isize,
                            read,
                            a32.as_ptr().offset(first as isize * lhs_s.1),
                            lhs_s.0,
                            lhs_s.1,
                            b32.as_ptr(),
                            rhs_s.0,
                            rhs_s.1,
                            0.5,
                            2.0,
                            par,
                        )
                    });
                    d
                };
                let what = format!("{m}x{n}x{k} lhs_t {lhs_t} rhs_t {rhs_t} dst ({cs}, {rs}) read {read}");
                let one = run(0, m, Parallelism::None);
                for (x, p) in plain.iter().enumerate() {
                    let (i, j) = (x / n, x % n);
                    let w = if read { 0.5 * c0[x] } else { 0.0 } + 2.0 * p;
                    assert!((one[at(i, j)] as f64 - w).abs() <= 1e-5 * (1.0 + k as f64), "{what}: ({i}, {j})");
                }
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&run(0, m, Parallelism::Rayon(3))), bits(&one), "{what}: threads");
                // The product as given and as its transpose (dstᵀ = rhsᵀ · lhsᵀ), which the
                // kernel runs instead where it packs less: the same bits.
                for transpose in [false, true] {
                    let mut t = start.clone();
                    let product = Product {
                        m,
                        n,
                        k,
                        dst: t.as_mut_ptr(),
                        dst_cs: cs as isize,
                        dst_rs: rs as isize,
                        read_dst: read,
                        lhs: a32.as_ptr(),
                        lhs_cs: lhs_s.0,
                        lhs_rs: lhs_s.1,
                        rhs: b32.as_ptr(),
                        rhs_cs: rhs_s.0,
                        rhs_rs: rhs_s.1,
                        alpha: 0.5,
                        beta: 2.0,
                        parallelism: Parallelism::None,
                    };
                    let product = if transpose { sgemm_avx2::transposed(product) } else { product };
                    // SAFETY: the views of `run`'s whole product, read transposed or not.
                    unsafe { sgemm_avx2::sgemm_as_given(product, None) };
                    assert_eq!(bits(&t), bits(&one), "{what}: transposed {transpose}");
                }
                if m >= 37 + 70 {
                    let part = run(37, 70, Parallelism::None);
                    let rows = |v: &[f32]| {
                        (37..107)
                            .flat_map(|i| (0..n).map(move |j| (i, j)))
                            .map(|(i, j)| v[at(i, j)].to_bits())
                            .collect::<Vec<_>>()
                    };
                    assert_eq!(rows(&part), rows(&one), "{what}: rows 37..107 alone");
                }
            }
        }
    }

    /// A threaded GEMM with a long reduction runs as blocks of the destination, one per
    /// thread: the blocks tile the larger dimension, and the product is the one-threaded
    /// product bit for bit, at every level, both dimensions split, both destination orders.
    #[test]
    fn a_gemm_split_by_threads_gives_the_single_threaded_bits() {
        assert_eq!(split_output(192, 768, 6400, Parallelism::Rayon(2)), Some(vec![(0, 384), (384, 384)]));
        for (m, n, k, threads) in [(240, 40, 700, 2), (40, 250, 900, 2), (301, 7, 1200, 3), (333, 333, 1000, 4)] {
            let parts = split_output(m, n, k, Parallelism::Rayon(threads)).expect("split");
            assert!(parts.len() <= threads && parts.iter().all(|&(_, len)| len > 64));
            assert_eq!(parts.iter().map(|p| p.1).sum::<usize>(), m.max(n));
            assert!(parts.windows(2).all(|w| w[0].0 + w[0].1 == w[1].0));
        }
        assert_eq!(split_output(6400, 192, 768, Parallelism::Rayon(2)), Some(vec![(0, 3200), (3200, 3200)]), "tall");
        assert_eq!(split_output(2000, 192, 768, Parallelism::Rayon(2)), None, "short reduction, not tall enough");
        assert_eq!(split_output(100, 100, 6400, Parallelism::Rayon(2)), None, "blocks of 64 or less");
        assert_eq!(split_output(512, 512, 13824, Parallelism::Rayon(2)), Some(vec![(0, 256), (256, 256)]));
        assert_eq!(split_output(200, 7, 1200, Parallelism::Rayon(3)), Some(vec![(0, 112), (112, 88)]), "fewer blocks");
        assert_eq!(split_output(301, 3, 1200, Parallelism::Rayon(3)), None, "blocks of a few columns");
        assert_eq!(split_output(192, 768, 6400, Parallelism::None), None);
        let pool = rayon::ThreadPoolBuilder::new().num_threads(3).build().expect("pool");
        let levels: Vec<Isa> = Isa::ALL.into_iter().filter(|l| l.runs()).collect();
        for (m, n, k) in [(240, 40, 700), (40, 250, 900), (301, 7, 1200), (2100, 20, 300)] {
            let (a, b, c0) = (values(m * k, 4), values(k * n, 5), values(m * n, 6));
            let (a32, b32, c32): (Vec<f32>, Vec<f32>, Vec<f32>) = (
                a.iter().map(|&v| v as f32).collect(),
                b.iter().map(|&v| v as f32).collect(),
                c0.iter().map(|&v| v as f32).collect(),
            );
            for &level in &levels {
                for strides in [(1, n as isize), (m as isize, 1)] {
                    let run = |par: Parallelism| {
                        let (mut d64, mut d32) = (c0.clone(), c32.clone());
                        let (k_, n_) = (k as isize, n as isize);
                        // SAFETY: the buffers hold exactly the views the sizes and strides describe.
                        pool.install(|| unsafe {
                            gemm_f64(
                                level,
                                m,
                                n,
                                k,
                                d64.as_mut_ptr(),
                                strides.0,
                                strides.1,
                                true,
                                a.as_ptr(),
                                1,
                                k_,
                                b.as_ptr(),
                                1,
                                n_,
                                0.5,
                                2.0,
                                par,
                            );
                            gemm_f32(
                                level,
                                m,
                                n,
                                k,
                                d32.as_mut_ptr(),
                                strides.0,
                                strides.1,
                                true,
                                a32.as_ptr(),
                                1,
                                k_,
                                b32.as_ptr(),
                                1,
                                n_,
                                0.5,
                                2.0,
                                par,
                            );
                        });
                        (
                            d64.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                            d32.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                        )
                    };
                    assert_eq!(run(Parallelism::Rayon(3)), run(Parallelism::None), "{level} {m}x{n}x{k} {strides:?}");
                }
            }
        }
    }
}
