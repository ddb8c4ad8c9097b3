//! Attention mass of pages, from the per-page log-sum-exp that decode attention writes.
//!
//! [`crate::Device::decode_attention`] can write, next to its output, the log-sum-exp of each
//! (page entry, query head of the row's group) — the natural log of the sum of the page's
//! unnormalized softmax weights. The softmax mass of a page for one query head is then
//! `exp(lse_page - logsumexp over the row's pages)`, and a page's mass for its head group is
//! the **maximum over the group's query heads** (a copy head that puts all its attention on a
//! page must keep it, however little the other heads look at it). This is what the
//! attention-feedback rules of the `arkvale` policy rank pages by (see [`crate::policy`]).

use crate::AttnRow;

/// The mass of each page entry of each row: for page entry `i` in a row's range,
/// `max_j exp(lse[i * gh + j] - ln Σ_{i' in the row's range} exp(lse[i' * gh + j]))` over the
/// group's query heads `j < gh`, in f64 internally. A head whose row has no participating token
/// contributes 0. Entries outside every row's range are 0. Returns `pages_len` values.
pub fn page_mass(lse: &[f32], rows: &[AttnRow], gh: usize, pages_len: usize) -> Vec<f32> {
    let mut mass = vec![0f32; pages_len];
    for row in rows {
        let range = row.page_start as usize..(row.page_start + row.page_count) as usize;
        for j in 0..gh {
            let max = range
                .clone()
                .map(|i| lse[i * gh + j] as f64)
                .fold(f64::NEG_INFINITY, f64::max);
            if max == f64::NEG_INFINITY {
                continue;
            }
            let total: f64 = range
                .clone()
                .map(|i| (lse[i * gh + j] as f64 - max).exp())
                .sum();
            let log_total = max + total.ln();
            for i in range.clone() {
                let m = (lse[i * gh + j] as f64 - log_total).exp() as f32;
                if m > mass[i] {
                    mass[i] = m;
                }
            }
        }
    }
    mass
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(page_start: u32, page_count: u32) -> AttnRow {
        AttnRow {
            q_row: 0,
            group: 0,
            pos: 0,
            page_start,
            page_count,
        }
    }

    #[test]
    fn mass_is_the_softmax_share_maxed_over_heads() {
        // Two heads over three pages: head 0 sums 1, 2, 1; head 1 puts all on page 2.
        let (a, b, c) = (1f32.ln(), 2f32.ln(), 1f32.ln());
        let lse = [a, f32::NEG_INFINITY, b, f32::NEG_INFINITY, c, 5.0];
        let m = page_mass(&lse, &[row(0, 3)], 2, 3);
        assert!((m[0] - 0.25).abs() < 1e-6);
        assert!((m[1] - 0.5).abs() < 1e-6);
        assert!((m[2] - 1.0).abs() < 1e-6);
    }

    #[test]
    fn rows_are_normalized_separately_and_empty_heads_give_zero() {
        let lse = [0.0, 0.0, 3.0, f32::NEG_INFINITY];
        let m = page_mass(&lse, &[row(0, 2), row(2, 1), row(3, 1)], 1, 5);
        assert_eq!(m, vec![0.5, 0.5, 1.0, 0.0, 0.0]);
    }
}
