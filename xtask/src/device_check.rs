//! `cargo xtask device-check`: the CUDA backend's GPU check, prepared here and run on a GPU
//! machine in one short call.
//!
//! `--build` builds, in release and stripped, with the CUDA backend only (no wgpu):
//! * `arkvale-suite` (the differential suite; `run.sh` runs it with `--backend cuda`),
//! * the end-to-end test binary `cuda_generate` (random-weight SmolLM2-shaped greedy
//!   generation, CUDA tokens == CPU tokens),
//! * `arkvale-cuda-bench` (benchmarks (a), (b), (c) of issue 5),
//!
//! and copies them with `run.sh` and `sdpa.py` (from `arkvale-cuda/device/`) into
//! `target/device/` under the workspace root (whatever `CARGO_TARGET_DIR` says), checking that
//! the folder stays well under the device tool's 64 MiB. On the GPU machine, from the
//! repository root: `bash target/device/run.sh` (with `target/device` carried); it needs no
//! Rust, finishes in under 5 minutes and writes its logs and tables to `$OUT`.
//!
//! The wgpu backend's check is packaged alongside (see `package_wgpu`): `run-wgpu.sh` with the
//! wgpu-only suite and the bandwidth benchmark, run as a separate call.
//!
//! Without `--build` it prints these instructions and what `target/device/` holds.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use crate::process::{cargo, display, outcome, run_timed, workspace_root};

/// The folder the device check is packaged into.
pub fn device_dir() -> PathBuf {
    workspace_root().join("target").join("device")
}

/// Runs the command.
pub fn run(args: &[String]) -> Result<(), String> {
    let mut build = false;
    for a in args {
        match a.as_str() {
            "--build" => build = true,
            other => return Err(format!("device-check: unexpected argument '{other}'")),
        }
    }
    if build {
        package()?;
    }
    describe()
}

/// The target directory cargo builds into.
fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|p| {
            if p.is_absolute() {
                p
            } else {
                workspace_root().join(p)
            }
        })
        .unwrap_or_else(|| workspace_root().join("target"))
}

/// Runs a cargo build with the release profile stripped; fails on a failed build.
fn build(args: &[&str]) -> Result<std::process::Output, String> {
    let mut cmd = cargo(args);
    cmd.env("CARGO_PROFILE_RELEASE_STRIP", "symbols")
        .env("CARGO_PROFILE_RELEASE_DEBUG", "false");
    if args.contains(&"--message-format=json") {
        let line = display(&cmd);
        eprintln!("==> {line}");
        let out = cmd
            .stderr(Stdio::inherit())
            .output()
            .map_err(|e| format!("could not start `{line}`: {e}"))?;
        if !out.status.success() {
            return Err(format!("`{line}` {}", outcome(out.status)));
        }
        return Ok(out);
    }
    let (status, _) = run_timed(&mut cmd)?;
    if !status.success() {
        return Err(format!("`{}` {}", display(&cmd), outcome(status)));
    }
    Ok(std::process::Output {
        status,
        stdout: Vec::new(),
        stderr: Vec::new(),
    })
}

/// The executable of test target `name` in cargo's JSON messages.
fn test_executable(json: &[u8], name: &str) -> Option<PathBuf> {
    let text = String::from_utf8_lossy(json);
    for line in text.lines() {
        if !line.contains("\"reason\":\"compiler-artifact\"")
            || !line.contains(&format!("\"name\":\"{name}\""))
        {
            continue;
        }
        let key = "\"executable\":\"";
        if let Some(i) = line.find(key) {
            let rest = &line[i + key.len()..];
            if let Some(j) = rest.find('"') {
                return Some(PathBuf::from(&rest[..j]));
            }
        }
    }
    None
}

fn copy(from: &Path, to: &Path) -> Result<u64, String> {
    std::fs::copy(from, to)
        .map_err(|e| format!("copying {} to {}: {e}", from.display(), to.display()))
}

/// Builds and copies everything into `target/device/`.
fn package() -> Result<(), String> {
    let features = ["--no-default-features", "--features", "cuda"];
    let mut suite = vec![
        "build",
        "--release",
        "-p",
        "arkvale-tests",
        "--bin",
        "arkvale-suite",
    ];
    suite.extend(features);
    build(&suite)?;
    let mut e2e = vec![
        "test",
        "--release",
        "-p",
        "arkvale-tests",
        "--test",
        "cuda_generate",
        "--no-run",
        "--message-format=json",
    ];
    e2e.extend(features);
    let out = build(&e2e)?;
    let e2e_exe = test_executable(&out.stdout, "cuda_generate")
        .ok_or("could not find the cuda_generate test executable in cargo's output")?;
    build(&[
        "build",
        "--release",
        "-p",
        "arkvale-cuda",
        "--bin",
        "arkvale-cuda-bench",
    ])?;

    let dir = device_dir();
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let release = target_dir().join("release");
    let src = workspace_root().join("arkvale-cuda").join("device");
    let mut total = 0;
    total += copy(&release.join("arkvale-suite"), &dir.join("arkvale-suite"))?;
    total += copy(
        &release.join("arkvale-cuda-bench"),
        &dir.join("arkvale-cuda-bench"),
    )?;
    total += copy(&e2e_exe, &dir.join("cuda_generate"))?;
    total += copy(&src.join("run.sh"), &dir.join("run.sh"))?;
    total += copy(&src.join("sdpa.py"), &dir.join("sdpa.py"))?;
    // Which commit the binaries were built from (the device machine gets no .git).
    let head = std::process::Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(workspace_root())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    let dirty = std::process::Command::new("git")
        .args(["status", "--porcelain", "--untracked-files=no"])
        .current_dir(workspace_root())
        .output()
        .map(|o| !o.stdout.is_empty())
        .unwrap_or(false);
    let build = format!(
        "built from commit {head}{}\n",
        if dirty {
            " (with uncommitted changes in the working tree)"
        } else {
            ""
        }
    );
    std::fs::write(dir.join("BUILD.txt"), build).map_err(|e| format!("writing BUILD.txt: {e}"))?;
    total += package_wgpu(&dir, &release)?;
    eprintln!(
        "device-check: {:.1} MiB in {}",
        total as f64 / (1 << 20) as f64,
        dir.display()
    );
    if total > 48 << 20 {
        return Err(format!(
            "target/device holds {total} bytes; the device tool carries at most 64 MiB with the \
             working tree"
        ));
    }
    Ok(())
}

/// The wgpu part (issue 6): the suite built with the wgpu backend only (after the CUDA suite,
/// whose binary has the same name, so it is copied as `arkvale-suite-wgpu`), the bandwidth
/// benchmark (`arkvale-wgpu/examples/bandwidth.rs`) and `arkvale-wgpu/device/run.sh` as
/// `run-wgpu.sh`, which runs both through Vulkan and writes `$OUT/wgpu.md`.
fn package_wgpu(dir: &Path, release: &Path) -> Result<u64, String> {
    build(&[
        "build",
        "--release",
        "-p",
        "arkvale-tests",
        "--bin",
        "arkvale-suite",
        "--no-default-features",
        "--features",
        "wgpu",
    ])?;
    let mut total = copy(
        &release.join("arkvale-suite"),
        &dir.join("arkvale-suite-wgpu"),
    )?;
    build(&[
        "build",
        "--release",
        "-p",
        "arkvale-wgpu",
        "--example",
        "bandwidth",
    ])?;
    total += copy(
        &release.join("examples").join("bandwidth"),
        &dir.join("arkvale-wgpu-bandwidth"),
    )?;
    let script = workspace_root()
        .join("arkvale-wgpu")
        .join("device")
        .join("run.sh");
    total += copy(&script, &dir.join("run-wgpu.sh"))?;
    Ok(total)
}

/// Prints how to run the check and what is packaged.
fn describe() -> Result<(), String> {
    let dir = device_dir();
    println!("device-check package: {}", dir.display());
    for name in [
        "arkvale-suite",
        "cuda_generate",
        "arkvale-cuda-bench",
        "run.sh",
        "sdpa.py",
        "arkvale-suite-wgpu",
        "arkvale-wgpu-bandwidth",
        "run-wgpu.sh",
    ] {
        let p = dir.join(name);
        match std::fs::metadata(&p) {
            Ok(m) => println!(
                "  {name:<20} {:>8.1} MiB",
                m.len() as f64 / (1 << 20) as f64
            ),
            Err(_) => println!("  {name:<20} missing (run `cargo xtask device-check --build`)"),
        }
    }
    println!(
        "On the GPU machine (device tool: carry [\"target/device\"]), from the repository root:\n  \
         bash target/device/run.sh\nLogs and tables go to $OUT; the summary is printed last.\n\
         The wgpu check (Vulkan on the same GPU; also carry \".gl\" with the Vulkan loader debs \
         the device tool's README names) is a separate call:\n  bash target/device/run-wgpu.sh \
         (writes $OUT/wgpu.md, for docs/results/wgpu.md)"
    );
    Ok(())
}
