//! Times a few ops on the wgpu adapter (development probe).
use std::time::Instant;

use arkvale_core::{DType, Device, DeviceExt, MatmulDims};
use arkvale_wgpu::WgpuDevice;

fn main() {
    let dev = WgpuDevice::new().unwrap();
    println!("{:?}", dev.adapter());
    let x = dev.upload_f32(&vec![0.5; 576], DType::F32).unwrap();
    let y = dev.upload_f32(&vec![0.5; 576], DType::F32).unwrap();
    dev.synchronize().unwrap();
    let t = Instant::now();
    for _ in 0..400 {
        dev.add(576, &x, &y).unwrap();
    }
    dev.synchronize().unwrap();
    println!("400 adds: {:.2?}", t.elapsed());
    for (n, k) in [(49152usize, 576usize), (1536, 576), (576, 1536)] {
        for dt in [DType::F32, DType::F16] {
            let w = dev.upload_f32(&vec![0.01; n * k], dt).unwrap();
            let xb = dev.upload_f32(&vec![0.5; k], DType::F32).unwrap();
            let o = dev.alloc(DType::F32, n).unwrap();
            dev.matmul(&MatmulDims { m: 1, n, k }, &xb, &w, &o).unwrap();
            dev.synchronize().unwrap();
            let t = Instant::now();
            for _ in 0..5 {
                dev.matmul(&MatmulDims { m: 1, n, k }, &xb, &w, &o).unwrap();
            }
            dev.synchronize().unwrap();
            println!("gemv {n}x{k} {dt:?}: {:.2?}", t.elapsed() / 5);
        }
    }
}
