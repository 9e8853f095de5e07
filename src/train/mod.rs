//! Training: batches, loss terms, the optimizer and (later) the trainer loop and checkpoints.
//!
//! Owns tensors and the objective; never touches the terminal or run-directory file names.

pub mod batch;
pub mod loss;
pub mod optim;
pub mod score;
