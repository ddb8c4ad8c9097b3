//! The copy queue: one thread that runs page copies between the device and host arenas in
//! submission order, completing a [`CpuEvent`] per job.
//!
//! This models a GPU's copy engine: [`CopyWorker::submit`] returns at once, the job runs later
//! on the worker thread, and compute on the caller's thread goes on meanwhile. Jobs run one at
//! a time, in order, so a later copy observes an earlier one. A job that returns an error or
//! panics fails its event; the worker keeps serving later jobs.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::thread::JoinHandle;

use arkvale_core::{DeviceEvent, Error, Result};
use crossbeam_channel::{Sender, unbounded};

use crate::BACKEND;
use crate::event::CpuEvent;

/// A unit of work for the copy thread.
pub(crate) type Job = Box<dyn FnOnce() -> Result<()> + Send>;

/// The copy thread and the queue that feeds it. Dropping it finishes the queued jobs and joins
/// the thread.
pub(crate) struct CopyWorker {
    device: u64,
    queue: Option<Sender<(Job, Arc<CpuEvent>)>>,
    thread: Option<JoinHandle<()>>,
}

impl CopyWorker {
    /// Starts the copy thread of device `device`.
    pub(crate) fn start(device: u64) -> Result<Self> {
        let (queue, jobs) = unbounded::<(Job, Arc<CpuEvent>)>();
        let thread = std::thread::Builder::new()
            .name(format!("arkvale-cpu{device}-copy"))
            .spawn(move || {
                for (job, event) in jobs {
                    let outcome = catch_unwind(AssertUnwindSafe(job)).unwrap_or_else(|p| {
                        let msg = p
                            .downcast_ref::<String>()
                            .cloned()
                            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                            .unwrap_or_else(|| "unknown panic".into());
                        Err(Error::device(BACKEND, format!("copy job panicked: {msg}")))
                    });
                    event.complete(outcome);
                }
            })
            .map_err(|e| Error::device(BACKEND, format!("cannot start the copy thread: {e}")))?;
        Ok(CopyWorker {
            device,
            queue: Some(queue),
            thread: Some(thread),
        })
    }

    /// Queues `job` behind every earlier job and returns its event at once.
    pub(crate) fn submit(&self, job: Job) -> Result<Arc<CpuEvent>> {
        let event = Arc::new(CpuEvent::new(self.device));
        let queue = self
            .queue
            .as_ref()
            .ok_or_else(|| Error::device(BACKEND, "copy queue closed"))?;
        queue
            .send((job, event.clone()))
            .map_err(|_| Error::device(BACKEND, "the copy thread has stopped"))?;
        Ok(event)
    }

    /// Blocks until every job submitted so far has run (a fence through the FIFO queue).
    pub(crate) fn drain(&self) -> Result<()> {
        let fence = self.submit(Box::new(|| Ok(())))?;
        fence.wait()
    }
}

impl Drop for CopyWorker {
    fn drop(&mut self) {
        // Closing the channel lets the thread finish the queued jobs and exit.
        drop(self.queue.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[test]
    fn jobs_run_in_order_off_the_calling_thread() {
        let w = CopyWorker::start(7).unwrap();
        let seen = Arc::new(AtomicUsize::new(0));
        let caller = std::thread::current().id();
        let mut events = Vec::new();
        for i in 0..5 {
            let seen = seen.clone();
            events.push(
                w.submit(Box::new(move || {
                    assert_ne!(std::thread::current().id(), caller);
                    std::thread::sleep(Duration::from_millis(2));
                    assert_eq!(seen.fetch_add(1, Ordering::SeqCst), i);
                    Ok(())
                }))
                .unwrap(),
            );
        }
        // Submission returned before the (slow) jobs ran.
        assert!(seen.load(Ordering::SeqCst) < 5);
        w.drain().unwrap();
        assert_eq!(seen.load(Ordering::SeqCst), 5);
        for e in events {
            assert!(e.is_done().unwrap());
        }
    }

    #[test]
    fn errors_and_panics_fail_only_their_own_event() {
        let w = CopyWorker::start(8).unwrap();
        let bad = w
            .submit(Box::new(|| Err(Error::shape("disk on fire"))))
            .unwrap();
        let boom = w.submit(Box::new(|| panic!("kaboom"))).unwrap();
        let good = w.submit(Box::new(|| Ok(()))).unwrap();
        assert!(bad.wait().unwrap_err().to_string().contains("disk on fire"));
        assert!(boom.wait().unwrap_err().to_string().contains("kaboom"));
        good.wait().unwrap();
    }
}
