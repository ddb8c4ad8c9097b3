//! [`CpuEvent`]: the completion marker of the copy worker's jobs.

use std::any::Any;
use std::sync::atomic::{AtomicBool, Ordering};

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
    /// Whether a caller has seen the job finished (a wait returned, or `is_done` said so).
    observed: AtomicBool,
}

impl CpuEvent {
    /// A pending event of device `device`.
    pub(crate) fn new(device: u64) -> Self {
        CpuEvent {
            device,
            state: Mutex::new(State::Pending),
            changed: Condvar::new(),
            observed: AtomicBool::new(false),
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

    /// Whether a caller has seen this job finished (through [`DeviceEvent::wait`], a `true`
    /// from [`DeviceEvent::is_done`], or a failure reported by either). Only then may the
    /// caller rely on the job's completion, so only then are its slots free again.
    pub(crate) fn observed(&self) -> bool {
        self.observed.load(Ordering::Acquire)
    }

    /// Blocks until the job finished, without reporting its outcome to anyone (the backend
    /// waits this way for a backup before overwriting its slot; the caller still learns the
    /// backup's outcome from its own waits).
    pub(crate) fn wait_until_finished(&self) {
        let mut state = self.state.lock();
        while *state == State::Pending {
            self.changed.wait(&mut state);
        }
    }

    fn outcome(&self, state: &State) -> Result<bool> {
        if *state != State::Pending {
            self.observed.store(true, Ordering::Release);
        }
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
        self.outcome(&self.state.lock())
    }

    /// Blocks until the job finished; returns the job's error if it failed.
    fn wait(&self) -> Result<()> {
        let mut state = self.state.lock();
        while *state == State::Pending {
            self.changed.wait(&mut state);
        }
        self.outcome(&state).map(|_| ())
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
        assert!(!ev.observed());
        let other = ev.clone();
        let t = std::thread::spawn(move || other.complete(Ok(())));
        ev.wait().unwrap();
        t.join().unwrap();
        assert!(ev.observed());
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
