//! The CPU backend's aarch64 code (its NEON kernels) checked on an x86-64 Linux machine:
//! `arkvale-cpu` linted and its unit tests cross-compiled for [`TARGET`] and run under qemu's
//! user-mode emulation. Needs the rustup target, the cross C toolchain (`aarch64-linux-gnu-gcc`
//! links) and `qemu-aarch64`; without them the check is skipped with the reason, unless
//! [`REQUIRE`] is set (CI sets it, so that CI cannot pass without running the NEON tests).
//!
//! ```text
//! rustup target add aarch64-unknown-linux-gnu
//! apt-get install gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user
//! ```

use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

use crate::process::{cargo, run_streamed};

/// The cross target.
pub const TARGET: &str = "aarch64-unknown-linux-gnu";

/// The environment variable that turns a missing toolchain into a failure.
pub const REQUIRE: &str = "ARKVALE_REQUIRE_AARCH64";

/// The cross linker and the emulator.
const LINKER: &str = "aarch64-linux-gnu-gcc";
const QEMU: &str = "qemu-aarch64";
/// Where the cross C toolchain's aarch64 libraries (the dynamic loader, libc) live.
const SYSROOT: &str = "/usr/aarch64-linux-gnu";

/// Whether `program --version` runs.
fn runs(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Why the check cannot run on this machine, or `None` when it can.
pub fn missing() -> Option<String> {
    if !(cfg!(target_arch = "x86_64") && cfg!(target_os = "linux")) {
        return Some("not an x86-64 Linux host".into());
    }
    let libdir = Command::new("rustc")
        .args(["--print", "target-libdir", "--target", TARGET])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    if !libdir.is_some_and(|d| Path::new(&d).is_dir()) {
        return Some(format!(
            "no Rust target {TARGET}: rustup target add {TARGET}"
        ));
    }
    for (program, package) in [(LINKER, "gcc-aarch64-linux-gnu"), (QEMU, "qemu-user")] {
        if !runs(program) {
            return Some(format!("no {program} (apt package {package})"));
        }
    }
    None
}

/// Whether [`REQUIRE`] is set (to anything but `0` or empty).
pub fn required() -> bool {
    std::env::var(REQUIRE).is_ok_and(|v| !v.is_empty() && v != "0")
}

/// A cargo command for [`TARGET`]: `args` with `--target`, the cross linker and qemu as the
/// runner of the test binaries.
pub fn cargo_aarch64(args: &[&str]) -> Command {
    let mut cmd = cargo(args);
    cmd.args(["--target", TARGET])
        .env("CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER", LINKER)
        .env(
            "CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER",
            format!("{QEMU} -L {SYSROOT}"),
        );
    cmd
}

/// The counts of libtest's `test result: ok. 43 passed; 0 failed; ...` line, if `line` is
/// one.
pub fn parse_result_line(line: &str) -> Option<(usize, usize)> {
    let rest = line.trim().strip_prefix("test result: ")?;
    let (_, rest) = rest.split_once(". ")?;
    let mut fields = rest.split("; ");
    let passed = fields.next()?.strip_suffix(" passed")?.parse().ok()?;
    let failed = fields.next()?.strip_suffix(" failed")?.parse().ok()?;
    Some((passed, failed))
}

/// What the test run gave: the status of `cargo test`, its duration and the summed counts of
/// its result lines.
pub struct TestRun {
    /// Exit status of `cargo test`.
    pub status: ExitStatus,
    /// How long it ran (build included).
    pub time: Duration,
    /// Tests passed, over every result line.
    pub passed: usize,
    /// Tests failed, over every result line.
    pub failed: usize,
}

/// Runs `arkvale-cpu`'s unit tests for [`TARGET`] under qemu (with `filter` as the test-name
/// filter), streaming the output.
pub fn test(filter: Option<&str>) -> Result<TestRun, String> {
    let mut cmd = cargo_aarch64(&["test", "-p", "arkvale-cpu", "--lib"]);
    if let Some(f) = filter {
        cmd.args(["--", f]);
    }
    let (mut passed, mut failed) = (0, 0);
    let (status, time) = run_streamed(&mut cmd, |line| {
        if let Some((p, f)) = parse_result_line(line) {
            passed += p;
            failed += f;
        }
    })?;
    Ok(TestRun {
        status,
        time,
        passed,
        failed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_libtest_result_lines_only() {
        assert_eq!(
            parse_result_line(
                "test result: ok. 43 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; \
                 finished in 9.19s"
            ),
            Some((43, 0))
        );
        assert_eq!(
            parse_result_line("test result: FAILED. 0 passed; 1 failed; 0 ignored"),
            Some((0, 1))
        );
        assert_eq!(parse_result_line("test quant::tests::x ... ok"), None);
        assert_eq!(
            parse_result_line("test result: ok. many passed; 0 failed"),
            None
        );
    }
}
