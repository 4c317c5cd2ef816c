"""Evaluation of checkpoints (docs/evaluation.md): the eval set and its length buckets (`candidates`,
`buckets`), token-weighted eval loss (`loss`), image ablations (`ablation`) and the golden set (`golden`)."""
