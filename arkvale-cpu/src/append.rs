//! `append_kv`: new keys and values into their pool slots, rounded to the storage type.
//!
//! Destinations are grouped by slot; slots are written in parallel (see [`Par`]), each by one task that
//! applies its destinations in the given order (a later one wins, as in the reference).

use arkvale_core::{AppendDest, KvLayout};

use crate::elem::{KvElem, store};
use crate::par::Par;
use crate::scatter::{chunks_mut, group_by_target};

/// Writes `k`, `v` (f32 `[tokens, Hkv, d]`) into `pool` for each destination (validated).
pub(crate) fn append_kv<T: KvElem>(
    par: Par,
    l: &KvLayout,
    pool: &mut [T],
    k: &[f32],
    v: &[f32],
    dests: &[AppendDest],
) {
    let (d, hg) = (l.head_dim, l.heads_per_group);
    let row = l.kv_heads() * d;
    let targets: Vec<usize> = dests.iter().map(|x| x.slot as usize).collect();
    let groups = group_by_target(&targets);
    let slots = chunks_mut(pool, l.slot_elems(), groups.iter().map(|g| g.0));
    par.for_each(
        slots.into_iter().zip(&groups).collect(),
        |(slot, (_, items))| {
            for &n in items {
                let dest = &dests[n];
                for h in 0..hg {
                    let src = dest.token as usize * row + (dest.group as usize * hg + h) * d;
                    // Offsets inside the slot (slot 0 of a one-slot view).
                    let ko = l.k_offset(0, h, dest.pos as usize);
                    let vo = l.v_offset(0, h, dest.pos as usize);
                    store(&k[src..src + d], &mut slot[ko..ko + d]);
                    store(&v[src..src + d], &mut slot[vo..vo + d]);
                }
            }
        },
    );
}
