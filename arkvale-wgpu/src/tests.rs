//! wgpu-specific unit tests (the differential suite in `arkvale-tests` covers every op).
