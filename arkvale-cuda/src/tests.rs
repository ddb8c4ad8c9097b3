//! Unit tests of the host-side helpers (page copy plans of copies core's `Device` layer
//! checked, attention work items, kernel codes): nothing here needs a GPU.

use arkvale_core::{AttnRow, DType, DigestKind, KvLayout};

use crate::attention::{ITEM_WORDS, attn_items};
use crate::copies::page_copy_plan;
use crate::kv::kind_code;
use crate::launch::{grid1d, suffix};

fn l() -> KvLayout {
    KvLayout {
        kv_dtype: arkvale_core::KvDtype::F16,
        heads_per_group: 2,
        gqa: 2,
        page_size: 4,
        head_dim: 8,
        groups: 1,
    }
}

#[test]
fn page_copies_merge_only_when_adjacent_on_both_sides() {
    let l = l();
    let n = l.slot_bytes();
    let copies = [(2, 0), (3, n as u64), (4, 5 * n as u64), (1, 6 * n as u64)];
    let plan = page_copy_plan(&l, &copies);
    assert_eq!(
        plan,
        vec![(2 * n, 0, 2 * n), (4 * n, 5 * n, n), (n, 6 * n, n)]
    );
}

#[test]
fn attention_items_tile_rows_that_share_pages() {
    let l = KvLayout {
        gqa: 3,
        groups: 2,
        ..l()
    };
    let row = |q_row, group, pos, page_start| AttnRow {
        q_row,
        group,
        pos,
        page_start,
        page_count: 2,
    };
    // Three rows of group 1 share a page range (a prefill chunk); one decode-like row of
    // group 0 has its own.
    let rows = [
        row(0, 1, 5, 0),
        row(1, 1, 6, 0),
        row(2, 1, 7, 0),
        row(0, 0, 9, 2),
    ];
    let w = attn_items(&l, &rows);
    let items: Vec<&[u32]> = w.chunks(ITEM_WORDS).collect();
    // Group 1: 3 rows x 3 heads = 9 pairs per KV head -> 8 + 1, for 2 KV heads; group 0:
    // 3 pairs per KV head.
    assert_eq!(items.len(), 2 * 2 + 2);
    assert_eq!(&items[0][..4], &[0, 0, 2, 8]);
    // Pair j of item 0: rows 0, 0, 0, 1, 1, 1, 2, 2 with heads (1*2 + 0)*3 + g.
    let pairs: Vec<[u32; 3]> = (0..8)
        .map(|j| {
            [
                items[0][4 + 3 * j],
                items[0][5 + 3 * j],
                items[0][6 + 3 * j],
            ]
        })
        .collect();
    assert_eq!(pairs[0], [0, 6, 5]);
    assert_eq!(pairs[3], [1, 6, 6]);
    assert_eq!(pairs[7], [2, 7, 7]);
    assert_eq!(&items[1][..7], &[0, 0, 2, 1, 2, 8, 7]);
    assert_eq!(&items[2][..7], &[1, 0, 2, 8, 0, 9, 5]);
    assert_eq!(&items[4][..7], &[0, 2, 2, 3, 0, 0, 9]);
    assert_eq!(&items[5][..7], &[1, 2, 2, 3, 0, 3, 9]);
}

#[test]
fn kernel_codes_and_suffixes() {
    assert_eq!(suffix(DType::F16), "f16");
    assert_eq!(suffix(DType::BF16), "bf16");
    assert_eq!(suffix(DType::F32), "f32");
    let codes: Vec<u32> = DigestKind::ALL.iter().map(|&k| kind_code(k)).collect();
    assert_eq!(codes, [0, 1, 2, 3, 4, 5, 6]);
    assert_eq!(grid1d(0), 1);
    assert_eq!(grid1d(257), 2);
}
