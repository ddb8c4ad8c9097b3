//! A continuous-batching generation engine over one [`CacheManager`]: requests join and
//! leave at any step, prompts are prefilled in chunks interleaved with the decode of running
//! sequences, and every decode step runs the whole batch through the model once (one GEMM
//! per weight, one attention call per layer for all sequences).
//!
//! # Admission by KV memory
//!
//! The device KV pool is [`EngineConfig::kv_bytes`]. A request is admitted only when the
//! slots it can ever need — [`crate::memory::size_cache`]'s rule for its prompt plus
//! `max_tokens`, without the shared staging slack — fit next to what the running sequences
//! have reserved. With `arkvale` a sequence reserves about its budget; with `full` its whole
//! context; so the same pool holds many more `arkvale` sequences. A request that fits only
//! later waits in the queue (bounded by [`EngineConfig::max_queue`]); one that can never fit
//! is refused with [`SubmitError::TooLarge`]. Because reservations cover the worst case, a
//! running sequence is never preempted and never runs out of memory.
//!
//! # Threads
//!
//! The engine runs on its own thread ([`Engine::spawn`]); [`EngineHandle`] submits requests
//! from any thread and each request gets its own event channel ([`Event`]). Dropping the
//! receiver cancels the request: its sequence is removed at the next step.

mod admission;
mod scheduler;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::Instant;

use arkvale_core::{CacheConfig, CacheManager, policy_by_name};
use crossbeam_channel::{Sender, unbounded};
use parking_lot::Mutex;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

use crate::loaded::LoadedModel;
use crate::sampling::SamplingParams;

pub use admission::Admission;

/// How the engine is set up.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// The cache configuration (policy knobs, page size, budget, KV dtype, prefill chunk);
    /// its `device_bytes` and `host_bytes` are replaced by `kv_bytes` and `host_bytes`.
    pub cache: CacheConfig,
    /// The eviction policy's name (see `arkvale_core::policy::POLICY_NAMES`).
    pub policy: String,
    /// Bytes of the device KV pool shared by all sequences.
    pub kv_bytes: usize,
    /// Limit of the host backup tier (allocated as used; beyond it pages spill to disk when
    /// `cache.spill_dir` is set).
    pub host_bytes: usize,
    /// Most sequences decoded together.
    pub max_batch: usize,
    /// Most requests waiting for admission; more are refused with [`SubmitError::QueueFull`].
    pub max_queue: usize,
}

/// One generation request (token ids in, events out).
#[derive(Debug, Clone)]
pub struct Request {
    /// The prompt's token ids (non-empty).
    pub prompt: Vec<u32>,
    /// Most tokens to generate.
    pub max_tokens: usize,
    /// How tokens are drawn.
    pub params: SamplingParams,
    /// The sampler's seed.
    pub seed: u64,
    /// Stop strings (text before the first one is returned).
    pub stop: Vec<String>,
    /// The end-of-sequence id that ends generation (`None`: never).
    pub eos: Option<u32>,
}

/// Why a request finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// End of sequence or a stop string.
    Stop,
    /// `max_tokens` reached, or the model's context length.
    Length,
}

impl FinishReason {
    /// The OpenAI name: `stop` or `length`.
    pub fn name(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
        }
    }
}

/// What a request receives, in order: any number of `Text`, then one `Done` or `Failed`.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// Newly generated text (stop strings held back and cut) and the ids that produced it.
    Text {
        /// The text.
        text: String,
        /// The generated token ids since the previous event.
        tokens: Vec<u32>,
    },
    /// Generation ended.
    Done {
        /// Why.
        reason: FinishReason,
        /// Prompt tokens.
        prompt_tokens: usize,
        /// Generated tokens (EOS not counted).
        completion_tokens: usize,
    },
    /// The request failed (the message says why); its sequence is gone.
    Failed(String),
}

/// Why a request was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    /// The waiting queue is full; try again later.
    #[error("the request queue is full ({0} waiting)")]
    QueueFull(usize),
    /// The request can never fit the KV pool.
    #[error(
        "the request needs {need} KV bytes on the device but the pool holds {have}; shorten \
         the prompt or max_tokens"
    )]
    TooLarge {
        /// Bytes it needs.
        need: usize,
        /// Bytes of the pool (minus the shared staging slack).
        have: usize,
    },
    /// Invalid request (empty prompt, longer than the context, bad stop strings...).
    #[error("{0}")]
    Invalid(String),
    /// The engine has stopped.
    #[error("the engine has shut down")]
    ShutDown,
}

/// A snapshot of the engine's counters.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Metrics {
    /// Sequences admitted and not finished (prefilling or decoding); updated when a
    /// sequence is admitted or retired, before its client hears of it.
    pub running: usize,
    /// Requests waiting for admission.
    pub queued: usize,
    /// Requests that left the engine since start, for any reason: done, failed, or
    /// cancelled (running or still queued). Counted before the request's last event is
    /// sent, so a client holding its whole answer always sees its request here.
    pub finished: u64,
    /// Of `finished`, the requests cancelled because their receiver was dropped.
    pub cancelled: u64,
    /// Tokens generated since start.
    pub generated_tokens: u64,
    /// Prompt tokens prefilled since start.
    pub prefilled_tokens: u64,
    /// Decode steps run (one per batch step).
    pub decode_steps: u64,
    /// Seconds spent in decode steps.
    pub decode_seconds: f64,
    /// Seconds spent in prefill chunks.
    pub prefill_seconds: f64,
    /// Pages recalled from host backups since start (all layers).
    pub recalls: u64,
    /// KV bytes resident on the device now.
    pub kv_resident_bytes: usize,
    /// KV bytes a full cache would hold for the running sequences.
    pub kv_full_bytes: usize,
    /// Bytes of the device KV pool.
    pub kv_pool_bytes: usize,
    /// Largest decode batch so far.
    pub max_batch_seen: usize,
}

impl Metrics {
    /// Generated tokens per second of decode time.
    pub fn decode_tokens_per_s(&self) -> f64 {
        if self.decode_seconds > 0.0 {
            self.generated_tokens as f64 / self.decode_seconds
        } else {
            0.0
        }
    }

    /// Recalled pages per decode step.
    pub fn recalls_per_step(&self) -> f64 {
        if self.decode_steps > 0 {
            self.recalls as f64 / self.decode_steps as f64
        } else {
            0.0
        }
    }
}

/// A request on its way into the engine.
struct Submitted {
    request: Request,
    events: UnboundedSender<Event>,
    /// Slots it reserves (checked against the pool at submit time).
    slots: usize,
}

/// State shared by the engine thread and its handles.
struct Shared {
    metrics: Mutex<Metrics>,
    stop: AtomicBool,
    /// Requests submitted and not yet admitted (or dropped).
    waiting: AtomicUsize,
    started: Instant,
}

/// Builds and starts engines.
pub struct Engine;

impl Engine {
    /// Builds the cache for `model` as `config` says and starts the engine thread.
    pub fn spawn(
        model: Arc<LoadedModel>,
        config: EngineConfig,
    ) -> Result<EngineHandle, arkvale_core::Error> {
        let mut cache_config = config.cache.clone();
        cache_config.device_bytes = config.kv_bytes;
        cache_config.host_bytes = config.host_bytes;
        let policy = policy_by_name(&config.policy, &cache_config)?;
        let shape = model.model.shape();
        let admission = Admission::new(shape, &cache_config, policy.residency());
        let cache = CacheManager::new(model.model.device().clone(), shape, cache_config, policy)?;
        let (tx, rx) = unbounded::<Submitted>();
        let shared = Arc::new(Shared {
            metrics: Mutex::new(Metrics {
                kv_pool_bytes: cache.pool_capacity() * cache.layout().slot_bytes(),
                ..Default::default()
            }),
            stop: AtomicBool::new(false),
            waiting: AtomicUsize::new(0),
            started: Instant::now(),
        });
        let capacity = cache.pool_capacity();
        let thread = {
            let shared = shared.clone();
            let model = model.clone();
            let max_batch = config.max_batch.max(1);
            std::thread::Builder::new()
                .name("arkvale-engine".into())
                .spawn(move || {
                    scheduler::Scheduler::new(&model, cache, capacity, max_batch, shared).run(rx)
                })
                .map_err(|e| arkvale_core::Error::InvalidRequest(format!("engine thread: {e}")))?
        };
        Ok(EngineHandle {
            tx: Some(tx),
            shared,
            thread: Mutex::new(Some(thread)),
            model,
            admission,
            capacity,
            max_queue: config.max_queue.max(1),
        })
    }
}

/// Submits requests to a running engine and reads its metrics. Dropping the last handle
/// stops the engine after the running requests finish.
pub struct EngineHandle {
    tx: Option<Sender<Submitted>>,
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
    model: Arc<LoadedModel>,
    admission: Admission,
    capacity: usize,
    max_queue: usize,
}

impl EngineHandle {
    /// Queues `request`; its events arrive on the returned receiver.
    pub fn submit(&self, request: Request) -> Result<UnboundedReceiver<Event>, SubmitError> {
        if self.shared.stop.load(Ordering::Acquire) {
            return Err(SubmitError::ShutDown);
        }
        let ctx = self.model.model.config().context_length;
        if request.prompt.is_empty() {
            return Err(SubmitError::Invalid("the prompt is empty".into()));
        }
        if request.prompt.len() >= ctx {
            return Err(SubmitError::Invalid(format!(
                "the prompt has {} tokens but the model's context length is {ctx} (room \
                 for at least one generated token is needed)",
                request.prompt.len()
            )));
        }
        if request.max_tokens == 0 {
            return Err(SubmitError::Invalid("max_tokens must be at least 1".into()));
        }
        request.params.validate().map_err(SubmitError::Invalid)?;
        crate::stop::StopMatcher::new(request.stop.clone()).map_err(SubmitError::Invalid)?;
        let total = (request.prompt.len() + request.max_tokens).min(ctx);
        let slots = self.admission.slots(total);
        let usable = self.admission.usable(self.capacity);
        if slots > usable {
            return Err(SubmitError::TooLarge {
                need: slots * self.admission.slot_bytes(),
                have: usable * self.admission.slot_bytes(),
            });
        }
        let tx = self.tx.as_ref().ok_or(SubmitError::ShutDown)?;
        let waiting = &self.shared.waiting;
        if waiting
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max_queue).then_some(n + 1)
            })
            .is_err()
        {
            return Err(SubmitError::QueueFull(self.max_queue));
        }
        let (events, rx) = unbounded_channel();
        match tx.send(Submitted {
            request,
            events,
            slots,
        }) {
            Ok(()) => Ok(rx),
            Err(_) => {
                waiting.fetch_sub(1, Ordering::AcqRel);
                Err(SubmitError::ShutDown)
            }
        }
    }

    /// The current counters.
    pub fn metrics(&self) -> Metrics {
        let guard = self.shared.metrics.lock();
        let mut m = guard.clone();
        // Read under the lock: the engine moves a request between the queue and `running`
        // or `finished` while holding it, so the snapshot never misses one.
        m.queued = self.shared.waiting.load(Ordering::Acquire);
        drop(guard);
        m
    }

    /// Seconds since the engine started.
    pub fn uptime_seconds(&self) -> f64 {
        self.shared.started.elapsed().as_secs_f64()
    }

    /// The model the engine runs.
    pub fn model(&self) -> &Arc<LoadedModel> {
        &self.model
    }

    /// Stops accepting requests, lets running and queued ones finish, and waits for the
    /// engine thread.
    pub fn shutdown(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        self.tx = None;
        if let Some(t) = self.thread.lock().take() {
            let _ = t.join();
        }
    }
}

impl Drop for EngineHandle {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Receives what `rx` sends until `Done`/`Failed` (blocking; for non-async callers): the
/// whole text, the generated ids, and the final event.
pub fn collect_blocking(rx: &mut UnboundedReceiver<Event>) -> (String, Vec<u32>, Event) {
    let mut text = String::new();
    let mut tokens = Vec::new();
    while let Some(ev) = rx.blocking_recv() {
        match ev {
            Event::Text {
                text: t,
                tokens: ids,
            } => {
                text.push_str(&t);
                tokens.extend(ids);
            }
            done => return (text, tokens, done),
        }
    }
    (
        text,
        tokens,
        Event::Failed("the engine stopped before finishing".into()),
    )
}

/// A receiver type alias for users that only need the channel.
pub type EventReceiver = UnboundedReceiver<Event>;
