//! The pipeline file: types, parsing and validation.

pub mod types;

pub use types::*;
