//! The pipeline file: its types ([`types`]), loading with located errors and path resolution
//! ([`load_pipeline`]), and the frozen copy a run keeps in its directory ([`frozen_toml`],
//! [`load_frozen`], [`diff_frozen`]) so that a resume can refuse a changed config.
//!
//! Every error inside a file reads `path:line:column: field: message`, with `field` the dotted
//! path of the offending key (`stage[1].pref.beta`).

mod engine;
mod error;
mod frozen;
mod grpo;
mod load;
mod locate;
pub mod types;
mod validate;

use std::path::{Path, PathBuf};

pub use engine::{Engine, EngineSettings, Launcher, TrlSettings};
pub use error::ConfigError;
pub use frozen::{
    diff_frozen, freeze, frozen_toml, load_frozen, sha256_file, Frozen, FrozenExtras, FrozenFile, FrozenInfo,
    FrozenLaunch,
};
pub use grpo::{GrpoTerm, REWARD_NAMES};
pub use load::{load_pipeline, DataSource, LoadedPipeline, RUN_LABELS_FILE};
pub(crate) use locate::line_column;
pub use types::*;

/// Where runs go when neither the command line nor `$HONE_RUNS_DIR` names a directory: `./runs`,
/// relative to the working directory (each run is a subdirectory `<UTC timestamp>-<run.name>`).
pub fn default_runs_dir() -> PathBuf {
    PathBuf::from("./runs")
}

/// The environment variable naming the runs directory when `--runs-dir` does not.
pub const RUNS_DIR_ENV: &str = "HONE_RUNS_DIR";

/// The runs directory in use, the one rule every command follows: `--runs-dir` (`flag`), else
/// `$HONE_RUNS_DIR` (when set and not empty), else [`default_runs_dir`].
pub fn runs_dir(flag: Option<&Path>) -> PathBuf {
    runs_dir_from(flag, std::env::var_os(RUNS_DIR_ENV))
}

/// [`runs_dir`] with the environment variable's value given (testable without touching the
/// process environment).
pub fn runs_dir_from(flag: Option<&Path>, env: Option<std::ffi::OsString>) -> PathBuf {
    match (flag, env) {
        (Some(flag), _) => flag.to_path_buf(),
        (None, Some(env)) if !env.is_empty() => PathBuf::from(env),
        _ => default_runs_dir(),
    }
}

/// hone's per-user data directory (e.g. `~/.local/share/hone` on Linux, `$XDG_DATA_HOME/hone`
/// when set): where the built-in sample world is unpacked. `None` without a home directory.
pub fn user_data_dir() -> Option<PathBuf> {
    directories::ProjectDirs::from("", "", "hone").map(|dirs| dirs.data_dir().to_path_buf())
}

/// hone's per-user configuration directory (e.g. `~/.config/hone` on Linux): `themes/NAME.toml`
/// and `keys.toml`; `None` when the platform has no home directory.
pub fn user_config_dir() -> Option<PathBuf> {
    directories::ProjectDirs::from("", "", "hone").map(|dirs| dirs.config_dir().to_path_buf())
}
