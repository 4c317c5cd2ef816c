# Evaluation: the eval set, token-weighted eval loss per checkpoint, image ablations (docs/evaluation.md).
