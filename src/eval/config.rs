//! The eval configuration file: [`EvalConfig`] with its `[judge]` and `[gates]` tables, read
//! from TOML with `path:line:col: message` errors. Owns no defaults of its own (those are on
//! [`JudgeConfig`] and [`GateConfig`]).

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::eval::error::EvalError;
use crate::eval::gates::GateConfig;
use crate::eval::judge::JudgeConfig;
use crate::located::Unreadable;

/// `[judge]` and `[gates]` (both optional). A larger config can embed [`JudgeConfig`] and
/// [`GateConfig`] directly instead.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EvalConfig {
    /// The rule judge's patterns and tie-break.
    pub judge: JudgeConfig,
    /// The release gates.
    pub gates: GateConfig,
}

impl EvalConfig {
    /// Parses TOML `text` (from `path`, used in errors) and validates the gates. Regexes are
    /// checked by [`crate::eval::Judge::new`].
    pub fn parse(text: &str, path: &Path) -> Result<Self, EvalError> {
        let config: EvalConfig = toml::from_str(text).map_err(|e| {
            let at = e.span().map_or(0, |s| s.start).min(text.len());
            let before = text.get(..at).unwrap_or_default();
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().unwrap_or_default().chars().count() + 1;
            EvalError::Config {
                field: format!("{}:{line}:{column}", path.display()),
                message: e.message().trim().to_string(),
            }
        })?;
        config.gates.validate()?;
        Ok(config)
    }

    /// Reads and parses a TOML file.
    pub fn read(path: &Path) -> Result<Self, EvalError> {
        let text = std::fs::read_to_string(path).map_err(Unreadable::at(path))?;
        Self::parse(&text, path)
    }
}
