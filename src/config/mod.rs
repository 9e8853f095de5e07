//! The pipeline file: its types ([`types`]), loading with located errors and path resolution
//! ([`load_pipeline`]), and the frozen copy a run keeps in its directory ([`frozen_toml`],
//! [`load_frozen`], [`diff_frozen`]) so that a resume can refuse a changed config.
//!
//! Every error inside a file reads `path:line:column: field: message`, with `field` the dotted
//! path of the offending key (`stage[1].pref.beta`).

mod engine;
mod error;
mod frozen;
mod load;
mod locate;
pub mod types;
mod validate;

use std::path::PathBuf;

pub use engine::{Engine, EngineSettings, Launcher, TrlSettings};
pub use error::ConfigError;
pub use frozen::{
    diff_frozen, freeze, frozen_toml, load_frozen, sha256_file, Frozen, FrozenExtras, FrozenFile, FrozenInfo,
};
pub use load::{load_pipeline, DataSource, LoadedPipeline};
pub(crate) use locate::line_column;
pub use types::*;

/// Where runs go when the command line names no directory: `./runs`, relative to the working
/// directory (each run is a subdirectory `<UTC timestamp>-<run.name>`).
pub fn default_runs_dir() -> PathBuf {
    PathBuf::from("./runs")
}

/// hone's per-user configuration directory (e.g. `~/.config/hone` on Linux), reserved for
/// user-wide settings; `None` when the platform has no home directory. Nothing reads it yet.
pub fn user_config_dir() -> Option<PathBuf> {
    directories::ProjectDirs::from("", "", "hone").map(|dirs| dirs.config_dir().to_path_buf())
}
