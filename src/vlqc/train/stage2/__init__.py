"""Stage-2 AB: training on the model's own rollouts (docs/stage2.md)."""
