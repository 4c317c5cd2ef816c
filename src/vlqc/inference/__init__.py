"""Inference shared by evaluation, Stage-A, Stage-B and training-time rollouts: prompts
(`prompts`), decoding settings (`sampling`), generation engines (`generation`, the plain
transformers path; `fast_generation`, the CUDA-graph decode loop) and answer parsing (`verdict`)."""
