//! The engine thread: intake, admission, chunked prefill and batched decode (see the module
//! docs of `engine`).

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use arkvale_core::{CacheManager, SeqId};
use crossbeam_channel::Receiver;

use super::{Event, FinishReason, Shared, Submitted};
use crate::loaded::LoadedModel;
use crate::memory::STAGING_SLACK;
use crate::sampling::Sampler;
use crate::stop::{StopMatcher, StopStep};
use crate::text::TextDecodeStream;

/// Where an admitted sequence is.
enum Phase {
    /// `done` prompt tokens prefilled so far.
    Prefill { done: usize },
    /// Waiting to feed back `next`, the last sampled token.
    Decode { next: u32 },
}

/// An admitted request.
struct Running<'m> {
    seq: SeqId,
    sub: Submitted,
    phase: Phase,
    sampler: Sampler,
    stream: TextDecodeStream<'m>,
    stop: StopMatcher,
    generated: usize,
}

/// The engine's state, borrowing the model for the decode streams' lifetime.
pub(super) struct Scheduler<'m> {
    model: &'m LoadedModel,
    cache: CacheManager,
    /// Slots sequences may reserve in total.
    usable: usize,
    /// Slots reserved by the running sequences.
    reserved: usize,
    max_batch: usize,
    shared: Arc<Shared>,
    queue: VecDeque<Submitted>,
    running: Vec<Running<'m>>,
}

impl<'m> Scheduler<'m> {
    pub(super) fn new(
        model: &'m LoadedModel,
        cache: CacheManager,
        capacity: usize,
        max_batch: usize,
        shared: Arc<Shared>,
    ) -> Self {
        Scheduler {
            model,
            cache,
            usable: capacity.saturating_sub(STAGING_SLACK),
            reserved: 0,
            max_batch,
            shared,
            queue: VecDeque::new(),
            running: Vec::new(),
        }
    }

    /// Runs until every handle is gone and no request is left.
    pub(super) fn run(mut self, rx: Receiver<Submitted>) {
        loop {
            if self.running.is_empty() && self.queue.is_empty() {
                match rx.recv() {
                    Ok(s) => self.queue.push_back(s),
                    Err(_) => break,
                }
            }
            while let Ok(s) = rx.try_recv() {
                self.queue.push_back(s);
            }
            self.drop_cancelled();
            self.admit();
            self.prefill_step();
            self.decode_step();
            self.publish_metrics();
        }
        self.publish_metrics();
    }

    /// Removes requests whose receiver is gone (the client left), counting each as finished
    /// and cancelled.
    fn drop_cancelled(&mut self) {
        let before = self.queue.len();
        self.queue.retain(|s| !s.events.is_closed());
        let dropped = before - self.queue.len();
        if dropped > 0 {
            let mut m = self.shared.metrics.lock();
            m.finished += dropped as u64;
            m.cancelled += dropped as u64;
            // Under the metrics lock, so that a snapshot never sees them in neither place.
            self.shared.waiting.fetch_sub(dropped, Ordering::AcqRel);
        }
        let gone: Vec<usize> = (0..self.running.len())
            .filter(|&i| self.running[i].sub.events.is_closed())
            .collect();
        for i in gone.into_iter().rev() {
            self.retire(i, true);
        }
    }

    /// Admits queued requests in order while their reservations fit.
    fn admit(&mut self) {
        while self.running.len() < self.max_batch {
            let Some(front) = self.queue.front() else {
                break;
            };
            if self.reserved + front.slots > self.usable {
                break;
            }
            let Some(sub) = self.queue.pop_front() else {
                break;
            };
            let checked = Sampler::new(sub.request.params, sub.request.seed).and_then(|sampler| {
                StopMatcher::new(sub.request.stop.clone()).map(|stop| (sampler, stop))
            });
            let (sampler, stop) = match checked {
                Ok(parts) => parts,
                Err(e) => {
                    {
                        let mut m = self.shared.metrics.lock();
                        m.finished += 1;
                        self.shared.waiting.fetch_sub(1, Ordering::AcqRel);
                    }
                    // Counted before the client hears of it.
                    let _ = sub.events.send(Event::Failed(e));
                    continue;
                }
            };
            self.reserved += sub.slots;
            self.running.push(Running {
                seq: self.cache.add_sequence(),
                sub,
                phase: Phase::Prefill { done: 0 },
                sampler,
                stream: self.model.tokenizer.decode_stream_continuing(true),
                stop,
                generated: 0,
            });
            // Moved from the queue to the running set in one step of the counters.
            let mut m = self.shared.metrics.lock();
            m.running = self.running.len();
            self.shared.waiting.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Prefills the next chunk of the oldest sequence still prefilling (the whole prompt at
    /// once for token-level policies, which choose their tokens at the end of a call).
    fn prefill_step(&mut self) {
        let Some(i) = self
            .running
            .iter()
            .position(|r| matches!(r.phase, Phase::Prefill { .. }))
        else {
            return;
        };
        let r = &self.running[i];
        let Phase::Prefill { done } = r.phase else {
            return;
        };
        let prompt = &r.sub.request.prompt;
        let chunk = if self.cache.policy().token_rule().is_some() {
            prompt.len()
        } else {
            self.cache.config().prefill_chunk_tokens.max(1)
        };
        let end = (done + chunk).min(prompt.len());
        let started = Instant::now();
        let result = self
            .model
            .model
            .prefill(&mut self.cache, r.seq, &prompt[done..end]);
        {
            let mut m = self.shared.metrics.lock();
            m.prefill_seconds += started.elapsed().as_secs_f64();
            m.prefilled_tokens += (end - done) as u64;
        }
        match result {
            Err(e) => self.fail(i, format!("prefill failed: {e}")),
            Ok(logits) if end == prompt.len() => self.sample_and_accept(i, &logits),
            Ok(_) => self.running[i].phase = Phase::Prefill { done: end },
        }
    }

    /// One decode step for every sequence waiting to feed a token back.
    fn decode_step(&mut self) {
        let batch: Vec<usize> = (0..self.running.len())
            .filter(|&i| matches!(self.running[i].phase, Phase::Decode { .. }))
            .collect();
        if batch.is_empty() {
            return;
        }
        let seqs: Vec<SeqId> = batch.iter().map(|&i| self.running[i].seq).collect();
        let tokens: Vec<u32> = batch
            .iter()
            .map(|&i| match self.running[i].phase {
                Phase::Decode { next } => next,
                Phase::Prefill { .. } => unreachable!("filtered to decoding sequences"),
            })
            .collect();
        let recalls_before = self.cache.stats().recalls;
        let started = Instant::now();
        let result = self.model.model.decode(&mut self.cache, &seqs, &tokens);
        {
            let mut m = self.shared.metrics.lock();
            m.decode_seconds += started.elapsed().as_secs_f64();
            m.decode_steps += 1;
            m.recalls += self.cache.stats().recalls - recalls_before;
            m.max_batch_seen = m.max_batch_seen.max(batch.len());
        }
        let vocab = self.model.model.vocab();
        match result {
            Err(e) => {
                for &i in batch.iter().rev() {
                    self.fail(i, format!("decode failed: {e}"));
                }
            }
            Ok(logits) => {
                // Back to front so that retiring a sequence keeps the earlier indices valid.
                for (row, &i) in batch.iter().enumerate().rev() {
                    self.sample_and_accept(i, &logits[row * vocab..(row + 1) * vocab]);
                }
            }
        }
    }

    /// Draws the next token of sequence `i` from `logits`, sends its text, and finishes the
    /// request or queues the token for the next decode step.
    fn sample_and_accept(&mut self, i: usize, logits: &[f32]) {
        let ctx = self.model.model.config().context_length;
        let r = &mut self.running[i];
        let token = match r.sampler.sample(logits) {
            Ok(t) => t,
            Err(e) => return self.fail(i, format!("sampling failed: {e}")),
        };
        let req = &r.sub.request;
        if Some(token) == req.eos {
            return self.finish(i, FinishReason::Stop, String::new(), Vec::new(), true);
        }
        r.generated += 1;
        self.shared.metrics.lock().generated_tokens += 1;
        let piece = match r.stream.push(token) {
            Ok(p) => p,
            Err(e) => return self.fail(i, format!("cannot decode token {token}: {e}")),
        };
        match r.stop.push(&piece) {
            StopStep::Stopped { text, .. } => {
                self.finish(i, FinishReason::Stop, text, vec![token], false);
            }
            StopStep::Emit(text) => {
                let held = req.prompt.len() + r.generated;
                if r.generated >= req.max_tokens || held >= ctx {
                    return self.finish(i, FinishReason::Length, text, vec![token], true);
                }
                r.phase = Phase::Decode { next: token };
                let _ = r.sub.events.send(Event::Text {
                    text,
                    tokens: vec![token],
                });
            }
        }
    }

    /// Sends the last `text` and `tokens` (with `flush`, plus whatever the decoder and the
    /// stop matcher still hold — not after a stop string) and `Done`, then retires
    /// sequence `i`.
    fn finish(
        &mut self,
        i: usize,
        mut reason: FinishReason,
        mut text: String,
        tokens: Vec<u32>,
        flush: bool,
    ) {
        let r = &mut self.running[i];
        if flush {
            let stream = std::mem::replace(
                &mut r.stream,
                self.model.tokenizer.decode_stream_continuing(true),
            );
            match r.stop.push(&stream.finish()) {
                StopStep::Emit(t) => {
                    text.push_str(&t);
                    text.push_str(&r.stop.finish());
                }
                StopStep::Stopped { text: t, .. } => {
                    text.push_str(&t);
                    reason = FinishReason::Stop;
                }
            }
        }
        // Retired (and counted) before the last events go out: a client that has its whole
        // answer sees the request finished in the metrics.
        let r = self.retire(i, false);
        if !text.is_empty() || !tokens.is_empty() {
            let _ = r.sub.events.send(Event::Text { text, tokens });
        }
        let _ = r.sub.events.send(Event::Done {
            reason,
            prompt_tokens: r.sub.request.prompt.len(),
            completion_tokens: r.generated,
        });
    }

    /// Retires sequence `i`, then sends `Failed(message)`.
    fn fail(&mut self, i: usize, message: String) {
        let r = self.retire(i, false);
        let _ = r.sub.events.send(Event::Failed(message));
    }

    /// Removes sequence `i` from the cache, releases its reservation and updates the
    /// counters (`running`, `finished`, `cancelled` when `cancelled`, the KV bytes), all
    /// before the caller tells the client; returns the request so that the caller can.
    fn retire(&mut self, i: usize, cancelled: bool) -> Running<'m> {
        let r = self.running.remove(i);
        self.reserved -= r.sub.slots;
        // Removing a known sequence cannot fail; if it did, its pages stay reserved in the
        // pool, which only lowers capacity.
        let _ = self.cache.remove_sequence(r.seq);
        let mut m = self.shared.metrics.lock();
        m.finished += 1;
        m.cancelled += u64::from(cancelled);
        m.running = self.running.len();
        m.kv_resident_bytes = self.cache.resident_bytes();
        m.kv_full_bytes = self.cache.full_bytes();
        r
    }

    fn publish_metrics(&self) {
        let mut m = self.shared.metrics.lock();
        m.running = self.running.len();
        m.kv_resident_bytes = self.cache.resident_bytes();
        m.kv_full_bytes = self.cache.full_bytes();
    }
}
