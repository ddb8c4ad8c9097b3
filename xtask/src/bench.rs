//! `cargo xtask bench`: the CPU backend's criterion benches.

use crate::process::{cargo, display, outcome, run_timed};

/// Runs `cargo bench -p arkvale-cpu` with `args` appended verbatim.
pub fn run(args: &[String]) -> Result<(), String> {
    let mut cmd = cargo(["bench", "-p", "arkvale-cpu"]);
    cmd.args(args);
    let (status, _) = run_timed(&mut cmd)?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("`{}` {}", display(&cmd), outcome(status)))
    }
}
