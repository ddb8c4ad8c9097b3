//! Opening the device: on a machine without a driver or GPU, `CudaDevice::new` must return an
//! error that says why (the suite prints it as the skip reason), never panic; with one, the
//! device opens and reports its name.

use arkvale_core::Device;
use arkvale_cuda::{CudaDevice, probe};

#[test]
fn opening_never_panics_and_explains_a_missing_gpu() {
    match CudaDevice::new(0) {
        Ok(dev) => {
            println!("opened {} (sm_{})", dev.device_name(), dev.arch());
            assert_eq!(dev.name(), "cuda");
            dev.synchronize().unwrap();
        }
        Err(e) => {
            let msg = e.to_string();
            println!("no CUDA device here: {msg}");
            assert!(probe().is_err() || msg.contains("NVRTC"), "{msg}");
            assert!(!msg.is_empty());
        }
    }
}
