//! [`WgpuEvent`]: completion of one submission, for asynchronous page copies.

use std::any::Any;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arkvale_core::{DeviceEvent, Error, Result};
use parking_lot::Mutex;

use crate::BACKEND;

/// Completes when its submission finished and, for a backup, when the staging buffer's bytes
/// reached host memory (the map callback sets the flag after copying).
pub struct WgpuEvent {
    pub(crate) device_id: u64,
    pub(crate) device: wgpu::Device,
    pub(crate) index: wgpu::SubmissionIndex,
    pub(crate) done: Arc<AtomicBool>,
    pub(crate) error: Arc<Mutex<Option<String>>>,
}

impl WgpuEvent {
    /// The id of the device that issued the copy.
    pub fn device(&self) -> u64 {
        self.device_id
    }

    fn result(&self) -> Result<()> {
        match self.error.lock().as_ref() {
            Some(e) => Err(Error::device(BACKEND, e.clone())),
            None => Ok(()),
        }
    }
}

impl DeviceEvent for WgpuEvent {
    fn is_done(&self) -> Result<bool> {
        if !self.done.load(Ordering::Acquire) {
            self.device
                .poll(wgpu::PollType::Poll)
                .map_err(|e| Error::device(BACKEND, e.to_string()))?;
        }
        self.result()?;
        Ok(self.done.load(Ordering::Acquire))
    }

    fn wait(&self) -> Result<()> {
        while !self.done.load(Ordering::Acquire) {
            self.device
                .poll(wgpu::PollType::Wait {
                    submission_index: Some(self.index.clone()),
                    timeout: None,
                })
                .map_err(|e| Error::device(BACKEND, e.to_string()))?;
            if !self.done.load(Ordering::Acquire) {
                std::thread::yield_now();
            }
        }
        self.result()
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}
