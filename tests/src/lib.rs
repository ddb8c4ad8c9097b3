//! # arkvale-tests
//!
//! The differential suite, written once against [`arkvale_core::Device`] and run on every
//! backend that is compiled in and present (`cargo xtask test-all-backends`, or the
//! `arkvale-suite` binary directly). The oracle is the scalar reference in
//! [`arkvale_core::reference`]; the CPU backend is tested by the same cases as every other.
//!
//! A case is a plain function of a device that returns `Err(message)` on a mismatch. Cases
//! draw random inputs with proptest's runner and a fresh seed per run (set
//! `PROPTEST_RNG_SEED` to replay one).
//!
//! ## Two ways to run it
//!
//! * **One `#[test]` per (backend, case)**, for developers: `cargo test -p arkvale-tests`
//!   runs the integration test `tests/suite.rs`, which the `suite_tests!` macro there fills
//!   with `suite::<backend>::<area>::<case>` tests (`suite::cpu::ops::append_kv_f32`,
//!   `suite::wgpu::cache::...`), one module per backend compiled in. A failure names the case
//!   and the backend, and `cargo test -p arkvale-tests suite::wgpu::ops::topk_ties_and_nan`
//!   reruns one. Whether a backend's device is present is only known at run time, so a test
//!   of an absent backend (CUDA without a driver, wgpu without an adapter) cannot be
//!   `#[ignore]`d: it prints `suite::<backend>: skipped (<reason>)` once per test process to
//!   the terminal (not to libtest's captured output) and returns; see [`generated`].
//! * **The `arkvale-suite` binary**, for CI and the GPU device checks: every case on every
//!   backend in one process, ending with `backend <name>: <N> passed, <M> failed` or
//!   `backend <name>: skipped (<reason>)` per backend. `cargo xtask test-all-backends` runs
//!   `cargo test --workspace -- --skip suite::` (so the per-case tests do not run the
//!   whole suite a second time) and then this binary once.

#![warn(missing_docs)]

pub mod backends;
pub mod cache;
mod datagen;
pub mod dense;
pub mod driver;
pub mod generated;
pub mod ops;
pub mod storage;

use std::sync::Arc;

use arkvale_core::Device;

/// One named differential test.
pub struct Case {
    /// Stable name, `area::what`.
    pub name: &'static str,
    /// Runs the case against a device.
    pub run: fn(&Arc<dyn Device>) -> Result<(), String>,
}

/// Every case of the suite, in a fixed order.
pub fn all_cases() -> Vec<Case> {
    let mut cases = Vec::new();
    cases.extend(ops::cases());
    cases.extend(storage::cases());
    cases.extend(cache::cases());
    cases.extend(dense::cases());
    cases
}

/// The outcome of a suite run on one backend.
#[derive(Debug, Default)]
pub struct Summary {
    /// Names of the cases that passed.
    pub passed: Vec<&'static str>,
    /// Names and messages of the cases that failed.
    pub failed: Vec<(&'static str, String)>,
}

/// Runs every case whose name contains `filter` on `device`, printing one line per case.
pub fn run_suite(device: &Arc<dyn Device>, filter: &str) -> Summary {
    let mut summary = Summary::default();
    for case in all_cases().into_iter().filter(|c| c.name.contains(filter)) {
        match run_case(&case, device) {
            Ok(()) => {
                println!("test {} ... ok", case.name);
                summary.passed.push(case.name);
            }
            Err(msg) => {
                println!("test {} ... FAILED\n    {msg}", case.name);
                summary.failed.push((case.name, msg));
            }
        }
    }
    summary
}

/// Runs one case on `device`; a panic inside it is a failure with the panic's message.
pub fn run_case(case: &Case, device: &Arc<dyn Device>) -> Result<(), String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (case.run)(device)))
        .unwrap_or_else(|p| Err(format!("panicked: {}", panic_message(&p))))
}

fn panic_message(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "unknown panic".into())
}
