//! The copy queue: one thread that runs page copies between the device and host arenas in
//! submission order, completing a [`CpuEvent`] per job.
//!
//! This models a GPU's copy engine: [`CopyWorker::submit`] returns at once, the job runs later
//! on the worker thread, and compute on the caller's thread goes on meanwhile. Jobs run one at
//! a time, in order, so a later copy observes an earlier one. A job that returns an error or
//! panics fails its event; the worker keeps serving later jobs. A copy the caller is about to
//! wait for anyway (a recall) goes through [`CopyWorker::run_or_submit`] instead: with the
//! queue idle it runs at once on the calling thread, which saves two thread hand-offs per
//! copy and keeps the order (nothing earlier is still pending).

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
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
    /// Jobs submitted to the thread and not yet completed.
    pending: Arc<AtomicUsize>,
    queue: Option<Sender<(Job, Arc<CpuEvent>)>>,
    thread: Option<JoinHandle<()>>,
}

impl CopyWorker {
    /// Starts the copy thread of device `device`.
    pub(crate) fn start(device: u64) -> Result<Self> {
        let (queue, jobs) = unbounded::<(Job, Arc<CpuEvent>)>();
        let pending = Arc::new(AtomicUsize::new(0));
        let done = pending.clone();
        let thread = std::thread::Builder::new()
            .name(format!("arkvale-cpu{device}-copy"))
            .spawn(move || {
                for (job, event) in jobs {
                    event.complete(run_job(job));
                    done.fetch_sub(1, Ordering::Release);
                }
            })
            .map_err(|e| Error::device(BACKEND, format!("cannot start the copy thread: {e}")))?;
        Ok(CopyWorker {
            device,
            pending,
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
        self.pending.fetch_add(1, Ordering::AcqRel);
        if queue.send((job, event.clone())).is_err() {
            self.pending.fetch_sub(1, Ordering::AcqRel);
            return Err(Error::device(BACKEND, "the copy thread has stopped"));
        }
        Ok(event)
    }

    /// Runs `job` on the calling thread and returns its completed event when every earlier job
    /// has completed (so the order is the queue's); otherwise queues it like
    /// [`CopyWorker::submit`].
    pub(crate) fn run_or_submit(&self, job: Job) -> Result<Arc<CpuEvent>> {
        if self.pending.load(Ordering::Acquire) != 0 {
            return self.submit(job);
        }
        let event = Arc::new(CpuEvent::new(self.device));
        event.complete(run_job(job));
        Ok(event)
    }

    /// Blocks until every job submitted so far has run (a fence through the FIFO queue).
    pub(crate) fn drain(&self) -> Result<()> {
        let fence = self.submit(Box::new(|| Ok(())))?;
        fence.wait()
    }
}

/// Runs `job`, turning a panic into the job's error.
fn run_job(job: Job) -> Result<()> {
    catch_unwind(AssertUnwindSafe(job)).unwrap_or_else(|p| {
        let msg = p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "unknown panic".into());
        Err(Error::device(BACKEND, format!("copy job panicked: {msg}")))
    })
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

    #[test]
    fn jobs_run_in_order_off_the_calling_thread() {
        let w = CopyWorker::start(7).unwrap();
        let seen = Arc::new(AtomicUsize::new(0));
        let caller = std::thread::current().id();
        // The first job holds the queue until the test releases it, so every submission
        // below provably returns before any job ran (no timing involved).
        let (release, gate) = crossbeam_channel::bounded::<()>(0);
        let mut events = vec![
            w.submit(Box::new(move || {
                gate.recv().ok();
                Ok(())
            }))
            .unwrap(),
        ];
        for i in 0..5 {
            let seen = seen.clone();
            events.push(
                w.submit(Box::new(move || {
                    assert_ne!(std::thread::current().id(), caller);
                    assert_eq!(seen.fetch_add(1, Ordering::SeqCst), i);
                    Ok(())
                }))
                .unwrap(),
            );
        }
        assert_eq!(seen.load(Ordering::SeqCst), 0);
        release.send(()).unwrap();
        w.drain().unwrap();
        assert_eq!(seen.load(Ordering::SeqCst), 5);
        for e in events {
            assert!(e.is_done().unwrap());
        }
    }

    #[test]
    fn run_or_submit_runs_inline_only_behind_an_idle_queue() {
        let w = CopyWorker::start(9).unwrap();
        let caller = std::thread::current().id();
        // Idle queue: the job runs on the calling thread and its event is complete.
        let ran_on = Arc::new(parking_lot::Mutex::new(None));
        let r = ran_on.clone();
        let e = w
            .run_or_submit(Box::new(move || {
                *r.lock() = Some(std::thread::current().id());
                Ok(())
            }))
            .unwrap();
        assert!(e.is_done().unwrap());
        assert_eq!(*ran_on.lock(), Some(caller));
        // Behind a held job it is queued, and runs after it, on the copy thread.
        let (release, gate) = crossbeam_channel::bounded::<()>(0);
        let order = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let o = order.clone();
        w.submit(Box::new(move || {
            gate.recv().ok();
            o.lock().push("held");
            Ok(())
        }))
        .unwrap();
        let o = order.clone();
        let queued = w
            .run_or_submit(Box::new(move || {
                assert_ne!(std::thread::current().id(), caller);
                o.lock().push("second");
                Ok(())
            }))
            .unwrap();
        assert!(!queued.is_done().unwrap());
        release.send(()).unwrap();
        queued.wait().unwrap();
        assert_eq!(*order.lock(), vec!["held", "second"]);
        // Failures inline fail the event, as on the thread.
        let bad = w.run_or_submit(Box::new(|| panic!("inline boom"))).unwrap();
        assert!(bad.wait().unwrap_err().to_string().contains("inline boom"));
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
