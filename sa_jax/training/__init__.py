"""Training: the reference loss (SPEC §5), the trainable subset and optimiser, the sharded step, checkpoints."""
