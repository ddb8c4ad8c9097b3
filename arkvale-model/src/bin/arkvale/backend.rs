//! `--backend`: opening the compute device by name. Backends other than `cpu` are cargo
//! features of arkvale-model; a binary built without one says how to get it.

use std::sync::Arc;

use anyhow::{Context, Result, bail};
use arkvale_core::Device;
use arkvale_cpu::CpuDevice;

use crate::args::Backend;

/// Opens the device of `backend` (`threads`: CPU worker threads, `None` for all cores).
pub fn open_device(backend: Backend, threads: Option<usize>) -> Result<Arc<dyn Device>> {
    match backend {
        Backend::Cpu => Ok(Arc::new(
            CpuDevice::new(threads).context("cannot start the CPU backend")?,
        )),
        Backend::Wgpu => not_built("wgpu"),
        Backend::Cuda => open_cuda(),
    }
}

/// Opens CUDA device 0 (feature `cuda`): a missing driver, GPU or NVRTC is an error that says
/// which.
#[cfg(feature = "cuda")]
fn open_cuda() -> Result<Arc<dyn Device>> {
    Ok(Arc::new(
        arkvale_cuda::CudaDevice::new(0).context("cannot open the CUDA backend")?,
    ))
}

/// Without feature `cuda`: says how to build it.
#[cfg(not(feature = "cuda"))]
fn open_cuda() -> Result<Arc<dyn Device>> {
    not_built("cuda")
}

/// The error for a backend this binary was built without.
fn not_built(name: &str) -> Result<Arc<dyn Device>> {
    bail!(
        "this arkvale binary was built without the `{name}` backend; rebuild with \
         `cargo run --release -p arkvale-model --features {name} -- ...`"
    )
}
