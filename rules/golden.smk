# Golden set and per-checkpoint golden dumps (docs/evaluation.md#golden-set-and-dumps).
