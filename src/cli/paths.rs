//! `hone paths`: the directories hone uses on this machine, and why each is the one in use.

use std::io::Write;
use std::path::Path;

use anyhow::Result;

use super::RunsDirArg;
use crate::config::{user_config_dir, user_data_dir, RUNS_DIR_ENV};
use crate::sanitize::sanitize;

fn shown(path: &Path) -> String {
    sanitize(&path.display().to_string(), false)
}

/// Prints the runs, configuration and data directories, one per line.
pub fn run(runs: &RunsDirArg, out: &mut impl Write) -> Result<()> {
    let why = if runs.runs_dir.is_some() {
        "from --runs-dir".to_string()
    } else if std::env::var_os(RUNS_DIR_ENV).is_some_and(|v| !v.is_empty()) {
        format!("from ${RUNS_DIR_ENV}")
    } else {
        format!("the default; --runs-dir or ${RUNS_DIR_ENV} change it")
    };
    writeln!(out, "runs    {}  ({why})", shown(&runs.resolve()))?;
    match user_config_dir() {
        Some(dir) => writeln!(out, "config  {}  (themes/NAME.toml, keys.toml)", shown(&dir))?,
        None => writeln!(out, "config  none (no home directory)")?,
    }
    match user_data_dir() {
        Some(dir) => writeln!(out, "data    {}  (the demo's sample world, unpacked on first use)", shown(&dir))?,
        None => writeln!(out, "data    none (no home directory; `hone demo --data DIR` names a sample world)")?,
    }
    Ok(())
}
