//! Next-token sampling: greedy, temperature, top-k and top-p (nucleus) with a small seeded
//! RNG, so a given seed always draws the same tokens.

use std::cmp::Ordering;

/// A SplitMix64 generator: tiny, fast, and good enough to draw tokens; the same seed always
/// gives the same sequence.
#[derive(Debug, Clone)]
pub struct Rng {
    state: u64,
}

impl Rng {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Rng { state: seed }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A uniform draw from `[0, 1)` with 53 bits of precision.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

/// How the next token is chosen from the logits.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplingParams {
    /// Softmax temperature; 0 means greedy (argmax).
    pub temperature: f32,
    /// Keep only the `k` most likely tokens; 0 disables the cut.
    pub top_k: usize,
    /// Keep the smallest set of most likely tokens whose probability reaches `p`; 1 disables it.
    pub top_p: f32,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
        }
    }
}

impl SamplingParams {
    /// Checks the ranges: temperature finite and >= 0, top-p in (0, 1].
    pub fn validate(&self) -> Result<(), String> {
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return Err(format!(
                "temperature must be a finite number >= 0, got {}",
                self.temperature
            ));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(format!("top_p must be in (0, 1], got {}", self.top_p));
        }
        Ok(())
    }

    /// Whether these parameters always pick the most likely token.
    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0 || self.top_k == 1
    }
}

/// Picks tokens from logits with fixed [`SamplingParams`] and its own seeded [`Rng`].
#[derive(Debug, Clone)]
pub struct Sampler {
    params: SamplingParams,
    rng: Rng,
}

impl Sampler {
    /// A sampler; errors when the parameters are out of range.
    pub fn new(params: SamplingParams, seed: u64) -> Result<Self, String> {
        params.validate()?;
        Ok(Sampler {
            params,
            rng: Rng::new(seed),
        })
    }

    /// The parameters it draws with.
    pub fn params(&self) -> SamplingParams {
        self.params
    }

    /// The next token for `logits` (one value per vocabulary entry). Errors on empty logits
    /// or a NaN among them (a broken forward pass, not something to sample from).
    pub fn sample(&mut self, logits: &[f32]) -> Result<u32, String> {
        if logits.is_empty() {
            return Err("cannot sample from empty logits".into());
        }
        if logits.iter().any(|x| x.is_nan()) {
            return Err("the model produced NaN logits".into());
        }
        if self.params.is_greedy() {
            return Ok(argmax(logits));
        }
        let probs = self.candidates(logits);
        let total: f64 = probs.iter().map(|&(_, p)| p).sum();
        let mut u = self.rng.next_f64() * total;
        for &(id, p) in &probs {
            if u < p {
                return Ok(id);
            }
            u -= p;
        }
        // Rounding left `u` just past the last mass: the last candidate.
        Ok(probs.last().map_or(0, |&(id, _)| id))
    }

    /// The tokens that survive top-k and top-p, most likely first, with their unnormalized
    /// probabilities at the sampler's temperature.
    fn candidates(&self, logits: &[f32]) -> Vec<(u32, f64)> {
        let mut idx: Vec<u32> = (0..logits.len() as u32).collect();
        let by_logit = |a: &u32, b: &u32| -> Ordering {
            logits[*b as usize]
                .total_cmp(&logits[*a as usize])
                .then(a.cmp(b))
        };
        let k = if self.params.top_k == 0 {
            idx.len()
        } else {
            self.params.top_k.min(idx.len())
        };
        if k < idx.len() {
            idx.select_nth_unstable_by(k - 1, by_logit);
            idx.truncate(k);
        }
        idx.sort_unstable_by(by_logit);
        let max = f64::from(logits[idx[0] as usize]);
        let t = f64::from(self.params.temperature);
        let mut probs: Vec<(u32, f64)> = idx
            .iter()
            .map(|&i| (i, ((f64::from(logits[i as usize]) - max) / t).exp()))
            .collect();
        if self.params.top_p < 1.0 {
            let total: f64 = probs.iter().map(|&(_, p)| p).sum();
            let target = f64::from(self.params.top_p) * total;
            let mut acc = 0.0;
            let mut keep = probs.len();
            for (n, &(_, p)) in probs.iter().enumerate() {
                acc += p;
                if acc >= target {
                    keep = n + 1;
                    break;
                }
            }
            probs.truncate(keep);
        }
        probs
    }
}

/// The index of the largest value, the lowest index among equals; NaN ranks below every
/// number and a slice of NaN only gives 0 (`logits` non-empty). This is the rule of
/// [`arkvale_core::Device::argmax`], so greedy choices made on the host and on the device
/// agree.
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best: Option<usize> = None;
    for (i, v) in logits.iter().enumerate() {
        if !v.is_nan() && best.is_none_or(|b| *v > logits[b]) {
            best = Some(i);
        }
    }
    best.unwrap_or(0) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logits() -> Vec<f32> {
        vec![0.5, 2.0, -1.0, 1.9, 0.0, 2.0, -3.0, 1.0]
    }

    fn sampler(temperature: f32, top_k: usize, top_p: f32, seed: u64) -> Sampler {
        Sampler::new(
            SamplingParams {
                temperature,
                top_k,
                top_p,
            },
            seed,
        )
        .unwrap()
    }

    #[test]
    fn greedy_is_argmax_with_the_lowest_index_on_ties() {
        let mut s = sampler(0.0, 0, 1.0, 7);
        assert_eq!(s.sample(&logits()).unwrap(), 1);
        assert_eq!(argmax(&[3.0, 1.0, 3.0]), 0);
        assert_eq!(s.sample(&[-5.0, -4.0, -6.0]).unwrap(), 1);
    }

    #[test]
    fn argmax_follows_the_device_rule_for_nan() {
        // The rule of `Device::argmax` (see `arkvale_core::reference::argmax`).
        let rows: [&[f32]; 4] = [
            &[f32::NAN, 2.0, 2.0],
            &[f32::NAN, f32::NAN],
            &[-1.0, f32::NAN, -0.5],
            &[f32::NEG_INFINITY, f32::NAN],
        ];
        for row in rows {
            let mut want = [9u32];
            arkvale_core::reference::argmax(1, row.len(), row, &mut want);
            assert_eq!(argmax(row), want[0], "{row:?}");
        }
        assert_eq!(argmax(&[f32::NAN, 2.0, 2.0]), 1);
    }

    #[test]
    fn top_k_one_is_greedy_at_any_temperature() {
        for seed in 0..50 {
            let mut s = sampler(5.0, 1, 1.0, seed);
            assert_eq!(s.sample(&logits()).unwrap(), argmax(&logits()));
        }
    }

    #[test]
    fn a_seed_reproduces_its_draws_and_seeds_differ() {
        let draw = |seed| {
            let mut s = sampler(1.5, 0, 1.0, seed);
            (0..64)
                .map(|_| s.sample(&logits()).unwrap())
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(42), draw(42));
        assert_ne!(draw(42), draw(43));
    }

    #[test]
    fn top_k_only_draws_the_k_best() {
        let mut s = sampler(100.0, 3, 1.0, 1);
        for _ in 0..500 {
            let t = s.sample(&logits()).unwrap();
            assert!([1, 3, 5].contains(&t), "drew {t}");
        }
    }

    #[test]
    fn top_p_keeps_the_smallest_set_reaching_p() {
        // Probabilities at temperature 1: 0.5, 0.25, 0.125, 0.0625, 0.0625.
        let l: Vec<f32> = [0.5f32, 0.25, 0.125, 0.0625, 0.0625]
            .iter()
            .map(|p| p.ln())
            .collect();
        let s = sampler(1.0, 0, 0.7, 3);
        let kept: Vec<u32> = s.candidates(&l).iter().map(|&(i, _)| i).collect();
        assert_eq!(kept, vec![0, 1]);
        let s = sampler(1.0, 0, 0.75, 3);
        assert_eq!(s.candidates(&l).len(), 2, "0.5 + 0.25 reaches 0.75 exactly");
        let s = sampler(1.0, 0, 0.76, 3);
        assert_eq!(s.candidates(&l).len(), 3);
        let s = sampler(1.0, 0, 0.1, 3);
        assert_eq!(s.candidates(&l).len(), 1, "at least the best token stays");
        let mut s = sampler(1.0, 0, 0.7, 9);
        for _ in 0..300 {
            assert!(s.sample(&l).unwrap() < 2);
        }
    }

    #[test]
    fn draws_follow_the_softmax() {
        let l = [0.0f32, (3.0f32).ln()]; // probabilities 0.25, 0.75
        let mut s = sampler(1.0, 0, 1.0, 11);
        let ones = (0..20_000).filter(|_| s.sample(&l).unwrap() == 1).count();
        let frac = ones as f64 / 20_000.0;
        assert!((frac - 0.75).abs() < 0.02, "{frac}");
    }

    #[test]
    fn bad_parameters_and_logits_are_errors() {
        let p = |temperature, top_p| SamplingParams {
            temperature,
            top_k: 0,
            top_p,
        };
        assert!(Sampler::new(p(-1.0, 1.0), 0).is_err());
        assert!(Sampler::new(p(f32::NAN, 1.0), 0).is_err());
        assert!(Sampler::new(p(1.0, 0.0), 0).is_err());
        assert!(Sampler::new(p(1.0, 1.5), 0).is_err());
        let mut s = sampler(1.0, 0, 1.0, 0);
        assert!(s.sample(&[]).is_err());
        assert!(s.sample(&[1.0, f32::NAN]).is_err());
    }
}
