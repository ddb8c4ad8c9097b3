//! The backends this build can test, and why an absent one is skipped.

use std::sync::Arc;

use arkvale_core::Device;

/// A backend compiled into this build: its name and either a device or the reason it is
/// absent on this machine.
pub struct Backend {
    /// `cpu`, `cuda`, `wgpu`.
    pub name: &'static str,
    /// The device, or why it cannot be opened here.
    pub device: Result<Arc<dyn Device>, String>,
}

/// Every backend compiled in, opened if present.
pub fn compiled_backends() -> Vec<Backend> {
    #[allow(unused_mut)]
    let mut backends = vec![Backend {
        name: "cpu",
        device: arkvale_cpu::CpuDevice::new(None)
            .map(|d| Arc::new(d) as Arc<dyn Device>)
            .map_err(|e| e.to_string()),
    }];
    #[cfg(feature = "wgpu")]
    backends.push(Backend {
        name: "wgpu",
        device: open_wgpu(),
    });
    #[cfg(feature = "cuda")]
    backends.push(Backend {
        name: "cuda",
        device: open_cuda(),
    });
    backends
}

/// Opens CUDA device 0; no driver, no GPU or no NVRTC is a skip reason (checked before any
/// driver call, so it never panics).
#[cfg(feature = "cuda")]
fn open_cuda() -> Result<Arc<dyn Device>, String> {
    arkvale_cuda::CudaDevice::new(0)
        .map(|d| Arc::new(d) as Arc<dyn Device>)
        .map_err(|e| match e {
            arkvale_core::Error::Device { message, .. } => message,
            other => other.to_string(),
        })
}

/// Opens the wgpu backend; no adapter (or a panic inside the driver stack) is a skip reason.
#[cfg(feature = "wgpu")]
fn open_wgpu() -> Result<Arc<dyn Device>, String> {
    std::panic::catch_unwind(arkvale_wgpu::WgpuDevice::new)
        .map_err(|_| "opening a wgpu adapter panicked".to_string())?
        .map(|d| Arc::new(d) as Arc<dyn Device>)
        .map_err(|e| e.to_string())
}
