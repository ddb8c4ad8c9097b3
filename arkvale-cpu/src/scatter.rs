//! Safe parallel scatter: hand each worker the disjoint chunks of an output it writes.
//!
//! Ops whose items write fixed-size chunks of an output (a pool slot, a digest, a query row)
//! group the items by target chunk, then borrow each touched chunk mutably exactly once.
//! Items that target the same chunk stay together, in their original order, so that a later
//! item wins exactly as in the sequential reference.

/// Groups item indices by target chunk: `(chunk, items in original order)` per touched chunk,
/// chunks ascending.
pub(crate) fn group_by_target(targets: &[usize]) -> Vec<(usize, Vec<usize>)> {
    let mut order: Vec<usize> = (0..targets.len()).collect();
    order.sort_by_key(|&i| targets[i]); // stable: keeps the original order within a chunk
    let mut groups: Vec<(usize, Vec<usize>)> = Vec::new();
    for i in order {
        match groups.last_mut() {
            Some((t, items)) if *t == targets[i] => items.push(i),
            _ => groups.push((targets[i], vec![i])),
        }
    }
    groups
}

/// Borrows chunk `c` (`data[c * chunk .. (c + 1) * chunk]`) for each `c` of `chunks`
/// (ascending, distinct, all inside `data`).
pub(crate) fn chunks_mut<T>(
    data: &mut [T],
    chunk: usize,
    chunks: impl IntoIterator<Item = usize>,
) -> Vec<&mut [T]> {
    let mut out = Vec::new();
    let mut rest = data;
    let mut next = 0; // index of the chunk `rest` starts with
    for c in chunks {
        let (_, tail) = std::mem::take(&mut rest).split_at_mut((c - next) * chunk);
        let (this, tail) = tail.split_at_mut(chunk);
        out.push(this);
        rest = tail;
        next = c + 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_keep_item_order_and_chunks_are_the_right_ones() {
        let g = group_by_target(&[3, 1, 3, 0, 1]);
        assert_eq!(g, vec![(0, vec![3]), (1, vec![1, 4]), (3, vec![0, 2])]);
        let mut data: Vec<u32> = (0..10).collect();
        let parts = chunks_mut(&mut data, 2, g.iter().map(|x| x.0));
        assert_eq!(
            parts.iter().map(|p| p.to_vec()).collect::<Vec<_>>(),
            vec![vec![0, 1], vec![2, 3], vec![6, 7]]
        );
    }
}
