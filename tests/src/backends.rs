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

/// The names of the backends compiled into this build, in the suite's order.
pub fn compiled_names() -> Vec<&'static str> {
    #[allow(unused_mut)]
    let mut names = vec!["cpu"];
    #[cfg(feature = "wgpu")]
    names.push("wgpu");
    #[cfg(feature = "cuda")]
    names.push("cuda");
    names
}

/// Opens the backend `name`: `None` if it is not compiled into this build, else the device
/// or why it cannot be opened on this machine.
pub fn open_backend(name: &str) -> Option<Result<Arc<dyn Device>, String>> {
    match name {
        "cpu" => Some(
            arkvale_cpu::CpuDevice::new(None)
                .map(|d| Arc::new(d) as Arc<dyn Device>)
                .map_err(|e| e.to_string()),
        ),
        #[cfg(feature = "wgpu")]
        "wgpu" => Some(open_wgpu()),
        #[cfg(feature = "cuda")]
        "cuda" => Some(open_cuda()),
        _ => None,
    }
}

/// Every backend compiled in, opened if present.
pub fn compiled_backends() -> Vec<Backend> {
    compiled_names()
        .into_iter()
        .map(|name| Backend {
            name,
            device: open_backend(name).expect("a compiled backend opens"),
        })
        .collect()
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
