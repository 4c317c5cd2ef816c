"""Stage-B: ticket verdicts from Stage-A summaries, with guardrails and learnable mission guidance."""
