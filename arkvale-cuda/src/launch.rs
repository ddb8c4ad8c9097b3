//! Kernel launches of [`CudaDevice`] on the compute stream: the checked launch by kernel
//! name, the descriptor upload buffer, the scratch buffer, and the small helpers every op's
//! launch uses (grid sizes, kernel-name suffixes, descriptor bytes).

use std::ffi::c_void;

use arkvale_core::{DType, Error, Result};

use crate::device::{CudaDevice, State};
use crate::driver::{DevMem, kargs, launch};

/// Dynamic shared memory a kernel may use without opting in.
pub(crate) const SMEM_LIMIT: usize = 48 << 10;

impl CudaDevice {
    pub(crate) fn launch(
        &self,
        name: &str,
        grid: (u32, u32, u32),
        block: u32,
        smem: usize,
        args: &[(*mut c_void, usize)],
    ) -> Result<()> {
        if smem > SMEM_LIMIT {
            return Err(Error::shape(format!(
                "{name}: needs {smem} bytes of shared memory, the limit is {SMEM_LIMIT}"
            )));
        }
        let k = self.kernels.get(name)?;
        launch(
            &k,
            grid,
            (block, 1, 1),
            smem as u32,
            &self.compute,
            args,
            name,
        )
    }

    /// Uploads descriptor arrays (each 16-byte aligned) into the args buffer on the compute
    /// stream and returns their device addresses. The host bytes are staged by the driver
    /// before this returns; a later upload overwrites the buffer only after the kernels issued
    /// before it ran (same stream).
    pub(crate) fn upload(&self, st: &mut State, parts: &[&[u8]]) -> Result<Vec<u64>> {
        let mut bytes = Vec::new();
        let mut offs = Vec::with_capacity(parts.len());
        for p in parts {
            while bytes.len() % 16 != 0 {
                bytes.push(0);
            }
            offs.push(bytes.len());
            bytes.extend_from_slice(p);
        }
        if bytes.is_empty() {
            return Ok(vec![0; parts.len()]);
        }
        let need = bytes.len();
        if st.args.as_ref().is_none_or(|a| a.bytes < need) {
            st.args = None;
            st.args = Some(DevMem::alloc(
                &self.ctx,
                need.next_power_of_two().max(64 << 10),
            )?);
        }
        let base = st.args.as_ref().map_or(0, |a| a.ptr);
        // SAFETY: the args buffer holds `need` bytes; pageable source bytes are staged by the
        // driver before the call returns.
        unsafe { self.compute.upload(base, &bytes, "uploading descriptors") }?;
        Ok(offs.into_iter().map(|o| base + o as u64).collect())
    }

    /// A scratch region of at least `bytes` (contents undefined), valid until the next call.
    pub(crate) fn scratch(&self, st: &mut State, bytes: usize) -> Result<u64> {
        if st.scratch.as_ref().is_none_or(|s| s.bytes < bytes) {
            st.scratch = None;
            st.scratch = Some(DevMem::alloc(
                &self.ctx,
                bytes.next_power_of_two().max(1 << 20),
            )?);
        }
        Ok(st.scratch.as_ref().map_or(0, |s| s.ptr))
    }

    pub(crate) fn fill(&self, ptr: u64, len: usize, value: f32) -> Result<()> {
        let n = len as u64;
        self.launch(
            "fill_f32",
            (grid1d(n), 1, 1),
            256,
            0,
            &kargs![ptr, n, value],
        )
    }
}

/// Blocks of 256 threads for `n` elements (grid-stride loops cover the rest).
pub(crate) fn grid1d(n: u64) -> u32 {
    n.div_ceil(256).clamp(1, 1 << 20) as u32
}

/// The kernel-name suffix of a storage type.
pub(crate) fn suffix(d: DType) -> &'static str {
    match d {
        DType::F16 => "f16",
        DType::BF16 => "bf16",
        _ => "f32",
    }
}

pub(crate) fn u32_bytes(v: &[u32]) -> &[u8] {
    bytemuck::cast_slice(v)
}
