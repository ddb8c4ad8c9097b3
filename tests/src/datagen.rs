//! Shared helpers of the op-level cases: a seeded data generator and buffer uploads.

use std::sync::Arc;

use arkvale_core::{Buffer, DType, Device, DeviceExt, Error};
use proptest::prelude::Rng as _;
use proptest::test_runner::{RngAlgorithm, TestRng};

/// Turns a core error into a case failure message.
pub(crate) fn err(e: Error) -> String {
    e.to_string()
}

/// The data generator of one case seed (ChaCha, so a seed replays exactly).
pub(crate) struct Gen(pub(crate) TestRng);

impl Gen {
    /// A generator from `seed`.
    pub(crate) fn new(seed: u64) -> Self {
        let mut bytes = [0u8; 32];
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = (seed >> (8 * (i % 8))) as u8 ^ (i as u8).wrapping_mul(31);
        }
        Gen(TestRng::from_seed(RngAlgorithm::ChaCha, &bytes))
    }
    /// Uniform in `0..n` (0 when `n == 0`).
    pub(crate) fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.0.next_u64() % n as u64) as usize
        }
    }
    /// Uniform in `lo..=hi`.
    pub(crate) fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below(hi - lo + 1)
    }
    /// Non-zero: magnitude in [0.05, 1], random sign.
    pub(crate) fn value(&mut self) -> f32 {
        let m = 0.05 + 0.95 * (self.0.next_u32() >> 8) as f32 / (1u32 << 24) as f32;
        if self.0.next_u32() & 1 == 0 { m } else { -m }
    }
    /// `n` non-zero values.
    pub(crate) fn values(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.value()).collect()
    }
}

/// Uploads f32 values as f32.
pub(crate) fn upload(dev: &Arc<dyn Device>, values: &[f32]) -> Result<Buffer, String> {
    dev.upload_f32(values, DType::F32).map_err(err)
}

/// An f32 buffer of `n` NaNs (an output poisoned so unwritten elements show).
pub(crate) fn poisoned(dev: &Arc<dyn Device>, n: usize) -> Result<Buffer, String> {
    upload(dev, &vec![f32::NAN; n])
}
