//! `arkvale-suite`: runs the cross-backend differential suite on every backend compiled into
//! this build (see [`arkvale_tests::backends`]) and prints one summary line per backend:
//!
//! ```text
//! backend cpu: 12 passed, 0 failed
//! backend wgpu: skipped (no Vulkan adapter found)
//! ```
//!
//! `cargo xtask test-all-backends` runs this binary and collects those lines, so their form is
//! part of its interface. The exit code is 1 if any case failed, 2 on a usage error, else 0
//! (a skipped backend is not a failure).

use std::process::ExitCode;

use arkvale_tests::{all_cases, backends::compiled_backends, run_suite};

const HELP: &str = "\
arkvale-suite: the cross-backend differential suite of arkvale-rs

USAGE:
    arkvale-suite [--backend NAME|all] [--filter SUBSTR] [--list]

OPTIONS:
    --backend NAME|all   run on one compiled backend (cpu, cuda, wgpu) or on all of them
                         [default: all]
    --filter SUBSTR      run only the cases whose name contains SUBSTR
    --list               print the names of the selected cases and exit
    -h, --help           print this help

For each backend it prints `backend <name>: <N> passed, <M> failed`, or
`backend <name>: skipped (<reason>)` when the device cannot be opened on this machine.
Exit code: 0 if nothing failed, 1 if a case failed, 2 on a usage error.
Set PROPTEST_RNG_SEED to replay a run's random inputs.
";

/// The parsed command line.
#[derive(Debug, Default)]
struct Args {
    /// `None`: every compiled backend.
    backend: Option<String>,
    filter: String,
    list: bool,
    help: bool,
}

fn parse_args(args: impl IntoIterator<Item = String>) -> Result<Args, String> {
    let mut out = Args::default();
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        // Accept both `--opt value` and `--opt=value`.
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        let mut value = |name: &str| {
            inline
                .clone()
                .or_else(|| args.next())
                .ok_or_else(|| format!("{name} needs a value"))
        };
        match flag.as_str() {
            "--backend" => {
                let v = value("--backend")?;
                out.backend = (v != "all").then_some(v);
            }
            "--filter" => out.filter = value("--filter")?,
            "--list" => out.list = true,
            "-h" | "--help" => out.help = true,
            _ => return Err(format!("unexpected argument '{arg}'")),
        }
    }
    Ok(out)
}

fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(msg) => {
            eprintln!("arkvale-suite: {msg}\n\n{HELP}");
            return ExitCode::from(2);
        }
    };
    if args.help {
        print!("{HELP}");
        return ExitCode::SUCCESS;
    }
    if args.list {
        for case in all_cases().iter().filter(|c| c.name.contains(&args.filter)) {
            println!("{}", case.name);
        }
        return ExitCode::SUCCESS;
    }

    let mut backends = compiled_backends();
    if let Some(name) = &args.backend {
        if !backends.iter().any(|b| b.name == name) {
            let known: Vec<_> = backends.iter().map(|b| b.name).collect();
            eprintln!(
                "arkvale-suite: backend '{name}' is not compiled into this build (compiled: {})",
                known.join(", ")
            );
            return ExitCode::from(2);
        }
        backends.retain(|b| b.name == name);
    }

    let mut any_failed = false;
    for backend in backends {
        match &backend.device {
            Err(reason) => println!("backend {}: skipped ({reason})", backend.name),
            Ok(device) => {
                println!(
                    "running the suite on backend {} ({})",
                    backend.name,
                    device.name()
                );
                let summary = run_suite(device, &args.filter);
                if !summary.failed.is_empty() {
                    any_failed = true;
                    println!("failures on backend {}:", backend.name);
                    for (name, _) in &summary.failed {
                        println!("    {name}");
                    }
                }
                println!(
                    "backend {}: {} passed, {} failed",
                    backend.name,
                    summary.passed.len(),
                    summary.failed.len()
                );
            }
        }
    }
    if any_failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Args, String> {
        parse_args(args.iter().map(|s| s.to_string()))
    }

    #[test]
    fn parses_every_option_in_both_forms() {
        let a = parse(&["--backend", "cpu", "--filter=ops::", "--list"]).unwrap();
        assert_eq!(a.backend.as_deref(), Some("cpu"));
        assert_eq!(a.filter, "ops::");
        assert!(a.list && !a.help);
        let a = parse(&["--backend=all", "--filter", "x=y"]).unwrap();
        assert_eq!(a.backend, None);
        assert_eq!(a.filter, "x=y");
        assert!(parse(&["-h"]).unwrap().help);
    }

    #[test]
    fn rejects_unknown_and_incomplete_arguments() {
        assert!(parse(&["--backend"]).is_err());
        assert!(parse(&["--frobnicate"]).is_err());
        assert!(parse(&["cpu"]).is_err());
    }
}
