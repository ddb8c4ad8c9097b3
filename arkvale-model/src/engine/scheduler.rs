//! The engine thread: intake, admission, chunked prefill and batched decode (see the module
//! docs of `engine`). What happens to one sequence — its prefill chunks, the choice of its
//! tokens, when it stops — is [`crate::generation`]'s, as for `arkvale generate`.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use arkvale_core::{CacheManager, SeqId};
use crossbeam_channel::Receiver;

use super::{Event, FinishReason, Shared, Submitted};
use crate::generation::{Generation, Limits, Prefill, Step, StopReason, choose_tokens};
use crate::loaded::LoadedModel;
use crate::memory::STAGING_SLACK;
use crate::sampling::Sampler;

/// Where an admitted sequence is.
enum Phase {
    /// Its prompt is going in, a chunk per step.
    Prefill(Prefill),
    /// Waiting to feed back `next`, the last chosen token.
    Decode { next: u32 },
}

/// An admitted request.
struct Running<'m> {
    seq: SeqId,
    sub: Submitted,
    phase: Phase,
    sampler: Sampler,
    generation: Generation<'m>,
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
            let req = &sub.request;
            let limits = Limits {
                eos: req.eos,
                max_tokens: req.max_tokens,
                held: req.prompt.len(),
                context_length: self.model.model.config().context_length,
            };
            let checked = Sampler::new(req.params, req.seed).and_then(|sampler| {
                Generation::new(&self.model.tokenizer, req.stop.clone(), limits)
                    .map(|generation| (sampler, generation))
            });
            let (sampler, generation) = match checked {
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
            let seq = self.cache.add_sequence();
            self.running.push(Running {
                seq,
                phase: Phase::Prefill(Prefill::new(&self.cache, seq, sub.request.prompt.len())),
                sub,
                sampler,
                generation,
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
            .position(|r| matches!(r.phase, Phase::Prefill(_)))
        else {
            return;
        };
        let r = &mut self.running[i];
        let Phase::Prefill(prefill) = &mut r.phase else {
            return;
        };
        let before = prefill.done();
        let started = Instant::now();
        let result = prefill.step(&self.model.model, &mut self.cache, &r.sub.request.prompt);
        {
            let mut m = self.shared.metrics.lock();
            m.prefill_seconds += started.elapsed().as_secs_f64();
            m.prefilled_tokens += (prefill.done() - before) as u64;
        }
        let chosen = match result {
            Err(e) => return self.fail(i, format!("prefill failed: {e}")),
            Ok(None) => return,
            Ok(Some(logits)) => choose_tokens(&logits, &mut [&mut r.sampler]),
        };
        match chosen.map(|mut c| c.remove(0)) {
            Ok(Ok(token)) => self.accept(i, token),
            Ok(Err(e)) => self.fail(i, format!("sampling failed: {e}")),
            Err(e) => self.fail(i, format!("sampling failed: {e}")),
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
                Phase::Prefill(_) => unreachable!("filtered to decoding sequences"),
            })
            .collect();
        let recalls_before = self.cache.stats().recalls;
        let started = Instant::now();
        let chosen = self
            .model
            .model
            .decode_logits(&mut self.cache, &seqs, &tokens)
            .and_then(|logits| {
                // The batch's samplers, in the order of `batch`.
                let mut samplers: Vec<&mut Sampler> = self
                    .running
                    .iter_mut()
                    .filter(|r| matches!(r.phase, Phase::Decode { .. }))
                    .map(|r| &mut r.sampler)
                    .collect();
                choose_tokens(&logits, &mut samplers)
            });
        {
            let mut m = self.shared.metrics.lock();
            m.decode_seconds += started.elapsed().as_secs_f64();
            m.decode_steps += 1;
            m.recalls += self.cache.stats().recalls - recalls_before;
            m.max_batch_seen = m.max_batch_seen.max(batch.len());
        }
        match chosen {
            Err(e) => {
                for &i in batch.iter().rev() {
                    self.fail(i, format!("decode failed: {e}"));
                }
            }
            Ok(chosen) => {
                // Back to front so that retiring a sequence keeps the earlier indices valid.
                for (&i, token) in batch.iter().zip(chosen).rev() {
                    match token {
                        Ok(token) => self.accept(i, token),
                        Err(e) => self.fail(i, format!("sampling failed: {e}")),
                    }
                }
            }
        }
    }

    /// Gives sequence `i` its chosen `token`, sends its text, and finishes the request or
    /// queues the token for the next decode step.
    fn accept(&mut self, i: usize, token: u32) {
        let r = &mut self.running[i];
        let step = match r.generation.accept(token) {
            Ok(step) => step,
            Err(e) => return self.fail(i, e.to_string()),
        };
        match step {
            Step::Continue { token, text } => {
                self.shared.metrics.lock().generated_tokens += 1;
                r.phase = Phase::Decode { next: token };
                let _ = r.sub.events.send(Event::Text {
                    text,
                    tokens: vec![token],
                });
            }
            Step::Finished {
                reason,
                token,
                text,
            } => {
                if token.is_some() {
                    self.shared.metrics.lock().generated_tokens += 1;
                }
                let reason = match reason {
                    StopReason::Eos | StopReason::StopString => FinishReason::Stop,
                    StopReason::MaxTokens | StopReason::ContextLength => FinishReason::Length,
                };
                self.finish(i, reason, text, token.into_iter().collect());
            }
        }
    }

    /// Retires sequence `i`, then sends the last `text` and `tokens` (if any) and `Done`.
    fn finish(&mut self, i: usize, reason: FinishReason, text: String, tokens: Vec<u32>) {
        // Retired (and counted) before the last events go out: a client that has its whole
        // answer sees the request finished in the metrics.
        let r = self.retire(i, false);
        if !text.is_empty() || !tokens.is_empty() {
            let _ = r.sub.events.send(Event::Text { text, tokens });
        }
        let _ = r.sub.events.send(Event::Done {
            reason,
            prompt_tokens: r.sub.request.prompt.len(),
            completion_tokens: r.generation.generated(),
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
