# Sweeps: a grid of training runs scored by eval loss and image ablations (docs/evaluation.md#sweeps).
