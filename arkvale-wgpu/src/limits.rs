//! Fitting work to the adapter's limits: dispatch grids below the per-dimension workgroup
//! limit, and splits that keep every storage binding below
//! `max_storage_buffer_binding_size` (128 MiB on lavapipe, 2 GiB-ish on desktop GPUs; the
//! WebGPU default is 128 MiB too).

/// A two-dimensional dispatch of at least the requested number of workgroups; kernels
/// linearise it as `x_id + y_id * x` and ignore workgroups past their count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DispatchGrid {
    /// Workgroups along x.
    pub x: u32,
    /// Workgroups along y.
    pub y: u32,
}

/// The grid for `n` workgroups with at most `max_dim` per dimension (`None` if even
/// `max_dim²` is too few).
pub(crate) fn grid(n: u64, max_dim: u32) -> Option<DispatchGrid> {
    let max = max_dim.max(1) as u64;
    let x = n.min(max);
    let y = n.div_ceil(x.max(1));
    (y <= max).then_some(DispatchGrid {
        x: x as u32,
        y: y as u32,
    })
}

/// Splits `total` items of `item_bytes` bytes each into consecutive chunks whose bytes stay
/// within `max_bytes`, each chunk starting at a multiple of `align_items` items (so that the
/// chunk's byte offset meets the binding-offset alignment). Returns `(first, count)` pairs, or
/// `None` when a single aligned item group does not fit.
pub(crate) fn chunks(
    total: usize,
    item_bytes: u64,
    max_bytes: u64,
    align_items: usize,
) -> Option<Vec<(usize, usize)>> {
    if total == 0 {
        return Some(Vec::new());
    }
    let align = align_items.max(1);
    let fit = (max_bytes / item_bytes.max(1)) as usize;
    let per = fit / align * align;
    if per == 0 {
        return None;
    }
    Some(
        (0..total)
            .step_by(per)
            .map(|first| (first, per.min(total - first)))
            .collect(),
    )
}

/// The smallest number of items whose bytes are a multiple of `alignment` bytes.
pub(crate) fn align_items(item_bytes: u64, alignment: u64) -> usize {
    let g = gcd(item_bytes.max(1), alignment.max(1));
    (alignment.max(1) / g) as usize
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// A byte range widened to whole words: `(first word byte, bytes)`, both multiples of 4.
pub(crate) fn word_cover(byte: u64, len: u64) -> (u64, u64) {
    let start = byte / 4 * 4;
    let end = (byte + len).div_ceil(4) * 4;
    (start, end - start)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_covers_every_workgroup_within_the_limit() {
        assert_eq!(grid(1, 65535), Some(DispatchGrid { x: 1, y: 1 }));
        let g = grid(200_000, 65535).unwrap();
        assert!(g.x <= 65535 && g.y <= 65535);
        assert!(g.x as u64 * g.y as u64 >= 200_000);
        assert_eq!(grid(65536 * 65536, 65535), None);
    }

    #[test]
    fn smollm2_logits_split_under_lavapipe_binding_limit() {
        // The SmolLM2 embedding / logits matrix: 49152 rows of 576 f32 (113 MB) under a
        // 128 MiB binding with 256-byte offset alignment, and under a 16 MiB one.
        let row = 576 * 4;
        for max in [128u64 << 20, 16 << 20] {
            let align = align_items(row, 256);
            let c = chunks(49152, row, max, align).unwrap();
            assert_eq!(c.iter().map(|c| c.1).sum::<usize>(), 49152);
            for (i, &(first, n)) in c.iter().enumerate() {
                assert!(n as u64 * row <= max);
                assert_eq!(first as u64 * row % 256, 0);
                if i > 0 {
                    assert_eq!(first, c[i - 1].0 + c[i - 1].1);
                }
            }
            if max < (113 << 20) {
                assert!(c.len() > 1);
            }
        }
        // f16 rows of an odd width still start on aligned bytes.
        let a = align_items(575 * 2, 256);
        assert_eq!(a as u64 * 1150 % 256, 0);
        assert!(chunks(10, 1000, 999, 1).is_none());
        assert_eq!(chunks(0, 4, 4, 1), Some(vec![]));
    }

    #[test]
    fn word_cover_rounds_out_to_words() {
        assert_eq!(word_cover(0, 4), (0, 4));
        assert_eq!(word_cover(2, 2), (0, 4));
        assert_eq!(word_cover(3, 2), (0, 8));
        assert_eq!(word_cover(5, 1), (4, 4));
    }
}
