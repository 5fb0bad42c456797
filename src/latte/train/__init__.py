"""Training: the trainer and its loop, config checks, fine-tuning, parallelism, distributed helpers (the run
config and checkpoint files they share with inference: latte.config, latte.checkpoint_files)."""
