//! `--backend`: opening the compute device by name. Backends other than `cpu` are cargo
//! features of arkvale-cli; a binary built without one says how to get it.

use std::sync::Arc;

use anyhow::{Context, Result};
use arkvale_core::Device;
use arkvale_cpu::CpuDevice;

use crate::common_args::Backend;

/// Opens the device of `backend` (`threads`: CPU worker threads, `None` for all cores).
pub fn open_device(backend: Backend, threads: Option<usize>) -> Result<Arc<dyn Device>> {
    match backend {
        Backend::Cpu => Ok(Arc::new(
            CpuDevice::new(threads).context("cannot start the CPU backend")?,
        )),
        Backend::Wgpu => open_wgpu(),
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

/// Opens the first wgpu adapter (feature `wgpu`); no Vulkan/Metal/DX12 driver is an error
/// that says so.
#[cfg(feature = "wgpu")]
fn open_wgpu() -> Result<Arc<dyn Device>> {
    Ok(Arc::new(
        arkvale_wgpu::WgpuDevice::new().context("cannot open the wgpu backend")?,
    ))
}

/// Without feature `wgpu`: says how to build it.
#[cfg(not(feature = "wgpu"))]
fn open_wgpu() -> Result<Arc<dyn Device>> {
    not_built("wgpu")
}

/// One line describing the device `backend` opens here (for `arkvale info --backend`): for
/// wgpu the adapter, its driver and whether f16 storage is used.
pub fn describe(backend: Backend) -> Result<String> {
    #[cfg(feature = "wgpu")]
    if backend == Backend::Wgpu {
        let dev = arkvale_wgpu::WgpuDevice::new().context("cannot open the wgpu backend")?;
        let a = dev.adapter();
        return Ok(format!(
            "wgpu: adapter {} ({}, {}, driver {}); f16 storage: {} (half types packed in \
             32-bit words; SHADER_F16 {}); largest storage binding {} MiB",
            a.name,
            a.backend,
            a.device_type,
            a.driver.trim(),
            if dev.f16_storage() { "yes" } else { "no" },
            if a.shader_f16 {
                "available"
            } else {
                "not available"
            },
            a.max_storage_binding >> 20
        ));
    }
    let dev = open_device(backend, None)?;
    Ok(dev.name())
}

/// The error for a backend this binary was built without.
#[cfg(not(all(feature = "cuda", feature = "wgpu")))]
fn not_built(name: &str) -> Result<Arc<dyn Device>> {
    anyhow::bail!(
        "this arkvale binary was built without the `{name}` backend; rebuild with \
         `cargo run --release -p arkvale-cli --features {name} -- ...`"
    )
}
