"""Training: typed config, the loop, checkpoints, distributed helpers."""
