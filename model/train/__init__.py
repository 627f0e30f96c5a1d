"""Training: masking of views, the pretraining loop, schedules, checkpoints and embedding diagnostics."""
