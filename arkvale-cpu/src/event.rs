//! [`CpuEvent`]: the completion marker of the copy worker's jobs.

use std::any::Any;

use arkvale_core::{DeviceEvent, Error, Result};
use parking_lot::{Condvar, Mutex};

use crate::BACKEND;

/// Where a job stands.
#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// Queued or running.
    Pending,
    /// Finished successfully.
    Done,
    /// Finished with an error (the message is reported by every wait).
    Failed(String),
}

/// Completion marker of one asynchronous copy job of a [`crate::CpuDevice`]: pending until the
/// copy worker finishes the job, then done or failed for good (completion is monotonic).
#[derive(Debug)]
pub struct CpuEvent {
    device: u64,
    state: Mutex<State>,
    changed: Condvar,
}

impl CpuEvent {
    /// A pending event of device `device`.
    pub(crate) fn new(device: u64) -> Self {
        CpuEvent {
            device,
            state: Mutex::new(State::Pending),
            changed: Condvar::new(),
        }
    }

    /// The id of the device whose copy worker completes this event.
    pub(crate) fn device(&self) -> u64 {
        self.device
    }

    /// Marks the job finished with `outcome` and wakes every waiter. Only the first call
    /// counts.
    pub(crate) fn complete(&self, outcome: Result<()>) {
        let mut state = self.state.lock();
        if *state == State::Pending {
            *state = match outcome {
                Ok(()) => State::Done,
                Err(e) => State::Failed(e.to_string()),
            };
            self.changed.notify_all();
        }
    }

    fn outcome(state: &State) -> Result<bool> {
        match state {
            State::Pending => Ok(false),
            State::Done => Ok(true),
            State::Failed(msg) => Err(Error::device(
                BACKEND,
                format!("asynchronous copy failed: {msg}"),
            )),
        }
    }
}

impl DeviceEvent for CpuEvent {
    /// `Ok(true)` once the job finished, `Ok(false)` while it is pending, the job's error if it
    /// failed.
    fn is_done(&self) -> Result<bool> {
        Self::outcome(&self.state.lock())
    }

    /// Blocks until the job finished; returns the job's error if it failed.
    fn wait(&self) -> Result<()> {
        let mut state = self.state.lock();
        while *state == State::Pending {
            self.changed.wait(&mut state);
        }
        Self::outcome(&state).map(|_| ())
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn wait_returns_once_completed_from_another_thread() {
        let ev = Arc::new(CpuEvent::new(1));
        assert!(!ev.is_done().unwrap());
        let other = ev.clone();
        let t = std::thread::spawn(move || other.complete(Ok(())));
        ev.wait().unwrap();
        t.join().unwrap();
        assert!(ev.is_done().unwrap());
    }

    #[test]
    fn a_failure_is_reported_by_every_wait_and_is_final() {
        let ev = CpuEvent::new(1);
        ev.complete(Err(Error::shape("boom")));
        ev.complete(Ok(()));
        assert!(ev.wait().unwrap_err().to_string().contains("boom"));
        assert!(ev.is_done().is_err());
    }
}
