//! Training: batches, loss terms, the optimizer, schedules, the λ-weighted objective and the
//! trainer loop with checkpoints.
//!
//! Owns tensors and the objective; never touches the terminal or run-directory file names (the
//! trainer reaches the outside world through `trainer::Host`).

pub mod batch;
pub mod evaluate;
pub mod examples;
pub mod grpo;
pub mod host;
pub mod iterate;
pub mod live;
pub mod logps_chunk;
pub mod loss;
pub mod objective;
pub mod optim;
pub mod plan;
pub mod reward;
pub mod rl;
pub mod sampler;
pub mod schedule;
pub mod score;
pub mod state;
pub mod trainer;

/// Why training stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// Loading or saving a model failed.
    #[error(transparent)]
    Model(#[from] crate::model::ModelError),
    /// Reading or tokenizing data failed.
    #[error(transparent)]
    Records(#[from] crate::data::DataError),
    /// A data problem found by the trainer (with its location in the message).
    #[error("{0}")]
    Data(String),
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// The loss or a gradient was not finite and the policy says halt.
    #[error("stage {stage}: non-finite loss or gradient at step {step}; run halted (nan_policy)")]
    NonFinite {
        /// The stage.
        stage: String,
        /// The global step.
        step: u64,
    },
    /// The host (run directory, events) failed.
    #[error("{0}")]
    Host(String),
}
