"""hone's TRL engine: runs one stage of a hone pipeline with TRL's SFTTrainer or DPOTrainer
(under `torchrun` or `accelerate launch`), writing hone's events to the run directory, obeying
hone's control requests relayed through a file, admitting live labels, checkpointing on
SIGTERM/SIGINT, resuming from the newest checkpoint and exporting the final model.

Entry point: `python -m hone_trl --spec <run-dir>/trl/<stage>.json` (see `spec.py`)."""

__version__ = "0.1.0"
