//! JSON Lines reading for the eval inputs (suites, overrides, human labels): every non-blank
//! line is parsed, syntax errors are reported at the file line and column, and field problems
//! found while decoding are pinned to the column of the offending value. Owns only the
//! line/field plumbing (shared with the data module's JSONL reader); never knows what a suite
//! item or an override means.

use std::path::Path;

use serde_json::{Map, Value as Json};

use crate::data::jsonl::read_jsonl;
pub(crate) use crate::data::jsonl::{index, key, Issue, Line, Seg};
use crate::data::DataError;
use crate::eval::error::EvalError;
use crate::located::Located;

/// Gives `issue` its file position.
pub(crate) fn located(path: &Path, line: &Line, issue: Issue) -> EvalError {
    EvalError::Located(issue.located(path, line))
}

/// Reads a JSONL file: blank lines are skipped, a UTF-8 BOM is ignored, every other line must
/// be one JSON value. With `missing_ok`, a file that does not exist reads as no lines.
pub(crate) fn read_lines(path: &Path, missing_ok: bool) -> Result<Vec<Line>, EvalError> {
    if missing_ok && !path.exists() {
        return Ok(Vec::new());
    }
    read_jsonl(path).map_err(|e| match e {
        DataError::Io(e) => EvalError::Io(e),
        DataError::Located(at) => EvalError::Located(at),
        other => EvalError::Located(Located::new(path, 1, 1, other.to_string())),
    })
}

/// A JSON object being decoded, with its path for error messages.
pub(crate) struct Obj<'a> {
    map: &'a Map<String, Json>,
    path: Vec<Seg>,
}

impl<'a> Obj<'a> {
    /// `v` as an object, or an issue saying it should be `what`.
    pub(crate) fn new(v: &'a Json, path: Vec<Seg>, what: &str) -> Result<Self, Issue> {
        match v.as_object() {
            Some(map) => Ok(Obj { map, path }),
            None => Err(Issue::bad(path, format!("expected {what}"))),
        }
    }

    /// The path of field `k` of this object.
    pub(crate) fn path_of(&self, k: &str) -> Vec<Seg> {
        key(&self.path, k)
    }

    /// Rejects fields outside `allowed`.
    pub(crate) fn deny_unknown(&self, allowed: &[&str]) -> Result<(), Issue> {
        match self.map.keys().find(|k| !allowed.contains(&k.as_str())) {
            Some(k) => {
                Err(Issue::bad(self.path_of(k), format!("unknown field (expected one of: {})", allowed.join(", "))))
            }
            None => Ok(()),
        }
    }

    /// Field `k`; `null` counts as absent.
    pub(crate) fn opt(&self, k: &str) -> Option<&'a Json> {
        self.map.get(k).filter(|v| !v.is_null())
    }

    /// Field `k`, which must be present.
    pub(crate) fn req(&self, k: &str) -> Result<&'a Json, Issue> {
        self.opt(k).ok_or_else(|| Issue::missing(&self.path, k))
    }

    /// Field `k` as a string, if present.
    pub(crate) fn opt_str(&self, k: &str) -> Result<Option<String>, Issue> {
        match self.opt(k) {
            None => Ok(None),
            Some(Json::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(Issue::bad(self.path_of(k), "expected a string")),
        }
    }

    /// Field `k` as a string, which must be present.
    pub(crate) fn req_str(&self, k: &str) -> Result<String, Issue> {
        self.req(k)?;
        self.opt_str(k).map(Option::unwrap_or_default)
    }

    /// Field `k` as a boolean, which must be present.
    pub(crate) fn req_bool(&self, k: &str) -> Result<bool, Issue> {
        self.req(k)?.as_bool().ok_or_else(|| Issue::bad(self.path_of(k), "expected true or false"))
    }

    /// Field `k` as a non-negative integer, if present.
    pub(crate) fn opt_u64(&self, k: &str) -> Result<Option<u64>, Issue> {
        match self.opt(k) {
            None => Ok(None),
            Some(v) => {
                v.as_u64().map(Some).ok_or_else(|| Issue::bad(self.path_of(k), "expected a non-negative integer"))
            }
        }
    }

    /// Field `k` as a finite number, if present.
    pub(crate) fn opt_f64(&self, k: &str) -> Result<Option<f64>, Issue> {
        match self.opt(k) {
            None => Ok(None),
            Some(v) => v.as_f64().map(Some).ok_or_else(|| Issue::bad(self.path_of(k), "expected a number")),
        }
    }

    /// Field `k` as a list of strings, if present.
    pub(crate) fn opt_str_list(&self, k: &str) -> Result<Option<Vec<String>>, Issue> {
        let Some(v) = self.opt(k) else { return Ok(None) };
        let list = v.as_array().ok_or_else(|| Issue::bad(self.path_of(k), "expected a list of strings"))?;
        let mut out = Vec::with_capacity(list.len());
        for (i, item) in list.iter().enumerate() {
            match item {
                Json::String(s) => out.push(s.clone()),
                _ => return Err(Issue::bad(index(&self.path_of(k), i), "expected a string")),
            }
        }
        Ok(Some(out))
    }
}
