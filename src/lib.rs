//! hone: a terminal workbench for post-training language models.
//!
//! The library holds everything; `main.rs` only parses arguments. Module map and data flow are in
//! `ARCHITECTURE.md`.

pub mod cli;
pub mod config;
pub mod control;
pub mod data;
pub mod durable;
pub mod eval;
pub mod fault;
pub mod hex;
pub mod kind;
pub mod located;
pub mod memory;
pub mod model;
pub mod rng;
pub mod run;
pub mod sanitize;
pub mod train;
pub mod tui;
