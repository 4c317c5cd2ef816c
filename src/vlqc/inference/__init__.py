"""Inference shared by evaluation, Stage-A, Stage-B and training-time rollouts: prompts
(`prompts`), decoding settings (`sampling`), generation engines (`generation`, the plain
transformers path; `fast_generation`, the CUDA-graph decode loop) and the one reader of model text
(`answers`: dense objects, summaries, verdicts, reflection JSON; docs/answers.md)."""
