//! Running cargo from the workspace root: building commands, timing steps, reporting failures.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// A `cargo` command rooted at the workspace. Uses the `CARGO` environment variable (set by
/// `cargo run`, so the same toolchain builds everything), else `cargo` from the `PATH`.
pub fn cargo<I, S>(args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(args).current_dir(workspace_root());
    cmd
}

/// The workspace root: the parent of this crate's manifest directory.
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// The command line of `cmd` as a user would type it (`cargo test --workspace`).
pub fn display(cmd: &Command) -> String {
    let mut words = vec!["cargo".to_string()];
    words.extend(cmd.get_args().map(|a| a.to_string_lossy().into_owned()));
    words.join(" ")
}

/// Announces `cmd` on stderr, runs it with inherited stdio and returns its status and
/// duration. Fails only if the command could not be started.
pub fn run_timed(cmd: &mut Command) -> Result<(ExitStatus, Duration), String> {
    let line = display(cmd);
    eprintln!("==> {line}");
    let start = Instant::now();
    let status = cmd
        .status()
        .map_err(|e| format!("could not start `{line}`: {e}"))?;
    let elapsed = start.elapsed();
    eprintln!("<== {line}: {} in {}", outcome(status), seconds(elapsed));
    Ok((status, elapsed))
}

/// [`run_timed`] with `cmd`'s stdout piped through: each line is printed as it comes and
/// handed to `on_line` (stderr stays inherited). Fails only if the command could not be
/// started, read or waited for.
pub fn run_streamed(
    cmd: &mut Command,
    mut on_line: impl FnMut(&str),
) -> Result<(ExitStatus, Duration), String> {
    let line = display(cmd);
    eprintln!("==> {line}");
    let start = Instant::now();
    let mut child = cmd
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("could not start `{line}`: {e}"))?;
    let stdout = child.stdout.take().expect("stdout is piped");
    let mut out = std::io::stdout().lock();
    for l in BufReader::new(stdout).lines() {
        let l = l.map_err(|e| format!("reading the output of `{line}`: {e}"))?;
        let _ = writeln!(out, "{l}");
        on_line(&l);
    }
    drop(out);
    let status = child
        .wait()
        .map_err(|e| format!("waiting for `{line}`: {e}"))?;
    let elapsed = start.elapsed();
    eprintln!("<== {line}: {} in {}", outcome(status), seconds(elapsed));
    Ok((status, elapsed))
}

/// `ok`, or `failed (exit code N)` / `failed (killed by a signal)`.
pub fn outcome(status: ExitStatus) -> String {
    match status.code() {
        _ if status.success() => "ok".into(),
        Some(code) => format!("failed (exit code {code})"),
        None => "failed (killed by a signal)".into(),
    }
}

/// A duration as `12.3s`.
pub fn seconds(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}
