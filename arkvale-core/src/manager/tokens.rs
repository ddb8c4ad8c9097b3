//! The token-level rules of the H2O and TOVA baselines, on host-side keep-masks.
//!
//! Both rules see the attention weights of each query (summed over the query heads of each
//! KV head, as `attention_weights` returns them) and decide which tokens stop taking part in
//! attention for good. The manager mirrors every decision into the device keep-mask.

use super::table::TokenState;
use crate::policy::TokenRule;

/// A token evicted from one KV head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Dropped {
    pub kv_head: usize,
    pub pos: usize,
}

impl TokenState {
    /// Records `n` new tokens, kept, with no accumulated attention.
    pub fn push_tokens(&mut self, n: usize) {
        for h in 0..self.keep.len() {
            self.keep[h].extend(std::iter::repeat_n(true, n));
            self.acc[h].extend(std::iter::repeat_n(0.0, n));
            self.kept[h] += n;
        }
    }

    /// Adds one step's (or one prompt's summed) attention weights, `weights[kv_head][pos]`.
    pub fn accumulate(&mut self, weights: &[Vec<f32>]) {
        for (acc, w) in self.acc.iter_mut().zip(weights) {
            for (a, x) in acc.iter_mut().zip(w) {
                *a += x;
            }
        }
    }

    fn drop_token(&mut self, kv_head: usize, pos: usize, out: &mut Vec<Dropped>) {
        debug_assert!(self.keep[kv_head][pos]);
        self.keep[kv_head][pos] = false;
        self.kept[kv_head] -= 1;
        out.push(Dropped { kv_head, pos });
    }

    /// After a decode step: evict one token per head (H2O) or per layer (TOVA) while more
    /// than `budget` tokens are kept. `step_weights[kv_head][pos]` are the current query's
    /// weights summed over each KV head's query heads; `q_heads` averages them for TOVA.
    pub fn after_decode(
        &mut self,
        rule: TokenRule,
        budget: usize,
        step_weights: &[Vec<f32>],
        q_heads: usize,
    ) -> Vec<Dropped> {
        let mut out = Vec::new();
        match rule {
            TokenRule::H2O => {
                self.accumulate(step_weights);
                let recent = budget - budget / 2;
                for h in 0..self.keep.len() {
                    while self.kept[h] > budget {
                        let len = self.keep[h].len();
                        let Some(pos) = self.lowest(h, len.saturating_sub(recent), &self.acc[h])
                        else {
                            break;
                        };
                        self.drop_token(h, pos, &mut out);
                    }
                }
            }
            TokenRule::Tova => {
                let avg = average_over_heads(step_weights, q_heads);
                while self.kept[0] > budget {
                    let Some(pos) = self.lowest(0, avg.len(), &avg) else {
                        break;
                    };
                    for h in 0..self.keep.len() {
                        self.drop_token(h, pos, &mut out);
                    }
                }
            }
        }
        out
    }

    /// At the end of a prompt: keep at most `budget` tokens. H2O keeps the `budget - budget/2`
    /// most recent kept tokens and the `budget/2` others with the most accumulated attention;
    /// TOVA keeps the `budget` tokens the last prompt token attends to most
    /// (`last_weights[kv_head][pos]`, averaged over `q_heads`).
    pub fn after_prefill(
        &mut self,
        rule: TokenRule,
        budget: usize,
        last_weights: Option<&[Vec<f32>]>,
        q_heads: usize,
    ) -> Vec<Dropped> {
        let mut out = Vec::new();
        match rule {
            TokenRule::H2O => {
                let recent = budget - budget / 2;
                for h in 0..self.keep.len() {
                    if self.kept[h] <= budget {
                        continue;
                    }
                    let kept: Vec<usize> = (0..self.keep[h].len())
                        .filter(|&i| self.keep[h][i])
                        .collect();
                    let (older, _recent) = kept.split_at(kept.len() - recent);
                    let heavy = ranked_best_first(older, &self.acc[h]);
                    for &pos in &heavy[budget - recent..] {
                        self.drop_token(h, pos, &mut out);
                    }
                }
            }
            TokenRule::Tova => {
                let Some(w) = last_weights else { return out };
                let avg = average_over_heads(w, q_heads);
                if self.kept[0] > budget {
                    let kept: Vec<usize> = (0..self.keep[0].len())
                        .filter(|&i| self.keep[0][i])
                        .collect();
                    let ranked = ranked_best_first(&kept, &avg);
                    for &pos in &ranked[budget..] {
                        for h in 0..self.keep.len() {
                            self.drop_token(h, pos, &mut out);
                        }
                    }
                }
            }
        }
        out
    }

    /// The kept token of head `h` before position `end` with the lowest `score`
    /// (ties: the earliest).
    fn lowest(&self, h: usize, end: usize, score: &[f32]) -> Option<usize> {
        let mut best: Option<usize> = None;
        for pos in 0..end.min(self.keep[h].len()) {
            if self.keep[h][pos] && best.is_none_or(|b| score[pos] < score[b]) {
                best = Some(pos);
            }
        }
        best
    }
}

/// Positions ranked by `score` descending, ties to the earlier position.
fn ranked_best_first(positions: &[usize], score: &[f32]) -> Vec<usize> {
    let mut v = positions.to_vec();
    v.sort_by(|&a, &b| crate::digest::rank_cmp(score[a], a as u32, score[b], b as u32));
    v
}

/// Per-token weights averaged over all query heads.
fn average_over_heads(weights: &[Vec<f32>], q_heads: usize) -> Vec<f32> {
    let len = weights.iter().map(Vec::len).max().unwrap_or(0);
    let mut avg = vec![0f32; len];
    for w in weights {
        for (a, x) in avg.iter_mut().zip(w) {
            *a += x;
        }
    }
    avg.iter_mut().for_each(|a| *a /= q_heads as f32);
    avg
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(heads: usize, n: usize) -> TokenState {
        let mut s = TokenState {
            keep: vec![Vec::new(); heads],
            kept: vec![0; heads],
            acc: vec![Vec::new(); heads],
        };
        s.push_tokens(n);
        s
    }

    #[test]
    fn h2o_keeps_recent_and_heavy_hitters() {
        let mut s = state(1, 8);
        // Token 1 is the heavy hitter, tokens 6..8 are recent (budget 4 → 2 recent, 2 heavy).
        let w = vec![vec![0.1, 0.9, 0.2, 0.05, 0.3, 0.01, 0.0, 0.0]];
        s.accumulate(&w);
        let dropped = s.after_prefill(TokenRule::H2O, 4, None, 1);
        let kept: Vec<usize> = (0..8).filter(|&i| s.keep[0][i]).collect();
        assert_eq!(kept, vec![1, 4, 6, 7]);
        assert_eq!(dropped.len(), 4);
        // A decode step with one more token evicts the weakest non-recent token.
        s.push_tokens(1);
        let step = vec![vec![0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.5, 0.3, 0.2]];
        let d = s.after_decode(TokenRule::H2O, 4, &step, 1);
        assert_eq!(d, vec![Dropped { kv_head: 0, pos: 4 }]);
    }

    #[test]
    fn tova_drops_the_lowest_current_weight_averaged_over_heads() {
        let mut s = state(2, 5);
        let w = vec![vec![0.4, 0.1, 0.2, 0.2, 0.1], vec![0.4, 0.3, 0.0, 0.1, 0.2]];
        let d = s.after_decode(TokenRule::Tova, 4, &w, 2);
        // Averages: [0.4, 0.2, 0.1, 0.15, 0.15] → token 2 goes from both heads.
        assert_eq!(
            d,
            vec![
                Dropped { kv_head: 0, pos: 2 },
                Dropped { kv_head: 1, pos: 2 }
            ]
        );
        assert_eq!(s.kept, vec![4, 4]);
    }
}
