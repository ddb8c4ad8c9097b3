//! Where an op's work runs: fanned out over the device's rayon pool, or inline on the calling
//! thread when the op is too small to pay for waking the pool.
//!
//! A decode step issues a handful of tiny ops per layer (append one token, score a few pages,
//! pick the top-k); handing each to the pool costs tens of microseconds of wake-up and
//! hand-off, more than the work itself. Every kernel therefore takes a [`Par`] and iterates
//! through it: [`Par::for_each`] and [`Par::map`] run in parallel on the pool when the op was
//! dispatched there and sequentially otherwise, with the same results either way (every item
//! is computed the same way; only the threads differ).

use rayon::prelude::*;

/// Work below this many element operations (multiply-adds, conversions, comparisons) runs
/// inline on the calling thread.
pub(crate) const INLINE_WORK: usize = 1 << 16;

/// How a kernel's items are spread over threads.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Par {
    /// Threads available: `1` means inline on the calling thread, more means the kernel is
    /// running inside the device's rayon pool.
    threads: usize,
}

impl Par {
    /// Sequential, on the calling thread.
    pub(crate) const INLINE: Par = Par { threads: 1 };

    /// Parallel inside a rayon pool of `threads` threads (call from within `install`).
    pub(crate) fn pool(threads: usize) -> Par {
        Par {
            threads: threads.max(1),
        }
    }

    /// Threads the kernel may use (for sizing its work split).
    pub(crate) fn threads(self) -> usize {
        self.threads
    }

    /// Runs `f` on every item.
    pub(crate) fn for_each<T: Send>(self, items: Vec<T>, f: impl Fn(T) + Sync + Send) {
        if self.threads > 1 {
            items.into_par_iter().for_each(f);
        } else {
            items.into_iter().for_each(f);
        }
    }

    /// `f` of every item, in order.
    pub(crate) fn map<T: Sync, R: Send>(
        self,
        items: &[T],
        f: impl Fn(&T) -> R + Sync + Send,
    ) -> Vec<R> {
        if self.threads > 1 {
            items.par_iter().map(f).collect()
        } else {
            items.iter().map(f).collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inline_and_pool_give_the_same_results() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        let items: Vec<u64> = (0..1000).collect();
        let inline = Par::INLINE.map(&items, |x| x * x);
        let par = pool.install(|| Par::pool(3).map(&items, |x| x * x));
        assert_eq!(inline, par);
        let mut out = vec![0u64; 1000];
        pool.install(|| {
            Par::pool(3).for_each(out.iter_mut().zip(&items).collect(), |(o, x)| *o = x + 1)
        });
        assert!(out.iter().zip(&items).all(|(o, x)| *o == x + 1));
    }
}
