//! `cargo xtask test-all-backends`: the workspace's tests, then the differential suite on every
//! backend, then one summary line per backend as the last lines of the output.
//!
//! The suite runs once: `cargo test` skips its per-case tests (`--skip suite::`, see
//! [`SUITE_TESTS`]) and the `arkvale-suite` binary runs every case on every backend and prints
//! the backend lines. (The per-case tests exist for developers: `cargo test -p arkvale-tests`
//! names a failure's case and backend, and reruns one.) Running both would double the
//! suite's share of the step for nothing.

use crate::aarch64;
use crate::process::{cargo, outcome, run_streamed, run_timed, seconds};

/// The name prefix of the differential suite's per-case tests (`suite::cpu::ops::...`), which
/// the `cargo test` step skips because the `arkvale-suite` step runs the same cases.
pub const SUITE_TESTS: &str = "suite::";

/// Reads the optional test-name filter: `--filter SUBSTR`, `--filter=SUBSTR`, `-- SUBSTR` or a
/// bare `SUBSTR`.
pub fn parse_filter(args: &[String]) -> Result<Option<String>, String> {
    let mut filter = None;
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let value = match arg.as_str() {
            "--filter" | "--" => args
                .next()
                .ok_or_else(|| format!("`{arg}` needs a filter after it"))?
                .clone(),
            a if a.starts_with("--filter=") => a["--filter=".len()..].to_string(),
            a if a.starts_with('-') => return Err(format!("unexpected option '{a}'")),
            a => a.to_string(),
        };
        if filter.replace(value).is_some() {
            return Err("give at most one filter".into());
        }
    }
    Ok(filter)
}

/// One backend's summary line as printed by `arkvale-suite`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendLine {
    /// The backend's name.
    pub name: String,
    /// The whole line, `backend <name>: ...`.
    pub line: String,
    /// Whether any case failed on it.
    pub failed: bool,
}

/// Recognizes `backend <name>: <N> passed, <M> failed` and `backend <name>: skipped (<why>)`;
/// any other line (a case's output, say) is `None`.
pub fn parse_backend_line(line: &str) -> Option<BackendLine> {
    let line = line.trim_end();
    let (name, rest) = line.strip_prefix("backend ")?.split_once(": ")?;
    if name.is_empty() || name.contains(char::is_whitespace) {
        return None;
    }
    let failed = if rest.starts_with("skipped (") && rest.ends_with(')') {
        false
    } else {
        let (passed, failed) = rest.split_once(" passed, ")?;
        let failed = failed.strip_suffix(" failed")?;
        passed.parse::<usize>().ok()?;
        failed.parse::<usize>().ok()? > 0
    };
    Some(BackendLine {
        name: name.to_string(),
        line: line.to_string(),
        failed,
    })
}

/// Runs the tests and the suite and prints the summary. `Ok(true)`: everything passed;
/// `Ok(false)`: something failed and the summary says what; `Err`: a command could not run.
pub fn run(filter: Option<&str>) -> Result<bool, String> {
    // 1. The workspace's own tests, output streamed as usual; every test binary runs even if
    //    an earlier one failed, so one run shows every failure. The suite's per-case tests
    //    (`suite::<backend>::<case>` in arkvale-tests) are skipped: step 2 runs the same cases
    //    once, in one process per build, and prints the backend lines.
    let mut test = cargo(["test", "--workspace", "--no-fail-fast", "--"]);
    if let Some(f) = filter {
        test.arg(f);
    }
    test.args(["--skip", SUITE_TESTS]);
    let (test_status, test_time) = run_timed(&mut test)?;

    // 2. The differential suite, streamed line by line while its summary lines are kept.
    let mut suite = cargo(["run", "-p", "arkvale-tests", "--bin", "arkvale-suite", "--"]);
    suite.args(["--backend", "all"]);
    if let Some(f) = filter {
        suite.args(["--filter", f]);
    }
    let mut backends: Vec<BackendLine> = Vec::new();
    let (suite_status, suite_time) = run_streamed(&mut suite, |line| {
        if let Some(b) = parse_backend_line(line) {
            // One line per backend; a repeated name keeps its latest line.
            backends.retain(|old| old.name != b.name);
            backends.push(b);
        }
    })?;

    // 3. The CPU backend's aarch64 (NEON) code: its unit tests cross-compiled and run under
    //    qemu, where the toolchain is installed (see `crate::aarch64`).
    let mut problems = Vec::new();
    let mut cross_summary = None;
    match aarch64::missing() {
        None => {
            let run = aarch64::test(filter)?;
            if !run.status.success() {
                problems.push(format!("cargo test --target {} failed", aarch64::TARGET));
            }
            cross_summary = Some(format!(
                "cargo test --target {} -p arkvale-cpu --lib (qemu): {} in {}",
                aarch64::TARGET,
                outcome(run.status),
                seconds(run.time)
            ));
            backends.push(BackendLine {
                name: "cpu-aarch64".into(),
                line: format!(
                    "backend cpu-aarch64: {} passed, {} failed",
                    run.passed, run.failed
                ),
                failed: run.failed > 0,
            });
        }
        Some(why) => {
            if aarch64::required() {
                problems.push(format!("{} is set but {why}", aarch64::REQUIRE));
            }
            backends.push(BackendLine {
                name: "cpu-aarch64".into(),
                line: format!("backend cpu-aarch64: skipped ({why})"),
                failed: false,
            });
        }
    }

    // 4. The summary: the verdict first, the backend lines last.
    let failed: Vec<&str> = backends
        .iter()
        .filter(|b| b.failed)
        .map(|b| b.name.as_str())
        .collect();
    if !test_status.success() {
        problems.push("cargo test --workspace failed".to_string());
    }
    if !failed.is_empty() {
        problems.push(format!("failures on backend(s) {}", failed.join(", ")));
    } else if backends.is_empty() {
        problems.push("no backend reported a result (see the suite's output above)".into());
    } else if !suite_status.success() {
        problems.push(format!("arkvale-suite {}", outcome(suite_status)));
    }
    println!();
    println!("test-all-backends summary");
    println!(
        "cargo test --workspace: {} in {}",
        outcome(test_status),
        seconds(test_time)
    );
    println!(
        "arkvale-suite: {} in {}",
        outcome(suite_status),
        seconds(suite_time)
    );
    if let Some(line) = cross_summary {
        println!("{line}");
    }
    if problems.is_empty() {
        println!("result: ok");
    } else {
        println!("result: FAILED ({})", problems.join("; "));
    }
    for b in &backends {
        println!("{}", b.line);
    }
    Ok(problems.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognizes_exactly_the_summary_lines() {
        let b = parse_backend_line("backend cpu: 12 passed, 0 failed\n").unwrap();
        assert_eq!((b.name.as_str(), b.failed), ("cpu", false));
        assert_eq!(b.line, "backend cpu: 12 passed, 0 failed");
        assert!(
            parse_backend_line("backend cuda: 3 passed, 2 failed")
                .unwrap()
                .failed
        );
        let s = parse_backend_line("backend wgpu: skipped (no adapter: lavapipe missing)").unwrap();
        assert_eq!((s.name.as_str(), s.failed), ("wgpu", false));
        for other in [
            "test ops::append ... ok",
            "backend cpu: many passed, 0 failed",
            "backend cpu: 1 passed",
            "backend : 1 passed, 0 failed",
            "running the suite on backend cpu (cpu)",
            "backend cpu: skipped",
        ] {
            assert_eq!(parse_backend_line(other), None, "{other}");
        }
    }

    #[test]
    fn takes_one_filter_in_any_form() {
        let args = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(parse_filter(&args(&[])).unwrap(), None);
        for form in [
            &["--filter", "ops"][..],
            &["--filter=ops"],
            &["--", "ops"],
            &["ops"],
        ] {
            assert_eq!(parse_filter(&args(form)).unwrap().as_deref(), Some("ops"));
        }
        assert!(parse_filter(&args(&["a", "b"])).is_err());
        assert!(parse_filter(&args(&["--filter"])).is_err());
        assert!(parse_filter(&args(&["--release"])).is_err());
    }
}
