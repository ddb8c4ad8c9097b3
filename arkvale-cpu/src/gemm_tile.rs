//! The pieces that the f32/half matmul (`crate::matmul`) and the block-quantized one
//! (`crate::quant`) share: the widened-tile size, the output pointer that column-block tasks
//! write through, and one single-threaded `gemm` call on a block of output columns.
//!
//! A leaf module, so that neither matmul module imports the other.

use gemm::Parallelism;

/// Target size in elements of one widened weight tile (256 KiB of f32).
pub(crate) const TILE_ELEMS: usize = 1 << 16;

/// A raw pointer to the output that tasks writing disjoint columns share.
#[derive(Clone, Copy)]
pub(crate) struct OutPtr(pub(crate) *mut f32);
// SAFETY: tasks only write through the pointer to disjoint column blocks of the output (see
// `matmul`), while the `&mut [f32]` it came from is borrowed for the whole parallel section.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

/// `dst[i, j] = sum_l x[i, l] w[j, l]` for an m x nb block whose element (i, j) is at
/// `dst + i * dst_rs + j`.
///
/// # Safety
/// `x` holds m x k and `w` nb x k values; `dst` must be valid for writes of every element of
/// the block, and nothing else may access those elements during the call.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm_block(
    m: usize,
    nb: usize,
    k: usize,
    x: &[f32],
    w: &[f32],
    dst: *mut f32,
    dst_rs: usize,
    p: Parallelism,
) {
    debug_assert!(x.len() >= m * k && w.len() >= nb * k);
    // SAFETY: by the caller's contract; strides describe x (m x k, row-major), Wᵀ (k x nb,
    // element (l, j) at w[j * k + l]) and the destination block.
    unsafe {
        gemm::gemm(
            m,
            nb,
            k,
            dst,
            1,
            dst_rs as isize,
            false,
            x.as_ptr(),
            1,
            k as isize,
            w.as_ptr(),
            k as isize,
            1,
            0.0,
            1.0,
            false,
            false,
            false,
            p,
        )
    }
}
