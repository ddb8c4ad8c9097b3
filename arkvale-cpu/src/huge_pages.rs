//! Transparent huge pages for large buffers.
//!
//! A KV pool of a few hundred MB in 4 KiB pages costs a TLB miss at nearly every 4 KiB slot
//! decode attention walks, and the hardware prefetchers stop at each 4 KiB boundary. On
//! Linux, where transparent huge pages are commonly set to `madvise`, the 2 MiB-aligned
//! interior of every large allocation is advised `MADV_HUGEPAGE` before it is first
//! touched. The advice is only a hint: where the kernel refuses it (THP off, no memory to
//! compact), the buffer works as before.

/// Allocations smaller than this are left alone (a huge page would be mostly unused).
pub(crate) const MIN_BYTES: usize = 4 << 20;

/// Size and alignment of an x86-64 / aarch64 (4 KiB granule) transparent huge page.
const HUGE_PAGE: usize = 2 << 20;

/// The 2 MiB-aligned part `[start, end)` of the `bytes` bytes at address `addr`, if it is
/// not empty.
fn aligned_interior(addr: usize, bytes: usize) -> Option<(usize, usize)> {
    let start = addr.checked_next_multiple_of(HUGE_PAGE)?;
    let end = (addr.checked_add(bytes)?) / HUGE_PAGE * HUGE_PAGE;
    (end > start).then_some((start, end))
}

/// Advises the kernel to back the `bytes` bytes at `ptr` (an allocation of ours, not yet
/// touched) with huge pages where it can. Does nothing below [`MIN_BYTES`] or off Linux.
pub(crate) fn advise(ptr: *mut u8, bytes: usize) {
    if bytes < MIN_BYTES {
        return;
    }
    #[cfg(target_os = "linux")]
    if let Some((start, end)) = aligned_interior(ptr as usize, bytes) {
        // SAFETY: `[start, end)` lies inside an allocation this process owns; madvise with
        // MADV_HUGEPAGE changes no memory contents and fails harmlessly (ignored) where THP
        // is unavailable.
        unsafe {
            libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE);
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = ptr;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_interior_is_aligned_and_inside() {
        let mb2 = HUGE_PAGE;
        assert_eq!(aligned_interior(4096, 4 * mb2), Some((mb2, 4 * mb2)));
        assert_eq!(aligned_interior(mb2, 3 * mb2), Some((mb2, 4 * mb2)));
        assert_eq!(aligned_interior(4096, mb2), None);
        assert_eq!(aligned_interior(usize::MAX - 10, 100), None);
    }

    #[test]
    fn advised_memory_reads_back_what_was_written() {
        let len = 3 * MIN_BYTES;
        let mut v: Vec<u8> = Vec::with_capacity(len);
        advise(v.as_mut_ptr(), len);
        v.resize(len, 7);
        assert!(v.iter().all(|&b| b == 7));
    }
}
