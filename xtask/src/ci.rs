//! `cargo xtask ci`: every check CI makes, in order, stopping at the first failure.

use std::time::Instant;

use crate::aarch64;
use crate::process::{cargo, display, outcome, run_timed, seconds};
use crate::test_all;

/// Options of `cargo xtask ci`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// Stop after the doc tests (skip `test-all-backends`).
    pub no_tests: bool,
}

/// Parses `[--no-tests]`.
pub fn parse(args: &[String]) -> Result<Options, String> {
    let mut opts = Options::default();
    for arg in args {
        match arg.as_str() {
            "--no-tests" => opts.no_tests = true,
            other => return Err(format!("ci: unexpected argument '{other}'")),
        }
    }
    Ok(opts)
}

/// The cargo invocations of the checks before the tests. The second clippy run lints the
/// `arkvale` binary with its optional backends compiled in (code behind `cfg(feature)` that
/// the default build never sees).
const CHECKS: [&[&str]; 4] = [
    &["fmt", "--all", "--", "--check"],
    &[
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ],
    &[
        "clippy",
        "-p",
        "arkvale-cli",
        "--all-targets",
        "--features",
        "wgpu,cuda",
        "--",
        "-D",
        "warnings",
    ],
    &["test", "--workspace", "--doc"],
];

/// Runs the checks, then `test-all-backends` unless `no_tests`.
pub fn run(opts: Options) -> Result<(), String> {
    let start = Instant::now();
    // The checks, the aarch64 clippy run, then (unless `no_tests`) the tests.
    let steps = CHECKS.len() + 1 + usize::from(!opts.no_tests);
    for (i, args) in CHECKS.iter().enumerate() {
        let mut cmd = cargo(*args);
        eprintln!("xtask ci: step {}/{steps}", i + 1);
        let (status, _) = run_timed(&mut cmd)?;
        if !status.success() {
            return Err(format!(
                "ci stopped: `{}` {} (step {}/{steps}); fix it and rerun `cargo xtask ci`",
                display(&cmd),
                outcome(status),
                i + 1
            ));
        }
    }
    // The CPU backend's aarch64 code (NEON), which the host's clippy never compiles.
    eprintln!("xtask ci: step {}/{steps}", CHECKS.len() + 1);
    match aarch64::missing() {
        None => {
            let mut cmd = aarch64::cargo_aarch64(&["clippy", "-p", "arkvale-cpu", "--all-targets"]);
            cmd.args(["--", "-D", "warnings"]);
            let (status, _) = run_timed(&mut cmd)?;
            if !status.success() {
                return Err(format!(
                    "ci stopped: `{}` {}; fix it and rerun `cargo xtask ci`",
                    display(&cmd),
                    outcome(status)
                ));
            }
        }
        Some(why) if aarch64::required() => {
            return Err(format!("ci stopped: {} is set but {why}", aarch64::REQUIRE));
        }
        Some(why) => eprintln!("xtask ci: aarch64 clippy skipped ({why})"),
    }
    eprintln!(
        "xtask ci: {} checks passed in {}",
        CHECKS.len() + 1,
        seconds(start.elapsed())
    );
    if opts.no_tests {
        return Ok(());
    }
    eprintln!("xtask ci: step {steps}/{steps}");
    eprintln!("==> cargo xtask test-all-backends");
    // On success nothing more is printed, so the backend summary lines stay the last lines.
    match test_all::run(None)? {
        true => Ok(()),
        false => Err(format!(
            "ci stopped: `cargo xtask test-all-backends` failed (step {steps}/{steps}, see the \
             summary above)"
        )),
    }
}
