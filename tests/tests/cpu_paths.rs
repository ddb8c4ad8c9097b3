//! The CPU backend runs an op inline on the calling thread when it is small and on its pool
//! otherwise (`CpuDevice::set_inline_work`); the suite's default run only sees the split that
//! its sizes happen to give. Here the op-level and dense cases run on a 3-thread device forced
//! inline and on one forced onto the pool, so both paths of every kernel meet the suite's
//! checks.

use std::sync::Arc;

use arkvale_core::Device;
use arkvale_cpu::CpuDevice;

#[test]
fn suite_cases_pass_inline_and_on_the_pool() {
    let mut failures = Vec::new();
    for (path, inline_work) in [("inline", usize::MAX), ("pool", 0)] {
        let mut dev = CpuDevice::new(Some(3)).expect("cpu device");
        dev.set_inline_work(inline_work);
        let dev: Arc<dyn Device> = Arc::new(dev);
        let cases = arkvale_tests::ops::cases()
            .into_iter()
            .chain(arkvale_tests::dense::cases());
        for case in cases {
            if let Err(msg) = arkvale_tests::run_case(&case, &dev) {
                failures.push(format!("{} ({path}): {msg}", case.name));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
