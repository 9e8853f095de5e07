//! Shared helpers for the oracle tests: fixture paths and expected numbers.
#![allow(dead_code)]

use std::path::PathBuf;

use serde_json::Value;

/// A path under `tests/fixtures/`.
pub fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(rel)
}

/// `tests/fixtures/<set>/expected.json`.
pub fn expected(set: &str) -> Value {
    let text = std::fs::read_to_string(fixture(&format!("{set}/expected.json"))).expect("fixture expected.json exists");
    serde_json::from_str(&text).expect("expected.json parses")
}

/// A JSON array of integers as token ids.
pub fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .expect("an array of ids")
        .iter()
        .map(|x| u32::try_from(x.as_u64().expect("an id")).expect("id fits u32"))
        .collect()
}

/// A JSON array of numbers as f64.
pub fn floats(v: &Value) -> Vec<f64> {
    v.as_array().expect("an array of numbers").iter().map(|x| x.as_f64().expect("a number")).collect()
}

/// A JSON number.
pub fn num(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("expected a number, got {v}"))
}

/// Asserts `|a - b| <= tol`, naming what is compared.
pub fn assert_close(what: &str, actual: f64, expected: f64, tol: f64) {
    assert!((actual - expected).abs() <= tol, "{what}: got {actual}, expected {expected} (tolerance {tol})");
}
